"""COPO: the note's entropies / weights / c(q) / A_g, the modes, the all-correct group, the reductions to ppo_clip,
shuffle and padding invariance, missing answers, and bad inputs."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from entrolab import registry
from entrolab.axes import PROTOCOLS
from entrolab.methods.copo import CopoConfig, CopoLossConfig, answer_entropy, copo, copo_loss
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip

from ._helpers import NAN, assert_padding_invariant, gen, pad

G = 6
# the note's three prompts: all "5" and right; {5,5,5,3,3,7} with the 5s right; six distinct answers, all wrong
IDS = torch.tensor([5] * 6 + [5, 5, 5, 3, 3, 7] + [10, 11, 12, 13, 14, 15])
R = torch.tensor([1.0] * 6 + [1.0, 1, 1, 0, 0, 0] + [0.0] * 6)
GID = torch.arange(3).repeat_interleave(G)
H = [0.0, 1.459148, math.log2(6)]  # answer entropies (bits)
SOFT = [0.0066929, 0.9085, 0.99964]  # sigmoid(5 (H - 1))
COEF = [1.0, 0.529604, 1 / 6]  # 1 - lambda H, lambda = (5/6) / log2 6


def run(cfg=None, r=R, ids=IDS, gid=GID):
    return copo(r, torch.ones(len(r), 4), cfg=cfg or CopoConfig(), group_id=gid, answer_ids=ids)


def per_row(values, sizes=G):
    return [v for v in values for _ in range(sizes)]


def test_note_entropies_weights_and_global_advantage():
    assert answer_entropy(IDS.view(3, G)).tolist() == pytest.approx(H, abs=1e-6)
    adv, m, ex = run(CopoConfig(mode="only-soft"))
    assert ex["copo_weight"].squeeze(1).tolist() == pytest.approx(per_row(SOFT), abs=1e-4)
    # R_g = accuracy = [1, 0.5, 0]: mean 0.5, unbiased std 0.5 -> A_g = [1, 0, -1] on every row of the prompt
    assert ex["copo_global_adv"].squeeze(1).tolist() == pytest.approx(per_row([1.0, 0.0, -1.0]), abs=1e-5)
    assert ex["copo_global_adv"].shape == ex["copo_weight"].shape == adv.shape == (18, 1)
    local = adv.squeeze(1).tolist()
    assert local[:6] == [0.0] * 6 and local[12:] == [0.0] * 6  # zero-variance groups
    assert local[6:12] == pytest.approx([0.5 / math.sqrt(0.3)] * 3 + [-0.5 / math.sqrt(0.3)] * 3, abs=1e-5)
    assert m["copo/answer_entropy_mean"].item() == pytest.approx(sum(H) / 3, abs=1e-6)
    assert m["copo/global_reward_mean"].item() == pytest.approx(0.5)
    assert m["adv/frac_zero_std_groups"].item() == pytest.approx(2 / 3)


def test_reward_coef_scales_the_global_reward_by_consistency():
    ones = torch.ones(18)  # all right: R_g = c(q)
    _, m, ex = run(CopoConfig(reward_coef=True), r=ones)
    assert m["copo/global_reward_mean"].item() == pytest.approx(sum(COEF) / 3, abs=1e-6)
    c = torch.tensor(COEF, dtype=torch.float64)
    expected = (c - c.mean()) / (c.std() + 1e-6)
    assert ex["copo_global_adv"].squeeze(1).tolist() == pytest.approx(per_row(expected.tolist()), abs=1e-5)
    _, m, _ = run(CopoConfig(reward_coef=False), r=ones)
    assert m["copo/global_reward_mean"].item() == 1.0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("soft-with-zero", per_row([SOFT[0]]) + [SOFT[1]] * 3 + [0.0] * 3 + [0.0] * 6),
        ("soft-with-forced", [0.0] * 6 + [SOFT[1]] * 6 + [0.0] * 6),
        ("only-forced", [0.0] * 6 + [1.0] * 6 + [0.0] * 6),
        ("only-zero", [1.0] * 6 + [1.0] * 3 + [0.0] * 3 + [0.0] * 6),
        ("only-global", [0.0] * 18),
        ("no-global", [1.0] * 18),
    ],
)
def test_modes_mask_the_weight_as_the_code(mode, expected):
    w = run(CopoConfig(mode=mode))[2]["copo_weight"].squeeze(1).tolist()
    assert w == pytest.approx(expected, abs=1e-4)


def test_an_all_correct_group_learns_from_the_global_loss_only():
    adv, _, ex = run()  # default soft-with-zero, k = 5, b = 1
    g = gen(1)
    old, mask = -torch.rand(18, 5, generator=g), torch.ones(18, 5)
    logp = (old + 0.05 * torch.randn(18, 5, generator=g)).requires_grad_()  # ratios inside the clip range
    loss, _ = copo_loss(logp, old, adv, mask, cfg=CopoLossConfig(), **ex)
    pcfg = PPOClipConfig(dual_clip_c=3.0)
    glob, _ = ppo_clip(logp, old, ex["copo_global_adv"], mask, cfg=pcfg)
    assert torch.all(adv[:6] == 0) and torch.all(ex["copo_global_adv"][:6] > 0)
    torch.testing.assert_close(loss[:6], (1 - SOFT[0]) * glob[:6], rtol=1e-4, atol=1e-6)  # ~0.9933 x global
    # all wrong (w = 0 under soft-with-zero): only the global loss, A_g = -1
    torch.testing.assert_close(loss[12:], glob[12:])
    loss.sum().backward()
    assert torch.all(logp.grad[:6] != 0)  # the consistent group still has a gradient


def test_no_global_is_ppo_clip_with_dual_clip_on_the_local_advantage_exactly():
    adv, _, ex = run(CopoConfig(mode="no-global"))
    g = gen(2)
    old = -torch.rand(18, 5, generator=g) * 3
    logp = (old + 0.8 * torch.randn(18, 5, generator=g)).requires_grad_()  # wide ratios: both clips act
    mask = (torch.rand(18, 5, generator=g) > 0.2).float()
    loss, m = copo_loss(logp, old, adv, mask, cfg=CopoLossConfig(), **ex)
    logp2 = logp.detach().clone().requires_grad_()
    ref, rm = ppo_clip(logp2, old, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.2, dual_clip_c=3.0))
    assert torch.equal(loss, ref)
    assert all(torch.equal(m[k], rm[k]) for k in rm)
    loss.sum().backward()
    ref.sum().backward()
    assert torch.equal(logp.grad, logp2.grad)


@pytest.mark.parametrize("w", [0.0, 1.0, 0.3])
def test_constant_weight_blends_two_ppo_clips(w):
    g = gen(3)
    old = -torch.rand(4, 6, generator=g) * 2
    logp = old + 0.5 * torch.randn(4, 6, generator=g)
    adv, gadv = torch.randn(4, 1, generator=g), torch.randn(4, 1, generator=g)
    mask = torch.ones(4, 6)
    loss, m = copo_loss(
        logp, old, adv, mask, cfg=CopoLossConfig(), copo_global_adv=gadv, copo_weight=torch.full((4, 1), w)
    )
    pcfg = PPOClipConfig(dual_clip_c=3.0)
    loc, glob = ppo_clip(logp, old, adv, mask, cfg=pcfg)[0], ppo_clip(logp, old, gadv, mask, cfg=pcfg)[0]
    if w == 1.0:
        assert torch.equal(loss, loc)
    elif w == 0.0:
        assert torch.equal(loss, glob)
    torch.testing.assert_close(loss, (1 - w) * glob + w * loc)
    assert m["copo/weight_token_mean"].item() == pytest.approx(w)


def test_row_shuffle_and_relabelled_ids_change_nothing():
    adv, m, ex = run()
    perm = torch.randperm(18, generator=gen(4))
    relabel = torch.tensor([7, 2, 9])  # new group ids; answer ids shifted
    adv2, m2, ex2 = run(r=R[perm], ids=IDS[perm] + 100, gid=relabel[GID[perm]])
    torch.testing.assert_close(adv2, adv[perm])
    for k in ex:
        torch.testing.assert_close(ex2[k], ex[k][perm])
    for k in m:
        torch.testing.assert_close(m2[k], m[k])


def test_padding_and_masked_tokens_give_exact_zeros():
    adv, _, ex = run()
    g = gen(5)
    lengths = torch.randint(0, 6, (18,), generator=g)
    mask = (torch.arange(5) < lengths.unsqueeze(-1)).float()
    old = -torch.rand(18, 5, generator=g)
    logp = old + 0.3 * torch.randn(18, 5, generator=g)
    narrow = copo_loss(logp, old, adv, mask, cfg=CopoLossConfig(), **ex)
    wide_logp = pad(logp, NAN).requires_grad_()
    wide = copo_loss(wide_logp, pad(old, NAN), adv, pad(mask, 0.0), cfg=CopoLossConfig(), **ex)
    assert_padding_invariant(narrow, wide, 5)
    wide[0].sum().backward()
    assert torch.all(wide_logp.grad[pad(mask, 0.0) == 0] == 0) and torch.isfinite(wide_logp.grad).all()


def test_missing_answers_one_bucket_or_distinct_and_a_single_prompt():
    ids = torch.tensor([[-1, -1, -1, 5, 5, 5]])
    assert answer_entropy(ids, "one_answer").item() == pytest.approx(1.0)
    assert answer_entropy(ids, "distinct").item() == pytest.approx(0.5 * math.log2(6) + 0.5)
    assert answer_entropy(torch.full((1, 4), -1), "distinct").item() == pytest.approx(2.0)
    # one prompt in the batch: A_g = 0 (no spread across prompts), the local advantage as GRPO
    r, gid = torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long)
    adv, _, ex = run(r=r, ids=torch.tensor([1, 2, 2, -1]), gid=gid)
    assert torch.all(ex["copo_global_adv"] == 0)
    assert adv.squeeze(1).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    _, _, ex = run(CopoConfig(norm_by_std=False))
    assert ex["copo_global_adv"].squeeze(1).tolist() == pytest.approx(per_row([0.5, 0.0, -0.5]))


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match=r"mode must be one of \[.*'soft-with-zero'.*\], got 'soft with zero'"):
        CopoConfig(mode="soft with zero")
    with pytest.raises(ValueError, match="missing_answers must be one of"):
        CopoConfig(missing_answers="drop")
    with pytest.raises(ValueError, match="k must be finite and >= 0"):
        CopoConfig(k=-1.0)
    with pytest.raises(ValueError, match="eps_low must be in"):
        CopoLossConfig(eps_low=1.0)
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        CopoLossConfig(dual_clip_c=1.0)
    with pytest.raises(ValueError, match="needs answer_ids"):
        copo(R, torch.ones(18, 2), cfg=CopoConfig(), group_id=GID)
    with pytest.raises(ValueError, match=">= -1"):
        run(ids=IDS - 20)
    with pytest.raises(ValueError, match=">= 2 samples per group"):
        run(r=R[:3], ids=IDS[:3], gid=torch.arange(3))
    with pytest.raises(ValueError, match="needs copo_global_adv and copo_weight"):
        copo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 1), torch.ones(1, 2), cfg=CopoLossConfig())


@pytest.mark.parametrize(("axis", "name"), [("advantage", "copo"), ("policy_loss", "copo_loss")])
def test_registration_keeps_the_contract(axis, name):
    entry = registry.lookup(axis, name)
    adv, m, ex = run()
    if axis == "policy_loss":
        logp = torch.zeros(18, 4).requires_grad_()
        _, m = copo_loss(logp, torch.zeros(18, 4), adv, torch.ones(18, 4), cfg=entry.make_config(), **ex)
    else:
        assert entry.provides == tuple(ex)
    assert sorted(m) == sorted(entry.metrics)
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in m.values())
    params = inspect.signature(entry.fn).parameters.values()
    proto = list(inspect.signature(PROTOCOLS[axis].__call__).parameters.values())[1:]
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == [
        p.name for p in proto if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    assert keyword == {p.name for p in proto if p.kind is p.KEYWORD_ONLY} | set(entry.needs)
    doc = inspect.getdoc(entry.fn) or ""
    for section in ("Args:", "Returns:", "Differences from the paper", "Example:", ">>>", *entry.metrics):
        assert section in doc
