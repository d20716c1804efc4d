"""Which common flags and keys a task honours, and the one start-up check that refuses the rest.

Every task declares (in its registration, ``TaskSpec.honours``) the common flags of ``flags.FLAGS`` and the common
keys below that change what it runs. A flag or path override that the user gives explicitly and the running task
does not honour is one ``error:`` line naming it and the task, before anything is built or trained. Some flags
act only together with another setting; :data:`CONDITIONS` refuses them where the configuration alone says they
would do nothing. The only warnings are the documented no-ops of the ancestor (docs/reference/configuration.md,
"Flags that have no effect"): its flags at the value that is what runs here (``--lossID 0`` on main_diffAE,
``--modelID 0``, ...), its README's ``training§LRDecay§type1§...`` set while no StepLR is chosen, and the keys of
its YAML that change nothing here.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any

from Engineering.config.flags import FLAGS
from Engineering.config.validated import Config
from Engineering.errors import UserError

# --- groups of common flags (names) and keys ('section§key') that tasks declare ------------------------------
# what MainEngine's lifecycle and its Trainer read for every task: run folder, run mode, checkpoints, hardware,
# the epoch loop, logging
LIFECYCLE = frozenset(
    {
        "trainID",
        "fulltrainID",
        "foldID",
        "run_mode",
        "output_suffix",
        "seed",
        "non_deter",
        "dev_run",
        "resume",
        "load_best",
        "load_model_4test",
        "preweights_path",
        "accelerator",
        "ndevices",
        "nnodes",
        "training_strategy",
        "deepspeed_config",
        "sync_batchnorm",
        "ampmode",
        "matmul_precision",
        "compile_model",
        "batch_size",
        "num_epochs",
        "n_train_batches",
        "n_val_batches",
        "lr",
        "early_stopping_patience",
        "auto_bs",
        "auto_lr",
        "tbactive",
        "wnbactive",
        "wnbproject",
        "profiler",
        "check_anomalies",
        "progress_bar",
        "model§tag",
    }
)
LOADERS = frozenset({"num_workers", "prefetch_factor", "pin_memory"})  # the H5 DataModule's loaders
OPTIMISER = frozenset({"optimiserID", "lr_decay_type", "training§LRDecay"})
ACCUMULATION = frozenset({"effective_batch_size"})
CLIPPING = frozenset({"grad_clip_algo", "grad_clip_val"})
# the H5 image sample pipeline (data/dataset.py)
IMAGES = frozenset(
    {
        "is3D",
        "input_shape",
        "norm_type",
        "norm_range",
        "prenorm",
        "zscore_prenorm",
        "zscore_mean",
        "zscore_std",
        "allow_pad",
        "croppad",
        "interp_fact",
        "grey2RGB",
        "complex_mode",
        "data_mask_mode",
        "flip_prob",
        "data§flip_axes",
    }
)
LATENT = frozenset({"latent_dim"})
# the output contract's writer (emb.h5, tables, recon.h5)
OUTPUTS = frozenset({"shard", "test_emb_only", "eval§n_preview", "eval§output_chunk"})
# TensorBoard grids of inputs beside reconstructions or samples (Engines/image_grids.py): the families that
# reconstruct (with RECON_OUTPUTS) and the generators
IMAGE_GRIDS = frozenset({"tb_image_every"})
RECON_OUTPUTS = frozenset({"n_save_recon_subs", "save_recon_subs"}) | IMAGE_GRIDS
EMA = frozenset({"test_ema", "training§ema_decay", "training§ema_warmup"})
# group-pure batches (data/group_batches.py) and BatchNorm statistics at evaluation (Engines/bn_policy.py)
GROUPS = frozenset({"batch_groups", "json§DS_covariates"})
BN_EVAL = frozenset({"bn_eval_mode", "bn_controls"})
PHENOTYPES = frozenset({"json§DS_phenotypes"})
CONFOUNDERS = frozenset({"json§DS_confounders"})  # the confounder-aware models (pythae drive's custom_models)
CHECKPOINTED = frozenset({"activation_checkpointing"})
HUB = frozenset({"load_hf"})  # (--hf_weights picks among a published layout's weights: the DiffAE's alone)

# An image autoencoder run through MainEngine with Lightning's automatic optimisation (a plug-in's default).
STANDARD = (
    LIFECYCLE
    | LOADERS
    | OPTIMISER
    | ACCUMULATION
    | CLIPPING
    | IMAGES
    | LATENT
    | OUTPUTS
    | RECON_OUTPUTS
    | EMA
    | GROUPS
    | HUB
)

# common keys that are not flags, by the name tasks declare
KEYS = (
    "training§LRDecay",
    "training§ema_decay",
    "training§ema_warmup",
    "data§flip_axes",
    "eval§n_preview",
    "eval§output_chunk",
    "model§tag",
    "json§DS_covariates",
    "json§DS_phenotypes",
    "json§DS_confounders",
)
# ancestor JSON keys that no task reads yet: refused by name on the command line, a note in a dataNpath JSON
UNREAD_JSON: dict[str, str] = {}
NOT_USER_KEYS = {
    "run§load_hf_revision": "is recorded by --load_hf, not set by users",
    "model§pythae§fitted_tables": "is recorded by training from its tables, not set by users",
    "model§drive": "is fixed by the task (use its executor)",
}

_FLAG_NAMES = frozenset(f.name for f in FLAGS)
ALL_NAMES = _FLAG_NAMES | frozenset(KEYS)
_BY_PATH = {f.path: f.name for f in FLAGS}


def name_of(path: tuple[str, ...]) -> str | None:
    """The flag or common key an explicit setting addresses: ``--batch_size`` and ``--training§batch_size`` are
    both ``batch_size``; ``--training§LRDecay§type1§decay_rate`` is ``training§LRDecay``. None: a key of the
    task's own sections, or a dataNpath field every data module reads."""
    if path in _BY_PATH:
        return _BY_PATH[path]
    for n in range(len(path), 0, -1):
        dotted = "§".join(path[:n])
        if dotted in KEYS or dotted in UNREAD_JSON or dotted in NOT_USER_KEYS:
            return dotted
    return None


# --- flags that act only with another setting: (name, why it would do nothing or None) ----------------------
def _world(cfg: Config) -> int | None:
    n = cfg.run.ndevices
    return None if n < 0 else n * max(1, cfg.run.nnodes)


def _prenorm_why(cfg: Config) -> str | None:
    d = cfg.data
    if d.norm_type != "zscore":
        return "acts only with --norm_type zscore"
    if d.zscore_mean is None and d.zscore_std is None:
        return (
            "is undone by the per-sample z-score (a scaling before it changes nothing): it acts only with a "
            "fixed --zscore_mean or --zscore_std"
        )
    return None


Condition = Callable[[Config], "str | None"]
CONDITIONS: tuple[tuple[str, Condition], ...] = (
    (
        "flip_prob",
        lambda c: (
            "flips nothing without data§flip_axes: name the spatial axes to flip, e.g. "
            "--data§flip_axes [1] (no default: a left-right flip mirrors anatomy)"
            if c.data.flip_prob > 0 and not c.data.flip_axes
            else None
        ),
    ),
    (
        "data§flip_axes",
        lambda c: "flips only with --flip_prob > 0" if c.data.flip_axes and not c.data.flip_prob else None,
    ),
    (
        "bn_eval_mode",
        lambda c: (
            f"normalises with each {c.eval.bn_eval_mode}'s statistics; without --batch_groups COL a "
            "batch mixes groups (plates, sites) and there are no groups: give --batch_groups"
            if c.eval.bn_eval_mode != "running" and not c.data.batch_groups
            else None
        ),
    ),
    (
        "bn_controls",
        lambda c: (
            "picks the samples whose statistics BatchNorm uses: it needs --bn_eval_mode batch or group"
            if c.eval.bn_controls and c.eval.bn_eval_mode == "running"
            else None
        ),
    ),
    ("grad_clip_algo", lambda c: "clips only with --grad_clip_val > 0" if not c.training.grad_clip_val else None),
    ("zscore_mean", lambda c: "acts only with --norm_type zscore" if c.data.norm_type != "zscore" else None),
    ("zscore_std", lambda c: "acts only with --norm_type zscore" if c.data.norm_type != "zscore" else None),
    # a per-sample z-score undoes any positive affine prenorm: it acts only before a fixed mean or std
    ("prenorm", lambda c: _prenorm_why(c)),
    ("zscore_prenorm", lambda c: _prenorm_why(c)),
    (
        "norm_range",
        lambda c: (
            f"sets the range of the min-max family; --norm_type {c.data.norm_type} has none"
            if c.data.norm_type in ("zscore", "none")
            else None
        ),
    ),
    (
        "complex_mode",
        lambda c: (
            None
            if c.paths.is_complexDS
            else "turns complex-valued data into channels: set json§is_complexDS true for complex data"
        ),
    ),
    (
        "complex_mode",
        lambda c: (
            "keeps the batches complex, which only main_recon's complex models read "
            "(complex_ae, complex_vae, complex_factor_vae); choose magnitude, realimag, magphase, ..."
            if c.data.complex_mode == "complex" and c.model.drive != "pythae"
            else None
        ),
    ),
    ("allow_pad", lambda c: "acts only with --croppad" if not c.data.croppad else None),
    ("wnbproject", lambda c: "acts only with --wnbactive" if not c.run.wnbactive else None),
    (
        "tb_image_every",
        lambda c: (
            None
            if not c.run.tb_image_every
            else "logs image grids to TensorBoard: it acts only with --tbactive"
            if not c.run.tbactive
            else "logs image grids while training; --run_mode 2 trains nothing"
            if c.run.run_mode == 2
            else None
        ),
    ),
    ("prefetch_factor", lambda c: "acts only with --num_workers > 0" if not c.run.num_workers else None),
    ("hf_weights", lambda c: "acts only with --load_hf" if not c.run.load_hf else None),
    (
        "load_best",
        lambda c: (
            "picks the checkpoint of a test run: it needs --run_mode 2 with --resume or --load_model_4test"
            if c.run.run_mode != 2 or not (c.run.resume or c.run.load_model_4test)
            else None
        ),
    ),
    (
        "sync_batchnorm",
        lambda c: "synchronises BatchNorm across processes; this run has one" if _world(c) == 1 else None,
    ),
    (
        "deepspeed_config",
        lambda c: (
            f"needs --training_strategy deepspeed* (got {c.run.training_strategy})"
            if c.run.deepspeed_config and not str(c.run.training_strategy).startswith("deepspeed")
            else None
        ),
    ),
    (
        "n_save_recon_subs",
        lambda c: "saves reconstructions; --test_emb_only writes none" if c.eval.test_emb_only else None,
    ),
    (
        "save_recon_subs",
        lambda c: "saves reconstructions; --test_emb_only writes none" if c.eval.test_emb_only else None,
    ),
)


def refuse_unhonoured(task, cfg: Config, explicit: Set[str], from_json: Set[str] = frozenset()) -> list[str]:
    """One UserError for the first explicit setting the task does not honour; returns the warnings of the
    documented no-ops (``from_json``: dataNpath JSON keys given in a JSON file)."""
    honours = getattr(task, "honours", None)
    if honours is None:  # a bare config Task (tests of the grammar): every flag is the engine's business
        return []
    where = f"task {task.name!r}"
    extra = {f.name for f in getattr(task, "extra_flags", ())}
    notes = []
    for item in sorted(explicit):
        path = tuple(item.split("§"))
        name = item if item in extra or item in ALL_NAMES else name_of(path)
        if name is None or name in extra:
            continue
        if name in NOT_USER_KEYS:
            raise UserError(f"--{item} {NOT_USER_KEYS[name]}")
        if name in UNREAD_JSON:
            raise UserError(
                f"--{item}: {UNREAD_JSON[name]} ({where} does not; the ancestor's key is kept for a later version)"
            )
        if name not in honours:
            why = getattr(task, "why_not", {}).get(name)
            raise UserError(f"--{item} is not honoured by {where}: {why or _generic_why(name)}")
        fixed = getattr(task, "fixed", {}).get(name)
        if fixed is not None and _value(cfg, name) != fixed[0]:
            raise UserError(f"--{item} {_value(cfg, name)!r} is not honoured by {where}: {fixed[1]}")
        if name == "training§LRDecay" and len(path) > 2 and path[2] != f"type{cfg.training.lr_decay_type}":
            # the ancestor's README sets training§LRDecay§type1§decay_rate without choosing StepLR: a no-op it
            # documents, kept as a warning
            notes.append(f"--{item} has no effect: --lr_decay_type is {cfg.training.lr_decay_type}")
            continue
    for name, condition in CONDITIONS + tuple(getattr(task, "conditions", ())):
        hit = [e for e in explicit if e == name or name_of(tuple(e.split("§"))) == name]
        why = condition(cfg) if hit else None
        if why:
            value = _value(cfg, name) if name in _FLAG_NAMES else None
            shown = f" {value}" if value is not None and not isinstance(value, bool) else ""
            raise UserError(f"--{hit[0]}{shown} is not honoured by {where}: it {why}")
    for key in sorted(from_json):  # one dataNpath JSON serves several tasks: only a key no task reads is named
        if key in UNREAD_JSON:
            notes.append(f"{key} (from the dataNpath JSON) has no effect: {UNREAD_JSON[key]}")
    return notes


def _value(cfg: Config, name: str) -> Any:
    flag = next(f for f in FLAGS if f.name == name)
    return getattr(getattr(cfg, flag.path[0]), flag.path[1])


def _generic_why(name: str) -> str:
    for group, why in (
        (IMAGE_GRIDS, "it has no decoder or generator: no reconstructions or samples to show"),
        (IMAGES, "it reads no H5 images"),
        (LOADERS, "its data loader does not take it"),
        (OPTIMISER | ACCUMULATION | CLIPPING, "it builds and steps its own optimisers"),
        (EMA, "it keeps no EMA of its weights"),
        (GROUPS | BN_EVAL, "it has no group-pure batches or BatchNorm evaluation policy"),
        (OUTPUTS | RECON_OUTPUTS, "it writes other outputs"),
        (CHECKPOINTED, "it has no checkpointed blocks (the DiffAE has)"),
        (HUB | {"hf_weights"}, "it loads no published weights"),
        (PHENOTYPES, "it reads no phenotype table"),
    ):
        if name in group:
            return why
    return "it does not read it"


def _needs_use_ema(cfg: Config) -> str | None:
    if getattr(cfg.training, "use_ema", False):
        return None
    return "acts on the EMA of the weights, kept only with --use_ema"


# for tasks that keep an EMA only when asked (--use_ema)
EMA_WITH_USE_EMA = tuple((name, _needs_use_ema) for name in sorted(EMA))
