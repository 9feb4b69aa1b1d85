"""REINFORCE++, REINFORCE++-baseline and ReMax: hand-computed returns and whitening, reductions, invariances.

The whitening is over the batch's response tokens with the Bessel variance and rsqrt(var + 1e-8), as verl's
``masked_whiten`` (parity with verl itself: ``tests/test_parity_advantages.py``).
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import ops, registry
from entrolab.methods.advantages import dr_grpo
from entrolab.methods.reinforce_pp import (
    ReinforcePPBaselineConfig,
    ReinforcePPConfig,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
)
from tests import test_contract as contract
from tests.methods._helpers import pad

MASK = torch.tensor([[1.0, 1, 1], [1, 1, 0]])  # lengths 3 and 2


def _whiten(values: list[float]) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float64)
    return (x - x.mean()) / math.sqrt(x.var().item() + 1e-8)  # torch.var: Bessel


def test_reinforce_pp_closed_form_discounted_returns():
    # gamma 0.5: row 0 returns [0.25, 0.5, 1], row 1 (reward -1) [-0.5, -1, pad]
    adv, m = reinforce_pp(
        torch.tensor([1.0, -1.0]).double(), MASK.double(), cfg=ReinforcePPConfig(gamma=0.5), group_id=torch.arange(2)
    )
    w = _whiten([0.25, 0.5, 1.0, -0.5, -1.0])
    torch.testing.assert_close(adv, torch.tensor([[w[0], w[1], w[2]], [w[3], w[4], 0.0]], dtype=torch.float64))
    assert adv[1, 2].item() == 0.0
    assert m["adv/mean"].item() == pytest.approx(0.0, abs=1e-12)
    assert m["adv/std"].item() == pytest.approx(math.sqrt(4 / 5), rel=1e-6)  # population std of whitened values


def test_reinforce_pp_carries_the_return_through_observation_tokens():
    # a hole at column 1 is skipped by the discount: returns [0.5 * 2, -, 2]
    mask = torch.tensor([[1.0, 0, 1], [1, 1, 0]])
    adv, _ = reinforce_pp(torch.tensor([2.0, 0.0]), mask, cfg=ReinforcePPConfig(gamma=0.5), group_id=torch.arange(2))
    w = _whiten([1.0, 2.0, 0.0, 0.0]).float()
    torch.testing.assert_close(adv, torch.tensor([[w[0], 0.0, w[1]], [w[2], w[3], 0.0]]))


def test_gamma_one_is_the_tiled_reward_whitened_and_gamma_zero_keeps_the_last_token():
    g = torch.Generator().manual_seed(0)
    mask, r = (torch.rand(6, 5, generator=g) < 0.8).double(), torch.randn(6, generator=g, dtype=torch.float64)
    mask[:, 0] = 1
    adv, _ = reinforce_pp(r, mask, cfg=ReinforcePPConfig(), group_id=torch.arange(6))
    vals = r.unsqueeze(1).expand_as(mask)[mask.bool()]
    expected = torch.zeros_like(mask)
    expected[mask.bool()] = _whiten(vals.tolist())
    torch.testing.assert_close(adv, expected)
    adv0, _ = reinforce_pp(r, mask, cfg=ReinforcePPConfig(gamma=0.0), group_id=torch.arange(6))
    last = mask * (mask.cumsum(-1) == mask.sum(-1, keepdim=True))  # 1 on each row's last response token
    ret = r.unsqueeze(1) * last
    vals0 = ret[mask.bool()]
    expected0 = torch.where(mask.bool(), (ret - vals0.mean()) / (vals0.var() + 1e-8).sqrt(), 0.0)
    torch.testing.assert_close(adv0, expected0)


def test_baseline_closed_form_and_reduction_to_reinforce_pp():
    # groups [1, 0] -> [0.5, -0.5] (lengths 3, 1) and [2, 2] -> [0, 0] (lengths 2, 2): 8 tokens
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]]).double()
    adv, m = reinforce_pp_baseline(
        torch.tensor([1.0, 0, 2, 2]).double(),
        mask,
        cfg=ReinforcePPBaselineConfig(),
        group_id=ops.contiguous_groups(4, 2),
    )
    w = _whiten([0.5] * 3 + [-0.5] + [0.0] * 4)
    torch.testing.assert_close(adv.squeeze(1), torch.stack([w[0], w[3], w[4], w[4]]))
    assert m["adv/frac_zero_std_groups"].item() == 0.5
    # rewards already centred per group: the baseline changes nothing, so it is REINFORCE++ at gamma = 1
    r = torch.tensor([0.5, -0.5, 1.5, -1.5]).double()
    base, _ = reinforce_pp_baseline(r, mask, cfg=ReinforcePPBaselineConfig(), group_id=ops.contiguous_groups(4, 2))
    plain, _ = reinforce_pp(r, mask, cfg=ReinforcePPConfig(), group_id=ops.contiguous_groups(4, 2))
    torch.testing.assert_close(base.expand_as(mask) * mask, plain)
    # equal lengths: Dr.GRPO standardised with the token-count Bessel correction
    ones = torch.ones(4, 3).double()
    eq, _ = reinforce_pp_baseline(r + 1.0, ones, cfg=ReinforcePPBaselineConfig(), group_id=ops.contiguous_groups(4, 2))
    dr, _ = dr_grpo(r + 1.0, ones, cfg=None, group_id=ops.contiguous_groups(4, 2))
    std = math.sqrt((dr.pow(2).sum() * 3 / 11).item() + 1e-8)
    torch.testing.assert_close(eq, dr / std)


def test_row_shuffle_and_padding_columns_change_nothing():
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 2, 0, 4, 1, 3, 5, 2])
    mask = (torch.arange(5) < lengths.unsqueeze(-1)).double()
    r, gid = torch.randn(8, generator=g, dtype=torch.float64), ops.contiguous_groups(8, 4)
    perm = torch.randperm(8, generator=g)
    for fn, cfg in ((reinforce_pp, ReinforcePPConfig(gamma=0.8)), (reinforce_pp_baseline, ReinforcePPBaselineConfig())):
        adv, m = fn(r, mask, cfg=cfg, group_id=gid)
        shuffled, ms = fn(r[perm], mask[perm], cfg=cfg, group_id=gid[perm])
        torch.testing.assert_close(shuffled, adv[perm])
        wide, mw = fn(r, pad(mask, 0.0, 3), cfg=cfg, group_id=gid)
        torch.testing.assert_close(wide[:, :5], adv)  # [B, T] advantages: same values, 0 on the extra columns
        assert torch.all(wide[:, 5:] == 0)
        for k in m:
            torch.testing.assert_close(m[k], mw[k])
            torch.testing.assert_close(m[k], ms[k])


def test_remax_closed_form_and_metrics():
    r, greedy = torch.tensor([1.0, 0.0, 0.5, 1.0]), torch.tensor([0.5, 0.5, 1.0, 1.0])
    adv, m = remax(r, torch.ones(4, 2), cfg=None, group_id=ops.contiguous_groups(4, 2), greedy_rewards=greedy)
    assert adv.squeeze(1).tolist() == [0.5, -0.5, -0.5, 0.0]
    assert m["remax/greedy_reward_mean"].item() == 0.75
    assert m["adv/mean"].item() == pytest.approx(-0.125)
    assert m["adv/std"].item() == pytest.approx(torch.tensor([0.5, -0.5, -0.5, 0.0]).std(correction=0).item())


def test_advantages_are_detached_constants():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], requires_grad=True)
    greedy = torch.tensor([0.0, 0.0, 1.0, 1.0], requires_grad=True)
    gid = ops.contiguous_groups(4, 2)
    for adv, _ in (
        reinforce_pp(r, torch.ones(4, 2), cfg=ReinforcePPConfig(), group_id=gid),
        reinforce_pp_baseline(r, torch.ones(4, 2), cfg=ReinforcePPBaselineConfig(), group_id=gid),
        remax(r, torch.ones(4, 2), cfg=None, group_id=gid, greedy_rewards=greedy),
    ):
        assert not adv.requires_grad


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        ReinforcePPConfig(gamma=1.5)
    with pytest.raises(ValueError, match="whiten_eps must be >= 0, got -1"):
        ReinforcePPBaselineConfig(whiten_eps=-1)
    with pytest.raises(ValueError, match="needs >= 2 of them, got 1"):
        reinforce_pp(torch.ones(2), torch.tensor([[1.0, 0], [0, 0]]), cfg=ReinforcePPConfig(), group_id=torch.arange(2))
    with pytest.raises(ValueError, match=">= 2 samples per group, got 1"):
        reinforce_pp_baseline(
            torch.ones(2), torch.ones(2, 2), cfg=ReinforcePPBaselineConfig(), group_id=torch.arange(2)
        )
    with pytest.raises(ValueError, match="needs greedy_rewards"):
        remax(torch.ones(2), torch.ones(2, 2), cfg=None, group_id=torch.arange(2))
    with pytest.raises(ValueError, match=r"greedy_rewards must be \[B\]"):
        remax(torch.ones(2), torch.ones(2, 2), cfg=None, group_id=torch.arange(2), greedy_rewards=torch.ones(2, 1))


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline", "remax"])
def test_keeps_the_catalogue_contract(name, monkeypatch):
    inputs = contract._inputs
    monkeypatch.setattr(contract, "_inputs", lambda seed=0: {**inputs(seed), "greedy_rewards": torch.rand(contract.B)})
    entry = registry.lookup("advantage", name)
    contract.test_every_registered_method_keeps_the_contract(entry)
    contract.test_signature_follows_the_axis_convention(entry)
