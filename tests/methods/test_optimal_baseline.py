"""The Optimal Token Baseline: the proxy w_t, a hand-computed per-column baseline, the zero tail, the reduction to
Dr.GRPO at a constant proxy, the multi-turn (token-aligned) variant, garbage padding.

Parity with verl's ``optimal_token_baseline`` / ``tir_optimal_token_baseline``: ``tests/test_parity_advantages.py``.
"""

from __future__ import annotations

import pytest
import torch

from entrolab import ops, registry
from entrolab.methods.advantages import dr_grpo
from entrolab.methods.optimal_baseline import (
    OptimalTokenBaselineConfig,
    optimal_token_baseline,
    sum_pi_sq_from_logits,
    tir_optimal_token_baseline,
)
from tests import test_contract as contract
from tests.methods._helpers import INF, NAN, pad

CFG = OptimalTokenBaselineConfig()
NO_TAIL = OptimalTokenBaselineConfig(handle_zero_tail=False)
FNS = [optimal_token_baseline, tir_optimal_token_baseline]


def test_sum_pi_sq_from_logits():
    assert sum_pi_sq_from_logits(torch.zeros(2, 3, 8)).tolist() == [[0.125] * 3] * 2  # uniform: 1 / V
    z = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(0)) * 4
    torch.testing.assert_close(sum_pi_sq_from_logits(z), torch.softmax(z, -1).pow(2).sum(-1))
    assert sum_pi_sq_from_logits(torch.tensor([[[0.0, 60.0]]])).item() == pytest.approx(1.0)  # near one-hot
    assert sum_pi_sq_from_logits(z.bfloat16()).dtype == torch.float32


def _hand_case():
    # row 0: pi(y) = 0.5, sum pi^2 = 0.5 -> w = 0.5; row 1: pi(y) = 0.25, sum pi^2 = 0.5 -> w = 1.0
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).double()
    old = torch.tensor([[0.5, 0.5], [0.25, 0.25]]).double().log()
    spq = torch.full((2, 2), 0.5).double()
    return torch.tensor([1.0, 0.0]).double(), mask, old, spq


@pytest.mark.parametrize("fn", FNS)
def test_closed_form_per_column_baseline_and_zero_tail(fn):
    r, mask, old, spq = _hand_case()
    gid = torch.zeros(2).long()
    # column 0: W = (0.5, 1.0), B = (1 * 0.5 + 0 * 1.0) / 1.5 = 1/3; column 1: row 0 alone (W = 1.0)
    b0, b1 = 0.5 / (1.5 + 1e-8), 1.0 / (1.0 + 1e-8)  # eps in the denominator
    adv, m = fn(r, mask, cfg=CFG, group_id=gid, old_logp=old, sum_pi_sq=spq)
    torch.testing.assert_close(adv, torch.tensor([[1 - b0, 1.0], [-b0, 0.0]]).double())  # the tail: B = 0
    assert m["otb/w_mean"].item() == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    adv, _ = fn(r, mask, cfg=NO_TAIL, group_id=gid, old_logp=old, sum_pi_sq=spq)
    torch.testing.assert_close(adv, torch.tensor([[1 - b0, 1 - b1], [-b0, 0.0]]).double())


@pytest.mark.parametrize("fn", FNS)
def test_constant_proxy_and_equal_lengths_is_dr_grpo(fn):
    g = torch.Generator().manual_seed(0)
    r, mask = torch.randn(8, generator=g, dtype=torch.float64), torch.ones(8, 5, dtype=torch.float64)
    gid = ops.contiguous_groups(8, 4)[torch.randperm(8, generator=g)]
    old, spq = torch.full((8, 5), 0.3).double().log(), torch.full((8, 5), 0.2).double()
    adv, _ = fn(r, mask, cfg=CFG, group_id=gid, old_logp=old, sum_pi_sq=spq)
    torch.testing.assert_close(adv, dr_grpo(r, mask, cfg=None, group_id=gid)[0].expand(8, 5))


@pytest.mark.parametrize("fn", FNS)
def test_constant_groups_and_groups_of_one(fn):
    mask = (torch.arange(4) < torch.tensor([4, 2, 3, 3]).unsqueeze(-1)).double()
    old = torch.rand(4, 4, generator=torch.Generator().manual_seed(1)).double().log()
    spq = torch.full((4, 4), 0.4).double()
    r = torch.tensor([2.0, 2.0, 1.0, 0.0]).double()
    adv, m = fn(r, mask, cfg=CFG, group_id=ops.contiguous_groups(4, 2), old_logp=old, sum_pi_sq=spq)
    # group 1 constant: 0 where both rows have a token, the return past the second longest (zero tail)
    torch.testing.assert_close(adv[0], torch.tensor([0.0, 0.0, 2.0, 2.0]).double(), atol=1e-7, rtol=0)
    assert m["adv/frac_zero_std_groups"].item() == 0.5
    alone, _ = fn(r, mask, cfg=NO_TAIL, group_id=torch.arange(4), old_logp=old, sum_pi_sq=spq)
    torch.testing.assert_close(alone, r.unsqueeze(1) * mask)  # no baseline: the advantage is the return


def test_tir_aligns_model_tokens_and_equals_the_column_version_without_holes():
    g = torch.Generator().manual_seed(2)
    b, t = 8, 6
    lengths = torch.tensor([6, 3, 0, 5, 1, 6, 2, 4])
    solid = (torch.arange(t) < lengths.unsqueeze(-1)).double()
    holed = solid.clone()
    holed[:, 1] = 0  # an observation token in every row
    r, gid = torch.randn(b, generator=g, dtype=torch.float64), ops.contiguous_groups(b, 4)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    spq = torch.rand(b, t, generator=g, dtype=torch.float64) * 0.5
    for cfg in (CFG, NO_TAIL):
        a = optimal_token_baseline(r, solid, cfg=cfg, group_id=gid, old_logp=old, sum_pi_sq=spq)
        t_ = tir_optimal_token_baseline(r, solid, cfg=cfg, group_id=gid, old_logp=old, sum_pi_sq=spq)
        torch.testing.assert_close(t_[0], a[0])
    # holes: TIR = the column version on the rows with their model tokens moved left
    adv, _ = tir_optimal_token_baseline(r, holed, cfg=CFG, group_id=gid, old_logp=old, sum_pi_sq=spq)
    keep = holed.bool()
    n = keep.sum(-1)
    left = (torch.arange(t) < n.unsqueeze(-1)).double()
    moved_old, moved_spq = torch.zeros(b, t).double(), torch.zeros(b, t).double()
    moved_old[left.bool()], moved_spq[left.bool()] = old[keep], spq[keep]
    ref, _ = optimal_token_baseline(r, left, cfg=CFG, group_id=gid, old_logp=moved_old, sum_pi_sq=moved_spq)
    torch.testing.assert_close(adv[keep], ref[left.bool()])
    assert torch.all(adv[~keep] == 0)


def test_tir_drops_empty_responses_from_the_group():
    # one non-empty response in the group: TIR gives it no baseline; the column version baselines it against itself
    mask = torch.tensor([[1.0, 1, 1], [0, 0, 0]]).double()
    old, spq = torch.full((2, 3), 0.5).double().log(), torch.full((2, 3), 0.5).double()
    kw = dict(cfg=NO_TAIL, group_id=torch.zeros(2).long(), old_logp=old, sum_pi_sq=spq)
    tir, _ = tir_optimal_token_baseline(torch.tensor([1.0, 0.0]).double(), mask, **kw)
    col, _ = optimal_token_baseline(torch.tensor([1.0, 0.0]).double(), mask, **kw)
    assert tir[0].tolist() == [1.0, 1.0, 1.0]
    assert col[0].abs().max().item() < 1e-7


@pytest.mark.parametrize("fn", FNS)
def test_garbage_padding_shuffles_and_detached(fn):
    g = torch.Generator().manual_seed(3)
    mask = (torch.arange(5) < torch.tensor([5, 2, 0, 4, 1, 3, 5, 2]).unsqueeze(-1)).double()
    mask[0, 2] = 0  # a hole
    r, gid = torch.randn(8, generator=g, dtype=torch.float64), ops.contiguous_groups(8, 4)
    old = (-torch.rand(8, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    spq = torch.rand(8, 5, generator=g, dtype=torch.float64)
    adv, m = fn(r, mask, cfg=CFG, group_id=gid, old_logp=old, sum_pi_sq=spq)
    assert not adv.requires_grad and all(not v.requires_grad for v in m.values())
    dirty_old = torch.where(mask.bool(), old.detach(), NAN)
    dirty_spq = torch.where(mask.bool(), spq, INF)
    dirty, md = fn(r, mask, cfg=CFG, group_id=gid, old_logp=dirty_old, sum_pi_sq=dirty_spq)
    assert torch.equal(dirty, adv) and all(torch.equal(md[k], m[k]) for k in m)
    wide, _ = fn(r, pad(mask, 0.0), cfg=CFG, group_id=gid, old_logp=pad(old.detach()), sum_pi_sq=pad(spq, INF))
    assert torch.equal(wide[:, :5], adv) and torch.all(wide[:, 5:] == 0)
    perm = torch.randperm(8, generator=g)
    shuffled, _ = fn(r[perm], mask[perm], cfg=CFG, group_id=gid[perm], old_logp=old[perm], sum_pi_sq=spq[perm])
    torch.testing.assert_close(shuffled, adv[perm])


def test_bad_inputs_and_config():
    r, mask, old, spq = _hand_case()
    gid = torch.zeros(2).long()
    with pytest.raises(ValueError, match="needs old_logp and sum_pi_sq"):
        optimal_token_baseline(r, mask, cfg=CFG, group_id=gid, old_logp=old)
    with pytest.raises(ValueError, match=r"sum_pi_sq \(2, 1\) must be the mask's shape \(2, 2\)"):
        tir_optimal_token_baseline(r, mask, cfg=CFG, group_id=gid, old_logp=old, sum_pi_sq=spq[:, :1])
    with pytest.raises(ValueError, match="eps must be >= 0, got -1"):
        OptimalTokenBaselineConfig(eps=-1)


@pytest.mark.parametrize("name", ["optimal_token_baseline", "tir_optimal_token_baseline"])
def test_keeps_the_catalogue_contract(name, monkeypatch):
    inputs = contract._inputs

    def with_sum_pi_sq(seed: int = 0):
        x = inputs(seed)
        return {**x, "sum_pi_sq": sum_pi_sq_from_logits(x["logits"].detach())}

    monkeypatch.setattr(contract, "_inputs", with_sum_pi_sq)
    entry = registry.lookup("advantage", name)
    contract.test_every_registered_method_keeps_the_contract(entry)
    contract.test_signature_follows_the_axis_convention(entry)
