"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., ICML 2020), in its
multi-positive form: V >= 2 views per sample; every view is an anchor whose positives are the other V-1 views
of the same sample and whose negatives are every view of the other samples (the SupCon form of Khosla et al.,
NeurIPS 2020 with the sample as the label). For V = 2 it is SimCLR's loss exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``z`` is (N, V, D) projections of V views of N samples; the mean loss over the N*V anchors."""
    n, v, _ = z.shape
    if v < 2 or n < 2:
        raise ValueError(f"nt_xent needs at least 2 samples and 2 views, got N={n}, V={v}")
    flat = F.normalize(z.reshape(n * v, -1).float(), dim=1)
    logits = flat @ flat.t() / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is never its own positive or negative
    owner = torch.arange(n, device=z.device).repeat_interleave(v)
    positive = (owner[:, None] == owner[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / (v - 1)).mean()
