"""Rebuild a trained autoencoder from its run folder (or checkpoint) for use outside training.

Our Lightning checkpoints carry the resolved config (``imlatent_config``) and
the number of input channels, so the engine is rebuilt exactly as trained and
its weights loaded with the usual checks (weights_only, shapes). Used by latent
manipulation (main_latentcls) and the model-dependent benchmark metrics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from Engineering.config.schema import validate
from Engineering.data.datamodule import H5DataModule
from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.data.point_datamodule import PointCloudDataModule
from Engineering.Engines import registry
from Engineering.Engines.registry import drive_errors
from Engineering.Engines.untrusted import refuse_code
from Engineering.errors import UserError
from Engineering.io.checkpoints import checkpoint_in, fit_state, read_checkpoint

READERS = {"image": H5DataModule, "points": PointCloudDataModule}  # LatentEngine.input_kind -> DataModule


@dataclass
class SavedRun:
    engine: object  # a LatentEngine subclass, in eval mode, on the CPU
    cfg: object  # its validated config
    checkpoint: Path
    use_ema: bool  # evaluate with the EMA weights (as the run's own test phase would)

    @property
    def datamodule_class(self) -> type:
        """The reader of the engine's kind of sample over the whole file (not the task's split rules: main_iid's
        held-out groups would hide subjects)."""
        return READERS[self.engine.input_kind]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine.embed(x, self.use_ema)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine.reconstruct(x, self.encode(x), self.use_ema)

    def decode(self, z: torch.Tensor) -> torch.Tensor | None:
        return self.engine.decode(z, self.use_ema)

    def pose(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.engine.pose(x, self.use_ema)

    def render(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor | None:
        return self.engine.render(x, z, self.use_ema)


def load_run(run_or_file: str | Path) -> SavedRun:
    path = checkpoint_in(run_or_file, "best_or_last")  # the best of a run folder (its last if none)
    ckpt = read_checkpoint(path)
    raw, in_channels = ckpt.get("imlatent_config"), ckpt.get("in_channels")
    if not isinstance(raw, dict) or in_channels is None:
        raise UserError(
            f"{path} holds no imlatent_config/in_channels: not a checkpoint of this pipeline's "
            "training (use the run folder of an autoencoder task such as main.py --task diffAE)"
        )
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(f"{path}: in_channels is {in_channels!r}, not a positive number of channels")
    cfg, task = saved_config(raw, f"checkpoint {path}")
    with drive_errors():
        engine = task.engine_class()(cfg, int(in_channels))
    engine.load_state_dict(fit_state(engine, ckpt["state_dict"], str(path)))
    engine.eval()
    return SavedRun(engine, cfg, path, bool(cfg.eval.test_ema) and hasattr(engine, "ema_net"))


def upstream_engine(path: str, flag: str, task: str, purpose: str):
    """The engine of an earlier stage's run (its last checkpoint, or the checkpoint file given), which must be
    a ``task`` run: what ``flag`` of a chained task (main_restyle, main_iid) points at. The task's engine class
    comes from the registry, so a family never imports the family whose trained model it uses."""
    if not path:
        raise UserError(f"{purpose}: give {flag} RUN_DIR_OR_CKPT (a main_{task} run)")
    ckpt = checkpoint_in(Path(path).expanduser(), "last")
    engine = load_run(ckpt).engine
    if not isinstance(engine, registry.get(task).engine_class()):
        raise UserError(f"{flag} {path}: {ckpt} is a {type(engine).__name__} run, not a main_{task} run")
    return engine


def saved_config(raw: dict, where: str):
    """A run's saved config (a checkpoint's imlatent_config), validated as its own task's: (cfg, task)."""
    refuse_code(raw, f"{where} (its saved imlatent_config)")
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise UserError(
            f"{where}: its saved imlatent_config's model section is a {type(model).__name__}, not a "
            "mapping: not a configuration this pipeline wrote"
        )
    drive = model.get("drive")
    task = registry.for_drive(str(drive), where)
    try:
        return validate(copy.deepcopy(raw), task.extra_flags, task.sections), task
    except UserError as exc:  # the schema's message does not say where the config came from
        raise UserError(f"{where}: its saved imlatent_config: {exc}") from None


def describe_saved(raw: dict, where: str):
    """For io/export: the validated config and the task's name."""
    cfg, task = saved_config(raw, where)
    return cfg, task.name


def whole_file_data(cfg, datafile: str | Path | None = None, datamodule_class: type = H5DataModule) -> H5DataModule:
    """The run's data pipeline (selection, normalisation, crop) over the whole file, ignoring its folds.

    ``datafile`` replaces the run's data file (e.g. the run was trained on another machine).
    """
    cfg = cfg.model_copy(deep=True)
    cfg.paths.foldCSV = ""
    if datafile is not None:
        datafile = Path(datafile).expanduser()
        if not datafile.is_file():
            raise UserError(f"data file not found: {datafile}")
        cfg.paths.datadir, cfg.paths.datafile = str(datafile.parent), datafile.name
    return datamodule_class(cfg)


@torch.no_grad()
def batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply a tensor -> tensor model function to a numpy batch, ``batch_size`` samples at a time."""
    out = [
        fn(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))).float().numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out)


def sample_images(run: SavedRun, rows: pd.DataFrame, datafile: str | Path | None, max_n: int, seed: int) -> np.ndarray:
    """Model inputs (n, C, ...) of up to ``max_n`` of ``rows`` (flat-table sample IDs), as the run's pipeline
    prepares them; rows its data does not hold are left out (an empty array if none is found)."""
    ds = whole_file_data(run.cfg, datafile, run.datamodule_class).dataset("test")
    wanted = set(rows["patientID"].astype(str))
    where = {}
    for i in range(len(ds)):
        d = ds.describe(i)
        if d["patientID"] in wanted:  # an unsplit axis is index 0 in the flat tables
            where[(d["patientID"], d["fieldID"], d["instanceID"], d["key"], d["c"] or 0, d["t"] or 0, d["s"] or 0)] = i
    found = sorted({where[k] for k in rows[list(SAMPLE_COLUMNS)].itertuples(index=False, name=None) if k in where})
    if len(found) > max_n:
        found = sorted(np.random.default_rng(seed).choice(found, max_n, replace=False).tolist())
    if not found:
        return np.zeros((0,), np.float32)
    return np.stack([ds.sample(i)["inp"].numpy() for i in found])
