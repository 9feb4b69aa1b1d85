"""AEM (reconstructed): hand-computed modulation per episode and per turn, the drift diagnostic against an exact
natural-gradient step, sign preservation, the direction of the shaped drift, the phases, the reduction to GRPO,
environment tokens, row order, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.aem import AEMConfig, aem
from tests.methods._helpers import INF, NAN, gen

SQ = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of rewards [1, 0]
A4 = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # GRPO advantage of rewards [1, 1, 0, 0]
ONE = torch.zeros(4, dtype=torch.long)


def run(rewards, lp, ids=None, cfg=None, mask=None, gid=None, **kw):
    rewards, lp = torch.as_tensor(rewards), torch.as_tensor(lp)
    ids = torch.zeros(lp.shape, dtype=torch.long) if ids is None else torch.as_tensor(ids)
    mask = (ids >= 0).float() if mask is None else mask
    gid = torch.zeros(len(rewards), dtype=torch.long) if gid is None else gid
    return aem(rewards, mask, cfg=cfg or AEMConfig(), group_id=gid, old_logp=lp, step_ids=ids, **kw)


def batch(seed, b=12, t=7, g=4):
    gen_ = gen(seed)
    r = torch.randint(0, 2, (b,), generator=gen_).float()
    gid = torch.arange(b // g).repeat_interleave(g)
    lengths = torch.randint(1, t + 1, (b,), generator=gen_)
    mask = (torch.arange(t) < lengths.unsqueeze(1)).float()
    ids = torch.where(mask > 0, torch.arange(t).div(3, rounding_mode="floor"), -1)  # 3-token turns
    lp = -torch.rand(b, t, generator=gen_, dtype=torch.float64) * 3 * mask
    return r, lp, ids, mask, gid


def test_closed_form_per_episode_and_the_balance_phase():
    lp = torch.tensor([[-0.1], [-2.0], [-0.1], [-2.0]])  # s = [0.1, 2, 0.1, 2] -> z = [-1, 1, -1, 1]
    adv, m = run([1.0, 1.0, 0.0, 0.0], lp, cfg=AEMConfig(phase="constant"))
    e = math.exp(0.5)
    assert adv.squeeze(1).tolist() == pytest.approx([A4 / e, A4 * e, -A4 * e, -A4 / e], rel=1e-5)
    assert m["aem/predicted_drift"].item() == pytest.approx(0.0, abs=1e-6)
    assert m["aem/shaped_drift"].item() == pytest.approx(A4 * 0.95 * (e - 1 / e) / 2, rel=1e-5)
    assert m["aem/surprisal_mean"].item() == pytest.approx(1.05)
    assert m["aem/scale_mean"].item() == pytest.approx((e + 1 / e) / 2, rel=1e-6)
    # balance: 2 successes, 2 failures -> lambda = 0 -> GRPO; 1 success, 3 failures -> lambda = 0.5
    adv0, m0 = run([1.0, 1.0, 0.0, 0.0], lp)
    assert m0["aem/direction"].item() == 0.0 and adv0.squeeze(1).tolist() == pytest.approx([A4, A4, -A4, -A4])
    _, m1 = run([1.0, 0.0, 0.0, 0.0], lp)
    assert m1["aem/direction"].item() == 0.5


def test_closed_form_per_turn_with_env_tokens_and_the_clip():
    # row 0: turn 0 (s = 1), env, turn 1 (s = 3); row 1: turn 0 (s = 2), env, turn 1 (s = 2)
    ids = torch.tensor([[0, 0, -1, 1, -1], [0, -1, -1, 1, 1]])
    lp = torch.tensor([[-1.0, -1.0, 0.0, -3.0, 0.0], [-2.0, 0.0, 0.0, -2.0, -2.0]])
    z = 1 / (math.sqrt(0.5) + 1e-6)  # units s = [1, 3, 2, 2]: delta = [-1, 1, 0, 0], std 0.7071
    for max_scale, lo, hi in ((3.0, math.exp(-0.5 * z), math.exp(0.5 * z)), (2.0, 0.5, 2.0)):  # 2: both clipped
        adv, _ = run([1.0, 0.0], lp, ids, AEMConfig(phase="constant", max_scale=max_scale))
        want = [[SQ * lo] * 2 + [0.0, SQ * hi, 0.0], [-SQ, 0.0, 0.0, -SQ, -SQ]]  # row 1: z = 0, phi = 1
        torch.testing.assert_close(adv, torch.tensor(want), rtol=1e-5, atol=1e-7)
    episode, _ = run([1.0, 0.0], lp, ids, AEMConfig(phase="constant", unit="episode"))
    assert episode[0, 0] == episode[0, 3]  # one unit per row


def test_predicted_drift_is_the_first_order_entropy_change_of_a_natural_gradient_step():
    pi = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    actions = torch.tensor([0, 0, 1, 2])  # the rows' empirical distribution is pi
    r_of = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    cfg = AEMConfig(unit="episode", surprisal="sum", norm_by_std=False)
    _, m = run(r_of[actions], pi.log()[actions].unsqueeze(1), cfg=cfg)
    drift = m["aem/predicted_drift"].item()
    adv_a = r_of - (pi * r_of).sum()  # A(a) = r(a) - E_pi r, the rows' A
    # the sampled policy gradient's natural-gradient step on the logits is dz = A(a) (up to a constant)
    grad = sum(adv_a[a] * (torch.eye(3, dtype=torch.float64)[a] - pi) for a in actions) / 4
    fisher = torch.diag(pi) - torch.outer(pi, pi)
    nat = torch.linalg.pinv(fisher) @ grad
    torch.testing.assert_close(nat - nat.mean(), adv_a - adv_a.mean())

    def entropy(z):
        return -(z.softmax(0) * z.log_softmax(0)).sum().item()

    err = {eta: abs(entropy(pi.log() + eta * adv_a) - entropy(pi.log()) - eta * drift) for eta in (1e-3, 5e-4)}
    assert drift < 0 and err[1e-3] < 1e-2 * 1e-3 * abs(drift)  # rewarding the common action: dH < 0; to 1%
    assert 3.5 < err[1e-3] / err[5e-4] < 4.5  # O(eta^2)


@pytest.mark.parametrize("seed", range(4))
def test_signs_are_kept_and_the_shaped_drift_moves_with_the_direction(seed):
    r, lp, ids, mask, gid = batch(seed)
    base = grpo(r, mask, cfg=GRPOConfig(), group_id=gid)[0].to(lp.dtype) * mask  # [B, T]
    for direction in (1.0, -1.0, 0.3):
        cfg = AEMConfig(phase="constant", direction=direction, beta=1.0, max_scale=3.0)
        adv, m = run(r, lp, ids, cfg, mask=mask, gid=gid)
        assert torch.equal(adv.sign(), base.sign())
        ratio = adv[base != 0] / base[base != 0]
        assert torch.all(ratio >= 1 / 3 - 1e-6) and torch.all(ratio <= 3 + 1e-6)
        gap = m["aem/shaped_drift"] - m["aem/predicted_drift"]
        assert gap >= -1e-9 if direction > 0 else gap <= 1e-9


def test_linear_phase_runs_from_exploration_to_exploitation():
    r, lp, ids, mask, gid = batch(0)
    cfg = AEMConfig(phase="linear")
    got = [
        run(r, lp, ids, cfg, mask=mask, gid=gid, step=s, total_steps=5)[1]["aem/direction"].item() for s in (1, 3, 5)
    ]
    assert got == [1.0, 0.0, -1.0]


@pytest.mark.parametrize(
    "cfg", [AEMConfig(beta=0.0), AEMConfig(phase="constant", direction=0.0), AEMConfig(max_scale=1.0)]
)
def test_degenerate_settings_are_grpo(cfg):
    r, lp, ids, mask, gid = batch(1)
    adv, m = run(r, lp, ids, cfg, mask=mask, gid=gid)
    torch.testing.assert_close(adv, grpo(r, mask, cfg=GRPOConfig(), group_id=gid)[0].to(lp.dtype) * mask)
    torch.testing.assert_close(m["aem/shaped_drift"], m["aem/predicted_drift"])


def test_one_turn_per_episode_turn_and_episode_units_agree_and_equal_surprisal_is_grpo():
    r, lp, _, mask, gid = batch(2)
    ids = torch.where(mask > 0, 0, -1)
    cfg = AEMConfig(phase="constant")
    turn = run(r, lp, ids, cfg, mask=mask, gid=gid)
    episode = run(r, lp, ids, AEMConfig(phase="constant", unit="episode"), mask=mask, gid=gid)
    torch.testing.assert_close(turn[0], episode[0])
    flat = torch.full_like(lp, -0.4) * mask
    adv, _ = run(r, flat, ids, cfg, mask=mask, gid=gid)
    torch.testing.assert_close(adv, grpo(r, mask, cfg=GRPOConfig(), group_id=gid)[0].to(lp.dtype) * mask)


def test_env_tokens_get_zero_and_garbage_there_changes_nothing():
    r, lp, ids, _, gid = batch(3)
    mask = (ids >= 0).float()
    mask[:, 2] = 0  # an environment token inside each first turn
    ids = torch.where(mask > 0, ids, -1)
    clean = run(r, lp, ids, mask=mask, gid=gid)
    assert torch.all(clean[0][mask == 0] == 0)
    junk = torch.tensor([NAN, INF, -1e9, 5.0, NAN, -INF, 2.0], dtype=torch.float64)
    dirty = run(r, torch.where(mask > 0, lp, junk), torch.where(mask > 0, ids, 77), mask=mask, gid=gid)
    assert torch.equal(clean[0], dirty[0])
    for key in clean[1]:
        torch.testing.assert_close(clean[1][key], dirty[1][key])


def test_row_shuffle_and_extra_padding_change_nothing():
    r, lp, ids, mask, gid = batch(4)
    adv, m = run(r, lp, ids, mask=mask, gid=gid)
    perm = torch.randperm(len(r), generator=gen(9))
    adv_p, m_p = run(r[perm], lp[perm], ids[perm], mask=mask[perm], gid=gid[perm])
    torch.testing.assert_close(adv_p, adv[perm])
    for key in m:
        torch.testing.assert_close(m[key], m_p[key])
    pad = torch.full((len(r), 2), NAN, dtype=lp.dtype)
    wide = run(r, torch.cat([lp, pad], 1), torch.cat([ids, torch.full((len(r), 2), -1)], 1), gid=gid)
    assert torch.equal(wide[0][:, :7], adv) and torch.all(wide[0][:, 7:] == 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"aem phase must be one of \['balance', 'linear', 'constant'\], got 'cos'"):
        AEMConfig(phase="cos")
    with pytest.raises(ValueError, match="aem beta must be finite and >= 0"):
        AEMConfig(beta=-1.0)
    with pytest.raises(ValueError, match=r"aem max_scale must be finite and >= 1, got 0\.5"):
        AEMConfig(max_scale=0.5)
    with pytest.raises(ValueError, match=r"aem direction must be in \[-1, 1\], got 2.0"):
        AEMConfig(direction=2.0)
    with pytest.raises(ValueError, match="aem unit must be one of"):
        AEMConfig(unit="token")
    with pytest.raises(ValueError, match="needs old_logp"):
        aem(torch.ones(4), torch.ones(4, 1), cfg=AEMConfig(), group_id=ONE)
    with pytest.raises(ValueError, match="needs step_ids"):
        aem(torch.ones(4), torch.ones(4, 1), cfg=AEMConfig(), group_id=ONE, old_logp=torch.zeros(4, 1))
    with pytest.raises(ValueError, match="needs step and total_steps"):
        run([1.0, 0.0, 0.0, 0.0], torch.zeros(4, 1), cfg=AEMConfig(phase="linear"))
