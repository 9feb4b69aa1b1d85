"""TP-GRPO: the research note's worked numbers (methods_reward.md §9), hand-made turning points and balancing, the
reductions to GRPO, padding / shuffle invariance, exact zeros off the mask, and bad configs."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import ops, registry
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.tp_grpo import TPGRPOConfig, balance_turning_points, tp_grpo, turning_points
from tests.methods._helpers import NAN, assert_padding_invariant, pad

D = torch.float64
PER_STEP = 2  # tokens per step in the hand-built batches
NOTE = [0.5, 0.4, 0.7, 0.8]  # the note's v_0 .. v_3


def close(a, b, tol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=0, atol=tol)


def from_probes(rows):
    """Inputs whose sigmoid probes are ``rows[i] = [0.5, v_1, .., v_K]`` (beta 1, ref 0, the outcome v_K as the
    reward, PER_STEP tokens per step); the last step's q is arbitrary (the outcome replaces it)."""
    t = max(len(v) - 1 for v in rows) * PER_STEP
    prm, ids, mask = torch.full((len(rows), t), NAN, dtype=D), torch.full((len(rows), t), -1), torch.zeros(len(rows), t)
    for i, v in enumerate(rows):
        k = len(v) - 1
        q = [0.0] + [math.log(p / (1 - p)) for p in v[1:k]] + [0.7]  # q_0 .. q_K
        for s in range(k):
            prm[i, s * PER_STEP : (s + 1) * PER_STEP] = (q[s + 1] - q[s]) / PER_STEP
            ids[i, s * PER_STEP : (s + 1) * PER_STEP] = s
        mask[i, : k * PER_STEP] = 1
    rewards = torch.tensor([v[-1] for v in rows], dtype=D)
    return rewards, mask.to(D), prm, torch.zeros_like(prm), ids


def expected_adv(r_rows, gid, t, eps=1e-4):
    """Token advantages from step rewards ``r_rows`` by the per-(group, step index) population z-score."""
    out = torch.zeros(len(r_rows), t, dtype=D)
    for g in gid.unique().tolist():
        members = [i for i in range(len(r_rows)) if gid[i] == g]
        for k in range(max(len(r_rows[i]) for i in members)):
            have = [i for i in members if len(r_rows[i]) > k]
            x = torch.tensor([r_rows[i][k] for i in have], dtype=D)
            z = (x - x.mean()) / (x.std(correction=0) + eps)
            for i, a in zip(have, z.tolist(), strict=True):
                out[i, k * PER_STEP : (k + 1) * PER_STEP] = a
    return out


def call(cfg, rewards, mask, gid, prm, ref, ids):
    return tp_grpo(rewards, mask, cfg=cfg, group_id=gid, prm_logp=prm, ref_logp=ref, step_ids=ids)


CFG = TPGRPOConfig(beta=1.0)


# ---- the note's numbers and hand-made turning points --------------------------------------------------------


def test_the_notes_worked_example():
    d, tp = turning_points(torch.tensor([NOTE], dtype=D), torch.tensor([3]))
    close(d, [[-0.1, 0.3, 0.1]])
    assert tp.tolist() == [[False, True, False]]  # t = 2: s_1 < 0 < s_2, and v_3 - v_2 > 0 keeps its direction
    close(d.sum(), NOTE[-1] - NOTE[0])  # sum_t d_t = Delta
    # through the advantage: the note's row, a falling row with a turning point at step 2, a flat one
    rows = [NOTE, [0.5, 0.6, 0.55, 0.2], [0.5, 0.5, 0.5, 1.0]]
    r_rows = [[-0.1, 0.4, 0.1], [0.1, -0.4, -0.35], [0.0, 0.0, 0.5]]  # B_2 = 0.8 - 0.4; 0.2 - 0.6
    x = from_probes(rows)
    gid = torch.zeros(3, dtype=torch.long)
    adv, m = call(CFG, x[0], x[1], gid, *x[2:])
    close(adv, expected_adv(r_rows, gid, 6))
    close(m["tp_grpo/turning_frac"], 2 / 9)
    close(m["tp_grpo/bonus_mean"], 0.0)  # +0.4 and -0.4
    close(m["tp_grpo/delta_mean"], (0.3 - 0.3 + 0.5) / 3)
    close(m["tp_grpo/increment_absmean"], (0.1 + 0.3 + 0.1 + 0.1 + 0.05 + 0.35 + 0.5) / 9)
    close(m["tp_grpo/steps_mean"], 3.0)
    # eta = 0: the plain incremental rewards d_k
    adv0, m0 = call(TPGRPOConfig(beta=1.0, eta=0.0), x[0], x[1], gid, *x[2:])
    close(adv0, expected_adv([[-0.1, 0.3, 0.1], [0.1, -0.05, -0.35], [0.0, 0.0, 0.5]], gid, 6))
    assert m0["tp_grpo/turning_frac"].item() == 0.0


def test_hand_cases_of_turning_points():
    def tps(v, **kw):
        _, tp = turning_points(torch.tensor([v], dtype=D), torch.tensor([len(v) - 1]), **kw)
        return [i + 1 for i, x in enumerate(tp[0].tolist()) if x]

    # falling trajectory: step 1 (-0.2, and the rest keeps falling) and step 3 (back down after a rise)
    assert tps([0.5, 0.3, 0.6, 0.2, 0.1]) == [1, 3]
    assert tps([0.5, 0.3, 0.6, 0.2, 0.1], first_step=False) == [3]
    # step 2 rises after a fall, but v_K < v_2: only a turning point without the consistency test
    assert tps([0.5, 0.4, 0.9, 0.8, 0.6]) == []
    assert tps([0.5, 0.4, 0.9, 0.8, 0.6], consistent=False) == [2]
    # without consistency step 1 needs s_1 > 0 only; the last step may then be one too
    assert tps([0.5, 0.6, 0.4, 0.7], consistent=False) == [1, 3]
    assert tps([0.5, 0.6, 0.4, 0.7]) == [1]  # with it, the last step never is (v_K - v_K = 0)
    # a flat step (sign 0) is neither a fall nor a rise; Delta = 0 has no trend at all
    assert tps([0.5, 0.5, 0.7, 0.8]) == [] and tps([0.5, 0.4, 0.6, 0.5]) == []
    # all increments along the trend: no turning point after step 1
    assert tps([0.5, 0.6, 0.7, 0.9]) == [1]


@pytest.mark.parametrize("seed", range(4))
def test_consistent_turning_points_carry_the_global_trend(seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(64, 7, generator=g, dtype=D)
    n = torch.randint(0, 7, (64,), generator=g)
    d, tp = turning_points(v, n)
    delta = v.gather(1, n.unsqueeze(1)) - v[:, :1]
    close(d.sum(1, keepdim=True), delta)
    to_go = v.gather(1, n.unsqueeze(1)) - v[:, :-1]  # B_k = v_K - v_{k-1}
    assert torch.all((to_go.sign() == delta.sign()).expand_as(tp)[tp])  # so balancing by Delta's sign is B_k's
    assert not tp[torch.arange(64), (n - 1).clamp(min=0)][n > 0].any()  # never the last step


def test_balancing_keeps_equally_many_of_each_sign():
    a = [0.5, 0.4, 0.6, 0.55, 0.7, 0.8]  # Delta +0.3, turning points 2 (B 0.4) and 4 (B 0.25)
    b = [0.5, 0.45, 0.6, 0.7]  # Delta +0.2, turning point 2 (B 0.25)
    c = [0.5, 0.6, 0.3, 0.25]  # Delta -0.25, turning point 2 (B -0.35)
    flat = [0.5, 0.5, 0.5, 0.5]
    x = from_probes([a, b, c, flat])
    gid = torch.tensor([0, 0, 1, 1])
    adv, m = call(CFG, x[0], x[1], gid, *x[2:])
    # one negative turning point: keep one positive, the largest |Delta| (a's; its tie broken by |B_k|: step 2)
    r_rows = [[-0.1, 0.4, -0.05, 0.15, 0.1], [-0.05, 0.15, 0.1], [0.1, -0.35, -0.05], [0.0, 0.0, 0.0]]
    close(adv, expected_adv(r_rows, gid, 10))
    close(m["tp_grpo/balance_drop_frac"], 0.5)
    close(m["tp_grpo/turning_frac"], 2 / 14)
    close(m["tp_grpo/bonus_mean"], (0.4 - 0.35) / 2)
    unbalanced, mu = call(TPGRPOConfig(beta=1.0, balanced=False), x[0], x[1], gid, *x[2:])
    r_rows = [[-0.1, 0.4, -0.05, 0.25, 0.1], [-0.05, 0.25, 0.1], [0.1, -0.35, -0.05], [0.0, 0.0, 0.0]]
    close(unbalanced, expected_adv(r_rows, gid, 10))
    assert mu["tp_grpo/balance_drop_frac"].item() == 0.0
    # one sign only: nothing is dropped
    tp = torch.tensor([[True, True], [False, True]])
    assert torch.equal(balance_turning_points(tp, torch.ones(2, 2), torch.rand(2, 2)), tp)


def test_delta_global_main_adds_the_increment_at_turning_points():
    x = from_probes([NOTE, [0.5, 0.6, 0.55, 0.2], [0.5, 0.5, 0.5, 1.0]])
    gid = torch.zeros(3, dtype=torch.long)
    adv, m = call(TPGRPOConfig(beta=1.0, main="delta_global", eta=2.0), x[0], x[1], gid, *x[2:])
    # r_k = Delta + eta 1[tp] d_k; candidates d_2 = +0.3 and -0.05: balanced, both kept
    r_rows = [[0.3, 0.3 + 0.6, 0.3], [-0.3, -0.3 - 0.1, -0.3], [0.5, 0.5, 0.5]]
    close(adv, expected_adv(r_rows, gid, 6))
    close(m["tp_grpo/bonus_mean"], (0.6 - 0.1) / 2)


# ---- reductions -------------------------------------------------------------------------------------------


def ragged(seed, b=8, g=4, t=9, per_step=3, steps=None):
    """Random batch: ragged rows, 0/1 rewards, random implicit-PRM log-probs (NaN off the mask), steps of
    ``per_step`` tokens (or every row ``steps`` steps)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 4, 0, 1, 7, 3, 8, 6][:b]) if steps is None else torch.full((b,), t)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(D)
    width = per_step if steps is None else t // steps
    ids = torch.where(mask > 0, torch.arange(t).div(width, rounding_mode="floor"), -1)
    prm = torch.where(mask > 0, -torch.rand(b, t, generator=gen, dtype=D) * 3, NAN)
    ref = -torch.rand(b, t, generator=gen, dtype=D) * 3
    rewards = torch.randint(0, 2, (b,), generator=gen).to(D)
    return rewards, mask, ops.contiguous_groups(b, g), prm, ref, ids


def test_one_step_per_response_is_grpo():
    r, mask, gid, prm, ref, _ = ragged(0, steps=1)
    ids = torch.zeros_like(mask, dtype=torch.long)
    adv, _ = call(TPGRPOConfig(unbiased=True, eps=1e-6), r, mask, gid, prm, ref, ids)
    ref_adv = grpo(r, mask, cfg=GRPOConfig(eps=1e-6), group_id=gid)[0]
    close(adv, ref_adv.expand_as(adv), 1e-12)


def test_a_constant_process_score_puts_grpo_on_the_last_step():
    r, mask, gid, prm, _, ids = ragged(1, steps=3)
    adv, m = call(TPGRPOConfig(unbiased=True, eps=1e-6), r, mask, gid, prm, prm, ids)  # pi_prm = pi_ref: q = 0
    ref_adv = grpo(r, mask, cfg=GRPOConfig(eps=1e-6), group_id=gid)[0]  # [B, 1]
    assert torch.all(adv[:, :6] == 0)  # d_k = 1/2 - 1/2 before the outcome
    close(adv[:, 6:], ref_adv.expand(-1, 3), 1e-12)
    assert m["tp_grpo/turning_frac"].item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_delta_global_without_bonus_is_grpo_on_every_step(seed):
    r, mask, gid, prm, ref, ids = ragged(seed, steps=3)
    cfg = TPGRPOConfig(main="delta_global", eta=0.0, unbiased=True, eps=1e-6)
    adv, _ = call(cfg, r, mask, gid, prm, ref, ids)
    ref_adv = grpo(r, mask, cfg=GRPOConfig(eps=1e-6), group_id=gid)[0]
    close(adv, ref_adv.expand_as(adv), 1e-12)


def test_prm_terminal_logit_probe_and_group_norm():
    r, mask, gid, prm, ref, ids = ragged(2)
    cfg = TPGRPOConfig(probe="logit", terminal="prm", norm="group", balanced=False, eta=0.0)
    adv, m = call(cfg, r, mask, gid, prm, ref, ids)
    token_r = torch.where(mask > 0, cfg.beta * (prm - ref), 0.0)
    rows = mask.sum(1) > 0
    close(m["tp_grpo/delta_mean"], token_r.sum(1)[rows].mean())  # Delta = q_K - q_0 = the implicit ORM
    # eta = 0, group norm: one z-score over the group's steps; per_step = 3, so steps end every 3rd token
    step_r = token_r.unflatten(1, (3, 3)).sum(-1)  # [B, 3]
    have = mask.unflatten(1, (3, 3)).sum(-1) > 0  # [B, 3]
    want = torch.zeros_like(adv)
    for g in range(2):
        sel = have[g * 4 : (g + 1) * 4]
        x = step_r[g * 4 : (g + 1) * 4][sel]
        z = torch.zeros_like(step_r[:4])
        z[sel] = (x - x.mean()) / (x.std(correction=0) + cfg.eps)
        want[g * 4 : (g + 1) * 4] = z.repeat_interleave(3, 1)
    close(adv, want * mask)


# ---- invariances and masking ------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TPGRPOConfig(), TPGRPOConfig(norm="group", main="delta_global")])
def test_padding_columns_change_nothing(cfg):
    r, mask, gid, prm, ref, ids = ragged(3)
    narrow = call(cfg, r, mask, gid, prm, ref, ids)
    wide = call(cfg, r, pad(mask, 0.0), gid, pad(prm), pad(ref), pad(ids, -1))
    assert_padding_invariant(narrow, wide, mask.shape[1])
    assert torch.isfinite(narrow[0]).all()


@pytest.mark.parametrize("seed", range(3))
def test_row_and_group_shuffles(seed):
    r, mask, gid, prm, ref, ids = ragged(seed)
    adv, m = call(TPGRPOConfig(), r, mask, gid, prm, ref, ids)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed + 10))
    relabel = torch.tensor([5, 2])[gid]  # other group ids, shuffled rows
    adv_p, m_p = call(TPGRPOConfig(), r[perm], mask[perm], relabel[perm], prm[perm], ref[perm], ids[perm])
    close(adv_p, adv[perm], 1e-12)
    for k in m:
        close(m_p[k], m[k], 1e-12)


def test_exact_zeros_off_the_mask_and_detached_outputs():
    r, mask, gid, prm, ref, ids = ragged(4)
    mask[0, 4] = 0.0  # a hole inside a row
    prm = prm.clone().requires_grad_()
    adv, m = call(TPGRPOConfig(), r, mask, gid, prm, ref, ids)
    assert torch.all(adv[mask == 0] == 0) and torch.all(adv[2] == 0)  # row 2 is empty
    assert not adv.requires_grad and all(not v.requires_grad and v.dim() == 0 for v in m.values())
    assert set(m) == set(registry.lookup("advantage", "tp_grpo").metrics)
    # every token of a step shares its step's advantage
    a = adv[6, :8].view(-1)
    assert a[0] == a[1] == a[2] and a[3] == a[4] == a[5] and a[6] == a[7]


def test_bad_configs_and_inputs():
    for field, value, allowed in (
        ("probe", "tanh", "sigmoid"),
        ("terminal", "value", "outcome"),
        ("main", "global", "increment"),
        ("norm", "batch", "step"),
    ):
        with pytest.raises(ValueError, match=rf"tp_grpo {field} must be one of .*{allowed}.*got '{value}'"):
            TPGRPOConfig(**{field: value})
    with pytest.raises(ValueError, match=r"beta must be finite and > 0, got 0\.0"):
        TPGRPOConfig(beta=0.0)
    with pytest.raises(ValueError, match=r"eta must be finite and >= 0, got -1\.0"):
        TPGRPOConfig(eta=-1.0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        TPGRPOConfig(eps=float("nan"))
    r, mask, gid, prm, ref, ids = ragged(5)
    with pytest.raises(ValueError, match="needs prm_logp, ref_logp"):
        tp_grpo(r, mask, cfg=TPGRPOConfig(), group_id=gid, prm_logp=prm, ref_logp=ref)
    with pytest.raises(ValueError, match=">= 2 samples per group, got 1"):
        call(TPGRPOConfig(), r, mask, torch.arange(8), prm, ref, ids)


def test_registration():
    entry = registry.lookup("advantage", "tp_grpo")
    assert entry.needs == ("prm_logp", "ref_logp", "step_ids") and entry.paper == "arXiv:2602.06422"
    assert entry.config is TPGRPOConfig and not entry.reconstructed
