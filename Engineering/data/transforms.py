"""Sample transforms, each with what is needed to undo it.

Every intensity normalisation here is affine per channel, ``y = x * scale + offset``,
so one (C, 2) array of (scale, offset) per sample inverts any of them; that is
how reconstructions are written back in original units.

Complex data kept complex (``--complex_mode complex``) is normalised on its magnitude with a real positive scale
and no offset (``COMPLEX_NORMS``): a scale keeps every phase, an offset would move it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from Engineering.errors import UserError

SAMPLE_NORMS = ("minmax", "divbymax")
UNIT_RANGE_NORMS = ("minmax", "minmaxvol", "divbymax", "divbymaxvol")  # [0, 1] for non-negative data
# dtypes a batch may carry to the device before normalisation (torch collates them all)
BATCH_DTYPES = tuple(np.dtype(d) for d in ("float32", "float16", "int8", "uint8", "int16", "int32"))
VOLUME_NORMS = ("minmaxvol", "divbymaxvol")
COMPLEX_NORMS = ("none", "divbymax", "divbymaxvol")  # a scale of the magnitude: what keeps the phase
COMPLEX_DTYPE = np.dtype("complex64")  # what a complex batch carries (complex128 halves to it, as float64 to float32)
_EPS = 1e-8


def axis_perm(channel_dim: int, slice_dim: int) -> tuple[int, ...]:
    """Logical axis j reads raw axis perm[j]: swap channel_dim with 0, then slice_dim with 2."""
    perm = list(range(5))
    for target, source in ((0, channel_dim), (2, slice_dim)):
        if not 0 <= source < 5:
            raise UserError(f"json§DS_{'channel' if target == 0 else 'slice'}_dim must be in 0..4, got {source}")
        perm[target], perm[source] = perm[source], perm[target]
    return tuple(perm)


def complex_to_real(arr: np.ndarray, mode: str) -> np.ndarray:
    """Complex (C, ...) -> real channels; magphase and realimag double the channels; "complex" keeps it complex
    (complex64)."""
    if not np.iscomplexobj(arr):
        return arr.astype(np.float32, copy=False)
    if mode == "complex":
        return arr.astype(COMPLEX_DTYPE, copy=False)
    if mode == "magnitude":
        out = np.abs(arr)
    elif mode == "real":
        out = arr.real
    elif mode == "imaginary":
        out = arr.imag
    elif mode == "phase":
        out = np.angle(arr)
    elif mode == "magphase":
        out = np.concatenate([np.abs(arr), np.angle(arr)], axis=0)
    elif mode == "realimag":
        out = np.concatenate([arr.real, arr.imag], axis=0)
    else:
        raise UserError(
            f"data§complex_mode {mode!r} is not one of magnitude, real, imaginary, phase, magphase, realimag, complex"
        )
    return out.astype(np.float32, copy=False)


def _prenorm_affine(x: np.ndarray, prenorm: str, vol: tuple[float | None, float | None]) -> tuple[float, float]:
    if prenorm in ("", "none"):
        return 1.0, 0.0
    try:
        return 1.0 / float(prenorm), 0.0  # a numeric prenorm such as 255 (the ancestor crashed here)
    except ValueError:
        pass
    if prenorm == "zscore":
        raise UserError("data§prenorm cannot be zscore itself")
    s, o = norm_affine(x, prenorm, vol)
    return float(s[0]), float(o[0])


def norm_affine(
    x: np.ndarray,
    norm_type: str,
    vol: tuple[float | None, float | None] = (None, None),
    prenorm: str = "none",
    zscore_mean: float | None = None,
    zscore_std: float | None = None,
    norm_range: str = "unit",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) of the normalisation of sample ``x`` (C, ...).

    zscore: ``(prenorm(x) - mean) / std`` with the sample's own per-channel mean/std, or the fixed
    ``zscore_mean``/``zscore_std`` (the ancestor's ``--zscore_mean 0.5 --zscore_std 0.5`` after a min-max
    prenorm gives [-1, 1], the published cardiac models' input range).
    norm_range: the min-max family gives [0, 1] ("unit") or, mapped by 2y - 1, [-1, 1] ("symmetric":
    the range DiffAE's noise schedule assumes).
    Complex ``x``: only the scales of ``COMPLEX_NORMS``, computed on the magnitude (see module docstring).
    """
    if np.iscomplexobj(x):
        return complex_norm_affine(x, norm_type, vol, prenorm, norm_range)
    scale, offset = _norm_affine(x, norm_type, vol, prenorm, zscore_mean, zscore_std)
    if norm_range == "symmetric" and norm_type in UNIT_RANGE_NORMS:
        return 2.0 * scale, 2.0 * offset - 1.0
    if norm_range not in ("unit", "symmetric"):
        raise UserError(f"data§norm_range must be unit or symmetric, got {norm_range!r}")
    return scale, offset


def complex_norm_affine(
    x: np.ndarray,
    norm_type: str,
    vol: tuple[float | None, float | None] = (None, None),
    prenorm: str = "none",
    norm_range: str = "unit",
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset = 0) per channel for complex ``x`` (C, ...): divbymax divides by the sample's largest magnitude,
    divbymaxvol by the dataset's ``max_val`` (the magnitude's, as the data contract stores it), none by 1. A min-max,
    a z-score or the symmetric range would add an offset, which rotates and shifts the phase: refused."""
    if norm_type not in COMPLEX_NORMS:
        raise UserError(
            f"--norm_type {norm_type} shifts the values, which would move the phase of complex data kept "
            f"complex (--complex_mode complex); use one of {', '.join(COMPLEX_NORMS)} (a scale of the "
            "magnitude)"
        )
    if norm_range != "unit" and norm_type != "none":
        raise UserError(
            f"--norm_range {norm_range} maps to [-1, 1] with an offset, which would move the phase of "
            "complex data kept complex; use --norm_range unit"
        )
    if str(prenorm) not in ("", "none"):
        raise UserError(f"--prenorm {prenorm} applies to zscore, which complex data kept complex cannot use")
    n_ch = x.shape[0]
    zeros = np.zeros(n_ch, np.float64)
    if norm_type == "none":
        return np.ones(n_ch, np.float64), zeros
    if norm_type == "divbymax":
        hi = float(np.abs(x).max()) if x.size else 0.0
    else:
        hi = vol[1]
        if hi is None:
            raise UserError(f"norm_type {norm_type} needs the max_val dataset attribute (of the magnitude)")
    return np.full(n_ch, 1.0 / max(abs(float(hi)), _EPS)), zeros


def normalised_range(
    norm_type: str,
    prenorm: str = "none",
    zscore_mean: float | None = None,
    zscore_std: float | None = None,
    norm_range: str = "unit",
) -> tuple[float, float] | None:
    """The interval a normalisation maps the data into, when it has one (None: unbounded, e.g. a per-sample z-score)."""
    if norm_type in UNIT_RANGE_NORMS:
        return (-1.0, 1.0) if norm_range == "symmetric" else (0.0, 1.0)
    if (
        norm_type == "zscore"
        and str(prenorm) in UNIT_RANGE_NORMS
        and zscore_mean is not None
        and zscore_std is not None
        and zscore_std > 0
    ):
        return (0.0 - zscore_mean) / zscore_std, (1.0 - zscore_mean) / zscore_std
    return None


def _norm_affine(x, norm_type, vol, prenorm, zscore_mean, zscore_std) -> tuple[np.ndarray, np.ndarray]:
    n_ch = x.shape[0]
    ones, zeros = np.ones(n_ch, np.float64), np.zeros(n_ch, np.float64)
    if norm_type == "none":
        return ones, zeros
    if norm_type in SAMPLE_NORMS:
        lo, hi = float(x.min()), float(x.max())
    elif norm_type in VOLUME_NORMS:
        lo, hi = vol
        if lo is None or hi is None:
            raise UserError(f"norm_type {norm_type} needs the min_val/max_val dataset attributes")
    elif norm_type == "zscore":
        s0, o0 = _prenorm_affine(x, prenorm, vol)
        if zscore_mean is None or zscore_std is None:
            flat = x.reshape(n_ch, -1).astype(np.float64) * s0 + o0
        mean = flat.mean(1) if zscore_mean is None else np.full(n_ch, float(zscore_mean))
        std = flat.std(1) if zscore_std is None else np.full(n_ch, float(zscore_std))
        if zscore_std is not None and not zscore_std > 0:
            raise UserError(f"data§zscore_std must be positive, got {zscore_std}")
        inv = 1.0 / np.maximum(std, _EPS)
        return s0 * inv, (o0 - mean) * inv
    else:
        raise UserError(f"unknown norm_type {norm_type!r}")
    if norm_type.startswith("minmax"):
        scale = 1.0 / max(hi - lo, _EPS)
        return ones * scale, zeros - lo * scale
    return ones / max(abs(hi), _EPS), zeros


def invert_affine(y, affine):
    """Back to original units; works on numpy arrays or tensors, batched (B, C, ...) or not."""
    scale, offset = affine[..., 0], affine[..., 1]
    extra = y.ndim - scale.ndim
    shape = tuple(scale.shape) + (1,) * extra
    return (y - offset.reshape(shape)) / scale.reshape(shape)


def resample(x: np.ndarray, fact: float) -> np.ndarray:
    """In-plane (last two axes) resampling by ``fact`` (linear interpolation); complex data part by part (linear
    interpolation commutes with taking the real and imaginary parts)."""
    if fact == 1.0:
        return x
    if np.iscomplexobj(x):
        re, im = resample(x.real.astype(np.float32), fact), resample(x.imag.astype(np.float32), fact)
        return (re + 1j * im).astype(COMPLEX_DTYPE)
    t = torch.from_numpy(np.ascontiguousarray(x))
    lead = t.shape[:-2]
    t = t.reshape(1, -1, *t.shape[-2:])
    t = F.interpolate(t, scale_factor=fact, mode="bilinear", align_corners=False, recompute_scale_factor=False)
    return t.reshape(*lead, *t.shape[-2:]).numpy()


def normalise_batch(inp: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Apply the per-sample, per-channel affine (B, C, 2) to a batch (B, C, ...) as float32 (complex64 for a
    complex batch: its real scale keeps the phase, and its offset is 0, see ``complex_norm_affine``)."""
    shape = affine.shape[:2] + (1,) * (inp.ndim - 2)
    if inp.is_complex():
        return inp.to(torch.complex64) * affine[..., 0].reshape(shape) + affine[..., 1].reshape(shape)
    return inp.to(torch.float32) * affine[..., 0].reshape(shape) + affine[..., 1].reshape(shape)


def crop_or_pad(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centre crop or zero-pad the trailing len(shape) axes to ``shape``, as the ancestor: an odd
    difference puts the extra padded voxel at the end and crops the extra voxel from the end."""
    lead = x.ndim - len(shape)
    slices, pads = [slice(None)] * lead, [(0, 0)] * lead
    for size, want in zip(x.shape[lead:], shape):
        if size >= want:
            start = (size - want) // 2
            slices.append(slice(start, start + want))
            pads.append((0, 0))
        else:
            slices.append(slice(None))
            before = (want - size) // 2
            pads.append((before, want - size - before))
    out = x[tuple(slices)]
    return out if all(p == (0, 0) for p in pads) else np.pad(out, pads)


def random_flip(x: np.ndarray, axes: tuple[int, ...], prob: float, rng: np.random.Generator) -> np.ndarray:
    """Flip each spatial axis in ``axes`` (0 = first spatial axis) with probability ``prob``."""
    lead = 1  # channel axis
    for axis in axes:
        if rng.random() < prob:
            x = np.flip(x, axis=lead + axis)
    return np.ascontiguousarray(x)
