"""Random views for contrastive learning, on a batch on the device, every draw from a torch.Generator (so that a
run resumes exactly: the engine seeds it from (seed, step, batch)).

Per sample: a random-resized crop (scale and aspect range, resized back to the input size), 90-degree rotations
and flips of the in-plane axes (note: a flip mirrors anatomy; in MRI of a lateralised organ keep it off), a
Gaussian blur with random sigma, and a per-channel standardisation of the view. MinCLR (Lin & Lu, MLCB 2022)
takes its positives from different parts of the same image: ``grid_views`` cuts each image into a g x g grid of
in-plane cells and gives each view a different cell, drawn without replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def _described(default, meaning: str):
    # the YAML key's description (model§augment§*: Engineering.config.schema.keys_from_dataclass reads it)
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class AugmentSpec:
    """The random views' parameters (model§augment)."""

    crop_scale: tuple[float, float] = _described(
        (0.5, 1.0), "Fraction of the in-plane area kept by the random-resized crop: [low, high]."
    )
    crop_ratio: tuple[float, float] = _described((0.75, 1.333), "Aspect ratio of the crop, log-uniform in [low, high].")
    rot90: bool = _described(True, "Rotate each view by a random multiple of 90 degrees in-plane (square planes only).")
    flip: bool = _described(
        True,
        "Flip each view's last axis with probability 0.5 (a flip mirrors anatomy: keep it "
        "off for a lateralised organ).",
    )
    blur_prob: float = _described(0.5, "Probability of a Gaussian blur of a view.")
    blur_sigma: tuple[float, float] = _described((0.1, 1.5), "The blur's sigma in pixels, uniform in [low, high].")
    standardise: bool = _described(True, "Standardise each view per channel (zero mean, unit standard deviation).")


def _uniform(g, lo, hi) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _crop(x: torch.Tensor, spec: AugmentSpec, g) -> torch.Tensor:
    """A random-resized crop of the last two (in-plane) axes of one sample (1, C, ..., H, W)."""
    h, w = x.shape[-2:]
    area = h * w * _uniform(g, *spec.crop_scale)
    ratio = math.exp(_uniform(g, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])))  # log-uniform
    ch, cw = max(1, min(h, round((area / ratio) ** 0.5))), max(1, min(w, round((area * ratio) ** 0.5)))
    top = int(torch.randint(0, h - ch + 1, (), generator=g))
    left = int(torch.randint(0, w - cw + 1, (), generator=g))
    return _resize(x[..., top : top + ch, left : left + cw], x.shape[2:])


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    conv = F.conv3d if x.ndim == 5 else F.conv2d
    for axis in (-2, -1):  # separable, in-plane
        shape = [1, 1] + [1] * (x.ndim - 2)
        shape[axis] = len(k)
        pad = [0, 0] * (x.ndim - 2)
        pad[(-1 - axis) * 2 : (-1 - axis) * 2 + 2] = [radius, radius]
        weight = k.reshape(shape).expand(c, *shape[1:]).contiguous()  # depthwise: one kernel per channel
        x = conv(F.pad(x, pad, mode="replicate"), weight, groups=c)
    return x


def augment(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator, crop: bool = True) -> torch.Tensor:
    """One random view of each sample of the batch x (B, C, ..., H, W)."""
    out = []
    for i in range(x.shape[0]):
        v = x[i : i + 1]
        if crop:
            v = _crop(v, spec, g)
        if spec.rot90 and v.shape[-1] == v.shape[-2]:
            v = torch.rot90(v, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))
        if spec.flip and bool(torch.rand((), generator=g) < 0.5):
            v = v.flip(-1)
        if spec.blur_prob > 0 and bool(torch.rand((), generator=g) < spec.blur_prob):
            v = _blur(v, _uniform(g, *spec.blur_sigma))
        if spec.standardise:
            dims = tuple(range(2, v.ndim))
            v = (v - v.mean(dims, keepdim=True)) / (v.std(dims, keepdim=True) + 1e-6)
        out.append(v)
    return torch.cat(out)


def grid_views(x: torch.Tensor, n_views: int, grid: int, g: torch.Generator) -> list[torch.Tensor]:
    """MinCLR: ``n_views`` different in-plane cells of a grid x grid tiling of each image (without replacement),
    each resized to the input size."""
    if n_views > grid * grid:
        raise ValueError(f"MinCLR: {n_views} views need at least {n_views} grid cells, the grid has {grid * grid}")
    h, w = x.shape[-2:]
    ch, cw = h // grid, w // grid
    views = [[] for _ in range(n_views)]
    for i in range(x.shape[0]):
        cells = torch.randperm(grid * grid, generator=g)[:n_views].tolist()
        for v, cell in enumerate(cells):
            r, c = divmod(cell, grid)
            views[v].append(_resize(x[i : i + 1, ..., r * ch : (r + 1) * ch, c * cw : (c + 1) * cw], x.shape[2:]))
    return [torch.cat(v) for v in views]
