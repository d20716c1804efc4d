"""CutMix (Yun et al., ICCV 2019) applied consistently to images and to the latents that describe them.

The seed (Wu et al., MIDL 2022) mixed only the images, so a mixed image was paired with the unmixed image's style
codes and noise maps, and with labels that neither matched. Here one box cuts the image and every noise map (at
its own resolution), the style codes are mixed in the box's area proportion, and the loss weights the two labels
by that same proportion.
"""

from __future__ import annotations

import torch


def cutmix(
    x: torch.Tensor,
    codes: torch.Tensor | None,
    noise: list[torch.Tensor] | None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
):
    """(x, codes, noise, perm, lam): the batch with a box of each sample replaced by the same box of sample
    ``perm[i]``; ``lam`` is the kept fraction of the area (the weight of the sample's own label)."""
    b, _, h, w = x.shape
    lam = _beta(alpha, generator)
    perm = torch.randperm(b, generator=generator)
    ch, cw = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
    cy, cx = (int(torch.randint(0, n, (1,), generator=generator)) for n in (h, w))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h), max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box clipped at the border: the true kept area

    def paste(t: torch.Tensor) -> torch.Tensor:
        sy, sx = t.shape[-2] / h, t.shape[-1] / w  # the same box at this tensor's resolution
        a0, a1, b0, b1 = (
            int(y0 * sy),
            max(int(round(y1 * sy)), int(y0 * sy)),
            int(x0 * sx),
            max(int(round(x1 * sx)), int(x0 * sx)),
        )
        out = t.clone()
        out[..., a0:a1, b0:b1] = t[perm][..., a0:a1, b0:b1]
        return out

    x = paste(x)
    noise = None if noise is None else [paste(n) for n in noise]
    codes = None if codes is None else lam * codes + (1 - lam) * codes[perm]
    return x, codes, noise, perm, lam


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """One Beta(alpha, alpha) draw by inverting its CDF at a uniform from ``generator`` (torch's Beta sampler
    takes no generator, and a resumed run must draw the same boxes)."""
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, float(torch.rand(1, generator=generator))))
