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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def contrastive_logits(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2N, 2N - 1) InfoNCE logits of the 2N views in the reference code's column layout, and the sample
    (0..N-1) each column's view belongs to.

    Rows are the first views of the N samples, then their second views. Column 0 of a row is its positive (the
    other view of its sample); columns 1.. are its 2N - 2 negatives in increasing view order (the view itself
    left out). The layout matters for the IRMv1 penalty of IP-IRM's code, which puts one dummy scale on each
    column: :func:`irm_penalty` with ``columns=2N - 1``.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    n2 = 2 * n
    view = torch.arange(n2, device=z.device)
    pos = (view + n) % n2
    # negatives of row i: every view but i and pos(i), in increasing order
    others = view[None, :].expand(n2, n2)
    keep = (others != view[:, None]) & (others != pos[:, None])
    cols = torch.cat([pos[:, None], others[keep].view(n2, n2 - 2)], 1)
    logits = (z @ z.t() / tau).gather(1, cols)
    return logits, cols % n


def subset_infonce(
    z1: torch.Tensor, z2: torch.Tensor, member: torch.Tensor, tau: float = 0.5, scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """InfoNCE over the samples of one subset: anchors and negatives only from ``member`` (a (N,) bool mask).
    ``scale`` multiplies the logits (the IRMv1 dummy classifier: a scalar, or one per column of the subset's
    (2m, 2m - 1) logits in :func:`contrastive_logits`' layout)."""
    logits, _ = contrastive_logits(z1[member], z2[member], tau)
    logits = logits * scale
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def soft_subset_loss(
    z1: torch.Tensor, z2: torch.Tensor, weight: torch.Tensor, tau: float = 0.5, scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """The contrastive loss of a soft subset: per-sample weights ``weight`` (N,) in [0, 1] (IP-IRM's "soft
    contrastive loss", the form its code optimises the partition with).

    For the anchor view i of sample n: -log(e^{s_ip} / (e^{s_ip} + sum_j nu_j e^{s_ij})), with the positive
    weighted 1 and the negatives' weights nu_j = w_j / mean(w over the anchor's 2N - 2 candidates) (renormalised
    to mean 1); the anchors are weighted by w_n. For 0/1 weights this is the hard subset's InfoNCE with its
    negative sum multiplied by (2N - 2) / (2m - 2) for a subset of m samples: the documented rescaling (the soft
    loss sees as many effective negatives as the whole batch). ``scale`` multiplies the logits (a scalar, or one
    per column of :func:`contrastive_logits`).
    """
    logits, owner = contrastive_logits(z1, z2, tau)
    logits = logits * scale
    w = weight.float().to(logits.device)
    w_neg = w[owner[:, 1:]]
    nu = w_neg / (w_neg.sum(1, keepdim=True) / w_neg.shape[1]).clamp_min(1e-12)
    # log of e^{s_pos} + sum_j nu_j e^{s_ij}, stably (a weight of 0 drops the negative)
    neg = torch.where(nu > 0, logits[:, 1:] + torch.log(nu.clamp_min(1e-30)), torch.full_like(nu, -torch.inf))
    per_anchor = torch.logsumexp(torch.cat([logits[:, :1], neg], 1), 1) - logits[:, 0]
    anchor_w = w[owner[:, 0]]
    return (anchor_w * per_anchor).sum() / anchor_w.sum().clamp_min(1e-12)


def irm_penalty(
    loss_at: Callable[[torch.Tensor], torch.Tensor], columns: int | None = None, device=None
) -> torch.Tensor:
    """The IRMv1 penalty (Arjovsky et al., 2019): the squared norm of the gradient of ``loss_at(scale)`` with
    respect to a dummy classifier scale at 1.0 (double back-prop: ``create_graph=True``, so the penalty trains
    the representation).

    ``columns=None``: one scalar scale, IRMv1's own form. ``columns=C``: one scale per logit column (a (C,)
    vector, the penalty is the sum of the C squared partial derivatives), the form IP-IRM's code uses (its
    ``penalty``: ``scale = ones(1, logits.size(-1))``, ``sum(grad ** 2)``): what IP-IRM here uses.
    """
    scale = torch.ones(() if columns is None else (columns,), device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_at(scale), [scale], create_graph=True)
    return grad.pow(2).sum()


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


def imix_loss(
    z_mix: torch.Tensor,
    z2: torch.Tensor,
    partner: torch.Tensor,
    lam: torch.Tensor,
    weight: torch.Tensor | None = None,
    tau: float = 0.5,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
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
    objective_start: float  # the objective of the initial theta (mean subset loss + irm_weight * mean penalty)
    objective: float  # the objective of the kept theta (what the step maximises)
    entropy: float  # entropy of the mean assignment of the kept theta
    history: list[float] = field(default_factory=list)  # the mean risk of every pass (what selects the kept theta)


def _chunk_terms(
    bank: FeatureBank, idx: torch.Tensor, w: torch.Tensor, tau: float, tau_irm: float, scalar_penalty: bool = False
):
    """Mean over subsets of the soft contrastive loss and of the IRMv1 penalty (one dummy scale per logit
    column; ``scalar_penalty``: one scalar scale), on the bank rows ``idx``."""
    z1, z2 = bank.z1[idx], bank.z2[idx]
    if bank.partner is not None:
        where = torch.full((len(bank.z1),), -1, dtype=torch.long)
        where[idx] = torch.arange(len(idx))
        partner, lam = where[bank.partner[idx]], bank.lam[idx]
        columns = len(idx)

        def loss(wk, t, s=1.0):
            return imix_loss(z1, z2, partner, lam, wk, t, s)
    else:
        columns = 2 * len(idx) - 1

        def loss(wk, t, s=1.0):
            return soft_subset_loss(z1, z2, wk, t, s)

    conts, pens = [], []
    for k in range(w.shape[1]):
        conts.append(loss(w[:, k], tau))
        pens.append(irm_penalty(lambda s, wk=w[:, k]: loss(wk, tau_irm, s), None if scalar_penalty else columns))
    return torch.stack(conts).mean(), torch.stack(pens).mean()


def balance_term(w_chunk: torch.Tensor, constrain: str | None, floor: float) -> torch.Tensor:
    """The partition search's balance term (added to the risk it minimises) on a chunk's soft weights (M, K), as
    in IP-IRM's code: ``"entropy"`` (its --constrain): -H(mean assignment), which pushes towards equal subsets;
    ``"relax"`` (--constrain --constrain_relax): relu(floor - H(mean assignment)), inactive while the split is no
    more unbalanced than ``floor`` allows (the reference's 0.6365 for K = 2 is :func:`balance_floor` (2, 2));
    None: no term."""
    if constrain is None:
        return w_chunk.new_zeros(())
    h = assignment_entropy(w_chunk)
    if constrain == "entropy":
        return -h
    if constrain == "relax":
        return torch.relu(floor - h)
    raise ValueError(f"balance_term: constrain is None, 'entropy' or 'relax', got {constrain!r}")


def maximise_partition(
    bank: FeatureBank,
    k: int,
    *,
    tau: float,
    tau_irm: float,
    irm_weight: float = 0.5,
    passes: int = 61,
    lr: float = 0.5,
    milestones: tuple[int, ...] = (5, 35),
    gamma: float = 0.2,
    patience: int = 5,
    patience_after: int = 51,
    chunk: int = 3096,
    constrain: str | None = "relax",
    balance_ratio: float = 2.0,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    scalar_penalty: bool = False,
) -> PartitionResult:
    """The maximisation step of IP-IRM: the soft K-way partition of the bank that maximises the IRM violation of
    the current representation, ``objective = mean_k L_k + irm_weight * mean_k penalty_k``; the step minimises
    ``risk = -objective + balance_term``.

    The defaults are the search of the reference code (its ``auto_split_offline``): theta (N, K) starts at
    ``init`` (warm) or N(0, 1) (random) and is optimised by Adam at ``lr`` 0.5 with the learning rate times
    ``gamma`` 0.2 after passes 5 and 35 (``milestones``), one step per chunk of ``chunk`` 3,096 rows of a fresh
    shuffle of the bank (the balance term on that chunk's weights); after every pass the mean risk of its steps is
    compared with the best so far, whose theta is kept; the search stops after pass ``passes`` (61) or as soon
    as more than ``patience_after`` (51) passes are done and ``patience`` (5) passes in a row did not improve.
    A bank with fixed ``chunks`` (i-Mix) uses those, in order. ``scalar_penalty``: IRMv1's scalar dummy scale
    instead of the reference's one per column (a variant, not the reference's).
    """
    g = generator or torch.Generator().manual_seed(0)
    rows = torch.nonzero(bank.seen).flatten() if bank.seen is not None else torch.arange(len(bank.z1))
    n = len(bank.z1)
    theta = (init.clone().float() if init is not None else torch.randn(n, k, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=gamma)
    floor = balance_floor(k, balance_ratio)
    fixed = bank.chunks or list(rows.split(chunk))

    def evaluate(logits: torch.Tensor) -> tuple[float, float]:
        w_all = torch.softmax(logits, 1)
        total = 0.0
        for idx in fixed:
            cont, pen = _chunk_terms(bank, idx, w_all[idx], tau, tau_irm, scalar_penalty)
            total += float((cont + irm_weight * pen).detach()) * len(idx)
        return total / sum(len(i) for i in fixed), float(assignment_entropy(w_all[rows]))

    start, _ = evaluate(theta.detach())
    best_risk, best_theta = math.inf, theta.detach().clone()
    history, stale = [], 0
    for done in range(1, passes + 1):
        order = (
            bank.chunks if bank.chunks is not None else list(rows[torch.randperm(len(rows), generator=g)].split(chunk))
        )
        risks = []
        for idx in order:
            w = torch.softmax(theta[idx], 1)
            cont, pen = _chunk_terms(bank, idx, w, tau, tau_irm, scalar_penalty)
            risk = -(cont + irm_weight * pen) + balance_term(w, constrain, floor)
            opt.zero_grad()
            risk.backward()
            opt.step()
            risks.append(float(risk.detach()))
        sched.step()
        mean_risk = sum(risks) / len(risks)
        history.append(mean_risk)
        if mean_risk < best_risk:
            best_risk, best_theta, stale = mean_risk, theta.detach().clone(), 0
        else:
            stale += 1
        if done > patience_after and stale >= patience:
            break
    obj, h = evaluate(best_theta)
    return PartitionResult(
        logits=best_theta,
        weights=torch.softmax(best_theta, 1),
        objective_start=start,
        objective=obj,
        entropy=h,
        history=history,
    )
