"""``crecon``: the complex reconstruction loss (the ancestor's name, GlastonburyGroup/ImLatent), on complex tensors.

kind:
- "mse" (default): |x_hat - x|^2 = (Re diff)^2 + (Im diff)^2, the squared modulus of the complex difference; the
  complex analogue of MSE (it is the MSE of the (Re, Im) pairs, times 2).
- "l1": |x_hat - x|, the modulus of the complex difference (rotation-invariant in the complex plane, unlike L1 on
  Re and Im separately).
- "xie": |Re diff| + |Im diff| + | |x_hat| - |x| |, the definition the ancestor's ``crecon`` computed (after Xie et
  al., "Complex Recurrent Variational Autoencoder with Application to Speech Enhancement", arXiv:2204.02195): L1 on
  both parts plus L1 on the magnitudes.
reduction: "mean" over every element, "sum", or "none" (the real per-element map, the input's shape).
Magnitude-based SSIM / PSNR are separate metrics, not part of this loss.
"""

from __future__ import annotations

import torch

from .checks import ComplexAEError

KINDS = ("mse", "l1", "xie")
REDUCTIONS = ("mean", "sum", "none")


def crecon(recon: torch.Tensor, target: torch.Tensor, kind: str = "mse", reduction: str = "mean") -> torch.Tensor:
    """The complex reconstruction loss of ``recon`` against ``target`` (both complex, the same shape); see module."""
    if kind not in KINDS:
        raise ComplexAEError(f"crecon kind must be one of {KINDS}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ComplexAEError(f"crecon reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (recon.is_complex() and target.is_complex()):
        raise ComplexAEError(f"crecon compares complex tensors, got {recon.dtype} and {target.dtype}")
    if recon.shape != target.shape:
        raise ComplexAEError(f"crecon needs equal shapes, got {tuple(recon.shape)} and {tuple(target.shape)}")
    diff = recon - target
    if kind == "mse":
        per_element = diff.real.square() + diff.imag.square()
    elif kind == "l1":
        per_element = diff.abs()
    else:
        per_element = diff.real.abs() + diff.imag.abs() + (recon.abs() - target.abs()).abs()
    if reduction == "mean":
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    return per_element
