"""Latent manipulation of DiffAE runs, a step after the latent predictors (``main_latentcls --manipulate``).

Moves z_sem along the unit direction of the linear head for a target (or one class of it), in standard
deviations of the standardised latents, and renders each test-split subject with the parent DiffAE from its
own inverted x_T (as DiffAE, Preechakul et al., CVPR 2022, manipulates with a linear classifier on normalised
z_sem). Its own module: the predictors know nothing of rendering; the step reads their trained heads.
"""

from __future__ import annotations

from pathlib import Path

from Engineering.config import Config
from Engineering.data.latent_tables import LatentSet
from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.Engines.saved_runs import load_run, whole_file_data
from Engineering.errors import UserError
from Engineering.Eval import manipulation
from Engineering.io.checkpoints import CHECKPOINT_DIR

from .engine import head_names


class ManipulationStep:
    """An extra output step of the latentcls task: ``check`` before training, ``run`` after its outputs."""

    def check(self, cfg: Config, data: LatentSet) -> None:
        if cfg.eval.manipulate:
            check_manipulation(cfg, data)

    def run(self, cfg: Config, model, data: LatentSet, out_dir: Path) -> dict:
        if not cfg.eval.manipulate:
            return {}
        return {"manipulation": str(manipulate(cfg, model, data, out_dir))}


def parent_run_folder(cfg: Config, data: LatentSet) -> Path:
    """The autoencoder behind the latents: --parent_trainID, or the run folder holding the --latents file."""
    if cfg.run.parent_trainID:
        return Path(cfg.paths.save_path).expanduser() / cfg.run.parent_trainID
    folder = data.source.parent
    if folder.name.startswith("Output"):
        folder = folder.parent
    if not (folder / CHECKPOINT_DIR).is_dir():
        raise UserError(
            f"--manipulate needs the DiffAE run behind the latents: give --parent_trainID "
            f"(no {CHECKPOINT_DIR}/ next to {data.source})"
        )
    return folder


def check_manipulation(cfg: Config, data: LatentSet) -> None:
    target, _, wanted = cfg.eval.manipulate.partition(":")
    spec = next((t for t in data.targets if t.name == target), None)
    if spec is None:
        raise UserError(f"--manipulate {target!r} is not a target (targets: {', '.join(t.name for t in data.targets)})")
    if wanted and wanted not in spec.classes:
        raise UserError(
            f"--manipulate {cfg.eval.manipulate}: {wanted!r} is not a class of {target} "
            f"({', '.join(spec.classes) or 'continuous target'})"
        )
    if "linear" not in head_names(cfg.model.heads):
        raise UserError("--manipulate needs the linear head: add linear to --heads")
    if cfg.eval.n_manipulate_subs < 1:
        raise UserError("--n_manipulate_subs must be >= 1")
    manipulation.parse_scales(cfg.eval.scales)
    parent_run_folder(cfg, data)


def manipulate(cfg: Config, model, data: LatentSet, out_dir: Path) -> Path:
    target, _, wanted = cfg.eval.manipulate.partition(":")
    spec = next(t for t in data.targets if t.name == target)  # checked before training
    direction, label = manipulation.unit_direction(model.linear_weights(target), spec.classes, wanted or None)
    scales = manipulation.parse_scales(cfg.eval.scales)
    parent = load_run(parent_run_folder(cfg, data))
    if parent.cfg.model.drive != "DiffAE":
        raise UserError(f"--manipulate renders with a DiffAE; the parent run's model is {parent.cfg.model.drive}")
    if int(parent.cfg.model.latent_dim) != data.Z.shape[1]:
        raise UserError(
            f"the latents have {data.Z.shape[1]} dimensions but the parent DiffAE has latent_dim "
            f"{parent.cfg.model.latent_dim}: they are not this model's latents"
        )
    samples = _manipulation_samples(parent.cfg, data, int(cfg.eval.n_manipulate_subs))
    engine = parent.engine
    net = engine.ema_net if parent.use_ema else engine.net
    folder = out_dir / (
        "manipulation_" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cfg.eval.manipulate)
    )
    attrs = {
        "target": target,
        "class": wanted or "",
        "direction_label": label,
        "parent_checkpoint": str(parent.checkpoint),
        "T_inv": engine.T_inv,
        "T_step": engine.T_step,
        "ema": parent.use_ema,
        "units": "original intensity units (the input's normalisation inverted)",
        "scale_units": "standard deviations of the standardised latents (training-split statistics), "
        "along the unit direction",
    }
    path = manipulation.manipulate(
        net,
        engine.diffusion,
        engine.T_inv,
        engine.T_step,
        samples,
        direction,
        model.z_mean,
        model.z_std,
        scales,
        folder,
        attrs,
        clip=engine.clip,
    )
    print(f"manipulation of {cfg.eval.manipulate} ({label}) for {len(samples)} subject(s): {folder}")
    return path


def _manipulation_samples(parent_cfg, data: LatentSet, n_subjects: int) -> list[dict]:
    """One image per test-split subject (the sample of its first latent row when rows are per sample)."""
    rows = data.ids[data.rows("test")]
    if rows.empty:
        raise UserError("--manipulate uses test-split subjects, and the test split has no latents")
    ds = whole_file_data(parent_cfg).dataset("test")
    by_id, first = {}, {}
    for i in range(len(ds)):
        d = ds.describe(i)
        key = tuple(ds.sample_info(i).row().values())
        by_id.setdefault(key, i)
        first.setdefault(d["patientID"], i)
    samples = []
    for pid, part in rows.groupby("patientID", sort=True):
        if len(samples) >= n_subjects:
            break
        r = part.iloc[0]
        key = tuple(r[c] for c in SAMPLE_COLUMNS) if "key" in part.columns else None
        i = by_id.get(key, first.get(pid))
        if i is None:
            continue
        item = ds.sample(i)
        samples.append({**ds.describe(i), "inp": item["inp"], "affine": item["affine"]})
    if not samples:
        raise UserError("--manipulate: none of the test-split subjects is in the parent run's data file")
    return samples
