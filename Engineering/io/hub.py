"""Hugging Face Hub weights: fetch (or read a local folder) safely, and describe the model they rebuild.

Two repository layouts are read, never executing code from them (no
``trust_remote_code``; pickles only through ``torch.load(weights_only=True)``):

1. ours: ``config.json`` (``"format": "imlatent"``: everything that rebuilds the
   model and its input contract) + ``model.safetensors`` (the WarpDrive's state
   dict) + ``README.md``;
2. the published ImLatent DiffAE repositories: tensors ``net.*``, ``ema_net.*`` and
   ``x_T`` in a safetensors file (else a torch pickle), returned as stored with the
   repository's config.json; ``Engines/WarpDrives/DiffAE/published_hub.py`` maps them onto our DiffAE.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from Engineering.config import Config
from Engineering.errors import UserError
from Engineering.io.checkpoints import read_checkpoint

FORMAT = "imlatent"
FORMAT_VERSION = 1
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass
class HubModel:
    kind: str  # "imlatent", or "published" (tensors as stored: the engine level maps them onto a drive)
    state: dict[str, torch.Tensor]  # ours: the WarpDrive's own state dict; published: every stored tensor
    layer: dict  # config values the weights fix (merged above YAML/JSON, below explicit flags)
    source: str
    revision: str | None
    needs: list[str] = field(default_factory=list)  # flags the weights cannot determine
    meta: dict = field(default_factory=dict)  # published: the safetensors metadata
    config: dict = field(default_factory=dict)  # published: the repository's config.json (plain values only)
    config_path: str = "config.json"


def fetch(ref: str) -> tuple[Path, str, str | None]:
    """A local folder for ``ORG/NAME[@revision]`` (download or HF cache) or a local directory."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local, str(local.resolve()), None
    repo, _, revision = ref.partition("@")
    if not _REPO_ID.match(repo):
        raise UserError(f"--load_hf {ref!r} is neither a local folder nor a Hugging Face repo id ORG/NAME[@revision]")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(
            snapshot_download(
                repo, revision=revision or None, allow_patterns=["*.json", "*.safetensors", "*.md", *_PICKLES]
            )
        )
    except LocalEntryNotFoundError:
        raise UserError(
            f"--load_hf {ref}: not in the local Hugging Face cache and the Hub is unreachable "
            "(offline?); download it once online or pass a local folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise UserError(f"--load_hf {ref}: {str(exc).splitlines()[0]}") from None
    # the snapshot folder is named after the commit: that is the revision actually used
    return path, repo, path.name


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types for truncated or damaged files
            raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    obj = read_checkpoint(path)  # weights_only=True, one-line errors; never falls back to full pickle
    weights = obj.get("state_dict", obj)  # (read_checkpoint returns a dict; its state_dict is checked here)
    if not isinstance(weights, dict):
        raise UserError(f"{path} does not hold a dictionary of tensors")
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}, {}


def read(ref: str) -> HubModel:
    """Our format (config + the drive's state dict), or the tensors of another layout as they are stored."""
    folder, source, revision = fetch(ref)
    cfg_path = folder / "config.json"
    config = None
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{cfg_path} is not valid JSON: {exc}") from None
        if isinstance(config, dict) and config.get("format") == FORMAT:
            weights = folder / "model.safetensors"
            if not weights.is_file():
                raise UserError(f"{folder} has our config.json but no model.safetensors")
            state, _ = _read_tensors(weights)
            return HubModel("imlatent", state, layer_from_config(config, str(cfg_path)), source, revision)
    files = sorted(folder.glob("*.safetensors")) or [p for pat in _PICKLES for p in sorted(folder.glob(pat))]
    if not files:
        raise UserError(
            f"no weights in {folder} (expected our config.json + model.safetensors, or a published "
            "checkpoint with net.*/ema_net.* tensors)"
        )
    tensors, meta = _read_tensors(files[0])
    return HubModel(
        "published",
        tensors,
        {},
        source,
        revision,
        meta=meta,
        config=config if isinstance(config, dict) else {},
        config_path=str(cfg_path),
    )


def shape_list(value, where: str) -> list[int]:
    """input_shape of a config.json: a list of ints or the ancestor's "50,128,128" string."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
        value = [int(p) for p in parts] if all(p.isdigit() for p in parts) else value
    if not (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise UserError(
            f"{where}: input_shape must be a list of positive integers such as [50, 128, 128], got {value!r}"
        )
    return value


def layer_from_config(config: dict, where: str = "config.json") -> dict:
    """Our config.json -> the config layer that rebuilds the model and its input contract (types checked: the
    file comes from elsewhere)."""
    try:
        drive, arch, norm = config["drive"], config.get("architecture") or {}, config.get("normalisation") or {}
        is3D, latent = config["is3D"], config["latent_dim"]
        shape = shape_list(config["input_shape"], where)
    except KeyError as exc:
        raise UserError(f"{where} of the Hub model lacks {exc}") from None
    problems = [
        name
        for name, ok in (
            ("drive", isinstance(drive, str)),
            ("is3D", isinstance(is3D, bool)),
            ("latent_dim", isinstance(latent, int) and not isinstance(latent, bool) and latent > 0),
            ("architecture", isinstance(arch, dict)),
            ("normalisation", isinstance(norm, dict)),
        )
        if not ok
    ]
    if problems:
        raise UserError(f"{where}: {', '.join(f'{p}={config.get(p)!r}' for p in problems)} has the wrong type")
    model = {"drive": drive, "is3D": is3D, "input_shape": shape, "latent_dim": latent, drive: dict(arch)}
    # data_selection stays documentation: how a user's file is laid out is theirs to say
    return {"model": model, "data": dict(norm)}


def _section(keys) -> dict:
    return keys.model_dump(mode="json") if hasattr(keys, "model_dump") else dict(keys or {})


def export_config(cfg: Config, in_channels: int, weights: str) -> dict:
    """What config.json holds for a trained run (the inverse of layer_from_config)."""
    drive = cfg.model.drive
    d, p = cfg.data, cfg.paths
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "drive": drive,
        "is3D": cfg.model.is3D,
        "input_shape": list(cfg.model.input_shape),
        "in_channels": in_channels,
        "latent_dim": cfg.model.latent_dim,
        "architecture": _section(getattr(cfg.model, drive, None)),
        "weights": weights,
        "axes": "C x S x X x Y" if cfg.model.is3D else "C x X x Y",
        # every data setting of the sample transform (data.datamodule.sample_spec) but training's augmentation:
        # a loader that fell back to the task's default for one of them would embed other inputs, silently
        "normalisation": {
            "norm_type": d.norm_type,
            "norm_range": d.norm_range,
            "prenorm": d.prenorm,
            "zscore_mean": d.zscore_mean,
            "zscore_std": d.zscore_std,
            "croppad": d.croppad,
            "allow_pad": d.allow_pad,
            "interp_fact": d.interp_fact,
            "complex_mode": d.complex_mode,
            "grey2RGB": d.grey2RGB,
        },
        "data_selection": {
            "DS_channel_dim": p.DS_channel_dim,
            "DS_slice_dim": p.DS_slice_dim,
            "DS_multi_channel": p.DS_multi_channel,
            "DS_split_time": p.DS_split_time,
            "DS_split_volume": p.DS_split_volume,
        },
    }
