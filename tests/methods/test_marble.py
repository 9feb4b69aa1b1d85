"""MARBLE and GDPO: the reduction to GRPO, the note's MGDA closed forms, NaN components, invariances, errors."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.marble import GdpoConfig, MarbleConfig, gdpo, marble, min_norm_weights

ONE = torch.zeros(4, dtype=torch.long)


def run(fn, parts, cfg, gid=ONE):
    parts = torch.as_tensor(parts, dtype=torch.float32)
    adv, m = fn(parts.nansum(1), torch.ones(parts.shape[0], 2), cfg=cfg, group_id=gid, reward_parts=parts)
    return adv.squeeze(1), m


def unit(v) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm()


# ----------------------------------------------------------------------------------------------------------
# one reward component: both are GRPO
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_one_component_is_grpo_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (12,), generator=g).float() + torch.rand(12, generator=g)
    gid = torch.randperm(12, generator=g) % 3  # shuffled groups of 4
    mask = torch.ones(12, 5)
    ref, ref_m = grpo(r, mask, cfg=GRPOConfig(), group_id=gid)
    for cfg in (MarbleConfig(), MarbleConfig(alpha="equal", combine="amortised")):
        adv, m = marble(r, mask, cfg=cfg, group_id=gid, reward_parts=r.unsqueeze(1))
        assert torch.equal(adv, ref) and m["marble/alpha_max"].item() == 1.0
        assert m["adv/frac_zero_std_groups"] == ref_m["adv/frac_zero_std_groups"]
    adv, _ = gdpo(r, mask, cfg=GdpoConfig(batch_norm=False), group_id=gid, reward_parts=r.unsqueeze(1))
    assert torch.equal(adv, ref)
    normed, _ = gdpo(r, mask, cfg=GdpoConfig(), group_id=gid, reward_parts=r.unsqueeze(1))
    torch.testing.assert_close(normed, (ref - ref.mean()) / (ref.std() + 1e-6))  # the paper's batch step


# ----------------------------------------------------------------------------------------------------------
# the min-norm QP (the note's closed forms)
# ----------------------------------------------------------------------------------------------------------
def test_note_mgda_cases():
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert min_norm_weights(torch.stack([e1, e2]) @ torch.stack([e1, e2]).T).tolist() == [0.5, 0.5]
    same = torch.stack([e1, e1])
    a = min_norm_weights(same @ same.T)  # any alpha is optimal; the direction is (1, 0)
    torch.testing.assert_close(a @ same, e1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        g1, g2 = unit(torch.randn(3, generator=g)), unit(torch.randn(3, generator=g))
        stack = torch.stack([g1, g2])
        expected = float(((g2 - g1) @ g2 / (g1 - g2).norm() ** 2).clamp(0, 1))
        assert min_norm_weights(stack @ stack.T)[0].item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [3, 4, 6])
def test_min_norm_point_satisfies_the_mgda_condition(k):
    """d = sum alpha_k g_k has d . g_k >= ||d||^2 for every k (equality on the support), d != 0 here."""
    g = torch.Generator().manual_seed(k)
    grads = torch.stack([unit(torch.randn(5, generator=g) + 1.0) for _ in range(k)])  # [K, 5], 0 not in the hull
    alpha = min_norm_weights(grads @ grads.T)
    d = alpha @ grads
    assert alpha.min() >= 0 and alpha.sum().item() == pytest.approx(1.0)
    assert torch.all(grads @ d >= d @ d - 1e-9) and d.norm() > 1e-3
    on = alpha > 1e-6
    torch.testing.assert_close(grads[on] @ d, torch.full((int(on.sum()),), float(d @ d), dtype=torch.float64))
    floored = min_norm_weights(grads @ grads.T, floor=0.1)
    assert floored.min() >= 0.1 - 1e-12 and floored.sum().item() == pytest.approx(1.0)
    assert float(floored @ grads @ grads.T @ floored) >= float(alpha @ grads @ grads.T @ alpha) - 1e-12


def test_opposite_rewards_put_zero_in_the_hull_and_the_direction_vanishes():
    adv, m = run(marble, [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], MarbleConfig())
    assert torch.allclose(adv, torch.zeros(4), atol=1e-6) and m["marble/alpha_max"].item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------
# MARBLE's advantage
# ----------------------------------------------------------------------------------------------------------
def test_hand_computed_two_rewards():
    # A1 = z([1, 0, 1, 0]) = 0.866 [1, -1, 1, -1]; A2 = z([1, 1, 1, 0]) = [.25, .25, .25, -.75] / 0.5;
    # cos(A1, A2) = 1 / sqrt(3), and for two unit directions alpha_1 = (1 - cos) / (2 - 2 cos) = 1/2
    parts = [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    adv, m = run(marble, parts, MarbleConfig())
    a1 = torch.tensor([1.0, -1.0, 1.0, -1.0]) * (0.5 / math.sqrt(1 / 3))
    a2 = torch.tensor([0.25, 0.25, 0.25, -0.75]) / (0.5 + 1e-6)
    g1, g2 = a1 / a1.norm(), a2 / a2.norm()
    alpha1 = float((g2 - g1) @ g2 / (g1 - g2).norm() ** 2)  # cos = 0.577: alpha = (1/2, 1/2)
    expected = (alpha1 * g1 + (1 - alpha1) * g2) * (a1.norm() + a2.norm()) / 2
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    assert m["marble/alpha_min"].item() == pytest.approx(0.5, abs=1e-6) and m["marble/valid_frac"].item() == 1.0
    amortised, _ = run(marble, parts, MarbleConfig(combine="amortised"))
    torch.testing.assert_close(amortised, 0.5 * a1 + 0.5 * a2, rtol=1e-5, atol=1e-6)


def test_mgda_keeps_every_reward_aligned_where_equal_weights_do_not():
    # components 1 and 2 agree, component 3 opposes them: equal weights point away from reward 3
    parts = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.9, 0.2], [0.0, 0.1, 0.8]]
    _, mgda_m = run(marble, parts, MarbleConfig())
    _, equal_m = run(marble, parts, MarbleConfig(alpha="equal"))
    assert mgda_m["marble/min_cos"].item() >= -1e-6 and equal_m["marble/min_cos"].item() < 0


def test_not_applicable_components_and_the_single_valid_case():
    # reward 2 applies only to group 0 (rows 0-3); group 1 (rows 4-7) has NaN there
    r1 = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    r2 = [0.0, 1.0, 1.0, 0.0] + [math.nan] * 4
    parts = torch.tensor([r1, r2]).T
    gid = torch.arange(2).repeat_interleave(4)
    adv, _ = run(marble, parts, MarbleConfig(combine="amortised", alpha="equal"), gid)
    z1 = grpo(torch.tensor(r1), torch.ones(8, 1), cfg=GRPOConfig(), group_id=gid)[0].squeeze(1)
    z2 = torch.tensor([-1.0, 1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0]) * (0.5 / (math.sqrt(1 / 3) + 1e-6))
    torch.testing.assert_close(adv, 0.5 * z1 + 0.5 * z2)
    # the full solve scales reward 2 by B / n_2 = 2 (its loss is averaged over its own 4 rows), which only moves
    # the rescale factor: mean(||A1||, 2 ||A2||)
    full, _ = run(marble, parts, MarbleConfig(), gid)
    g1, g2 = z1 / z1.norm(), z2 / z2.norm()
    a = float(((g2 - g1) @ g2 / (g1 - g2).norm() ** 2).clamp(0, 1))
    torch.testing.assert_close(full, (a * g1 + (1 - a) * g2) * (z1.norm() + 2 * z2.norm()) / 2)
    only, m = run(marble, [[1.0, 5.0], [0.0, 5.0], [1.0, 5.0], [0.0, 5.0]], MarbleConfig())  # reward 2 is flat
    assert torch.equal(only, run(marble, [[1.0], [0.0], [1.0], [0.0]], MarbleConfig())[0])
    assert m["marble/valid_frac"].item() == 0.5 and m["marble/alpha_max"].item() == 1.0
    ablation, _ = run(
        marble, [[1.0, 5.0], [0.0, 5.0], [1.0, 5.0], [0.0, 5.0]], MarbleConfig(alpha="equal", combine="amortised")
    )
    torch.testing.assert_close(ablation, 0.5 * only)  # the code's equal alpha: 1/K on every reward, flat or not
    flat, m = run(marble, [[1.0, 2.0]] * 4, MarbleConfig())
    assert torch.equal(flat, torch.zeros(4)) and m["marble/valid_frac"].item() == 0.0
    assert m["adv/frac_zero_std_groups"].item() == 1.0


def test_invariant_to_row_order_and_to_each_components_scale():
    g = torch.Generator().manual_seed(1)
    parts = torch.rand(12, 3, generator=g)
    gid = ops.contiguous_groups(12, 4)
    adv, _ = run(marble, parts, MarbleConfig(), gid)
    perm = torch.randperm(12, generator=g)
    shuffled, _ = run(marble, parts[perm], MarbleConfig(), gid[perm])
    torch.testing.assert_close(shuffled, adv[perm])
    rescaled, _ = run(marble, parts * torch.tensor([10.0, 0.1, 3.0]) + 2.0, MarbleConfig(eps=0.0), gid)
    torch.testing.assert_close(rescaled, run(marble, parts, MarbleConfig(eps=0.0), gid)[0], rtol=1e-4, atol=1e-5)
    weighted, _ = run(marble, parts, MarbleConfig(weights=(1.0, 1.0, 1.0)), gid)
    torch.testing.assert_close(weighted, adv)


# ----------------------------------------------------------------------------------------------------------
# GDPO
# ----------------------------------------------------------------------------------------------------------
def test_gdpo_keeps_reward_combinations_apart_where_grpo_collapses_them():
    # group 0: (1, 0) vs (0, 0); group 1: (1, 1) vs (0, 0): the summed rewards [1, 0] and [2, 0] give GRPO the
    # same advantages, GDPO twice the advantage in group 1
    parts = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    gid = torch.tensor([0, 0, 1, 1])
    summed = grpo(parts.sum(1), torch.ones(4, 1), cfg=GRPOConfig(), group_id=gid)[0].squeeze(1)
    assert summed[0].item() == pytest.approx(summed[2].item())
    adv, m = run(gdpo, parts, GdpoConfig(batch_norm=False), gid)
    z = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert adv.tolist() == pytest.approx([z, -z, 2 * z, -2 * z])
    normed, m = run(gdpo, parts, GdpoConfig(), gid)
    std = math.sqrt((2 * z * z + 8 * z * z) / 3)  # unbiased std of [z, -z, 2z, -2z]
    assert normed.tolist() == pytest.approx([z / std, -z / std, 2 * z / std, -2 * z / std], rel=1e-5)
    assert m["gdpo/pre_norm_std"].item() == pytest.approx(math.sqrt(2.5) * z)
    mean, _ = run(gdpo, parts, GdpoConfig(batch_norm=False, reduce="mean", weights=(3.0, 1.0)), gid)
    assert mean.tolist() == pytest.approx([0.75 * z, -0.75 * z, z, -z])


def test_gdpo_counts_nan_as_zero_and_ignores_padding():
    parts = torch.tensor([[1.0, math.nan], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    adv, _ = run(gdpo, parts, GdpoConfig())
    assert torch.equal(adv, run(gdpo, torch.nan_to_num(parts), GdpoConfig())[0])
    wide, _ = gdpo(parts.nansum(1), torch.ones(4, 7), cfg=GdpoConfig(), group_id=ONE, reward_parts=parts)
    assert torch.equal(wide.squeeze(1), adv)


def test_bad_inputs_and_config():
    with pytest.raises(ValueError, match="needs reward_parts"):
        marble(torch.ones(4), torch.ones(4, 1), cfg=MarbleConfig(), group_id=ONE)
    with pytest.raises(ValueError, match=r"reward_parts must be \[B, K\]"):
        gdpo(torch.ones(4), torch.ones(4, 1), cfg=GdpoConfig(), group_id=ONE, reward_parts=torch.ones(4))
    with pytest.raises(ValueError, match="weights has 3 entries for K = 2"):
        run(marble, torch.rand(4, 2), MarbleConfig(weights=(1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="alpha_floor \\* K must be <= 1"):
        run(marble, torch.rand(4, 3), MarbleConfig(alpha_floor=0.5))
    with pytest.raises(ValueError, match=">= 2 samples per group"):
        run(marble, torch.rand(4, 2), MarbleConfig(), torch.arange(4))
    with pytest.raises(ValueError, match="got inf"):
        run(marble, [[math.inf, 0.0]] * 4, MarbleConfig())
    with pytest.raises(ValueError, match=r"alpha must be one of \['mgda', 'equal'\], got 'pcgrad'"):
        MarbleConfig(alpha="pcgrad")
    with pytest.raises(ValueError, match="combine must be one of"):
        MarbleConfig(combine="ema")
    with pytest.raises(ValueError, match="weights must be > 0"):
        MarbleConfig(weights=(1.0, 0.0))
    with pytest.raises(ValueError, match="reduce must be one of"):
        GdpoConfig(reduce="max")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        GdpoConfig(eps=-1.0)


def test_gdpo_token_batch_stats_weight_each_sequence_by_its_length():
    import torch

    from entrolab.methods.marble import GdpoConfig, gdpo

    parts = torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.float64)  # lengths 3, 1, 1, 2
    gid = torch.zeros(4).long()
    s, _ = gdpo(parts[:, 0], mask, cfg=GdpoConfig(batch_norm=False), group_id=gid, reward_parts=parts)
    adv, _ = gdpo(parts[:, 0], mask, cfg=GdpoConfig(batch_stats="tokens"), group_id=gid, reward_parts=parts)
    n = torch.tensor([3.0, 1, 1, 2], dtype=torch.float64)
    mean = (s.squeeze(1) * n).sum() / 7
    var = ((s.squeeze(1) - mean).square() * n).sum() / 6  # Bessel over the 7 tokens
    torch.testing.assert_close(adv.squeeze(1), (s.squeeze(1) - mean) / torch.sqrt(var + 1e-8))
    with pytest.raises(ValueError, match="batch_stats must be one of"):
        GdpoConfig(batch_stats="rows")
