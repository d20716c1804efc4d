"""Lightning engine of self-supervised representation learning: SimCLR (Chen et al., ICML 2020), MinCLR
(Lin & Lu, MLCB 2022) and IP-IRM (Wang et al., NeurIPS 2021: ``IPIRMEngine``, which builds on this one), with Batch
Effects Normalization from the shared options (--batch_groups for
group-pure training batches, --bn_eval_mode for evaluation).

Training: V views of every image (SimCLR: V random augmentations of the image; MinCLR: V different grid cells
of the same image, drawn without replacement, each then augmented), the ResNet encoder, the projection head
and the multi-positive NT-Xent. Every random draw is a function of (seed, step, batch, rank): exact resume.
Validation: the same loss with draws fixed per batch (``val_loss``). The latents are the encoder's pooled
features (not the projections), written through the output contract (embeddings only: nothing is
reconstructed).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.augment import AugmentSpec, augment, grid_views
from Engineering.data.datamodule import dataset_positions, phenotype_labels
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.errors import UserError
from Engineering.Science.contrastive import nt_xent

from .network import SSLConfig, SSLNet


def ssl_keys(methods: dict) -> type[Keys]:
    """model§SSL: the drive's dataclass + the contrastive keys; ``method`` is one of the method table's
    (``methods.METHODS``: name -> ``Method``), described by the table's own lines."""
    method_help = "; ".join(f"{name}: {m.key_help}" for name, m in methods.items()) + "."
    return keys_from_dataclass(
        "SSLKeys",
        SSLConfig,
        exclude=("is3D", "in_channels"),
        doc="model§SSL",
        method=(Literal[tuple(methods)], Field(next(iter(methods)), description=method_help)),
        n_views=(int, Field(2, ge=2, description="Views per image (positives per anchor: n_views - 1).")),
        temperature=(float, Field(0.1, gt=0, description="NT-Xent temperature.")),
        grid=(int, Field(2, ge=1, description="MinCLR: the image is cut into grid x grid cells, one per view.")),
    )


# the augmentations (one home: AugmentSpec's defaults)
AugmentKeys = keys_from_dataclass("AugmentKeys", AugmentSpec, doc="model§augment")


class SSLEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        keys = cfg.model.SSL
        self.net = SSLNet(drive_config(SSLConfig, keys, is3D=cfg.model.is3D, in_channels=in_channels))
        self.init_ema()
        self.method, self.n_views, self.tau, self.grid = keys.method, keys.n_views, keys.temperature, keys.grid
        if self.method == "minclr" and self.n_views > self.grid**2:
            raise UserError(
                f"model§SSL: MinCLR draws its {self.n_views} views from different cells of a "
                f"{self.grid}x{self.grid} grid; raise model§SSL§grid or lower n_views"
            )
        plane = tuple(cfg.model.input_shape)[-2:]
        if self.method == "minclr" and min(plane) < self.grid:  # cells of 0 pixels: nothing to resize
            raise UserError(
                f"model§SSL§grid={self.grid}: a {self.grid}x{self.grid} MinCLR grid does not fit the "
                f"{plane[0]}x{plane[1]} input (--input_shape); each cell needs at least one pixel"
            )
        self.aug = AugmentSpec(**cfg.model.augment.model_dump())
        self.seed = int(cfg.training.seed)
        # the kNN monitor: leave-one-out k-NN accuracy of a phenotype class on the validation features
        self.knn_labels, self.knn_classes = (
            phenotype_labels(cfg, cfg.eval.knn_label, "--knn_label") if cfg.eval.knn_label else (None, None)
        )
        self._val_feats: list = []

    def _gen(self, *key: int) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(hash((self.seed,) + key) & 0x7FFFFFFFFFFFFFFF)
        return g

    def views(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """(B, V, C, ...) views of the batch: V augmentations (SimCLR) or V augmented grid cells (MinCLR)."""
        x = x.float()
        if self.method == "minclr":
            parts = [augment(v, self.aug, g, crop=False) for v in grid_views(x, self.n_views, self.grid, g)]
        else:
            parts = [augment(x, self.aug, g) for _ in range(self.n_views)]
        return torch.stack(parts, 1)

    def _loss(self, net, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        v = self.views(x.cpu(), g).to(x.device)
        b, n = v.shape[:2]
        z = net.project(net.encode(v.flatten(0, 1))).reshape(b, n, -1)
        return nt_xent(z, self.tau)

    def training_step(self, batch, batch_idx):
        loss = self._loss(self.net, batch["inp"], self._gen(1, self.global_step, batch_idx, self.global_rank))
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["inp"]), sync_dist=True
        )
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        net = self.ema_net if self.cfg.eval.test_ema else self.net
        if len(batch["inp"]) < 2:
            return  # a contrastive loss needs negatives: a single-sample chunk has none
        loss = self._loss(net, batch["inp"], self._gen(2, batch_idx))
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch["inp"]), sync_dist=True)
        if self.knn_labels is not None:
            ds = self.trainer.datamodule.dataset("val")
            code = {c: k for k, c in enumerate(self.knn_classes)}
            pos = dataset_positions(self.trainer.val_dataloaders.dataset, batch["index"].tolist())
            y = [code.get(self.knn_labels.get(ds.records[ds.samples[i].record].patientID), -1) for i in pos]
            self._val_feats.append(
                (self.embed(batch["inp"], bool(self.cfg.eval.test_ema)).float(), torch.tensor(y, device=self.device))
            )

    def on_validation_epoch_end(self) -> None:
        if self.knn_labels is None or not self._val_feats:
            return
        feats = torch.cat([f for f, _ in self._val_feats])
        y = torch.cat([t for _, t in self._val_feats])
        self._val_feats = []
        if self.trainer.world_size > 1:  # every rank scores the whole validation set
            feats = self.all_gather(feats).flatten(0, 1)
            y = self.all_gather(y).flatten(0, 1)
        keep = y >= 0
        acc = knn_leave_one_out(feats[keep], y[keep], k=15)
        if acc is not None:
            self.log("val_knn_acc", acc, on_epoch=True, batch_size=int(keep.sum()))

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        """The image's latent: its encoder features; for MinCLR the mean over its grid cells' features (each
        cell resized to the input size, as in training: the encoder learnt from cells, not whole images)."""
        net = self.ema_net if use_ema else self.net
        parts = [x.float()]
        if self.method == "minclr":
            h, w = x.shape[-2:]
            ch, cw = h // self.grid, w // self.grid
            parts = [
                F.interpolate(
                    x[..., r * ch : (r + 1) * ch, c * cw : (c + 1) * cw].float(),
                    size=tuple(x.shape[2:]),
                    mode="trilinear" if x.ndim == 5 else "bilinear",
                    align_corners=False,
                )
                for r in range(self.grid)
                for c in range(self.grid)
            ]
        feats = []
        for v in parts:
            if self.aug.standardise:  # the views the encoder learnt from were standardised per channel
                dims = tuple(range(2, v.ndim))
                v = (v - v.mean(dims, keepdim=True)) / (v.std(dims, keepdim=True) + 1e-6)
            feats.append(net.encode(v))
        return torch.stack(feats).mean(0)


# the contrastive flags every method shares (--method and each method's own flags: methods.py)
SSL_FLAGS = (
    Flag("n_views", ("model", "SSL", "n_views"), "int", 2, "Views per image in the contrastive loss.", "Model"),
    Flag("temperature", ("model", "SSL", "temperature"), "float", 0.1, "NT-Xent temperature.", "Model"),
    Flag(
        "knn_label",
        ("eval", "knn_label"),
        "str",
        "",
        "kNN monitor: leave-one-out 15-NN accuracy of this "
        "phenotype class on the validation features, logged as val_knn_acc ('' = off).",
        "Test",
    ),
)


def knn_leave_one_out(feats: torch.Tensor, y: torch.Tensor, k: int = 15) -> torch.Tensor | None:
    """Leave-one-out k-NN (cosine, majority vote) accuracy: the kNN monitor of Wu et al. (CVPR 2018)."""
    n = len(y)
    if n < 3:
        return None
    k = min(k, n - 1)
    z = F.normalize(feats, dim=1)
    sim = z @ z.t()
    sim.fill_diagonal_(-float("inf"))
    nn_idx = sim.topk(k, dim=1).indices
    votes = F.one_hot(y[nn_idx], int(y.max()) + 1).sum(1)
    return (votes.argmax(1) == y).float().mean()
