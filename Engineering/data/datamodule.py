"""The Lightning DataModule: config -> index -> fold -> datasets -> loaders."""

from __future__ import annotations

from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from Engineering.config import Config
from Engineering.data.dataset import H5Samples, SampleSpec, enumerate_samples
from Engineering.data.demo import ensure_named_demo, split_demo_ref
from Engineering.data.folds import SPLITS, WHOLE_FILE, is_whole_file, read_fold
from Engineering.data.group_batches import GroupBatchSampler, GroupChunks, group_codes
from Engineering.data.index import load_records, selection_from
from Engineering.data.labels import read_label_table
from Engineering.data.transforms import VOLUME_NORMS, axis_perm, normalise_batch
from Engineering.errors import UserError
from Engineering.io.read_budget import check_bytes
from Engineering.io.shards import parse_shard


def data_dir(paths_cfg) -> Path:
    """``@demo`` (and ``@demo_mc``, its multi-channel variant) is a bundled demo cohort, written on first use."""
    demo = split_demo_ref(paths_cfg.datadir)
    if demo and not demo[1]:
        return ensure_named_demo(demo[0])
    return Path(paths_cfg.datadir).expanduser()


def resolve_data_path(cfg: Config, ref: str) -> Path:
    """``@demo/x`` is the demo cohort's file (``@demo_mc/x`` the multi-channel one's); a relative path is read
    from json§datadir unless it exists as given."""
    ref = str(ref)
    demo = split_demo_ref(ref)
    if demo:
        return ensure_named_demo(demo[0]) / demo[1]
    path = Path(ref).expanduser()
    return path if path.is_absolute() or path.exists() else data_dir(cfg.paths) / path


def phenotype_labels(cfg: Config, column: str, flag: str) -> tuple[dict, list[str]]:
    """patientID -> class name of a categorical column of json§DS_phenotypes, and the sorted class names (``flag``
    names the option that asked for it in the messages)."""
    if not column:
        raise UserError(f"{flag} COL: give a column of json§DS_phenotypes")
    spec = cfg.paths.DS_phenotypes or {}
    spec = {"path": spec} if isinstance(spec, str) else spec
    if not spec.get("path"):
        raise UserError(f"{flag}: no phenotype table; set json§DS_phenotypes§path")
    path = resolve_data_path(cfg, spec["path"])
    table = read_label_table(path)
    if column not in table.columns:
        raise UserError(
            f"{flag} {column!r} is not a column of {path} "
            f"(columns: {', '.join(c for c in table.columns if c != 'patientID')})"
        )
    labels = table.drop_duplicates("patientID").set_index("patientID")[column].dropna().astype(str)
    classes = sorted(labels.unique())
    if len(classes) < 2:
        raise UserError(f"{flag} {column!r} has {len(classes)} class(es) in {path}; it needs 2 or more")
    return labels.to_dict(), classes


def split_targets(dm, labels: dict, classes: list[str]) -> dict[str, torch.Tensor]:
    """Per split the datamodule has, the class index of every sample (-1: no label), in dataset order."""
    code = {c: k for k, c in enumerate(classes)}
    out = {}
    for split in ("train", "val", "test"):
        try:
            ds = dm.dataset(split)
        except UserError:
            continue
        pids = [ds.records[ref.record].patientID for ref in ds.samples]
        out[split] = torch.tensor([code.get(labels.get(p), -1) for p in pids], dtype=torch.long)
    return out


def dataset_positions(ds, index) -> list[int]:
    """Positions in the split's dataset of a loader's indices (the validation loader may read a fixed Subset)."""
    return [ds.indices[i] for i in index] if isinstance(ds, Subset) else list(index)


def sample_spec(cfg: Config) -> SampleSpec:
    p, d, m = cfg.paths, cfg.data, cfg.model
    split_t = True if p.DS_split_time is None else p.DS_split_time
    split_s = (not m.is3D) if p.DS_split_volume is None else p.DS_split_volume
    if d.norm_type != "zscore" and d.prenorm not in ("", "none"):
        raise UserError(f"data§prenorm={d.prenorm!r} only applies with norm_type zscore (norm_type is {d.norm_type})")
    return SampleSpec(
        is3D=m.is3D,
        input_shape=tuple(m.input_shape),
        perm=axis_perm(p.DS_channel_dim, p.DS_slice_dim),
        split_c=not p.DS_multi_channel,
        split_t=split_t,
        split_s=split_s,
        norm_type=d.norm_type,
        prenorm=str(d.prenorm),
        zscore_mean=d.zscore_mean,
        zscore_std=d.zscore_std,
        norm_range=d.norm_range,
        allow_pad=d.allow_pad,
        croppad=d.croppad,
        interp_fact=d.interp_fact,
        complex_mode=d.complex_mode,
        grey2RGB=d.grey2RGB,
        mask_mode=d.data_mask_mode,
        flip_prob=d.flip_prob,
        flip_axes=tuple(d.flip_axes),
    )


def _dims(shape) -> str:
    return "×".join(str(int(v)) for v in shape)


class EpochShuffle(Sampler):
    """A shuffle that is a pure function of (seed, epoch): a resumed run sees the same order.

    With ``epoch_fn`` (the trainer's epoch) it yields (index, epoch), so that random augmentation is a
    pure function of (seed, epoch, sample) too, whichever worker process reads the sample. The epoch is
    asked of ``epoch_fn`` rather than taken from ``set_epoch``: on a resume with persistent workers
    Lightning creates the iterator before it calls ``set_epoch``, which replayed epoch 0's order.
    """

    def __init__(self, n: int, seed: int, epoch_fn=None):
        self.n, self.seed, self.epoch, self.epoch_fn = n, seed, 0, epoch_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.epoch_fn is None:
            return iter(np.random.default_rng((self.seed, self.epoch)).permutation(self.n).tolist())
        epoch = int(self.epoch_fn())
        order = np.random.default_rng((self.seed, epoch)).permutation(self.n).tolist()
        return iter([(i, epoch) for i in order])

    def __len__(self) -> int:
        return self.n


class H5DataModule(L.LightningDataModule):
    def __init__(self, cfg: Config, merge_train_val: bool = False):
        super().__init__()
        self.cfg, self.merge_train_val = cfg, merge_train_val
        self.test_skip: set[int] = set()  # test samples already written by an interrupted test (OutputWriter)
        self.spec = sample_spec(cfg)
        root = data_dir(cfg.paths)
        self.h5file = root / cfg.paths.datafile
        self.mask_file = None
        if cfg.data.data_mask_mode:
            self.mask_file = root / "meta_mask.h5"
            if not self.mask_file.is_file():
                raise UserError(
                    f"data§data_mask_mode={cfg.data.data_mask_mode} needs {self.mask_file}, which is missing"
                )
        sel = selection_from(
            cfg.paths, need_minmax=cfg.data.norm_type in VOLUME_NORMS or str(cfg.data.prenorm) in VOLUME_NORMS
        )
        self.records, self.cache_hit = load_records(self.h5file, sel)
        if not self.records:
            raise UserError(
                f"no dataset in {self.h5file} matches the selection (json§DS_selected_primaries="
                f"{cfg.paths.DS_selected_primaries!r}, DS_selected_auxiliaries="
                f"{cfg.paths.DS_selected_auxiliaries!r}, DS_sanity_filters={cfg.paths.DS_sanity_filters!r})"
            )
        self._check_shapes()
        fold_ref = cfg.paths.foldCSV
        self.fold = WHOLE_FILE if is_whole_file(fold_ref) else read_fold(self._resolve(root, fold_ref), cfg.run.foldID)
        self._check_fold_ids()
        self._datasets: dict[str, H5Samples] = {}
        self._codes: dict[str, np.ndarray] = {}
        self.batch_size = cfg.training.batch_size  # the Lightning Tuner may change it
        self.group_columns = [c.strip() for c in str(cfg.data.batch_groups).split(",") if c.strip()]
        if self.group_columns:
            cov = cfg.paths.DS_covariates or {}
            if not cov.get("path"):
                raise UserError(
                    f"--batch_groups {cfg.data.batch_groups} reads its groups from the covariate table: "
                    "set json§DS_covariates§path"
                )
            self._group_table_path = resolve_data_path(cfg, cov["path"])
            self._group_table = read_label_table(self._group_table_path)
            # every patient of the fold needs its group now, not when the test split is reached after training
            in_fold = None if self.fold is WHOLE_FILE else {p for s in SPLITS for p in self.fold.ids(s) or ()}
            self.patient_groups({r.patientID for r in self.records if in_fold is None or r.patientID in in_fold})

    def _check_shapes(self) -> None:
        """Every selected dataset must fit the model (crop/pad rules) and memory before anything runs or is written."""
        for rec in self.records:
            check_bytes(
                self.spec.sample_bytes(rec),
                f"one sample of {self.h5file}:{rec.path} (shape {rec.shape}) "
                f"after resampling (--interp_fact {self.spec.interp_fact:g})",
                "check the selection, DS_split_* and --interp_fact",
            )
            problem = self.spec.fit_problem(self.spec.sample_spatial(rec), f"{self.h5file}:{rec.path}")
            if problem:
                raise UserError(problem)

    @staticmethod
    def _resolve(root: Path, ref) -> Path:
        path = Path(str(ref)).expanduser()
        return path if path.is_absolute() or path.exists() else root / path

    def _check_fold_ids(self) -> None:
        if self.fold is WHOLE_FILE:
            return
        with h5py.File(self.h5file, "r") as h5:
            in_file = set(h5.keys())
        for split in ("train", "val", "test"):
            absent = [p for p in self.fold.ids(split) if p not in in_file]
            if absent:
                raise UserError(
                    f"{len(absent)} patient ID(s) of fold {self.cfg.run.foldID} split '{split}' are not in "
                    f"{self.h5file}: {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}"
                )

    def pipeline(self, trains: bool = True) -> tuple[str, list[str]]:
        """The data pipeline in one line (what the data are, what the model gets, the folds) and the warnings for
        what changes a user's data without a word: volumes cut into 2D slices by default, and a run that trains and
        tests on the same samples (no fold file). ``trains``: the run trains (else it only tests)."""
        spec, records, paths = self.spec, self.records, self.cfg.paths
        shapes = [spec.logical_shape(r) for r in records]  # (C, T, S, X, Y)
        C, T, S = shapes[0][:3]
        what = (
            f"{len(records)} {'volume' if S > 1 else 'image'}{'s' if len(records) > 1 else ''} "
            f"{_dims(shapes[0][2:] if S > 1 else shapes[0][3:])}"
        )
        extra = [f"{T} frames"] * (T > 1) + [f"{C} channels"] * (C > 1)
        what += (f" ({', '.join(extra)})" if extra else "") + (
            f" and {len(set(shapes)) - 1} other shape(s)" if len(set(shapes)) > 1 else ""
        )
        n = sum(
            (c if spec.split_c else 1) * (t if spec.split_t else 1) * (z if spec.split_s else 1)
            for c, t, z, _, _ in shapes
        )
        steps = [f"{what} → {n} {'3D' if spec.is3D else '2D'} sample{'s' if n != 1 else ''}"]
        if spec.interp_fact != 1.0:
            steps.append(f"resampled ×{spec.interp_fact:g}")
        have, want = {spec.sample_spatial(r) for r in records}, tuple(spec.input_shape)
        if have == {want}:
            steps.append(f"at {_dims(want)}")
        elif spec.croppad:
            crop = all(a >= b for h in have for a, b in zip(h, want))
            pad = all(a <= b for h in have for a, b in zip(h, want))
            steps.append(f"{'cropped' if crop else 'padded' if pad else 'cropped/padded'} to {_dims(want)}")
        folds, warnings = self.split_summary(trains)
        n_vol = sum(1 for s in shapes if s[2] > 1)
        if n_vol and not spec.is3D and paths.DS_split_volume is None:
            warnings.insert(
                0,
                f"{n_vol} of the {len(records)} datasets are volumes ({_dims(shapes[0][2:])}) but the "
                "model is 2D: each slice becomes a sample of its own; pass --is3D --input_shape S,X,Y "
                "for a 3D model (json§DS_split_volume true keeps the slices without this warning)",
            )
        return "data: " + ", ".join(steps) + "; " + folds, warnings

    def split_summary(self, trains: bool = True) -> tuple[str, list[str]]:
        """``folds: ...`` (the fold file and the patients of each split) and a warning when a training run's train
        and test splits are the same patients."""
        present = {r.patientID for r in self.records}
        sets = {}
        for split in ("train", "val", "test"):
            ids = self.split_ids(split)
            sets[split] = present if ids is None else ids & present
        if self.fold is WHOLE_FILE and all(sets[k] == present for k in sets):
            folds = "folds: none, train = val = test"
        else:
            source = "none" if self.fold is WHOLE_FILE else f"{self.cfg.paths.foldCSV} row {self.cfg.run.foldID}"
            folds = (
                f"folds: {source}, patients train {len(sets['train'])} / val {len(sets['val'])} / test "
                f"{len(sets['test'])}" + (" (train includes val)" if self.merge_train_val else "")
            )
        warnings = []
        if trains and sets["train"] == sets["test"]:
            why = "json§foldCSV is empty" if self.fold is WHOLE_FILE else f"fold {self.cfg.run.foldID} says so"
            warnings.append(
                f"train and test are the same {len(sets['test'])} patients ({why}): the test measures "
                "fit, not generalisation; give a fold file (preprocess/make_folds.py)"
            )
        return folds, warnings

    def split_ids(self, split: str) -> set[str] | None:
        if self.fold is WHOLE_FILE:
            return None
        ids = set(self.fold.ids(split))
        if split == "train" and self.merge_train_val:
            ids |= set(self.fold.val)
        return ids

    def dataset(self, split: str) -> H5Samples:
        if split not in self._datasets:
            ids = self.split_ids(split)
            keep = [i for i, r in enumerate(self.records) if ids is None or r.patientID in ids]
            shard = parse_shard(self.cfg.run.shard) if split == "test" else None
            if shard is not None:  # every n-th patient of the split from the i-th: shards are disjoint by patient
                mine = set(sorted({self.records[i].patientID for i in keep})[shard[0] :: shard[1]])
                keep = [i for i in keep if self.records[i].patientID in mine]
            records = [self.records[i] for i in keep]
            if not records:
                raise UserError(f"the '{split}' split of fold {self.cfg.run.foldID} has no selected datasets")
            samples = enumerate_samples(records, self.spec)
            ds = H5Samples(
                self.h5file,
                records,
                samples,
                self.spec,
                train=split == "train",
                mask_file=self.mask_file,
                seed=self.cfg.training.seed,
            )
            self._datasets[split] = ds
        return self._datasets[split]

    def group_codes(self, split: str) -> np.ndarray | None:
        """Per sample of ``dataset(split)``, its --batch_groups group code (None without --batch_groups)."""
        if not self.group_columns:
            return None
        if split not in self._codes:
            ds = self.dataset(split)
            patients = [ds.records[ref.record].patientID for ref in ds.samples]
            self._codes[split], self.group_names = group_codes(
                patients, self._group_table, self.group_columns, str(self._group_table_path)
            )
        return self._codes[split]

    def patient_groups(self, patients) -> dict[str, str]:
        """patientID -> its --batch_groups group name (empty without --batch_groups)."""
        if not self.group_columns:
            return {}
        patients = sorted(set(patients))
        codes, names = group_codes(patients, self._group_table, self.group_columns, str(self._group_table_path))
        return {p: names[c] for p, c in zip(patients, codes)}

    def control_mask(self, split: str) -> np.ndarray | None:
        """Per sample of ``dataset(split)``: is it a control (--bn_controls COL=VALUE of the covariate table)?"""
        spec = str(self.cfg.eval.bn_controls)
        if not spec:
            return None
        col, sep, value = spec.partition("=")
        if not sep or not col:
            raise UserError(f"--bn_controls {spec!r}: give COL=VALUE, e.g. treatment=DMSO")
        if not self.group_columns:
            raise UserError("--bn_controls needs the covariate table of --batch_groups (give --batch_groups COL)")
        if col not in self._group_table.columns:
            raise UserError(f"--bn_controls: column {col!r} is not in {self._group_table_path}")
        ds = self.dataset(split)
        control = self._group_table.drop_duplicates("patientID").set_index("patientID")[col].astype(str) == value
        return np.array([bool(control.get(ds.records[ref.record].patientID, False)) for ref in ds.samples])

    def _ranks(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds, shuffle: bool, codes: np.ndarray | None = None) -> DataLoader:
        run = self.cfg.run
        workers = run.num_workers
        # the loader's own generator: creating its iterator (worker base seeds) must not draw from the global RNG,
        # which dropout uses, or a resume with persistent workers would shift that stream
        generator = torch.Generator().manual_seed(int(self.cfg.training.seed))
        common = dict(
            num_workers=workers,
            generator=generator,
            pin_memory=run.pin_memory,
            prefetch_factor=run.prefetch_factor if workers > 0 else None,
            persistent_workers=workers > 0,
        )
        if codes is not None:  # group-pure batches (BEN); the samplers split the work across ranks themselves
            rank, world = self._ranks()
            batches = (
                GroupBatchSampler(
                    codes, self.batch_size, self.cfg.training.seed, epoch_fn=self._trainer_epoch, rank=rank, world=world
                )
                if shuffle
                else GroupChunks(codes, self.batch_size, rank, world)
            )
            return DataLoader(ds, batch_sampler=batches, **common)
        sampler = EpochShuffle(len(ds), self.cfg.training.seed, self._trainer_epoch) if shuffle else None
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, **common)

    def _trainer_epoch(self) -> int:
        # what Lightning itself passes to set_epoch (a resumed run's tracker has processed > completed)
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def ordered_loader(self, split: str, rank: int = 0, world: int = 1) -> DataLoader:
        """Every ``world``-th sample of the split from ``rank``, in dataset order: one pass over all of them
        across the ranks (e.g. IP-IRM's feature bank); ``batch["index"]`` is the dataset position."""
        ds = self.dataset(split)
        return self._loader(Subset(ds, list(range(rank, len(ds), world))), shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), shuffle=True, codes=self.group_codes("train"))

    def val_subset(self):
        """A fixed, seeded subset when n_val_batches is a fraction (< 1)."""
        ds = self.dataset("val")
        frac = self.cfg.training.n_val_batches
        if isinstance(frac, float) and 0 < frac < 1:
            n = max(1, int(round(frac * len(ds))))
            idx = np.sort(np.random.default_rng(self.cfg.training.seed).choice(len(ds), n, replace=False))
            return Subset(ds, idx.tolist())
        return ds

    def val_dataloader(self) -> DataLoader:
        ds = self.val_subset()
        codes = self.group_codes("val")
        if codes is not None and isinstance(ds, Subset):
            codes = codes[np.asarray(ds.indices)]
        return self._loader(ds, shuffle=False, codes=codes)

    def test_dataloader(self) -> DataLoader:
        ds, codes = self.dataset("test"), self.group_codes("test")
        if self.test_skip:  # a resumed test: only the samples an interrupted one did not write
            keep = [i for i in range(len(ds)) if i not in self.test_skip]
            codes = codes[np.asarray(keep, dtype=np.int64)] if codes is not None else None
            ds = Subset(ds, keep)
        return self._loader(ds, shuffle=False, codes=codes)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Normalise on the device: the loader ships stored dtypes (e.g. int16) and the affine.
        batch["inp"] = normalise_batch(batch["inp"], batch["affine"])
        return batch
