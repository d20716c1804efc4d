"""Latents joined with a phenotype table, split by the fold file, standardised with training statistics only.

Input latents are a run's flat table (emb.parquet / emb.tsv / emb.h5, see
``Engineering.io.latents``): one sample per row, optionally averaged per patient.
The phenotype table (``json§DS_phenotypes``) is joined on patient, and on
field/instance/key where it has those columns. Patients are assigned to
train/val/test by the same fold file (``json§foldCSV``, row ``--foldID``) as the
autoencoder, so a predictor is never tested on patients whose phenotypes it saw.

Unlike the ancestor (scalers fitted on the whole cohort before splitting), the
latent and target scalers are fitted on the training split only and then applied
to every split: nothing of the val/test patients leaks into training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from Engineering.config import Config
from Engineering.data.datamodule import resolve_data_path
from Engineering.data.folds import SPLITS, is_whole_file, read_fold
from Engineering.data.labels import CATEGORICAL, CONTINUOUS, attach_labels, read_label_table, resolve_targets
from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.errors import UserError
from Engineering.io.latents import latent_arrays, read_latents, resolve_latent_file

AGGREGATIONS = ("none", "patient")
# Without a fold file: a seeded split by patient (train, val; the rest is test).
FALLBACK_FRACTIONS = (0.7, 0.15)


@dataclass(frozen=True)
class TargetSpec:
    """One target: its kind, its classes (categorical) or training mean/std (continuous, learnt standardised)."""

    name: str
    kind: str  # CATEGORICAL or CONTINUOUS
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def width(self) -> int:
        """Outputs a head needs for this target: one logit per class, or one value."""
        return len(self.classes) if self.kind == CATEGORICAL else 1

    def to_dict(self) -> dict:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> TargetSpec:
        return cls(
            d["name"], d["kind"], tuple(d.get("classes", ())), float(d.get("mean", 0.0)), float(d.get("std", 1.0))
        )


@dataclass
class LatentSet:
    ids: pd.DataFrame  # sample ID columns and 'split', one row per sample
    Z: np.ndarray  # (n, L) float32 latents, standardised with the training split's mean/std
    Y: np.ndarray  # (n, n_targets) float32: standardised value or class code; NaN = missing
    truth: pd.DataFrame  # the targets' original values per sample (for the predictions table)
    targets: list[TargetSpec]
    z_mean: np.ndarray  # training statistics of the latents (kept with the model: manipulation un-standardises)
    z_std: np.ndarray
    source: Path
    notes: list[str] = field(default_factory=list)

    def rows(self, *splits: str) -> np.ndarray:
        return self.ids["split"].isin(splits).to_numpy()


def _list(text: str) -> list[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def latent_source(cfg: Config) -> Path:
    """The latent file: ``--latents``, or ``<save_path>/<parent_trainID>/<parent_outfolder>``."""
    latents, parent = cfg.data.latents, cfg.run.parent_trainID
    if latents and parent:
        raise UserError("give either --latents or --parent_trainID, not both")
    if latents:
        return resolve_latent_file(Path(latents).expanduser())
    if parent:
        folder = Path(cfg.paths.save_path).expanduser() / parent / cfg.run.parent_outfolder
        if not folder.is_dir():
            raise UserError(
                f"--parent_trainID {parent}: no folder {folder} (check json§save_path and "
                "--parent_outfolder, e.g. Output_fullDS)"
            )
        return resolve_latent_file(folder)
    raise UserError("no latents: give --parent_trainID RUN (a run folder in json§save_path) or --latents PATH")


def _phenotype_spec(cfg: Config) -> tuple[Path, list[str]]:
    spec = cfg.paths.DS_phenotypes
    if not spec:
        raise UserError('no phenotype table: set json§DS_phenotypes to {"path": ..., "columns": [...]}')
    if isinstance(spec, str):
        spec = {"path": spec}
    if not spec.get("path"):
        raise UserError("json§DS_phenotypes has no 'path'")
    return resolve_data_path(cfg, spec["path"]), [str(c) for c in spec.get("columns") or []]


def _sample_latents(path: Path, aggregate: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(sample IDs, Z) of a latent file; bad rows are errors, not silently dropped samples."""
    if aggregate not in AGGREGATIONS:
        raise UserError(f"--latent_aggregate {aggregate!r}: choose one of {', '.join(AGGREGATIONS)}")
    ids, Z = latent_arrays(read_latents(path), dtype=np.float32)
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        row = ids.loc[np.flatnonzero(bad)[0]]
        raise UserError(
            f"{path}: {int(bad.sum())} of {len(Z)} latent rows contain NaN or inf (first: patient "
            f"{row['patientID']} {row['fieldID']}/{row['instanceID']}/{row['key']} "
            f"c={row['c']} t={row['t']} s={row['s']})"
        )
    dup = ids.duplicated(list(SAMPLE_COLUMNS)).to_numpy()
    if dup.any():
        row = ids.loc[np.flatnonzero(dup)[0]]
        raise UserError(
            f"{path}: {int(dup.sum())} duplicate latent rows (first: patient {row['patientID']} "
            f"key {row['key']} c={row['c']} t={row['t']} s={row['s']})"
        )
    ids = ids[list(SAMPLE_COLUMNS)]
    if aggregate == "patient":
        frame = pd.DataFrame(Z).groupby(ids["patientID"].to_numpy(), sort=True).mean()
        return pd.DataFrame({"patientID": frame.index.astype(str)}), frame.to_numpy(dtype=np.float32)
    return ids.reset_index(drop=True), Z


def patient_splits(cfg: Config, patients: list[str], merge_train_val: bool) -> tuple[dict[str, str], str]:
    """patient -> split from the fold file (a seeded split by patient without one), and where it came from."""
    ref = cfg.paths.foldCSV
    if is_whole_file(ref):
        rng = np.random.default_rng(cfg.training.seed)
        order = [patients[i] for i in rng.permutation(len(patients))]
        n_train = max(1, int(round(FALLBACK_FRACTIONS[0] * len(order))))
        n_val = int(round(FALLBACK_FRACTIONS[1] * len(order)))
        split = {p: "train" for p in order[:n_train]}
        split.update({p: "val" for p in order[n_train : n_train + n_val]})
        split.update({p: "test" for p in order[n_train + n_val :]})
        where = f"no fold file: a seeded (seed {cfg.training.seed}) 70/15/15 split by patient"
    else:
        path = resolve_data_path(cfg, ref)
        fold = read_fold(path, cfg.run.foldID)
        split = {p: s for s in SPLITS for p in fold.ids(s)}
        where = f"{path} fold {cfg.run.foldID}"
    if merge_train_val:
        split = {p: "train" if s == "val" else s for p, s in split.items()}
    return split, where


def prepare(cfg: Config, merge_train_val: bool = False) -> LatentSet:
    """Latents + targets of every usable sample, split and standardised (see the module doc)."""
    source = latent_source(cfg)
    ids, Z = _sample_latents(source, cfg.data.latent_aggregate)
    pheno_path, pheno_cols = _phenotype_spec(cfg)
    table, notes = attach_labels(ids, {pheno_path.name: read_label_table(pheno_path)})

    split, where = patient_splits(cfg, sorted(ids["patientID"].unique()), merge_train_val)
    table["split"] = table["patientID"].map(split)
    unassigned = table["split"].isna().to_numpy()
    if unassigned.all():
        raise UserError(
            f"no latent's patient is in {where} (latents have e.g. {', '.join(ids['patientID'].unique()[:3])})"
        )
    if unassigned.any():
        notes.append(
            f"{int(table.loc[unassigned, 'patientID'].nunique())} patient(s) with latents are in no "
            f"split of {where}: left out"
        )
    keep = ~unassigned
    table, Z = table.loc[keep].reset_index(drop=True), Z[keep]
    train = table["split"].eq("train").to_numpy()
    if train.sum() < 2:
        present = ", ".join(f"{s}: {n}" for s, n in table["split"].value_counts().items())
        raise UserError(
            f"only {int(train.sum())} latent rows belong to the training patients of {where} "
            f"({present}); write latents of the whole cohort first (main_diffAE --resume --load_best "
            "--run_mode 2 --output_suffix fullDS --json§foldCSV 0) and use "
            "--parent_outfolder Output_fullDS"
        )

    named = _list(cfg.data.targets) or pheno_cols or None
    reserved = ["split"]
    found, target_notes = resolve_targets(
        table,
        named,
        _list(cfg.data.categorical_targets),
        _list(cfg.data.continuous_targets),
        reserved,
        min_class_size=2,
        min_samples=4,
    )
    notes += target_notes
    if not found:
        raise UserError(
            f"no usable target column in {pheno_path}" + (f" ({'; '.join(target_notes)})" if target_notes else "")
        )

    # Training statistics only: the scalers see the rows of the training patients (the ancestor fitted on all).
    z_scaler = StandardScaler().fit(Z[train])
    Zs = z_scaler.transform(Z).astype(np.float32)

    specs, columns = [], []
    truth = pd.DataFrame(index=table.index)
    for t in found:
        mask = t.mask
        if not (mask & train).any():
            raise UserError(f"target '{t.name}' has no value among the training patients of {where}")
        if t.kind == CATEGORICAL:
            classes = tuple(sorted({str(v) for v in t.values[mask]}))
            seen = sorted({str(v) for v in t.values[mask & train]})
            if len(seen) < 2:  # a classifier of one class predicts it everywhere: its scores would mean nothing
                raise UserError(
                    f"target '{t.name}' has the single class {seen[0]!r} among the training patients of "
                    f"{where} (all patients: {', '.join(classes)}); a classifier needs two: choose "
                    "another fold or leave the target out (--targets)"
                )
            code = {c: i for i, c in enumerate(classes)}
            col = np.array([code[str(v)] if m else np.nan for v, m in zip(t.values, mask)], dtype=np.float32)
            specs.append(TargetSpec(t.name, CATEGORICAL, classes))
            truth[t.name] = [str(v) if m else None for v, m in zip(t.values, mask)]
        else:
            values = np.where(mask, t.values, np.nan).astype(np.float64)
            scaler = StandardScaler().fit(values[train & mask].reshape(-1, 1))
            mean, std = float(scaler.mean_[0]), float(scaler.scale_[0])
            col = ((values - mean) / std).astype(np.float32)
            specs.append(TargetSpec(t.name, CONTINUOUS, (), mean, std))
            truth[t.name] = values
        if t.note:
            notes.append(f"target '{t.name}': {t.note}")
        columns.append(col)
    id_cols = [c for c in SAMPLE_COLUMNS if c in table.columns]
    return LatentSet(
        table[id_cols + ["split"]].copy(),
        Zs,
        np.stack(columns, axis=1),
        truth,
        specs,
        z_scaler.mean_.astype(np.float32),
        z_scaler.scale_.astype(np.float32),
        source,
        notes + [f"splits: {where}"],
    )
