"""Lightning engine of the IID predictor (Wu et al., MIDL 2022, seed 000): stage 3 of the IID pipeline, a ResNet
classifier that reads a frozen ``main_restyle`` encoder's noise maps (``--noise``) and style codes (``--style``),
trained and evaluated out of distribution: held-out groups of a metadata column never reach training.

Splits (``--ood_column COL --ood_test_groups a,b --ood_val_groups c``): subjects of the OOD test groups form the
OOD test set and those of the OOD validation groups join validation; every other subject keeps its fold-CSV
split (train / id-val / id-test). Loss ``(1 - c) CE + c ArcFace`` (``--loss_coef c``), with CutMix on the image
and on its latents alike (``--cutmix_prob``). Every random draw is a function of (seed, step): exact resume.
Test: the predictor's embedding through the output contract, then ``ood_report.csv/json/html``, the per-subject
``predictions.tsv`` and WILDS-style prediction files (one predicted class index per line, per split).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, create_model

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.datamodule import H5DataModule, phenotype_labels, resolve_data_path, split_targets
from Engineering.data.labels import read_label_table
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.Engines.MainEngine import ImageRun
from Engineering.Engines.saved_runs import upstream_engine
from Engineering.errors import UserError
from Engineering.io.atomic import write_text
from Engineering.io.checkpoints import read_checkpoint
from Engineering.io.outputs import write_table
from Engineering.Science.cutmix import cutmix

from .network import IIDConfig, IIDNet

IIDKeys = keys_from_dataclass(
    "IIDKeys",
    IIDConfig,
    exclude=("in_channels", "n_classes", "n_latent", "style_dim"),
    doc="model§IID",
    encoder=(
        str,
        Field(
            "",
            description="--encoder: the main_restyle run folder (its last checkpoint) or checkpoint "
            "file whose noise maps / style codes the predictor reads.",
        ),
    ),
    targets=(str, Field("", description="--targets: the label column of json§DS_phenotypes.")),
    ood_column=(
        str,
        Field(
            "",
            description="--ood_column: the metadata column (phenotype or covariate table) whose "
            "groups are held out (experiment, plate, site, scanner).",
        ),
    ),
    ood_test_groups=(str, Field("", description="--ood_test_groups a,b: groups used only for the OOD test.")),
    ood_val_groups=(str, Field("", description="--ood_val_groups c: groups used only for OOD validation.")),
    loss_coef=(float, Field(0.0, ge=0, le=1, description="--loss_coef c: the loss is (1 - c) CE + c ArcFace.")),
    cutmix_prob=(float, Field(0.0, ge=0, le=1, description="Probability of CutMix per batch (images and latents).")),
    cutmix_alpha=(float, Field(1.0, gt=0, description="CutMix's Beta(alpha, alpha) of the kept area.")),
    weights=(
        str,
        Field(
            "",
            description="A local state dict of torchvision's resnet18/34 layout (.pth, read with "
            "weights_only, or .safetensors) for the imagenet stem at width 64 to start "
            "from; never downloaded.",
        ),
    ),
)
IIDModelKeys = create_model("IIDModelKeys", __base__=Keys, IID=(IIDKeys, IIDKeys()))


def _groups(text: str) -> set[str]:
    return {g.strip() for g in str(text).split(",") if g.strip()}


def metadata_groups(cfg: Config, column: str) -> dict[str, str]:
    """patientID -> its value (as a string) in ``column`` of the phenotype table, else of the covariate table."""
    if not column:
        raise UserError(
            "main_iid evaluates out of distribution: give --ood_column COL (a column of the phenotype "
            "or covariate table: experiment, plate, site, scanner)"
        )
    tried = []
    for key in ("DS_phenotypes", "DS_covariates"):
        spec = getattr(cfg.paths, key) or {}
        spec = {"path": spec} if isinstance(spec, str) else spec
        if not spec.get("path"):
            continue
        path = resolve_data_path(cfg, spec["path"])
        table = read_label_table(path)
        if column in table.columns:
            return table.drop_duplicates("patientID").set_index("patientID")[column].dropna().astype(str).to_dict()
        tried.append(f"{path} (columns: {', '.join(c for c in table.columns if c != 'patientID')})")
    raise UserError(
        f"--ood_column {column!r} is in neither table: "
        + ("; ".join(tried) or "set json§DS_phenotypes§path or json§DS_covariates§path")
    )


class OODSplits(H5DataModule):
    """The fold CSV's splits with the held-out groups moved out: their subjects are only OOD test or OOD val."""

    def __init__(self, cfg: Config, merge_train_val: bool = False):
        super().__init__(cfg, merge_train_val)
        k = cfg.model.IID
        self.group_of = metadata_groups(cfg, k.ood_column)
        self.test_groups, self.val_groups = _groups(k.ood_test_groups), _groups(k.ood_val_groups)
        if not self.test_groups:
            raise UserError(f"--ood_test_groups: name the {k.ood_column} group(s) held out for the OOD test")
        if self.test_groups & self.val_groups:
            raise UserError(
                f"group(s) {', '.join(sorted(self.test_groups & self.val_groups))} are in both "
                "--ood_test_groups and --ood_val_groups"
            )
        present = set(self.group_of.get(r.patientID) for r in self.records) - {None}
        unknown = (self.test_groups | self.val_groups) - present
        if unknown:
            raise UserError(
                f"--ood_*_groups {', '.join(sorted(unknown))}: not a value of {k.ood_column!r} among the "
                f"selected subjects (values: {', '.join(sorted(present))})"
            )
        patients = {r.patientID for r in self.records}
        self.ood_test = {p for p in patients if self.group_of.get(p) in self.test_groups}
        self.ood_val = {p for p in patients if self.group_of.get(p) in self.val_groups}

    def split_ids(self, split: str) -> set[str] | None:
        ids = super().split_ids(split)
        base = (ids if ids is not None else {r.patientID for r in self.records}) - self.ood_test - self.ood_val
        return base | {"test": self.ood_test, "val": self.ood_val}.get(split, set())


class IIDRun(ImageRun):
    datamodule_class = OODSplits


def frozen_encoder(path: str):
    engine = upstream_engine(path, "--encoder", "restyle", "main_iid reads a trained encoder's latents")
    return engine.net.requires_grad_(False).eval()


class IIDEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        k = cfg.model.IID
        self.k = k
        self.labels, self.classes = phenotype_labels(cfg, k.targets, "--targets")
        self.encoder = frozen_encoder(k.encoder) if (k.use_noise or k.use_style) else None
        if self.encoder is not None:
            g = self.encoder.generator.cfg
            if g.channels != in_channels:
                raise UserError(f"--encoder {k.encoder} reads {g.channels}-channel images, this data has {in_channels}")
            if k.use_noise and not self.encoder.cfg.noise_head:
                raise UserError(f"--noise: the encoder {k.encoder} was trained without its noise head")
        g = self.encoder.generator.cfg if self.encoder is not None else None
        self.iid_cfg = drive_config(
            IIDConfig,
            k,
            in_channels=in_channels,
            n_classes=len(self.classes),
            n_latent=g.n_latent if g else 0,
            style_dim=g.style_dim if g else 0,
        )
        self.net = IIDNet(self.iid_cfg)
        if k.weights:
            self._load_weights(k.weights)
        self._targets: dict[str, torch.Tensor] = {}

    def _load_weights(self, path: str) -> None:
        if self.iid_cfg.stem != "imagenet":
            raise UserError(
                f"model§IID§weights {path}: pretrained weights need model§IID§stem imagenet (and model§IID§width 64)"
            )
        if not Path(path).is_file():
            raise UserError(f"model§IID§weights {path}: no such file")
        info = self.net.load_torchvision_weights(read_checkpoint(path)["state_dict"])
        print(
            f"IID backbone: {info['tensors']} tensors from {path}"
            + (
                f"; first convolution adapted from 3 to {self.iid_cfg.in_channels} channels"
                if info["conv1_adapted"]
                else ""
            )
            + (f"; not used: {', '.join(info['dropped'])}" if info["dropped"] else "")
        )

    def train(self, mode: bool = True):  # the encoder stays frozen, in eval mode
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._targets = split_targets(self.trainer.datamodule, self.labels, self.classes)

    @torch.no_grad()
    def latents(self, x: torch.Tensor):
        """(style codes or None, noise maps or None) of the frozen encoder."""
        if self.encoder is None:
            return None, None
        codes, noise, _ = self.encoder.invert(x)[-1]
        return (codes if self.k.use_style else None), (noise if self.k.use_noise else None)

    def _loss_of(self, out, target):
        ce = F.cross_entropy(out["logits"], target)
        if not self.k.loss_coef:
            return ce
        arc = F.cross_entropy(self.net.arcface_logits(out["cos"], target), target)
        return (1 - self.k.loss_coef) * ce + self.k.loss_coef * arc

    def training_step(self, batch, batch_idx):
        y = self._targets["train"][batch["index"].cpu()].to(self.device)
        keep = y >= 0
        if not keep.any():
            return None
        x, y = batch["inp"][keep], y[keep]
        codes, noise = self.latents(x)
        g = torch.Generator().manual_seed(int(self.cfg.training.seed) * 1_000_003 + int(self.global_step))
        if self.k.cutmix_prob and float(torch.rand(1, generator=g)) < self.k.cutmix_prob and len(x) > 1:
            x, codes, noise, perm, lam = cutmix(x, codes, noise, self.k.cutmix_alpha, generator=g)
            out = self.net(x, codes, noise)
            loss = lam * self._loss_of(out, y) + (1 - lam) * self._loss_of(out, y[perm.to(y.device)])
        else:
            out = self.net(x, codes, noise)
            loss = self._loss_of(out, y)
        n = len(x)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(
            "train_acc", (out["logits"].argmax(1) == y).float().mean(), on_epoch=True, batch_size=n, sync_dist=True
        )
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        y = self._targets["val"][batch["index"].cpu()].to(self.device)
        keep = y >= 0
        if keep.any():
            x, y = batch["inp"][keep], y[keep]
            out = self.net(x, *self.latents(x))
            n = len(x)
            self.log("val_loss", self._loss_of(out, y), on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
            self.log(
                "val_acc", (out["logits"].argmax(1) == y).float().mean(), on_epoch=True, batch_size=n, sync_dist=True
            )

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self.net(x, *self.latents(x))["emb"]

    @torch.no_grad()
    def predict_from_embeddings(self, emb: np.ndarray) -> np.ndarray:
        return torch.softmax(self.net.head.cpu()(torch.from_numpy(emb.astype(np.float32))), 1).numpy()


def _html(report: dict, table: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(r.group))}</td><td>{r.split}</td><td>{r.n}</td><td>{r.accuracy:.3f}</td></tr>"
        for r in table.itertuples()
    )
    summary = "".join(
        f"<li>{html.escape(k)}: {html.escape(json.dumps(v))}</li>" for k, v in report.items() if k != "per_group"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>OOD report</title><h1>In- and out-of-distribution "
        f"accuracy</h1><ul>{summary}</ul><table border=1 cellpadding=4><tr><th>group</th><th>split</th><th>n</th>"
        f"<th>accuracy</th></tr>{rows}</table>"
    )


def wilds_labels(classes: list[str], index: np.ndarray) -> tuple[np.ndarray, pd.DataFrame | None]:
    """What a WILDS-style prediction file holds for predicted class positions ``index`` into ``classes`` (the
    class names sorted as strings, the order of the classifier's outputs): WILDS datasets' labels are integers
    (rxrx1's siRNA 0..1138), so when every class name is an integer the file holds that label (class "2" is
    written 2, not its position 251 among 1,139 names sorted as strings). Otherwise the file holds the position
    and the returned table maps position -> class name (written beside it as ``wilds_classes.csv``)."""
    names = np.asarray(classes, dtype=object)[np.asarray(index, dtype=int)]
    try:
        return np.array([int(c) for c in names], dtype=np.int64), None
    except ValueError:
        return np.asarray(index, dtype=np.int64), pd.DataFrame({"index": range(len(classes)), "class": classes})


class OODReport:
    """After the test: accuracy per held-out and in-distribution group, predictions, WILDS-style files."""

    def check(self, cfg: Config, data) -> None:
        phenotype_labels(cfg, cfg.model.IID.targets, "--targets")

    def run(self, cfg: Config, model, dm, out_dir: Path) -> dict:
        emb = pd.read_parquet(out_dir / "emb.parquet")
        zcols = [c for c in emb.columns if c.startswith("Z")]
        proba = model.predict_from_embeddings(emb[zcols].to_numpy())
        pred = emb.drop(columns=zcols)
        pred["group"] = pred["patientID"].map(dm.group_of).fillna("")
        pred["split"] = np.where(pred["patientID"].isin(dm.ood_test), "ood", "id")
        pred["true"] = pred["patientID"].map(model.labels)
        pred["prediction"] = np.asarray(model.classes, dtype=object)[proba.argmax(1)]
        pred["prediction_index"] = proba.argmax(1)
        pred["probability"] = proba.max(1)
        lab = pred[pred["true"].notna()].assign(correct=lambda d: d["true"] == d["prediction"])
        # per group and split, counted over subjects (a subject's accuracy: the mean over its samples)
        subj = lab.groupby(["group", "split", "patientID"], as_index=False)["correct"].mean()
        table = subj.groupby(["group", "split"], as_index=False).agg(
            n=("patientID", "size"), accuracy=("correct", "mean")
        )
        report = {
            "targets": cfg.model.IID.targets,
            "ood_column": cfg.model.IID.ood_column,
            "ood_test_groups": sorted(dm.test_groups),
            "ood_val_groups": sorted(dm.val_groups),
            "noise": model.k.use_noise,
            "style": model.k.use_style,
            "loss_coef": model.k.loss_coef,
        }
        for split in ("id", "ood"):  # over subjects, as the per-group rows; the sample-level accuracy beside it
            part, subjects = lab[lab["split"] == split], subj[subj["split"] == split]
            report[f"{split}_accuracy"] = float(subjects["correct"].mean()) if len(subjects) else None
            report[f"{split}_n_subjects"] = int(len(subjects))
            report[f"{split}_sample_accuracy"] = float(part["correct"].mean()) if len(part) else None
            report[f"{split}_n_samples"] = int(len(part))
        report["per_group"] = table.to_dict(orient="records")
        write_table(out_dir / "ood_report.csv", table[["group", "split", "n", "accuracy"]])
        write_text(out_dir / "ood_report.json", json.dumps(report, indent=1))
        write_text(out_dir / "ood_report.html", _html(report, table))
        write_table(out_dir / "predictions.tsv", pred, sep="\t")
        labels, mapping = wilds_labels(model.classes, pred["prediction_index"].to_numpy())
        for split in ("id", "ood"):
            write_text(
                out_dir / f"wilds_{split}_test_pred.csv",
                "".join(f"{i}\n" for i in labels[(pred["split"] == split).to_numpy()]),
            )
        if mapping is not None:
            write_table(out_dir / "wilds_classes.csv", mapping)

        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"

        print(
            f"accuracy over subjects in distribution {fmt(report['id_accuracy'])} (n {report['id_n_subjects']}), "
            f"out of distribution {fmt(report['ood_accuracy'])} (n {report['ood_n_subjects']}): "
            f"{out_dir / 'ood_report.csv'}"
        )
        return {"ood_report": report}


IID_FLAGS = (
    Flag(
        "encoder",
        ("model", "IID", "encoder"),
        "str",
        "",
        "The main_restyle run folder or checkpoint whose latents the predictor reads.",
        "Model",
    ),
    Flag("targets", ("model", "IID", "targets"), "str", "", "The label column of json§DS_phenotypes.", "Model"),
    Flag(
        "ood_column", ("model", "IID", "ood_column"), "str", "", "Metadata column whose groups are held out.", "Model"
    ),
    Flag(
        "ood_test_groups",
        ("model", "IID", "ood_test_groups"),
        "str",
        "",
        "Comma-separated groups of the OOD test.",
        "Model",
    ),
    Flag(
        "ood_val_groups",
        ("model", "IID", "ood_val_groups"),
        "str",
        "",
        "Comma-separated groups of OOD validation.",
        "Model",
    ),
    Flag("noise", ("model", "IID", "use_noise"), "bool", False, "Inject the encoder's noise maps (morph).", "Model"),
    Flag("style", ("model", "IID", "use_style"), "bool", False, "Read the encoder's style codes (stain).", "Model"),
    Flag("loss_coef", ("model", "IID", "loss_coef"), "float", 0.0, "c in (1 - c) CE + c ArcFace.", "Model"),
)
