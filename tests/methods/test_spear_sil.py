"""SPEAR's curriculum (arXiv:2509.22601): mu(k), R_tool, gamma(k), the P50 recalibration and the replay size.

The numbers are the research note's (methods_entropy.md section 17 (f)); the defaults and options follow
``TencentYoutuResearch/SPEAR`` @ 7e84315 (README, the ``*_spear.sh`` scripts, ``episode.py``, ``reward.py``,
``ray_trainer_hybrid.py``, ``dp_actor.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entrolab.methods.spear_sil import (
    SpearReplayConfig,
    SpearToolRewardConfig,
    recalibrate,
    replay_coef,
    replay_due,
    replay_size,
    spear_tool_reward,
    tool_weight,
)


def shape(rewards, calls, step, cfg=None, turns=None):
    r = torch.tensor(rewards, dtype=torch.float32)
    calls = torch.tensor(calls)
    out, m = spear_tool_reward(
        r,
        torch.ones(len(rewards), 3),
        cfg=cfg or SpearToolRewardConfig(),
        group_id=torch.zeros(len(rewards), dtype=torch.long),
        lengths=None,
        truncated=None,
        max_length=8,
        tool_calls=calls,
        turns=calls + 1 if turns is None else torch.tensor(turns),
        step=step,
    )
    return out, m


def test_mu_is_one_at_zero_zero_at_k_t_and_after():
    cfg = SpearToolRewardConfig(max_steps=100)
    assert tool_weight(0, cfg) == 1.0 and tool_weight(100, cfg) == 0.0
    assert tool_weight(101, cfg) == 0.0 and tool_weight(10_000, cfg) == 0.0
    assert tool_weight(50, cfg) == pytest.approx(0.5) and tool_weight(25, cfg) == pytest.approx((1 + 2**-0.5) / 2)
    weights = [tool_weight(k, cfg) for k in range(0, 101)]
    assert weights == sorted(weights, reverse=True)
    assert (
        tool_weight(7, SpearToolRewardConfig(mode="constant"))
        == tool_weight(999, SpearToolRewardConfig(mode="constant"))
        == 1.0
    )
    assert tool_weight(0, SpearToolRewardConfig(mode="none")) == 0.0


def test_r_tool_is_a_tenth_per_call_and_caps_at_one_from_ten_calls():
    out, m = shape([0.0] * 6, [0, 1, 5, 10, 11, 40], step=0)  # mu(0) = 1
    assert out.tolist() == pytest.approx([0.0, 0.1, 0.5, 1.0, 1.0, 1.0])
    assert m["spear/tool_weight"].item() == 1.0
    assert m["spear/tool_reward_mean"].item() == pytest.approx(3.6 / 6)
    out, m = shape([1.0, 0.0], [3, 12], step=200)  # default K_t = 200: the bonus has faded out
    assert out.tolist() == [1.0, 0.0] and m["spear/tool_reward_mean"].item() == 0.0


def test_count_turns_and_the_qwen3_success_indicator():
    out, _ = shape([0.0, 0.0], [1, 2], step=0, cfg=SpearToolRewardConfig(count="turns"), turns=[4, 20])
    assert out.tolist() == pytest.approx([0.4, 1.0])
    cfg = SpearToolRewardConfig(on_success="any_call")  # R > 0: + mu 1{calls > 0}; R <= 0: + mu R_tool
    out, _ = shape([1.0, 1.0, 0.0, -1.0], [3, 0, 3, 20], step=0, cfg=cfg)
    assert out.tolist() == pytest.approx([2.0, 1.0, 0.3, 0.0])


def test_reduces_to_the_outcome_reward_without_tool_calls_or_bonus():
    r = [1.0, 0.0, 0.5, 1.0]
    assert shape(r, [0, 0, 0, 0], step=1)[0].tolist() == r  # single-turn, no tool call
    assert shape(r, [3, 9, 1, 20], step=1, cfg=SpearToolRewardConfig(mode="none"))[0].tolist() == r


def test_shaped_rewards_follow_row_order_and_keep_dtype():
    out, _ = shape([1.0, 0.0, 0.5], [2, 7, 4], step=30)
    perm = [2, 0, 1]
    out_p, _ = shape([[1.0, 0.0, 0.5][i] for i in perm], [[2, 7, 4][i] for i in perm], step=30)
    assert torch.equal(out_p, out[perm]) and out.dtype == torch.float32


def test_gamma_rises_from_zero_to_c_r_and_stays():
    cfg = SpearReplayConfig()
    assert (cfg.replay_coef, cfg.max_replay_loss_steps) == (1.0, 200)
    assert replay_coef(0, cfg) == 0.0
    assert replay_coef(100, cfg) == pytest.approx(0.5)
    assert replay_coef(200, cfg) == 1.0 and replay_coef(201, cfg) == 1.0 and replay_coef(5000, cfg) == 1.0
    code = SpearReplayConfig(replay_coef=0.001, max_replay_loss_steps=300)  # actor.py default c_r, verl scripts' K_r
    assert replay_coef(150, code) == pytest.approx(0.0005) and replay_coef(301, code) == 0.001
    # the code's expression in dp_actor.py: c_r (-cos(pi k / K_r) + 1) / 2
    assert replay_coef(37, cfg) == pytest.approx((-np.cos(37 / 200 * np.pi) + 1) / 2)


def test_p50_recalibration_of_the_note():
    base = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])  # P50 = 0.6
    adv, keep = recalibrate(torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.3]), base, -1.0)
    assert adv.tolist() == pytest.approx([0.4, -0.1]) and keep.tolist() == [True, False]
    for w in (0.0, 1.5, -1.0):  # every weight outside (0, 1] recalibrates
        assert recalibrate(torch.tensor([1.0]), torch.tensor([0.2]), base, w)[0].item() == pytest.approx(0.4)
    _, keep = recalibrate(torch.tensor([0.6, 0.6]), torch.zeros(2), base, -1.0, keep_zero=True)
    assert keep.tolist() == [True, True]
    with pytest.raises(ValueError, match="at least one baseline"):
        recalibrate(torch.tensor([1.0]), torch.tensor([1.0]), torch.zeros(0), -1.0)


def test_p50_interpolates_like_numpy_percentile():
    base = torch.tensor([0.0, 1.0, 3.0, 10.0])
    p50 = float(np.percentile(base.numpy(), 50))  # 2.0
    adv, _ = recalibrate(torch.tensor([2.5]), torch.tensor([1.0]), base, -1.0)
    assert p50 == 2.0 and adv.item() == pytest.approx(0.5)


def test_weight_decay_scales_the_old_advantages_and_keeps_every_row():
    adv = torch.tensor([[0.5, 0.5, 0.0], [2.0, 2.0, 2.0]])
    new, keep = recalibrate(torch.tensor([0.0, 1.0]), adv, torch.tensor([0.9]), 0.9)
    assert torch.allclose(new, 0.9 * adv) and keep.tolist() == [True, True]
    assert torch.equal(recalibrate(torch.tensor([0.0]), adv[:1], torch.tensor([0.9]), 1.0)[0], adv[:1])


def test_token_level_advantages_get_the_row_value_on_the_mask():
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    new, _ = recalibrate(torch.tensor([1.0, 0.0]), torch.ones(2, 3), torch.tensor([0.5]), -1.0, mask=mask)
    assert new.tolist() == [[0.5, 0.0, 0.5], [-0.5, -0.5, 0.0]]
    assert recalibrate(torch.tensor([1.0]), torch.ones(1, 1), torch.tensor([0.5]), -1.0)[0].shape == (1, 1)


def test_replay_fires_past_one_and_a_half_capacity_with_a_power_of_two():
    cfg = SpearReplayConfig()
    assert not replay_due(3072, cfg) and replay_due(3073, cfg)
    assert replay_size(3073, cfg) == 2048 and replay_size(1000, cfg) == 512 and replay_size(1024, cfg) == 1024
    assert replay_size(1, cfg) == 0 and replay_size(0, cfg) == 0 and replay_size(3, cfg) == 2
    small = SpearReplayConfig(capacity=32)  # verl's Qwen2.5 script
    assert replay_due(49, small) and replay_size(49, small) == 32
    per_step = SpearReplayConfig(replay_mode="sample", replay_rows=8)
    assert replay_due(8, per_step) and not replay_due(7, per_step)
    assert replay_size(100, per_step) == 8 and replay_size(7, per_step) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "linear"}, "mode must be one of"),
        ({"count": "calls"}, "count must be one of"),
        ({"on_success": "bonus"}, "on_success must be one of"),
        ({"max_steps": 0}, "max_steps must be >= 1, got 0"),
        ({"cap": -1.0}, "per_call and cap must be >= 0"),
    ],
)
def test_tool_reward_config_errors_name_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpearToolRewardConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"replay_mode": "all"}, "replay_mode must be one of"),
        ({"capacity": 0}, "capacity must be >= 1, got 0"),
        ({"tolerate_steps": 11}, r"tolerate_steps must be in \[0, 10\]"),
        ({"replay_coef": -0.1}, "replay_coef >= 0"),
        ({"weight_decay_trajectory_replay": math.nan}, "must be finite"),
        ({"max_held": 3000}, "max_held must be 0 or > trigger_ratio"),
    ],
)
def test_replay_config_errors_name_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpearReplayConfig(**kwargs)


def test_defaults_are_the_readme_values():
    cfg = SpearReplayConfig()
    assert (cfg.capacity, cfg.tolerate_steps, cfg.baseline_capacity, cfg.min_tool_calls) == (2048, 10, 10240, 1)
    assert (cfg.weight_decay_trajectory_replay, cfg.trigger_ratio, cfg.replay_mode) == (-1.0, 1.5, "flush")
    tool = SpearToolRewardConfig()
    assert (tool.mode, tool.max_steps, tool.per_call, tool.cap, tool.count) == ("cosine", 200, 0.1, 1.0, "tool_calls")
