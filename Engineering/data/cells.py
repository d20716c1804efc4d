"""A synthetic 3D cell cohort in the spirit of seed 003's cellPACK set, bundled so the rotation-invariant and
point-cloud models have data with a known answer (``@cells``).

Each cell is an ellipsoid (semi-axes 13, 10, 8 voxels) holding an off-centre ellipsoidal nucleus, with puncta
(Gaussian blobs) placed by one of four rules, the label ``rule``: random in the cytoplasm, membrane-proximal,
nucleus-proximal, or in two clusters. Every cell is drawn at a uniformly random 3D orientation (rendered
analytically in the rotated frame: no interpolation), so a rotation-invariant model should classify the rule
better than a classical one and its latents should not change under rotation. Images are
``primary_cell_0`` (C=2: puncta, cell+nucleus; T=1; S, X, Y = size) in data.h5; point clouds sampled from the
puncta channel are in points.h5 under the same keys; ``phenotypes.tsv`` has the rule and ``outlier`` (1 for the
few planted abnormal cells, whose puncta are a handful of large blobs, for the outlier-detection metric),
``covariates.tsv`` the orientation (a quaternion).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from Engineering.data.pointclouds import sample_point_cloud
from Engineering.io.atomic import replace_dir, staging_dir

FIELD_ID = "cell"
KEY = "primary_cell_0"
RULES = ("random", "membrane", "nucleus", "clustered")
CELL_AXES = np.array([13.0, 10.0, 8.0])
NUCLEUS_AXES = np.array([5.5, 4.5, 4.0])
NUCLEUS_CENTRE = np.array([2.5, 0.0, 0.0])  # off-centre: the cell has an orientation to recover
PUNCTUM_SD, OUTLIER_PUNCTA, OUTLIER_SD = 1.2, 4, 2.6


@dataclass(frozen=True)
class CellSpec:
    n_cells: int = 96
    size: int = 32
    n_puncta: int = 16
    n_points: int = 256
    seed: int = 1703
    n_folds: int = 3
    outlier_fraction: float = 1 / 12  # abnormal cells: OUTLIER_PUNCTA large puncta instead of n_puncta small ones


def _rho(v: np.ndarray, axes: np.ndarray, centre=0.0) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside."""
    return np.sqrt((((v - centre) / axes) ** 2).sum(-1))


def _place(rule: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Puncta centres (n, 3) in the cell's own frame, by rejection sampling in the cytoplasm."""
    out, centres = [], rng.uniform(-1, 1, (2, 3)) * CELL_AXES * 0.5
    while len(out) < n:
        if rule == "clustered":
            p = centres[len(out) % 2] + rng.normal(0, 1.5, 3)
        else:
            p = rng.uniform(-1, 1, 3) * CELL_AXES
        rc, rn = _rho(p, CELL_AXES), _rho(p, NUCLEUS_AXES, NUCLEUS_CENTRE)
        if not (rc < 0.95 and rn > 1.15):
            continue  # outside the cytoplasm
        if rule == "membrane" and rc < 0.8:
            continue
        if rule == "nucleus" and rn > 1.5:
            continue
        out.append(p)
    return np.asarray(out)


def render_cell(
    rule: str, rotation: np.ndarray, spec: CellSpec, rng: np.random.Generator, outlier: bool = False
) -> np.ndarray:
    """(2, size, size, size) float32: puncta, and the cell body (0.3) with its nucleus (1.0), seen rotated by
    ``rotation`` (world = R cell); an outlier has a few large puncta."""
    s = spec.size
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2] * 3, indexing="ij"), -1)  # world coordinates
    cell = grid @ rotation  # cell-frame coordinates of each voxel (R^T u, row form)
    body = 0.3 / (1 + np.exp((_rho(cell, CELL_AXES) - 1) * 12))
    nucleus = 0.7 / (1 + np.exp((_rho(cell, NUCLEUS_AXES, NUCLEUS_CENTRE) - 1) * 12))
    puncta = np.zeros((s, s, s))
    n, sd = (OUTLIER_PUNCTA, OUTLIER_SD) if outlier else (spec.n_puncta, PUNCTUM_SD)
    for p in _place(rule, n, rng):
        puncta += np.exp(-((cell - p) ** 2).sum(-1) / (2 * sd**2))
    return np.stack([puncta, body + nucleus]).astype(np.float32)


def write_cells(out_dir: str | Path, spec: CellSpec = CellSpec()) -> Path:
    """data.h5, points.h5, phenotypes.tsv, covariates.tsv, folds.csv (atomically, as a folder)."""
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    rng = np.random.default_rng(spec.seed)
    phenos, covs = [], []
    n_out = max(1, round(spec.n_cells * spec.outlier_fraction))
    outliers = set(np.random.default_rng(spec.seed + 2).choice(spec.n_cells, n_out, replace=False).tolist())
    with h5py.File(tmp / "data.h5", "w") as h5, h5py.File(tmp / "points.h5", "w") as pts:
        for i in range(spec.n_cells):
            pid, rule = str(3000001 + i), RULES[i % len(RULES)]
            rot = Rotation.random(random_state=rng)
            img = render_cell(rule, rot.as_matrix(), spec, rng, i in outliers)
            grp = h5.create_group(f"{pid}/{FIELD_ID}/1")
            ds = grp.create_dataset(KEY, data=img[:, None], chunks=(1, 1, spec.size, spec.size, spec.size))
            ds.attrs.update({"min_val": float(img.min()), "max_val": float(img.max()), "seriesDesc": "synthetic cell"})
            cloud = sample_point_cloud(img[0], spec.n_points, rng)
            pts.create_group(f"{pid}/{FIELD_ID}/1").create_dataset(KEY, data=cloud)
            phenos.append({"FID": pid, "rule": rule, "outlier": int(i in outliers)})
            covs.append({"FID": pid, **dict(zip(("qx", "qy", "qz", "qw"), np.round(rot.as_quat(), 6)))})
    pd.DataFrame(phenos).to_csv(tmp / "phenotypes.tsv", sep="\t", index=False)
    pd.DataFrame(covs).to_csv(tmp / "covariates.tsv", sep="\t", index=False)
    _folds(tmp / "folds.csv", [p["FID"] for p in phenos], spec)
    try:
        replace_dir(tmp, out_dir)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _folds(path: Path, pids: list[str], spec: CellSpec) -> None:
    """k folds with disjoint test sets, stratified by rule (the rules cycle over the IDs); 15% of the rest
    validates."""
    rng = np.random.default_rng(spec.seed + 1)
    rows = []
    by_rule = [pids[r :: len(RULES)] for r in range(len(RULES))]
    shuffled = [list(rng.permutation(group)) for group in by_rule]
    for k in range(spec.n_folds):
        test = [p for group in shuffled for p in group[k :: spec.n_folds]]
        rest = [p for p in pids if p not in test]
        rest = [str(p) for p in rng.permutation(rest)]
        n_val = max(1, int(round(0.15 * len(rest))))
        rows.append({"train": str(rest[n_val:]), "val": str(rest[:n_val]), "test": str([str(p) for p in test])})
    pd.DataFrame(rows).to_csv(path, index=False)
