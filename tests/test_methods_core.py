"""Numbers for the core catalogue: GRPO / Dr.GRPO / RLOO, PPO-clip, aggregation, KL / entropy, DAPO overlong.

Every test builds small tensors whose answer can be worked out by hand (the comment says how) or compares
with the parent method / the verl or TRL formula written out here.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo, rloo
from entrolab.methods.aggregation import AGG_MODES, aggregate
from entrolab.methods.filters import overlong_filter
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.regularizers import EntropyBonusConfig, KLConfig, entropy_bonus, kl
from entrolab.methods.shapers import OverlongPenaltyConfig, overlong_penalty

# ----------------------------------------------------------------------------------------------- advantages


def test_grpo_closed_form_unbiased_std():
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3); group 2: all equal -> exactly 0.
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    adv, m = grpo(rewards, torch.ones(8, 3), cfg=GRPOConfig(), group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert adv.shape == (8, 1)
    torch.testing.assert_close(adv.squeeze(-1), torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    assert torch.all(adv[4:] == 0)
    assert m["adv/frac_zero_std_groups"].item() == 0.5
    assert m["adv/mean"].item() == pytest.approx(0.0, abs=1e-7)
    assert m["adv/std"].item() == pytest.approx(a / math.sqrt(2), rel=1e-6)  # population std over 8


def test_grpo_matches_verl_loop():
    # verl compute_grpo_outcome_advantage: (r - torch.mean) / (torch.std + 1e-6) per group.
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    adv, _ = grpo(rewards, torch.ones(12, 2), cfg=GRPOConfig(), group_size=3)
    expected = torch.cat([(r - r.mean()) / (torch.std(r) + 1e-6) for r in rewards.split(3)])
    torch.testing.assert_close(adv.squeeze(-1), expected)


def test_grpo_without_std_is_dr_grpo():
    rewards = torch.rand(16, generator=torch.Generator().manual_seed(1))
    a, _ = grpo(rewards, torch.ones(16, 2), cfg=GRPOConfig(norm_by_std=False), group_size=4)
    b, _ = dr_grpo(rewards, torch.ones(16, 2), cfg=None, group_size=4)
    assert torch.equal(a, b)


def test_dr_grpo_closed_form():
    adv, m = dr_grpo(torch.tensor([1.0, 0, 0, 0, 2, 2]), torch.ones(6, 1), cfg=None, group_size=2)
    assert adv.squeeze(-1).tolist() == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    assert m["adv/frac_zero_std_groups"].item() == pytest.approx(2 / 3)


def test_rloo_closed_form_and_identity():
    # group 2: baseline for 3 is (1+2+2)/3, for 1 is (3+2+2)/3, for 2 is (3+1+2)/3 = 2.
    rewards = torch.tensor([1.0, 0, 0, 1, 3, 1, 2, 2])
    adv, _ = rloo(rewards, torch.ones(8, 1), cfg=None, group_size=4)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 4 / 3, -4 / 3, 0, 0])
    torch.testing.assert_close(adv.squeeze(-1), expected)
    centred, _ = dr_grpo(rewards, torch.ones(8, 1), cfg=None, group_size=4)
    torch.testing.assert_close(adv, centred * 4 / 3)  # A_rloo = G / (G - 1) (r - mean)


def test_advantages_detach_and_validate():
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    adv, _ = grpo(rewards, torch.ones(2, 1), cfg=GRPOConfig(), group_size=2)
    assert not adv.requires_grad
    for fn, cfg in ((grpo, GRPOConfig()), (dr_grpo, None), (rloo, None)):
        with pytest.raises(ValueError, match="group_size=1"):
            fn(torch.ones(4), torch.ones(4, 1), cfg=cfg, group_size=1)
        with pytest.raises(ValueError, match="groups of 4"):
            fn(torch.ones(6), torch.ones(6, 1), cfg=cfg, group_size=4)
    with pytest.raises(ValueError, match="-1"):
        GRPOConfig(eps=-1)


# ------------------------------------------------------------------------------------------------- ppo_clip

RATIOS = torch.tensor([[1.5, 0.5, 0.7, 1.5, 1.1]])
ADVS = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0]])


def _ppo(ratio, adv, mask=None, **cfg):
    logp = ratio.log().requires_grad_()
    mask = torch.ones_like(ratio) if mask is None else mask
    loss, m = ppo_clip(logp, torch.zeros_like(ratio), adv, mask, cfg=PPOClipConfig(**cfg))
    loss.sum().backward()
    return loss.detach(), logp.grad, m


def test_ppo_clip_closed_form_branches():
    # eps 0.2 / 0.28: r=1.5,A>0 -> clipped at 1.28; r=0.5,A<0 -> clipped at 0.8; r=0.7,A>0 and r=1.5,A<0
    # stay unclipped (the pessimistic branch); r=1.1 is inside. Gradient -A r if unclipped, 0 if clipped.
    loss, grad, m = _ppo(RATIOS, ADVS, eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, -0.7, 1.5, -2.2]]))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -0.7, 1.5, -2.2]]))
    assert m["clip/frac_low"].item() == pytest.approx(0.2)
    assert m["clip/frac_high"].item() == pytest.approx(0.2)
    assert m["clip/frac_dual"].item() == 0.0
    assert m["ratio/mean"].item() == pytest.approx(1.06)
    assert m["kl/approx_old"].item() == pytest.approx(-RATIOS.log().mean().item())


def test_ppo_dual_clip_closed_form():
    # c = 3: r=5,A=-1 -> PPO loss 5 capped at 3 (no gradient); r=2,A=-1 -> 2 < 3 untouched;
    # A > 0 is never dual-clipped.
    loss, grad, m = _ppo(torch.tensor([[5.0, 2.0, 5.0]]), torch.tensor([[-1.0, -1.0, 1.0]]), dual_clip_c=3.0)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 2.0, -1.2]]))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 2.0, 0.0]]))
    assert m["clip/frac_dual"].item() == pytest.approx(1 / 3)


def test_ppo_symmetric_eps_is_plain_ppo_clip():
    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(4, 7, generator=g) * 0.3).requires_grad_()
    old, adv = torch.randn(4, 7, generator=g) * 0.3, torch.randn(4, 1, generator=g)
    loss, _ = ppo_clip(logp, old, adv, torch.ones(4, 7), cfg=PPOClipConfig(eps_low=0.2, eps_high=0.2))
    r = torch.exp(logp - old)
    plain = -torch.min(r * adv, torch.clamp(r, 0.8, 1.2) * adv)  # Schulman et al. eq. 7, negated
    torch.testing.assert_close(loss, plain)
    g1 = torch.autograd.grad(loss.sum(), logp)[0]
    g2 = torch.autograd.grad(plain.sum(), logp)[0]
    torch.testing.assert_close(g1, g2)


def test_ppo_dual_clip_none_equals_huge_c():
    g = torch.Generator().manual_seed(3)
    ratio, adv = torch.exp(torch.randn(3, 5, generator=g)), torch.randn(3, 5, generator=g)
    a = _ppo(ratio, adv)
    b = _ppo(ratio, adv, dual_clip_c=1e9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ppo_gradient_sign_on_policy():
    # On-policy (r = 1) nothing is clipped: dL/dlogp = -A, negative for A > 0 and positive for A < 0.
    _, grad, _ = _ppo(torch.ones(2, 3), torch.tensor([[0.5], [-0.5]]))
    assert torch.all(grad[0] < 0) and torch.all(grad[1] > 0)


def test_ppo_masked_tokens_exact_zero_with_garbage():
    mask = torch.tensor([[1.0, 1, 0, 0]])
    logp = torch.tensor([[-1.0, -2.0, float("nan"), float("inf")]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.5, -float("inf"), float("nan")]])
    adv = torch.tensor([[1.0, -1.0, float("nan"), float("inf")]])
    loss, m = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(dual_clip_c=3.0))
    assert torch.all(loss[:, 2:] == 0) and torch.isfinite(loss).all()
    aggregate(loss, mask, "token-mean").backward()
    assert torch.all(logp.grad[:, 2:] == 0) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in m.values())


def test_ppo_log_ratio_clamped_at_20():
    # log-ratio 30 is clamped to 20 (verl): the unclipped A<0 loss is e^20 and the clamp stops the gradient.
    loss, grad, m = _ppo(torch.tensor([[math.exp(30.0)]], dtype=torch.float64), torch.tensor([[-1.0]]))
    assert loss.item() == pytest.approx(math.exp(20.0))
    assert grad.item() == 0.0
    assert m["kl/approx_old"].item() == pytest.approx(-20.0)


def test_ppo_config_validation_names_value():
    with pytest.raises(ValueError, match=r"eps_low.*1\.0"):
        PPOClipConfig(eps_low=1.0)
    with pytest.raises(ValueError, match=r"eps_high.*-0\.1"):
        PPOClipConfig(eps_high=-0.1)
    with pytest.raises(ValueError, match=r"dual_clip_c.*1\.0"):
        PPOClipConfig(dual_clip_c=1.0)


# ---------------------------------------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2, 3], [4, 5, 6]])
RAGGED = torch.tensor([[1.0, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("token-sum", 7.0),
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2
        ("seq-mean-token-sum-norm", 7 / 8),  # 7 / (2 seqs * norm_len 4)
    ],
)
def test_aggregation_closed_form(mode, expected):
    assert aggregate(LOSS, RAGGED, mode, norm_len=4).item() == pytest.approx(expected)


def test_aggregation_empty_sequence_left_out_of_seq_mean():
    # As verl agg_loss: the fully masked row counts neither in the seq-mean numerator nor in num_seqs.
    mask = torch.tensor([[1.0, 1, 0], [0, 0, 0]])
    assert aggregate(LOSS, mask, "seq-mean-token-mean").item() == 1.5
    assert aggregate(LOSS, mask, "seq-mean-token-sum").item() == 3.0
    assert aggregate(LOSS, mask, "seq-mean-token-sum-norm").item() == 1.0  # default norm_len = T = 3
    assert aggregate(LOSS, torch.zeros(2, 3), "token-mean").item() == 0.0  # empty minibatch: 0, not nan


def _verl_agg_loss(loss_mat, loss_mask, mode):
    """verl core_algos.agg_loss, single rank, default counts (written out for parity)."""
    if mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    if mode == "token-sum":
        return (loss_mat * loss_mask).sum()
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        loss = (seq_losses * seq_mask).sum() / seq_mask.sum()
        return loss / loss_mask.shape[-1] if mode.endswith("norm") else loss
    seq_mask = torch.sum(loss_mask, dim=-1)
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
    seq_mask = (seq_mask > 0).float()
    return (seq_losses * seq_mask).sum() / seq_mask.sum()


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_matches_verl(mode):
    g = torch.Generator().manual_seed(4)
    loss = torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = (torch.arange(9) < torch.tensor([9, 4, 0, 1, 7, 3]).unsqueeze(-1)).double()
    torch.testing.assert_close(aggregate(loss, mask, mode), _verl_agg_loss(loss, mask, mode))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_masked_inf_nan_exact_zero_grad(mode):
    loss = torch.tensor([[1.0, float("inf"), 2.0], [float("nan"), 3.0, -float("inf")]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    out = aggregate(loss, mask, mode)
    out.backward()
    assert torch.isfinite(out)
    assert torch.all(loss.grad[~mask] == 0) and torch.all(loss.grad[mask] != 0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_micro_batch_invariance(mode):
    g = torch.Generator().manual_seed(5)
    loss = torch.randn(8, 10, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(10) < torch.tensor([10, 3, 0, 7, 1, 10, 5, 2]).unsqueeze(-1)).double()
    counts = {"num_tokens": mask.sum(), "num_seqs": (mask.sum(-1) > 0).sum(), "norm_len": 16}
    full = aggregate(loss, mask, mode, **counts)
    (g_full,) = torch.autograd.grad(full, loss)
    parts = sum(aggregate(lo, ma, mode, **counts) for lo, ma in zip(loss.split(2), mask.split(2), strict=True))
    (g_parts,) = torch.autograd.grad(parts, loss)
    torch.testing.assert_close(parts, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_parts, g_full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_padding_invariance(mode):
    pad = torch.tensor([[float("nan"), 7.0], [float("inf"), -3.0]])
    wide_loss, wide_mask = torch.cat([LOSS, pad], 1), torch.cat([RAGGED, torch.zeros(2, 2)], 1)
    assert aggregate(wide_loss, wide_mask, mode, norm_len=4) == aggregate(LOSS, RAGGED, mode, norm_len=4)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOSS, RAGGED, "mean")  # type: ignore[arg-type]
    from entrolab.methods.aggregation import seq_mean_token_sum_norm

    with pytest.raises(ValueError, match="norm_len"):
        seq_mean_token_sum_norm(LOSS, RAGGED, num_tokens=3, num_seqs=2, norm_len=None)


# -------------------------------------------------------------------------------------------- regularisers

LOGP = torch.log(torch.tensor([[0.5, 0.25]]))
REF = torch.log(torch.tensor([[0.25, 0.5]]))
LN2 = math.log(2)


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ("k1", [LN2, -LN2]),  # d = logp - ref = +-ln 2
        ("k2", [LN2**2 / 2, LN2**2 / 2]),
        ("k3", [0.5 - 1 + LN2, 2 - 1 - LN2]),  # exp(-d) - 1 + d
    ],
)
def test_kl_estimators_closed_form(estimator, expected):
    term, m = kl(
        LOGP,
        torch.ones(1, 2),
        cfg=KLConfig(coef=0.5, estimator=estimator),
        entropy=None,
        old_logp=None,
        ref_logp=REF,
    )
    torch.testing.assert_close(term, 0.5 * torch.tensor([expected]))
    assert m["kl/ref_mean"].item() == pytest.approx(sum(expected) / 2)


def test_kl_k3_matches_trl_and_clamps_like_verl():
    g = torch.Generator().manual_seed(6)
    logp, ref = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    term, _ = kl(logp, torch.ones(3, 4), cfg=KLConfig(coef=1.0, k3_max=None), entropy=None, old_logp=None, ref_logp=ref)
    torch.testing.assert_close(term, torch.exp(ref - logp) - (ref - logp) - 1)  # TRL per_token_kl
    # d = -20: k3 = e^20 - 21 unclamped; verl's clamp caps it at 10 and stops the gradient.
    logp = torch.tensor([[-20.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.zeros(1, 1, dtype=torch.float64)
    capped, _ = kl(logp, torch.ones(1, 1), cfg=KLConfig(coef=1.0), entropy=None, old_logp=None, ref_logp=ref)
    free, _ = kl(logp, torch.ones(1, 1), cfg=KLConfig(coef=1.0, k3_max=None), entropy=None, old_logp=None, ref_logp=ref)
    assert capped.item() == 10.0 and free.item() == pytest.approx(math.exp(20) - 21)
    assert torch.autograd.grad(capped.sum(), logp)[0].item() == 0.0


def test_kl_gradient_pulls_toward_reference_and_coef_zero():
    logp = LOGP.clone().requires_grad_()  # token 0 above ref, token 1 below
    term, _ = kl(logp, torch.ones(1, 2), cfg=KLConfig(), entropy=None, old_logp=None, ref_logp=REF)
    term.sum().backward()
    assert logp.grad[0, 0] > 0 and logp.grad[0, 1] < 0  # descent lowers logp on 0, raises it on 1
    logp.grad = None
    zero, m = kl(logp, torch.ones(1, 2), cfg=KLConfig(coef=0.0), entropy=None, old_logp=None, ref_logp=REF)
    zero.sum().backward()
    assert torch.all(zero == 0) and torch.all(logp.grad == 0) and m["kl/ref_mean"] > 0


def test_kl_masked_garbage_and_errors():
    logp = torch.tensor([[-1.0, float("nan")]], requires_grad=True)
    ref = torch.tensor([[-2.0, -float("inf")]])
    for est in ("k1", "k2", "k3"):
        term, _ = kl(
            logp,
            torch.tensor([[1.0, 0]]),
            cfg=KLConfig(estimator=est),
            entropy=None,
            old_logp=None,
            ref_logp=ref,
        )
        (grad,) = torch.autograd.grad(term.sum(), logp)
        assert term[0, 1] == 0 and grad[0, 1] == 0 and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="ref_logp"):
        kl(LOGP, torch.ones(1, 2), cfg=KLConfig(), entropy=None, old_logp=None, ref_logp=None)
    with pytest.raises(ValueError, match="'k4'"):
        KLConfig(estimator="k4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1"):
        KLConfig(coef=-1)


def test_entropy_bonus_closed_form_and_gradient():
    entropy = torch.tensor([[2.0, 0.5, float("nan")]], requires_grad=True)
    mask = torch.tensor([[1.0, 1, 0]])
    term, m = entropy_bonus(None, mask, cfg=EntropyBonusConfig(coef=0.1), entropy=entropy, old_logp=None, ref_logp=None)
    torch.testing.assert_close(term, torch.tensor([[-0.2, -0.05, 0.0]]))
    assert m["entropy/bonus_mean"].item() == pytest.approx(0.125)
    term.sum().backward()
    assert entropy.grad.tolist() == [[pytest.approx(-0.1), pytest.approx(-0.1), 0.0]]  # descent raises H
    zero, _ = entropy_bonus(
        None, mask, cfg=EntropyBonusConfig(coef=0.0), entropy=entropy.detach(), old_logp=None, ref_logp=None
    )
    assert torch.all(zero == 0)
    with pytest.raises(ValueError, match=r"-0\.5"):
        EntropyBonusConfig(coef=-0.5)


def _same_on_real_columns(narrow, padded):
    (a, ma), (b, mb) = narrow, padded
    assert torch.equal(a, b[:, : a.shape[1]]) and torch.all(b[:, a.shape[1] :] == 0)
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-6, atol=1e-7)


def test_per_token_methods_padding_invariance():
    # Two padded columns of garbage (mask 0) change neither the per-token outputs nor the metrics.
    g = torch.Generator().manual_seed(7)
    logp, old, ref, ent, adv_bt = (torch.randn(2, 3, generator=g) for _ in range(5))
    garbage = torch.tensor([[float("nan"), float("inf")], [-float("inf"), 1e30]])

    def wide(x):
        return torch.cat([x, garbage], 1)

    wide_mask = torch.cat([RAGGED, torch.zeros(2, 2)], 1)
    cfg = PPOClipConfig(eps_high=0.28, dual_clip_c=3.0)
    _same_on_real_columns(
        ppo_clip(logp, old, adv_bt, RAGGED, cfg=cfg),
        ppo_clip(wide(logp), wide(old), wide(adv_bt), wide_mask, cfg=cfg),
    )
    for est in ("k1", "k2", "k3"):
        kw = {"cfg": KLConfig(estimator=est), "entropy": None, "old_logp": None}
        _same_on_real_columns(kl(logp, RAGGED, ref_logp=ref, **kw), kl(wide(logp), wide_mask, ref_logp=wide(ref), **kw))
    kw = {"cfg": EntropyBonusConfig(), "old_logp": None, "ref_logp": None}
    _same_on_real_columns(
        entropy_bonus(None, RAGGED, entropy=ent, **kw),
        entropy_bonus(None, wide_mask, entropy=wide(ent), **kw),
    )


# --------------------------------------------------------------------------------------------- DAPO overlong


def _penalty(lengths, **cfg):
    return overlong_penalty(
        torch.ones(len(lengths)),
        torch.ones(len(lengths), 1),
        cfg=OverlongPenaltyConfig(**cfg),
        group_size=1,
        lengths=torch.tensor(lengths),
        truncated=torch.zeros(len(lengths), dtype=torch.bool),
        max_length=16,
    )


def test_overlong_penalty_below_in_beyond_buffer():
    # L_max 16, L_cache 4: free up to 12, then (12 - |y|) / 4, -1 at 16 and beyond.
    out, m = _penalty([10, 12, 13, 14, 16, 17], buffer_len=4)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.75, 0.5, 0.0, 0.0]))
    assert m["reward/frac_overlong"].item() == pytest.approx(4 / 6)
    assert m["reward/overlong_penalty_mean"].item() == pytest.approx(-(0.25 + 0.5 + 1 + 1) / 6)
    half, _ = _penalty([14, 20], buffer_len=4, penalty=0.5)
    torch.testing.assert_close(half, torch.tensor([0.75, 0.5]))


def test_overlong_penalty_matches_verl_within_budget():
    lengths = list(range(0, 17))
    out, _ = _penalty(lengths, buffer_len=5, penalty=0.7)
    verl = [1 + min(-(n - (16 - 5)) / 5 * 0.7, 0) for n in lengths]  # verl DAPO reward manager
    torch.testing.assert_close(out, torch.tensor(verl))


def test_overlong_penalty_validation():
    with pytest.raises(ValueError, match="buffer_len=32 exceeds max_length=16"):
        _penalty([1], buffer_len=32)
    with pytest.raises(ValueError, match="buffer_len must be >= 1, got 0"):
        OverlongPenaltyConfig(buffer_len=0)


def test_overlong_filter_masks_out_truncated():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    truncated = torch.tensor([False, True, False])
    weight, kept, m = overlong_filter(mask, cfg=None, entropy=None, old_logp=None, advantages=None, truncated=truncated)
    assert torch.equal(kept, torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]))
    assert torch.equal(weight, torch.ones(3, 4))
    assert m["filter/frac_masked_tokens"].item() == pytest.approx(4 / 8)
    assert m["filter/frac_truncated"].item() == pytest.approx(1 / 3)
    # Mask-out, not zero-weight: the truncated row leaves the token-mean denominator (4 tokens, not 8).
    loss = torch.arange(12.0).reshape(3, 4)
    assert aggregate(loss * weight, kept, "token-mean").item() == pytest.approx((0 + 1 + 2 + 8) / 4)
    _, kept_bool, _ = overlong_filter(
        mask.bool(), cfg=None, entropy=None, old_logp=None, advantages=None, truncated=truncated
    )
    assert kept_bool.dtype == torch.bool and torch.equal(kept_bool, kept.bool())
