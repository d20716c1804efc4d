"""IP-IRM loss pieces (groundwork for the IP-IRM task): subset InfoNCE, the soft loss, IRMv1, the balance floor."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from Engineering.Science.ipirm import (assignment_entropy, balance_floor, irm_penalty, soft_subset_loss,
                                       subset_infonce)


def _views(n=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _hard_reference(z1, z2, member, tau, neg_factor=1.0):
    """InfoNCE over the subset, written out per anchor (negatives: the subset's other samples' views)."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    rows = [i for i in range(2 * n) if member[i % n]]
    total = 0.0
    for i in rows:
        p = (i + n) % (2 * n)
        neg = sum(math.exp(float(z[i] @ z[j]) / tau) for j in rows if j not in (i, p))
        pos = math.exp(float(z[i] @ z[p]) / tau)
        total += -math.log(pos / (pos + neg_factor * neg))
    return total / len(rows)


def test_subset_infonce_uses_only_the_subset():
    z1, z2 = _views()
    member = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    assert float(subset_infonce(z1, z2, member, 0.5)) == pytest.approx(_hard_reference(z1, z2, member, 0.5), rel=1e-5)
    # what lies outside the subset does not matter
    z1b, z2b = z1.clone(), z2.clone()
    z1b[~member] = torch.randn(int((~member).sum()), 5)
    assert float(subset_infonce(z1b, z2b, member, 0.5)) == pytest.approx(float(subset_infonce(z1, z2, member, 0.5)),
                                                                         rel=1e-6)


def test_soft_loss_equals_the_hard_loss_for_01_weights_up_to_the_negative_rescaling():
    z1, z2 = _views()
    member = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    n, m = 8, int(member.sum())
    soft = float(soft_subset_loss(z1, z2, member.float(), 0.5))
    factor = (2 * n - 2) / (2 * m - 2)  # the documented rescaling of the negative sum
    assert soft == pytest.approx(_hard_reference(z1, z2, member, 0.5, factor), rel=1e-5)
    # with every weight 1 the soft loss is plain SimCLR over the batch
    all_in = torch.ones(n, dtype=torch.bool)
    assert float(soft_subset_loss(z1, z2, torch.ones(n), 0.5)) == pytest.approx(
        float(subset_infonce(z1, z2, all_in, 0.5)), rel=1e-5)


def test_irm_penalty_is_zero_at_the_optimal_scale_and_positive_elsewhere():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 3, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    # the scale that minimises the CE of scaled logits (1-D, by L-BFGS)
    w = torch.tensor(1.0, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits * w, y)
        loss.backward()
        return loss
    opt.step(closure)
    optimal = logits * float(w.detach())
    at_opt = irm_penalty(lambda s: F.cross_entropy(optimal * s, y))
    assert float(at_opt) < 1e-10
    for away in (0.5, 2.0):  # any other scale: a positive penalty, many orders above the optimum's
        assert float(irm_penalty(lambda s: F.cross_entropy(optimal * away * s, y))) > 1e-6
    # double back-prop: the penalty has a gradient with respect to what made the logits
    feats = optimal.clone().requires_grad_(True)
    irm_penalty(lambda s: F.cross_entropy(feats * 2.0 * s, y)).backward()
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0


def test_balance_floor_for_several_k():
    assert balance_floor(2) == pytest.approx(0.6365, abs=1e-4)  # the reference's K = 2 constant
    for k in (2, 3, 4):
        floor = balance_floor(k, 2.0)
        assert 0 < floor < math.log(k)  # below a perfectly balanced split
        # a split exactly at the ratio meets the floor; a more unbalanced one does not
        at = torch.tensor([[2.0] + [1.0] * (k - 1)]) / (k + 1)
        worse = torch.tensor([[4.0] + [1.0] * (k - 1)]) / (k + 3)
        assert float(assignment_entropy(at)) == pytest.approx(floor, rel=1e-6)
        assert float(assignment_entropy(worse)) < floor
        assert balance_floor(k, 1.0) == pytest.approx(math.log(k))
    with pytest.raises(ValueError):
        balance_floor(1)
