"""The Lightning Trainer factory: accelerator, device count, precision and strategy (DDP, DeepSpeed) from the
config, and the callbacks and loggers every run gets (checkpoints, early stopping, progress lines, finite-loss
guard, BatchNorm policy, image grids, CSV/TensorBoard/W&B loggers). The run lifecycle (MainEngine) calls
``build_trainer``; nothing here knows a model family.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from Engineering.config import Config
from Engineering.Engines.bn_policy import BNPolicy
from Engineering.Engines.console import quiet
from Engineering.Engines.deepspeed_strategy import build_strategy, is_deepspeed, read_deepspeed_config
from Engineering.Engines.image_grids import ImageGrids
from Engineering.Engines.progress_lines import ProgressLines
from Engineering.Engines.run_guards import FiniteLoss, StopCheckpoint
from Engineering.errors import UserError
from Engineering.io.checkpoints import CHECKPOINT_DIR, AtomicCheckpointIO
from Engineering.io.shards import parse_shard
from Engineering.Science.optimisers import accumulation_steps


def is_rank_zero() -> bool:
    """The process that owns the run folder: rank 0 for Lightning's own launcher (LOCAL_RANK/NODE_RANK), torchrun
    (RANK), SLURM's srun (SLURM_PROCID) and MPI launchers (DeepSpeed's), whichever started this process."""
    names = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
    return all(int(os.environ.get(n, 0) or 0) == 0 for n in names)


def precision(cfg: Config, accelerator: str) -> str:
    amp = str(cfg.run.ampmode)
    if accelerator == "cpu" and amp in ("16", "16-mixed"):
        print(f"notice: --ampmode {amp} is not supported on CPU; using bf16-mixed")
        return "bf16-mixed"
    return amp


def check_strategy(cfg: Config, accelerator: str) -> None:
    """What the configuration alone decides about the strategy, refused before the run folder is touched."""
    name = cfg.run.training_strategy
    if name == "fsdp" and accelerator == "cpu":
        raise UserError(
            "--training_strategy fsdp shards a model over CUDA GPUs and does not run on CPU; use ddp "
            "or deepspeed* (which run on CPU)"
        )
    if is_deepspeed(name) and cfg.run.deepspeed_config:
        read_deepspeed_config(cfg.run.deepspeed_config)


def strategy(cfg: Config, accelerator: str, automatic: bool = True):
    name = cfg.run.training_strategy
    if is_deepspeed(name):
        return build_strategy(cfg, accelerator, automatic)  # (it reads and checks --deepspeed_config itself)
    check_strategy(cfg, accelerator)
    if cfg.run.deepspeed_config:
        raise UserError(f"--deepspeed_config needs --training_strategy deepspeed* (got {name})")
    if name == "ddp" and not automatic:
        # steps of several optimisers each use part of the model (a GAN's D step leaves G out): DDP must look
        # for the unused parameters of every backward pass, or it waits for their gradients forever
        print(
            "notice: this model steps its optimisers by hand; --training_strategy ddp runs as "
            "ddp_find_unused_parameters_true"
        )
        return "ddp_find_unused_parameters_true"
    return "auto" if name == "default" else name


def resolved_accelerator(cfg: Config) -> str:
    acc = cfg.run.accelerator
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"--accelerator {acc}: no CUDA GPU is visible on this machine (use auto or cpu)")
    return acc


def device_count(cfg: Config, accelerator: str) -> int:
    """Devices per node as a number: --ndevices N, or -1 = every device of the accelerator (every GPU; a CPU is
    one device), so that accumulation is computed for the real world size."""
    n = cfg.run.ndevices
    if n > 0:
        return n
    if n != -1:
        raise UserError(f"--ndevices must be a positive count or -1 (all devices), got {n}")
    if accelerator == "gpu":
        found = torch.cuda.device_count()
        if not found:
            raise UserError("--ndevices -1 --accelerator gpu: no CUDA device is visible")
        return found
    return 1


def setup_logging(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("imlatent", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at the end of every epoch. Lightning 2.6 writes ``save_last`` only when a best-k checkpoint
    is written at the same step, so with a monitor ``last.ckpt`` would stay at the best epoch: ``--resume`` would
    repeat the epochs after it and ``--generator RUN`` / ``--encoder RUN`` would read older weights."""

    def __init__(self, dirpath: Path):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)


def build_trainer(
    cfg: Config,
    run_dir: Path,
    monitor: str,
    has_val: bool,
    automatic: bool = True,
    inference_mode: bool = True,
    testing: list | None = None,
) -> L.Trainer:
    """The run's Trainer; ``testing``: the loggers of a DeepSpeed run's training Trainer, for the Trainer of its
    test phase (DDP over the same processes, logging to the same files)."""
    r, t = cfg.run, cfg.training
    quiet()  # the third-party tips and warnings the project silences (Engines/console.py)
    acc = resolved_accelerator(cfg)
    devices = device_count(cfg, acc)
    world = devices * max(1, r.nnodes)
    # Manual optimisation (multi-optimiser models) accumulates and clips in the engine itself.
    accumulate = accumulation_steps(t, world) if automatic else 1
    clip = (t.grad_clip_val or None) if automatic else None
    # the best checkpoint first (trainer.checkpoint_callback), then last.ckpt, which records the best one's state
    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / CHECKPOINT_DIR,
            filename="best-{epoch:03d}-{step}",
            monitor=monitor,
            mode="min",
            save_top_k=1,
        ),
        LastCheckpoint(run_dir / CHECKPOINT_DIR),
    ]
    callbacks += [FiniteLoss(), StopCheckpoint(run_dir / CHECKPOINT_DIR)]  # never silently wrong or stopped
    if t.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, patience=t.early_stopping_patience, mode="min"))
    loggers = []
    if testing is not None:
        loggers = list(testing)
    elif r.tbactive:
        loggers.append(TensorBoardLogger(save_dir=cfg.paths.tblog_path or str(run_dir), name="tensorboard", version=""))
        if r.tb_image_every:  # inputs beside reconstructions or samples (the task honours it: config/honour.py)
            callbacks.append(ImageGrids(r.tb_image_every))
    if testing is None:
        shard = parse_shard(r.shard)  # parallel shards of one test log apart
        # a test-only run logs apart too: Lightning's CSVLogger empties the folder it writes (the training's log)
        test_only = (
            ("_test" + (f"_{r.output_suffix}" if r.output_suffix else "")) if r.run_mode == 2 and not shard else ""
        )
        loggers.append(
            CSVLogger(
                save_dir=str(run_dir),
                version="",
                name="csv_logs" + test_only + (f"_shard{shard[0]}of{shard[1]}" if shard else ""),
            )
        )
    if r.wnbactive and testing is None:
        try:
            import wandb  # noqa: F401
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            raise UserError("--wnbactive needs the wandb package (pip install wandb)") from None
        loggers.append(WandbLogger(project=r.wnbproject, name=run_dir.name, save_dir=str(run_dir)))
    if t.lr_decay_type:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if r.progress_bar:  # a bar on a terminal; plain timed lines in a log file (SLURM, nohup), where a bar is noise
        callbacks.append(RichProgressBar(leave=True) if sys.stderr.isatty() else ProgressLines())
    groups, bn_mode = bool(cfg.data.batch_groups), cfg.eval.bn_eval_mode
    if bn_mode != "running":
        callbacks.append(BNPolicy(bn_mode, controls=bool(cfg.eval.bn_controls)))
    limit_val = t.n_val_batches if isinstance(t.n_val_batches, int) else 1.0  # fractions: a fixed subset (datamodule)
    return L.Trainer(
        accelerator=acc,
        devices=devices,
        num_nodes=r.nnodes,
        strategy=("ddp" if world > 1 else "auto") if testing is not None else strategy(cfg, acc, automatic),
        # group-pure batches: the group samplers split the work across ranks themselves
        use_distributed_sampler=not groups,
        sync_batchnorm=r.sync_batchnorm,
        precision=precision(cfg, acc),
        max_epochs=t.num_epochs,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        gradient_clip_algorithm=t.grad_clip_algo if clip else None,
        inference_mode=inference_mode,
        limit_train_batches=t.n_train_batches,
        limit_val_batches=limit_val if has_val else 0,
        num_sanity_val_steps=1 if has_val else 0,
        callbacks=callbacks,
        logger=loggers,
        deterministic=False if r.non_deter else "warn",
        benchmark=bool(r.non_deter),
        profiler=r.profiler or None,
        fast_dev_run=r.dev_run or False,
        detect_anomaly=r.check_anomalies,
        default_root_dir=str(run_dir),
        log_every_n_steps=5,
        enable_progress_bar=r.progress_bar,
        # checkpoints written atomically (DeepSpeed writes its own checkpoint folders)
        plugins=None if is_deepspeed(r.training_strategy) and testing is None else [AtomicCheckpointIO()],
    )


def fit_kwargs(trainer: L.Trainer) -> dict:
    # Our own checkpoints hold only tensors and plain data: load them without unpickling objects.
    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
