"""main_latentcls: train latent predictors with the Lightning engine, score them, manipulate DiffAE latents.

Run folder, as the ancestor's: ``<save_path>/<parent_trainID>/ClassifyLatent/<run_name>``
with ``--parent_trainID``, else ``<save_path>/<run_name>``. Run modes as the
other executors (0 train merged, 1 train+val, 2 test, 3 merged then test, 4
train+val then test with the best checkpoint); "test" here means: predict every
sample, write the predictions and metrics (with scikit-learn references fitted
on the same rows), and ``--manipulate`` if asked.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from Engineering.config import Config
from Engineering.data.labels import CATEGORICAL
from Engineering.data.latent_datamodule import LatentDataModule
from Engineering.data.latent_tables import LatentSet, prepare
from Engineering.Engines.MainEngine import MERGED_MODES, ImageRun, run_name
from Engineering.Eval import reference_models
from Engineering.Eval.predictor_metrics import (
    ALL_METRICS,
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    classification_scores,
    regression_scores,
)
from Engineering.io.atomic import write_text
from Engineering.io.outputs import write_table

from .engine import LatentPredictorEngine

PARENT_SUBDIR = "ClassifyLatent"


class PredictorRun(ImageRun):
    """The latent predictors' hooks into the one run lifecycle: latents + phenotypes instead of images; "test"
    predicts every sample on rank 0 and writes predictions and metrics (with scikit-learn references fitted
    on the same rows); then the task's extra output steps (``--manipulate``)."""

    weights_hint = "--preweights_path PATH"

    def run_dir(self) -> Path:
        root = Path(self.cfg.paths.save_path).expanduser()
        if self.cfg.run.parent_trainID:
            root = root / self.cfg.run.parent_trainID / PARENT_SUBDIR
        return root / run_name(self.cfg, self.task)

    def has_weights(self) -> bool:
        return bool(self.cfg.run.preweights_path)

    def build(self, mode: int):
        cfg = self.cfg
        self.data = data = prepare(cfg, merge_train_val=mode in MERGED_MODES)  # every input check first
        self.steps = self.task.step_objects()
        for step in self.steps:
            step.check(cfg, data)  # fail before training, not after
        dm = LatentDataModule(data, cfg.training.batch_size, cfg.training.seed)
        model = self.task.engine_class()(cfg, data.Z.shape[1], data.targets, data.z_mean, data.z_std)
        model.use_activation_checkpointing(cfg.training.activation_checkpointing)
        model.has_val = mode in (1, 4) and dm.has("val")
        return dm, model

    def describe(self, dm) -> str:
        for note in self.data.notes:
            print(f"note: {note}")
        return f"data: {len(self.data.Z)} latent vectors of {self.data.Z.shape[1]} from {self.data.source}"

    def fit_context(self):
        return one_thread()

    def test(self, trainer, model, dm, out_dir: Path, test_ckpt) -> dict:
        if not trainer.is_global_zero:
            return {}
        cfg, data = self.cfg, self.data
        model.to("cpu").eval()
        with one_thread():
            predictions, metrics, penalties = evaluate(model, data, cfg)
        write_outputs(out_dir, predictions, metrics, penalties, data, test_ckpt)
        result = {"out_dir": str(out_dir), "metrics": metrics}
        for step in self.steps:
            result.update(step.run(cfg, model, data, out_dir))
        print(f"outputs written to {out_dir} ({_summary(metrics)})")
        return result


@contextmanager
def one_thread():
    """One CPU thread for the heads and the scikit-learn references: on ops this small, waking a thread pool costs
    more than it gains (4x slower with 2 threads on a busy 2-core machine); restored afterwards for rendering."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


# --- predictions and scores -------------------------------------------------------------------------------------


def evaluate(model: LatentPredictorEngine, data: LatentSet, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Long predictions table, wide metrics table and the references' chosen penalties."""
    heads = model.predict_heads(data.Z)
    train, val = data.rows("train"), data.rows("val")
    alphas, Cs = cfg.eval.reference_alphas, cfg.eval.reference_Cs
    parts, rows, penalties = [], [], {}
    for j, t in enumerate(data.targets):
        outputs = {name: per[j] for name, per in heads.items()}
        y = data.Y[:, j]
        if t.kind == CATEGORICAL:
            proba, C = reference_models.logistic_probabilities(
                data.Z, y, len(t.classes), train, val, Cs, cfg.training.seed
            )
            outputs[reference_models.LOGISTIC] = proba
            penalties[t.name] = {"model": reference_models.LOGISTIC, "C": C}
        else:
            pred, alpha = reference_models.ridge_predictions(data.Z, y, train, val, alphas)
            outputs[reference_models.RIDGE] = pred
            penalties[t.name] = {"model": reference_models.RIDGE, "alpha": alpha}
        for model_name, out in outputs.items():
            parts.append(_prediction_rows(data, j, model_name, out))
            rows += _metric_rows(data, j, model_name, out)
    metrics = pd.DataFrame(rows, columns=["target", "kind", "model", "split", "n", *ALL_METRICS])
    return pd.concat(parts, ignore_index=True), metrics, penalties


def _prediction_rows(data: LatentSet, j: int, model_name: str, out: np.ndarray) -> pd.DataFrame:
    t = data.targets[j]
    df = data.ids.copy()
    df.insert(len(df.columns) - 1, "target", t.name)  # before 'split'
    df["model"] = model_name
    df["true"] = data.truth[t.name].to_numpy()
    if t.kind == CATEGORICAL:
        df["prediction"] = np.asarray(t.classes, dtype=object)[np.argmax(out, axis=1)]
        df["probability"] = np.max(out, axis=1)
    else:
        df["prediction"] = out * t.std + t.mean  # original units
        df["probability"] = np.nan
    return df


def _metric_rows(data: LatentSet, j: int, model_name: str, out: np.ndarray) -> list[dict]:
    t = data.targets[j]
    have = np.isfinite(data.Y[:, j])
    rows = []
    for split in ("train", "val", "test"):
        m = data.rows(split) & have
        if not m.any():
            continue
        if t.kind == CATEGORICAL:
            scores = classification_scores(data.Y[m, j].astype(int), out[m])
        else:
            scores = regression_scores(data.Y[m, j] * t.std + t.mean, out[m] * t.std + t.mean)
        rows.append(
            {"target": t.name, "kind": t.kind, "model": model_name, "split": split, "n": int(m.sum()), **scores}
        )
    return rows


def write_outputs(
    out_dir: Path,
    predictions: pd.DataFrame,
    metrics: pd.DataFrame,
    penalties: dict,
    data: LatentSet,
    checkpoint: Path | None,
) -> None:
    write_table(out_dir / "predictions.tsv", predictions, sep="\t")
    write_table(out_dir / "metrics.csv", metrics)
    nested: dict = {}
    for rec in metrics.to_dict("records"):
        scores = {k: (None if pd.isna(rec[k]) else float(rec[k])) for k in ALL_METRICS}
        scores = {k: v for k, v in scores.items() if v is not None or k in _metric_names(rec["kind"])}
        nested.setdefault(rec["target"], {}).setdefault(rec["model"], {})[rec["split"]] = {"n": rec["n"], **scores}
    doc = {
        "latents": str(data.source),
        "checkpoint": str(checkpoint or "final weights"),
        "targets": {t.name: t.to_dict() for t in data.targets},
        "n_samples": {s: int(data.rows(s).sum()) for s in ("train", "val", "test")},
        "reference_penalties": penalties,
        "notes": data.notes,
        "metrics": nested,
    }
    write_text(out_dir / "metrics.json", json.dumps(doc, indent=1))


def _metric_names(kind: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if kind == CATEGORICAL else REGRESSION_METRICS


def _summary(metrics: pd.DataFrame) -> str:
    test = metrics[(metrics.split == "test") & (metrics.model == "linear")]
    if test.empty:
        return "no test split"
    parts = [
        f"{r.target} " + (f"bal. acc. {r.balanced_accuracy:.3g}" if r.kind == CATEGORICAL else f"R² {r.r2:.3g}")
        for r in test.itertuples()
    ]
    return "test, linear head: " + ", ".join(parts)
