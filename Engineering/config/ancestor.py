"""The ancestor's (ImLatent's) flags and YAML keys that differ from ours: each is mapped to ours, refused with one
line, or (where the ancestor's value is what runs here anyway) named in one warning as having no effect.

Its flags: ``--taskID``, ``--modelID``, ``--lossID``, ``--pythae_wrapper_mode``, ``--n_optimisers`` at the value that
is what this executor runs are documented no-ops (docs/reference/configuration.md, "Flags that have no effect");
any other value, and
``--in_channels`` / ``--p_augment`` (the channel count comes from the data; the ancestor's augmentation pipeline is
not implemented), are refused. Its YAML (Configs/config_v*.yaml) loads: see :func:`translate_yaml`.
"""
from __future__ import annotations

from Engineering.errors import UserError

_TASK_IDS = {0: "recon", 1: "diffAE", 2: "latentcls"}
_LOSSES = {-2: "LPIPS", -1: "the in-house perceptual loss", 0: "L1", 1: "MSE", 2: "SmoothL1", 3: "MS-SSIM",
           4: "SSIM"}


def _int(name: str, raw) -> int:
    try:
        return int(str(raw))
    except ValueError:
        raise UserError(f"--{name} {raw!r}: the ancestor's flag takes an integer") from None


def ancestor_flag(name: str, raw, task: str) -> str | None:
    """None: not one of the ancestor's flags. A string: the no-op warning. Raises for values not implemented."""
    if name == "taskID":
        v = _int(name, raw)
        if _TASK_IDS.get(v) == task:
            return f"--taskID {v} has no effect: this executor runs task {task!r}"
        raise UserError(f"--taskID {v} selects the ancestor's task {_TASK_IDS.get(v, 'unknown')!r}; this executor runs "
                        f"task {task!r} (each task has its own executor, Executors/main_<task>.py)")
    if name == "modelID":
        v = _int(name, raw)
        if v == 0 and task == "recon":
            return "--modelID 0 has no effect: main_recon's models are pythae's (--pythae_model)"
        raise UserError(f"--modelID {v} is not honoured by task {task!r}: the ancestor's model IDs are not used "
                        "here (main_recon: --pythae_model NAME; other tasks: their executor)")
    if name == "lossID":
        v = _int(name, raw)
        if v == 0 and task in ("recon", "diffAE"):
            return (f"--lossID 0 has no effect: task {task!r} trains with its model's own loss (main_recon: "
                    "model§pythae§reconstruction_loss)")
        raise UserError(f"--lossID {v} ({_LOSSES.get(v, 'unknown')}) is not honoured by task {task!r}: the ancestor's "
                        "loss IDs are not implemented here (main_recon: model§pythae§reconstruction_loss mse|l1|bce)")
    if name == "pythae_wrapper_mode":
        v = _int(name, raw)
        if v == 0 and task == "recon":
            return "--pythae_wrapper_mode 0 has no effect: no wrapper is what runs"
        raise UserError(f"--pythae_wrapper_mode {v} is not honoured by task {task!r}: the ancestor's LSTM wrapper "
                        "is not implemented here")
    if name == "n_optimisers":
        v = _int(name, raw)
        if v in (0, -1):
            return f"--n_optimisers {v} has no effect: the model decides its optimisers, as the ancestor's default"
        raise UserError(f"--n_optimisers {v} is not honoured by task {task!r}: each model sets its own optimisers")
    if name == "in_channels":
        raise UserError(f"--in_channels is not honoured by task {task!r}: the channel count comes from the data "
                        "(json§DS_multi_channel, --complex_mode, --grey2RGB)")
    if name == "p_augment":
        raise UserError(f"--p_augment is not honoured by task {task!r}: the ancestor's augmentation pipeline is not "
                        "implemented; random flips: --flip_prob P --data§flip_axes [AXES]")
    return None


# --- the ancestor's YAML ------------------------------------------------------------------------------------
_COMPLEX = {1: "magnitude", 2: "real", 3: "magphase", 4: "realimag", 5: "phase", 6: "imaginary"}
_NO_EFFECT = {  # key paths of the ancestor's config_v*.yaml that change nothing here
    ("training", "log_freq"), ("training", "im_log_freq"), ("eval", "norm4diff"), ("eval", "store_fullscale_evals"),
    ("eval", "n_calc_processes"), ("eval", "metrics2use"), ("data", "dataset", "combine_acquisitions"),
    ("data", "dataset", "fetch_confounders"), ("data", "dataset", "fetch_phenotypes"),
    ("model", "pythae", "wrappers"), ("model", "DiffAE", "sample_every_batches"), ("model", "DiffAE", "sample_size"),
}
_ANCESTOR_PYTHAE_MODELS = {"ultra_factor_vae", "ultra_vae", "ultra_cevae", "ivaes", "complex_ae", "complex_vae",
                           "complex_factor_vae"}


def _pop(data: dict, path: tuple[str, ...]):
    node = data
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
            raise UserError(f"{where}: training§augmentations p={p}: the ancestor's augmentation pipeline is not "
                            "implemented (random flips: data§flip_prob with data§flip_axes)")
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
            raise UserError(f"{where}: data§complex_mode {mode} (the ancestor's complex-valued input or inverted "
                            f"channels) is not implemented; choose one of {choices}")
        data["data"]["complex_mode"] = _COMPLEX[mode]
    latent = (data.get("model") or {}).get("latent_dim", 0)
    if latent is None or latent == -1:  # the ancestor's "use the default"
        data["model"].pop("latent_dim")
    pythae = (data.get("model") or {}).get("pythae")
    if isinstance(pythae, dict):
        _pythae(pythae, where, no_effect)
    _prune(data)
    return data, json_part, no_effect


def _pythae(p: dict, where: str, no_effect: list[str]) -> None:
    nn = p.get("nn")
    if nn in ("convnet", "resnet"):
        p["nn"] = "conv" if nn == "convnet" else "resnet"
    elif isinstance(nn, str) and nn.startswith("cv"):
        raise UserError(f"{where}: model§pythae§nn {nn}: the ancestor's complex-valued networks are not implemented "
                        "(conv or resnet)")
    ancestral = str(p.get("custom_loss_class") or "").startswith("Engineering.Science.losses.")  # its own module
    if ancestral and str(p.get("reconstruction_loss")).startswith("custom") or p.get("reconstruction_loss") == "crecon":
        raise UserError(f"{where}: model§pythae§reconstruction_loss {p['reconstruction_loss']} with the ancestor's "
                        f"{p.get('custom_loss_class') or 'complex'} loss is not implemented (mse, l1, bce, or custom "
                        "with masked_mse / masked_l1)")
    if ancestral:  # named but unused by the ancestor unless reconstruction_loss is custom
        for key in ("custom_loss_class", "custom_loss_params"):
            if key in p:
                p.pop(key)
                no_effect.append(f"model§pythae§{key}")
    models = p.get("models")
    if isinstance(models, dict):
        for name in sorted(set(models) & _ANCESTOR_PYTHAE_MODELS):
            models.pop(name)
            no_effect.append(f"model§pythae§models§{name}")
