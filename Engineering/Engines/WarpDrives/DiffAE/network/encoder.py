"""Semantic encoder of DiffAE (Preechakul et al., CVPR 2022): image -> z_sem.

The downsampling half of a BeatGANs UNet without time conditioning, ending in
GroupNorm, SiLU, global average pooling and a 1x1 convolution to ``latent_dim``
(the paper's "adaptive non-zero" pooling head), or with ``enc_pool="flatten"`` GroupNorm, SiLU and
one linear layer over every position of the last map. With ``latent_norm="batch"`` the code is then
standardised per dimension (batch statistics in training, running ones at evaluation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import AttentionBlock, EmbedSequential, Resample, ResBlock, conv_nd, run_block
from .config import DiffAEConfig, DiffAEConfigError


class GlobalAvgPool(nn.Module):
    """Mean over all spatial axes, keeping them as size-1 axes (for the 1x1 conv that follows)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


class LatentBatchNorm(nn.BatchNorm1d):
    """BatchNorm without affine over the code; a one-sample training batch (an epoch's remainder, one sample
    per rank) has no batch statistics, so it is normalised with the running ones and leaves them unchanged."""

    def __init__(self, dim: int):
        super().__init__(dim, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class SemanticEncoder(nn.Module):
    def __init__(self, cfg: DiffAEConfig):
        super().__init__()
        dims, groups, ch = cfg.dims, cfg.norm_groups, cfg.net_ch
        attn_levels = cfg.attention_levels(cfg.enc_ch_mult)
        self.activation_checkpointing = False  # a run-time choice (memory for compute), not architecture
        self.cfg_input_shape = cfg.input_shape

        def block(c_in: int, c_out: int, resample: str | None = None) -> ResBlock:
            rs = Resample(resample, dims, cfg.in_plane_only) if resample else None
            return ResBlock(c_in, c_out, dims, groups, emb_dim=None, resample=rs)

        self.input_blocks = nn.ModuleList([EmbedSequential(conv_nd(dims, cfg.in_channels, ch, 3))])
        for lvl, mult in enumerate(cfg.enc_ch_mult):
            for _ in range(cfg.enc_num_res_blocks):
                layers = [block(ch, cfg.net_ch * mult)]
                ch = cfg.net_ch * mult
                if lvl in attn_levels:
                    layers.append(AttentionBlock(ch, groups, cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
            if lvl != len(cfg.enc_ch_mult) - 1:
                self.input_blocks.append(EmbedSequential(block(ch, ch, "down")))
        self.middle_block = EmbedSequential(block(ch, ch), AttentionBlock(ch, groups, cfg.num_heads), block(ch, ch))
        self.map_shape = cfg.encoder_map_shape() if cfg.enc_pool == "flatten" else None
        if self.map_shape is None:
            head = [
                nn.GroupNorm(groups, ch),
                nn.SiLU(),
                GlobalAvgPool(),
                conv_nd(dims, ch, cfg.latent_dim, 1),
                nn.Flatten(1),
            ]
        else:  # same indices as the pooled head: out.3 is the projection, out.5 the optional BatchNorm
            head = [
                nn.GroupNorm(groups, ch),
                nn.SiLU(),
                nn.Flatten(1),
                nn.Linear(ch * math.prod(self.map_shape), cfg.latent_dim),
                nn.Identity(),
            ]
        if cfg.latent_norm == "batch":
            head.append(LatentBatchNorm(cfg.latent_dim))
        self.out = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(self.out[3].weight.dtype)  # see DiffAE.forward: the network's dtype in, the caller's out
        for module in self.input_blocks:
            h = run_block(module, self.activation_checkpointing, h)
        h = run_block(self.middle_block, self.activation_checkpointing, h)
        if self.map_shape is not None and tuple(h.shape[2:]) != self.map_shape:
            raise DiffAEConfigError(
                f"enc_pool flatten: the encoder was built for input_shape "
                f"{tuple(self.cfg_input_shape)} (a {self.map_shape} feature map), got an input "
                f"of spatial shape {tuple(x.shape[2:])}"
            )
        # the head in the weights' dtype even under bf16 autocast (--ampmode bf16-mixed), as in fast_encoder: a
        # code with a large mean and a small spread loses its signal when projected and normalised in bfloat16
        with torch.autocast(h.device.type, enabled=False):
            return self.out(h.to(self.out[3].weight.dtype)).to(x.dtype)
