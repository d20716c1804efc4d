"""Complex batch normalisation (Trabelsi et al., "Deep Complex Networks", ICLR 2018, section 3.5), 2D and 3D.

Per channel, the complex values are treated as 2-vectors (Re, Im). Centring alone, or scaling Re and Im separately
(two real BNs), would leave them correlated and of unequal spread; the paper instead WHITENS them:

    x_tilde = V^(-1/2) (x - E[x]),   V = [[Vrr, Vri], [Vri, Vii]] + eps I,   Vrr = Var(Re), Vii = Var(Im), Vri = Cov

so x_tilde has mean 0 and covariance I. The inverse square root of a 2x2 SPD matrix has a closed form: with
s = sqrt(det V) and t = sqrt(Vrr + Vii + 2 s), V^(-1/2) = [[Vii + s, -Vri], [-Vri, Vrr + s]] / (s t).
Then a learnable symmetric 2x2 scaling gamma = [[g_rr, g_ri], [g_ri, g_ii]] and a complex shift beta:

    out = gamma x_tilde + beta

gamma starts at g_rr = g_ii = 1/sqrt(2), g_ri = 0 (the paper's choice), so the initial output has covariance I/2, i.e.
E|out - beta|^2 = 1: unit complex variance. beta starts at 0.

Running statistics (for eval): an exponential moving average (``momentum``) of the batch mean and of the batch
covariance (unbiased, n/(n-1), as torch's real BN keeps running_var). They start at mean 0 and covariance I, so a
layer that never saw training data leaves its input unwhitened in eval, as torch's BN does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checks import ComplexAEError, check_spatial_dims, require_complex


def inverse_sqrt_2x2(
    vrr: torch.Tensor, vri: torch.Tensor, vii: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries (rr, ri, ii) of V^(-1/2) for the symmetric positive definite V = [[vrr, vri], [vri, vii]]."""
    s = torch.sqrt(vrr * vii - vri * vri)
    t = torch.sqrt(vrr + vii + 2.0 * s)
    inv = 1.0 / (s * t)
    return (vii + s) * inv, -vri * inv, (vrr + s) * inv


class ComplexBatchNorm(nn.Module):
    """Complex batch normalisation of complex (N, C, [S,] X, Y) tensors, ``spatial_dims`` 2 or 3 (see module docs).

    Parameters (when ``affine``): ``gamma_rr``, ``gamma_ri``, ``gamma_ii`` (C each, the symmetric 2x2 scaling),
    ``beta_real``, ``beta_imag``. Buffers (when ``track_running_stats``): ``running_mean`` (2, C: Re, Im) and
    ``running_covar`` (3, C: Vrr, Vri, Vii).
    """

    def __init__(
        self,
        num_features: int,
        spatial_dims: int = 2,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ComplexAEError(f"num_features must be a positive integer, got {num_features!r}")
        if not 0.0 < momentum <= 1.0:
            raise ComplexAEError(f"momentum must be in (0, 1], got {momentum!r}")
        if not eps > 0.0:
            raise ComplexAEError(f"eps must be > 0, got {eps!r}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if self.affine:
            self.gamma_rr = nn.Parameter(torch.full((num_features,), 1.0 / math.sqrt(2.0)))
            self.gamma_ri = nn.Parameter(torch.zeros(num_features))
            self.gamma_ii = nn.Parameter(torch.full((num_features,), 1.0 / math.sqrt(2.0)))
            self.beta_real = nn.Parameter(torch.zeros(num_features))
            self.beta_imag = nn.Parameter(torch.zeros(num_features))
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(2, num_features))
            covar = torch.zeros(3, num_features)
            covar[0] = covar[2] = 1.0
            self.register_buffer("running_covar", covar)

    def _batch_stats(self, re: torch.Tensor, im: torch.Tensor, dims: list[int]):
        mean_r, mean_i = re.mean(dim=dims), im.mean(dim=dims)
        view = self._view
        cr, ci = re - view(mean_r), im - view(mean_i)
        return mean_r, mean_i, (cr * cr).mean(dim=dims), (cr * ci).mean(dim=dims), (ci * ci).mean(dim=dims)

    def _view(self, per_channel: torch.Tensor) -> torch.Tensor:
        return per_channel.view(1, -1, *([1] * self.spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_complex(x, self.spatial_dims, type(self).__name__)
        if x.shape[1] != self.num_features:
            raise ComplexAEError(f"ComplexBatchNorm expects {self.num_features} channels, got {x.shape[1]}")
        re, im = x.real, x.imag
        dims = [0, *range(2, x.dim())]
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            n = x.numel() // x.shape[1]
            if self.training and n < 2:
                raise ComplexAEError(
                    f"ComplexBatchNorm needs more than one value per channel in training, got shape {tuple(x.shape)}"
                )
            mean_r, mean_i, vrr, vri, vii = self._batch_stats(re, im, dims)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    m, unbiased = self.momentum, n / (n - 1)
                    self.running_mean.lerp_(torch.stack([mean_r, mean_i]), m)
                    self.running_covar.lerp_(torch.stack([vrr, vri, vii]) * unbiased, m)
        else:
            mean_r, mean_i = self.running_mean[0], self.running_mean[1]
            vrr, vri, vii = self.running_covar[0], self.running_covar[1], self.running_covar[2]
        w_rr, w_ri, w_ii = inverse_sqrt_2x2(vrr + self.eps, vri, vii + self.eps)
        view = self._view
        cr, ci = re - view(mean_r), im - view(mean_i)
        out_r = view(w_rr) * cr + view(w_ri) * ci
        out_i = view(w_ri) * cr + view(w_ii) * ci
        if self.affine:
            out_r, out_i = (
                view(self.gamma_rr) * out_r + view(self.gamma_ri) * out_i + view(self.beta_real),
                view(self.gamma_ri) * out_r + view(self.gamma_ii) * out_i + view(self.beta_imag),
            )
        return torch.complex(out_r, out_i)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, spatial_dims={self.spatial_dims}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )
