"""The ancestor's (ImLatent's) flags and YAML keys that differ from ours: each is mapped to ours, refused with one
line, or (where the ancestor's value is what runs here anyway) named in one warning as having no effect.

Its flags: ``--taskID``, ``--modelID``, ``--pythae_wrapper_mode``, ``--n_optimisers`` at the value that is what this
executor runs are documented no-ops (docs/reference/configuration.md, "Flags that have no effect"); any other value,
and
``--in_channels`` / ``--p_augment`` (the channel count comes from the data; the ancestor's augmentation pipeline is
not implemented), are refused. Its YAML (Configs/config_v*.yaml) loads: see :func:`translate_yaml`.

``--lossID`` (its IDs -2..4 or their names, e.g. ``3``, ``ms-ssim``, ``SSIM``): for main_recon it sets
model§pythae§reconstruction_loss (:data:`LOSS_IDS`), for every pythae model. Precedence: it is applied with the
command line's path overrides, so it wins over the YAML's and the --pythae_config file's reconstruction_loss; against
``--model§pythae§reconstruction_loss`` on the same command line the later one wins. A YAML ``custom_loss_class`` (and,
when the YAML's loss was 'custom' or 'masked', its ``custom_loss_params``) belonged to the replaced loss and is
dropped. The ancestor's pythae models ignored IDs 0..4 (they ran their own squared error); here they act. LPIPS (-2)
is refused: its weights (an ImageNet backbone and LPIPS's calibrated layers) are downloaded at construction, which this
pipeline never does, and they are calibrated on natural RGB photographs; -1, the perceptual loss over a local network
file, is the alternative. Other tasks: ``--lossID 0`` on diffAE is a no-op (it trains with its own loss), any other
value is refused.
"""

from __future__ import annotations

import ast
from typing import Any

from Engineering.errors import UserError

_TASK_IDS = {0: "recon", 1: "diffAE", 2: "latentcls"}
_LOSSES = {-2: "LPIPS", -1: "the in-house perceptual loss", 0: "L1", 1: "MSE", 2: "SmoothL1", 3: "MS-SSIM", 4: "SSIM"}
# the ancestor's loss IDs -> model§pythae§reconstruction_loss (None: refused, see the module docstring)
LOSS_IDS = {-2: None, -1: "perceptual", 0: "l1", 1: "mse", 2: "smooth_l1", 3: "ms_ssim", 4: "ssim"}
# names accepted for --lossID, compared without case, '-', '_' or spaces
_LOSS_WORDS = {
    "lpips": -2,
    "perceptual": -1,
    "ploss": -1,
    "l1": 0,
    "mae": 0,
    "mse": 1,
    "l2": 1,
    "smoothl1": 2,
    "msssim": 3,
    "ssim": 4,
}


def loss_id(raw) -> int:
    """The ancestor's loss ID of ``--lossID`` RAW (an ID or a name); one line for anything else."""
    text = str(raw).strip()
    try:
        return int(text)
    except ValueError:
        pass
    word = "".join(c for c in text.lower() if c not in "-_ ")
    if word in _LOSS_WORDS:
        return _LOSS_WORDS[word]
    choices = ", ".join(f"{k} ({v})" for k, v in _LOSSES.items())
    raise UserError(f"--lossID {raw!r}: not one of the ancestor's loss IDs or names: {choices}")


def _recon_loss_flag(raw, v: int, cfg: dict | None) -> str:
    """--lossID for main_recon: set model§pythae§reconstruction_loss in ``cfg``; the line that says so."""
    if v not in LOSS_IDS:
        raise UserError(f"--lossID {v}: not one of the ancestor's loss IDs ({', '.join(map(str, LOSS_IDS))})")
    name = LOSS_IDS[v]
    if name is None:
        raise UserError(
            f"--lossID {raw} (LPIPS) is refused: its network weights are downloaded, which this pipeline "
            "never does; use --lossID -1, the perceptual loss over a local network file "
            "(--model§pythae§custom_loss_params§network PATH)"
        )
    if cfg is None:  # a caller that cannot change the config: refuse rather than run another loss
        if v == 0:  # (the ancestor's default ID, documented as a no-op before --lossID acted)
            return (
                "--lossID 0 has no effect: task 'recon' trains with model§pythae§reconstruction_loss "
                "(--model§pythae§reconstruction_loss l1 for L1)"
            )
        raise UserError(
            f"--lossID {raw} ({_LOSSES[v]}) cannot be applied here: give --model§pythae§reconstruction_loss {name}"
        )
    p = cfg.setdefault("model", {}).setdefault("pythae", {})
    before = p.get("reconstruction_loss")
    p["reconstruction_loss"] = name
    dropped = []
    if before != name:  # the YAML's class and its parameters served the loss this flag replaces
        if p.get("custom_loss_class") is not None:
            p["custom_loss_class"] = None
            dropped.append("custom_loss_class")
        if before in ("custom", "masked") and p.get("custom_loss_params"):
            p["custom_loss_params"] = {}
            dropped.append("custom_loss_params")
    extra = f" (replacing the YAML's {', '.join('model§pythae§' + d for d in dropped)})" if dropped else ""
    return f"--lossID {raw} ({_LOSSES[v]}): model§pythae§reconstruction_loss {name}{extra}"


def _int(name: str, raw) -> int:
    try:
        return int(str(raw))
    except ValueError:
        raise UserError(f"--{name} {raw!r}: the ancestor's flag takes an integer") from None


def ancestor_flag(name: str, raw, task: str, cfg: dict | None = None) -> str | None:
    """None: not one of the ancestor's flags. A string: the line to print (a no-op, or what the flag set in ``cfg``,
    the merged config dict the path overrides are applied to). Raises for values not implemented."""
    if name == "taskID":
        v = _int(name, raw)
        if _TASK_IDS.get(v) == task:
            return f"--taskID {v} has no effect: this executor runs task {task!r}"
        raise UserError(
            f"--taskID {v} selects the ancestor's task {_TASK_IDS.get(v, 'unknown')!r}; this executor runs "
            f"task {task!r} (each task has its own executor, Executors/main_<task>.py)"
        )
    if name == "modelID":
        v = _int(name, raw)
        if v == 0 and task == "recon":
            return "--modelID 0 has no effect: main_recon's models are pythae's (--pythae_model)"
        raise UserError(
            f"--modelID {v} is not honoured by task {task!r}: the ancestor's model IDs are not used "
            "here (main_recon: --pythae_model NAME; other tasks: their executor)"
        )
    if name == "lossID":
        if task == "recon":
            return _recon_loss_flag(raw, loss_id(raw), cfg)
        if task != "diffAE":  # its other executors' IDs name other losses (main_latentcls: classification losses)
            raise UserError(
                f"--lossID {_int(name, raw)} is not honoured by task {task!r}: the ancestor's loss IDs "
                "select main_recon's reconstruction loss only"
            )
        v = loss_id(raw)
        if v == 0:
            return f"--lossID {raw} has no effect: task {task!r} trains with its model's own loss"
        raise UserError(
            f"--lossID {raw} ({_LOSSES.get(v, 'unknown')}) is not honoured by task {task!r}: the "
            "ancestor's loss IDs select main_recon's reconstruction loss only"
        )
    if name == "pythae_wrapper_mode":
        v = _int(name, raw)
        if v == 0 and task == "recon":
            return "--pythae_wrapper_mode 0 has no effect: no wrapper is what runs"
        raise UserError(
            f"--pythae_wrapper_mode {v} is not honoured by task {task!r}: the ancestor's LSTM wrapper "
            "is not implemented here"
        )
    if name == "n_optimisers":
        v = _int(name, raw)
        if v in (0, -1):
            return f"--n_optimisers {v} has no effect: the model decides its optimisers, as the ancestor's default"
        raise UserError(f"--n_optimisers {v} is not honoured by task {task!r}: each model sets its own optimisers")
    if name == "in_channels":
        raise UserError(
            f"--in_channels is not honoured by task {task!r}: the channel count comes from the data "
            "(json§DS_multi_channel, --complex_mode, --grey2RGB)"
        )
    if name in ("ploss_model", "ploss_level", "ploss_type"):  # the ancestor's perceptual-loss network settings
        raise UserError(
            f"--{name} is not honoured by task {task!r}: the ancestor's bundled perceptual networks are not "
            "shipped; the perceptual loss (--lossID -1) reads your own network file: "
            "--model§pythae§custom_loss_params§network PATH (and n_level, feature_loss)"
        )
    if name == "p_augment":
        raise UserError(
            f"--p_augment is not honoured by task {task!r}: the ancestor's augmentation pipeline is not "
            "implemented; random flips: --flip_prob P --data§flip_axes [AXES]"
        )
    return None


# --- the ancestor's YAML ------------------------------------------------------------------------------------
_COMPLEX = {0: "complex", 1: "magnitude", 2: "real", 3: "magphase", 4: "realimag", 5: "phase", 6: "imaginary"}
_NO_EFFECT = {  # key paths of the ancestor's config_v*.yaml that change nothing here
    ("training", "log_freq"),
    ("training", "im_log_freq"),
    ("eval", "norm4diff"),
    ("eval", "store_fullscale_evals"),
    ("eval", "n_calc_processes"),
    ("eval", "metrics2use"),
    ("data", "dataset", "combine_acquisitions"),
    ("data", "dataset", "fetch_confounders"),
    ("data", "dataset", "fetch_phenotypes"),
    ("model", "pythae", "wrappers"),
    ("model", "DiffAE", "sample_every_batches"),
    ("model", "DiffAE", "sample_size"),
}


def _pop(data: dict, path: tuple[str, ...]) -> tuple[Any, bool]:
    node: Any = data
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None, False
    if not isinstance(node, dict) or path[-1] not in node:
        return None, False
    value = node.pop(path[-1])
    return value, True


def _put(data: dict, path: tuple[str, ...], value) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _prune(data: dict) -> None:
    for key in [k for k, v in data.items() if isinstance(v, dict)]:
        _prune(data[key])
        if not data[key] and key not in ("model", "training", "eval", "data", "run"):
            del data[key]


def translate_yaml(data: dict, where: str, sections: set[str]) -> tuple[dict, dict, list[str]]:
    """The ancestor's keys of a YAML config mapped to ours: (the YAML with them translated, dataNpath keys it set,
    the 'section§key' paths that have no effect here). ``sections``: 'model§pythae'-style task sections present.
    Our own keys pass unchanged."""
    json_part, no_effect = {}, []
    seed, found = _pop(data, ("seed",))
    if found:
        _put(data, ("training", "seed"), seed)
    for path in sorted(_NO_EFFECT):
        _, found = _pop(data, path)
        if found:
            no_effect.append("§".join(path))
    for sub in ("pythae", "DiffAE"):  # another task's model section (config_v1.yaml serves several executors)
        if f"model§{sub}" not in sections and isinstance(data.get("model"), dict) and sub in data["model"]:
            data["model"].pop(sub)
            no_effect.append(f"model§{sub}")
    decay, found = _pop(data, ("training", "LRDecay", "type1", "decay_nepoch"))
    if found:
        _put(data, ("training", "LRDecay", "type1", "decay_every"), decay)
    save, found = _pop(data, ("training", "save_recon"))
    if found:
        if save:
            no_effect.append("training§save_recon")
        else:
            _put(data, ("eval", "n_save_recon_subs"), 0)
    aug, found = _pop(data, ("training", "augmentations"))
    if found:
        p = aug.get("p", 0) if isinstance(aug, dict) else aug
        if p:
            raise UserError(
                f"{where}: training§augmentations p={p}: the ancestor's augmentation pipeline is not "
                "implemented (random flips: data§flip_prob with data§flip_axes)"
            )
        no_effect.append("training§augmentations")
    for old, new in (("every_primary", "DS_every_primary"), ("include_repeatAcq", "DS_include_repeatAcq")):
        val, found = _pop(data, ("data", "dataset", old))
        if found:
            json_part[new] = val
    mask, found = _pop(data, ("data", "dataset", "data_mask_mode"))
    if found:
        _put(data, ("data", "data_mask_mode"), mask)
    mode = (data.get("data") or {}).get("complex_mode")
    if isinstance(mode, int) and not isinstance(mode, bool):
        if mode not in _COMPLEX:
            choices = ", ".join(f"{k} ({v})" for k, v in _COMPLEX.items())
            raise UserError(
                f"{where}: data§complex_mode {mode} is not one of the ancestor's modes (its inverted "
                f"channels are not implemented); choose one of {choices}"
            )
        data["data"]["complex_mode"] = _COMPLEX[mode]
    latent = (data.get("model") or {}).get("latent_dim", 0)
    if latent is None or latent == -1:  # the ancestor's "use the default"
        if "model§pythae" in sections:  # its pythae models: the --pythae_config file's (pythae_json.py resolves -1)
            data["model"]["latent_dim"] = -1
        else:
            data["model"].pop("latent_dim")
    pythae = (data.get("model") or {}).get("pythae")
    if isinstance(pythae, dict):
        _pythae(pythae, where, no_effect)
    _prune(data)
    return data, json_part, no_effect


_NN = {"convnet": "conv", "resnet": "resnet", "cvconvnet": "conv", "cvresnet": "resnet"}  # cv*: the complex models
# build complex networks themselves from the same family name
_MASKED_LOSS = "Engineering.Science.losses.masked_loss.MaskedReconLoss"


def _pythae(p: dict, where: str, no_effect: list[str]) -> None:
    nn = p.get("nn")
    if nn in _NN:
        p["nn"] = _NN[nn]
    loss = p.get("reconstruction_loss")
    if loss == "crecon":  # the complex models always train with their own complex loss; other models: pythae's
        p.pop("reconstruction_loss")
        no_effect.append("model§pythae§reconstruction_loss crecon (the complex models use their own complex loss)")
    cls = str(p.get("custom_loss_class") or "")
    ancestral = cls.startswith("Engineering.Science.losses.")  # its own module
    if loss == "custom_masked":  # the ancestor's 'custom, with the batch mask': ours passes the mask to any class
        p["reconstruction_loss"] = loss = "custom"
    if ancestral and loss == "custom":
        if cls != _MASKED_LOSS:
            raise UserError(
                f"{where}: model§pythae§custom_loss_class {cls}: the ancestor's loss is not implemented "
                "(its perceptual loss: reconstruction_loss perceptual with custom_loss_params§network "
                "PATH; or mse, l1, bce, smooth_l1, ssim, ms_ssim, masked, custom with your own class)"
            )
        params = p.get("custom_loss_params") or {}
        if isinstance(params, str):  # the ancestor's command-line form of the dict
            try:
                params = ast.literal_eval(params)
            except (ValueError, SyntaxError):
                raise UserError(f"{where}: model§pythae§custom_loss_params {params!r} is not a mapping") from None
        p["reconstruction_loss"], p["custom_loss_params"] = "masked", dict(params)
        p.pop("custom_loss_class")
    elif ancestral:  # named but unused by the ancestor unless reconstruction_loss is custom
        for key in ("custom_loss_class", "custom_loss_params"):
            if key in p:
                p.pop(key)
                no_effect.append(f"model§pythae§{key}")
