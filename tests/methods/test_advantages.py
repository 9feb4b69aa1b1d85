"""Numbers for the advantage estimators: GRPO, Dr.GRPO, RLOO (groups found by ``group_id``).

Hand-computable group baselines, the reduction GRPO without std == Dr.GRPO, RLOO == G / (G - 1) x Dr.GRPO,
parity with verl's per-group loop, and the same advantages per row for a shuffled batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo, rloo
from entrolab.ops import contiguous_groups


def test_grpo_closed_form_unbiased_std():
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3); group 2: all equal -> exactly 0.
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    adv, m = grpo(rewards, torch.ones(8, 3), cfg=GRPOConfig(), group_id=contiguous_groups(8, 4))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert adv.shape == (8, 1)
    torch.testing.assert_close(adv.squeeze(-1), torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    assert torch.all(adv[4:] == 0)
    assert m["adv/frac_zero_std_groups"].item() == 0.5
    assert m["adv/mean"].item() == pytest.approx(0.0, abs=1e-7)
    assert m["adv/std"].item() == pytest.approx(a / math.sqrt(2), rel=1e-6)  # population std over 8


def test_grpo_matches_verl_loop():
    # verl compute_grpo_outcome_advantage: (r - torch.mean) / (torch.std + 1e-6) per group.
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    adv, _ = grpo(rewards, torch.ones(12, 2), cfg=GRPOConfig(), group_id=contiguous_groups(12, 3))
    expected = torch.cat([(r - r.mean()) / (torch.std(r) + 1e-6) for r in rewards.split(3)])
    torch.testing.assert_close(adv.squeeze(-1), expected)


def test_grpo_without_std_is_dr_grpo():
    rewards = torch.rand(16, generator=torch.Generator().manual_seed(1))
    a, _ = grpo(rewards, torch.ones(16, 2), cfg=GRPOConfig(norm_by_std=False), group_id=contiguous_groups(16, 4))
    b, _ = dr_grpo(rewards, torch.ones(16, 2), cfg=None, group_id=contiguous_groups(16, 4))
    assert torch.equal(a, b)


def test_dr_grpo_closed_form():
    adv, m = dr_grpo(torch.tensor([1.0, 0, 0, 0, 2, 2]), torch.ones(6, 1), cfg=None, group_id=contiguous_groups(6, 2))
    assert adv.squeeze(-1).tolist() == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    assert m["adv/frac_zero_std_groups"].item() == pytest.approx(2 / 3)


def test_rloo_closed_form_and_identity():
    # group 2: baseline for 3 is (1+2+2)/3, for 1 is (3+2+2)/3, for 2 is (3+1+2)/3 = 2.
    rewards = torch.tensor([1.0, 0, 0, 1, 3, 1, 2, 2])
    adv, _ = rloo(rewards, torch.ones(8, 1), cfg=None, group_id=contiguous_groups(8, 4))
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 4 / 3, -4 / 3, 0, 0])
    torch.testing.assert_close(adv.squeeze(-1), expected)
    centred, _ = dr_grpo(rewards, torch.ones(8, 1), cfg=None, group_id=contiguous_groups(8, 4))
    torch.testing.assert_close(adv, centred * 4 / 3)  # A_rloo = G / (G - 1) (r - mean)


def test_advantages_detach_and_validate():
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    adv, _ = grpo(rewards, torch.ones(2, 1), cfg=GRPOConfig(), group_id=contiguous_groups(2, 2))
    assert not adv.requires_grad
    for fn, cfg in ((grpo, GRPOConfig()), (dr_grpo, None), (rloo, None)):
        with pytest.raises(ValueError, match=">= 2 samples per group, got 1"):
            fn(torch.ones(4), torch.ones(4, 1), cfg=cfg, group_id=contiguous_groups(4, 1))
        with pytest.raises(ValueError, match=r"same number of samples, got sizes \{0: 4, 1: 2\}"):
            fn(torch.ones(6), torch.ones(6, 1), cfg=cfg, group_id=torch.tensor([0, 0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="-1"):
        GRPOConfig(eps=-1)


# ------------------------------------------------------------------------------------ groups found by group_id

ESTIMATORS = [(grpo, GRPOConfig()), (grpo, GRPOConfig(norm_by_std=False)), (dr_grpo, None), (rloo, None)]
ESTIMATOR_IDS = ["grpo", "grpo_no_std", "dr_grpo", "rloo"]


@pytest.mark.parametrize(("fn", "cfg"), ESTIMATORS, ids=ESTIMATOR_IDS)
@pytest.mark.parametrize("seed", range(3))
def test_shuffled_batch_gives_the_same_advantage_per_row(fn, cfg, seed):
    # Verifier-style rewards (0, 1, and a 0.25 format bonus): every group sum is exact in floating point,
    # so the advantages of the shuffled batch, un-shuffled, are bit-identical to the contiguous ones.
    g = torch.Generator().manual_seed(seed)
    rewards = torch.tensor([0.0, 0.25, 1.0, 1.25])[torch.randint(0, 4, (24,), generator=g)]
    group_id = contiguous_groups(24, 4)  # 6 groups of 4
    perm = torch.randperm(24, generator=g)
    inverse = torch.argsort(perm)
    contiguous, m = fn(rewards, torch.ones(24, 3), cfg=cfg, group_id=group_id)
    shuffled, ms = fn(rewards[perm], torch.ones(24, 3), cfg=cfg, group_id=group_id[perm])
    assert shuffled.shape == (24, 1)
    assert torch.equal(shuffled[inverse], contiguous)
    assert torch.equal(shuffled, contiguous[perm])
    assert ms.keys() == m.keys()
    for k in m:
        torch.testing.assert_close(ms[k], m[k], atol=1e-6, rtol=0)  # means over a permuted order


@pytest.mark.parametrize(("fn", "cfg"), ESTIMATORS, ids=ESTIMATOR_IDS)
def test_interleaved_groups_are_bit_identical_for_any_rewards(fn, cfg):
    # Any float rewards: rows of different groups interleaved, each group's rows in their original order
    # (the order ops.Groups gathers them in), so every group statistic is computed in the same order.
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(7))
    group_id = contiguous_groups(12, 3)  # 4 groups of 3
    interleave = torch.arange(12).reshape(4, 3).T.flatten()  # rows 0, 3, 6, 9, 1, 4, ...: group ids 0, 1, 2, 3, 0, ...
    assert group_id[interleave].tolist() == [0, 1, 2, 3] * 3
    contiguous, _ = fn(rewards, torch.ones(12, 1), cfg=cfg, group_id=group_id)
    mixed, _ = fn(rewards[interleave], torch.ones(12, 1), cfg=cfg, group_id=group_id[interleave])
    assert torch.equal(mixed, contiguous[interleave])
    # An arbitrary shuffle reorders the rows inside a group too: equal up to rounding of the group sums.
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(8))
    shuffled, _ = fn(rewards[perm], torch.ones(12, 1), cfg=cfg, group_id=group_id[perm])
    torch.testing.assert_close(shuffled[torch.argsort(perm)], contiguous, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("fn", "cfg"), ESTIMATORS, ids=ESTIMATOR_IDS)
def test_unequal_group_sizes_raise_naming_the_sizes(fn, cfg):
    group_id = torch.tensor([2, 0, 1, 0, 2, 0, 1])  # group 0 has 3 rows, groups 1 and 2 have 2
    with pytest.raises(
        ValueError, match=r"every group must have the same number of samples, got sizes \{0: 3, 1: 2, 2: 2\}"
    ):
        fn(torch.ones(7), torch.ones(7, 1), cfg=cfg, group_id=group_id)


def test_grpo_batch_std_divides_by_the_std_of_all_rewards():
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 0])
    adv, _ = grpo(
        rewards, torch.ones(8, 2), cfg=GRPOConfig(std_scope="batch", eps=0.0), group_id=contiguous_groups(8, 4)
    )
    std = rewards.std()  # unbiased over the 8 rewards: sqrt(8/7 * 0.234375)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]) / std
    torch.testing.assert_close(adv.squeeze(-1), expected)
    with pytest.raises(ValueError, match="std_scope must be one of"):
        GRPOConfig(std_scope="global")
