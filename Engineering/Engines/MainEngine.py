"""The run lifecycle (the ancestor's entry name): config, run folder and lock, data, engine, the Trainer (from
``trainer_factory``), the run modes, resume and the test phase.

Run modes: 0 train (train+val merged), 1 train+val, 2 test, 3 train (merged)
then test with the final weights, 4 train+val then test with the best
checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch

from Engineering.config import Config
from Engineering.config.loader import dump_yaml, resolve
from Engineering.data.datamodule import H5DataModule
from Engineering.Engines import run_folder
from Engineering.Engines.deepspeed_strategy import is_deepspeed
from Engineering.Engines.output_writer import OutputWriter, done_samples, test_fingerprint
from Engineering.Engines.registry import TaskSpec, drive_errors
from Engineering.Engines.trainer_factory import (
    build_trainer,
    check_strategy,
    fit_kwargs,
    is_rank_zero,
    resolved_accelerator,
    setup_logging,
)
from Engineering.Engines.untrusted import refuse_code
from Engineering.errors import UserError, graceful_stop
from Engineering.io.atomic import remove_stale, write_text
from Engineering.io.checkpoints import (
    CHECKPOINT_DIR,
    checkpoint_in,
    fit_state,
    is_checkpoint,
    load_weights,
    newest_readable,
    read_checkpoint,
)
from Engineering.io.hub import read as read_hub
from Engineering.io.runlock import RunLock
from Engineering.io.shards import parse_shard, shard_folder

log = logging.getLogger("imlatent")
TRAIN_MODES, TEST_MODES, MERGED_MODES = (0, 1, 3, 4), (2, 3, 4), (0, 3)


def run_name(cfg: Config, task: TaskSpec) -> str:
    if cfg.run.fulltrainID:
        return cfg.run.fulltrainID
    tag = cfg.model.tag or task.name
    # + what tells runs on the same data apart: the task's model variant, 2D/3D, the weights' source
    return run_folder.compose(
        cfg, task, f"{cfg.paths.run_prefix}_{cfg.run.trainID}fold{cfg.run.foldID}_prec{cfg.run.ampmode}_{tag}"
    )


def _with_hub(argv: Sequence[str], task: TaskSpec):
    """Resolve the config; with --load_hf, the weights' own config ranks above YAML/JSON, below explicit flags."""
    resolved = resolve(argv, task)
    ref = resolved.cfg.run.load_hf
    if not ref:
        return resolved, None
    hub = read_hub(ref)
    if hub.kind == "published":
        if task.published is None:
            raise UserError(
                f"--load_hf {ref}: a published layout (not our config.json) that task {task.name!r} cannot read"
            )
        with drive_errors():
            hub = task.published(hub, resolved.cfg)
    elif hub.layer["model"]["drive"] != task.drive:
        raise UserError(
            f"--load_hf {ref} holds a {hub.layer['model']['drive']} model; task {task.name!r} "
            f"trains {task.drive} (use its executor)"
        )
    refuse_code(hub.layer, f"--load_hf {ref} (config.json)")
    resolved = resolve(argv, task, layer=hub.layer)
    missing = [n for n in hub.needs if n not in resolved.explicit and f"model§{n}" not in resolved.explicit]
    if missing:
        raise UserError(
            f"the weights of {ref} do not determine {', '.join(missing)}: pass "
            + " ".join(f"--{n}" for n in missing)
            + " (the published cardiac models: --input_shape 50,128,128)"
        )
    if hub.revision:
        resolved.raw["run"]["load_hf_revision"] = hub.revision  # recorded in resolved_config.yaml and emb.h5
    return resolved, hub


def begin(resolved) -> bool:
    """What every run does first: --print_config prints and stops (False); else seeds and matmul precision."""
    if resolved.control["print_config"]:
        print(dump_yaml(resolved.raw), end="")
        return False
    t = resolved.cfg.training
    if resolved.cfg.run.run_mode in TRAIN_MODES and type(t.n_train_batches) is int and t.n_train_batches == 1:
        print(
            "warning: --n_train_batches 1 trains on ONE batch per epoch (Lightning's meaning; the ancestor "
            "read 1 as all batches); pass 1.0 for all"
        )
    L.seed_everything(resolved.cfg.training.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(resolved.cfg.run.matmul_precision)
    return True


class ImageRun:
    """The lifecycle hooks of an image task (the default): H5 data, the task's engine, Trainer.test writes the
    output contract. A task with another kind of data (latentcls) registers its own class with these hooks."""

    weights_hint = "--load_hf REPO or --preweights_path PATH"
    datamodule_class = H5DataModule  # a task whose splits follow other rules (main_iid's held-out groups) swaps it

    def __init__(self, cfg, task: TaskSpec, hub):
        self.cfg, self.task, self.hub = cfg, task, hub

    def run_dir(self) -> Path:
        return Path(self.cfg.paths.save_path).expanduser() / run_name(self.cfg, self.task)

    def has_weights(self) -> bool:
        return bool(self.cfg.run.preweights_path or self.cfg.run.load_hf)

    def build(self, mode: int):
        """(datamodule, engine): every split the run will use exists before anything is trained or written."""
        cfg = self.cfg
        dm = self.datamodule_class(cfg, merge_train_val=mode in MERGED_MODES)
        for split in (
            (("train",) if mode in TRAIN_MODES else ())
            + (("val",) if mode in (1, 4) else ())
            + (("test",) if mode in TEST_MODES else ())
        ):
            dm.dataset(split)
        self.steps = self.task.step_objects()
        for step in self.steps:
            step.check(cfg, dm)  # an extra output's inputs are checked before training, not after
        probe = dm.dataset("test" if mode == 2 else "train")
        with drive_errors():
            model = self.task.engine_class()(cfg, int(probe[0]["inp"].shape[0]))
            model.use_activation_checkpointing(cfg.training.activation_checkpointing)
            model.has_val = mode in (1, 4)
            if self.hub is not None:
                model.load_state_dict(fit_state(model, self.hub.state, f"--load_hf {cfg.run.load_hf}"))
        return dm, model

    def describe(self, dm) -> str:
        """The data pipeline in one line (printed at the start of every run); its warnings are printed here."""
        line, warnings = dm.pipeline(trains=self.cfg.run.run_mode in TRAIN_MODES)
        if is_rank_zero():
            for warning in warnings:
                print(f"warning: {warning}")
        return f"{line} ({dm.h5file}, index cache {'hit' if dm.cache_hit else 'rebuilt'})"

    def fit_context(self):
        return nullcontext()

    def test(self, trainer, model, dm, out_dir: Path, test_ckpt) -> dict:
        cfg, hub = self.cfg, self.hub
        attrs = {
            "model": cfg.model.drive,
            "run_name": out_dir.parent.name,
            "norm_type": cfg.data.norm_type,
            "input_shape": json.dumps(list(cfg.model.input_shape)),
            "is3D": cfg.model.is3D,
            "checkpoint": str(test_ckpt or cfg.run.preweights_path or cfg.run.load_hf or "final weights"),
            "load_hf_revision": (hub.revision or "") if hub else "",
            "ema": bool(cfg.eval.test_ema) and hasattr(model, "ema_net"),
        }
        ds = dm.dataset("test")
        fingerprint = test_fingerprint(
            cfg, test_ckpt or cfg.run.preweights_path or cfg.run.load_hf, ds, attrs["load_hf_revision"]
        )
        # group statistics need every sample of a group: a BN-group test is never resumed part-way
        done = done_samples(out_dir, fingerprint) if cfg.eval.bn_eval_mode != "group" else set()
        if done and trainer.is_global_zero:
            print(f"resuming an interrupted test: {len(done)} of {len(ds)} samples already written")
        dm.test_skip = done
        writer = OutputWriter(out_dir, attrs, cfg.eval.output_chunk, fingerprint)
        if len(done) >= len(ds):  # everything was written before the interruption: only the merge is left
            if trainer.is_global_zero:
                writer.start(ds, cfg.eval)
                writer.finish()
        else:
            trainer.callbacks.append(writer)
            try:
                trainer.test(model, datamodule=dm, verbose=False)
            finally:
                trainer.callbacks.remove(writer)
        result = {"out_dir": str(out_dir), "writer": writer}
        if trainer.is_global_zero:
            summary = writer.summary
            print(
                f"outputs written to {out_dir}"
                + (f" (mean {', '.join(f'{k} {v:.4g}' for k, v in summary.items())})" if summary else "")
            )
            for step in self.steps:  # the task's extra outputs, from the written contract
                result.update(step.run(cfg, model, dm, out_dir))
        return result


def run(argv: Sequence[str], task: TaskSpec) -> dict:
    """One lifecycle for every task: config, folders, run-mode checks, resume, lock, fit, best checkpoint, test."""
    resolved, hub = _with_hub(argv, task)
    if not begin(resolved):
        return {}
    cfg = resolved.cfg
    mode = cfg.run.run_mode
    if cfg.eval.bn_eval_mode == "group" and not cfg.data.batch_groups:
        raise UserError("--bn_eval_mode group normalises with each group's statistics: give --batch_groups COL")
    if cfg.eval.bn_controls and cfg.eval.bn_eval_mode == "running":
        raise UserError(
            "--bn_controls picks the samples whose statistics BatchNorm uses: it needs --bn_eval_mode batch or group"
        )
    if cfg.eval.bn_controls and "=" not in cfg.eval.bn_controls:
        raise UserError(f"--bn_controls {cfg.eval.bn_controls!r}: give COL=VALUE, e.g. treatment=DMSO")
    life = (task.lifecycle_class() or ImageRun)(cfg, task, hub)

    save_path = Path(cfg.paths.save_path).expanduser()
    if save_path.exists() and not save_path.is_dir():
        raise UserError(f"json§save_path {save_path} is a file, not a folder for run folders")
    if save_path.is_symlink() and not save_path.exists():
        raise UserError(
            f"json§save_path {save_path} is a link to {os.readlink(save_path)}, which does not exist "
            "(an unmounted disk?)"
        )
    check_strategy(cfg, resolved_accelerator(cfg))
    run_dir = life.run_dir()
    ckpt_dir = run_dir / CHECKPOINT_DIR
    for folder in (run_dir, ckpt_dir):  # a file (or a dangling link) in the way: refused before anything starts
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise UserError(
                f"{folder} is {'a dangling link' if not folder.exists() else 'a file'} where the run's "
                "folder should be; move it away or choose another --trainID/--fulltrainID"
            )
    if cfg.training.auto_bs or cfg.training.auto_lr:
        read_tuned(run_dir / TUNED)
    out_dir = run_dir / ("Output" + (f"_{cfg.run.output_suffix}" if cfg.run.output_suffix else ""))
    shard = parse_shard(cfg.run.shard)
    if shard is not None:
        if mode != 2:
            raise UserError("--shard splits a test-only inference: use it with --run_mode 2")
        out_dir = shard_folder(out_dir, shard)
    tests = mode in TEST_MODES and not cfg.run.dev_run
    # another configuration's run folder or Output is refused before anything is built
    run_folder.check(
        resolved.raw,
        run_dir,
        out_dir,
        mode,
        tests,
        say=is_rank_zero(),
        resuming=bool(cfg.run.resume) or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0,
    )
    test_ckpt = test_checkpoint(cfg, ckpt_dir) if mode == 2 else None
    if mode == 2 and test_ckpt is None and not life.has_weights():
        raise UserError(
            "--run_mode 2 (test) needs trained weights: --resume [--load_best] for this run's checkpoints, "
            f"--load_model_4test PATH or {life.weights_hint}"
        )
    resume_from = resume_checkpoint(ckpt_dir) if cfg.run.resume and mode != 2 else None
    if resume_from is None and mode != 2:
        resume_from = requeued_checkpoint(run_dir, ckpt_dir)

    dm, model = life.build(mode)
    if cfg.run.preweights_path:
        load_weights(model, cfg.run.preweights_path)
    if cfg.run.compile_model and hasattr(model, "net"):
        model.net.compile()

    # one run per run folder; the shards of one sharded test run in parallel (each writes only its own files)
    with RunLock(run_dir, shard) if is_rank_zero() else nullcontext():
        return _run_locked(life, resolved, dm, model, run_dir, ckpt_dir, out_dir, test_ckpt, resume_from)


def requeued_checkpoint(run_dir: Path, ckpt_dir: Path) -> Path | None:
    """A SLURM job that was preempted and requeued (SLURM_RESTART_COUNT > 0) runs its command again: it resumes
    from the newest of Lightning's preemption checkpoint (hpc_ckpt_N.ckpt, written on the requeue signal) and
    last.ckpt, without --resume in the batch script."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) <= 0:
        return None
    found = [p for p in [*run_dir.glob("hpc_ckpt_*.ckpt"), ckpt_dir / "last.ckpt"] if is_checkpoint(p)]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    read_checkpoint(newest)  # one clear line for a damaged file, before anything starts
    print(f"requeued SLURM job (restart {os.environ['SLURM_RESTART_COUNT']}): resuming from {newest.name}")
    return newest


def resume_checkpoint(ckpt_dir: Path) -> Path:
    """last.ckpt, read with our safe reader first (one line for a damaged or hostile file); a damaged one falls
    back to the newest readable checkpoint of the run, with a warning."""
    last = ckpt_dir / "last.ckpt"
    if not is_checkpoint(last):
        raise UserError(f"--resume: nothing to resume, {last} does not exist")
    try:
        read_checkpoint(last)
        return last
    except UserError as exc:
        other = newest_readable(ckpt_dir, exclude=last)
        if other is None:
            raise
        # kept for inspection, out of the way: Lightning then writes a fresh last.ckpt (not last-v1.ckpt)
        last.replace(last.with_name("last.ckpt.damaged"))
        print(
            f"warning: {exc}; resuming from {other.name}, the newest readable checkpoint "
            f"(the damaged file is kept as last.ckpt.damaged)"
        )
        return other


def _run_locked(
    life, resolved, dm, model, run_dir: Path, ckpt_dir: Path, out_dir: Path, test_ckpt, resume_from
) -> dict:
    cfg = resolved.cfg
    mode = cfg.run.run_mode
    sharded = bool(cfg.run.shard)
    test_record = False  # a test in a folder it did not train: its config beside the run's, named after its Output
    if is_rank_zero():
        # again under the lock: a run of another configuration may have taken the folder in between
        owner = run_folder.check(
            resolved.raw, run_dir, out_dir, mode, mode in TEST_MODES and not cfg.run.dev_run, say=False
        )
        test_record = mode == 2 and not sharded and (not owner or (run_dir / run_folder.CONFIG_NAME).is_file())
        # a shard cleans only its own leftovers: the other shards of the test write beside it right now
        for folder in (run_dir,) if sharded else (run_dir, ckpt_dir):
            for stale in remove_stale(folder, out_dir.name if sharded else ""):
                log.info("removed %s, left by an interrupted earlier run", stale)
        setup_logging(run_dir)
        write_text(
            run_dir / (f"resolved_config_{out_dir.name}.yaml" if sharded or test_record else "resolved_config.yaml"),
            dump_yaml(resolved.raw),
        )
    described = life.describe(dm)  # the data pipeline in one line (and its warnings), before anything trains
    if is_rank_zero():
        print(described)
    log.info("run %s mode %d; %s", run_dir.name, mode, described)

    trainer = build_trainer(
        cfg,
        run_dir,
        model.monitor(),
        model.has_val,
        model.automatic_optimization,
        not getattr(model, "needs_grad_in_eval", False),
    )
    result = {"run_dir": str(run_dir)}
    if mode in TRAIN_MODES:
        _tune(cfg, trainer, model, dm, run_dir)
        resume = str(resume_from) if resume_from else None
        with life.fit_context(), graceful_stop():
            trainer.fit(model, datamodule=dm, ckpt_path=resume, **fit_kwargs(trainer))
        if mode == 4:
            best = trainer.checkpoint_callback.best_model_path
            test_ckpt = Path(best) if best else None
    if mode in TEST_MODES and not cfg.run.dev_run:
        if is_deepspeed(cfg.run.training_strategy):
            # DeepSpeed trains; the test runs without it (no optimiser state to shard, and ZeRO-3's partitioned
            # parameters cannot take a state dict): a fresh engine with the consolidated fp32 weights, on the
            # same processes under DDP
            if test_ckpt is None and mode in TRAIN_MODES:
                test_ckpt = ckpt_dir / "last.ckpt"
            model = type(model)(cfg, model.in_channels)
            model.has_val = mode in (1, 4)  # (the test takes no gradients: no activation checkpointing)
            trainer = build_trainer(
                cfg,
                run_dir,
                model.monitor(),
                model.has_val,
                model.automatic_optimization,
                not getattr(model, "needs_grad_in_eval", False),
                testing=trainer.loggers,
            )
        if test_ckpt is not None:
            model.load_run_state(load_weights(model, test_ckpt))
        with graceful_stop():
            result.update(life.test(trainer, model, dm, out_dir, test_ckpt))
    elif trainer.is_global_zero:
        print(
            f"dev run of {cfg.run.dev_run} batch(es) finished (no checkpoints, no outputs)"
            if cfg.run.dev_run
            else f"checkpoints in {ckpt_dir}"
        )
    return result


def test_checkpoint(cfg: Config, ckpt_dir: Path) -> Path | None:
    if cfg.run.load_model_4test:
        return checkpoint_in(cfg.run.load_model_4test, "best" if cfg.run.load_best else "last")
    if cfg.run.resume:
        return checkpoint_in(ckpt_dir, "best" if cfg.run.load_best else "last")
    return None


TUNED = "tuned.json"


def read_tuned(record: Path) -> dict:
    """The Tuner's recorded result ({} when absent); a damaged record is one line naming it (read before training
    starts too), not a traceback after the model was built."""
    if not record.is_file():
        return {}
    try:
        tuned = json.loads(record.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        tuned = exc
    ok = isinstance(tuned, dict) and all(
        (k == "batch_size" and type(v) is int and v > 0)
        or (k == "lr" and type(v) in (int, float) and math.isfinite(v) and v > 0)
        for k, v in tuned.items()
    )
    if not ok:
        raise UserError(
            f'{record} is not a Tuner record ({{"batch_size": N, "lr": X}}, both positive): delete it to tune again'
        )
    return tuned


def _tune(cfg: Config, trainer, model, dm, run_dir: Path) -> None:
    """--auto_bs/--auto_lr: run the Lightning Tuner once per run folder; later runs reuse its result."""
    t = cfg.training
    if not (t.auto_bs or t.auto_lr):
        return
    from lightning.pytorch.tuner import Tuner

    record = run_dir / TUNED
    tuned = read_tuned(record)
    if t.auto_bs and "batch_size" not in tuned:
        tuned["batch_size"] = Tuner(trainer).scale_batch_size(model, datamodule=dm, mode="binsearch")
    if t.auto_lr and "lr" not in tuned:
        finder = Tuner(trainer).lr_find(model, datamodule=dm)
        tuned["lr"] = float(finder.suggestion()) if finder and finder.suggestion() else t.lr
    if "batch_size" in tuned:
        dm.batch_size = t.batch_size = int(tuned["batch_size"])
    if "lr" in tuned:
        model.lr = t.lr = float(tuned["lr"])
    if is_rank_zero():
        write_text(record, json.dumps(tuned))
    print(f"tuned: {tuned} (recorded in {record})", file=sys.stderr)
