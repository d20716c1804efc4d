"""Lightning engine of self-supervised representation learning: SimCLR (Chen et al., ICML 2020), MinCLR
(Lin & Lu, MLCB 2022) and IP-IRM (Wang et al., NeurIPS 2021: ``IPIRMEngine``, which builds on this one), with Batch Effects Normalization from the shared options (--batch_groups for
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
from pydantic import Field, create_model

from Engineering.config import honour
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, keys_from_dataclass
from Engineering.data.augment import AugmentSpec, augment, grid_views
from Engineering.data.datamodule import dataset_positions, phenotype_labels
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.Engines.registry import CONFIGS, TaskSpec, register
from .network import SSLConfig, SSLNet
from Engineering.errors import UserError
from Engineering.Science.contrastive import nt_xent

# model§SSL: the drive's dataclass + the method's keys; the augmentations (one home: AugmentSpec's defaults)
SSLKeys = keys_from_dataclass(
    "SSLKeys", SSLConfig, exclude=("is3D", "in_channels"), doc="model§SSL",
    method=(Literal["simclr", "minclr", "ipirm"], Field("simclr", description="simclr: positives are augmentations "
                                                    "of the image; minclr: different grid cells of it; ipirm: SimCLR's "
                                                    "views with IP-IRM's partitions (model§IPIRM).")),
    n_views=(int, Field(2, ge=2, description="Views per image (positives per anchor: n_views - 1).")),
    temperature=(float, Field(0.1, gt=0, description="NT-Xent temperature.")),
    grid=(int, Field(2, ge=1, description="MinCLR: the image is cut into grid x grid cells, one per view.")),
)
AugmentKeys = keys_from_dataclass("AugmentKeys", AugmentSpec, doc="model§augment")


class IPIRMKeys(Keys):
    """model§IPIRM: IP-IRM (--method ipirm). Names follow the reference code's flags."""
    env_num: int = Field(2, ge=2, description="K: subsets (orbits) per partition.")
    penalty_weight: float = Field(0.2, ge=0, description="lambda_1: weight of the IRM penalty in the minimisation "
                                                         "step (> 1: the whole loss is divided by it, as in the "
                                                         "reference).")
    penalty_warmup: int = Field(0, ge=0, description="Epochs over which lambda_1 ramps linearly from 0 (0: off).")
    irm_weight_maxim: float = Field(0.5, ge=0, description="lambda_2: weight of the penalty in the maximisation "
                                                           "step's objective.")
    irm_temperature: float = Field(0.1, gt=0, description="tau_irm: temperature of the losses inside the penalty.")
    irm_scale: Literal["column", "scalar"] = Field(
        "column", description="The IRMv1 penalty's dummy classifier: column, one scale per logit column (the "
                              "reference code's); scalar, one scale (IRMv1's own form: a variant, not the "
                              "reference's).")
    maximize_iter: int = Field(50, ge=1, description="A maximisation step at the start and every this many epochs.")
    keep_cont: bool = Field(True, description="Keep the whole-batch contrastive loss next to the subsets' losses.")
    retain_group: bool = Field(True, description="Keep the earlier partitions in the minimisation step (else only "
                                                 "the newest).")
    retain_group_set: int = Field(10, ge=1, description="At most this many retained partitions (oldest dropped).")
    offline: bool = Field(True, description="Feature bank of two fresh views of every training sample at each "
                                            "maximisation step; false: the projections training computed during "
                                            "the previous epochs (samples not yet visited are left out).")
    random_init: bool = Field(True, description="Start each partition search from random logits; false: from the "
                                                "previous search's.")
    constrain: bool = Field(True, description="Balance term in the partition search (the reference's --constrain): "
                                              "minus the entropy of a chunk's mean assignment (pushes towards equal "
                                              "subsets); with constrain_relax its hinge form.")
    constrain_relax: bool = Field(True, description="With constrain: the term is relu(floor - entropy), inactive "
                                                    "while no subset is more than balance_ratio times another (the "
                                                    "reference's --constrain_relax).")
    balance_ratio: float = Field(2.0, ge=1, description="constrain_relax's floor: the entropy of a split with one "
                                                        "subset this many times the others (K = 2, 2:1: 0.6365, the "
                                                        "reference's).")
    max_epochs: int = Field(61, ge=1, description="The partition search stops after this many passes over the "
                                                  "feature bank (the reference's 61).")
    max_lr: float = Field(0.5, gt=0, description="Adam learning rate of the partition logits (the reference's).")
    max_milestones: list[int] = Field([5, 35], description="Passes after which the search's learning rate is "
                                                           "multiplied by max_gamma (the reference's 5 and 35).")
    max_gamma: float = Field(0.2, gt=0, description="The search's learning-rate factor at each milestone.")
    max_patience: int = Field(5, ge=1, description="Stop the search after this many passes without a lower mean "
                                                   "risk, once max_patience_after passes are done (the reference's "
                                                   "5 after 51).")
    max_patience_after: int = Field(51, ge=0, description="Passes before max_patience can stop the search.")
    max_chunk: int = Field(3096, ge=2, description="Rows of the feature bank per step of the partition search "
                                                   "(the reference's 3,096).")
    mixup: bool = Field(False, description="i-Mix in the minimisation step: the first view is an input mix, the "
                                           "loss weighs each sample's two targets by its own mixing weight.")
    mixup_alpha: float = Field(1.0, gt=0, description="Mixing weights ~ Beta(alpha, alpha).")
    mixup_max: bool = Field(False, description="i-Mix in the maximisation step's feature bank too (offline only).")


SSLModelKeys = create_model("SSLModelKeys", __base__=Keys, SSL=(SSLKeys, SSLKeys()),
                            augment=(AugmentKeys, AugmentKeys()), IPIRM=(IPIRMKeys, IPIRMKeys()))


class SSLEngine(LatentEngine):
    def __init__(self, cfg, in_channels: int):
        super().__init__(cfg, in_channels)
        keys = cfg.model.SSL
        arch = {f: getattr(keys, f) for f in ("depth", "width", "stem", "proj_hidden", "proj_dim")}
        self.net = SSLNet(SSLConfig(is3D=cfg.model.is3D, in_channels=in_channels, **arch))
        self.init_ema()
        self.method, self.n_views, self.tau, self.grid = keys.method, keys.n_views, keys.temperature, keys.grid
        if self.method == "minclr" and self.n_views > self.grid ** 2:
            raise UserError(f"model§SSL: MinCLR draws its {self.n_views} views from different cells of a "
                            f"{self.grid}x{self.grid} grid; raise model§SSL§grid or lower n_views")
        plane = tuple(cfg.model.input_shape)[-2:]
        if self.method == "minclr" and min(plane) < self.grid:  # cells of 0 pixels: nothing to resize
            raise UserError(f"model§SSL§grid={self.grid}: a {self.grid}x{self.grid} MinCLR grid does not fit the "
                            f"{plane[0]}x{plane[1]} input (--input_shape); each cell needs at least one pixel")
        self.aug = AugmentSpec(**cfg.model.augment.model_dump())
        self.seed = int(cfg.training.seed)
        # the kNN monitor: leave-one-out k-NN accuracy of a phenotype class on the validation features
        self.knn_labels, self.knn_classes = phenotype_labels(cfg, cfg.eval.knn_label, "--knn_label") \
            if cfg.eval.knn_label else (None, None)
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
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["inp"]),
                 sync_dist=True)
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
            self._val_feats.append((self.embed(batch["inp"], bool(self.cfg.eval.test_ema)).float(),
                                    torch.tensor(y, device=self.device)))

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
            parts = [F.interpolate(x[..., r * ch:(r + 1) * ch, c * cw:(c + 1) * cw].float(), size=tuple(x.shape[2:]),
                                   mode="trilinear" if x.ndim == 5 else "bilinear", align_corners=False)
                     for r in range(self.grid) for c in range(self.grid)]
        feats = []
        for v in parts:
            if self.aug.standardise:  # the views the encoder learnt from were standardised per channel
                dims = tuple(range(2, v.ndim))
                v = (v - v.mean(dims, keepdim=True)) / (v.std(dims, keepdim=True) + 1e-6)
            feats.append(net.encode(v))
        return torch.stack(feats).mean(0)


SSL_FLAGS = (
    Flag("method", ("model", "SSL", "method"), "str", "simclr",
         "simclr (positives: augmentations of the image), minclr (different cells of the same image) or ipirm "
         "(SimCLR views, IRM inside discovered partitions); --ssl_method is its former name.", "Model",
         ("simclr", "minclr", "ipirm"),
         aliases=("ssl_method",)),
    Flag("n_views", ("model", "SSL", "n_views"), "int", 2, "Views per image in the contrastive loss.", "Model"),
    Flag("temperature", ("model", "SSL", "temperature"), "float", 0.1, "NT-Xent temperature.", "Model"),
    Flag("knn_label", ("eval", "knn_label"), "str", "", "kNN monitor: leave-one-out 15-NN accuracy of this "
         "phenotype class on the validation features, logged as val_knn_acc ('' = off).", "Test"),
) + tuple(
    Flag(name, ("model", "IPIRM", name), typ, IPIRMKeys.model_fields[name].default,
         "IP-IRM: " + IPIRMKeys.model_fields[name].description, "Model")
    for name, typ in (("env_num", "int"), ("penalty_weight", "float"), ("irm_weight_maxim", "float"),
                      ("maximize_iter", "int"), ("keep_cont", "bool"), ("retain_group", "bool"), ("offline", "bool"),
                      ("random_init", "bool"), ("constrain", "bool"), ("constrain_relax", "bool"), ("mixup", "bool"),
                      ("mixup_max", "bool")))

def ssl_engine(cfg, in_channels: int) -> SSLEngine:
    """The engine of the method: IP-IRM's extends SSLEngine (imported here: it imports this module)."""
    if cfg.model.SSL.method == "ipirm":
        from .ipirm import IPIRMEngine
        return IPIRMEngine(cfg, in_channels)
    return SSLEngine(cfg, in_channels)


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
