"""Ctrl-U: the note's numbers, the Kendall-Gal optimum, the reduction to the plain score, anchors and errors."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.ctrl_u import CtrlUConfig, ctrl_u, disagreement


def shape(heads, cfg=None, rewards=None, group_id=None):
    heads = torch.as_tensor(heads, dtype=torch.float64)
    rewards = torch.zeros(heads.shape[0], dtype=torch.float64) if rewards is None else rewards
    return ctrl_u(
        rewards,
        torch.ones(heads.shape[0], 3),
        cfg=cfg or CtrlUConfig(),
        group_id=group_id,
        lengths=None,
        truncated=None,
        max_length=3,
        rm_heads=heads,
    )


def two_heads(score: float, u: float) -> list[float]:
    """Two heads with mean ``score`` and |O1 - O2| = u."""
    return [score + u / 2, score - u / 2]


def test_note_numbers():
    # l = 0.5 and u = 0 give 0.5; u = ln 2 gives 0.25 (the weight e^{-u} halves it); the penalty adds -lambda u
    r, m = shape([two_heads(0.5, 0.0), two_heads(0.5, math.log(2))], CtrlUConfig(coef=0.0))
    assert r.tolist() == pytest.approx([0.5, 0.25])
    assert m["ctrl_u/weight_mean"].item() == pytest.approx(0.75)
    assert m["ctrl_u/uncertainty_mean"].item() == pytest.approx(math.log(2) / 2)
    r, m = shape([two_heads(0.5, math.log(2))], CtrlUConfig(coef=0.1))
    assert r.item() == pytest.approx(0.25 - 0.1 * math.log(2))
    assert m["ctrl_u/penalty_mean"].item() == pytest.approx(0.1 * math.log(2))


def test_kendall_gal_optimum_of_a_loss_like_reward():
    """With r = -l (a loss), e^{-u} r - lambda u = -(l e^{-u} + lambda u) peaks at u* = log(l / lambda)."""
    loss, lam = 0.5, 0.1
    grid = torch.linspace(0.0, 4.0, 4001, dtype=torch.float64)
    r, _ = shape([two_heads(-loss, float(u)) for u in grid], CtrlUConfig(coef=lam))
    assert float(grid[r.argmax()]) == pytest.approx(math.log(loss / lam), abs=1e-3)
    u = torch.tensor(math.log(loss / lam), dtype=torch.float64, requires_grad=True)  # dL/du = -l e^{-u} + lambda
    (loss * torch.exp(-u) + lam * u).backward()
    assert abs(u.grad.item()) < 1e-12


def test_agreeing_heads_reduce_to_the_plain_score_and_the_weight_is_in_0_1():
    heads = torch.tensor([[0.3, 0.3, 0.3], [-2.0, -2.0, -2.0]])
    r, m = shape(heads)
    assert r.tolist() == pytest.approx([0.3, -2.0]) and m["ctrl_u/weight_mean"].item() == 1.0
    single, _ = shape([[0.7], [-1.0]])  # one head: no disagreement
    assert single.tolist() == pytest.approx([0.7, -1.0])
    _, m = shape(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) * 3)
    assert 0 < m["ctrl_u/weight_mean"].item() <= 1


def test_disagreement_modes():
    heads = torch.tensor([[0.0, 1.0, 3.0]])  # pairs: 1, 3, 2 -> mean 2; population std sqrt(42/27)
    assert disagreement(heads).item() == pytest.approx(2.0)
    assert disagreement(heads, "std").item() == pytest.approx(math.sqrt(42 / 27))
    r, _ = shape([[1.0, 3.0]], CtrlUConfig(disagreement="std", coef=0.0))  # std = 1 for two heads 2 apart
    assert r.item() == pytest.approx(2.0 * math.exp(-1.0))
    r, _ = shape([[1.0, 3.0]], CtrlUConfig(scale=0.5, coef=0.0))  # u = 0.5 * 2
    assert r.item() == pytest.approx(2.0 * math.exp(-1.0))


def test_first_head_and_caller_rewards_as_the_score():
    heads = [[1.0, 3.0]]  # u = 2
    r, _ = shape(heads, CtrlUConfig(score="first", coef=0.0))
    assert r.item() == pytest.approx(1.0 * math.exp(-2.0))
    r, m = shape(heads, CtrlUConfig(base="rewards", coef=0.0), rewards=torch.tensor([4.0], dtype=torch.float64))
    assert r.item() == pytest.approx(4.0 * math.exp(-2.0)) and m["ctrl_u/score_mean"].item() == 4.0


def test_group_mean_anchor_shrinks_toward_the_group_and_follows_shifts():
    heads = torch.tensor([two_heads(1.0, 0.0), two_heads(0.0, math.log(2)), two_heads(5.0, 0.0), two_heads(3.0, 0.0)])
    gid = torch.tensor([0, 0, 1, 1])
    cfg = CtrlUConfig(anchor="group_mean", coef=0.0)
    r, _ = shape(heads, cfg, group_id=gid)
    assert r.tolist() == pytest.approx([1.0, 0.5 + 0.5 * (0.0 - 0.5), 5.0, 3.0])  # group 0 mean 0.5
    shifted, _ = shape(heads - 10.0, cfg, group_id=gid)  # an offset of the reward model passes through
    assert shifted.tolist() == pytest.approx((r - 10.0).tolist())
    zero, _ = shape(heads - 10.0, CtrlUConfig(coef=0.0), group_id=gid)  # the literal anchor does not
    assert zero[1].item() == pytest.approx(-5.0) and r[1].item() - 10.0 == pytest.approx(-9.75)
    perm = torch.tensor([3, 1, 0, 2])
    again, _ = shape(heads[perm], cfg, group_id=gid[perm] + 5)
    assert again.tolist() == pytest.approx(r[perm].tolist())


def test_bad_inputs_and_config():
    with pytest.raises(ValueError, match="needs rm_heads"):
        ctrl_u(
            torch.ones(2),
            torch.ones(2, 1),
            cfg=CtrlUConfig(),
            group_id=None,
            lengths=None,
            truncated=None,
            max_length=1,
        )
    with pytest.raises(ValueError, match=r"rm_heads must be \[B, K\]"):
        shape([[1.0, 2.0]], rewards=torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        shape([[1.0, math.nan]])
    with pytest.raises(ValueError, match=r"score must be one of \['mean', 'first'\], got 'median'"):
        CtrlUConfig(score="median")
    with pytest.raises(ValueError, match="anchor must be one of"):
        CtrlUConfig(anchor="batch")
    with pytest.raises(ValueError, match="coef must be >= 0"):
        CtrlUConfig(coef=-0.1)
