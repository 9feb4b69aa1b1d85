"""EMPG: the note's worked scale, the bonus of the next step (0 at the last), the reduction to GRPO with one step
per episode, environment tokens, row order, the final std flag, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo
from entrolab.methods.empg import EMPGConfig, empg, next_step_values, step_sums
from tests.methods._helpers import INF, NAN, gen

SQ = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of rewards [1, 0]: unbiased std 0.7071, eps 1e-6
G_NOTE = [1.4528, 0.8812, 0.5345, 1.1315]  # research note: H = [0.1, 0.5, 0.9, 0.3], k = 1


def run(rewards, h, ids, cfg=None, mask=None, gid=None):
    rewards, h, ids = torch.as_tensor(rewards), torch.as_tensor(h), torch.as_tensor(ids)
    mask = (ids >= 0).float() if mask is None else mask
    gid = torch.zeros(len(rewards), dtype=torch.long) if gid is None else gid
    return empg(rewards, mask, cfg=cfg or EMPGConfig(), group_id=gid, old_entropy=h, step_ids=ids)


def test_note_worked_scale_and_batch_mean_one():
    # two mirrored 4-step episodes (A = +-0.7071): the batch mean of A g is 0, so row 0 is exactly A g
    h = torch.tensor([[0.1, 0.5, 0.9, 0.3]] * 2)
    ids = torch.arange(4).expand(2, 4)
    adv, m = run([1.0, 0.0], h, ids, EMPGConfig(zeta=0.0))
    g = adv[0] / SQ
    assert g.tolist() == pytest.approx(G_NOTE, abs=1e-4)
    assert float(g.mean()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(adv[1], -adv[0])
    assert (m["empg/scale_min"].item(), m["empg/scale_max"].item()) == pytest.approx((0.5345, 1.4528), abs=1e-4)
    assert m["empg/step_entropy_mean"].item() == pytest.approx(0.45)
    assert m["empg/steps_mean"].item() == 4.0


def test_note_numbers_as_one_step_episodes_after_centring():
    # four one-step episodes in two groups: A = +-0.7071, final zero-mean over the 4 steps
    h = torch.tensor([[0.1], [0.5], [0.9], [0.3]])
    gid = torch.tensor([0, 0, 1, 1])
    adv, _ = run([1.0, 0.0, 1.0, 0.0], h, torch.zeros(4, 1).long(), EMPGConfig(zeta=0.0), gid=gid)
    a_g = [SQ * G_NOTE[0], -SQ * G_NOTE[1], SQ * G_NOTE[2], -SQ * G_NOTE[3]]
    mean = sum(a_g) / 4
    assert adv.squeeze(1).tolist() == pytest.approx([x - mean for x in a_g], abs=1e-4)


def test_g_strictly_decreases_with_entropy_and_keeps_the_sign():
    h = torch.rand(1, 6, generator=gen(3), dtype=torch.float64).expand(2, 6)  # mirrored pair, 6 steps each
    adv, _ = run([1.0, 0.0], h, torch.arange(6).expand(2, 6), EMPGConfig(k=2.0, zeta=0.0))
    order = h[0].argsort()
    assert torch.all(adv[0, order].diff() < 0)  # A > 0: lower entropy, larger advantage
    assert torch.all(adv[1, order].diff() > 0)
    assert torch.all(adv[0] > 0) and torch.all(adv[1] < 0)  # zeta = 0, batch mean 0: sign(A_mod) = sign(A)


def test_future_clarity_bonus_of_the_next_step_and_none_at_the_last():
    # row 0: steps H = [0.2, 0.6, 1.0]; row 1: [1.0, 0.2] -> H_hat = [0, 0.5, 1], [1, 0] (min 0.2, max 1.0)
    h = torch.tensor([[0.2, 0.6, 1.0], [1.0, 0.2, 0.0]], dtype=torch.float64)
    ids = torch.tensor([[0, 1, 2], [0, 1, -1]])
    adv, m = run([1.0, 0.0], h, ids, EMPGConfig(k=0.0, k_future=1.0, zeta=0.5))
    a = [SQ, SQ, SQ, -SQ, -SQ]
    bonus = [0.5 * math.exp(-0.5), 0.5 * math.exp(-1.0), 0.0, 0.5 * math.exp(-0.0), 0.0]  # f of the next step
    mod = [x / (1 + 1e-8) + b for x, b in zip(a, bonus, strict=True)]
    mean = sum(mod) / 5
    got = adv[0].tolist() + adv[1, :2].tolist()
    assert got == pytest.approx([x - mean for x in mod], abs=1e-6)
    assert adv[1, 2] == 0  # padding
    assert m["empg/bonus_mean"].item() == pytest.approx(sum(bonus) / 5)


def test_multi_turn_layout_env_tokens_get_zero_and_garbage_there_changes_nothing():
    # row: turn 0 (2 tokens), env obs (2), turn 1 (1 token), env obs (1), padding (1)
    ids = torch.tensor([[0, 0, -1, -1, 1, -1, -1], [0, -1, 1, 1, -1, 2, -1]])
    mask = (ids >= 0).float()
    h = torch.rand(2, 7, generator=gen(1)) * mask
    clean = run([1.0, 0.0], h, ids, mask=mask)
    assert torch.all(clean[0][mask == 0] == 0)
    dirty_h = torch.where(mask > 0, h, torch.tensor([NAN, INF, 1e9, -5.0, NAN, 3.0, INF]))
    dirty_ids = torch.where(mask > 0, ids, torch.tensor([7, 99, -1, 5, 1000, 3, -1]))
    dirty = run([1.0, 0.0], dirty_h, dirty_ids, mask=mask)
    assert torch.equal(clean[0], dirty[0])
    for key in clean[1]:
        torch.testing.assert_close(clean[1][key], dirty[1][key])
    # a step's value lands on every token of that step
    assert clean[0][0, 0] == clean[0][0, 1] and clean[0][1, 2] == clean[0][1, 3]


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_one_step_per_episode_reduces_to_grpo(norm_by_std):
    g = gen(5)
    r = torch.randint(0, 2, (12,), generator=g).float()
    gid = torch.arange(3).repeat_interleave(4)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2, 5, 1, 3, 4, 2, 5])
    mask = (torch.arange(5) < lengths.unsqueeze(1)).float()
    ids = torch.where(mask > 0, 0, -1)
    cfg = dict(norm_by_std=norm_by_std)
    ref = grpo(r, mask, cfg=GRPOConfig(), group_id=gid) if norm_by_std else dr_grpo(r, mask, cfg=None, group_id=gid)
    ref = ref[0] * mask
    # equal entropies (any zeta: a single step has no next step), or k = 0 with any entropies
    flat = torch.full((12, 5), 0.7) * mask
    for h, extra in ((flat, dict(zeta=0.3)), (torch.rand(12, 5, generator=g), dict(k=0.0, zeta=0.3))):
        adv, _ = empg(r, mask, cfg=EMPGConfig(**cfg, **extra), group_id=gid, old_entropy=h, step_ids=ids)
        torch.testing.assert_close(adv, ref, atol=1e-6, rtol=0)


def test_row_shuffle_and_extra_padding_change_nothing():
    g = gen(7)
    r = torch.randint(0, 2, (8,), generator=g).float()
    gid = torch.arange(2).repeat_interleave(4)
    ids = torch.randint(0, 3, (8, 6), generator=g).sort(1).values
    ids[:, 4:] = -1
    h = torch.rand(8, 6, generator=g)
    adv, m = run(r, h, ids, gid=gid)
    perm = torch.randperm(8, generator=g)
    adv_p, m_p = run(r[perm], h[perm], ids[perm], gid=gid[perm])
    torch.testing.assert_close(adv_p, adv[perm])
    for key in m:
        torch.testing.assert_close(m[key], m_p[key])
    wide_ids = torch.cat([ids, torch.full((8, 3), -1)], 1)
    wide_h = torch.cat([h, torch.full((8, 3), NAN)], 1)
    adv_w, _ = run(r, wide_h, wide_ids, gid=gid)
    assert torch.equal(adv_w[:, :6], adv) and torch.all(adv_w[:, 6:] == 0)


def test_final_std_flag_standardises_over_steps():
    h = torch.rand(6, 1, generator=gen(2))
    gid = torch.arange(3).repeat_interleave(2)
    adv, _ = run([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], h, torch.zeros(6, 1).long(), EMPGConfig(final_std=True), gid=gid)
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def test_helpers_and_empty_batch():
    s, n, ids, _ = step_sums(torch.tensor([[2.0, 4.0, 6.0]]), torch.tensor([[1, 0, 1]]), torch.tensor([[1, -1, 1]]))
    assert s.tolist() == [[0.0, 8.0]] and n.tolist() == [[0.0, 2.0]] and ids.tolist() == [[1, 0, 1]]
    assert next_step_values(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]])).tolist() == [[2.0, 0.0]]
    adv, m = run([1.0, 0.0], torch.zeros(2, 3), torch.full((2, 3), -1))
    assert torch.all(adv == 0) and all(torch.isfinite(v) for v in m.values())


def test_bad_inputs():
    with pytest.raises(ValueError, match="empg k must be finite and >= 0, got -1"):
        EMPGConfig(k=-1.0)
    with pytest.raises(ValueError, match="empg zeta must be finite"):
        EMPGConfig(zeta=INF)
    with pytest.raises(ValueError, match="needs old_entropy"):
        empg(torch.ones(2), torch.ones(2, 2), cfg=EMPGConfig(), group_id=torch.zeros(2).long())
    with pytest.raises(ValueError, match="step_ids must be >= 0 on every mask token"):
        run([1.0, 0.0], torch.ones(2, 2), torch.tensor([[0, -1], [0, 0]]), mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match=">= 2 samples per group"):
        run([1.0, 0.0], torch.ones(2, 2), torch.zeros(2, 2).long(), gid=torch.tensor([0, 1]))
