"""Lightning engine of the latent predictors: linear and small MLP heads on (standardised) latents.

Every head predicts every target at once: one output per continuous target
(standardised with training statistics) and one logit per class of a categorical
target. The loss of a target is averaged over the samples that have a value
(MSE, or cross-entropy), so a missing phenotype masks only its own term; the
heads' losses are summed (their parameters are disjoint, so training them
together equals training each alone, in one pass). The linear head gives the
directions used for latent manipulation (as in DiffAE, Preechakul et al., CVPR
2022, which trains a linear classifier on normalised z_sem).

Optimiser, scheduler, optional EMA (``--use_ema``) and exact-resume RNG state
come from LatentEngine; the checkpoint also stores the targets and the latent
scaler, so a head can be used without the table it was trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys
from Engineering.data.labels import CATEGORICAL
from Engineering.data.latent_tables import TargetSpec
from Engineering.Engines.latent_engine import LatentEngine, use_ema_flag
from Engineering.errors import UserError

HEADS = ("linear", "mlp")


def head_names(text: str) -> list[str]:
    names = [h.strip() for h in str(text).split(",") if h.strip()]
    bad = [h for h in names if h not in HEADS]
    if bad or not names:
        raise UserError(f"--heads {text!r}: choose one or more of {', '.join(HEADS)} (comma-separated)")
    return list(dict.fromkeys(names))


def make_head(kind: str, in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


def masked_losses(out: torch.Tensor, y: torch.Tensor, targets: list[TargetSpec]) -> torch.Tensor:
    """Per-target losses (n_targets,) over the samples that have a value; 0 where none has."""
    losses, start = [], 0
    for j, t in enumerate(targets):
        pred, yj = out[:, start : start + t.width], y[:, j]
        start += t.width
        have = torch.isfinite(yj)
        if not have.any():
            losses.append(out.sum() * 0.0)  # keeps the graph (and DDP's gradient sync) intact
        elif t.kind == CATEGORICAL:
            losses.append(F.cross_entropy(pred[have], yj[have].long()))
        else:
            losses.append(F.mse_loss(pred[have, 0], yj[have]))
    return torch.stack(losses)


class LatentPredictorEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int, targets: list[TargetSpec], z_mean: np.ndarray, z_std: np.ndarray):
        super().__init__(cfg, in_channels)
        self.targets = list(targets)
        self.z_mean, self.z_std = np.array(z_mean, np.float32), np.array(z_std, np.float32)
        m = cfg.model
        width = sum(t.width for t in self.targets)
        self.net = nn.ModuleDict(
            {h: make_head(h, in_channels, width, int(m.mlp_hidden), float(m.mlp_dropout)) for h in head_names(m.heads)}
        )
        self.use_ema = bool(cfg.training.use_ema)
        if self.use_ema:
            self.init_ema()

    def _eval_net(self) -> nn.ModuleDict:
        return self.ema_net if self.use_ema and self.cfg.eval.test_ema else self.net

    def _step(self, net: nn.ModuleDict, batch, stage: str) -> torch.Tensor:
        z, y = batch
        total = 0.0
        for name, head in net.items():
            losses = masked_losses(head(z), y, self.targets)
            head_loss = losses.sum()
            self.log(f"{stage}_loss_{name}", head_loss, on_epoch=True, on_step=False, batch_size=len(z), sync_dist=True)
            total = total + head_loss
        return total

    def training_step(self, batch, batch_idx):
        loss = self._step(self.net, batch, "train")
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]), sync_dist=True
        )
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        loss = self._step(self._eval_net(), batch, "val")
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch[0]), sync_dist=True)

    # --- inference on numpy arrays (latents are small: no loader needed)
    @torch.no_grad()
    def predict_heads(self, Z: np.ndarray) -> dict[str, list[np.ndarray]]:
        """head -> per target: standardised values (n,) or class probabilities (n, K)."""
        net = self._eval_net().eval()
        z = torch.tensor(np.asarray(Z, np.float32), device=self.device)
        out = {}
        for name, head in net.items():
            raw, start, per = head(z).float().cpu(), 0, []
            for t in self.targets:
                block = raw[:, start : start + t.width]
                start += t.width
                per.append(torch.softmax(block, 1).numpy() if t.kind == CATEGORICAL else block[:, 0].numpy())
            out[name] = per
        return out

    def linear_weights(self, target: str) -> np.ndarray:
        """The linear head's (width, L) weight rows of one target, in standardised latent space."""
        net = self._eval_net()
        if "linear" not in net:
            raise UserError("--manipulate needs the linear head: add linear to --heads")
        names = [t.name for t in self.targets]
        if target not in names:
            raise UserError(f"--manipulate {target!r} is not a trained target (targets: {', '.join(names)})")
        start = sum(t.width for t in self.targets[: names.index(target)])
        width = self.targets[names.index(target)].width
        return net["linear"].weight.detach().cpu().numpy()[start : start + width].astype(np.float64)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["latentcls_targets"] = [t.to_dict() for t in self.targets]
        checkpoint["latentcls_scaler"] = {"mean": self.z_mean.tolist(), "std": self.z_std.tolist()}


LATENTCLS_GROUP = "Latent predictor"
LATENTCLS_FLAGS = (
    Flag(
        "parent_trainID",
        ("run", "parent_trainID"),
        "optstr",
        None,
        "Run folder (in json§save_path) whose latents are used; outputs go to its ClassifyLatent/ folder.",
        LATENTCLS_GROUP,
    ),
    Flag(
        "parent_outfolder",
        ("run", "parent_outfolder"),
        "str",
        "Output",
        "Output folder of the parent run that holds emb.parquet/tsv/h5 (e.g. Output_fullDS).",
        LATENTCLS_GROUP,
    ),
    Flag(
        "latents",
        ("data", "latents"),
        "optstr",
        None,
        "An emb.h5 / emb.tsv / emb.parquet file (or run folder) instead of --parent_trainID.",
        LATENTCLS_GROUP,
    ),
    Flag(
        "targets",
        ("data", "targets"),
        "str",
        "",
        "Comma-separated target columns of json§DS_phenotypes ('' = its columns, or every column).",
        LATENTCLS_GROUP,
    ),
    Flag(
        "categorical_targets",
        ("data", "categorical_targets"),
        "str",
        "",
        "Comma-separated targets to treat as classes (default: inferred).",
        LATENTCLS_GROUP,
    ),
    Flag(
        "continuous_targets",
        ("data", "continuous_targets"),
        "str",
        "",
        "Comma-separated targets to regress (default: inferred).",
        LATENTCLS_GROUP,
    ),
    Flag(
        "latent_aggregate",
        ("data", "latent_aggregate"),
        "str",
        "none",
        "'patient': average the latents of each patient (one sample per patient).",
        LATENTCLS_GROUP,
        ("none", "patient"),
    ),
    Flag(
        "heads",
        ("model", "heads"),
        "str",
        "linear,mlp",
        "Heads trained together on the latents: linear, mlp or both (comma-separated).",
        LATENTCLS_GROUP,
    ),
    Flag(
        "mlp_hidden",
        ("model", "mlp_hidden"),
        "int",
        64,
        "Hidden width of the MLP head.",
        LATENTCLS_GROUP,
        bounds=(("gt", 0),),
    ),
    Flag(
        "mlp_dropout",
        ("model", "mlp_dropout"),
        "float",
        0.1,
        "Dropout of the MLP head.",
        LATENTCLS_GROUP,
        bounds=(("ge", 0), ("lt", 1)),
    ),
    use_ema_flag(LATENTCLS_GROUP),
    Flag(
        "manipulate",
        ("eval", "manipulate"),
        "str",
        "",
        "DiffAE parents: move z_sem along the linear head's direction for this target (TARGET or TARGET:CLASS) "
        "and render.",
        LATENTCLS_GROUP,
    ),
    Flag(
        "scales",
        ("eval", "scales"),
        "str",
        "-2,-1,0,1,2",
        "Steps along the unit direction, in standard deviations of the standardised latents.",
        LATENTCLS_GROUP,
    ),
    Flag(
        "n_manipulate_subs",
        ("eval", "n_manipulate_subs"),
        "int",
        2,
        "Test-split subjects to manipulate (one sample each).",
        LATENTCLS_GROUP,
        bounds=(("gt", 0),),
    ),
)


class PredictorEvalKeys(Keys):
    """eval (main_latentcls)"""

    reference_alphas: list[float] = Field(
        [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0],
        min_length=1,
        description="Ridge penalties tried for the scikit-learn reference.",
    )
    reference_Cs: list[float] = Field(
        [0.01, 0.1, 1.0, 10.0, 100.0], min_length=1, description="Inverse penalties tried for the logistic reference."
    )
