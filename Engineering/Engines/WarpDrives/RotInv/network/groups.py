"""Finite rotation groups that act exactly on pixel and voxel grids: C4 (in-plane rotations by multiples of 90°)
and the octahedral group O (the 24 rotations of a cube), each element a signed permutation matrix acting on the
trailing 2 or 3 array axes by permuting and flipping them, so no interpolation ever enters (Cohen & Welling,
"Group Equivariant Convolutional Networks", ICML 2016, use the same groups on the same grids).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


class GridGroup:
    """A finite group of signed permutation matrices (det +1) acting on the last ``dim`` axes of arrays.

    ``act(k, x)`` is y(u) = x(R_k^T u) for centred coordinates u, a left action: act(mul[i, j], x) equals
    act(i, act(j, x)). ``mul`` is the Cayley table (index of R_i R_j), ``inv`` the inverses; element 0 is the
    identity.
    """

    def __init__(self, dim: int, name: str, mats: list[np.ndarray]):
        self.dim, self.name = dim, name
        ident = np.eye(dim, dtype=int)
        mats = sorted(mats, key=lambda m: (not np.array_equal(m, ident), m.tobytes()))
        self.mats = mats
        index = {m.tobytes(): i for i, m in enumerate(mats)}
        self.mul = np.array([[index[(a @ b).tobytes()] for b in mats] for a in mats])
        self.inv = np.array([index[m.T.copy().tobytes()] for m in mats])
        # the permute/flip that realises each element on the trailing axes (see act)
        self._ops = []
        for m in mats:
            sigma = [int(np.nonzero(m[:, a])[0][0]) for a in range(dim)]  # R[sigma(a), a] != 0
            signs = [int(m[sigma[a], a]) for a in range(dim)]
            order = [sigma.index(b) for b in range(dim)]  # y's axis b is z's axis sigma^-1(b)
            self._ops.append(([a for a in range(dim) if signs[a] < 0], order))

    def __len__(self) -> int:
        return len(self.mats)

    def act(self, k: int, x: torch.Tensor) -> torch.Tensor:
        flips, order = self._ops[k]
        lead = x.ndim - self.dim
        if flips:
            x = torch.flip(x, [lead + a for a in flips])
        return x.permute(*range(lead), *[lead + a for a in order])


def c4() -> GridGroup:
    """Rotations of the image plane by 0, 90, 180, 270 degrees."""
    r = np.array([[0, -1], [1, 0]])
    return GridGroup(2, "C4", [np.linalg.matrix_power(r, k) for k in range(4)])


def octahedral() -> GridGroup:
    """The 24 rotations of the cube: signed 3x3 permutation matrices with determinant +1."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), dtype=int)
            for col, row in enumerate(perm):
                m[row, col] = signs[col]
            if round(np.linalg.det(m)) == 1:
                mats.append(m)
    return GridGroup(3, "O", mats)


GROUPS = {"C4": c4, "O": octahedral}
