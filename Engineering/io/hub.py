"""Hugging Face Hub weights: fetch (or read a local folder) safely, and describe the model they rebuild.

Two repository layouts are read, never executing code from them (no
``trust_remote_code``; pickles only through ``torch.load(weights_only=True)``):

1. ours: ``config.json`` (``"format": "imlatent"``: everything that rebuilds the
   model and its input contract) + ``model.safetensors`` (the WarpDrive's state
   dict) + ``README.md``;
2. the published ImLatent DiffAE repositories: tensors ``net.*``, ``ema_net.*`` and
   ``x_T`` in a safetensors file (else a torch pickle), mapped onto our DiffAE.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from Engineering.errors import UserError

FORMAT = "imlatent"
FORMAT_VERSION = 1
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass
class HubModel:
    kind: str  # "imlatent" or "published_diffae"
    state: dict[str, torch.Tensor]  # the WarpDrive's own state dict (no net./ema_net. prefix)
    layer: dict  # config values the weights fix (merged above YAML/JSON, below explicit flags)
    source: str
    revision: str | None
    needs: list[str] = field(default_factory=list)  # flags the weights cannot determine


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
        path = Path(snapshot_download(repo, revision=revision or None,
                                      allow_patterns=["*.json", "*.safetensors", "*.md", *_PICKLES]))
    except LocalEntryNotFoundError:
        raise UserError(f"--load_hf {ref}: not in the local Hugging Face cache and the Hub is unreachable "
                        "(offline?); download it once online or pass a local folder") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise UserError(f"--load_hf {ref}: {str(exc).splitlines()[0]}") from None
    # the snapshot folder is named after the commit: that is the revision actually used
    return path, repo, path.name


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpicklable (unsafe) object or a damaged file: never fall back to full pickle
        raise UserError(f"{path} cannot be read safely with weights_only=True: {str(exc).splitlines()[0]}") from None
    obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a dictionary of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}


def read(ref: str, which: str = "ema") -> HubModel:
    folder, source, revision = fetch(ref)
    cfg_path = folder / "config.json"
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
            return HubModel("imlatent", state, layer_from_config(config), source, revision)
    files = sorted(folder.glob("*.safetensors")) or [p for pat in _PICKLES for p in sorted(folder.glob(pat))]
    if not files:
        raise UserError(f"no weights in {folder} (expected our config.json + model.safetensors, or a published "
                        "checkpoint with net.*/ema_net.* tensors)")
    tensors, meta = _read_tensors(files[0])
    return published_diffae(tensors, meta, which, source, revision)


def published_diffae(tensors, meta: dict, which: str, source: str, revision) -> HubModel:
    from Engineering.Engines.WarpDrives.DiffAE import DiffAEConfig
    from Engineering.Engines.WarpDrives.DiffAE.published import load_published_state

    state, inferred = load_published_state(tensors, which)
    arch = {k: v for k, v in dataclasses.asdict(DiffAEConfig()).items()
            if k not in ("is3D", "in_channels", "input_shape", "latent_dim")}
    arch.update({k: list(v) if isinstance(v, tuple) else v for k, v in inferred.items()
                 if k not in ("is3D", "in_channels", "latent_dim")})
    model = {"drive": "DiffAE", "is3D": bool(inferred["is3D"]), "latent_dim": int(inferred["latent_dim"]),
             "DiffAE": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}}
    needs = []
    if "input_shape" in meta:  # some files record it in the safetensors metadata
        model["input_shape"] = [int(v) for v in json.loads(meta["input_shape"])]
    else:
        needs.append("input_shape")
    # the published models take data at its native resolution: no demo-style resampling unless asked for
    return HubModel("published_diffae", state, {"model": model, "data": {"interp_fact": 1.0}}, source, revision, needs)


def layer_from_config(config: dict) -> dict:
    """Our config.json -> the config layer that rebuilds the model and its input contract."""
    try:
        model = {"drive": config["drive"], "is3D": bool(config["is3D"]), "input_shape": list(config["input_shape"]),
                 "latent_dim": int(config["latent_dim"]), config["drive"]: dict(config.get("architecture") or {})}
    except KeyError as exc:
        raise UserError(f"config.json of the Hub model lacks {exc}") from None
    # data_selection stays documentation: how a user's file is laid out is theirs to say
    return {"model": model, "data": dict(config.get("normalisation") or {})}


def export_config(cfg, in_channels: int, weights: str) -> dict:
    """What config.json holds for a trained run (the inverse of layer_from_config)."""
    drive = cfg.model.drive
    d, p = cfg.data, cfg.paths
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "drive": drive, "is3D": cfg.model.is3D,
        "input_shape": list(cfg.model.input_shape), "in_channels": in_channels, "latent_dim": cfg.model.latent_dim,
        "architecture": dict(getattr(cfg.model, drive, None) or {}), "weights": weights,
        "axes": "C x S x X x Y" if cfg.model.is3D else "C x X x Y",
        "normalisation": {"norm_type": d.norm_type, "prenorm": d.prenorm, "croppad": d.croppad,
                          "interp_fact": d.interp_fact, "complex_mode": d.complex_mode, "grey2RGB": d.grey2RGB},
        "data_selection": {"DS_channel_dim": p.DS_channel_dim, "DS_slice_dim": p.DS_slice_dim,
                           "DS_multi_channel": p.DS_multi_channel, "DS_split_time": p.DS_split_time,
                           "DS_split_volume": p.DS_split_volume},
    }
