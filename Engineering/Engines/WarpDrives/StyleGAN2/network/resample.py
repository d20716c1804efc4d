"""FIR resampling of StyleGAN2 (Karras et al., CVPR 2020) in plain torch: no custom op, nothing compiled.

The paper's ``upfirdn2d`` zero-inserts (``up``), pads, convolves with a 2D FIR filter and decimates (``down``).
Here the same result comes from polyphase forms: a depthwise strided ``conv_transpose2d`` for ``up = 2`` (it never
multiplies the inserted zeros) and a depthwise strided ``conv2d`` for ``down = 2`` (it never computes the dropped
outputs). ``tests/stylegan/test_stylegan2.py`` checks both against the naive formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_kernel(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable 2D FIR filter of 1D ``taps``, normalised to sum 1 ([1, 3, 3, 1]: a binomial blur)."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Zero-insert by ``up``, pad by ``pad`` (before, after; both axes), convolve with ``kernel``, keep every
    ``down``-th sample. ``x``: (B, C, H, W); the kernel is applied to each channel alone. ``up`` and ``down`` are
    not both > 1 (StyleGAN2 never needs that)."""
    if up > 1 and down > 1:
        raise ValueError("upfirdn2d: up and down cannot both exceed 1")
    c = x.shape[1]
    k = kernel.to(x)
    kh = k.shape[0]
    if up > 1:
        # conv_transpose2d(stride=up) is the true convolution of the zero-inserted signal, with the full support
        # (kh - 1 samples before the first input); the requested padding then only moves the window
        w = k[None, None].expand(c, 1, kh, kh)
        y = F.conv_transpose2d(x, w, stride=up, groups=c)
        start = kh - 1 - pad[0]
        n_h, n_w = (n * up + pad[0] + pad[1] - kh + 1 for n in x.shape[-2:])
        # the window may reach before the full output (padding beyond kh - 1) or after it (the zero-inserted
        # signal ends in up - 1 zeros that conv_transpose2d does not emit): zeros there
        lead = max(0, -start)
        y = F.pad(y, (lead, max(0, start + n_w - y.shape[-1]), lead, max(0, start + n_h - y.shape[-2])))
        start += lead
        return y[..., start : start + n_h, start : start + n_w]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))  # negative amounts crop
    w = torch.flip(k, (0, 1))[None, None].expand(c, 1, kh, kh)  # conv2d correlates: flip for a convolution
    return F.conv2d(x, w, stride=down, groups=c)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample by ``factor`` with the FIR filter (gain factor**2 keeps the mean): H x W -> factor*H x factor*W."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Filter, then keep every ``factor``-th sample: H x W -> H/factor x W/factor."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def blur2d(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """The FIR filter alone (the anti-aliasing around strided and transposed convolutions)."""
    return upfirdn2d(x, kernel * gain, pad=pad)
