"""The DiffAE network: a z_sem-conditioned BeatGANs UNet and its semantic encoder.

Diffusion Autoencoders (Preechakul et al., CVPR 2022): the encoder maps an image
to a semantic code z_sem; the UNet predicts the noise of x_t at timestep t,
conditioned on t and z_sem in every residual block. The diffusion process itself
(noising, loss, DDIM sampling/inversion) lives in ``Engineering.Science.diffusion``.

Parameter names equal the published checkpoints' ``<param>`` names (UNet at the
top level, encoder under ``encoder.``). The model holds no buffers: the sampling
noise of the ancestor (``x_T``) is not part of its state.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .blocks import (
    AttentionBlock,
    EmbedSequential,
    Resample,
    ResBlock,
    conv_nd,
    run_block,
    timestep_embedding,
    zero_init,
)
from .config import DiffAEConfig, DiffAEConfigError
from .encoder import SemanticEncoder


class TimeEmbed(nn.Module):
    """Sinusoidal timestep features (width net_ch) -> MLP -> embedding (width latent_dim)."""

    def __init__(self, feat_dim: int, emb_dim: int):
        super().__init__()
        self.feat_dim = feat_dim
        self.time_embed = nn.Sequential(nn.Linear(feat_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: Tensor) -> Tensor:
        # features in float32 (exact for t < 1000), then in the weights' dtype (half/double models). Under bf16
        # autocast the MLP stays in the weights' dtype too: in bfloat16 the low-frequency features of adjacent
        # timesteps round to the same value, and this MLP is a few thousand multiply-adds per sample.
        with torch.autocast(t.device.type, enabled=False):
            return self.time_embed(timestep_embedding(t, self.feat_dim).to(self.time_embed[0].weight.dtype))


class DiffAE(nn.Module):
    """Conditional UNet ``forward(x_t, t, z_sem) -> eps`` plus ``encoder`` / ``encode(x) -> z_sem``."""

    def __init__(self, cfg: DiffAEConfig):
        super().__init__()
        self.cfg = cfg
        dims, groups, emb = cfg.dims, cfg.norm_groups, cfg.embed_dim
        self.activation_checkpointing = False  # a run-time choice (memory for compute), not architecture
        attn_levels = cfg.attention_levels(cfg.ch_mult)

        def block(c_in: int, c_out: int, resample: str | None = None) -> ResBlock:
            rs = Resample(resample, dims, cfg.in_plane_only) if resample else None
            return ResBlock(c_in, c_out, dims, groups, emb_dim=emb, dropout=cfg.dropout, resample=rs)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, groups, cfg.num_heads)

        self.time_embed = TimeEmbed(cfg.net_ch, emb)

        ch = cfg.net_ch
        self.input_blocks = nn.ModuleList([EmbedSequential(conv_nd(dims, cfg.in_channels, ch, 3))])
        skip_ch = [ch]  # channels of every input block's output, consumed in reverse by the decoder
        for lvl, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [block(ch, cfg.net_ch * mult)]
                ch = cfg.net_ch * mult
                if lvl in attn_levels:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_ch.append(ch)
            if lvl != len(cfg.ch_mult) - 1:
                self.input_blocks.append(EmbedSequential(block(ch, ch, "down")))
                skip_ch.append(ch)

        self.middle_block = EmbedSequential(block(ch, ch), attn(ch), block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(cfg.ch_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [block(ch + skip_ch.pop(), cfg.net_ch * mult)]
                ch = cfg.net_ch * mult
                if lvl in attn_levels:
                    layers.append(attn(ch))
                if lvl and i == cfg.num_res_blocks:
                    layers.append(block(ch, ch, "up"))
                self.output_blocks.append(EmbedSequential(*layers))

        # zero-initialised output: training starts from an eps prediction of 0
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), zero_init(conv_nd(dims, ch, cfg.in_channels, 3)))

        self.encoder = SemanticEncoder(cfg)

    # ---- input checks -----------------------------------------------------------------
    def _check_input(self, x: Tensor, name: str) -> None:
        cfg = self.cfg
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            want = "(B, C, S, X, Y)" if cfg.is3D else "(B, C, X, Y)"
            raise DiffAEConfigError(f"{name} must be {want} with C={cfg.in_channels}, got shape {tuple(x.shape)}")

    def _check_unet_input(self, x: Tensor) -> None:
        self._check_input(x, "x_t")
        need = 2 ** (len(self.cfg.ch_mult) - 1)
        if any(s % need for s in self.cfg.downsampled(x.shape[2:])):
            raise DiffAEConfigError(
                f"x_t spatial shape {tuple(x.shape[2:])}: {self.cfg.downsampled_axes_text()} must be "
                f"multiples of {need} (the UNet has {len(self.cfg.ch_mult) - 1} downsampling levels)"
            )

    # ---- API --------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Semantic code z_sem (B, latent_dim) of images x."""
        self._check_input(x, "x")
        return self.encoder(x)

    def fast_encoder(self, dtype: torch.dtype = torch.bfloat16, compile: bool = False):
        """An inference-only copy of the semantic encoder whose convolutional trunk runs in ``dtype`` (bf16:
        AVX512-BF16/AMX CPUs, CUDA), in channels-last layout for 3D (oneDNN's fast Conv3d path), optionally
        ``torch.compile``d (GroupNorm, SiLU and the residual adds fused; about a minute of compilation on CPU).
        The head (norm, pooling, projection, the code's BatchNorm) stays float32: it is cheap, and a code
        whose pre-normalisation values have a large mean and a small spread loses its signal in bf16.
        Returns ``f(x) -> z_sem`` in float32. The copy does not follow later changes to this module's
        weights: build it after loading them."""
        enc = copy.deepcopy(self.encoder).eval().requires_grad_(False)
        layout = torch.channels_last_3d if self.cfg.is3D else torch.contiguous_format
        trunk = nn.ModuleList([*enc.input_blocks, enc.middle_block]).to(dtype).to(memory_format=layout)
        head = enc.out.float()

        def features(h: Tensor) -> Tensor:
            for module in trunk:
                h = module(h)
            return h

        # static shapes: one compilation per batch shape (a cohort has two: full batches and the last one);
        # automatic dynamic shapes would kick in on the second shape and give slower kernels
        run = torch.compile(features, dynamic=False) if compile else features

        def encode(x: Tensor) -> Tensor:
            self._check_input(x, "x")
            h = run(x.to(dtype).contiguous(memory_format=layout))
            if enc.map_shape is not None and tuple(h.shape[2:]) != enc.map_shape:
                raise DiffAEConfigError(
                    f"enc_pool flatten: the encoder was built for a {enc.map_shape} feature "
                    f"map, got {tuple(h.shape[2:])} from an input of {tuple(x.shape[2:])}"
                )
            return head(h.float())

        return encode

    def forward(self, x_t: Tensor, t: Tensor, z_sem: Tensor) -> Tensor:
        """Noise prediction for x_t at integer timesteps t (B,) (or one scalar) in [0, T), given z_sem (B,
        latent_dim)."""
        self._check_unet_input(x_t)
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,) or z_sem.shape != (b, self.cfg.latent_dim):
            raise DiffAEConfigError(
                f"expected t of shape ({b},) and z_sem of shape ({b}, {self.cfg.latent_dim}) "
                f"for x_t of batch {b}, got {tuple(t.shape)} and {tuple(z_sem.shape)}"
            )
        # the network may run in another dtype than its inputs (DeepSpeed's bf16 casts the parameters): the
        # caller's tensors (the fp32 diffusion schedule's x_t) are cast in, the prediction is cast back
        dtype = self.out[-1].weight.dtype
        emb = self.time_embed(t)
        z_sem = z_sem.to(dtype)
        hs = []
        h = x_t.to(dtype)
        for module in self.input_blocks:
            h = run_block(module, self.activation_checkpointing, h, emb, z_sem)
            hs.append(h)
        h = run_block(self.middle_block, self.activation_checkpointing, h, emb, z_sem)
        for module in self.output_blocks:
            # decoder input: running features first, then the matching skip
            h = run_block(module, self.activation_checkpointing, torch.cat([h, hs.pop()], dim=1), emb, z_sem)
        return self.out(h).to(x_t.dtype)
