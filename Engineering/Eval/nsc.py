"""NSC and NSCB: not-same-compound (and not-same-compound-or-batch) nearest-neighbour accuracy of treatment
profiles, the transfer metrics of image-based profiling (Ljosa et al., J Biomol Screen 2013; Ando et al., 2017),
with the profiles, the control whitening and TVN as in the BBBC021 evaluation of Lin & Lu (MLCB 2022, "Incorporating
knowledge of plates in batch normalization improves generalization of deep learning for microscopy images";
reference: microsoft/batch-effects-normalization, bbbc.ipynb at e9c4ae716e2ee63dc7f2c2853f495b7b357961e4).

Profiles (as the reference): sample latents -> well means -> the median over all of a treatment's wells, in every
batch: ONE profile per treatment (a compound, or a compound at a dose). The batch column therefore never changes
the profiles or NSC; it only says which neighbours NSCB forbids. A profile's batch is the sorted, comma-joined list
of the batches its wells come from. The control compound (``controls``) is never a query or a neighbour.

NSC: each profile's nearest profile by cosine among *other compounds* must have its label (e.g. mechanism of
action); the score is the share that does. NSCB: the neighbour must also come from another batch (the joined batch
lists compared as strings, as the reference does); labels whose profiles all have one batch list cannot be
matched and are skipped (the reference skips BBBC021's two such mechanisms by name).

TVN (``tvn=True``), on the sample latents before the well means, as the reference does on its image features:
1. whitening fitted on all control samples: centred on their mean, rotated onto the eigenvectors of their
   covariance C = X^T X / n, scaled by 1 / sqrt(eigenvalue + ``tvn_lambda``) and rotated back (ZCA);
2. per TVN unit (``plate``; the reference: each plate), a CORAL-style alignment of that unit's controls onto all
   controls: x -> x (C_unit + I)^(-1/2) (C_all + I)^(1/2), with C the (uncentred) second moments of the whitened
   controls of the unit / of all units.
CIs by bootstrap over compounds. Optional centring (``center``; not in the reference) subtracts the mean profile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from Engineering.errors import UserError
from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "nsc": (
        HIGHER,
        "Reference (Lin & Lu 2022, BBBC021 notebook): not-same-compound 1-NN (cosine) accuracy of a "
        "label over treatment profiles (one per treatment, over all batches; controls dropped). "
        "Higher is better.",
    ),
    "nscb": (
        HIGHER,
        "Reference (Lin & Lu 2022): not-same-compound-or-batch 1-NN accuracy (labels seen in one "
        "batch only are skipped). Higher is better; the gap to NSC is what batch effects lend.",
    ),
}

TVN_LAMBDA = 0.02  # the reference's whitening regulariser (added to the control covariance's eigenvalues)


def _sym_power(C: np.ndarray, power: float) -> np.ndarray:
    """C^power of a symmetric positive (semi-)definite matrix, through its eigendecomposition."""
    w, V = np.linalg.eigh((C + C.T) / 2)
    return (V * np.clip(w, 0, None) ** power) @ V.T


def tvn(Z: np.ndarray, is_control: np.ndarray, plate: np.ndarray, lam: float = TVN_LAMBDA) -> np.ndarray:
    """Control whitening, then per-plate typical variation normalisation (the module doc); ``Z`` (n, d) sample
    latents, ``is_control`` and ``plate`` per sample."""
    Z = np.asarray(Z, dtype=np.float64)
    ctrl = Z[is_control]
    if not len(ctrl):
        raise UserError("NSC with TVN: no sample of the control compound")
    mu = ctrl.mean(0)
    w, V = np.linalg.eigh((ctrl - mu).T @ (ctrl - mu) / len(ctrl))
    W = (V / np.sqrt(np.clip(w, 0, None) + lam)) @ V.T
    Zw = (Z - mu) @ W
    eye = np.eye(Z.shape[1])
    cw = Zw[is_control]
    target = _sym_power(cw.T @ cw / len(cw) + eye, 0.5)
    out = np.empty_like(Zw)
    plate = np.asarray(plate).astype(str)
    for p in np.unique(plate):
        m = plate == p
        c = Zw[m & is_control]
        if not len(c):
            raise UserError(
                f"NSC with TVN: plate {p} has no control sample; every TVN unit (--tvn_col, default "
                "--batch_col) needs control wells"
            )
        out[m] = Zw[m] @ _sym_power(c.T @ c / len(c) + eye, -0.5) @ target
    return out


def treatment_profiles(Z: np.ndarray, meta: pd.DataFrame, well: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """``meta`` has columns compound, treatment, batch, label (optional: plate; one row per sample of ``Z``); the
    profiles (one per treatment) and their (compound, treatment, label, batch) rows, batch the treatment's batches
    joined by ','. A well is identified by its batch, plate and ``well`` value."""
    df = meta.reset_index(drop=True).copy()
    df["_well"] = df[well].astype(str) if well else np.arange(len(df)).astype(str)
    df["batch"] = df["batch"].astype(str)
    df["_plate"] = df["plate"].astype(str) if "plate" in df.columns else ""  # well names repeat across plates
    keys = ["compound", "treatment", "label"]
    cols = [f"z{j}" for j in range(Z.shape[1])]
    data = pd.concat([df[keys + ["batch", "_plate", "_well"]], pd.DataFrame(Z, columns=cols)], axis=1)
    wells = data.groupby(keys + ["batch", "_plate", "_well"], sort=True)[cols].mean().reset_index()
    grouped = wells.groupby(keys, sort=True)
    prof = grouped[cols].median().reset_index()
    prof["batch"] = grouped["batch"].agg(lambda b: ",".join(sorted(set(b)))).to_numpy()
    return prof[cols].to_numpy(np.float64), prof[keys + ["batch"]]


def nearest_same_label(P: np.ndarray, rows: pd.DataFrame, exclude_batch: bool) -> np.ndarray:
    """Per profile: 1.0 if its nearest allowed neighbour (cosine) has its label, 0.0 if not, NaN if no
    neighbour is allowed (or, with ``exclude_batch``, its label occurs with one batch list only)."""
    X = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    sim = X @ X.T
    comp, batch, label = (rows[c].astype(str).to_numpy() for c in ("compound", "batch", "label"))
    allowed = comp[:, None] != comp[None, :]
    if exclude_batch:
        allowed &= batch[:, None] != batch[None, :]
    sim = np.where(allowed, sim, -np.inf)
    hit = np.full(len(P), np.nan)
    n_batches = rows.assign(batch=batch).groupby("label")["batch"].nunique()
    for i in range(len(P)):
        if not np.isfinite(sim[i]).any() or (exclude_batch and n_batches[rows["label"].iloc[i]] < 2):
            continue
        hit[i] = float(label[int(np.argmax(sim[i]))] == label[i])
    return hit


def nsc_scores(
    Z: np.ndarray,
    meta: pd.DataFrame,
    n_boot: int,
    seed: int,
    well: str | None = None,
    center: bool = False,
    controls: str | None = None,
    tvn_on: bool = False,
    tvn_lambda: float = TVN_LAMBDA,
) -> dict[str, MetricResult]:
    """{"nsc": ..., "nscb": ...}; ``controls`` names the control compound (dropped from the profiles; with
    ``tvn_on`` also the whitening's reference); ``meta`` may hold a ``plate`` column, the TVN unit (default: batch)."""
    if tvn_on and controls is None:
        raise UserError("NSC: TVN needs the control compound (--nsc_controls)")
    if tvn_on:
        is_ctrl = (meta["compound"].astype(str) == str(controls)).to_numpy()
        unit = meta["plate"] if "plate" in meta.columns else meta["batch"]
        Z = tvn(Z, is_ctrl, unit.to_numpy(), tvn_lambda)
    P, rows = treatment_profiles(Z, meta, well)
    if controls is not None:
        keep = (rows["compound"].astype(str) != str(controls)).to_numpy()
        P, rows = P[keep], rows[keep].reset_index(drop=True)  # the reference drops its DMSO profile
    if center:
        P = P - P.mean(0)
    comp_codes = pd.factorize(rows["compound"].astype(str))[0]
    out = {}
    for name, exclude in (("nsc", False), ("nscb", True)):
        hit = nearest_same_label(P, rows, exclude)
        ok = np.isfinite(hit)
        if ok.sum() < 2:
            out[name] = MetricResult.skip(
                HIGHER, f"{int(ok.sum())} profile(s) have an allowed neighbour", n=int(ok.sum())
            )
            continue
        ci = bootstrap_ci(weighted_mean(hit[ok]), int(ok.sum()), n_boot, seed, pd.factorize(comp_codes[ok])[0])
        out[name] = MetricResult.from_ci(
            ci, HIGHER, int(ok.sum()), extra={"n_profiles": len(P), "n_compounds": int(rows["compound"].nunique())}
        )
    return out
