"""Numbers for CISPO and SAPO: weights and gates by hand, the reduction to the (IS) policy gradient at degenerate
settings and to PPO-clip on-policy, the TRL parametrisation of CISPO, exact zeros on masked garbage, padding
invariance, config errors, and the registry contract (signature, metric keys, docstring)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.soft_clip import CISPOConfig, SAPOConfig, cispo, sapo
from entrolab.registry import lookup
from tests.methods._helpers import INF, NAN, RAGGED, gen, pad, ragged_batch, same_on_real_columns

RATIOS = torch.tensor([[1.5, 0.5, 1.0, 0.7]], dtype=torch.float64)
ADVS = torch.tensor([[1.0, -1.0, 2.0, -1.0]], dtype=torch.float64)
OLD = torch.log(torch.tensor([[0.4, 0.5, 0.3, 0.6]], dtype=torch.float64))


def _run(fn, cfg, ratio=RATIOS, adv=ADVS, old=OLD, mask=None):
    """(loss, dloss.sum()/dlogp, metrics) with logp = old + log(ratio)."""
    logp = (old + ratio.log()).requires_grad_()
    mask = torch.ones_like(ratio) if mask is None else mask
    loss, m = fn(logp, old, adv, mask, cfg=cfg)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return loss.detach(), grad, m, logp.detach()


# --------------------------------------------------------------------------------------------------- CISPO


def test_cispo_weights_loss_gradient_and_metrics_by_hand():
    # no lower bound, cap 1.2: w = [1.2, 0.5, 1.0, 0.7]; L = -w A logp, dL/dlogp = -w A (w is a constant)
    loss, grad, m, logp = _run(cispo, CISPOConfig(eps_high=0.2))
    w = torch.tensor([[1.2, 0.5, 1.0, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(loss, -w * ADVS * logp)
    torch.testing.assert_close(grad, -w * ADVS)
    assert m["clip/frac_high"].item() == pytest.approx(0.25)  # r = 1.5 with A > 0
    assert m["cispo/frac_clipped"].item() == pytest.approx(0.25)
    assert m["ratio/mean"].item() == pytest.approx(0.925)
    assert m["kl/approx_old"].item() == pytest.approx(-RATIOS.log().mean().item())


def test_cispo_lower_bound_clips_both_signs_but_keeps_the_gradient():
    # eps_low 0.2: r = 0.5 and 0.7 are lifted to 0.8; every token keeps a nonzero gradient (unlike PPO-clip)
    _, grad, m, _ = _run(cispo, CISPOConfig(eps_low=0.2, eps_high=0.2))
    torch.testing.assert_close(grad, -torch.tensor([[1.2, 0.8, 1.0, 0.8]], dtype=torch.float64) * ADVS)
    assert m["cispo/frac_clipped"].item() == pytest.approx(0.75)
    assert m["clip/frac_high"].item() == pytest.approx(0.25)
    assert torch.all(grad != 0)
    _, ppo_grad, _, _ = _run(ppo_clip, PPOClipConfig(eps_low=0.2, eps_high=0.2))
    assert ppo_grad[0, 0] == 0 and ppo_grad[0, 1] == 0  # PPO drops the clipped tokens' gradient


def test_cispo_trl_bounds_are_the_cap_itself():
    a = _run(cispo, CISPOConfig(eps_high=1.2, bounds="trl"))
    b = _run(cispo, CISPOConfig(eps_high=0.2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # TRL's fallback epsilon_high = epsilon = 0.2 caps every weight at 0.2: the on-policy gradient shrinks 5x
    _, grad, _, _ = _run(cispo, CISPOConfig(eps_high=0.2, bounds="trl"), ratio=torch.ones_like(RATIOS))
    torch.testing.assert_close(grad, -0.2 * ADVS)


def test_cispo_without_bounds_is_the_importance_weighted_policy_gradient():
    g = gen(1)
    ratio = torch.exp(torch.randn(3, 5, generator=g, dtype=torch.float64))
    adv = torch.randn(3, 1, generator=g, dtype=torch.float64)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    _, grad, _, _ = _run(cispo, CISPOConfig(eps_high=1e9), ratio, adv, old)
    torch.testing.assert_close(grad, -ratio * adv)  # d(-r A)/dlogp: the unclipped surrogate's gradient


@pytest.mark.parametrize("fn,cfg", [(cispo, CISPOConfig()), (sapo, SAPOConfig())])
def test_on_policy_gradient_is_ppo_clip_s(fn, cfg):
    # r = 1: CISPO's weight is 1 and SAPO's gate factor is 4 s (1 - s) = 1, so the gradient is PPO/GRPO's -A
    mask, logp, _, adv, _ = ragged_batch(3)
    on = logp.detach().clone().requires_grad_()
    loss, _ = fn(on, on.detach(), adv, mask, cfg=cfg)
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "token-mean"), on)
    ref, _ = ppo_clip(on, on.detach(), adv, mask, cfg=PPOClipConfig())
    (ref_grad,) = torch.autograd.grad(aggregate(ref, mask, "token-mean"), on)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.all(torch.sign(grad) == -torch.sign(adv) * mask)  # gradient sign: descent raises logp iff A > 0


def test_cispo_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"bounds.*'paper', 'trl'.*'ppo'"):
        CISPOConfig(bounds="ppo")
    with pytest.raises(ValueError, match=r"eps_high.*0"):
        CISPOConfig(eps_high=0.0)
    with pytest.raises(ValueError, match=r"eps_low.*-0\.1"):
        CISPOConfig(eps_low=-0.1)
    with pytest.raises(ValueError, match=r"eps_low must be None, got 0\.2"):
        CISPOConfig(eps_low=0.2, bounds="trl")


# ---------------------------------------------------------------------------------------------------- SAPO


def test_sapo_gate_loss_and_gradient_by_hand():
    # f(r) = sigmoid(tau (r - 1)) 4 / tau;  dL/dlogp = -A r 4 s (1 - s);  tau = 1 for A > 0, 1.05 otherwise
    loss, grad, m, _ = _run(sapo, SAPOConfig())

    def sig(x):
        return 1 / (1 + math.exp(-x))

    exp_loss, exp_grad, weights = [], [], []
    for r, a in zip(RATIOS[0].tolist(), ADVS[0].tolist(), strict=True):
        tau = 1.0 if a > 0 else 1.05
        s = sig(tau * (r - 1))
        exp_loss.append(-s * 4 / tau * a)
        exp_grad.append(-a * r * 4 * s * (1 - s))
        weights.append(4 * s * (1 - s))
    torch.testing.assert_close(loss[0], torch.tensor(exp_loss, dtype=torch.float64))
    torch.testing.assert_close(grad[0], torch.tensor(exp_grad, dtype=torch.float64))
    assert loss[0, 2].item() == pytest.approx(-4.0)  # r = 1, A = 2: f(1) = 2
    assert m["sapo/gate_weight"].item() == pytest.approx(sum(weights) / 4)
    assert m["ratio/mean"].item() == pytest.approx(0.925)


def test_sapo_temperature_follows_the_advantage_sign_and_zero_advantage_gives_zero():
    r = torch.tensor([[1.8, 1.8, 1.8]], dtype=torch.float64)
    a = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    loss, grad, _, _ = _run(sapo, SAPOConfig(tau_pos=0.5, tau_neg=3.0), r, a, OLD[:, :3])
    s_pos, s_neg = torch.sigmoid(torch.tensor(0.5 * 0.8)), torch.sigmoid(torch.tensor(3.0 * 0.8))
    assert loss[0, 0].item() == pytest.approx(-(s_pos * 4 / 0.5).item())
    assert loss[0, 1].item() == pytest.approx((s_neg * 4 / 3.0).item())
    assert loss[0, 2].item() == 0 and grad[0, 2].item() == 0
    assert abs(grad[0, 1]) < abs(grad[0, 0])  # the hotter negative gate decays faster


def test_sapo_small_temperature_is_the_unclipped_surrogate_and_larger_tau_attenuates_more():
    g = gen(2)
    ratio = torch.exp(0.8 * torch.randn(3, 6, generator=g, dtype=torch.float64))
    adv = torch.randn(3, 1, generator=g, dtype=torch.float64)
    old = -torch.rand(3, 6, generator=g, dtype=torch.float64)
    _, grad, _, _ = _run(sapo, SAPOConfig(tau_pos=1e-6, tau_neg=1e-6), ratio, adv, old)
    torch.testing.assert_close(grad, -ratio * adv, atol=1e-5, rtol=0)  # f(r) ~ 2/tau + (r - 1)
    weights = [_run(sapo, SAPOConfig(t, t), ratio, adv, old)[2]["sapo/gate_weight"].item() for t in (0.5, 1, 4)]
    assert 1 > weights[0] > weights[1] > weights[2] > 0


def test_sapo_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"tau_pos.*0\.0"):
        SAPOConfig(tau_pos=0.0)
    with pytest.raises(ValueError, match=r"tau_neg.*-1"):
        SAPOConfig(tau_neg=-1.0)


# ---------------------------------------------------------------------------------------------------- both

CASES = [
    (cispo, CISPOConfig(eps_low=0.2, eps_high=0.28)),
    (cispo, CISPOConfig(eps_high=5.0, bounds="trl")),
    (sapo, SAPOConfig()),
]


@pytest.mark.parametrize("fn,cfg", CASES)
def test_masked_garbage_gives_exact_zeros(fn, cfg):
    mask = torch.tensor([[1.0, 1, 0, 0]])
    logp = torch.tensor([[-1.0, -2.0, NAN, INF]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.5, -INF, NAN]])
    adv = torch.tensor([[1.0, -1.0, NAN, INF]])
    loss, m = fn(logp, old, adv, mask, cfg=cfg)
    assert torch.all(loss[:, 2:] == 0) and torch.isfinite(loss).all()
    aggregate(loss, mask, "token-mean").backward()
    assert torch.all(logp.grad[:, 2:] == 0) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in m.values())


@pytest.mark.parametrize("fn,cfg", CASES)
def test_padding_columns_change_nothing(fn, cfg):
    g = gen(7)
    logp, old, adv = (torch.randn(2, 3, generator=g) for _ in range(3))
    narrow = fn(logp, old, adv, RAGGED, cfg=cfg)
    wide = fn(pad(logp), pad(old, INF), pad(adv), pad(RAGGED, 0.0), cfg=cfg)
    same_on_real_columns(narrow, wide)


@pytest.mark.parametrize("name", ["cispo", "sapo"])
def test_registry_contract(name):
    entry = lookup("policy_loss", name)
    params = inspect.signature(entry.fn).parameters.values()
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == ["logp", "old_logp", "advantages", "mask"]
    assert {p.name for p in params if p.kind is p.KEYWORD_ONLY} == {"cfg", "entropy"}
    assert entry.needs == () and entry.config is not None
    mask, logp, old, adv, _ = ragged_batch(0)
    _, m = entry.fn(logp, old, adv, mask, cfg=entry.make_config())
    assert sorted(m) == sorted(entry.metrics)
    doc = inspect.getdoc(entry.fn)
    for part in ("Args:", "Returns:", "Differences from the paper", "Example:", ">>>", *entry.metrics):
        assert part in doc, part
