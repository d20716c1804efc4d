"""Loss pieces of IP-IRM (Wang et al., "Self-Supervised Learning Disentangled Group Representation as Feature",
NeurIPS 2021): contrastive losses restricted to a (hard or soft) subset of the batch, the IRMv1 penalty
(Arjovsky et al., 2019) and the balance constraint of the partition search, for any number K of subsets.

Pure functions of tensors; the IP-IRM task (minimisation and maximisation steps) builds on them.

Conventions: ``z1``, ``z2`` are (N, D) projections of two views of N samples; similarities are cosine / tau.
For anchor view i of sample n the positive is the other view of n and the candidates are the 2N - 2 views of
the other samples.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def _pair_logits(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(2N, 2N) similarity logits with the self-similarities at -inf, and the index of each anchor's positive."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    logits = z @ z.t() / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return logits, pos


def subset_infonce(z1: torch.Tensor, z2: torch.Tensor, member: torch.Tensor, tau: float = 0.5,
                   scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """InfoNCE over the samples of one subset: anchors and negatives only from ``member`` (a (N,) bool mask).
    ``scale`` multiplies the logits (the IRMv1 dummy classifier)."""
    keep = torch.cat([member, member])
    logits, pos = _pair_logits(z1, z2, tau)
    logits = logits * scale
    sub = logits[keep][:, keep]
    idx = torch.nonzero(keep).flatten()
    where = {int(j): k for k, j in enumerate(idx.tolist())}
    target = torch.tensor([where[int(p)] for p in pos[keep].tolist()], device=sub.device)
    return F.cross_entropy(sub, target)


def soft_subset_loss(z1: torch.Tensor, z2: torch.Tensor, weight: torch.Tensor, tau: float = 0.5,
                     scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The contrastive loss of a soft subset: per-sample weights ``weight`` (N,) in [0, 1].

    For the anchor view i of sample n: -log(e^{s_ip} / (e^{s_ip} + sum_j nu_j e^{s_ij})), with the positive
    weighted 1 and the negatives' weights nu_j = w_j / mean(w over the anchor's 2N - 2 candidates) (renormalised
    to mean 1); the anchors are weighted by w_n. For 0/1 weights this is the hard subset's InfoNCE with its
    negative sum multiplied by (2N - 2) / (2m - 2) for a subset of m samples: the documented rescaling (the soft
    loss sees as many effective negatives as the whole batch).
    """
    logits, pos = _pair_logits(z1, z2, tau)
    logits = logits * scale
    n2 = logits.shape[0]
    w = torch.cat([weight, weight]).float()
    candidates = torch.ones(n2, n2, dtype=torch.bool, device=logits.device)
    candidates.fill_diagonal_(False)
    candidates[torch.arange(n2), pos] = False
    wj = w[None, :].expand(n2, n2) * candidates
    nu = wj / (wj.sum(1, keepdim=True) / candidates.sum(1, keepdim=True)).clamp_min(1e-12)
    s_pos = logits[torch.arange(n2), pos]
    # log of e^{s_pos} + sum_j nu_j e^{s_ij}, stably
    neg = torch.where(candidates & (nu > 0), logits + torch.log(nu.clamp_min(1e-30)), torch.full_like(logits, -torch.inf))
    denom = torch.logsumexp(torch.cat([s_pos[:, None], neg], 1), 1)
    per_anchor = denom - s_pos
    return (w * per_anchor).sum() / w.sum().clamp_min(1e-12)


def irm_penalty(loss_at: Callable[[torch.Tensor], torch.Tensor], device=None) -> torch.Tensor:
    """IRMv1: the squared gradient of ``loss_at(scale)`` with respect to a dummy scale at 1.0 (double back-prop:
    ``create_graph=True``, so the penalty trains the representation)."""
    scale = torch.tensor(1.0, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_at(scale), [scale], create_graph=True)
    return grad.pow(2)


def balance_floor(k: int, ratio: float = 2.0) -> float:
    """The entropy (nats) of the most unbalanced K-way split still allowed: one subset ``ratio`` times the size
    of each of the others. For K = 2 and 2:1 it is H(2/3, 1/3) = 0.6365, the reference's constant."""
    if k < 2 or ratio < 1:
        raise ValueError(f"balance_floor: K >= 2 and ratio >= 1, got K={k}, ratio={ratio}")
    p = [ratio] + [1.0] * (k - 1)
    total = sum(p)
    return -sum(q / total * math.log(q / total) for q in p)


def assignment_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean soft assignment (N, K) -> scalar: the balance of a partition."""
    mean = weights.mean(0).clamp_min(1e-12)
    return -(mean * mean.log()).sum()
