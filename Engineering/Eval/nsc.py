"""NSC and NSCB: not-same-compound (and not-same-compound-or-batch) nearest-neighbour accuracy of treatment
profiles, the transfer metrics of image-based profiling (Ljosa et al., J Biomol Screen 2013; Ando et al., 2017),
as used for BBBC021 mechanism-of-action by Lin & Lu (MLCB 2022).

Profiles: sample latents -> well means -> treatment medians, one profile per (treatment, batch), where a
treatment is a compound, or a compound at a dose. Each profile is matched to its nearest other profile by
cosine similarity among profiles of *other compounds* (NSC) or of other compounds *and other batches* (NSCB);
the score is the share whose neighbour has the same label (e.g. mechanism of action). NSCB skips profiles
whose label occurs in a single batch (they could never be matched), NSC does not. Optional centring
subtracts the mean profile; optional typical-variation normalisation (TVN) whitens each batch with the
principal axes of its control wells. CIs by bootstrap over compounds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from Engineering.errors import UserError
from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "nsc": (HIGHER, "Not-same-compound 1-NN (cosine) accuracy of a label over treatment profiles. Higher is "
                    "better."),
    "nscb": (HIGHER, "Not-same-compound-or-batch 1-NN accuracy (labels seen in one batch only are skipped). "
                     "Higher is better; the gap to NSC is what batch effects lend."),
}


def treatment_profiles(Z: np.ndarray, meta: pd.DataFrame, well: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """``meta`` has columns compound, treatment, batch, label (one row per sample of ``Z``); the profiles and
    their (compound, treatment, batch, label) rows."""
    df = meta.reset_index(drop=True).copy()
    df["_well"] = df[well].astype(str) if well else np.arange(len(df)).astype(str)
    keys = ["compound", "treatment", "batch", "label"]
    cols = [f"z{j}" for j in range(Z.shape[1])]
    data = pd.concat([df[keys + ["_well"]], pd.DataFrame(Z, columns=cols)], axis=1)
    wells = data.groupby(keys + ["_well"], sort=True)[cols].mean().reset_index()
    prof = wells.groupby(keys, sort=True)[cols].median().reset_index()
    return prof[cols].to_numpy(np.float64), prof[keys]


def tvn(P: np.ndarray, rows: pd.DataFrame, controls: np.ndarray) -> np.ndarray:
    """Typical variation normalisation: per batch, centre on the controls' mean and whiten along their principal
    axes (components with no variance are dropped)."""
    out = np.zeros_like(P)
    for b in rows["batch"].unique():
        m = (rows["batch"] == b).to_numpy()
        ctrl = P[m & controls]
        if len(ctrl) < 2:
            raise UserError(f"NSC with control whitening: batch {b} has {len(ctrl)} control profile(s); "
                            "it needs at least 2")
        mu = ctrl.mean(0)
        u, s, vt = np.linalg.svd(ctrl - mu, full_matrices=False)
        keep = s > 1e-8 * max(s.max(), 1e-30)
        scale = s[keep] / np.sqrt(max(len(ctrl) - 1, 1))
        proj = (P[m] - mu) @ vt[keep].T / scale
        out[m, :proj.shape[1]] = proj
    return out


def nearest_same_label(P: np.ndarray, rows: pd.DataFrame, exclude_batch: bool) -> np.ndarray:
    """Per profile: 1.0 if its nearest allowed neighbour (cosine) has its label, 0.0 if not, NaN if no
    neighbour is allowed (or, with ``exclude_batch``, its label occurs in one batch only)."""
    X = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    sim = X @ X.T
    comp, batch, label = (rows[c].astype(str).to_numpy() for c in ("compound", "batch", "label"))
    allowed = comp[:, None] != comp[None, :]
    if exclude_batch:
        allowed &= batch[:, None] != batch[None, :]
    sim = np.where(allowed, sim, -np.inf)
    hit = np.full(len(P), np.nan)
    n_batches = rows.groupby("label")["batch"].nunique()
    for i in range(len(P)):
        if not np.isfinite(sim[i]).any() or (exclude_batch and n_batches[rows["label"].iloc[i]] < 2):
            continue
        hit[i] = float(label[int(np.argmax(sim[i]))] == label[i])
    return hit


def nsc_scores(Z: np.ndarray, meta: pd.DataFrame, n_boot: int, seed: int, well: str | None = None,
               center: bool = False, controls: str | None = None) -> dict[str, MetricResult]:
    """{"nsc": ..., "nscb": ...}; ``controls`` names the control compound for TVN."""
    P, rows = treatment_profiles(Z, meta, well)
    if controls is not None:
        is_ctrl = (rows["compound"].astype(str) == str(controls)).to_numpy()
        P = tvn(P, rows, is_ctrl)
        P, rows = P[~is_ctrl], rows[~is_ctrl].reset_index(drop=True)  # controls are not queries
    if center:
        P = P - P.mean(0)
    comp_codes = pd.factorize(rows["compound"].astype(str))[0]
    out = {}
    for name, exclude in (("nsc", False), ("nscb", True)):
        hit = nearest_same_label(P, rows, exclude)
        ok = np.isfinite(hit)
        if ok.sum() < 2:
            out[name] = MetricResult.skip(HIGHER, f"{int(ok.sum())} profile(s) have an allowed neighbour",
                                          n=int(ok.sum()))
            continue
        ci = bootstrap_ci(weighted_mean(hit[ok]), int(ok.sum()), n_boot, seed, pd.factorize(comp_codes[ok])[0])
        out[name] = MetricResult.from_ci(ci, HIGHER, int(ok.sum()),
                                         extra={"n_profiles": len(P), "n_compounds": int(rows["compound"].nunique())})
    return out
