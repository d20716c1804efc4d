"""Loss pieces of IP-IRM (Wang et al., "Self-Supervised Learning Disentangled Group Representation as Feature",
NeurIPS 2021): contrastive losses restricted to a (hard or soft) subset of the batch, the IRMv1 penalty
(Arjovsky et al., 2019) and the balance constraint of the partition search, for any number K of subsets.

Pure functions of tensors (the maximisation step too): the IP-IRM task builds on them.

Conventions: ``z1``, ``z2`` are (N, D) projections of two views of N samples; similarities are cosine / tau.
For anchor view i of sample n the positive is the other view of n and the candidates are the 2N - 2 views of
the other samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F


def _pair_logits(z1: torch.Tensor, z2: torch.Tensor, tau: float,
                 scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(2N, 2N) similarity logits times ``scale`` with the self-similarities at -inf (masked after scaling, so
    that d/d scale stays finite), and the index of each anchor's positive."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    logits = z @ z.t() / tau * scale
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return logits, pos


def subset_infonce(z1: torch.Tensor, z2: torch.Tensor, member: torch.Tensor, tau: float = 0.5,
                   scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """InfoNCE over the samples of one subset: anchors and negatives only from ``member`` (a (N,) bool mask).
    ``scale`` multiplies the logits (the IRMv1 dummy classifier)."""
    keep = torch.cat([member, member])
    logits, _ = _pair_logits(z1, z2, tau, scale)
    sub = logits[keep][:, keep]
    m = int(member.sum())
    # kept rows: the m members' first views, then their second views in the same order
    target = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(sub.device)
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
    logits, pos = _pair_logits(z1, z2, tau, scale)
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


def imix_loss(z_mix: torch.Tensor, z2: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor,
              weight: torch.Tensor | None = None, tau: float = 0.5, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """i-Mix (Lee et al., ICLR 2021) in its N-pair form, with per-sample mixing weights and optional subset weights.

    Anchor n is the projection of the input mix ``lam[n] * x[n] + (1 - lam[n]) * x[partner[n]]``; the candidates
    are the clean second views of the N samples. Its virtual label is ``lam[n]`` on n and ``1 - lam[n]`` on its
    partner, so each anchor's loss is ``lam[n] * CE(n) + (1 - lam[n]) * CE(partner[n])`` (the reference multiplies
    batch means instead). With subset weights ``weight`` (N,): the two targets keep weight 1, the negatives are
    weighted ``w_j`` renormalised to mean 1 (as in :func:`soft_subset_loss`) and the anchor is weighted by its
    mix's membership ``lam[n] w_n + (1 - lam[n]) w_partner``. With every weight 1 it is plain i-Mix.
    """
    n = len(z_mix)
    logits = F.normalize(z_mix.float(), dim=1) @ F.normalize(z2.float(), dim=1).t() / tau * scale
    rows = torch.arange(n, device=logits.device)
    w = torch.ones(n, device=logits.device) if weight is None else weight.float()
    target = torch.zeros(n, n, dtype=torch.bool, device=logits.device)
    target[rows, rows] = True
    target[rows, partner] = True
    wj = w[None, :].expand(n, n) * ~target
    n_neg = (~target).sum(1, keepdim=True).clamp_min(1)
    nu = wj / (wj.sum(1, keepdim=True) / n_neg).clamp_min(1e-12)
    neg = torch.where(~target & (nu > 0), logits + torch.log(nu.clamp_min(1e-30)), torch.full_like(logits, -torch.inf))
    denom = torch.logsumexp(torch.where(target, logits, neg), 1)
    lam = lam.float().to(logits.device)
    per_anchor = lam * (denom - logits[rows, rows]) + (1 - lam) * (denom - logits[rows, partner])
    anchor_w = lam * w + (1 - lam) * w[partner]
    return (anchor_w * per_anchor).sum() / anchor_w.sum().clamp_min(1e-12)


@dataclass
class FeatureBank:
    """Projections of two views of every training sample, in dataset order, for the maximisation step.

    With mixup, ``z1`` holds the projections of input mixes (sample n mixed with ``partner[n]`` at ``lam[n]``,
    partners drawn inside each chunk of ``chunks``) and the loss is :func:`imix_loss`.
    ``seen`` marks the rows that hold features (an online bank only has the samples training visited)."""

    z1: torch.Tensor
    z2: torch.Tensor
    seen: torch.Tensor | None = None
    partner: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    chunks: list[torch.Tensor] | None = None  # fixed chunks (mixup: partners stay in their chunk)


@dataclass
class PartitionResult:
    logits: torch.Tensor  # (N, K) the kept theta
    weights: torch.Tensor  # (N, K) softmax(theta): the soft partition
    objective_start: float  # the objective of the initial theta
    objective: float  # the objective of the kept theta (what the step maximises)
    entropy: float  # entropy of the mean assignment of the kept theta
    history: list[float] = field(default_factory=list)  # the objective after every pass


def _chunk_terms(bank: FeatureBank, idx: torch.Tensor, w: torch.Tensor, tau: float, tau_irm: float):
    """Mean over subsets of the soft contrastive loss and of the IRMv1 penalty, on the bank rows ``idx``."""
    z1, z2 = bank.z1[idx], bank.z2[idx]
    if bank.partner is not None:
        where = torch.full((len(bank.z1),), -1, dtype=torch.long)
        where[idx] = torch.arange(len(idx))
        partner, lam = where[bank.partner[idx]], bank.lam[idx]

        def loss(wk, t, s=1.0):
            return imix_loss(z1, z2, partner, lam, wk, t, s)
    else:
        def loss(wk, t, s=1.0):
            return soft_subset_loss(z1, z2, wk, t, s)
    conts, pens = [], []
    for k in range(w.shape[1]):
        conts.append(loss(w[:, k], tau))
        pens.append(irm_penalty(lambda s, wk=w[:, k]: loss(wk, tau_irm, s)))
    return torch.stack(conts).mean(), torch.stack(pens).mean()


def maximise_partition(bank: FeatureBank, k: int, *, tau: float, tau_irm: float, irm_weight: float = 0.5,
                       epochs: int = 100, lr: float = 0.5, patience: int = 10, chunk: int = 256,
                       balance_ratio: float | None = 2.0, init: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> PartitionResult:
    """The maximisation step of IP-IRM: the soft K-way partition of the bank that maximises the IRM violation of
    the current representation, ``objective = mean_k L_k + irm_weight * mean_k penalty_k`` (risk = -objective).

    theta (N, K) starts at ``init`` (warm) or N(0, 1) (random) and is optimised with Adam at ``lr`` and a
    multi-step schedule (x0.2 at 50% and 75% of ``epochs`` passes), one step per chunk of a seeded shuffle of the
    bank; the step stops when the objective (evaluated on fixed chunks after every pass) has not improved for
    ``patience`` passes, and keeps the best theta. Balance: the entropy of the mean assignment must stay at or
    above :func:`balance_floor` (K, ``balance_ratio``) (None: unconstrained); a hinge on the shortfall pushes theta
    back and only thetas that meet the floor are kept.
    """
    g = generator or torch.Generator().manual_seed(0)
    rows = torch.nonzero(bank.seen).flatten() if bank.seen is not None else torch.arange(len(bank.z1))
    n = len(bank.z1)
    theta = (init.clone().float() if init is not None else torch.randn(n, k, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, epochs // 2), max(1, 3 * epochs // 4)], gamma=0.2)
    floor = balance_floor(k, balance_ratio) if balance_ratio is not None else None
    fixed = bank.chunks or list(rows.split(chunk))

    def balance(w_rows):
        return assignment_entropy(w_rows)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            w_all = torch.softmax(theta, 1)
        total = 0.0
        for idx in fixed:
            cont, pen = _chunk_terms(bank, idx, w_all[idx], tau, tau_irm)
            total += float((cont + irm_weight * pen).detach()) * len(idx)
        return total / sum(len(i) for i in fixed), float(balance(w_all[rows]))

    start, h0 = evaluate()
    best = (start if floor is None or h0 >= floor else -math.inf, theta.detach().clone(), h0)
    history, stale = [], 0
    for _ in range(epochs):
        order = bank.chunks if bank.chunks is not None else list(rows[torch.randperm(len(rows), generator=g)].split(chunk))
        for idx in order:
            w = torch.softmax(theta, 1)
            cont, pen = _chunk_terms(bank, idx, w[idx], tau, tau_irm)
            risk = -(cont + irm_weight * pen)
            if floor is not None:  # the constraint acts on the whole partition, not the chunk
                risk = risk + 10.0 * torch.relu(floor - balance(w[rows]))
            opt.zero_grad()
            risk.backward()
            opt.step()
        sched.step()
        obj, h = evaluate()
        history.append(obj)
        if obj > best[0] + 1e-6 and (floor is None or h >= floor):
            best, stale = (obj, theta.detach().clone(), h), 0
        else:
            stale += 1
            if stale >= patience:
                break
    obj, logits, h = best
    return PartitionResult(logits=logits, weights=torch.softmax(logits, 1), objective_start=start,
                           objective=obj if math.isfinite(obj) else start, entropy=h, history=history)
