"""The published ImLatent DiffAE repositories as a config layer: their tensors mapped onto our DiffAE, and what
the published models need that is not a property of the user's data (the io layer reads the files; the mapping
onto a drive lives here, at the engine level).
"""

from __future__ import annotations

import dataclasses
import json

from Engineering.config import Config
from Engineering.errors import UserError
from Engineering.io.hub import HubModel, shape_list

from .network import DiffAEConfig
from .network.published import load_published_state

# What the published ImLatent DiffAE models were trained and tested with that is not a property of the
# user's data (the ancestor's ukbb_autoenc template and defaults; the model cards): per-sample min-max then
# (x - 0.5) / 0.5, i.e. [-1, 1]; native resolution; DDIM with T_eval = T_inv = T_step = 20 steps spaced as
# DiffAE's "ddim20" (range(0, 1000, 50)), x0 clipped to the data range while inverting and rendering.
PUBLISHED_DATA = {"norm_type": "minmax", "norm_range": "symmetric", "interp_fact": 1.0, "croppad": True}
# the published model's diffusion, and its training objective (fine-tuning keeps DiffAE's uniform epsilon MSE)
PUBLISHED_DIFFUSION = {
    "T": 1000,
    "T_eval": 20,
    "T_inv": 20,
    "T_step": 20,
    "spacing": "ddim",
    "clip_x0": "auto",
    "loss_weighting": "uniform",
}


def published_diffae(raw: HubModel, cfg: Config) -> HubModel:
    """The published layout: weights mapped onto our DiffAE; the architecture from the tensor shapes, checked
    against the repository's config.json (only its plain values are read: ``auto_map`` and any other code
    reference is ignored, nothing is imported); input shape from config.json, else the ``x_T`` buffer."""
    tensors, meta, config, where, source = raw.state, raw.meta, raw.config, raw.config_path, raw.source
    state, inferred = load_published_state(tensors, cfg.run.hf_weights)
    for key in ("is3D", "in_channels", "latent_dim", "net_ch"):
        if key in config and key in inferred and (bool(config[key]) if key == "is3D" else config[key]) != inferred[key]:
            raise UserError(f"{where} says {key}={config[key]!r} but the weights have {key}={inferred[key]!r}")
    arch = {
        f.name: f.default
        for f in dataclasses.fields(DiffAEConfig)
        if f.name not in ("is3D", "in_channels", "input_shape", "latent_dim")
    }
    arch.update(
        {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in inferred.items()
            if k not in ("is3D", "in_channels", "latent_dim")
        }
    )
    model = {
        "drive": "DiffAE",
        "is3D": bool(inferred["is3D"]),
        "latent_dim": int(inferred["latent_dim"]),
        "DiffAE": {**{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}, **PUBLISHED_DIFFUSION},
    }
    dims = 3 if inferred["is3D"] else 2
    x_T = tensors.get("x_T")
    buffer_shape = [int(v) for v in x_T.shape[2:]] if x_T is not None and x_T.ndim == dims + 2 else None
    needs = []
    if "input_shape" in config:
        model["input_shape"] = shape_list(config["input_shape"], where)
        if buffer_shape and buffer_shape != model["input_shape"]:
            raise UserError(f"{where} says input_shape={model['input_shape']} but its x_T buffer is {buffer_shape}")
    elif "input_shape" in meta:  # some files record it in the safetensors metadata
        model["input_shape"] = shape_list(json.loads(meta["input_shape"]), f"{source} metadata")
    elif buffer_shape:
        model["input_shape"] = buffer_shape
    else:
        needs.append("input_shape")
    return HubModel(
        "published_diffae", state, {"model": model, "data": dict(PUBLISHED_DATA)}, source, raw.revision, needs
    )
