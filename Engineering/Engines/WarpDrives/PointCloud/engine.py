"""Lightning engine of the point-cloud autoencoders (seed 003): a DGCNN or a Vector Neuron encoder and a FoldingNet
decoder trained with the Chamfer or the Earth Mover's distance (``model§PointCloud§loss``; validation logs both as
val_chamfer and val_emd) on (N, 3) / (N, 4) clouds (``Engineering/data/point_datamodule.py``).
Test: the codes as latents through the output contract (embeddings only: a cloud is no image to score by
SSIM)."""

from __future__ import annotations

import torch
from pydantic import create_model

from Engineering.config import Config
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.point_datamodule import PointCloudDataModule
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.Engines.MainEngine import TRAIN_MODES, ImageRun, is_rank_zero
from Engineering.Science.chamfer import chamfer_distance
from Engineering.Science.transport import earth_movers

from .network import PointCloudAE, PointCloudConfig

PointCloudKeys = keys_from_dataclass(
    "PointCloudKeys", PointCloudConfig, exclude=("in_features", "latent_dim"), doc="model§PointCloud"
)
PointCloudModelKeys = create_model("PointCloudModelKeys", __base__=Keys, PointCloud=(PointCloudKeys, PointCloudKeys()))


class PointCloudEngine(LatentEngine):
    input_kind = "points"

    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        k = cfg.model.PointCloud
        self.pc_cfg = drive_config(PointCloudConfig, k, in_features=in_channels, latent_dim=cfg.model.latent_dim)
        self.net = PointCloudAE(self.pc_cfg)

    @staticmethod
    def _points(batch) -> torch.Tensor:
        return batch["inp"].transpose(1, 2).float()  # (B, F, N) as shipped -> (B, N, F)

    def _losses(self, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, target = self.net(pts)["recon"], pts[..., :3]
        out = {"chamfer": chamfer_distance(recon, target).mean()}
        if self.pc_cfg.loss == "emd" or not self.training:
            out["emd"] = earth_movers(recon, target).mean()
        return out

    def _loss(self, pts: torch.Tensor) -> torch.Tensor:
        return self._losses(pts)[self.pc_cfg.loss]

    def training_step(self, batch, batch_idx):
        loss = self._loss(self._points(batch))
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["inp"]), sync_dist=True
        )
        return loss

    def validation_step(self, batch, batch_idx):
        losses = self._losses(self._points(batch))
        n = len(batch["inp"])
        self.log("val_loss", losses[self.pc_cfg.loss], on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"val_{k}": v for k, v in losses.items()}, on_epoch=True, batch_size=n, sync_dist=True)

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self.net.encode(x.transpose(1, 2).float())

    def decode(self, z, use_ema: bool) -> torch.Tensor:
        return self.net.decoder(z)  # (B, M, 3); the VN encoder's canonical frame

    def render(self, x, codes, use_ema: bool) -> list[torch.Tensor]:
        """Each code's cloud, placed in x's own frame and centre (VN) or as decoded (DGCNN)."""
        enc = self.net.encoder(x.transpose(1, 2).float())
        return [self.net.place(self.net.decoder(z), enc) for z in codes]

    def pose(self, x, use_ema: bool) -> torch.Tensor | None:
        """The VN encoder's frame as a rotation (its rows are the frame's axes: pose = frame^T); DGCNN has none."""
        enc = self.net.encoder(x.transpose(1, 2).float())
        return enc["frame"].transpose(1, 2) if "frame" in enc else None


class PointCloudRun(ImageRun):
    datamodule_class = PointCloudDataModule

    def describe(self, dm) -> str:
        folds, warnings = dm.split_summary(trains=self.cfg.run.run_mode in TRAIN_MODES)
        if is_rank_zero():
            for warning in warnings:
                print(f"warning: {warning}")
        n, width = dm.records[0].shape
        return (
            f"data: {len(dm.records)} point clouds of {n} points ({'xyz + intensity' if width == 4 else 'xyz'}) "
            f"→ {len(dm.records)} samples; {folds} ({dm.h5file})"
        )
