"""Complex activations: CReLU and modReLU.

- CReLU (Trabelsi et al., "Deep Complex Networks", ICLR 2018, section 3.4): ReLU on the real and on the imaginary
  part separately, ReLU(Re z) + i ReLU(Im z). No parameters; it changes the phase (it keeps only the first quadrant).
- modReLU (Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks", ICML 2016):
  ReLU(|z| + b) * z / |z|, with a learnable real bias b per channel. It keeps the phase and thresholds the magnitude
  (b < 0 opens a dead zone of radius -b around 0). z / |z| is undefined at z = 0: there we take the phase factor as
  0, so the output is 0 and both the value and its gradient are finite.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .checks import ComplexAEError


class CReLU(nn.Module):
    """ReLU(Re z) + i ReLU(Im z) (Trabelsi et al., ICLR 2018)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not z.is_complex():
            raise ComplexAEError(f"CReLU expects a complex tensor, got {z.dtype}")
        return torch.complex(F.relu(z.real), F.relu(z.imag))


class ModReLU(nn.Module):
    """ReLU(|z| + b) * z / |z| with one learnable bias b per channel (Arjovsky et al., ICML 2016); dim 1 is channels.

    At z = 0 the phase z / |z| is undefined; the denominator is replaced by 1 where |z| = 0, so the output there is
    exactly 0 and finite, with a finite gradient. The phase factor z / |z| is formed first (bounded by 1), so tiny
    non-zero |z| cannot overflow the product.
    ``bias_init`` = -0.1 by default: a small dead zone, so the layer is not the identity at the start (with b = 0
    it would be, for every z). After complex BN with unit complex variance, |z| is about 0.9 on average.
    """

    def __init__(self, num_features: int, bias_init: float = -0.1) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ComplexAEError(f"num_features must be a positive integer, got {num_features!r}")
        self.num_features = num_features
        self.bias = nn.Parameter(torch.full((num_features,), float(bias_init)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not z.is_complex():
            raise ComplexAEError(f"ModReLU expects a complex tensor, got {z.dtype}")
        if z.dim() < 2 or z.shape[1] != self.num_features:
            raise ComplexAEError(f"ModReLU expects {self.num_features} channels in dim 1, got shape {tuple(z.shape)}")
        magnitude = z.abs()
        bias = self.bias.view(1, -1, *([1] * (z.dim() - 2))).to(magnitude.dtype)
        safe = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        return F.relu(magnitude + bias) * (z / safe)

    def extra_repr(self) -> str:
        return f"{self.num_features}"
