"""From latent tables to GWAS phenotypes: one row per participant, QC, covariates, transforms, merging of runs.

Pure table functions (pandas/numpy/scikit-learn in, out); the files and the report are ``genetics.export``'s.
The steps follow what GWAS of image-derived phenotypes commonly do (UK Biobank imaging GWAS; the ancestor's
companion analysis, Ometto, Radhakrishnan et al., "Hundreds of cardiac MRI traits derived using 3D diffusion
autoencoders share a common genetic architecture"): one visit per participant, QC, covariates, optional
residualisation, then the rank-based inverse normal transform, and views or models merged by concatenation,
PCA or pairwise CCA (the mean of the two views' canonical variates, chained over the runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from Engineering.errors import UserError
from Engineering.io.latents import z_columns

VISIT_CHOICES = ("first", "last")
AXES = {"channel": "c", "time": "t", "slice": "s"}
MERGES = ("concat", "pca", "cca")
BLOM_C = 3.0 / 8.0  # Blom's offset of the rank-based inverse normal transform


@dataclass
class Drops:
    """Participants removed, by reason, in the order the steps ran (the report's table)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, ids) -> None:
        ids = [str(i) for i in ids]
        if ids:
            self.counts[reason] = self.counts.get(reason, 0) + len(ids)
            self.examples.setdefault(reason, []).extend(ids[: 5 - len(self.examples.get(reason, []))])


def _order(values) -> list[str]:
    """IDs in visit order: numerically where every ID is a number (UK Biobank instance 2 before 10), else as text."""
    values = sorted(set(map(str, values)))
    if all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return values


def _pick(df: pd.DataFrame, col: str, choice: str, what: str) -> pd.DataFrame:
    """Per patient, the rows of the first / last / a given value of ``col``."""
    if choice not in VISIT_CHOICES:
        if choice not in set(df[col]):
            raise UserError(
                f"--{what} {choice}: no latent has {col} {choice!r} (there are {', '.join(_order(df[col])[:8])})"
            )
        return df[df[col] == choice]
    rank = {v: i for i, v in enumerate(_order(df[col]))}
    r = df[col].map(rank)
    best = r.groupby(df["patientID"]).transform("min" if choice == "first" else "max")
    return df[r == best]


def one_row_per_participant(
    df: pd.DataFrame,
    field_choice: str = "first",
    instance: str = "first",
    key: str = "",
    reduce: dict[str, str] | None = None,
    drops: Drops | None = None,
) -> pd.DataFrame:
    """A flat latent table (``Engineering.io.latents.read_latents``) as one row per patient (index ``patientID``,
    columns Z0..): the chosen key, field and instance (first / last / a given ID, per patient: a patient without
    it is dropped and counted), and each of the channel, time and slice axes either averaged (``mean``) or taken at
    a given index. A latent NaN in any averaged row stays NaN (QC drops the participant, with its reason)."""
    reduce = {**{a: "mean" for a in AXES}, **(reduce or {})}
    drops = drops if drops is not None else Drops()
    everyone = set(df["patientID"])
    keys = _order(df["key"])
    if key:
        if key not in keys:
            raise UserError(f"--key {key}: the latents have keys {', '.join(keys)}")
        df = df[df["key"] == key]
    elif len(keys) > 1:
        raise UserError(
            f"the latents hold several keys ({', '.join(keys[:6])}): choose one with --key "
            "(a participant is one row: views go in as separate runs, merged with --merge)"
        )
    df = _pick(df, "fieldID", field_choice, "field")
    df = _pick(df, "instanceID", instance, "instance")
    for axis, col in AXES.items():
        how = reduce[axis]
        if how == "mean":
            continue
        if not str(how).isdigit():
            raise UserError(f"--{axis} {how!r}: give mean or an index (a whole number >= 0)")
        df = df[df[col] == int(how)]
    drops.add(
        f"no latent at the chosen key/field/instance/{'/'.join(f'{a} {reduce[a]}' for a in AXES)}",
        sorted(everyone - set(df["patientID"])),
    )
    cols = z_columns(df)
    out = df.groupby("patientID", sort=True)[cols].mean().astype(np.float64)
    # mean() skips NaN: a participant with one uncomputed frame must stay NaN (QC drops it, with its reason)
    out[df[cols].isna().groupby(df["patientID"], sort=True).any().any(axis=1)] = np.nan
    return out


def map_ids(table: pd.DataFrame, id_map: pd.DataFrame | None, drops: Drops) -> pd.DataFrame:
    """Image patient IDs to genetic IDs: ``id_map`` has columns ``patientID``, ``IID`` and optionally ``FID``.
    Without a map IID = patientID. Returns the table indexed by IID with an FID column first."""
    table = table.copy()
    if id_map is None:
        table.insert(0, "FID", table.index.astype(str))
        table.index = table.index.astype(str).rename("IID")
        return table
    dup_img = id_map["patientID"][id_map["patientID"].duplicated()]
    if len(dup_img):
        raise UserError(f"the ID map gives image ID {dup_img.iloc[0]!r} two genetic IDs")
    mapped = id_map.set_index("patientID")
    unmapped = [p for p in table.index if p not in mapped.index]
    drops.add("not in the ID map", unmapped)
    table = table.drop(index=unmapped)
    iid = mapped.loc[table.index, "IID"].astype(str)
    twice = iid[iid.duplicated(keep=False)]
    if len(twice):
        raise UserError(
            f"genetic ID {twice.iloc[0]!r} has latents from two image IDs "
            f"({', '.join(twice.index[:2])}): a participant in two rows"
        )
    fid = mapped.loc[table.index, "FID"].astype(str) if "FID" in mapped.columns else iid
    table.index = pd.Index(iid.to_numpy(), name="IID")
    table.insert(0, "FID", fid.to_numpy())
    return table


def drop_non_finite(z: pd.DataFrame, drops: Drops) -> pd.DataFrame:
    bad = ~np.isfinite(z.to_numpy()).all(axis=1)
    drops.add("NaN latents (not computed)", z.index[bad])
    return z[~bad]


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD) per column: a z-score that the outliers it looks for do not inflate."""
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    return (x - med) / np.where(mad > 0, mad, np.inf)


def drop_outliers(z: pd.DataFrame, threshold: float, drops: Drops) -> pd.DataFrame:
    """Participants with a robust z beyond ``threshold`` in any latent (0: off)."""
    if threshold <= 0:
        return z
    bad = (np.abs(robust_z(z.to_numpy())) > threshold).any(axis=1)
    drops.add(f"outlier (robust |z| > {threshold:g} in a latent)", z.index[bad])
    return z[~bad]


def design_matrix(cov: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Covariates as numbers: numeric columns as they are, categorical ones (named, or non-numeric) one-hot with
    the first level (sorted) dropped. NaN or a single level is refused: a GWAS covariate must vary and be known."""
    out = {}
    for col in cov.columns:
        values = cov[col]
        if values.isna().any():
            who = values.index[values.isna()][0]
            raise UserError(
                f"covariate {col} is missing (NaN) for participant {who} "
                f"({int(values.isna().sum())} participants): fill or drop them first"
            )
        numeric = pd.to_numeric(values, errors="coerce")
        if col in categorical or numeric.isna().any():
            levels = sorted(values.astype(str).unique())
            if len(levels) < 2:
                raise UserError(f"covariate {col} has a single level ({levels[0]!r}) among the participants kept")
            for level in levels[1:]:
                out[f"{col}_{level}"] = (values.astype(str) == level).astype(np.float64)
        else:
            if numeric.nunique() < 2:
                raise UserError(f"covariate {col} has a single value ({numeric.iloc[0]:g}) among the participants kept")
            out[col] = numeric.astype(np.float64)
    return pd.DataFrame(out, index=cov.index)


def residualise(z: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """Each column of ``z`` minus its least-squares fit on an intercept and the covariates."""
    design = np.column_stack([np.ones(len(z)), covariates])
    beta, *_ = np.linalg.lstsq(design, z, rcond=None)
    return z - design @ beta


def inverse_normal(z: np.ndarray) -> np.ndarray:
    """Rank-based inverse normal transform per column (Blom): Phi^-1((rank - 3/8) / (n + 1/4)), ties averaged."""
    n = len(z)
    ranks = np.apply_along_axis(stats.rankdata, 0, z)
    return stats.norm.ppf((ranks - BLOM_C) / (n - 2 * BLOM_C + 1))


def merge_runs(blocks: list[np.ndarray], how: str, n_components: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Several runs' latents of the same participants (rows aligned) as one matrix: ``concat``; ``pca`` of the
    standardised concatenation; ``cca``: pairwise CCA chained over the runs, each step the mean of the two views'
    canonical variates (Hotelling's CCA via scikit-learn). Returns the matrix and the column prefix."""
    if how == "concat":
        return np.concatenate(blocks, axis=1), "Z"
    k = int(n_components)
    widths = [b.shape[1] for b in blocks]
    if k < 1 or (how == "cca" and k > min(widths)) or k > sum(widths) or k > len(blocks[0]):
        raise UserError(
            f"--n_components {k}: give 1..{min(widths) if how == 'cca' else sum(widths)} for --merge "
            f"{how} of latents of widths {widths}"
        )
    if how == "pca":
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        joined = StandardScaler().fit_transform(np.concatenate(blocks, axis=1))
        return PCA(n_components=k, random_state=seed).fit_transform(joined), "PC"
    if how == "cca":
        from sklearn.cross_decomposition import CCA

        if len(blocks) < 2:
            raise UserError("--merge cca needs the latents of two runs or more (--latents A B ...)")
        merged = blocks[0]
        for other in blocks[1:]:
            xc, yc = CCA(n_components=k, max_iter=5000).fit(merged, other).transform(merged, other)
            merged = (xc + yc) / 2.0
        return merged, "CC"
    raise UserError(f"--merge {how}: choose one of {', '.join(MERGES)}")


def moments(z: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per latent: mean, SD and skewness (the report's before/after table)."""
    return {
        n: {
            "mean": float(np.mean(z[:, j])),
            "sd": float(np.std(z[:, j], ddof=1)) if len(z) > 1 else 0.0,
            "skewness": float(stats.skew(z[:, j])) if len(z) > 2 else 0.0,
        }
        for j, n in enumerate(names)
    }
