"""Gaussian diffusion math for DiffAE: noising, epsilon loss, DDIM sampling and inversion.

Kept apart from the network (as diffusers does): ``model`` is any callable
``(x_t, t, z_sem) -> eps`` with integer timesteps t in [0, T).

The process is DDPM's (Ho et al., 2020): T=1000 steps, betas linear in
[1e-4, 0.02], epsilon prediction. Sampling and inversion are deterministic DDIM
(Song et al., 2021, eta=0) on a respaced subset of the T timesteps; DDIM
inversion gives DiffAE's stochastic code x_T (Preechakul et al., CVPR 2022).
Schedules are held in float64 and cast per step to the data's dtype.

The training loss is the plain epsilon MSE ("uniform", DDPM's L_simple and DiffAE's) or P2-weighted
(Choi et al., "Perception Prioritized Training of Diffusion Models", CVPR 2022): each timestep's MSE
times lambda_t = 1 / (k + SNR_t)^gamma, which moves the weight from the nearly clean steps (where
x_t alone gives the answer) to the noisy ones where the content has to come from elsewhere -- for a
diffusion autoencoder, from z_sem. Weights are divided by their mean over the T steps, so the loss
keeps the uniform loss's scale. "truncated_snr" (Salimans & Ho, "Progressive Distillation", ICLR 2022)
weights each step by max(1, 1/SNR_t): the x0 error counts with weight max(SNR_t, 1), so at the noisy
steps the UNet is trained as a decoder of z_sem (not normalised: the weights are the definition).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

EpsModel = Callable[[Tensor, Tensor, Tensor], Tensor]


SPACINGS = ("ddim", "even")
WEIGHTINGS = ("uniform", "p2", "truncated_snr")


def respace_timesteps(T: int, steps: int, spacing: str = "ddim") -> Tensor:
    """The ``steps`` original timesteps (ascending) a respaced DDIM sampler visits.

    spacing "ddim" (default): DiffAE's and the ancestor's ``space_timesteps(T, "ddimN")`` of
    guided-diffusion: ``range(0, T, k)`` with the smallest integer stride k giving exactly N steps
    (T=1000, N=20: 0, 50, ..., 950; t = T-1 is not visited). "even": N timesteps rounded from
    i*(T-1)/(N-1), which includes 0 and T-1.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"the number of diffusion steps must be an integer in [1, {T}], got {steps!r}")
    if spacing == "ddim":
        for stride in range(1, T + 1):
            if len(range(0, T, stride)) == steps:
                return torch.arange(0, T, stride, dtype=torch.long)
        raise ValueError(
            f"{steps} steps of {T} cannot be spaced with an integer stride (DiffAE's ddim spacing); "
            f"choose another step count or spacing 'even'"
        )
    if spacing != "even":
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if steps == 1:
        return torch.zeros(1, dtype=torch.long)
    stride = (T - 1) / (steps - 1)
    return torch.tensor([round(i * stride) for i in range(steps)], dtype=torch.long)


class GaussianDiffusion:
    """DDPM forward process with epsilon prediction, and respaced DDIM (eta=0) sampling/inversion."""

    def __init__(
        self,
        T: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        spacing: str = "ddim",
        weighting: str = "uniform",
        p2_gamma: float = 1.0,
        p2_k: float = 1.0,
    ):
        if T < 1:
            raise ValueError(f"T must be positive, got {T}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"the loss weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if not (p2_gamma >= 0 and p2_k > 0):
            raise ValueError(f"P2 weighting needs gamma >= 0 and k > 0, got gamma={p2_gamma}, k={p2_k}")
        self.T, self.spacing = T, spacing
        self.betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.loss_weights = None  # per-timestep weights of the training loss (None: uniform)
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        if weighting == "p2":
            lam = (p2_k + snr) ** -p2_gamma
            self.loss_weights = lam / lam.mean()
        elif weighting == "truncated_snr":
            self.loss_weights = torch.clamp(1.0 / snr, min=1.0)

    # ---- helpers ---------------------------------------------------------------------
    def respace(self, steps: int) -> Tensor:
        """Original timesteps used by a ``steps``-step sampler (see ``respace_timesteps``)."""
        return respace_timesteps(self.T, steps, self.spacing)

    def _coefs(self, t: Tensor | int | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)), computed in float64 (1 - abar is tiny near t=0),
        shaped to broadcast over ``like`` (B, ...) and cast to its dtype/device.
        t=None is the end of the chain past T-1 (abar = 0); t=-1 the clean data (abar = 1)."""
        if t is None or (isinstance(t, int) and t < 0):
            ab = torch.tensor(0.0 if t is None else 1.0, dtype=torch.float64)
        else:
            ab = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]
            if ab.ndim:
                ab = ab.reshape(-1, *([1] * (like.ndim - 1)))
        return (
            ab.sqrt().to(device=like.device, dtype=like.dtype),
            (1.0 - ab).sqrt().to(device=like.device, dtype=like.dtype),
        )

    def _steps_tensor(self, t: int, like: Tensor) -> Tensor:
        return torch.full((like.shape[0],), int(t), dtype=torch.long, device=like.device)

    def sample_timesteps(self, batch: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Uniform training timesteps in [0, T)."""
        return torch.randint(0, self.T, (batch,), device=device, generator=generator)

    # ---- training --------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def loss(
        self,
        model: EpsModel,
        x0: Tensor,
        z_sem: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        weighted: bool = True,
    ) -> Tensor:
        """Epsilon MSE (mean over all elements), weighted per sample by its timestep's ``loss_weights`` (p2,
        truncated_snr) if ``weighted``. Fixed t and noise make it deterministic (validation, which reports the
        plain MSE)."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
        pred = model(self.q_sample(x0, t, noise), t, z_sem)
        if not weighted or self.loss_weights is None:
            return F.mse_loss(pred, noise)
        err = (pred - noise).square().flatten(1).mean(1)
        return (err * self.loss_weights[t.cpu()].to(device=err.device, dtype=err.dtype)).mean()

    # ---- DDIM ------------------------------------------------------------------------
    def _x0_from_eps(self, x: Tensor, t: int, eps: Tensor, clip: tuple[float, float] | None):
        a, s = self._coefs(t, x)
        x0 = (x - s * eps) / a
        if clip is not None:
            # clipped x0 implies a different eps; re-derive it so the step stays on the DDIM path
            x0 = x0.clamp(*clip)
            eps = (x - a * x0) / s
        return x0, eps

    @staticmethod
    def _work_dtype(x: Tensor) -> torch.dtype:
        # the chain's state in float64 where the device has it: at t=0 the update divides by sqrt(1 - abar) = 0.01,
        # which turns float32 rounding into ~1e-4 errors; the network still runs in the input's dtype
        return torch.float64 if x.device.type in ("cpu", "cuda") else x.dtype

    @torch.no_grad()
    def ddim_sample(
        self,
        model: EpsModel,
        x_T: Tensor,
        z_sem: Tensor,
        steps: int,
        clip: tuple[float, float] | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> Tensor:
        """Deterministic DDIM (eta=0) from x_T to x_0 over ``steps`` respaced timesteps.

        clip: clamp the predicted x0 to (lo, hi) at every step (DiffAE clips to (-1, 1) for data in that range).
        progress: optional wrapper of the step iterable (e.g. a progress bar).
        """
        ts = self.respace(steps).tolist()
        net_dtype, x = x_T.dtype, x_T.to(self._work_dtype(x_T))
        order = list(reversed(range(len(ts))))
        for i in progress(order) if progress else order:
            eps = model(x.to(net_dtype), self._steps_tensor(ts[i], x), z_sem).to(x.dtype)
            x0, eps = self._x0_from_eps(x, ts[i], eps, clip)
            a, s = self._coefs(ts[i - 1] if i > 0 else -1, x)
            x = a * x0 + s * eps
        return x.to(net_dtype)

    @torch.no_grad()
    def ddim_invert(
        self,
        model: EpsModel,
        x0: Tensor,
        z_sem: Tensor,
        steps: int,
        clip: tuple[float, float] | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> Tensor:
        """Deterministic DDIM inversion: the stochastic code x_T that ``ddim_sample`` maps back to about x0.

        Runs the DDIM update forwards in time over the same respaced timesteps, starting
        from x0 taken as the state at the first one; past the last, abar = 0. ``clip`` clamps
        the predicted x0 at every step, as DiffAE's ``ddim_reverse_sample`` (clip_denoised) does.
        """
        ts = self.respace(steps).tolist()
        net_dtype, x = x0.dtype, x0.to(self._work_dtype(x0))
        order = list(range(len(ts)))
        for i in progress(order) if progress else order:
            eps = model(x.to(net_dtype), self._steps_tensor(ts[i], x), z_sem).to(x.dtype)
            pred_x0, eps = self._x0_from_eps(x, ts[i], eps, clip)
            a, s = self._coefs(ts[i + 1] if i + 1 < len(ts) else None, x)
            x = a * pred_x0 + s * eps
        return x.to(net_dtype)
