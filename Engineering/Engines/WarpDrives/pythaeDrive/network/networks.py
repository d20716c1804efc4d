"""Encoders, decoders, discriminator and metric network for pythae models on 2D/3D images.

pythae (Chadebec et al., "Pythae: Unifying Generative Autoencoders in Python", NeurIPS 2022)
accepts any ``BaseEncoder``/``BaseDecoder``; these are ours, for B x C x X x Y images and
B x C x S x X x Y volumes of any size and channel count.

Geometry: ``n_levels`` stride-2 stages, but an axis is only halved while it is long enough
(an axis of length 4 is halved twice, then kept), so thin volumes (few slices) work.
Each axis is zero-padded up to a multiple of its total downsampling factor on the way in,
and the decoder crops back to the input size, so odd sizes (13 x 17, ...) reconstruct to
exactly the input size.

Families: ``conv`` (conv -> GroupNorm -> SiLU per stage) and ``resnet`` (a pre-activation
residual block before each downsampling / after each upsampling). GroupNorm, not BatchNorm:
several pythae models push unusual batches through the same nets (FactorVAE's half batches,
IWAE's B*K samples, VAMP's pseudo-inputs), which would corrupt batch statistics.

What each pythae model reads from the encoder (``ModelOutput`` keys):
  embedding                    every model (the posterior mean / the code)
  log_covariance               Gaussian-posterior models (vae, beta_vae, iwae, vamp, hvae, ...)
  log_concentration (B x 1)    svae (von Mises-Fisher) and pvae with a Riemannian-normal posterior
  embedding as a token grid    vqvae: (B, D, T, 1) = T tokens of D dims (``vq_code_dim`` = D > 1);
                               a flat (B, L) embedding makes pythae quantise each of the L
                               scalars separately (``vq_code_dim`` = 1, pythae's own behaviour).
pvae also needs the embedding to lie on the Poincaré ball: the encoder maps it there with
the ball's exponential map at 0 (as in Mathieu et al., 2019) and pythae's own projection,
which keeps it a float-safe distance inside the boundary (on it, pythae's KL is NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseDiscriminator, BaseEncoder, BaseMetric
from pythae.models.pvae.pvae_utils import PoincareBall, _project

FAMILIES = ("conv", "resnet")


@dataclass(frozen=True)
class Geometry:
    """Spatial plan shared by an encoder and its decoder.

    in_channels: image channels C.
    input_shape: spatial size, (X, Y) or (S, X, Y).
    n_levels: number of downsampling stages (an axis stops halving when it reaches 1).
    """

    in_channels: int
    input_shape: tuple[int, ...]
    n_levels: int = 3

    @property
    def ndim(self) -> int:
        return len(self.input_shape)

    @property
    def halvings(self) -> tuple[int, ...]:
        # an axis of length n is halved at most floor(log2(n)) times
        return tuple(min(self.n_levels, int(math.floor(math.log2(n)))) if n > 1 else 0 for n in self.input_shape)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(-(-n // 2**k) * 2**k for n, k in zip(self.input_shape, self.halvings))

    @property
    def bottleneck_shape(self) -> tuple[int, ...]:
        return tuple(p // 2**k for p, k in zip(self.padded_shape, self.halvings))

    def strides(self, level: int) -> tuple[int, ...]:
        return tuple(2 if level < k else 1 for k in self.halvings)

    def pad_widths(self) -> list[tuple[int, int]]:
        """(before, after) zero padding per axis, in axis order."""
        out = []
        for n, p in zip(self.input_shape, self.padded_shape):
            before = (p - n) // 2
            out.append((before, p - n - before))
        return out


def _conv(ndim: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv2d if ndim == 2 else nn.Conv3d)(*args, **kwargs)


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


def _widths(n_features: int, n_levels: int) -> list[int]:
    # width after the stem and after each downsampling stage, capped at 8x
    return [n_features * 2 ** min(i, 3) for i in range(n_levels + 1)]


def _pad(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    widths = geo.pad_widths()
    if not any(a or b for a, b in widths):
        return x
    flat: list[int] = []
    for a, b in reversed(widths):  # F.pad lists the last axis first
        flat += [a, b]
    return F.pad(x, flat)


def _crop(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    idx = [slice(None), slice(None)]
    for (a, _), n in zip(geo.pad_widths(), geo.input_shape):
        idx.append(slice(a, a + n))
    return x[tuple(idx)]


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x))))))."""

    def __init__(self, ndim: int, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(ch),
            nn.SiLU(),
            _conv(ndim, ch, ch, 3, padding=1),
            _norm(ch),
            nn.SiLU(),
            _conv(ndim, ch, ch, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


def _down(ndim: int, c_in: int, c_out: int, stride: Sequence[int]) -> nn.Module:
    # kernel 4 / pad 1 halves an even axis exactly; kernel 3 / pad 1 keeps it
    kernel = tuple(4 if s == 2 else 3 for s in stride)
    return _conv(ndim, c_in, c_out, kernel, stride=tuple(stride), padding=1)


def _up(ndim: int, c_in: int, c_out: int, stride: Sequence[int]) -> nn.Module:
    layers: list[nn.Module] = []
    if any(s > 1 for s in stride):
        layers.append(nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode="nearest"))
    layers.append(_conv(ndim, c_in, c_out, 3, padding=1))
    return nn.Sequential(*layers)


class Trunk(nn.Module):
    """Image -> feature map at the bottleneck; ``stages[i]`` is stem (i=0) or level i-1.

    Kept as a list of stages so the VAEGAN discriminator can expose intermediate features.
    """

    def __init__(self, geo: Geometry, family: str, n_features: int):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown network family {family!r}; valid: {', '.join(FAMILIES)}")
        self.geo = geo
        nd, w = geo.ndim, _widths(n_features, geo.n_levels)
        stages = [_conv(nd, geo.in_channels, w[0], 3, padding=1)]
        for lvl in range(geo.n_levels):
            body: list[nn.Module] = [ResBlock(nd, w[lvl])] if family == "resnet" else []
            body += [_down(nd, w[lvl], w[lvl + 1], geo.strides(lvl)), _norm(w[lvl + 1]), nn.SiLU()]
            stages.append(nn.Sequential(*body))
        if family == "resnet":
            stages[-1].append(ResBlock(nd, w[-1]))
        self.stages = nn.ModuleList(stages)
        self.out_channels = w[-1]
        self.out_features = w[-1] * math.prod(geo.bottleneck_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _pad(x, self.geo)
        for stage in self.stages:
            h = stage(h)
        return h


def _check_input(x: torch.Tensor, geo: Geometry, who: str) -> None:
    want = (geo.in_channels,) + tuple(geo.input_shape)
    if tuple(x.shape[1:]) != want:
        raise ValueError(f"{who} expects inputs of shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")


def tokens_to_flat(q: torch.Tensor) -> torch.Tensor:
    """(B, D, T, 1) token grid (pythae's VQ layout) -> (B, T*D), token-major."""
    return q.squeeze(-1).permute(0, 2, 1).reshape(q.shape[0], -1)


def flat_to_tokens(z: torch.Tensor, code_dim: int) -> torch.Tensor:
    """(B, T*D) -> (B, D, T, 1), the inverse of :func:`tokens_to_flat`."""
    return z.reshape(z.shape[0], -1, code_dim).permute(0, 2, 1).unsqueeze(-1)


class Encoder(BaseEncoder):
    """Image encoder returning what a pythae model reads (see module docstring).

    log_covariance / log_concentration: add these heads.
    poincare_curvature: map the embedding onto the Poincaré ball of that curvature (pvae).
    vq_code_dim: > 1 returns a (B, vq_code_dim, latent_dim // vq_code_dim, 1) token grid (vqvae).
    """

    def __init__(
        self,
        geo: Geometry,
        family: str,
        n_features: int,
        latent_dim: int,
        log_covariance: bool = False,
        log_concentration: bool = False,
        poincare_curvature: float | None = None,
        vq_code_dim: int = 1,
    ):
        BaseEncoder.__init__(self)
        if vq_code_dim < 1 or latent_dim % vq_code_dim:
            raise ValueError(f"vq_code_dim ({vq_code_dim}) must divide latent_dim ({latent_dim})")
        self.geo, self.latent_dim, self.vq_code_dim = geo, latent_dim, vq_code_dim
        self.trunk = Trunk(geo, family, n_features)
        feat = self.trunk.out_features
        self.embedding = nn.Linear(feat, latent_dim)
        self.log_covariance = nn.Linear(feat, latent_dim) if log_covariance else None
        self.log_concentration = nn.Linear(feat, 1) if log_concentration else None
        self.ball = PoincareBall(dim=latent_dim, c=poincare_curvature) if poincare_curvature is not None else None

    def forward(self, x: torch.Tensor) -> ModelOutput:
        _check_input(x, self.geo, "encoder")
        h = self.trunk(x).flatten(1)
        emb = self.embedding(h)
        if self.ball is not None:  # exp map at 0, then keep a float-safe distance from the boundary
            emb = _project(self.ball.expmap0(emb), self.ball.c)
        if self.vq_code_dim > 1:
            emb = flat_to_tokens(emb, self.vq_code_dim)
        out = ModelOutput(embedding=emb)
        if self.log_covariance is not None:
            out["log_covariance"] = self.log_covariance(h)
        if self.log_concentration is not None:
            out["log_concentration"] = self.log_concentration(h)
        return out


class Decoder(BaseDecoder):
    """Latent (B, latent_dim) -- or a (B, D, T, 1) VQ token grid -- to an image of the input size.

    output_activation: 'identity', 'sigmoid' (needed by BCE) or 'tanh'.
    """

    def __init__(
        self, geo: Geometry, family: str, n_features: int, latent_dim: int, output_activation: str = "identity"
    ):
        BaseDecoder.__init__(self)
        if family not in FAMILIES:
            raise ValueError(f"unknown network family {family!r}; valid: {', '.join(FAMILIES)}")
        acts = {"identity": nn.Identity(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}
        if output_activation not in acts:
            raise ValueError(f"unknown output activation {output_activation!r}; valid: {', '.join(acts)}")
        self.geo, self.latent_dim = geo, latent_dim
        nd, w = geo.ndim, _widths(n_features, geo.n_levels)
        self.fc = nn.Linear(latent_dim, w[-1] * math.prod(geo.bottleneck_shape))
        stages: list[nn.Module] = [ResBlock(nd, w[-1])] if family == "resnet" else []
        for lvl in reversed(range(geo.n_levels)):
            stages += [_up(nd, w[lvl + 1], w[lvl], geo.strides(lvl)), _norm(w[lvl]), nn.SiLU()]
            if family == "resnet":
                stages.append(ResBlock(nd, w[lvl]))
        stages.append(_conv(nd, w[0], geo.in_channels, 3, padding=1))
        self.body = nn.Sequential(*stages)
        self.activation = acts[output_activation]
        self._width = w[-1]

    def forward(self, z: torch.Tensor) -> ModelOutput:
        if z.dim() == 4:  # VQ token grid
            z = tokens_to_flat(z)
        h = self.fc(z.reshape(z.shape[0], -1)).reshape((z.shape[0], self._width) + self.geo.bottleneck_shape)
        x = _crop(self.body(h), self.geo)
        return ModelOutput(reconstruction=self.activation(x))


class Discriminator(BaseDiscriminator):
    """Image discriminator for VAEGAN, with pythae's ``output_layer_levels`` protocol.

    Layers 1..n_levels+1 are the conv stages (stem + one per level), layer n_levels+2 a
    hidden dense layer, the last one the sigmoid real/fake score (``embedding``). pythae's
    ``reconstruction_layer`` counts these layers from 1; its default -1 means the last one.
    """

    def __init__(self, geo: Geometry, family: str, n_features: int, hidden: int = 256):
        BaseDiscriminator.__init__(self)
        self.geo = geo
        trunk = Trunk(geo, family, n_features)
        self.layers = nn.ModuleList(
            list(trunk.stages)
            + [
                nn.Sequential(nn.Flatten(1), nn.Linear(trunk.out_features, hidden), nn.LeakyReLU(0.2)),
                nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()),
            ]
        )
        self.depth = len(self.layers)

    def forward(self, x: torch.Tensor, output_layer_levels: list[int] | None = None) -> ModelOutput:
        out = ModelOutput()
        max_depth = self.depth
        if output_layer_levels is not None:
            bad = [lv for lv in output_layer_levels if not (0 < lv <= self.depth or lv == -1)]
            if bad:
                raise ValueError(f"discriminator has {self.depth} layers; cannot output layers {bad}")
            if -1 not in output_layer_levels:
                max_depth = max(output_layer_levels)
        h = _pad(x, self.geo)
        for i in range(max_depth):
            h = self.layers[i](h)
            if output_layer_levels is not None and (
                i + 1 in output_layer_levels or (-1 in output_layer_levels and i + 1 == self.depth)
            ):
                out[f"embedding_layer_{i + 1}"] = h
            if i + 1 == self.depth:
                out["embedding"] = h
        return out


class Metric(BaseMetric):
    """RHVAE metric network: image -> lower-triangular L with a positive diagonal (as pythae's Metric_MLP).

    The diagonal goes through exp(), so the heads read globally pooled features through a
    hidden layer (pythae's MLP uses 400 ReLU units): feeding exp() from thousands of
    flattened features let one Adam step at lr 1e-3 blow the metric up (NaN on the demo data).
    """

    def __init__(self, geo: Geometry, family: str, n_features: int, latent_dim: int, hidden: int = 400):
        BaseMetric.__init__(self)
        self.latent_dim = latent_dim
        self.trunk = Trunk(geo, family, n_features)
        self.hidden = nn.Sequential(nn.Linear(self.trunk.out_channels, hidden), nn.ReLU())
        self.diag = nn.Linear(hidden, latent_dim)
        self.lower = nn.Linear(hidden, latent_dim * (latent_dim - 1) // 2)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.trunk(x)
        h = self.hidden(h.mean(dim=tuple(range(2, h.dim()))))
        d = self.latent_dim
        rows, cols = torch.tril_indices(d, d, offset=-1, device=x.device)
        L = torch.zeros(x.shape[0], d, d, device=x.device, dtype=h.dtype)
        L[:, rows, cols] = self.lower(h)
        return ModelOutput(L=L + torch.diag_embed(self.diag(h).exp()))
