"""Lightning engine of the rotation-invariant autoencoder (seed 003's invariant code + pose; group convolutions of
Cohen & Welling, ICML 2016): 2D images (group C4) or 3D volumes (``--is3D``, group O).

Training: the masked input's mean squared reconstruction error, the reconstruction being the canonical image
turned by the predicted pose. Validation: the same (``val_loss``). Test: the invariant code as the latents, the
posed reconstructions and their SSIM/PSNR through the output contract.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import create_model

from Engineering.config import Config
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.errors import UserError

from .network import RotInvAE, RotInvConfig

RotInvKeys = keys_from_dataclass(
    "RotInvKeys", RotInvConfig, exclude=("dim", "in_channels", "size", "latent_dim"), doc="model§RotInv"
)
RotInvModelKeys = create_model("RotInvModelKeys", __base__=Keys, RotInv=(RotInvKeys, RotInvKeys()))


def rotinv_config(cfg: Config, in_channels: int) -> RotInvConfig:
    m = cfg.model
    shape, dim = [int(s) for s in m.input_shape], 3 if m.is3D else 2
    if len(shape) != dim or len(set(shape)) != 1:
        raise UserError(
            f"main_rotinv needs a square image or a cubic volume (--input_shape S S{' S' if m.is3D else ''}"
            f"{'' if m.is3D else ', or S S S with --is3D'}): the grid's rotations must map it onto itself; "
            f"got {shape}"
        )
    k = m.RotInv
    return drive_config(RotInvConfig, k, dim=dim, in_channels=in_channels, size=shape[0], latent_dim=m.latent_dim)


class RotInvEngine(LatentEngine):
    def __init__(self, cfg, in_channels: int):
        super().__init__(cfg, in_channels)
        self.rot_cfg = rotinv_config(cfg, in_channels)
        self.net = RotInvAE(self.rot_cfg)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        target = x * self.net.encoder.mask if self.rot_cfg.mask else x
        return F.mse_loss(out["recon"], target)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch["inp"])
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["inp"]), sync_dist=True
        )
        return loss

    def validation_step(self, batch, batch_idx):
        self.log(
            "val_loss",
            self._loss(batch["inp"]),
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["inp"]),
            sync_dist=True,
        )

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self.net.encode(x)

    def reconstruct(self, x, z, use_ema: bool) -> torch.Tensor:
        return self.net(x)["recon"]

    def decode(self, z, use_ema: bool) -> torch.Tensor:
        return self.net.decoder(z)  # the canonical image: a code has no pose

    def render(self, x, codes, use_ema: bool) -> list[torch.Tensor]:
        """Each code's canonical image turned by x's own pose."""
        pose = self.net.encoder(x)["pose_logits"].softmax(1)
        return [self.net.draw(self.net.decoder(z), pose) for z in codes]

    def pose(self, x, use_ema: bool) -> torch.Tensor:
        """The rotation matrix of the most likely group element."""
        mats = torch.as_tensor(np.stack(self.net.group.mats), dtype=torch.float32, device=x.device)
        return mats[self.net.encoder(x)["pose_logits"].argmax(1)]
