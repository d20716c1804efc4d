"""Every executor flag, where it lives in the resolved config, its type and default.

A flag is a shortcut for one config path: ``--batch_size 8`` sets
``training§batch_size``. The YAML may set the same path; explicit flags win.
Types: int, float, str, bool, num (a fraction in (0, 1] or a count), ints (a
list of ints such as ``16,64,64``), optstr (a string or null), optfloat (a number or null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Flag:
    name: str
    path: tuple[str, ...]
    type: str
    default: Any
    help: str
    group: str
    choices: tuple | None = None
    bounds: tuple[tuple[str, float], ...] = ()  # pydantic constraints, e.g. (("gt", 0),): lr > 0
    aliases: tuple[str, ...] = ()  # older names still accepted (not listed in the help)


def _f(group, name, section, type_, default, help_, choices=None, key=None, **bounds):
    return Flag(name, (section, key or name), type_, default, help_, group, choices, tuple(bounds.items()))


POSITIVE, NON_NEGATIVE = {"gt": 0}, {"ge": 0}


STRATEGIES = (
    "default",
    "ddp",
    "ddp_spawn",
    "fsdp",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
)
NORM_TYPES = ("none", "minmax", "divbymax", "minmaxvol", "divbymaxvol", "zscore")
PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true", "16", "bf16")
COMPLEX_MODES = ("magnitude", "real", "imaginary", "phase", "magphase", "realimag", "complex")

FLAGS: tuple[Flag, ...] = (
    # --- Run identity and mode
    _f("Run", "trainID", "run", "str", "demo", "Name of this training run (part of run_name)."),
    _f("Run", "fulltrainID", "run", "optstr", None, "Use this exact run folder name instead of the composed run_name."),
    _f("Run", "foldID", "run", "int", 0, "Row of the fold CSV to use.", **NON_NEGATIVE),
    _f(
        "Run",
        "run_mode",
        "run",
        "int",
        4,
        "0 train (train+val merged), 1 train+val, 2 test, 3 train (merged) then test, "
        "4 train+val then test with the best checkpoint.",
        choices=(0, 1, 2, 3, 4),
    ),
    _f(
        "Run",
        "output_suffix",
        "run",
        "str",
        "",
        "Outputs go to Output_<suffix>/ (e.g. an interim or whole-cohort inference).",
    ),
    _f(
        "Run",
        "shard",
        "run",
        "str",
        "",
        "With --run_mode 2: i/n tests every n-th patient (sorted IDs) from the "
        "i-th into Output[_suffix]_shard<i>of<n>/; Executors/merge_shards.py RUN merges the n shards.",
    ),
    _f("Run", "seed", "training", "int", 1701, "Global seed (Python, NumPy, torch, data order).", ge=0, le=2**32 - 1),
    _f("Run", "non_deter", "run", "bool", False, "Allow non-deterministic algorithms (faster on GPU)."),
    _f("Run", "dev_run", "run", "int", 0, "Lightning fast_dev_run with N batches (0 = off).", **NON_NEGATIVE),
    # --- Checkpoints and weights
    _f(
        "Weights",
        "resume",
        "run",
        "bool",
        False,
        "Continue from the run folder's last.ckpt (weights, EMA, optimiser, scheduler, step, RNG).",
    ),
    _f(
        "Weights",
        "load_best",
        "run",
        "bool",
        False,
        "With --resume: take the best checkpoint by the monitored metric (for testing).",
    ),
    _f(
        "Weights", "load_model_4test", "run", "optstr", None, "A checkpoint file or run folder to test, from elsewhere."
    ),
    _f(
        "Weights",
        "preweights_path",
        "run",
        "optstr",
        None,
        "Initialise the model's weights from this checkpoint / safetensors file.",
    ),
    _f(
        "Weights",
        "load_hf",
        "run",
        "optstr",
        None,
        "Hugging Face repo ORG/NAME[@revision] or a local directory with published weights.",
    ),
    _f(
        "Weights",
        "hf_weights",
        "run",
        "str",
        "ema",
        "Which published weights to load: ema or net.",
        choices=("ema", "net"),
    ),
    # --- Hardware, precision, distribution
    _f("Hardware", "accelerator", "run", "str", "auto", "auto, cpu, gpu, ... (auto: GPU when present)."),
    _f("Hardware", "ndevices", "run", "int", 1, "Devices per node.", ge=-1),  # -1: every device
    _f("Hardware", "nnodes", "run", "int", 1, "Number of nodes.", **POSITIVE),
    _f(
        "Hardware",
        "training_strategy",
        "run",
        "str",
        "default",
        "Distribution strategy (deepspeed*: ZeRO stage 1/2/3, on CUDA or CPU; one optimiser only).",
        choices=STRATEGIES,
    ),
    _f(
        "Hardware",
        "deepspeed_config",
        "run",
        "optstr",
        None,
        "A full DeepSpeed JSON config for --training_strategy "
        "deepspeed* (replaces the stage's defaults; Lightning still sets clipping and accumulation).",
    ),
    _f("Hardware", "sync_batchnorm", "run", "bool", False, "Synchronise BatchNorm statistics across processes."),
    _f(
        "Hardware",
        "ampmode",
        "run",
        "str",
        "32",
        "Precision (16-mixed becomes bf16-mixed on CPU). bf16-mixed = bfloat16 autocast: weights, optimiser state "
        "and EMA stay float32; on an AVX512-BF16 CPU it trains the published 3D DiffAE 2.1x faster than 32 (smaller "
        "shapes 1.2-1.4x) on the fp32 loss trajectory (docs/results/speed.md).",
        choices=PRECISIONS,
    ),
    _f(
        "Hardware",
        "matmul_precision",
        "run",
        "str",
        "highest",
        "torch.set_float32_matmul_precision: highest, high, medium.",
        choices=("highest", "high", "medium"),
    ),
    _f("Hardware", "num_workers", "run", "int", 0, "DataLoader worker processes.", **NON_NEGATIVE),
    _f("Hardware", "prefetch_factor", "run", "int", 2, "Batches prefetched per worker.", **POSITIVE),
    _f("Hardware", "pin_memory", "run", "bool", False, "Pin host memory for faster GPU transfer."),
    _f("Hardware", "compile_model", "run", "bool", False, "torch.compile the network."),
    # --- Training
    _f("Training", "batch_size", "training", "int", 4, "Samples per batch per device.", **POSITIVE),
    _f(
        "Training",
        "activation_checkpointing",
        "training",
        "bool",
        False,
        "Recompute each DiffAE UNet/encoder block's activations in the backward pass instead of keeping them "
        "(less memory, about a third more compute; what makes large 3D inputs fit).",
    ),
    _f(
        "Training",
        "effective_batch_size",
        "training",
        "int",
        0,
        "Samples per optimiser step; > batch_size accumulates gradients (0 = batch_size).",
        **NON_NEGATIVE,
    ),
    _f("Training", "num_epochs", "training", "int", 2, "Maximum epochs.", **POSITIVE),
    _f(
        "Training",
        "n_train_batches",
        "training",
        "num",
        1.0,
        "Training batches per epoch: a fraction (1.0 = all) or a count (the integer 1 is ONE batch, as in "
        "Lightning; the ancestor read 1 as all).",
        **POSITIVE,
    ),
    _f(
        "Training",
        "n_val_batches",
        "training",
        "num",
        1.0,
        "Validation batches: a fraction (fixed seeded subset) or a count.",
        **NON_NEGATIVE,
    ),
    _f("Training", "lr", "training", "float", 1e-4, "Learning rate.", **POSITIVE),
    _f("Training", "optimiserID", "training", "str", "Adam", "Adam, AdamW, RAdam or any torch.optim class name."),
    _f(
        "Training",
        "lr_decay_type",
        "training",
        "int",
        0,
        "0 none, 1 StepLR, 2 ReduceLROnPlateau, 3 cosine with linear warm-up (parameters in training§LRDecay).",
        choices=(0, 1, 2, 3),
    ),
    _f(
        "Training",
        "early_stopping_patience",
        "training",
        "int",
        0,
        "Epochs without val improvement before stopping (0 = off).",
        **NON_NEGATIVE,
    ),
    _f(
        "Training",
        "grad_clip_algo",
        "training",
        "str",
        "norm",
        "Gradient clipping: norm or value.",
        choices=("norm", "value"),
    ),
    _f("Training", "grad_clip_val", "training", "float", 0.0, "Gradient clipping threshold (0 = off).", **NON_NEGATIVE),
    _f(
        "Training",
        "auto_bs",
        "training",
        "bool",
        False,
        "Find the largest batch size that fits (Lightning Tuner), once.",
    ),
    _f("Training", "auto_lr", "training", "bool", False, "Find a learning rate (Lightning Tuner), once."),
    # --- Model
    _f("Model", "is3D", "model", "bool", False, "3D model (C x S x X x Y samples) instead of 2D (C x X x Y)."),
    _f("Model", "input_shape", "model", "ints", [64, 64], "Spatial input size: X,Y for 2D, S,X,Y for 3D.", **POSITIVE),
    _f("Model", "latent_dim", "model", "int", 64, "Size of the latent representation.", **POSITIVE),
    # --- Data
    _f("Data", "norm_type", "data", "str", "minmax", "Intensity normalisation.", choices=NORM_TYPES),
    _f(
        "Data",
        "norm_range",
        "data",
        "str",
        "unit",
        "Range of the min-max family (minmax, minmaxvol, divbymax*): unit [0, 1] or symmetric [-1, 1] "
        "(2y - 1, what DiffAE's noise schedule assumes).",
        choices=("unit", "symmetric"),
    ),
    _f(
        "Data",
        "prenorm",
        "data",
        "str",
        "none",
        "zscore only: normalisation before the z-score: none, a number (e.g. 255) or a norm_type.",
    ),
    _f(
        "Data",
        "zscore_prenorm",
        "data",
        "str",
        "none",
        "The ancestor's name of --prenorm (same setting).",
        key="prenorm",
    ),
    _f(
        "Data",
        "zscore_mean",
        "data",
        "optfloat",
        None,
        "zscore: fixed mean subtracted after the prenorm (the ancestor's; null = each sample's own mean).",
    ),
    _f(
        "Data",
        "zscore_std",
        "data",
        "optfloat",
        None,
        "zscore: fixed std divided by after the prenorm (the ancestor's; null = each sample's own std).",
        **POSITIVE,
    ),
    _f(
        "Data",
        "allow_pad",
        "data",
        "bool",
        False,
        "Allow crop-or-pad to pad more than half of an axis (refused by default: latents of mostly padding).",
    ),
    _f("Data", "croppad", "data", "bool", True, "Centre crop or zero-pad every sample to input_shape."),
    _f(
        "Data",
        "interp_fact",
        "data",
        "float",
        1.0,
        "In-plane resampling factor applied before crop/pad (1 = none).",
        **POSITIVE,
    ),
    _f("Data", "grey2RGB", "data", "bool", False, "Repeat a single channel three times."),
    _f(
        "Data",
        "complex_mode",
        "data",
        "str",
        "magnitude",
        "How complex data becomes real channels; complex keeps it complex (complex64, for the complex models).",
        choices=COMPLEX_MODES,
    ),
    _f(
        "Data",
        "data_mask_mode",
        "data",
        "int",
        0,
        "meta_mask.h5: 0 ignore, 1 multiply, 2 pass to masked losses.",
        choices=(0, 1, 2),
    ),
    _f(
        "Data",
        "batch_groups",
        "data",
        "str",
        "",
        "Group-pure batches (Batch Effects Normalization): covariate column(s) of json§DS_covariates whose values "
        "form the groups (plate, experiment,plate, site); every training batch comes from one group, evaluation "
        "runs group by group ('' = ordinary shuffled batches).",
    ),
    _f(
        "Data",
        "flip_prob",
        "data",
        "float",
        0.0,
        "Training-only random flip probability per axis (0 = off).",
        ge=0,
        le=1,
    ),
    # --- Test outputs
    _f(
        "Test",
        "bn_eval_mode",
        "eval",
        "str",
        "running",
        "BatchNorm statistics at validation/test: running (the learnt buffers), batch (each batch's own), group "
        "(each --batch_groups group's, over all its batches); the buffers are never changed at evaluation.",
        choices=("running", "batch", "group"),
    ),
    _f(
        "Test",
        "bn_controls",
        "eval",
        "str",
        "",
        "Experimental, with --bn_eval_mode batch|group: BatchNorm statistics from control samples only, "
        "COL=VALUE of json§DS_covariates (e.g. treatment=DMSO); a batch or group without controls is an error.",
    ),
    _f("Test", "test_ema", "eval", "bool", True, "Validate and test with the EMA weights."),
    _f(
        "Test", "test_emb_only", "eval", "bool", False, "Only write latents (skip inversion, rendering, recon metrics)."
    ),
    _f(
        "Test",
        "n_save_recon_subs",
        "eval",
        "num",
        2,
        "Subjects whose reconstructions go to recon.h5: a count or a fraction.",
        **NON_NEGATIVE,
    ),
    _f(
        "Test",
        "save_recon_subs",
        "eval",
        "str",
        "",
        "Comma-separated patient IDs whose reconstructions go to recon.h5.",
    ),
    # --- Logging and control
    _f("Logging", "tbactive", "run", "bool", True, "TensorBoard logging."),
    _f(
        "Logging",
        "tb_image_every",
        "run",
        "int",
        1,
        "TensorBoard image grids every N epochs (0 = off): validation inputs and their reconstructions, or a "
        "generator's samples (3D: the middle slice).",
        **NON_NEGATIVE,
    ),
    _f("Logging", "wnbactive", "run", "bool", False, "Weights & Biases logging (needs wandb installed)."),
    _f("Logging", "wnbproject", "run", "str", "imlatent", "Weights & Biases project."),
    _f("Logging", "profiler", "run", "str", "", "Lightning profiler: simple, advanced, pytorch ('' = off)."),
    _f("Logging", "check_anomalies", "run", "bool", False, "torch.autograd anomaly detection."),
    _f("Logging", "progress_bar", "run", "bool", True, "Rich progress bar."),
)

# Control flags: how the config is built, not part of it.
CONTROL = (
    Flag("configyml_path", (), "str", "", "YAML config (model/training/eval/data sections).", "Config files"),
    Flag("datajson_path", (), "str", "", "dataNpath JSON (paths and DS_* dataset selection).", "Config files"),
    Flag("print_config", (), "bool", False, "Print the fully merged, resolved config (YAML) and exit.", "Config files"),
    Flag("strict_overrides", (), "bool", False, "A path override that creates a new key is an error.", "Config files"),
    Flag("debug", (), "bool", False, "Show full tracebacks on errors.", "Config files"),
)

BY_NAME = {f.name: f for f in FLAGS + CONTROL}  # the flags every task has
