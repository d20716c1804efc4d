"""StyleGAN2's building blocks (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020).

Equalised learning rate everywhere (weights drawn from N(0, 1), scaled at run time by He's constant, so Adam sees
every layer at the same scale); bias + leaky ReLU (slope 0.2) with gain sqrt(2); weight modulation and
demodulation; per-layer noise with a learned strength. Plain torch ops only (see ``resample``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from Engineering.Engines.WarpDrives.equalized import LRELU_GAIN, EqualLinear, bias_lrelu  # noqa: F401  (re-exported)

from .resample import blur2d, make_kernel, upsample2d


class EqualConv2d(nn.Module):
    """A convolution with equalised learning rate."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled per sample by a style (from w through an affine layer) and
    whose output channels are renormalised to unit expected variance (demodulation, replacing AdaIN). ``upsample``
    doubles the resolution with a transposed convolution followed by the FIR filter."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel=(1, 3, 3, 1),
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)  # styles start at 1: an identity
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            self.register_buffer("kernel", make_kernel(blur_kernel), persistent=False)
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur_pad = ((p + 1) // 2 + 1, p // 2 + 1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        style = self.modulation(w).view(b, 1, self.in_ch, 1, 1)
        weight = self.scale * self.weight * style  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        x = x.reshape(1, b * self.in_ch, *x.shape[2:])  # the batch as groups: one weight per sample
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * self.in_ch, self.out_ch, self.k, self.k)
            y = F.conv_transpose2d(x, weight, stride=2, groups=b)
            y = y.view(b, self.out_ch, *y.shape[2:])
            return blur2d(y, self.kernel, self.blur_pad, gain=4.0)
        y = F.conv2d(x, weight.reshape(b * self.out_ch, self.in_ch, self.k, self.k), padding=self.k // 2, groups=b)
        return y.view(b, self.out_ch, *y.shape[2:])


class NoiseInjection(nn.Module):
    """Adds per-pixel noise (one map shared by the channels) scaled by a learned strength, zero at start."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
        return x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated 3x3 convolution, noise, bias + leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return bias_lrelu(self.noise(self.conv(x, w), noise), self.bias)


class ToImage(nn.Module):
    """StyleGAN2's ToRGB for any number of output channels: a modulated 1x1 convolution without demodulation,
    added to the upsampled image of the previous resolution (the skip architecture)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.upsample = upsample
        if upsample:
            self.register_buffer("kernel", make_kernel(blur_kernel), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias.view(1, -1, 1, 1)
        if skip is not None:
            out = out + (upsample2d(skip, self.kernel) if self.upsample else skip)
        return out


class ConvLayer(nn.Module):
    """The discriminator's convolution: optional FIR filter + stride-2 (downsampling), then bias + leaky ReLU."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        downsample: bool = False,
        bias: bool = True,
        activate: bool = True,
        blur_kernel=(1, 3, 3, 1),
    ):
        super().__init__()
        self.downsample, self.activate = downsample, activate
        if downsample:
            self.register_buffer("kernel", make_kernel(blur_kernel), persistent=False)
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            self.blur_pad = ((p + 1) // 2, p // 2)
        self.conv = EqualConv2d(
            in_ch,
            out_ch,
            kernel_size,
            stride=2 if downsample else 1,
            padding=0 if downsample else kernel_size // 2,
            bias=bias and not activate,
        )
        self.act_bias = nn.Parameter(torch.zeros(out_ch)) if bias and activate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = blur2d(x, self.kernel, self.blur_pad)
        x = self.conv(x)
        if self.activate:
            x = bias_lrelu(x, self.act_bias) if self.act_bias is not None else F.leaky_relu(x, 0.2) * LRELU_GAIN
        return x


class ResBlock(nn.Module):
    """The residual discriminator block: two 3x3 convolutions (the second downsamples) beside a 1x1 downsampling
    skip, summed and divided by sqrt(2) to keep the variance."""

    def __init__(self, in_ch: int, out_ch: int, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, bias=False, activate=False, blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, n_features: int = 1) -> torch.Tensor:
    """Append the standard deviation of each feature over groups of samples, averaged over space (Karras et al.,
    ICLR 2018): the discriminator sees how varied a batch is, which discourages mode collapse."""
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:  # the largest group size <= group_size that divides the batch
        g -= 1
    y = x.view(g, -1, n_features, c // n_features, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean((2, 3, 4))  # (B/g, n_features)
    y = y.view(-1, n_features, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], 1)
