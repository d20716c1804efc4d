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
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from Engineering.config.loader import Task, dump_yaml, resolve
from Engineering.data.latent_datamodule import LatentDataModule
from Engineering.data.latent_tables import LatentSet, prepare
from Engineering.Engines.AuxiliaryEngines.LatentPredictorEngine import LatentPredictorEngine, head_names
from Engineering.Engines.saved_runs import load_run, whole_file_data
from Engineering.Engines.MainEngine import (MERGED_MODES, begin, TEST_MODES, TRAIN_MODES, fit_kwargs, test_checkpoint,
                                            build_trainer, is_rank_zero, resume_checkpoint, run_name, setup_logging)
from Engineering.errors import UserError
from Engineering.Eval import manipulation, reference_models
from Engineering.data.labels import CATEGORICAL
from Engineering.Eval.predictor_metrics import (ALL_METRICS, CLASSIFICATION_METRICS, REGRESSION_METRICS,
                                                classification_scores, regression_scores)
from Engineering.io.atomic import remove_stale, write_text
from Engineering.io.checkpoints import CHECKPOINT_DIR, load_weights
from Engineering.io.runlock import RunLock
from Engineering.io.outputs import write_table

PARENT_SUBDIR = "ClassifyLatent"


def run_dir_of(cfg, task: Task) -> Path:
    root = Path(cfg.paths.save_path).expanduser()
    if cfg.run.parent_trainID:
        root = root / cfg.run.parent_trainID / PARENT_SUBDIR
    return root / run_name(cfg, task)


def run(argv: Sequence[str], task: Task) -> dict:
    resolved = resolve(argv, task)
    if not begin(resolved):
        return {}
    cfg = resolved.cfg
    mode = cfg.run.run_mode

    data = prepare(cfg, merge_train_val=mode in MERGED_MODES)  # every input check before anything is written
    run_dir = run_dir_of(cfg, task)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    out_dir = run_dir / ("Output" + (f"_{cfg.run.output_suffix}" if cfg.run.output_suffix else ""))
    test_ckpt = test_checkpoint(cfg, ckpt_dir) if mode == 2 else None
    if mode == 2 and test_ckpt is None and not cfg.run.preweights_path:
        raise UserError("--run_mode 2 (test) needs trained heads: --resume [--load_best] for this run's checkpoints, "
                        "--load_model_4test PATH or --preweights_path PATH")
    resume_from = resume_checkpoint(ckpt_dir) if cfg.run.resume and mode != 2 else None
    if cfg.eval.manipulate:
        check_manipulation(cfg, data)  # fail before training, not after

    dm = LatentDataModule(data, cfg.training.batch_size, cfg.training.seed)
    model = LatentPredictorEngine(cfg, data.Z.shape[1], data.targets, data.z_mean, data.z_std)
    model.has_val = mode in (1, 4) and dm.has("val")
    if cfg.run.preweights_path:
        load_weights(model, cfg.run.preweights_path)
    with RunLock(run_dir) if is_rank_zero() else nullcontext():  # one run per run folder
        return _run_locked(cfg, resolved, data, dm, model, run_dir, ckpt_dir, out_dir, test_ckpt, resume_from)


def _run_locked(cfg, resolved, data, dm, model, run_dir, ckpt_dir, out_dir, test_ckpt, resume_from) -> dict:
    mode = cfg.run.run_mode
    if is_rank_zero():
        for folder in (run_dir, ckpt_dir):
            remove_stale(folder)
        setup_logging(run_dir)
        write_text(run_dir / "resolved_config.yaml", dump_yaml(resolved.raw))
    for note in data.notes:
        print(f"note: {note}")

    trainer = build_trainer(cfg, run_dir, model.monitor(), model.has_val)
    result = {"run_dir": str(run_dir)}
    if mode in TRAIN_MODES:
        resume = str(resume_from) if resume_from else None
        with one_thread():
            trainer.fit(model, datamodule=dm, ckpt_path=resume, **fit_kwargs(trainer))
        if mode == 4:
            best = trainer.checkpoint_callback.best_model_path
            test_ckpt = Path(best) if best else None
    if mode not in TEST_MODES or cfg.run.dev_run or not trainer.is_global_zero:
        if trainer.is_global_zero:
            print(f"checkpoints in {ckpt_dir}")
        return result
    if test_ckpt is not None:
        load_weights(model, test_ckpt)
    model.to("cpu").eval()
    with one_thread():
        predictions, metrics, penalties = evaluate(model, data, cfg)
    write_outputs(out_dir, predictions, metrics, penalties, data, test_ckpt)
    result.update(out_dir=str(out_dir), metrics=metrics)
    if cfg.eval.manipulate:
        result["manipulation"] = str(manipulate(cfg, model, data, out_dir))
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

def evaluate(model: LatentPredictorEngine, data: LatentSet, cfg) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Long predictions table, wide metrics table and the references' chosen penalties."""
    heads = model.predict_heads(data.Z)
    train, val = data.rows("train"), data.rows("val")
    alphas = [float(a) for a in getattr(cfg.eval, "reference_alphas", None) or [0.1, 1.0, 10.0]]
    Cs = [float(c) for c in getattr(cfg.eval, "reference_Cs", None) or [0.1, 1.0, 10.0]]
    parts, rows, penalties = [], [], {}
    for j, t in enumerate(data.targets):
        outputs = {name: per[j] for name, per in heads.items()}
        y = data.Y[:, j]
        if t.kind == CATEGORICAL:
            proba, C = reference_models.logistic_probabilities(data.Z, y, len(t.classes), train, val, Cs,
                                                               cfg.training.seed)
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
        rows.append({"target": t.name, "kind": t.kind, "model": model_name, "split": split, "n": int(m.sum()),
                     **scores})
    return rows


def write_outputs(out_dir: Path, predictions: pd.DataFrame, metrics: pd.DataFrame, penalties: dict,
                  data: LatentSet, checkpoint: Path | None) -> None:
    write_table(out_dir / "predictions.tsv", predictions, sep="\t")
    write_table(out_dir / "metrics.csv", metrics)
    nested: dict = {}
    for rec in metrics.to_dict("records"):
        scores = {k: (None if pd.isna(rec[k]) else float(rec[k])) for k in ALL_METRICS}
        scores = {k: v for k, v in scores.items() if v is not None or k in _metric_names(rec["kind"])}
        nested.setdefault(rec["target"], {}).setdefault(rec["model"], {})[rec["split"]] = {"n": rec["n"], **scores}
    doc = {"latents": str(data.source), "checkpoint": str(checkpoint or "final weights"),
           "targets": {t.name: t.to_dict() for t in data.targets},
           "n_samples": {s: int(data.rows(s).sum()) for s in ("train", "val", "test")},
           "reference_penalties": penalties, "notes": data.notes, "metrics": nested}
    write_text(out_dir / "metrics.json", json.dumps(doc, indent=1))


def _metric_names(kind: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if kind == CATEGORICAL else REGRESSION_METRICS


def _summary(metrics: pd.DataFrame) -> str:
    test = metrics[(metrics.split == "test") & (metrics.model == "linear")]
    if test.empty:
        return "no test split"
    parts = [f"{r.target} " + (f"bal. acc. {r.balanced_accuracy:.3g}" if r.kind == CATEGORICAL else f"R² {r.r2:.3g}")
             for r in test.itertuples()]
    return "test, linear head: " + ", ".join(parts)


# --- latent manipulation (DiffAE parents) ------------------------------------------------------------------------

def parent_run_folder(cfg, data: LatentSet) -> Path:
    """The autoencoder behind the latents: --parent_trainID, or the run folder holding the --latents file."""
    if cfg.run.parent_trainID:
        return Path(cfg.paths.save_path).expanduser() / cfg.run.parent_trainID
    folder = data.source.parent
    if folder.name.startswith("Output"):
        folder = folder.parent
    if not (folder / CHECKPOINT_DIR).is_dir():
        raise UserError(f"--manipulate needs the DiffAE run behind the latents: give --parent_trainID "
                        f"(no {CHECKPOINT_DIR}/ next to {data.source})")
    return folder


def check_manipulation(cfg, data: LatentSet) -> None:
    target, _, wanted = cfg.eval.manipulate.partition(":")
    spec = next((t for t in data.targets if t.name == target), None)
    if spec is None:
        raise UserError(f"--manipulate {target!r} is not a target (targets: {', '.join(t.name for t in data.targets)})")
    if wanted and wanted not in spec.classes:
        raise UserError(f"--manipulate {cfg.eval.manipulate}: {wanted!r} is not a class of {target} "
                        f"({', '.join(spec.classes) or 'continuous target'})")
    if "linear" not in head_names(cfg.model.heads):
        raise UserError("--manipulate needs the linear head: add linear to --heads")
    if cfg.eval.n_manipulate_subs < 1:
        raise UserError("--n_manipulate_subs must be >= 1")
    manipulation.parse_scales(cfg.eval.scales)
    parent_run_folder(cfg, data)


def manipulate(cfg, model: LatentPredictorEngine, data: LatentSet, out_dir: Path) -> Path:
    target, _, wanted = cfg.eval.manipulate.partition(":")
    spec = next(t for t in data.targets if t.name == target)  # checked before training
    direction, label = manipulation.unit_direction(model.linear_weights(target), spec.classes, wanted or None)
    scales = manipulation.parse_scales(cfg.eval.scales)
    parent = load_run(parent_run_folder(cfg, data))
    if parent.cfg.model.drive != "DiffAE":
        raise UserError(f"--manipulate renders with a DiffAE; the parent run's model is {parent.cfg.model.drive}")
    if int(parent.cfg.model.latent_dim) != data.Z.shape[1]:
        raise UserError(f"the latents have {data.Z.shape[1]} dimensions but the parent DiffAE has latent_dim "
                        f"{parent.cfg.model.latent_dim}: they are not this model's latents")
    samples = _manipulation_samples(parent.cfg, data, int(cfg.eval.n_manipulate_subs))
    engine = parent.engine
    net = engine.ema_net if parent.use_ema else engine.net
    folder = out_dir / ("manipulation_" + "".join(ch if ch.isalnum() or ch in "-_." else "_"
                                                  for ch in cfg.eval.manipulate))
    attrs = {"target": target, "class": wanted or "", "direction_label": label,
             "parent_checkpoint": str(parent.checkpoint), "T_inv": engine.T_inv, "T_step": engine.T_step,
             "ema": parent.use_ema,
             "units": "original intensity units (the input's normalisation inverted)",
             "scale_units": "standard deviations of the standardised latents (training-split statistics), "
                            "along the unit direction"}
    path = manipulation.manipulate(net, engine.diffusion, engine.T_inv, engine.T_step, samples, direction,
                                   model.z_mean, model.z_std, scales, folder, attrs, clip=engine.clip)
    print(f"manipulation of {cfg.eval.manipulate} ({label}) for {len(samples)} subject(s): {folder}")
    return path


def _manipulation_samples(parent_cfg, data: LatentSet, n_subjects: int) -> list[dict]:
    """One image per test-split subject (the sample of its first latent row when rows are per sample)."""
    rows = data.ids[data.rows("test")]
    if rows.empty:
        raise UserError("--manipulate uses test-split subjects, and the test split has no latents")
    ds = whole_file_data(parent_cfg).dataset("test")
    by_id, first = {}, {}
    for i in range(len(ds)):
        d = ds.describe(i)
        key = (d["patientID"], d["fieldID"], d["instanceID"], d["key"], d["c"] or 0, d["t"] or 0, d["s"] or 0)
        by_id.setdefault(key, i)
        first.setdefault(d["patientID"], i)
    samples = []
    for pid, part in rows.groupby("patientID", sort=True):
        if len(samples) >= n_subjects:
            break
        r = part.iloc[0]
        key = tuple(r[c] for c in ("patientID", "fieldID", "instanceID", "key", "c", "t", "s")) \
            if "key" in part.columns else None
        i = by_id.get(key, first.get(pid))
        if i is None:
            continue
        item = ds.sample(i)
        samples.append({**ds.describe(i), "inp": item["inp"], "affine": item["affine"]})
    if not samples:
        raise UserError("--manipulate: none of the test-split subjects is in the parent run's data file")
    return samples
