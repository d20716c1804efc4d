"""The toy family's engine (a LatentEngine: optimiser, EMA, resume and the output contract come with it), its
typed YAML section (model§toy) and its flag."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import create_model

from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.Engines.latent_engine import LatentEngine

from .network import ToyAE, ToyConfig

# model§toy: the keys ARE the network config's fields (minus what the run gives)
ToyKeys = keys_from_dataclass("ToyKeys", ToyConfig, exclude=("in_channels", "size", "latent_dim"), doc="model§toy")
ToyModelKeys = create_model("ToyModelKeys", __base__=Keys, toy=(ToyKeys, ToyKeys()))
TOY_FLAGS = (
    Flag(
        "toy_width",
        ("model", "toy", "width"),
        "int",
        ToyKeys.model_fields["width"].default,
        "Channels of the toy autoencoder.",
        "Model",
    ),
)


class ToyEngine(LatentEngine):
    def __init__(self, cfg, in_channels: int):
        super().__init__(cfg, in_channels)
        shape = list(cfg.model.input_shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"the toy task takes square 2D inputs, got --input_shape {shape}")
        self.net = ToyAE(
            drive_config(
                ToyConfig, cfg.model.toy, in_channels=in_channels, size=shape[0], latent_dim=cfg.model.latent_dim
            )
        )

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
