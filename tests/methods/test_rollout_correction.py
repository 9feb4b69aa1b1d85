"""Numbers for the rollout corrections: TIS / MIS weights and rejection (``rollout_is``), verl's bypass REINFORCE
(``reinforce_is``) and DeepSeek-V3.2's off-policy sequence mask (``ppo_clip_opmask``)."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import registry
from entrolab.methods.aggregation import aggregate
from entrolab.methods.off_policy_mask import OffPolicyMaskConfig, off_policy_sequence_mask, ppo_clip_opmask
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.rollout_correction import (
    RolloutISConfig,
    reinforce_is,
    rollout_correction,
    rollout_is,
)
from tests.methods._helpers import INF, NAN, assert_padding_invariant, call_filter, pad, ragged_batch

C = RolloutISConfig
LOG = torch.log


def _filter(mask, old, roll, cfg):
    return call_filter(rollout_is, mask, cfg, old_logp=old, rollout_logp=roll)


def _ratios(*rows):
    """(old_logp, rollout_logp) with pi_old / pi_rollout = the given ratios (rollout prob 0.1 everywhere)."""
    rho = torch.tensor(rows, dtype=torch.float64)
    roll = torch.full_like(rho, math.log(0.1))
    return roll + LOG(rho), roll


def test_token_truncate_and_mask_closed_form():
    old, roll = _ratios([3.0, 1.0, 0.6])
    mask = torch.ones(1, 3)
    w, m, stats = _filter(mask, old, roll, C(upper=2.0))  # TIS: min(rho, 2)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.6]], dtype=torch.float64))
    assert torch.equal(m, mask)
    assert stats["rollout_corr/is_frac_high"].item() == pytest.approx(1 / 3)
    assert stats["rollout_corr/is_frac_low"].item() == pytest.approx(0.0)  # 0.6 is not below 1 / 2
    # ESS = mean(w)^2 / mean(w^2) = 1.2^2 / (5.36 / 3)
    assert stats["rollout_corr/is_ess"].item() == pytest.approx(1.44 * 3 / 5.36, rel=1e-6)
    w, _, _ = _filter(mask, old, roll, C(upper=2.0, lower=0.8))  # TRL truncation also clamps from below
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.8]], dtype=torch.float64))
    w, m, stats = _filter(mask, old, roll, C(mode="token_mask", upper=2.0, lower=0.8))  # IcePop / token MIS
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    assert torch.equal(m, mask)  # zero-weight: the two tokens stay in the denominator
    assert stats["rollout_corr/frac_rejected"].item() == pytest.approx(2 / 3)
    assert stats["rollout_corr/seq_frac_rejected"].item() == pytest.approx(1.0)
    assert aggregate(torch.ones(1, 3) * w, m, "token-mean").item() == pytest.approx(1 / 3)


def test_sequence_modes_use_the_product_of_ratios():
    old, roll = _ratios([2.0, 2.0, 9.0], [0.5, 1.0, 9.0])  # last column is padding
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 0]])
    w, _, _ = _filter(mask, old, roll, C(mode="sequence_truncate"))  # rho_seq = 4 -> 2, and 0.5
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    w, m, stats = _filter(mask, old, roll, C(mode="sequence_mask", upper=2.0))  # Seq-MIS: row 0 out
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    assert torch.equal(m, mask) and stats["rollout_corr/seq_frac_rejected"].item() == pytest.approx(0.5)
    assert stats["rollout_corr/is_frac_high"].item() == pytest.approx(0.5)  # token share of rho_seq > 2
    w, _, _ = _filter(mask, old, roll, C(mode="sequence_truncate", upper=4.0, batch_normalize=True))
    torch.testing.assert_close(w[:, :2], torch.tensor([[4.0, 4.0], [0.5, 0.5]], dtype=torch.float64) / 2.25)


def test_reject_masks_out_by_verl_statistics():
    old, roll = _ratios([2.0, 2.0], [0.5, 2.0], [1.0, 1.0])
    mask = torch.ones(3, 2)
    # geometric mean ratio (seq_mean_k1): 2, 1, 1 -> row 0 leaves (mask-out, not zero-weight)
    w, m, stats = _filter(mask, old, roll, C(mode="none", reject="seq_mean_k1", reject_high=1.5))
    assert torch.equal(m, torch.tensor([[0.0, 0], [1, 1], [1, 1]])) and torch.equal(w, mask.double())
    assert stats["rollout_corr/frac_rejected"].item() == pytest.approx(1 / 3)
    # seq_sum_k1 (the sequence ratio): 4, 1, 1; reject_low defaults to 1 / reject_high
    _, m, _ = _filter(mask, old, roll, C(mode="none", reject="seq_sum_k1", reject_high=3.0))
    assert m[:, 0].tolist() == [0.0, 1.0, 1.0]
    _, m, _ = _filter(mask, old, roll, C(mode="none", reject="seq_sum_k1", reject_low=0.1, reject_high=100))
    assert torch.equal(m, mask)
    # token_k3: rho - 1 - log rho = 0.307 (rho 2), 0.193 (rho 0.5), 0 (rho 1)
    _, m, _ = _filter(mask, old, roll, C(mode="none", reject="token_k3", reject_high=0.25))
    assert torch.equal(m, torch.tensor([[0.0, 0], [1, 0], [1, 1]]))
    # seq_max_k2 vs seq_sum_k2 on (log 2)^2 / 2 = 0.240 per off token
    _, m, _ = _filter(mask, old, roll, C(mode="none", reject="seq_max_k2", reject_high=0.3))
    assert torch.equal(m, mask)
    _, m, _ = _filter(mask, old, roll, C(mode="none", reject="seq_sum_k2", reject_high=0.3))
    assert m[:, 0].tolist() == [0.0, 0.0, 1.0]


def test_on_policy_is_the_identity():
    mask, _, old, _, _ = ragged_batch(0)
    for cfg in (C(), C(mode="sequence_mask"), C(mode="token_mask", lower=0.9), C(reject="token_k1", reject_high=1.1)):
        w, m, stats = _filter(mask, old, old, cfg)
        assert torch.equal(w, mask) and torch.equal(m, mask)
        assert stats["rollout_corr/kl"].item() == 0 and stats["rollout_corr/frac_rejected"].item() == 0


def test_pure_function_is_the_filter_and_nan_sampler_tokens_are_ratio_one():
    mask, _, old, _, _ = ragged_batch(1)
    roll = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(3), dtype=old.dtype)
    roll[0, 2] = NAN  # a token the sampler could not score (TRL: ratio 1)
    cfg = C(mode="token_truncate", upper=1.5, reject="seq_mean_k3", reject_high=0.05)
    weight, keep, metrics = rollout_correction(old, roll, mask, cfg)
    w, m, stats = _filter(mask, old, roll, cfg)
    assert torch.equal(w, weight) and torch.equal(m, mask * keep)
    assert {f"rollout_corr/{k}" for k in metrics} == set(stats)
    assert w[0, 2].item() == 1.0 and all(torch.isfinite(v) for v in stats.values())


def test_padding_garbage_and_extra_columns_change_nothing():
    mask, _, old, _, _ = ragged_batch(2)
    roll = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(4), dtype=old.dtype)
    for cfg in (C(), C(mode="sequence_mask", lower=0.5), C(reject="seq_max_k3", reject_high=0.3)):
        garbage_old = torch.where(mask.bool(), old, INF)
        garbage_roll = torch.where(mask.bool(), roll, NAN)
        narrow = _filter(mask, garbage_old, garbage_roll, cfg)
        wide = _filter(pad(mask, 0.0), pad(garbage_old), pad(garbage_roll, INF), cfg)
        assert torch.all(narrow[0][mask == 0] == 0)
        assert_padding_invariant((narrow[0], narrow[2]), (wide[0], wide[2]), mask.shape[1])
        assert torch.equal(wide[1][:, : mask.shape[1]], narrow[1])


def test_row_order_does_not_matter():
    mask, _, old, _, _ = ragged_batch(3)
    roll = old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(5), dtype=old.dtype)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    cfg = C(mode="sequence_truncate", batch_normalize=True, reject="seq_sum_k1", reject_high=4.0)
    w, m, s = _filter(mask, old, roll, cfg)
    wp, mp, sp = _filter(mask[perm], old[perm], roll[perm], cfg)
    torch.testing.assert_close(wp, w[perm])
    assert torch.equal(mp, m[perm])
    for k in s:
        torch.testing.assert_close(sp[k], s[k])


def test_reinforce_is_numbers_gradient_and_reduction_to_reinforce():
    logp = LOG(torch.tensor([[0.5, 0.5, 0.2]], dtype=torch.float64)).requires_grad_()
    old = LOG(torch.tensor([[0.25, 0.5, 0.1]], dtype=torch.float64))  # rho = 2, 1, 2
    adv, mask = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, m = reinforce_is(logp, old, adv, mask, cfg=C(upper=1.5))
    expected = -2.0 * torch.tensor([1.5, 1.0]) * LOG(torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(loss[0, :2], expected.double())
    assert loss[0, 2].item() == 0.0 and m["kl/approx_old"].item() == pytest.approx(-math.log(2) / 2)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert grad.tolist() == [[-3.0, -2.0, 0.0]]  # -A w on kept tokens, 0 on padding
    vanilla, _ = reinforce_is(logp, old, adv, mask, cfg=C(mode="none"))  # no IS: REINFORCE, -A log pi
    torch.testing.assert_close(vanilla, torch.where(mask.bool(), -adv * logp, 0.0))
    rejected, m = reinforce_is(logp, old, adv, mask, cfg=C(mode="none", reject="token_k1", reject_high=1.5))
    assert rejected[0].tolist()[0] == 0.0 and m["reinforce_is/frac_rejected"].item() == pytest.approx(0.5)


def test_reinforce_is_on_policy_has_the_ppo_gradient():
    mask, logp, old, adv, _ = ragged_batch(4)
    on = old.clone().requires_grad_()
    loss, _ = reinforce_is(on, old, adv, mask, cfg=C(mode="sequence_truncate"))
    ref, _ = ppo_clip(on, old, adv, mask, cfg=PPOClipConfig())
    (g1,) = torch.autograd.grad(aggregate(loss, mask, "token-mean"), on)
    (g2,) = torch.autograd.grad(aggregate(ref, mask, "token-mean"), on)
    torch.testing.assert_close(g1, g2)
    garbage = torch.where(mask.bool(), logp.detach(), NAN).requires_grad_()
    loss, m = reinforce_is(garbage, torch.where(mask.bool(), old, INF), adv, mask, cfg=C())
    (g,) = torch.autograd.grad(aggregate(loss, mask, "token-mean"), garbage)
    assert torch.all(loss[mask == 0] == 0) and torch.all(g[mask == 0] == 0) and torch.isfinite(g).all()
    assert all(torch.isfinite(v) for v in m.values())


def test_off_policy_sequence_mask_closed_form():
    logp = LOG(torch.full((3, 2), 0.5))
    old = LOG(torch.tensor([[1.0, 1.0], [1.0, 0.5], [0.5, 0.5]]))  # mean KL: log 2, log 2 / 2, 0
    adv = torch.tensor([[-1.0], [-1.0], [-1.0]])
    keep = off_policy_sequence_mask(adv, logp, old, torch.ones(3, 2), threshold=0.5)
    assert keep.tolist() == [[False, False], [True, True], [True, True]]  # 0.693 > 0.5 >= 0.347
    keep = off_policy_sequence_mask(-adv, logp, old, torch.ones(3, 2), threshold=0.0)  # A >= 0 is always kept
    assert keep.all()
    ragged = torch.tensor([[1.0, 0.0], [1, 1], [0, 0]])  # padding counts neither in the mean nor the mask
    keep = off_policy_sequence_mask(adv, logp, torch.where(ragged.bool(), old, NAN), ragged, threshold=0.5)
    assert keep.tolist() == [[False, False], [True, True], [False, False]]


def test_ppo_clip_opmask_reduces_to_ppo_clip_and_zeroes_masked_sequences():
    mask, logp, old, adv, _ = ragged_batch(5)
    far = old + 0.5 * mask  # the sampler 0.5 nats above: mean KL ~ 0.5 on every row
    cfg = OffPolicyMaskConfig(threshold=1e6, eps_high=0.28)
    loss, m = ppo_clip_opmask(logp, far, adv, mask, cfg=cfg)
    ref, _ = ppo_clip(logp, far, adv, mask, cfg=PPOClipConfig(eps_high=0.28))
    torch.testing.assert_close(loss, ref)
    assert m["opsm/frac_masked"].item() == 0
    loss, m = ppo_clip_opmask(logp, far, adv, mask, cfg=OffPolicyMaskConfig(threshold=0.1))
    neg = (adv < 0).expand_as(mask) & mask.bool()
    assert torch.all(loss[neg] == 0) and m["opsm/frac_masked"].item() == pytest.approx((neg.sum() / mask.sum()).item())
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "token-mean"), logp)
    assert torch.all(grad[neg] == 0) and torch.all(grad[mask == 0] == 0)
    assert torch.all(grad[(adv > 0).expand_as(mask) & mask.bool()] < 0)  # A > 0: raise log pi


def test_metrics_are_declared_finite_and_detached_even_with_an_empty_mask():
    empty = torch.zeros(2, 3)
    old, roll = _ratios([3.0, 1.0, 0.5], [1.0, 1.0, 1.0])
    adv = torch.ones(2, 1)
    outs = {
        ("token_filter", "rollout_is"): _filter(empty, old, roll, C(mode="sequence_mask"))[2],
        ("policy_loss", "reinforce_is"): reinforce_is(old.requires_grad_(), roll, adv, empty, cfg=C())[1],
        ("policy_loss", "ppo_clip_opmask"): ppo_clip_opmask(old, roll, -adv, empty, cfg=OffPolicyMaskConfig())[1],
    }
    for (axis, name), out in outs.items():
        assert set(out) == set(registry.lookup(axis, name).metrics)
        assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in out.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mode="token"), r"mode must be one of \['token_truncate'"),
        (dict(reject="geo"), r"reject must be one of \['none', 'token_k1'"),
        (dict(upper=-1.0), "upper must be a finite number > 0"),
        (dict(lower=0.0), "lower must be a finite number > 0"),
        (dict(lower=3.0, upper=2.0), "lower <= upper"),
        (dict(reject="seq_mean_k1"), "needs reject_high"),
        (dict(reject_high=2.0), "reject='none'"),
        (dict(reject="token_k1", reject_low=2.0, reject_high=1.5), "reject_low <= reject_high"),
        (dict(reject="seq_max_k3", reject_low=0.1, reject_high=0.5), "takes reject_high only"),
    ],
)
def test_bad_rollout_is_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RolloutISConfig(**kwargs)


def test_bad_opmask_config():
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        OffPolicyMaskConfig(threshold=-0.1)
    with pytest.raises(ValueError, match="eps_low"):
        OffPolicyMaskConfig(eps_low=1.5)
