"""VERL (arXiv:2509.23808): effective rank of hidden states, its velocity and acceleration, the capped bonus.

The note's closed forms (ER of singular values (3, 1), rank one, orthogonal rows; ERV/ERA of ER_j = [1, 2, 3];
the clip cases), parity of the batched indicators with a per-response loop, the stride and ``max_seq_len``
windows, padding invariance, the reduction to GRPO without baselines, the two placements, and the EMA schedule.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from entrolab.diagnostics import effective_rank as er_reference
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.erank import (
    ErankConfig,
    ErankEmaConfig,
    auxiliary,
    capped_bonus,
    effective_rank,
    erank,
    erank_ema,
    rank_indicators,
    velocity_acceleration,
)
from tests.methods._helpers import NAN, assert_padding_invariant, pad

STATE = {"m_er": 5.0, "m_erv": 0.5, "m_era": -0.1}


def er_of(rows) -> float:
    x = torch.tensor(rows, dtype=torch.float64).unsqueeze(0)
    return effective_rank(x, torch.ones(x.shape[:2], dtype=torch.bool)).item()


def ragged(seed: int, b: int = 8, t: int = 40, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([40, 3, 0, 21, 17, 33, 1, 11][:b])
    mask = (torch.arange(t) < lengths.unsqueeze(1)).float()  # [b, t]
    return mask, torch.randn(b, t, d, generator=g, dtype=torch.float64), torch.randint(0, 2, (b,), generator=g)


def test_effective_rank_note_numbers():
    # singular values (3, 1) of a centred matrix: p = (0.75, 0.25), H = 0.5623, ER = 1.7548
    assert er_of([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) == pytest.approx(1.7548, abs=1e-4)
    assert er_of([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]]) == pytest.approx(1.0)  # rank one
    # orthogonal equal-norm rows after centring: +-e_i -> 3 directions; I_4 centred spans 3 equal directions
    assert er_of([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]) == pytest.approx(3.0)
    assert er_of(torch.eye(4).tolist()) == pytest.approx(3.0)
    assert er_of([[1.0, 1.0]]) == 0.0 and er_of([[1.0, 1.0], [1.0, 1.0]]) == 1.0  # < 2 rows; entropy 0
    rows = torch.tensor([[True, True, False]])  # a masked (NaN) row changes nothing
    x = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [NAN, NAN]]])
    assert effective_rank(x, rows).item() == pytest.approx(er_of([[3.0, 0.0], [0.0, 1.0]]))


def test_velocity_and_acceleration_of_er_1_2_3():
    # ERV_j = ER_j - mean_{i<j} ER_i = [2 - 1, 3 - 1.5] = [1, 1.5]; ERA = [0.5]; response means 1.25 and 0.5
    erv, era = velocity_acceleration(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 9.0]]), torch.tensor([3, 2]))
    assert erv.tolist() == [1.25, 1.0] and era.tolist() == [0.5, 0.0]  # row 2 stops at j = 2: no ERA
    erv, era = velocity_acceleration(torch.zeros(2, 0), torch.tensor([0, 0]))
    assert erv.tolist() == era.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("stride", "max_seq_len"), [(5, 512), (4, 15), (3, 7)])
def test_indicators_match_a_per_response_loop(stride, max_seq_len):
    mask, hidden, _ = ragged(0)
    mask[4, 2] = 0.0  # a hole inside a response: its tokens are the valid ones, in order
    er, erv, era = rank_indicators(hidden, mask, stride=stride, max_seq_len=max_seq_len)
    for b in range(mask.shape[0]):
        full = hidden[b, mask[b].bool()]  # [L, d]
        assert er[b].item() == pytest.approx(er_reference(full) if len(full) >= 2 else 0.0, abs=1e-9)
        tail = full[-max_seq_len:]
        ers = [er_reference(tail[: t + 1]) for t in range(stride, len(tail), stride)]
        v = [ers[j] - sum(ers[:j]) / j for j in range(1, len(ers))]
        a = [v[j] - v[j - 1] for j in range(1, len(v))]
        assert erv[b].item() == pytest.approx(sum(v) / len(v) if v else 0.0, abs=1e-9)
        assert era[b].item() == pytest.approx(sum(a) / len(a) if a else 0.0, abs=1e-9)


def test_short_responses_and_the_last_max_seq_len_tokens():
    g = torch.Generator().manual_seed(1)
    hidden, s = torch.randn(3, 13, 5, generator=g, dtype=torch.float64), 4
    mask = (torch.arange(13) < torch.tensor([[8], [9], [13]])).float()  # 2s, 2s + 1, 3s + 1 tokens
    _, erv, era = rank_indicators(hidden, mask, stride=s, max_seq_len=512)
    assert erv[0] == 0 and erv[1] != 0 and era[1] == 0 and era[2] != 0
    # ER sees the whole response; ERV/ERA only its last max_seq_len tokens
    moved = hidden.clone()
    moved[:, :3] += 10.0 * torch.randn(3, 3, 5, generator=g, dtype=torch.float64)
    a, b = rank_indicators(hidden, mask, stride=2, max_seq_len=5), rank_indicators(moved, mask, stride=2, max_seq_len=5)
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1:], b[1:])


def test_shaping_clip_cases():
    adv, aux = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0]), torch.tensor([3.0, 0.2, -0.4, 0.7, 2.0])
    assert (adv + capped_bonus(aux, adv, kappa=2.0)).tolist() == pytest.approx([1.5, -0.8, 1.0, -0.5, 0.0])


def test_auxiliary_hand_numbers_and_gates():
    x, m = torch.tensor([[0.0, 0.75, 6.0]], dtype=torch.float64), torch.tensor([0.1, 0.5, 5.0], dtype=torch.float64)
    # delta = (-1, 0.5, 0.2); tau = sigmoid(2 * -1); aux = (1 - tau) tanh(0.5) + tau tanh(0.2)
    tau = 1 / (1 + math.exp(2.0))
    want = (1 - tau) * math.tanh(0.5) + tau * math.tanh(0.2)
    assert auxiliary(x, m, ErankConfig()).item() == pytest.approx(want)
    assert auxiliary(x, m, ErankConfig(gate="half")).item() == pytest.approx(0.5 * (math.tanh(0.5) + math.tanh(0.2)))
    assert auxiliary(x, m, ErankConfig(gate="sum", scale=2.0)).item() == pytest.approx(
        2 * (math.tanh(0.5) + math.tanh(0.2))
    )
    # a zero baseline: the deviation is clamped to +-5
    far = auxiliary(x, torch.zeros(3, dtype=torch.float64), ErankConfig(gate="sum"))
    assert far.item() == pytest.approx(2 * math.tanh(5.0))


def test_empty_state_is_exactly_grpo_and_metrics_still_report_the_indicators():
    mask, hidden, r = ragged(2)
    gid = torch.arange(4).repeat_interleave(2)
    adv, m = erank(r.float(), mask, cfg=ErankConfig(stride=3), group_id=gid, hidden_states=hidden, state={})
    ref, _ = grpo(r.float(), mask, cfg=GRPOConfig(), group_id=gid)
    assert torch.equal(adv, torch.where(mask.bool(), ref, 0.0))
    assert m["erank/aux_mean"] == 0 and m["erank/frac_bonus"] == 0 and m["erank/er_mean"] > 1
    with pytest.raises(ValueError, match="missing"):
        erank(r.float(), mask, cfg=ErankConfig(), group_id=gid, hidden_states=hidden, state={"m_er": 1.0})


@pytest.mark.parametrize("placement", ["all_tokens", "last_token"])
def test_padding_invariance_and_placement(placement):
    mask, hidden, r = ragged(3)
    gid, cfg = torch.arange(4).repeat_interleave(2), ErankConfig(stride=3, placement=placement)
    narrow = erank(r.float(), mask, cfg=cfg, group_id=gid, hidden_states=hidden, state=STATE)
    wide = erank(r.float(), pad(mask, 0.0), cfg=cfg, group_id=gid, hidden_states=pad(hidden, NAN), state=STATE)
    assert_padding_invariant(narrow, wide, mask.shape[1])
    adv, m = narrow
    base = torch.where(mask.bool(), grpo(r.float(), mask, cfg=GRPOConfig(), group_id=gid)[0], 0.0)
    diff = adv - base  # [B, T] the bonus
    assert m["erank/frac_bonus"] > 0 and torch.all(diff >= 0)
    lengths = mask.sum(1).long()
    for b in range(mask.shape[0]):
        got = diff[b, : lengths[b]]
        if placement == "all_tokens":
            assert torch.all(got == got[:1])
        else:
            assert torch.all(got[:-1] == 0)
    # row order: a permutation of rows and groups permutes the output
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    moved, _ = erank(r.float()[perm], mask[perm], cfg=cfg, group_id=gid[perm], hidden_states=hidden[perm], state=STATE)
    torch.testing.assert_close(moved, adv[perm])


def test_ema_first_observation_then_update_and_the_code_timing():
    obs = [{"erank/era_mean": v, "erank/erv_mean": 2 * v, "erank/er_mean": 10 * v} for v in (1.0, 2.0, 4.0)]
    assert erank_ema({}, {}, cfg=ErankEmaConfig(), step=1, total_steps=9) == ({}, {})
    state, values = erank_ema({}, obs[0], cfg=ErankEmaConfig(), step=2, total_steps=9)
    assert values == {"erank.m_era": 1.0, "erank.m_erv": 2.0, "erank.m_er": 10.0}
    state, values = erank_ema(state, obs[1], cfg=ErankEmaConfig(), step=3, total_steps=9)
    assert values["erank.m_er"] == pytest.approx(13.0)  # 0.7 * 10 + 0.3 * 20
    state, values = erank_ema(state, obs[2], cfg=ErankEmaConfig(), step=4, total_steps=9)
    assert values["erank.m_er"] == pytest.approx(0.7 * 13.0 + 0.3 * 40.0) and values["erank.m_era"] == pytest.approx(
        0.7 * 1.3 + 0.3 * 4.0
    )
    # the released code: m starts at 0 and step k uses m before folding in step k - 1's mean
    code, state = ErankEmaConfig(init="zero"), {}
    seen = []
    for o in obs:
        state, values = erank_ema(state, o, cfg=code, step=2, total_steps=9)
        seen.append(values["erank.m_er"])
    assert seen == pytest.approx([0.0, 3.0, 0.7 * 3.0 + 0.3 * 20.0])
    assert all(isinstance(v, float) for v in state.values())
    with pytest.raises(ValueError, match="absent from the logged metrics"):
        erank_ema(state, {"reward/mean": 1.0}, cfg=code, step=5, total_steps=9)


def test_closed_loop_schedule_values_feed_the_advantage():
    mask, hidden, r = ragged(4)
    gid, cfg = torch.arange(4).repeat_interleave(2), ErankConfig(stride=3)
    _, m1 = erank(r.float(), mask, cfg=cfg, group_id=gid, hidden_states=hidden, state={})
    _, values = erank_ema({}, {k: float(v) for k, v in m1.items()}, cfg=ErankEmaConfig(), step=2, total_steps=3)
    adv_state = {k.split(".", 1)[1]: v for k, v in values.items()}
    _, m2 = erank(r.float(), mask, cfg=cfg, group_id=gid, hidden_states=hidden, state=adv_state)
    # the same batch against its own means: every delta averages ~0 and some responses beat the baseline
    assert m2["erank/frac_bonus"] > 0 and abs(m2["erank/aux_mean"].item()) < 1.0
    assert m2["erank/er_mean"] == m1["erank/er_mean"]


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"placement must be one of \['all_tokens', 'last_token'\], got 'first'"):
        ErankConfig(placement="first")
    with pytest.raises(ValueError, match="gate must be one of"):
        ErankConfig(gate="PlanB")
    with pytest.raises(ValueError, match="kappa > 0"):
        ErankConfig(kappa=0.0)
    with pytest.raises(ValueError, match="3 weights"):
        ErankConfig(w_explore=(1.0, 0.0))
    with pytest.raises(ValueError, match="stride and max_seq_len"):
        replace(ErankConfig(), stride=0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got 1.5"):
        ErankEmaConfig(alpha=1.5)
    with pytest.raises(ValueError, match="init must be one of"):
        ErankEmaConfig(init="mean")
