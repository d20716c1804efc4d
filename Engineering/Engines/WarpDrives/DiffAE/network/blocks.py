"""Building blocks of the DiffAE networks (BeatGANs / guided-diffusion family).

Module and attribute names (``in_layers``, ``emb_layers``, ``cond_emb_layers``,
``out_layers``, ``skip_connection``, ``norm``, ``qkv``, ``proj_out``) and the
Sequential indices are part of the published checkpoint layout: keep them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn


def conv_nd(dims: int, c_in: int, c_out: int, kernel: int) -> nn.Module:
    """'Same' convolution in 1, 2 or 3 dimensions."""
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return cls(c_in, c_out, kernel, padding=kernel // 2)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer that closes a residual branch: each block starts as the identity (as in DDPM/DiffAE)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def run_block(module: nn.Module, checkpointing: bool, *args: Tensor) -> Tensor:
    """One block, with activation checkpointing when asked and gradients are being taken: its activations are
    recomputed in the backward pass instead of kept (Chen et al., 2016, "Training Deep Nets with Sublinear
    Memory Cost"); the non-reentrant form, which supports keyword-free inputs that do not require grad."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (unscaled, integer) timesteps: [cos, sin] halves (guided-diffusion order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half * torch.arange(half, dtype=torch.float32, device=t.device))
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Resample(nn.Module):
    """Parameter-free 2x down (average pooling) or up (nearest) sampling.

    ``in_plane_only`` (3D) leaves the first spatial axis alone, as the published model.
    """

    def __init__(self, mode: str, dims: int, in_plane_only: bool):
        super().__init__()
        self.mode = mode
        self.dims = dims
        self.factor = (1, 2, 2) if (dims == 3 and in_plane_only) else (2,) * dims

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "down":
            if (
                self.factor[-2:] == (2, 2)
                and all(f == 1 for f in self.factor[:-2])
                and x.shape[-1] % 2 == 0
                and x.shape[-2] % 2 == 0
            ):
                # 2x2 in-plane mean as four strided views: any dtype and memory format without the copies that
                # the pooling kernels make (bf16 on CPU has no 3D pooling kernel; channels-last is converted)
                top, bottom = x[..., 0::2, :], x[..., 1::2, :]
                return ((top[..., 0::2] + top[..., 1::2]) + (bottom[..., 0::2] + bottom[..., 1::2])) * 0.25
            pool = F.avg_pool3d if self.dims == 3 else F.avg_pool2d
            if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
                return pool(x.float(), self.factor).to(x.dtype)  # no half-precision 3D pooling kernel on CPU
            return pool(x, self.factor)
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")

    def extra_repr(self) -> str:
        return f"mode={self.mode}, factor={self.factor}"


class FastDropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from a uniform draw: torch's CPU dropout draws one Bernoulli per element,
    which took 12 % of a 2D training step (5 % in 3D); the same distribution from ``rand_like`` costs half.
    Elsewhere (CUDA's fused kernel) it is nn.Dropout."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # 0 or 1/(1-p)
        return x * keep


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-conv, then (if conditioned) norm, time scale-shift, z_sem scale, SiLU, dropout, conv.

    With ``emb_dim`` the block is conditioned as in DiffAE: the time embedding gives a
    scale and a shift, the semantic code a second scale, both applied right after the
    second GroupNorm: h = GN(h) * (1 + s_t) + b_t, then h = h * (1 + s_z).
    Without ``emb_dim`` (the semantic encoder) the block is only norm-SiLU-conv plus skip.
    ``resample`` ("down"/"up") resamples inside the block, between the first
    activation and conv, and on the skip path.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        dims: int,
        groups: int,
        emb_dim: int | None = None,
        dropout: float = 0.0,
        resample: Resample | None = None,
    ):
        super().__init__()
        self.c_out = c_out
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), conv_nd(dims, c_in, c_out, 3))
        self.resample = resample
        self.conditioned = emb_dim is not None
        if self.conditioned:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
            self.out_layers = nn.Sequential(
                nn.GroupNorm(groups, c_out), nn.SiLU(), FastDropout(dropout), zero_init(conv_nd(dims, c_out, c_out, 3))
            )
        self.skip_connection = nn.Identity() if c_in == c_out else conv_nd(dims, c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        norm, act, conv = self.in_layers
        if self.resample is not None:
            h = conv(self.resample(act(norm(x))))
            x = self.resample(x)
        else:
            h = conv(act(norm(x)))
        if self.conditioned:
            norm2, act2, drop, conv2 = self.out_layers
            bcast = (-1, self.c_out) + (1,) * (h.ndim - 2)
            scale, shift = self.emb_layers(emb).view(bcast[0], 2 * self.c_out, *bcast[2:]).chunk(2, dim=1)
            cscale = 1 + self.cond_emb_layers(cond).view(bcast)
            # ((GN(h) * (1 + s_t) + b_t) * (1 + s_z)) folded into one multiply-add over the feature map
            h = torch.addcmul(shift * cscale, norm2(h), (1 + scale) * cscale)
            h = conv2(drop(act2(h)))
        return self.skip_connection(x) + h


# Elements of one (query chunk x keys) probability block in the fallback attention backward: 128 MB in
# float32. Smaller blocks are slower on CPU (the dK/dV GEMMs get a short inner dimension).
_CHUNK_ELEMS = 1 << 25
# The fused (flash) CPU attention kernel; where torch has it, SDPA's own backward is fused too.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class _SDPAChunkedBackward(torch.autograd.Function):
    """Softmax attention on CPU for torch releases without the fused CPU kernel: SDPA forward, query-chunked
    recomputing backward.

    Without the fused kernel, SDPA's backward is the explicit-softmax one, which keeps every (tokens x tokens)
    matrix alive (12,800 tokens in the published 3D model: 655 MB per head and sample). This backward rebuilds
    the probabilities one block of queries at a time, with batched GEMMs (the FlashAttention-2 backward
    equations): memory stays at one block and the work runs on the multi-threaded BLAS. Where the fused kernel
    exists its own backward is used instead: in torch 2.13 it measured faster than this one (the published
    shape's attention block forward + backward: fp32 1.58 vs 2.10 s, bf16 1.43 vs 1.97 s) and held 55 MB
    against 441.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(q, k, v)
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, out = ctx.saved_tensors
        q_shape, kv_shape, dtype = q.shape, k.shape, q.dtype
        n_k, d = k.shape[-2], q.shape[-1]
        # (batch*heads, tokens, d) in float32: softmax gradients need float32 accumulation
        q, k, v, out, d_out = (t.reshape(-1, t.shape[-2], d).float() for t in (q, k, v, out, d_out))
        scale = d**-0.5
        rows = max(1, _CHUNK_ELEMS // max(1, n_k * q.shape[0]))
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        # delta_i = sum_j P_ij dP_ij = rowsum(dO_i * O_i): the softmax Jacobian's correction term
        neg_delta = -(d_out * out).sum(-1, keepdim=True)
        k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
        for s in range(0, q.shape[1], rows):
            sl = slice(s, s + rows)
            q_c, do_c = q[:, sl], d_out[:, sl]
            p = torch.softmax(torch.bmm(q_c, k_t).mul_(scale), dim=-1)
            dv.baddbmm_(p.transpose(1, 2), do_c)
            ds = torch.baddbmm(neg_delta[:, sl], do_c, v_t).mul_(p)  # dS = P * (dP - delta)
            dq[:, sl] = torch.bmm(ds, k)
            dk.baddbmm_(ds.transpose(1, 2), q_c)
        dq.mul_(scale)
        dk.mul_(scale)
        return dq.view(q_shape).to(dtype), dk.view(kv_shape).to(dtype), dv.view(kv_shape).to(dtype)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (..., tokens, d) tensors, through SDPA (fused forward and backward on CPU;
    the chunked backward above where torch lacks the fused CPU kernel)."""
    if (
        _FLASH_CPU is None
        and q.device.type == "cpu"
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    ):
        return _SDPAChunkedBackward.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    The qkv projection's output is laid out head by head ([q, k, v] per head), as the
    published weights (guided-diffusion "legacy" order). Attention itself goes through
    ``scaled_dot_product_attention`` (default 1/sqrt(head_dim) scaling), which never
    materialises the (tokens x tokens) matrix on CPU: in 3D that matrix dominated the
    ancestor's cost. Training uses SDPA's fused backward (see ``attention``).
    """

    def __init__(self, channels: int, groups: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = conv_nd(1, channels, 3 * channels, 1)
        self.proj_out = zero_init(conv_nd(1, channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        n = flat.shape[-1]
        d = c // self.num_heads
        # token-major projections, so q, k, v have unit stride on their channel axis:
        # the fused (flash) CPU kernel of SDPA requires it, else torch falls back to explicit softmax
        tokens = self.norm(flat).transpose(1, 2)  # (b, n, c) view
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # (b, n, 3c)
        q, k, v = qkv.view(b, n, self.num_heads, 3 * d).transpose(1, 2).split(d, dim=-1)  # (b, heads, n, d)
        a = attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        out = F.linear(a, self.proj_out.weight.squeeze(-1), self.proj_out.bias)  # (b, n, c)
        return (flat + out.transpose(1, 2)).view(x.shape)


class EmbedSequential(nn.Sequential):
    """A Sequential that hands the time embedding and z_sem condition to its ResBlocks."""

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x
