"""A torch Dataset over the 5D HDF5 contract that reads only what each sample needs.

A sample is one (channel, time, slice) selection: an axis that is split
contributes one index, an axis that is not split is read whole. A 2D model gets
C x X x Y, a 3D model C x S x X x Y; unsplit axes the model has no room for
(time for both, slice for 2D) are folded into channels. The file is opened
lazily, once per worker process, and read with h5py slicing, so a sample never
loads its whole dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from Engineering.data import transforms as T
from Engineering.data.index import DatasetRecord
from Engineering.data.layout import SampleInfo
from Engineering.errors import UserError


@dataclass(frozen=True)
class SampleRef:
    record: int
    c: int | None  # None: the whole axis
    t: int | None
    s: int | None


@dataclass(frozen=True)
class SampleSpec:
    """How records become model inputs (from the config's data/model/json sections)."""

    is3D: bool
    input_shape: tuple[int, ...]
    perm: tuple[int, ...] = (0, 1, 2, 3, 4)
    split_c: bool = False
    split_t: bool = True
    split_s: bool = True
    norm_type: str = "minmax"
    prenorm: str = "none"
    zscore_mean: float | None = None
    zscore_std: float | None = None
    norm_range: str = "unit"
    allow_pad: bool = False
    croppad: bool = True
    interp_fact: float = 1.0
    complex_mode: str = "magnitude"
    grey2RGB: bool = False
    mask_mode: int = 0
    flip_prob: float = 0.0
    flip_axes: tuple[int, ...] = field(default_factory=tuple)

    def logical_shape(self, rec: DatasetRecord) -> tuple[int, ...]:
        return tuple(rec.shape[p] for p in self.perm)

    def sample_spatial(self, rec: DatasetRecord) -> tuple[int, ...]:
        """Spatial size of the record's samples before crop/pad: (S, X, Y) for 3D, (X, Y) for 2D, after resampling."""
        _, _, S, X, Y = self.logical_shape(rec)
        if self.interp_fact != 1.0:  # F.interpolate's output size: floor(size * factor)
            X, Y = int(np.floor(X * self.interp_fact)), int(np.floor(Y * self.interp_fact))
        return ((1 if self.split_s else S), X, Y) if self.is3D else (X, Y)

    def sample_bytes(self, rec: DatasetRecord) -> int:
        """float32 (complex64 when kept complex) bytes of one sample after resampling (before crop/pad): what
        reading it allocates."""
        C, Tn = self.logical_shape(rec)[:2]
        channels = (
            (1 if self.split_c else C)
            * (1 if self.split_t else Tn)
            * (2 if self.complex_mode in ("magphase", "realimag") else 1)
        )
        return (8 if self.complex_mode == "complex" else 4) * channels * int(np.prod(self.sample_spatial(rec)))

    def fit_problem(self, have: tuple[int, ...], where: str) -> str | None:
        """Why a sample of spatial size ``have`` cannot become ``input_shape`` (None: it can).

        Crop-or-pad that pads more than half of an axis makes latents of mostly padding
        (a cine frame padded to 50 slices is 98 % zeros): refused unless --allow_pad.
        """
        want = tuple(self.input_shape)
        if len(want) != len(have):
            return (
                f"model§input_shape {list(want)} needs {len(have)} sizes for this "
                f"{'3D' if self.is3D else '2D'} model (got {len(want)})"
            )
        resampled = (
            f" (after --interp_fact {self.interp_fact:g} resampled it in-plane)" if self.interp_fact != 1.0 else ""
        )
        if have != want and not self.croppad:
            return (
                f"{where} gives samples of spatial shape {list(have)}{resampled} but model§input_shape is "
                f"{list(want)}; use --croppad true or change --input_shape"
            )
        if self.croppad and not self.allow_pad:
            names = ("S", "X", "Y") if self.is3D else ("X", "Y")
            for axis, (size, target) in enumerate(zip(have, want)):
                if 2 * size < target:
                    fix = (
                        "the slices may be cine frames: select time as slices with --json§DS_slice_dim 1"
                        if self.is3D and axis == 0
                        else "change --input_shape or --interp_fact"
                    )
                    return (
                        f"{where}: crop-or-pad would pad axis {names[axis]} from {size}{resampled} to the model's "
                        f"{target} ({100 * (target - size) / target:.0f}% padding); {fix}, or pass --allow_pad"
                    )
        return None


def enumerate_samples(records: list[DatasetRecord], spec: SampleSpec) -> list[SampleRef]:
    out = []
    for i, rec in enumerate(records):
        C, Tn, S = spec.logical_shape(rec)[:3]
        cs = range(C) if spec.split_c else [None]
        ts = range(Tn) if spec.split_t else [None]
        ss = range(S) if spec.split_s else [None]
        out.extend(SampleRef(i, c, t, s) for c in cs for t in ts for s in ss)
    return out


def _stays_finite(x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> bool:
    """Whether ``x * scale + offset`` stays far inside float32 range; integer data is bounded by its dtype, so
    only float data costs a pass over the values."""
    if not (np.isfinite(scale).all() and np.isfinite(offset).all()):
        return False
    if x.dtype.kind in "iu":
        bound = float(max(abs(np.iinfo(x.dtype).min), np.iinfo(x.dtype).max))
    elif x.dtype.kind == "b" or x.size == 0:
        bound = 1.0
    else:
        bound = float(np.abs(x).max())
    return bool((np.abs(scale) * bound + np.abs(offset)).max() < 1e30)


OPEN_DATASETS = 64  # HDF5 dataset handles kept open per file and process (least recently used dropped)
METADATA_CACHE = 4 * 2**20  # bytes of HDF5 metadata cache per open file


class H5Samples(Dataset):
    def __init__(
        self,
        h5file: str | Path,
        records: list[DatasetRecord],
        samples: list[SampleRef],
        spec: SampleSpec,
        train: bool = False,
        mask_file: str | Path | None = None,
        seed: int = 0,
    ):
        self.h5file, self.records, self.samples, self.spec = str(h5file), records, samples, spec
        self.train, self.mask_file, self.seed = train, (str(mask_file) if mask_file else None), seed
        self._files: dict[str, h5py.File] = {}
        self._handles: dict[tuple[str, int], h5py.Dataset] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.samples)

    def _file(self, path: str) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker must not share the parent's HDF5 handle
            self._files, self._handles, self._pid = {}, {}, os.getpid()
        if path not in self._files:
            f = self._files[path] = h5py.File(path, "r")
            # HDF5's metadata cache grows to 32 MiB per open file as a pass touches every group; a reader that
            # visits each dataset once gains nothing from more than a few MiB
            mdc = f.id.get_mdc_config()
            mdc.max_size, mdc.min_size = METADATA_CACHE, min(mdc.min_size, METADATA_CACHE)
            mdc.initial_size = min(mdc.initial_size, METADATA_CACHE)
            f.id.set_mdc_config(mdc)
        return self._files[path]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_handles"], state["_pid"] = {}, {}, None
        return state

    def _dataset(self, path: str, rec: DatasetRecord) -> h5py.Dataset:
        handle = self._file(path).get(rec.path)
        if handle is None:
            raise UserError(f"{path}:{rec.path} is missing")
        return handle

    def read_raw(self, ref: SampleRef, path: str | None = None) -> np.ndarray:
        """The logical (c, t, s, X, Y) block of one sample, read by slicing (split axes have length 1)."""
        path = path or self.h5file
        rec = self.records[ref.record]
        key = (path, ref.record)
        handle = self._handles.get(key) if self._pid == os.getpid() else None
        if handle is None:  # path lookups cost more than a small read: keep the handles of recent datasets
            handle = self._handles[key] = self._dataset(path, rec)
            if len(self._handles) > OPEN_DATASETS:
                # each open dataset holds HDF5 metadata and its chunk cache (~200 KB seen): unbounded, a whole
                # cohort's test grew by GBs; a pass in dataset order needs only the current one
                self._handles.pop(next(iter(self._handles)))
        else:
            self._handles[key] = self._handles.pop(key)  # most recently used last
        raw_sel = [slice(None)] * 5
        for logical, idx in enumerate((ref.c, ref.t, ref.s)):
            if idx is not None:
                raw_sel[self.spec.perm[logical]] = slice(idx, idx + 1)
        return np.transpose(handle[tuple(raw_sel)], self.spec.perm)

    def _to_model_layout(self, block: np.ndarray) -> np.ndarray:
        c, t, s, x, y = block.shape
        if self.spec.is3D:
            return block.reshape(c * t, s, x, y)
        return block.reshape(c * t * s, x, y)

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        """The sample in its stored dtype where possible, with the (C, 2) affine that normalises it.

        The affine is applied per batch after the transfer to the device
        (H5DataModule.on_after_batch_transfer, or :meth:`sample`): the loader then
        moves half the bytes for int16 data and does no float passes on the CPU.
        """
        i, epoch = i if isinstance(i, tuple) else (i, 0)  # the training sampler yields (index, epoch)
        ref = self.samples[i]
        rec = self.records[ref.record]
        spec = self.spec
        block = self.read_raw(ref)
        if block.dtype.kind in "fc" and not np.isfinite(block).all():
            raise UserError(
                f"{self.h5file}:{rec.path} contains NaN/Inf values (sample c={ref.c}, t={ref.t}, s={ref.s})"
            )
        if spec.complex_mode == "complex" and block.dtype.kind != "c":  # a real model input is not what was asked
            raise UserError(
                f"{self.h5file}:{rec.path} is real ({block.dtype}) but --complex_mode complex keeps "
                "complex data complex: select complex datasets, or choose another --complex_mode"
            )
        x = self._to_model_layout(T.complex_to_real(block, spec.complex_mode) if block.dtype.kind == "c" else block)
        mask = None
        if spec.mask_mode and self.mask_file:
            mask = self._to_model_layout(self.read_raw(ref, self.mask_file))
            mask = self._spatial(mask.astype(np.float32), rec) > 0.5
        if spec.norm_type in T.VOLUME_NORMS or spec.prenorm in T.VOLUME_NORMS:
            self._check_volume_bounds(x, rec)  # on the stored values (padding zeros may lie below min_val)
        # The ancestor's order: resample, crop-or-pad (zeros), mask, then the statistics of what the model sees.
        x = self._spatial(x, rec)
        if mask is not None and spec.mask_mode == 1:
            x = np.where(mask, x, np.zeros((), x.dtype))
        scale, offset = T.norm_affine(
            x,
            spec.norm_type,
            (rec.min_val, rec.max_val),
            spec.prenorm,
            spec.zscore_mean,
            spec.zscore_std,
            spec.norm_range,
        )
        affine = np.stack([scale, offset], 1).astype(np.float32)
        if not _stays_finite(x, scale, offset):  # a wild attribute or a constant must not give inf
            raise UserError(
                f"{self.h5file}:{rec.path}: --norm_type {spec.norm_type} gives non-finite values "
                f"for this sample (scale {scale.tolist()}, offset {offset.tolist()}); check the "
                "dataset's min_val/max_val attributes or choose another normalisation"
            )
        if spec.grey2RGB and x.shape[0] == 1:
            x, affine = np.repeat(x, 3, 0), np.repeat(affine, 3, 0)
        if self.train and spec.flip_prob > 0 and spec.flip_axes:
            # a pure function of (seed, epoch, sample): the same flips with any number of workers and after a resume
            rng = np.random.default_rng((self.seed, epoch, i))
            x = T.random_flip(x, spec.flip_axes, spec.flip_prob, rng)
        if x.dtype.kind == "c":  # kept complex (complex_to_real made it complex64): never cast to a real dtype
            x = x.astype(T.COMPLEX_DTYPE, copy=False)
        elif x.dtype not in T.BATCH_DTYPES:
            x = x.astype(np.float32)
        out = {"inp": torch.from_numpy(np.ascontiguousarray(x)), "affine": torch.from_numpy(affine), "index": i}
        if mask is not None and spec.mask_mode == 2:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
        return out

    def sample(self, i: int) -> dict:
        """Sample i normalised (float32), as the model sees it."""
        item = self[i]
        item["inp"] = T.normalise_batch(item["inp"][None], item["affine"][None])[0]
        return item

    def _check_volume_bounds(self, x: np.ndarray, rec: DatasetRecord) -> None:
        """min_val/max_val are the dataset's range: a sample outside it means the attributes are wrong, and a
        volumetric normalisation would be silently off."""
        lo, hi = rec.min_val, rec.max_val
        if lo is None or hi is None:
            return
        mag = np.abs(x) if np.iscomplexobj(x) else x
        have_lo, have_hi = float(mag.min()), float(mag.max())
        tol = 1e-4 * max(1.0, abs(lo), abs(hi))
        if lo > hi or have_lo < lo - tol or have_hi > hi + tol:
            raise UserError(
                f"{self.h5file}:{rec.path}: its min_val/max_val attributes ({lo:g}, {hi:g}) do not "
                f"bound its data ({have_lo:g} .. {have_hi:g}); recompute them (preprocess/validate_h5.py "
                "reports this) or use a per-sample normalisation"
            )

    def _spatial(self, x: np.ndarray, rec: DatasetRecord) -> np.ndarray:
        if self.spec.interp_fact != 1.0:
            x = T.resample(x if x.dtype.kind == "c" else x.astype(np.float32), self.spec.interp_fact)
        have, want = tuple(x.shape[1:]), tuple(self.spec.input_shape)
        problem = self.spec.fit_problem(have, f"{self.h5file}:{rec.path}")
        if problem:
            raise UserError(problem)
        return x if have == want else T.crop_or_pad(x, want)

    def sample_info(self, i: int) -> SampleInfo:
        """Where sample i comes from and the size of its dataset's output array (the output contract's key)."""
        ref = self.samples[i]
        rec = self.records[ref.record]
        spec = self.spec
        shape = spec.logical_shape(rec)
        return SampleInfo(
            rec.patientID,
            rec.fieldID,
            rec.instanceID,
            rec.key,
            ref.c,
            ref.t,
            ref.s,
            shape[0] if spec.split_c else 1,
            shape[1] if spec.split_t else 1,
            shape[2] if spec.split_s else 1,
        )

    def key_digest(self) -> str:
        """A digest of every sample's key and (c, t, s) in dataset order: what "the same samples" means."""
        import hashlib

        h = hashlib.sha1()
        for i in range(len(self)):
            d = self.describe(i)
            h.update(
                "\t".join(str(d[f]) for f in ("patientID", "fieldID", "instanceID", "key", "c", "t", "s")).encode()
                + b"\n"
            )
        return h.hexdigest()

    def describe(self, i: int) -> dict:
        """IDs and indices of sample i, for the output files."""
        ref = self.samples[i]
        rec = self.records[ref.record]
        return {
            "patientID": rec.patientID,
            "fieldID": rec.fieldID,
            "instanceID": rec.instanceID,
            "key": rec.key,
            "c": ref.c,
            "t": ref.t,
            "s": ref.s,
            "record": ref.record,
        }
