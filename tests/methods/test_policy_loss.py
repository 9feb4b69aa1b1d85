"""Numbers for PPO-clip (asymmetric eps, dual clip): every branch by hand, the parent at eps_low = eps_high,
gradient sign, exact zeros on masked garbage, the log-ratio clamp, padding invariance."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from tests.methods._helpers import RAGGED, gen, same_on_real_columns

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


def test_ppo_clip_padding_invariance():
    # Two padded columns of garbage (mask 0) change neither the per-token outputs nor the metrics.
    g = gen(7)
    logp, old, _ref, _ent, adv_bt = (torch.randn(2, 3, generator=g) for _ in range(5))
    garbage = torch.tensor([[float("nan"), float("inf")], [-float("inf"), 1e30]])

    def wide(x):
        return torch.cat([x, garbage], 1)

    wide_mask = torch.cat([RAGGED, torch.zeros(2, 2)], 1)
    cfg = PPOClipConfig(eps_high=0.28, dual_clip_c=3.0)
    same_on_real_columns(
        ppo_clip(logp, old, adv_bt, RAGGED, cfg=cfg),
        ppo_clip(wide(logp), wide(old), wide(adv_bt), wide_mask, cfg=cfg),
    )
