"""Process-reward advantages: PRL, PRIME's implicit PRM (with Clip / Delta) and the implicit PRM's loss.

The research note's worked numbers (methods_reward.md §4-6), the reductions to GRPO / RLOO at degenerate
settings, Delta's telescoping, padding / shuffle invariance and the exact zeros off the mask.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import ops, registry
from entrolab.methods.advantages import GRPOConfig, grpo, rloo
from entrolab.methods.prime import ImplicitPRMConfig, implicit_prm, implicit_prm_loss, implicit_rewards
from entrolab.methods.process import (
    PRLConfig,
    clip_step_rewards,
    delta_step_rewards,
    prl,
    prl_token_advantages,
    returns_to_go,
    step_ends,
    step_rewards_from_tokens,
)
from tests.methods._helpers import NAN, assert_padding_invariant, pad

D = torch.float64
NOTE_PRM = torch.tensor([[-1.0, -2.0, -0.5, -0.1]], dtype=D)  # log pi_theta (the note's §5 example)
NOTE_REF = torch.tensor([[-1.2, -1.5, -0.7, -0.1]], dtype=D)


def close(a, b, tol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=0, atol=tol)


def batch(seed=0, b=8, g=4, t=7):
    """Random ragged batch: rewards, mask (one empty row, one hole), logps, 2-3 token steps, group ids."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 1, 0, 5, 6, 2, 4][:b])
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(D)
    step_ids = torch.where(mask > 0, torch.arange(t).div(3, rounding_mode="floor"), -1)
    x = {k: -torch.rand(b, t, generator=gen, dtype=D) * 3 for k in ("old_logp", "ref_logp", "prm_logp")}
    rewards = torch.randint(0, 2, (b,), generator=gen).to(D)
    return rewards, mask, ops.contiguous_groups(b, g), step_ids, x


def call_prime(cfg, rewards, mask, gid, step_ids, x):
    return implicit_prm(rewards, mask, cfg=cfg, group_id=gid, prm_logp=x["prm_logp"], ref_logp=x["ref_logp"],
                        step_ids=step_ids)  # fmt: skip


def call_prl(cfg, rewards, mask, gid, step_ids, x):
    return prl(rewards, mask, cfg=cfg, group_id=gid, old_logp=x["old_logp"], ref_logp=x["ref_logp"], step_ids=step_ids)


# ---- §5 implicit PRM: the note's numbers -------------------------------------------------------------------


def test_implicit_rewards_q_and_orm_are_the_notes_numbers():
    r, q, orm = implicit_rewards(NOTE_PRM, NOTE_REF, torch.ones(1, 4), beta=0.05)
    close(r, [[0.01, -0.025, 0.01, 0.0]])
    close(q, [[0.01, -0.015, -0.005, -0.005]])
    close(orm, [-0.005])
    close(r.sum(), orm.sum())  # the token rewards sum to the ORM
    zero = implicit_rewards(NOTE_REF, NOTE_REF, torch.ones(1, 4), beta=0.05)
    assert all(torch.all(z == 0) for z in zero)  # pi_theta = pi_ref: every reward 0


def test_step_rewards_and_step_q_are_the_notes_numbers():
    r, q, _ = implicit_rewards(NOTE_PRM, NOTE_REF, torch.ones(1, 4), beta=0.05)
    ids = torch.tensor([[0, 0, 1, 1]])
    ends = step_ends(ids)
    assert ends.tolist() == [[False, True, False, True]]
    step_r = step_rewards_from_tokens(r, ids)
    close(step_r, [[0.0, -0.015, 0.0, 0.01]])
    close(q[ends], [-0.015, -0.005])  # step q-values
    close(step_r[ends].min(), -0.015)  # the min-aggregate of the step rewards ...
    close(q[ends].min(), -0.015)  # ... and of the step q-values
    # padding (-1) and a repeated id after a gap are their own steps; garbage off the steps is ignored
    ids = torch.tensor([[0, 0, 1, -1, -1], [4, -1, 4, 4, -1]])
    tok = torch.tensor([[1.0, 2.0, 3.0, NAN, NAN], [1.0, NAN, 2.0, 5.0, NAN]], dtype=D)
    close(step_rewards_from_tokens(tok, ids), [[0, 3.0, 3.0, 0, 0], [1.0, 0, 0, 7.0, 0]])


# ---- §4 Clip and Delta -------------------------------------------------------------------------------------


def test_clip_delta_table_of_the_note():
    s = torch.tensor([[0.9, 0.6, 0.8]], dtype=D)
    ones = torch.ones(1, 3)
    clip = clip_step_rewards(s, 0.7)
    close(clip, [[0.0, -0.1, 0.0]])
    delta = delta_step_rewards(s)
    close(delta, [[0.3, -0.2, 0.8]])
    close(returns_to_go(delta, ones), s)  # return-to-go equals s_k
    both = delta_step_rewards(clip_step_rewards(s, 0.7))
    close(both, [[0.1, -0.1, 0.0]])
    close(returns_to_go(both, ones), [[0.0, -0.1, 0.0]])
    # the same on the [B, T] layout: steps ending at columns 1, 3 and 4; the rest is ignored and left 0
    ends = torch.tensor([[False, True, False, True, True]])
    wide = torch.tensor([[NAN, 0.9, NAN, 0.6, 0.8]], dtype=D)
    close(clip_step_rewards(wide, 0.7, ends), [[0, 0.0, 0, -0.1, 0.0]])
    close(delta_step_rewards(wide, ends), [[0, 0.3, 0, -0.2, 0.8]])


@pytest.mark.parametrize("seed", range(4))
def test_delta_telescopes_and_clip_never_pays_for_a_repeated_step(seed):
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(5, 9, generator=gen, dtype=D)
    ends = torch.rand(5, 9, generator=gen) < 0.4
    ret = returns_to_go(delta_step_rewards(s, ends), torch.ones(5, 9))
    close(ret[ends], s[ends])  # the return from every step k is s_k, whatever K
    first = ends.int().argmax(1)
    has = ends.any(1)
    close(ret[has, 0], s[has, first[has]])  # and the return from the start is s_1
    eta = 0.5
    total = clip_step_rewards(s, eta).sum(1)
    dup = torch.cat([s, s[:, -1:]], 1)  # the last step repeated
    assert torch.all(clip_step_rewards(dup, eta).sum(1) <= total + 1e-12)
    assert torch.all(clip_step_rewards(s, eta) <= 0)


# ---- the implicit_prm advantage ----------------------------------------------------------------------------


def test_implicit_prm_by_hand_with_both_baselines():
    # beta 1, s = prm - ref; row 1 has one token (its second column is garbage off the mask)
    prm = torch.tensor([[0.2, -0.4], [0.6, NAN]], dtype=D)
    x = {"prm_logp": prm, "ref_logp": torch.zeros(2, 2, dtype=D)}
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=D)
    args = (torch.tensor([1.0, 0.0], dtype=D), mask, torch.zeros(2, dtype=torch.long), None, x)
    raw = {"beta": 1.0, "batch_norm": False, "whiten": False}
    # means -0.1 and 0.6; paper: row 0 [0.2 - 0.6, -0.4 - 0.6] -> returns [-1.4, -1.0]; row 1 [0.6 + 0.1] = 0.7
    # outcome RLOO [1, -1]
    paper, m = call_prime(ImplicitPRMConfig(**raw), *args)
    close(paper, [[-0.4, 0.0], [-0.3, 0.0]])
    # code: r K/(K-1) - (m0 + m1)/(K-1): row 0 [-0.1, -1.3] -> [-1.4, -1.3]; row 1 [0.7]
    code, _ = call_prime(ImplicitPRMConfig(**raw, process_baseline="code"), *args)
    close(code, [[-0.4, -0.3], [-0.3, 0.0]])
    close(m["prime/orm_mean"], (-0.2 + 0.6) / 2)
    close(m["prime/process_return_absmax"], 0.6)  # max |return-to-go of s| = |0.6| (row 0: -0.2, -0.4)
    # coefficients weight each source's return
    scaled, _ = call_prime(ImplicitPRMConfig(**raw, process_coef=2.0, outcome_coef=0.5), *args)
    close(scaled, [[2 * -1.4 + 0.5, 2 * -1.0 + 0.5], [2 * 0.7 - 0.5, 0.0]])


@pytest.mark.parametrize("seed", range(3))
def test_code_baseline_adds_the_self_term(seed):
    rewards, mask, gid, ids, x = batch(seed)
    raw = {"batch_norm": False, "whiten": False, "outcome_coef": 0.0}
    paper, _ = call_prime(ImplicitPRMConfig(**raw), rewards, mask, gid, ids, x)
    code, _ = call_prime(ImplicitPRMConfig(**raw, process_baseline="code"), rewards, mask, gid, ids, x)
    r, _, _ = implicit_rewards(x["prm_logp"], x["ref_logp"], mask, 0.05)
    self_term = (r - ops.masked_mean(r, mask, dim=-1).unsqueeze(-1)) / (4 - 1)  # (r_t - mean_t r^i) / (K - 1)
    close(code - paper, returns_to_go(self_term, mask))


@pytest.mark.parametrize("seed", range(3))
def test_pi_phi_equal_pi_ref_is_the_outcome_rloo(seed):
    rewards, mask, gid, ids, x = batch(seed)
    same = {**x, "prm_logp": x["ref_logp"]}
    ref = rloo(rewards, mask, cfg=None, group_id=gid)[0] * mask  # [B, T] RLOO broadcast over the tokens
    for granularity in ("token", "step"):
        adv, _ = call_prime(ImplicitPRMConfig(whiten=False, granularity=granularity), rewards, mask, gid, ids, same)
        close(adv, ref)
    white = (ref - ops.masked_mean(ref, mask)) / torch.sqrt(ops.masked_var(ref, mask, unbiased=True) + 1e-8)
    close(call_prime(ImplicitPRMConfig(), rewards, mask, gid, ids, same)[0], white * mask)
    # process_coef 0 is the same thing for any pi_phi
    close(call_prime(ImplicitPRMConfig(process_coef=0.0), rewards, mask, gid, ids, x)[0], white * mask)


@pytest.mark.parametrize("seed", range(3))
def test_refine_degenerate_settings(seed):
    rewards, mask, gid, ids, x = batch(seed)
    below = {**x, "prm_logp": x["ref_logp"] - x["prm_logp"].abs()}  # every implicit reward <= 0
    for granularity in ("token", "step"):
        base = {"granularity": granularity}
        none, _ = call_prime(ImplicitPRMConfig(**base), rewards, mask, gid, ids, below)
        # clip at eta_clip = 0 leaves rewards that are all <= 0 unchanged
        clip, _ = call_prime(ImplicitPRMConfig(**base, refine="clip", eta_clip=0.0), rewards, mask, gid, ids, below)
        close(clip, none)
        # eta_clip = -inf zeroes every process reward: the outcome-only RLOO (process_coef 0)
        gone, _ = call_prime(ImplicitPRMConfig(**base, refine="clip", eta_clip=-math.inf), rewards, mask, gid, ids, x)
        close(gone, call_prime(ImplicitPRMConfig(**base, process_coef=0.0), rewards, mask, gid, ids, x)[0])
    # one step per row: Delta (and Clip+Delta on rewards <= 0) is the identity
    one = torch.where(mask > 0, 0, -1)
    step = {"granularity": "step"}
    none, _ = call_prime(ImplicitPRMConfig(**step), rewards, mask, gid, one, below)
    for refine in ("delta", "clip_delta"):
        close(call_prime(ImplicitPRMConfig(**step, refine=refine), rewards, mask, gid, one, below)[0], none)


@pytest.mark.parametrize("seed", range(3))
def test_step_granularity_agrees_with_token_at_step_starts_and_batch_norm_removes_beta(seed):
    rewards, mask, gid, ids, x = batch(seed)
    raw = {"batch_norm": False, "whiten": False, "outcome_coef": 0.0}
    tok, _ = call_prime(ImplicitPRMConfig(**raw), rewards, mask, gid, ids, x)
    stp, _ = call_prime(ImplicitPRMConfig(**raw, granularity="step"), rewards, mask, gid, ids, x)
    starts = (mask > 0) & (torch.arange(mask.shape[1]) % 3 == 0)  # steps of 3 tokens
    close(stp[starts], tok[starts])  # a step's return from its first token is the tokens' return
    assert not torch.allclose(stp[mask > 0], tok[mask > 0])
    # under batch_norm, the paper's beta and the code's beta = 1 give the same advantage (up to the 1e-6)
    a = call_prime(ImplicitPRMConfig(), rewards, mask, gid, ids, x)[0]
    b = call_prime(ImplicitPRMConfig(beta=1.0), rewards, mask, gid, ids, x)[0]
    close(a, b, tol=1e-3)
    r, _, _ = implicit_rewards(x["prm_logp"], x["ref_logp"], mask, 0.05)
    normed = r / (returns_to_go(r, mask).abs().max() + 1e-6)
    assert returns_to_go(normed, mask).abs().max() <= 1


# ---- §6 PRL ------------------------------------------------------------------------------------------------


def test_prl_note_numbers():
    d = torch.tensor([[0.2, -0.1, 0.4, 0.1]], dtype=D)
    one = torch.ones(1, 4, dtype=D)
    close(returns_to_go(d, one), [[0.6, 0.4, 0.5, 0.1]])  # D
    close(1.0 - returns_to_go(d, one) / 2.0, [[0.7, 0.8, 0.75, 0.95]])  # v
    ends = torch.tensor([[False, True, False, True]])
    close(prl_token_advantages(torch.ones(1, 1, dtype=D), d, one, ends, 2.0), [[0.8, 0.8, 0.95, 0.95]])
    # the full advantage with L_step = 2 on a group whose GRPO advantage is +-0.7071: the same shift
    x = {"old_logp": torch.cat([d, torch.zeros(1, 4, dtype=D)]), "ref_logp": torch.zeros(2, 4, dtype=D)}
    rw, m2 = torch.tensor([1.0, 0.0], dtype=D), torch.ones(2, 4, dtype=D)
    adv, m = call_prl(PRLConfig(eta=2.0, step_len=2), rw, m2, torch.zeros(2, dtype=torch.long), None, x)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    close(adv, [[a - 0.2, a - 0.2, a - 0.05, a - 0.05], [-a] * 4])
    close(m["prl/steps_mean"], 2.0)
    close(m["prl/kl_seq_mean"], 0.3)  # (0.6 + 0) / 2
    close(m["prl/penalty_mean"], (0.2 + 0.2 + 0.05 + 0.05) / 8)


@pytest.mark.parametrize("seed", range(3))
def test_prl_reduces_to_grpo(seed):
    rewards, mask, gid, ids, x = batch(seed)
    ref = grpo(rewards, mask, cfg=GRPOConfig(), group_id=gid)[0] * mask  # [B, T]
    close(call_prl(PRLConfig(eta=math.inf), rewards, mask, gid, ids, x)[0], ref)  # eta -> inf
    same = {**x, "old_logp": x["ref_logp"]}
    for split in ("length", "newline"):  # pi_old = pi_ref
        close(call_prl(PRLConfig(step_split=split, step_len=2), rewards, mask, gid, ids, same)[0], ref)
    dr = call_prl(PRLConfig(eta=math.inf, norm_by_std=False), rewards, mask, gid, ids, x)[0]
    close(dr, (rewards.view(2, 4) - rewards.view(2, 4).mean(1, keepdim=True)).view(8, 1) * mask)


@pytest.mark.parametrize("seed", range(3))
def test_prl_steps_share_one_value_and_newline_steps_match_length_steps(seed):
    rewards, mask, gid, ids, x = batch(seed)
    length, _ = call_prl(PRLConfig(eta=3.0, step_len=3), rewards, mask, gid, ids, x)
    newline, _ = call_prl(PRLConfig(eta=3.0, step_split="newline"), rewards, mask, gid, ids, x)
    close(newline, length)  # the step ids are chunks of 3 tokens
    for row in range(8):  # every token of a step has the value of the step's end
        for step in ids[row].unique().tolist():
            if step >= 0:
                vals = length[row, ids[row] == step]
                close(vals, vals[-1].expand_as(vals))
    dense, _ = call_prl(PRLConfig(eta=3.0, step_len=1), rewards, mask, gid, ids, x)
    a = grpo(rewards, mask, cfg=GRPOConfig(), group_id=gid)[0]
    close(dense, (a - returns_to_go(x["old_logp"] - x["ref_logp"], mask) / 3.0) * mask)


# ---- invariances, zeros off the mask, the contract ---------------------------------------------------------

CASES = [
    (call_prl, PRLConfig(eta=2.0, step_len=2)),
    (call_prl, PRLConfig(eta=2.0, step_split="newline")),
    (call_prime, ImplicitPRMConfig()),
    (call_prime, ImplicitPRMConfig(granularity="step", refine="clip_delta", eta_clip=-0.01)),
    (call_prime, ImplicitPRMConfig(refine="delta", process_baseline="code", batch_norm=False)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_padding_shuffle_and_masked_zeros(case):
    fn, cfg = CASES[case]
    rewards, mask, gid, ids, x = batch(case)
    t = mask.shape[1]
    out = fn(cfg, rewards, mask, gid, ids, x)
    assert torch.all(out[0][mask == 0] == 0)
    wide = fn(cfg, rewards, pad(mask, 0.0), gid, pad(ids, -1), {k: pad(v, NAN) for k, v in x.items()})
    assert_padding_invariant(out, wide, t)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(case))
    shuffled = fn(cfg, rewards[perm], mask[perm], gid[perm], ids[perm], {k: v[perm] for k, v in x.items()})
    close(shuffled[0], out[0][perm])
    for k in out[1]:
        close(shuffled[1][k], out[1][k])
    # a hole in the mask gets 0 too, and garbage under it changes nothing
    holed = mask.clone()
    holed[0, 2] = 0
    dirty = {k: v.clone() for k, v in x.items()}
    for v in dirty.values():
        v[0, 2] = NAN
    adv = fn(cfg, rewards, holed, gid, ids, dirty)[0]
    assert adv[0, 2] == 0 and torch.isfinite(adv).all()


@pytest.mark.parametrize("name", ["prl", "implicit_prm"])
def test_contract_with_the_declared_needs(name):
    entry = registry.lookup("advantage", name)
    rewards, mask, gid, ids, x = batch(7)
    needs = {"step_ids": ids, **x}
    adv, metrics = entry.fn(rewards, mask, cfg=entry.make_config(), group_id=gid, **{k: needs[k] for k in entry.needs})
    assert adv.shape == mask.shape and torch.isfinite(adv).all() and not adv.requires_grad
    assert sorted(metrics) == sorted(entry.metrics)
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in metrics.values())


# ---- the PRM loss ------------------------------------------------------------------------------------------


def test_implicit_prm_loss_value_and_gradient():
    prm = torch.cat([NOTE_PRM, NOTE_PRM + 1.0, torch.zeros(1, 4, dtype=D)]).requires_grad_()
    ref = torch.cat([NOTE_REF, NOTE_REF, torch.zeros(1, 4, dtype=D)]).requires_grad_()
    mask = torch.tensor([[1.0] * 4, [1, 1, 1, 0], [0] * 4], dtype=D)  # row 2 is empty: left out
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=D)
    loss, m = implicit_prm_loss(prm, ref, mask, labels, beta=0.05)
    orm0 = -0.005  # the note's ORM
    orm1 = 0.05 * (1.2 + 0.5 + 1.2)  # log-ratios [1.2, 0.5, 1.2] on its 3 tokens
    expected = (math.log1p(math.exp(-orm0)) + math.log1p(math.exp(orm1))) / 2
    close(loss, expected)
    close(m["prime/prm_loss"], expected)
    close(m["prime/prm_acc"], 0.0)  # ORM < 0 with label 1, ORM > 0 with label 0
    close(m["prime/prm_score_mean"], (1 / (1 + math.exp(-orm0)) + 1 / (1 + math.exp(-orm1))) / 2)
    loss.backward()
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    grad = torch.tensor([[0.05 * (sig(orm0) - 1) / 2] * 4, [0.05 * sig(orm1) / 2] * 3 + [0.0], [0.0] * 4], dtype=D)
    close(prm.grad, grad)  # d loss / d log pi_phi = beta (sigmoid(ORM) - label) / n_rows on the row's tokens
    assert ref.grad is None  # the reference is frozen
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        implicit_prm_loss(prm, ref, mask, torch.tensor([2.0, 0.0, 0.0]))


# ---- errors ------------------------------------------------------------------------------------------------


def test_bad_config_and_missing_inputs():
    with pytest.raises(ValueError, match=r"step_split must be one of \['length', 'newline'\], got 'nn'"):
        PRLConfig(step_split="nn")
    with pytest.raises(ValueError, match="eta must be > 0"):
        PRLConfig(eta=0.0)
    with pytest.raises(ValueError, match="step_len must be >= 1"):
        PRLConfig(step_len=0)
    with pytest.raises(ValueError, match=r"refine must be one of \['none', 'clip', 'delta', 'clip_delta'\]"):
        ImplicitPRMConfig(refine="clip+delta")
    with pytest.raises(ValueError, match=r"granularity must be one of \['token', 'step'\], got 'whole'"):
        ImplicitPRMConfig(granularity="whole")
    with pytest.raises(ValueError, match="process_baseline must be one of"):
        ImplicitPRMConfig(process_baseline="rloo")
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="eta_clip must be < \\+inf"):
            ImplicitPRMConfig(eta_clip=bad)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        ImplicitPRMConfig(beta=0.0)
    with pytest.raises(ValueError, match="outcome_coef must be finite and >= 0"):
        ImplicitPRMConfig(outcome_coef=-1.0)
    rewards, mask, gid, ids, x = batch(0)
    with pytest.raises(ValueError, match="prl needs old_logp and ref_logp"):
        prl(rewards, mask, cfg=PRLConfig(), group_id=gid, old_logp=x["old_logp"])
    with pytest.raises(ValueError, match="needs step_ids"):
        call_prl(PRLConfig(step_split="newline"), rewards, mask, gid, None, x)
    with pytest.raises(ValueError, match="implicit_prm needs prm_logp and ref_logp"):
        implicit_prm(rewards, mask, cfg=ImplicitPRMConfig(), group_id=gid, ref_logp=x["ref_logp"])
    with pytest.raises(ValueError, match="needs step_ids"):
        call_prime(ImplicitPRMConfig(granularity="step"), rewards, mask, gid, None, x)
    with pytest.raises(ValueError, match=">= 2 samples per group"):
        call_prime(ImplicitPRMConfig(), rewards, mask, torch.arange(8), ids, x)
