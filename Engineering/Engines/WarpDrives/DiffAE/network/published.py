"""Map the published ImLatent DiffAE checkpoints onto ``DiffAE`` (no file I/O here).

A published checkpoint holds ``net.<param>`` (trained weights), ``ema_net.<param>``
(their moving average, used for inference) and ``x_T`` (a sampling-noise buffer,
ignored). ``<param>`` names are exactly our ``DiffAE`` state-dict names, so mapping
is prefix stripping; the shapes determine most of the architecture, which
``load_published_state`` reports so a caller can build the matching config
(input_shape is not determined by the weights and must come from the user).
"""

from __future__ import annotations

import re
from collections import defaultdict

from torch import Tensor

from Engineering.Engines.WarpDrives.errors import DriveError

PREFIXES = {"ema": "ema_net.", "net": "net."}


class WeightsMismatchError(DriveError):
    """Weights that do not fit the model."""


def load_published_state(tensors: dict[str, Tensor], which: str = "ema") -> tuple[dict[str, Tensor], dict]:
    """Our state dict from published checkpoint tensors, and the config values their shapes determine.

    which: "ema" (``ema_net.*``, the default for inference) or "net" (``net.*``).
    Returns (state_dict, inferred) where inferred holds DiffAEConfig fields:
    is3D, in_channels, net_ch, latent_dim and, when the block layout allows,
    ch_mult, num_res_blocks, enc_ch_mult, enc_num_res_blocks.
    """
    if which not in PREFIXES:
        raise ValueError(f"which must be one of {sorted(PREFIXES)}, got {which!r}")
    prefix = PREFIXES[which]
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        heads = sorted({k.split(".", 1)[0] for k in tensors})
        raise WeightsMismatchError(
            f"no '{prefix}*' tensors in these weights (top-level names: {', '.join(heads[:8]) or 'none'}); "
            f"not a published DiffAE checkpoint"
        )
    return state, infer_config(state)


def _block_kinds(state: dict[str, Tensor], prefix: str) -> dict[int, dict[int, str]]:
    """{block index: {sub-module index: 'res' | 'attn' | 'conv'}} for ``<prefix>.<i>.<j>.*`` names."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.(\d+)\.(\w+)")
    out: dict[int, dict[int, str]] = defaultdict(dict)
    for k in state:
        m = pat.match(k)
        if m:
            kind = {"in_layers": "res", "norm": "attn", "qkv": "attn", "proj_out": "attn"}.get(m[3])
            subs = out[int(m[1])]
            if kind or int(m[2]) not in subs:  # a block's other tensors must not hide its kind
                subs[int(m[2])] = kind or "conv"
    return dict(out)


def _level_mults(state: dict[str, Tensor], prefix: str, n_levels: int, nrb: int, net_ch: int) -> tuple[int, ...] | None:
    # the first residual block of level l is input block 1 + l*(nrb+1); its conv gives the level's width
    mults = []
    for lvl in range(n_levels):
        w = state.get(f"{prefix}.{1 + lvl * (nrb + 1)}.0.in_layers.2.weight")
        if w is None or w.shape[0] % net_ch:
            return None
        mults.append(w.shape[0] // net_ch)
    return tuple(mults)


def infer_config(state: dict[str, Tensor]) -> dict:
    """DiffAEConfig fields determined by the shapes of a (prefix-free) DiffAE state dict."""
    out: dict = {}
    conv0 = state.get("input_blocks.0.0.weight")
    if conv0 is None:
        raise WeightsMismatchError("these weights have no 'input_blocks.0.0.weight': not a DiffAE UNet")
    if conv0.ndim not in (4, 5):
        raise WeightsMismatchError(f"'input_blocks.0.0.weight' has shape {tuple(conv0.shape)}: not a 2D/3D conv")
    out["is3D"] = conv0.ndim == 5
    out["net_ch"] = net_ch = int(conv0.shape[0])
    out["in_channels"] = int(conv0.shape[1])
    head = state.get("encoder.out.3.weight")
    if head is not None:
        out["latent_dim"] = int(head.shape[0])
        temb = state.get("time_embed.time_embed.0.weight")
        if temb is not None and temb.shape[0] != head.shape[0]:
            raise WeightsMismatchError(
                f"time embedding width {temb.shape[0]} differs from the latent size {head.shape[0]}; "
                f"this DiffAE ties them (embed width = latent_dim)"
            )

    # UNet: each level has nrb+1 output blocks; all but the top-level one end in an upsampling ResBlock
    outs = _block_kinds(state, "output_blocks")
    if outs:
        n_out = max(outs) + 1
        n_levels = 1 + sum(1 for subs in outs.values() if any(j >= 1 and k == "res" for j, k in subs.items()))
        if n_out % n_levels == 0 and n_out // n_levels >= 2:
            nrb = n_out // n_levels - 1
            mult = _level_mults(state, "input_blocks", n_levels, nrb, net_ch)
            if mult is not None:
                out.update(ch_mult=mult, num_res_blocks=nrb)
            # encoder: 1 + L*nrb + (L-1) input blocks; assume the UNet's nrb when it divides
            enc = _block_kinds(state, "encoder.input_blocks")
            if enc and (max(enc) + 1) % (nrb + 1) == 0:
                enc_levels = (max(enc) + 1) // (nrb + 1)
                enc_mult = _level_mults(state, "encoder.input_blocks", enc_levels, nrb, net_ch)
                if enc_mult is not None:
                    out.update(enc_ch_mult=enc_mult, enc_num_res_blocks=nrb)
    return out
