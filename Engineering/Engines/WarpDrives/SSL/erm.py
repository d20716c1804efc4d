"""Lightning engine of supervised ERM (empirical risk minimisation): a ResNet classifier of a phenotype column,
the supervised baseline of Batch Effects Normalization (Lin & Lu, MLCB 2022).

Labels come from json§DS_phenotypes (``--erm_label COL``, a categorical column) joined on patient; a sample
without a label is left out of the loss. Cross-entropy, Adam, cosine schedule with a linear warm-up by default
(``--lr_decay_type 3``). With ``--batch_groups`` the batches are group-pure and ``--bn_eval_mode`` applies, as
for every task. Test: the encoder's features go to the output contract (emb.h5: the latents a probe or GWAS
uses), and an extra output step writes the class predictions and the in- / out-of-distribution report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, create_model
from torch import nn

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.datamodule import phenotype_labels, split_targets
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.io.atomic import write_text
from Engineering.io.outputs import write_table

from .network import ResNetEncoder, SSLConfig

# model§ERM: the ResNet encoder of the SSL drive's config (its defaults), without the projection head
ERMKeys = keys_from_dataclass(
    "ERMKeys", SSLConfig, exclude=("is3D", "in_channels", "proj_hidden", "proj_dim"), doc="model§ERM"
)
ERMModelKeys = create_model(
    "ERMModelKeys",
    __base__=Keys,
    ERM=(ERMKeys, ERMKeys()),
    erm_label=(str, Field("", description="The phenotype column the classifier predicts.")),
)


class ERMEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        self.labels, self.classes = phenotype_labels(cfg, cfg.model.erm_label, "--erm_label")
        keys = cfg.model.ERM
        arch = drive_config(SSLConfig, keys, is3D=cfg.model.is3D, in_channels=in_channels)
        self.net = nn.ModuleDict(
            {"encoder": ResNetEncoder(arch), "head": nn.Linear(arch.feature_dim, len(self.classes))}
        )
        self.init_ema()
        self._targets: dict[str, torch.Tensor] = {}

    def setup(self, stage: str) -> None:
        super().setup(stage)  # (under DeepSpeed: the EMA leaves the module first)
        self._targets = split_targets(self.trainer.datamodule, self.labels, self.classes)

    def _net(self, use_ema: bool):
        return self.ema_net if use_ema else self.net

    def _loss(self, net, batch, split: str):
        y = self._targets[split][batch["index"].cpu()].to(self.device)
        logits = net["head"](net["encoder"](batch["inp"]))
        keep = y >= 0
        if not keep.any():
            return None, None
        return F.cross_entropy(logits[keep], y[keep]), (logits[keep].argmax(1) == y[keep]).float().mean()

    def training_step(self, batch, batch_idx):
        loss, acc = self._loss(self.net, batch, "train")
        if loss is None:
            return None  # no labelled sample in this batch
        n = len(batch["inp"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train_acc", acc, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        loss, acc = self._loss(self.ema_net if self.cfg.eval.test_ema else self.net, batch, "val")
        if loss is not None:
            n = len(batch["inp"])
            self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
            self.log("val_acc", acc, on_epoch=True, batch_size=n, sync_dist=True)

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self._net(use_ema)["encoder"](x)

    @torch.no_grad()
    def predict_from_latents(self, Z: np.ndarray, use_ema: bool) -> np.ndarray:
        head = self._net(use_ema)["head"].cpu()
        return torch.softmax(head(torch.from_numpy(Z.astype(np.float32))), 1).numpy()


class ERMReport:
    """The extra output step of the ERM task: predictions.tsv and ood_report.json in the Output folder."""

    def check(self, cfg: Config, data) -> None:
        phenotype_labels(cfg, cfg.model.erm_label, "--erm_label")

    def run(self, cfg: Config, model, dm, out_dir: Path) -> dict:
        emb = pd.read_parquet(out_dir / "emb.parquet")
        zcols = [c for c in emb.columns if c.startswith("Z")]
        use_ema = bool(cfg.eval.test_ema) and hasattr(model, "ema_net")
        proba = model.predict_from_latents(emb[zcols].to_numpy(), use_ema)
        pred = emb.drop(columns=zcols)
        pred["true"] = pred["patientID"].map(model.labels)
        pred["prediction"] = np.asarray(model.classes, dtype=object)[proba.argmax(1)]
        pred["probability"] = proba.max(1)
        train = set(dm.split_ids("train") or [])
        group_of = dm.patient_groups(list(train) + pred["patientID"].tolist())
        seen = {group_of[p] for p in train if p in group_of} if group_of else set()
        pred["group"] = pred["patientID"].map(group_of) if group_of else ""
        labelled = pred[pred["true"].notna()]
        correct = labelled["true"] == labelled["prediction"]
        report = {
            "label": cfg.model.erm_label,
            "classes": model.classes,
            "n_test": int(len(labelled)),
            "accuracy": float(correct.mean()) if len(labelled) else None,
        }
        if group_of:
            ood = ~labelled["group"].isin(seen)
            report.update(
                groups_in_training=sorted(seen),
                in_distribution={
                    "n": int((~ood).sum()),
                    "accuracy": float(correct[~ood].mean()) if (~ood).any() else None,
                },
                out_of_distribution={
                    "n": int(ood.sum()),
                    "accuracy": float(correct[ood].mean()) if ood.any() else None,
                },
                per_group={
                    g: {
                        "n": int(len(part)),
                        "accuracy": float((part["true"] == part["prediction"]).mean()),
                        "held_out": g not in seen,
                    }
                    for g, part in labelled.groupby("group")
                },
            )
        write_table(out_dir / "predictions.tsv", pred, sep="\t")
        write_text(out_dir / "ood_report.json", json.dumps(report, indent=1))
        print(
            f"test accuracy {report['accuracy']:.3g}"
            + (
                f" (in-distribution {report['in_distribution']['accuracy']}, held-out groups "
                f"{report['out_of_distribution']['accuracy']})"
                if group_of
                else ""
            )
        )
        return {"ood_report": report}


ERM_FLAGS = (
    Flag(
        "erm_label",
        ("model", "erm_label"),
        "str",
        "",
        "The phenotype column (classes) the ERM classifier predicts (json§DS_phenotypes).",
        "Model",
    ),
)
