"""AEPO's entropy-balanced rollout (budget split, branch rule and penalty, budgeted forking) and aepo_adv."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.aepo_rollout import (
    ADV_METRICS,
    AEPOAdvantageConfig,
    AEPORolloutConfig,
    aepo_adv,
    branch_decisions,
    branch_probability,
    choose_branches,
    entropy_aware_advantage,
    global_budget,
    global_budgets,
    next_consecutive,
    step_entropy,
    tool_entropy_mean,
    topk_partial_entropy,
)
from entrolab.registry import lookup

CFG = AEPORolloutConfig()
CODE = AEPORolloutConfig(rule="code")


# ---- entropy pre-monitoring: m = k sigma(beta (H_root - H_tool_mean)) -------------------------------------------


@pytest.mark.parametrize(("k", "nearest", "code"), [(12, 6, 7), (16, 8, 9), (5, 3, 3), (1, 1, 1)])
def test_equal_entropies_split_the_budget_in_half(k, nearest, code):
    assert global_budget(k, 1.3, 1.3, CFG) == nearest  # k sigma(0) = k / 2, half rounded up for odd k
    assert global_budget(k, 1.3, 1.3, AEPORolloutConfig(rounding="code")) == code  # int(k / 2) + 1
    assert global_budget(k, 4.0, 0.0, AEPORolloutConfig(beta=0.0)) == nearest  # beta = 0: no sensitivity
    assert global_budget(k, 1.3, None, CFG) == nearest  # no tool turn: zero gap (the code's fallback)


def test_budget_closed_form_and_monotone_in_the_gap():
    # k = 16, beta = 0.5: gap +-2 -> 16 sigma(+-1) = 11.70 / 4.30
    assert global_budget(16, 3.0, 1.0, CFG) == 12 and global_budget(16, 1.0, 3.0, CFG) == 4
    code = AEPORolloutConfig(rounding="code")
    assert global_budget(16, 3.0, 1.0, code) == 12 and global_budget(16, 1.0, 3.0, code) == 5
    gaps = torch.linspace(-30, 30, 241, dtype=torch.float64)
    for cfg in (CFG, code):
        m = global_budgets(16, gaps, torch.zeros_like(gaps), cfg)
        assert torch.all(m[1:] >= m[:-1]) and m[0] == 1 and m[-1] == 16  # clamped to [1, k]
        assert set(m.tolist()) == set(range(1, 17))
    assert global_budgets(8, torch.tensor([2.0, 1.0]), torch.tensor([float("nan"), 1.0]), CFG).tolist() == [4, 4]


def test_tool_entropy_mean_skips_the_first_turn_unless_asked():
    h = torch.tensor([[5.0, 1.0, 2.0, 9.0], [4.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    after = tool_entropy_mean(h, valid, CFG)
    assert after[0].item() == 1.5 and math.isnan(after[1].item())  # a trajectory without tool turns
    assert tool_entropy_mean(h, valid, AEPORolloutConfig(tool_turns="all")).tolist() == pytest.approx([8 / 3, 4.0])
    assert global_budgets(10, torch.tensor([3.0, 3.0]), after, CFG).tolist() == [7, 5]  # 10 sigma(0.75) = 6.79


# ---- step entropy over the first tokens of a turn --------------------------------------------------------------


def test_step_entropy_window_sum_mean_and_vocab_normalisation():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [7.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    cfg = AEPORolloutConfig(entropy_window=3)
    assert step_entropy(h, mask, cfg).tolist() == [8.0, 7.0]  # tokens 1, 3, 4 (the masked 2 is skipped)
    assert step_entropy(h, mask, AEPORolloutConfig(entropy_window=3, window_reduce="mean")).tolist() == pytest.approx(
        [8 / 3, 7]
    )
    got = step_entropy(h, mask, cfg, vocab_size=100)
    torch.testing.assert_close(got, torch.tensor([8.0, 7.0]) / math.log(100))
    padded = step_entropy(torch.cat([h, torch.full((2, 3), 99.0)], 1), torch.cat([mask, torch.zeros(2, 3)], 1), cfg)
    assert padded.tolist() == [8.0, 7.0]  # extra masked columns change nothing
    assert step_entropy(h, torch.zeros_like(mask), cfg).tolist() == [0.0, 0.0]
    assert topk_partial_entropy(torch.log(torch.tensor([[0.5, 0.5], [1.0, 1e-30]]))).tolist() == pytest.approx(
        [math.log(2), 0.0], abs=1e-6
    )


# ---- the branch rule: P = clip(alpha + gamma dH, 0, 1), AEPO's penalty P (1 - Pen(l)) --------------------------


def test_branch_probability_closed_form_and_clipping():
    p = branch_probability(torch.tensor([0.4, 0.4, 2.0, -2.0, 0.4]), torch.tensor([0, 2, 0, 0, 40]), CFG)
    assert p.tolist() == pytest.approx([0.7, 0.63, 1.0, 0.0, 0.0])  # Pen(40) = min(1, 2) = 1
    q = branch_probability(torch.tensor([0.4, 0.0, 0.0]), torch.tensor([2, 0, 5]), CODE)
    assert q.tolist() == pytest.approx([1 - 0.5 / 0.9 + 0.2, 0.5, 1 - 0.5 / 0.75])
    arpo = AEPORolloutConfig(penalty_coef=0.0)  # ARPO's rule: the penalty is off
    assert branch_probability(torch.tensor([0.4]), torch.tensor([7]), arpo).item() == pytest.approx(0.7)


def test_penalty_lowers_the_probability_as_l_grows():
    ls = torch.arange(0, 25)
    for cfg in (CFG, CODE):
        p = branch_probability(torch.full((25,), 0.3), ls, cfg)
        positive = p > 0
        assert torch.all(p[1:] <= p[:-1]) and torch.all((p[1:] < p[:-1])[positive[:-1] & positive[1:]])
        assert p[20:].eq(0).all()  # Pen(l) = 1 from l = 1 / 0.05


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
def test_gamma_zero_branches_at_frequency_alpha(alpha):
    n = 100_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(7))
    zeros, l0 = torch.randn(n, generator=torch.Generator().manual_seed(8)), torch.zeros(n, dtype=torch.long)
    paper = branch_decisions(zeros, l0, u, AEPORolloutConfig(alpha=alpha, gamma=0.0)).double().mean().item()
    code = branch_decisions(zeros, l0, u, AEPORolloutConfig(alpha=alpha, gamma=0.0, rule="code")).double().mean()
    assert paper == pytest.approx(alpha, abs=0.006)
    assert code.item() == pytest.approx(1 - alpha, abs=0.006)  # the released code's comparison runs the other way


@pytest.mark.parametrize("cfg", [CFG, CODE], ids=["paper", "code"])
def test_decision_frequency_matches_the_probability(cfg):
    n = 100_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(3))
    for dh, l in ((0.3, 0), (0.3, 3), (-0.4, 1)):
        freq = branch_decisions(torch.full((n,), dh), torch.full((n,), l), u, cfg).double().mean().item()
        assert freq == pytest.approx(branch_probability(torch.tensor([dh]), torch.tensor([l]), cfg).item(), abs=0.006)


def test_next_consecutive():
    assert next_consecutive(torch.tensor([0, 4, 2]), torch.tensor([1, 1, 0])).tolist() == [1, 5, 0]


# ---- choose_branches: the remaining budget, determinism ---------------------------------------------------------


def _cands(n, dh=0.0, l=0):
    return [(i, 1 + i % 2, dh, l) for i in range(n)]


def test_the_remaining_budget_is_respected_exactly():
    always = AEPORolloutConfig(alpha=1.0, gamma=0.0)
    for remaining in range(0, 9):
        got = choose_branches(_cands(5), remaining, torch.Generator().manual_seed(0), always)
        assert len(got) == min(remaining, 5) and got == [(i, 1 + i % 2) for i in range(min(remaining, 5))]
    wide = AEPORolloutConfig(alpha=1.0, branch_width=2)
    assert choose_branches(_cands(3), 5, None, wide) == [(0, 1), (0, 1), (1, 2), (1, 2), (2, 1)]
    capped = AEPORolloutConfig(alpha=1.0, branch_width=3, max_branches=2)
    assert choose_branches([(4, 1, 0.0, 0), (4, 2, 0.0, 0), (6, 1, 0.0, 0)], 9, None, capped) == [
        (4, 1),
        (4, 1),
        (6, 1),
        (6, 1),
    ]
    never = AEPORolloutConfig(alpha=0.0, gamma=0.0)
    assert choose_branches(_cands(4), 4, None, never) == [] and choose_branches([], 3, None, CFG) == []


def test_deterministic_given_the_generator_and_draws_n_times_width():
    cands = [(i, 1, 0.1 * i - 0.2, i % 3) for i in range(12)]
    cfg = AEPORolloutConfig(branch_width=2)
    runs = [choose_branches(cands, 6, torch.Generator().manual_seed(11), cfg) for _ in range(2)]
    assert runs[0] == runs[1] and 0 < len(runs[0]) <= 6
    g = torch.Generator().manual_seed(11)
    u = torch.rand(12, 2, generator=g, dtype=torch.float64)  # the very draws choose_branches makes
    passed = (
        branch_decisions(
            torch.tensor([c[2] for c in cands]).repeat_interleave(2),
            torch.tensor([c[3] for c in cands]).repeat_interleave(2),
            u.flatten(),
            cfg,
        )
        .view(12, 2)
        .sum(-1)
    )
    expected = [(i, 1) for i in range(12) for _ in range(int(passed[i]))][:6]
    assert runs[0] == expected
    g2 = torch.Generator().manual_seed(11)
    choose_branches(cands, 0, g2, cfg)  # budget 0 still consumes 12 * 2 draws
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=g))


def test_entropy_order_spends_the_budget_on_the_largest_gaps():
    cands = [(0, 1, 0.1, 0), (1, 1, 0.9, 0), (2, 1, 0.5, 0), (3, 1, 0.9, 0)]
    cfg = AEPORolloutConfig(alpha=1.0, order="entropy")
    assert choose_branches(cands, 3, None, cfg) == [(1, 1), (3, 1), (2, 1)]  # ties keep the given order


# ---- entropy-aware advantage -------------------------------------------------------------------------------------


def test_entropy_aware_advantage_closed_form_identity_and_env_tokens():
    adv = torch.tensor([[2.0], [-1.0]])
    h = torch.tensor([[0.0, 1.0, 7.0], [2.0, 5.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])  # two environment / padding tokens
    # kept entropies [0, 1, 2, 1]: mean 1, unbiased std sqrt(2/3) -> z = [-1.2247, 0, 1.2247, 0]
    out = entropy_aware_advantage(adv, h, mask, AEPOAdvantageConfig(alpha=0.2))
    z = 1 / math.sqrt(2 / 3)
    expected = torch.tensor([[2 * (1 - 0.2 * z), 2.0, 0.0], [-(1 + 0.2 * z), 0.0, -1.0]])
    torch.testing.assert_close(out, expected)
    garbage = torch.where(mask.bool(), h, torch.tensor(1e6))
    assert torch.equal(
        entropy_aware_advantage(adv, garbage, mask, AEPOAdvantageConfig()),
        entropy_aware_advantage(adv, h, mask, AEPOAdvantageConfig()),
    )
    identity = torch.where(mask.bool(), adv.expand(2, 3), 0.0)
    assert torch.equal(entropy_aware_advantage(adv, h, mask, AEPOAdvantageConfig(alpha=0.0)), identity)
    assert torch.equal(entropy_aware_advantage(adv, torch.full((2, 3), 0.7), mask, AEPOAdvantageConfig()), identity)
    tok = entropy_aware_advantage(adv.expand(2, 3).clone(), h, mask, AEPOAdvantageConfig())
    assert torch.equal(tok, entropy_aware_advantage(adv, h, mask, AEPOAdvantageConfig()))  # [B, 1] == [B, T]
    # entropies [0, 0, 0, 100]: mean 25, unbiased std 50, z = [-0.5, -0.5, -0.5, 1.5]; alpha 3: factor 1 + 3 z
    spike, ones = torch.tensor([[0.0, 0, 0, 100]]), torch.ones(1, 4)
    flipped = entropy_aware_advantage(torch.ones(1, 1), spike, ones, AEPOAdvantageConfig(alpha=3.0))
    assert flipped.tolist() == [[-0.5, -0.5, -0.5, 5.5]]  # the paper / code form can flip a sign
    clamped = entropy_aware_advantage(torch.ones(1, 1), spike, ones, AEPOAdvantageConfig(alpha=3.0, clamp=True))
    assert clamped.tolist() == [[0.0, 0.0, 0.0, 5.5]]


def test_aepo_adv_reduces_to_grpo_and_keeps_the_contract():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (8,), generator=g).float()
    gid = torch.tensor([1, 0, 1, 0, 3, 2, 2, 3])  # groups by id, any order
    mask = (torch.rand(8, 6, generator=g) > 0.3).float()
    ent = torch.rand(8, 6, generator=g) * 2
    parent = grpo(rewards, mask, cfg=GRPOConfig(), group_id=gid)[0] * mask  # [B, T]
    flat = aepo_adv(rewards, mask, cfg=AEPOAdvantageConfig(), group_id=gid, old_entropy=torch.ones(8, 6))[0]
    off = aepo_adv(rewards, mask, cfg=AEPOAdvantageConfig(alpha=0.0), group_id=gid, old_entropy=ent)[0]
    torch.testing.assert_close(flat, parent)
    torch.testing.assert_close(off, parent)
    adv, m = aepo_adv(rewards, mask, cfg=AEPOAdvantageConfig(), group_id=gid, old_entropy=ent)
    garbage = torch.where(mask.bool(), ent, torch.tensor(-123.0))
    assert torch.equal(adv, aepo_adv(rewards, mask, cfg=AEPOAdvantageConfig(), group_id=gid, old_entropy=garbage)[0])
    assert torch.all(adv[mask == 0] == 0) and set(m) == set(ADV_METRICS)
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in m.values())
    perm = torch.randperm(8, generator=g)
    shuffled = aepo_adv(rewards[perm], mask[perm], cfg=AEPOAdvantageConfig(), group_id=gid[perm], old_entropy=ent[perm])
    torch.testing.assert_close(shuffled[0], adv[perm])
    entry = lookup("advantage", "aepo_adv")
    assert entry.needs == ("old_entropy",) and entry.metrics == ADV_METRICS and not entry.reconstructed
    _, empty = aepo_adv(rewards, torch.zeros(8, 6), cfg=AEPOAdvantageConfig(), group_id=gid, old_entropy=ent)
    assert empty["adv/entropy_factor_min"].item() == 1.0
    with pytest.raises(ValueError, match="needs old_entropy"):
        aepo_adv(rewards, mask, cfg=AEPOAdvantageConfig(), group_id=gid)
    with pytest.raises(ValueError, match=">= 2 samples"):
        aepo_adv(
            rewards[:2], mask[:2], cfg=AEPOAdvantageConfig(), group_id=ops.contiguous_groups(2, 1), old_entropy=ent[:2]
        )


# ---- config errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha must be in"),
        ({"gamma": -0.1}, "gamma must be >= 0"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"penalty_coef": -0.05}, "penalty_coef must be >= 0"),
        ({"branch_width": 0}, "branch_width must be >= 1"),
        ({"max_branches": 0}, "max_branches must be >= 1"),
        ({"entropy_window": 0}, "entropy_window must be >= 1"),
        ({"rule": "arpo"}, r"rule must be one of \['paper', 'code'\], got 'arpo'"),
        ({"rounding": "ceil"}, r"rounding must be one of \['nearest', 'code'\]"),
        ({"order": "random"}, "order must be one of"),
        ({"window_reduce": "max"}, "window_reduce must be one of"),
        ({"tool_turns": "first"}, "tool_turns must be one of"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AEPORolloutConfig(**kwargs)


def test_call_errors():
    with pytest.raises(ValueError, match="budget k must be >= 1, got 0"):
        global_budget(0, 1.0, 1.0, CFG)
    with pytest.raises(ValueError, match="remaining budget must be >= 0, got -1"):
        choose_branches(_cands(2), -1, None, CFG)
    with pytest.raises(ValueError, match="aepo_adv alpha must be >= 0"):
        AEPOAdvantageConfig(alpha=-0.2)
