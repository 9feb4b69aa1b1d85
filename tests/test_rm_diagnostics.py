"""entrolab.rm_diagnostics: STARC's invariances (bandit and tabular) and the Contrast-Instructions metrics."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import rm_diagnostics as rd

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------
# STARC, bandit (prompt -> completion) setting
# ----------------------------------------------------------------------------------------------------------
def test_canonicalisation_removes_each_prompts_mean_with_any_ids_and_group_sizes():
    c = rd.canonicalise_bandit(torch.tensor([1.0, 3.0, 5.0, 2.0, 2.0]), torch.tensor([9, 9, 4, 1, 1]))
    assert c.tolist() == [-1.0, 1.0, 0.0, 0.0, 0.0]  # the singleton prompt 4 has nothing to compare with


def test_hand_computed_distance():
    # c1 = [.5, -.5, -1.5, 1.5], c2 = [-.5, .5, -1.5, 1.5]: ||c||^2 = 5, c1.c2 = 4, cos = 0.8
    gid = torch.tensor([0, 0, 1, 1])
    d = rd.starc_distance(torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 5.0]), gid)
    assert d == pytest.approx(0.5 * math.sqrt(2 - 2 * 0.8)) and d == pytest.approx(math.sqrt(0.1))
    assert rd.starc_distance(
        torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.zeros(2), scale=1.0
    ) == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(3))
def test_scaling_and_per_prompt_offsets_are_invisible_and_negation_is_maximal(seed):
    g = gen(seed)
    gid = torch.arange(5).repeat_interleave(4)
    r = torch.randn(20, generator=g, dtype=F64)
    offset = torch.randn(5, generator=g, dtype=F64)[gid]  # potential shaping of a one-step MDP: -Phi(x)
    assert rd.starc_distance(r, 2.5 * r + offset, gid) < 1e-12
    assert rd.starc_distance(r, r + 7.0, gid) < 1e-12  # a constant shift is an offset
    assert rd.starc_distance(r, -r, gid) == pytest.approx(1.0, abs=1e-12)
    assert rd.starc_distance(r, -3 * r + offset, gid) == pytest.approx(1.0, abs=1e-12)


def test_a_reward_constant_within_every_prompt_standardises_to_zero():
    gid = torch.tensor([0, 0, 0, 1, 1, 1])
    flat = torch.tensor([0.1, 0.1, 0.1, 4.0, 4.0, 4.0])  # sums of 0.1 round: c ~ 1e-17, still "zero"
    r = torch.tensor([1.0, 0.0, 2.0, 5.0, 3.0, 3.0])
    assert rd.starc_distance(flat, r, gid) == pytest.approx(0.5) == rd.starc_distance(r, flat, gid)
    assert rd.starc_distance(flat, 2 * flat + 1, gid) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_symmetry_triangle_inequality_and_row_order(seed):
    g = gen(seed)
    gid = torch.arange(4).repeat_interleave(3)
    a, b, c = (torch.randn(12, generator=g, dtype=F64) for _ in range(3))
    d = rd.starc_distance
    assert d(a, b, gid) == pytest.approx(d(b, a, gid), abs=1e-15)
    assert d(a, c, gid) <= d(a, b, gid) + d(b, c, gid) + 1e-12
    assert 0.0 <= d(a, b, gid) <= 1.0
    perm = torch.randperm(12, generator=g)
    assert d(a[perm], b[perm], gid[perm] * 10 + 3) == pytest.approx(d(a, b, gid), abs=1e-12)


def test_bandit_estimate_equals_tabular_gamma_zero_when_every_completion_is_sampled_once():
    g = gen(7)
    n_prompts, n_completions = 3, 4
    r1 = torch.randn(n_prompts, n_completions, generator=g, dtype=F64)
    r2 = torch.randn(n_prompts, n_completions, generator=g, dtype=F64)
    tau = torch.full((n_prompts, n_completions, n_prompts), 1.0 / n_prompts, dtype=F64)  # any tau at gamma = 0
    gid = torch.arange(n_prompts).repeat_interleave(n_completions)
    sampled = rd.starc_distance(r1.flatten(), r2.flatten(), gid)
    assert sampled == pytest.approx(rd.starc_tabular(r1, r2, tau, 0.0), abs=1e-12)


def test_bandit_inputs_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        rd.starc_distance(torch.ones(3), torch.ones(4), torch.zeros(3))
    with pytest.raises(ValueError, match="group_id must be"):
        rd.starc_distance(torch.ones(3), torch.ones(3), torch.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        rd.starc_distance(torch.tensor([1.0, math.nan]), torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="scale must be > 0"):
        rd.starc_distance(torch.ones(2), torch.ones(2), torch.zeros(2), scale=0.0)


# ----------------------------------------------------------------------------------------------------------
# STARC, tabular MDP (the note's checks: 4 states, 2 actions, gamma = 0.9)
# ----------------------------------------------------------------------------------------------------------
def mdp(seed: int):
    g = gen(seed)
    tau = torch.softmax(2 * torch.randn(4, 2, 4, generator=g, dtype=F64), -1)
    reward = torch.randn(4, 2, 4, generator=g, dtype=F64)
    return g, tau, reward


@pytest.mark.parametrize("seed", range(3))
def test_tabular_note_checks(seed):
    g, tau, r = mdp(seed)
    phi = torch.randn(4, generator=g, dtype=F64)
    shaped = 3 * r + 0.9 * phi.view(1, 1, 4) - phi.view(4, 1, 1)
    assert rd.starc_tabular(r, shaped, tau, 0.9) < 1e-12  # scaling + shaping (note: ~4.5e-16)
    assert rd.starc_tabular(r, r + 5, tau, 0.9) < 1e-12  # constant shift (note: ~7e-15)
    assert rd.starc_tabular(r, -r, tau, 0.9) == pytest.approx(1.0, abs=1e-12)
    assert rd.canonicalise_val(torch.full((4, 2), 2.0, dtype=F64), tau, 0.9).abs().max() < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_tabular_redistribution_policy_symmetry_and_triangle(seed):
    g, tau, r = mdp(seed)
    noise = torch.randn(4, 2, 4, generator=g, dtype=F64)
    redistributed = r + noise - (tau * noise).sum(-1, keepdim=True)  # E_{S'}[X] = 0: S'-redistribution
    pi = torch.softmax(torch.randn(4, 2, generator=g, dtype=F64), -1)
    assert rd.starc_tabular(r, redistributed, tau, 0.9, pi) < 1e-12
    a, b, c = (torch.randn(4, 2, 4, generator=g, dtype=F64) for _ in range(3))
    d = rd.starc_tabular
    assert d(a, b, tau, 0.9, pi) == pytest.approx(d(b, a, tau, 0.9, pi), abs=1e-15)
    assert d(a, c, tau, 0.9) <= d(a, b, tau, 0.9) + d(b, c, tau, 0.9) + 1e-12


def test_value_function_solves_bellman_and_c_val_is_the_advantage():
    _, tau, r = mdp(0)
    pi = torch.tensor([[0.3, 0.7]] * 4, dtype=F64)
    v = rd.value_function(r, tau, 0.9, pi)
    q = (tau * (r + 0.9 * v.view(1, 1, 4))).sum(-1)  # [S, A]
    torch.testing.assert_close((pi * q).sum(-1), v)  # V = E_pi Q
    torch.testing.assert_close(rd.canonicalise_val(r, tau, 0.9, pi), q - v.unsqueeze(-1))
    assert torch.allclose((pi * rd.canonicalise_val(r, tau, 0.9, pi)).sum(-1), torch.zeros(4, dtype=F64))


def test_tabular_inputs_are_checked():
    _, tau, r = mdp(0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        rd.starc_tabular(r, r, tau, 1.0)
    with pytest.raises(ValueError, match="probability distribution"):
        rd.starc_tabular(r, r, tau * 2, 0.9)
    with pytest.raises(ValueError, match="R must be"):
        rd.starc_tabular(r[:, :, :2], r, tau, 0.9)
    with pytest.raises(ValueError, match="pi must be"):
        rd.starc_tabular(r, r, tau, 0.9, torch.ones(4, 2))


# ----------------------------------------------------------------------------------------------------------
# Contrast Instructions
# ----------------------------------------------------------------------------------------------------------
def test_note_example():
    # r(I1,R1) = 2, r(I1,R2) = 1, r(I2,R2) = 0.5, r(I2,R1) = 0.7
    out = rd.contrast_consistency(2.0, 1.0, 0.5, 0.7)
    assert out == {"response": 0.0, "instruction": 0.0, "instruction_one_way": 1.0}


def test_fractions_over_examples_and_strict_ties():
    s11 = torch.tensor([2.0, 2.0, 1.0, 3.0])
    s12 = torch.tensor([1.0, 1.0, 2.0, 0.0])
    s22 = torch.tensor([3.0, 0.5, 2.0, 1.0])
    s21 = torch.tensor([0.0, 0.7, 2.0, 3.0])  # row 3: s11 == s21, a tie is inconsistent
    out = rd.contrast_consistency(s11, s12, s22, s21)
    # response: rows 0 (2>1, 3>0), not 1 (0.5<0.7), not 2 (1<2), row 3 (3>0, 1<3: no) -> 1/4
    # instruction: row 0 (2>0, 3>1), not 1 (0.5<1), not 2 (1<2), not 3 (tie) -> 1/4; one way: rows 0, 1 -> 2/4
    assert out == {"response": 0.25, "instruction": 0.25, "instruction_one_way": 0.5}


@pytest.mark.parametrize("scale,shift", [(3.0, -2.0), (0.01, 100.0)])
def test_invariant_to_positive_affine_maps(scale, shift):
    g = gen(3)
    scores = [torch.randn(50, generator=g, dtype=F64) for _ in range(4)]
    base = rd.contrast_consistency(*scores)
    assert rd.contrast_consistency(*[scale * s + shift for s in scores]) == base
    flipped = rd.contrast_consistency(*[-s for s in scores])  # a negative map reverses every comparison
    assert flipped["instruction_one_way"] == pytest.approx(1.0 - base["instruction_one_way"])


def test_contrast_inputs_are_checked():
    with pytest.raises(ValueError, match="same non-empty"):
        rd.contrast_consistency(torch.ones(2), torch.ones(3), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="finite"):
        rd.contrast_consistency(math.inf, 1.0, 1.0, 1.0)
