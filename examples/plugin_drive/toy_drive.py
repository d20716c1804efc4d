"""A model from outside the repository: a tiny convolutional autoencoder registered as the task ``toy``.

PYTHONPATH=examples/plugin_drive python Executors/main.py --plugins toy_drive --task toy

Everything a model family brings sits here: its WarpDrive (a config dataclass + a pure torch module), its
Lightning engine (a LatentEngine: optimiser, EMA, resume and the output contract come with it), its flags, its
defaults and its YAML defaults file (toy.yaml, beside this file). The one call to ``register`` makes it a task.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from Engineering.config.flags import Flag
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.Engines.registry import CONFIGS, TaskSpec, register

HERE = Path(__file__).resolve().parent


# --- the WarpDrive: pure torch, no Lightning, no files ---------------------------------------------------------

@dataclass
class ToyConfig:
    in_channels: int = 1
    size: int = 32  # square 2D inputs of size x size
    latent_dim: int = 8
    width: int = 8


class ToyAE(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        if cfg.size % 4:
            raise ValueError(f"the toy autoencoder needs a size divisible by 4, got {cfg.size}")
        w, s = cfg.width, cfg.size // 4
        self.enc = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, w, 3, 2, 1),
                                 nn.SiLU(), nn.Flatten(), nn.Linear(w * s * s, cfg.latent_dim))
        self.dec = nn.Sequential(nn.Linear(cfg.latent_dim, w * s * s), nn.Unflatten(1, (w, s, s)), nn.SiLU(),
                                 nn.ConvTranspose2d(w, w, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(w, cfg.in_channels, 4, 2, 1))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)


# --- its typed YAML section (model§toy) and its flag ------------------------------------------------------------

class ToySection(BaseModel):
    """model§toy"""
    model_config = ConfigDict(extra="forbid")
    width: int = Field(8, gt=0, description="Channels of the two convolution stages.")


class ToyModelKeys(BaseModel):
    toy: ToySection = ToySection()


TOY_FLAGS = (Flag("toy_width", ("model", "toy", "width"), "int", 8, "Channels of the toy autoencoder.", "Model"),)


# --- the engine --------------------------------------------------------------------------------------------------

class ToyEngine(LatentEngine):
    def __init__(self, cfg, in_channels: int):
        super().__init__(cfg, in_channels)
        shape = list(cfg.model.input_shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"the toy task takes square 2D inputs, got --input_shape {shape}")
        self.net = ToyAE(ToyConfig(in_channels, shape[0], cfg.model.latent_dim, cfg.model.toy.width))

    def _loss(self, x):
        return F.mse_loss(self.net.decode(self.net.encode(x)), x)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch["inp"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=len(batch["inp"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch["inp"]), on_epoch=True, batch_size=len(batch["inp"]))

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self.net.encode(x)

    def reconstruct(self, x, z, use_ema: bool) -> torch.Tensor:
        return self.net.decode(z)


register(TaskSpec(
    name="toy", description="A tiny convolutional autoencoder (the plug-in example).",
    configyml=str(HERE / "toy.yaml"), datajson=str(CONFIGS / "dataNpath_demo.json"),
    defaults={"input_shape": [32, 32], "interp_fact": 0.5, "latent_dim": 8, "batch_size": 16, "num_epochs": 2,
              "lr": 1e-3, "model§drive": "toy", "model§tag": "toy"},
    extra_flags=TOY_FLAGS, sections={"model": ToyModelKeys}, drive="toy", engine=ToyEngine, module=__name__,
))
