"""The two pythae models that need a small subclass to work in our pipeline (pythae 0.1.2).

pythae: Chadebec et al., "Pythae: Unifying Generative Autoencoders in Python", NeurIPS 2022.
Every other model is used as pythae ships it.

- HVAE with ``reconstruction_loss='bce'`` reads the decoder output as Bernoulli *logits*
  (and warns about it), unlike every other pythae model, which reads probabilities. Our
  decoders end in a sigmoid for BCE, so this subclass computes BCE on probabilities, as
  RHVAE does.
- RHVAE keeps the metric it learns (the matrices M and centroids gathered during an epoch
  and frozen by ``update()``) in plain attributes, outside ``state_dict``, so a checkpoint
  would lose it and ``.to(device)`` would not move it. This subclass saves it as module
  extra state (one tensor), moves it with the module, and skips ``update()`` when nothing was gathered.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from pythae.models import HVAE as _HVAE
from pythae.models import RHVAE as _RHVAE


class HVAE(_HVAE):
    """pythae's HVAE; BCE on decoder probabilities instead of logits."""

    def _log_p_x_given_z(self, recon_x, x):
        if self.model_config.reconstruction_loss == "bce":
            b = x.shape[0]
            return -F.binary_cross_entropy(recon_x.reshape(b, -1), x.reshape(b, -1), reduction="none").sum(dim=-1)
        return super()._log_p_x_given_z(recon_x, x)


class RHVAE(_RHVAE):
    """pythae's RHVAE with its learned metric checkpointed and device-aware."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._initial_metric = (self.G, self.G_inv)  # pythae's starting metric (identity-like)
        self._metric_updated = False

    def update(self):
        if len(self.M) == 0:  # no training batch since the last update: keep the current metric
            return
        super().update()
        self._metric_updated = True

    # One tensor (not a dict) so that safetensors exports can hold it: row i is
    # [M_i flattened (L*L), centroid_i (L)]; zero rows = metric not learned yet.
    def get_extra_state(self):
        d = self.latent_dim
        if not self._metric_updated:
            return torch.zeros(0, d * d + d)
        return torch.cat([self.M_tens.detach().reshape(-1, d * d), self.centroids_tens.detach()], 1).cpu()

    def set_extra_state(self, state):
        if state is None or state.numel() == 0:  # checkpoint from before the first update
            self.G, self.G_inv = self._initial_metric
            self._metric_updated = False
            return
        d = self.latent_dim
        device = next(self.parameters()).device
        state = state.to(device)
        pending_M, pending_c = self.M, self.centroids  # keep what this epoch gathered so far
        self.M = deque([state[:, : d * d].reshape(-1, d, d)])
        self.centroids = deque([state[:, d * d :]])
        super().update()
        self.M, self.centroids = pending_M, pending_c
        self._metric_updated = True

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if isinstance(getattr(self, "M_tens", None), torch.Tensor):
            self.M_tens = fn(self.M_tens)
            self.centroids_tens = fn(self.centroids_tens)
        return out
