"""Group-pure batches (Batch Effects Normalization, Lin & Lu, MLCB 2022): every batch from ONE group.

A group is any technical batch a cohort has: a plate, experiment x plate, an imaging site, a scanner. With
``--batch_groups COL[,COL]`` the groups are read from those columns of the covariate table (json§DS_covariates)
and the loaders yield

- in training (:class:`GroupBatchSampler`): per batch one group drawn uniformly over groups, its samples drawn
  without replacement (with replacement only when the group is smaller than the batch), a fixed number of
  batches per epoch, every draw a pure function of (seed, epoch) so a resumed run sees the same batches; under
  DDP the ranks take alternate batches of the same stream, so each rank's batches are group-pure and the ranks
  draw different groups;
- in evaluation (:class:`GroupChunks`): every sample once, whole groups in order, cut into chunks of at most the
  batch size (chunks of one group share one set of statistics with ``--bn_eval_mode group``); under DDP whole
  groups go to one rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from Engineering.errors import UserError


def group_codes(
    patients: Sequence[str], table: pd.DataFrame, columns: Sequence[str], where: str
) -> tuple[np.ndarray, list[str]]:
    """Per sample, the code of its group (the combination of ``columns`` of its patient's row), and the group
    names. ``table`` is keyed by ``patientID`` (data/labels.read_label_table). The codes number every group of
    the table, so they are the same whichever split ``patients`` come from."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(
            f"--batch_groups {','.join(columns)}: column(s) {', '.join(missing)} not in {where} "
            f"(columns: {', '.join(c for c in table.columns if c != 'patientID')})"
        )
    raw = table.drop_duplicates("patientID").set_index("patientID")[list(columns)]
    empty = raw.isna() | raw.apply(lambda col: col.astype(str).str.strip().eq(""))
    # an empty cell of a patient with samples would pool them into a group 'nan' (or a traceback): refused; rows
    # of patients without samples here form no group
    used = empty.reindex([p for p in dict.fromkeys(patients) if p in raw.index])
    for col in columns:
        if used[col].any():
            first = used.index[used[col].to_numpy()][0]
            raise UserError(
                f"--batch_groups {','.join(columns)}: {int(used[col].sum())} patient(s) have no value "
                f"in column {col!r} of {where} (first: patient {first}); fill them in or leave those "
                "patients out"
            )
    rows = raw[~empty.any(axis=1)].astype(str)
    names = rows.apply(lambda r: "/".join(r), axis=1)
    per_sample = names.reindex(list(patients))
    absent = per_sample[per_sample.isna()]
    if len(absent):
        raise UserError(
            f"--batch_groups: {len(absent)} sample(s) have no row in {where} (first: patient {absent.index[0]})"
        )
    groups = sorted(set(names))
    code = {g: k for k, g in enumerate(groups)}
    return np.array([code[g] for g in per_sample], np.int64), groups


def _members(codes: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(codes == g) for g in range(int(codes.max()) + 1)] if len(codes) else []


class GroupBatchSampler(Sampler):
    """Training batches, each from one group (see the module docstring). Yields lists of dataset indices, or of
    (index, epoch) pairs with ``epoch_fn`` (the datasets seed their augmentation from the epoch)."""

    def __init__(
        self,
        codes: np.ndarray,
        batch_size: int,
        seed: int,
        n_batches: int | None = None,
        epoch_fn: Callable[[], int] | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        self.members = [m for m in _members(np.asarray(codes)) if len(m)]
        if not self.members:
            raise UserError("--batch_groups: the training split has no samples")
        self.batch_size, self.seed, self.epoch_fn = int(batch_size), int(seed), epoch_fn
        self.rank, self.world = int(rank), max(1, int(world))
        # one epoch's worth by default: as many samples per rank as an ordinary shuffled epoch
        self.n_batches = int(n_batches) if n_batches else max(1, math.ceil(len(codes) / (self.batch_size * self.world)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[np.ndarray]:
        """Every rank's batches of ``epoch`` (the stream the ranks share)."""
        rng = np.random.default_rng((self.seed, epoch, 0xBE7))
        out = []
        for _ in range(self.n_batches * self.world):
            m = self.members[int(rng.integers(len(self.members)))]
            out.append(rng.choice(m, self.batch_size, replace=len(m) < self.batch_size))
        return out

    def __iter__(self) -> Iterator[list]:
        epoch = int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch
        for b in self.batches(epoch)[self.rank :: self.world]:
            yield [(int(i), epoch) for i in b] if self.epoch_fn is not None else [int(i) for i in b]

    def __len__(self) -> int:
        return self.n_batches


class GroupChunks(Sampler):
    """Evaluation batches: every sample once, group by group, chunks of at most ``chunk`` samples. Under DDP each
    rank takes a contiguous run of the chunks (so a group's chunks stay together); ``chunks``/``chunk_groups``
    keep every rank's chunks, so a group's statistics can be computed over all of it wherever it is split. A
    rank left without a chunk (fewer chunks than ranks) repeats one: the output writer keeps each sample once."""

    def __init__(self, codes: np.ndarray, chunk: int, rank: int = 0, world: int = 1):
        self.codes = np.asarray(codes)  # the group of each dataset position
        self.chunks: list[list[int]] = []
        self.chunk_groups: list[int] = []
        for g, m in enumerate(_members(np.asarray(codes))):
            for start in range(0, len(m), int(chunk)):
                self.chunks.append(m[start : start + int(chunk)].tolist())
                self.chunk_groups.append(g)
        n, world = len(self.chunks), max(1, int(world))
        self.mine = list(range(rank * n // world, (rank + 1) * n // world)) or ([rank % n] if n else [])

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(self.chunks[k]) for k in self.mine])

    def __len__(self) -> int:
        return len(self.mine)
