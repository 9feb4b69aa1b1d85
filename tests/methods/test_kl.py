"""Numbers for the KL estimators, the KL penalty in the reward and the adaptive KL coefficient: closed forms at
d = +-ln 2, gradients, verl's clamps, the straight-through and importance-weighted forms, exact zeros on masked
garbage, padding invariance, reduction to the ``kl`` regulariser and to the plain reward, a closed loop."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from entrolab.methods.kl import (
    KL_ESTIMATORS,
    AdaptiveKLConfig,
    KLInRewardConfig,
    adaptive_kl,
    kl_estimate,
    kl_in_reward,
)
from entrolab.methods.regularizers import KLConfig, kl
from tests.methods._helpers import INF, NAN, pad, ragged_batch

LN2 = math.log(2)
LOGP = torch.log(torch.tensor([[0.5, 0.25]], dtype=torch.float64))  # d = logp - ref = [+ln 2, -ln 2]
REF = torch.log(torch.tensor([[0.25, 0.5]], dtype=torch.float64))
VALUE = {
    "k1": [LN2, -LN2],
    "abs": [LN2, LN2],
    "k2": [LN2**2 / 2, LN2**2 / 2],
    "k3": [0.5 - 1 + LN2, 2 - 1 - LN2],  # exp(-d) + d - 1
}
GRAD = {"k1": [1.0, 1.0], "abs": [1.0, -1.0], "k2": [LN2, -LN2], "k3": [0.5, -1.0]}  # k3: 1 - exp(-d)
ALIAS = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


def _value_and_grad(name, logp=LOGP, ref=REF, **kw):
    logp = logp.clone().requires_grad_()
    k = kl_estimate(logp, ref, name, **kw)
    (grad,) = torch.autograd.grad(k.sum(), logp)
    return k.detach(), grad


@pytest.mark.parametrize("name", [e for e in KL_ESTIMATORS if not e.endswith("_is")])
def test_closed_form_values_and_gradients(name):
    base = ALIAS[name.removesuffix("+")]
    k, grad = _value_and_grad(name)
    torch.testing.assert_close(k, torch.tensor([VALUE[base]], dtype=torch.float64))
    expected_grad = GRAD["k2"] if name.endswith("+") else GRAD[base]  # straight through: k2's gradient d
    torch.testing.assert_close(grad, torch.tensor([expected_grad], dtype=torch.float64))


def test_k3_clamps_like_verl_and_none_is_schulman():
    logp, ref = torch.tensor([[-20.0, 1.0]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    capped, grad = _value_and_grad("k3", logp, ref)
    assert capped[0, 0] == 10.0 and grad[0, 0] == 0.0  # verl: value clamp 10 stops the gradient
    free, grad = _value_and_grad("k3", logp, ref, clamp=None)
    assert free[0, 0].item() == pytest.approx(math.exp(20) - 21) and grad[0, 0].item() == pytest.approx(
        1 - math.exp(20)
    )
    assert free[0, 1].item() == pytest.approx(math.exp(-1))  # exp(-1) + 1 - 1
    plus, grad = _value_and_grad("k3+", logp, ref)
    assert plus[0, 0] == 10.0 and grad[0, 0] == -20.0  # the k2 gradient ignores the value clamp
    # log(pi_ref / pi) is clamped to +-20 before exp: d = -30 gives the same as d = -20 with a larger bound
    far, grad = _value_and_grad("k3", torch.tensor([[-30.0]], dtype=torch.float64), ref[:, :1], clamp=1e12)
    assert far.item() == pytest.approx(math.exp(20) - 20 - 1) and grad.item() == 0.0


def test_importance_weighted_forms():
    old = torch.log(torch.tensor([[0.25, 0.5]], dtype=torch.float64))  # rho = pi / pi_old = [2, 0.5]
    for base in ("k1", "k2", "k3"):
        k, grad = _value_and_grad(f"{base}_is", old_logp=old)
        rho = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
        torch.testing.assert_close(k, rho * torch.tensor([VALUE[base]], dtype=torch.float64))
        # d(rho k)/dlogp = rho (k + k')
        torch.testing.assert_close(grad, rho * torch.tensor([VALUE[base]]).double() + rho * torch.tensor([GRAD[base]]))
    # on-policy (old = logp.detach(), as TRL without old_per_token_logps): the value is k3, the gradient k3 + k3'
    logp = LOGP.clone().requires_grad_()
    on = kl_estimate(logp, REF, "k3_is", old_logp=logp.detach())
    torch.testing.assert_close(on.detach(), torch.tensor([VALUE["k3"]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(on.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([VALUE["k3"]]).double() + torch.tensor([GRAD["k3"]]).double())
    with pytest.raises(ValueError, match="'k3_is' needs old_logp"):
        kl_estimate(LOGP, REF, "k3_is")


def test_masked_garbage_gives_exact_zeros_and_padding_changes_nothing():
    mask, logp, old, _, _ = ragged_batch(3)
    ref = old - 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1), dtype=old.dtype)
    keep = mask.bool()
    for name in KL_ESTIMATORS:
        x = torch.where(keep, logp, NAN).detach().requires_grad_()
        ref_g, old_g = torch.where(keep, ref, -INF), torch.where(keep, old, INF)
        k = kl_estimate(x, ref_g, name, mask=mask, old_logp=old_g, clamp=None)
        (grad,) = torch.autograd.grad(k.sum(), x)
        assert torch.all(k[mask == 0] == 0) and torch.all(grad[mask == 0] == 0) and torch.isfinite(grad).all()
        narrow = kl_estimate(logp, ref, name, mask=mask, old_logp=old)
        wide = kl_estimate(pad(logp), pad(ref, INF), name, mask=pad(mask, 0.0), old_logp=pad(old))
        assert torch.equal(wide[:, : mask.shape[1]], narrow) and torch.all(wide[:, mask.shape[1] :] == 0)


def test_bad_names_and_clamps_raise():
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'; allowed: \['kl', 'k1'"):
        kl_estimate(LOGP, REF, "k4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clamp must be > 0 or None, got 0"):
        kl_estimate(LOGP, REF, "k3", clamp=0)
    with pytest.raises(ValueError, match="'k3_is'"):
        KLInRewardConfig(estimator="k3_is")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1"):
        KLInRewardConfig(coef=-1)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("ratio_weighted", [False, True])
@pytest.mark.parametrize("k3_max", [10.0, 3.0])
def test_reduces_to_the_kl_regularizer(estimator, ratio_weighted, k3_max):
    """``regularizers.kl`` is coef * kl_estimate(..., mask, clamp=k3_max), '_is' when ratio_weighted."""
    mask, logp, old, _, _ = ragged_batch(5)
    ref = old + 1.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2), dtype=old.dtype)
    cfg = KLConfig(coef=0.3, estimator=estimator, k3_max=k3_max, ratio_weighted=ratio_weighted)
    term, m = kl(logp, mask, cfg=cfg, entropy=None, old_logp=old, ref_logp=ref)
    name = f"{estimator}_is" if ratio_weighted else estimator
    ours = 0.3 * kl_estimate(logp, ref, name, mask=mask, old_logp=old, clamp=k3_max)
    torch.testing.assert_close(ours, term, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(*(torch.autograd.grad(t.sum(), logp, retain_graph=True)[0] for t in (ours, term)))
    plain = kl_estimate(logp.detach(), ref, estimator, mask=mask, clamp=k3_max)
    assert (plain * mask).sum() / mask.sum() == pytest.approx(m["kl/ref_mean"].item())


def _shape(rewards, mask, old, ref, cfg=None, state=None):
    return kl_in_reward(
        rewards,
        mask,
        cfg=cfg or KLInRewardConfig(),
        group_id=None,
        lengths=None,
        truncated=None,
        max_length=mask.shape[1],
        ref_logp=ref,
        old_logp=old,
        state=state,
    )


def test_kl_in_reward_closed_form_state_and_reduction():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    old = torch.cat([LOGP, torch.tensor([[LN2, NAN]], dtype=torch.float64)])  # row 1: d = ln 2, then padding
    ref = torch.cat([REF, torch.tensor([[0.0, INF]], dtype=torch.float64)])
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    shaped, m = _shape(r, mask, old, ref, KLInRewardConfig(coef=0.5, estimator="k3"))
    k3 = VALUE["k3"]
    # row 0: sum k3 = (ln 2 - 0.5) + (1 - ln 2) = 0.5; row 1: k3(ln 2) = 0.5 - 1 + ln 2
    torch.testing.assert_close(shaped, torch.tensor([1 - 0.5 * 0.5, -0.5 * k3[0]], dtype=torch.float64))
    assert m["kl_reward/kl"].item() == pytest.approx((0.25 + k3[0]) / 2)  # mean of the rows' token means
    assert m["kl_reward/penalty"].item() == pytest.approx(0.5 * (0.5 + k3[0]) / 2)
    assert m["kl_reward/coef"].item() == 0.5
    # the schedule's state overrides cfg.coef; coef 0 gives back the reward unchanged
    shaped2, m2 = _shape(r, mask, old, ref, KLInRewardConfig(coef=0.5, estimator="k3"), state={"coef": 1.0})
    torch.testing.assert_close(r - shaped2, 2 * (r - shaped))
    assert m2["kl_reward/coef"].item() == 1.0
    same, _ = _shape(r, mask, old, ref, state={"coef": 0.0})
    assert torch.equal(same, r)
    # default k1: the paper's sequence log-ratio sum_t (log pi - log pi_ref), and a lower reward above the ref
    shaped, _ = _shape(r, mask, old, ref, KLInRewardConfig(coef=1.0))
    torch.testing.assert_close(shaped, torch.tensor([1.0, -LN2], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs ref_logp and old_logp"):
        _shape(r, mask, old, None)


def test_kl_in_reward_rows_and_padding_are_independent_and_detached():
    mask, logp, old, _, _ = ragged_batch(4)
    r = torch.arange(6, dtype=torch.float64)
    cfg = KLInRewardConfig(coef=0.2, estimator="k3+")
    shaped, m = _shape(r, mask, logp, old, cfg)  # old_logp with grad: the reward is detached anyway
    assert not shaped.requires_grad and not any(v.requires_grad for v in m.values())
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shaped_p, m_p = _shape(r[perm], mask[perm], logp[perm], old[perm], cfg)
    torch.testing.assert_close(shaped_p, shaped[perm])
    wide, m_w = _shape(r, pad(mask, 0.0), pad(logp.detach()), pad(old, -INF), cfg)
    assert torch.equal(wide, shaped)
    for key in m:
        torch.testing.assert_close(m_p[key], m[key])
        torch.testing.assert_close(m_w[key], m[key])


def _control(kls, cfg):
    state, values = adaptive_kl({}, {}, cfg=cfg, step=1, total_steps=len(kls) + 1)
    coefs = [values["kl_in_reward.coef"]]
    for step, value in enumerate(kls, start=2):
        state, values = adaptive_kl(state, {"kl_reward/kl": value}, cfg=cfg, step=step, total_steps=len(kls) + 1)
        coefs.append(values["kl_in_reward.coef"])
    return coefs, state


def test_adaptive_kl_closed_form_clip_band_and_fixed_limit():
    cfg = AdaptiveKLConfig(target=0.1, horizon=1000.0, coef_init=0.1, samples_per_step=500)  # gain 0.5
    coefs, state = _control([0.11, 1.0, 0.1, 0.0], cfg)
    # e = +0.1 -> x1.05; e clipped to +0.2 -> x1.1; e = 0 -> unchanged; e clipped to -0.2 -> x0.9
    assert coefs == pytest.approx([0.1, 0.105, 0.1155, 0.1155, 0.10395])
    assert state == {"coef": pytest.approx(0.10395)}
    fixed, _ = _control([5.0, 0.0, 0.3], replace(cfg, horizon=1e12))  # horizon -> inf: verl's FixedKLController
    assert fixed == pytest.approx([0.1] * 4, rel=1e-9)
    observed = {"kl/ref_mean": 0.2}
    state, values = adaptive_kl(
        {"coef": 0.1}, observed, cfg=replace(cfg, observe="kl/ref_mean", field="kl.coef"), step=2, total_steps=3
    )
    assert values == {"kl.coef": pytest.approx(0.11)}  # any KL metric, any coefficient (here the kl loss's)
    with pytest.raises(ValueError, match="kl_reward/kl"):
        adaptive_kl({"coef": 0.1}, {"reward/mean": 1.0}, cfg=cfg, step=2, total_steps=3)
    with pytest.raises(ValueError, match=r"samples_per_step must be in \[1, 5 \* horizon\)"):
        AdaptiveKLConfig(horizon=10.0, samples_per_step=50)
    with pytest.raises(ValueError, match="target must be > 0, got 0"):
        AdaptiveKLConfig(target=0)
    with pytest.raises(ValueError, match=r"'method\.field'"):
        AdaptiveKLConfig(field="coef")


def test_adaptive_kl_closed_loop_holds_the_target():
    """A policy whose KL to the reference falls as beta rises (KL = 0.002 / beta): beta settles at 0.02."""
    cfg = AdaptiveKLConfig(target=0.1, horizon=1000.0, coef_init=0.001, samples_per_step=500)
    state, values = adaptive_kl({}, {}, cfg=cfg, step=1, total_steps=300)
    kls = []
    for step in range(2, 300):
        kls.append(0.002 / values["kl_in_reward.coef"])
        state, values = adaptive_kl(state, {"kl_reward/kl": kls[-1]}, cfg=cfg, step=step, total_steps=300)
    assert kls[0] == pytest.approx(2.0) and abs(kls[-1] - 0.1) < 0.005
    assert values["kl_in_reward.coef"] == pytest.approx(0.02, rel=0.05)


def test_kl_in_reward_and_adaptive_kl_keep_the_contract(monkeypatch):
    import tests.test_contract as contract
    from entrolab import registry

    monkeypatch.setitem(contract.OBSERVED, "kl_reward/kl", 0.05)  # what kl_in_reward logs for adaptive_kl
    for axis, name in (("reward_shaper", "kl_in_reward"), ("schedule", "adaptive_kl")):
        entry = registry.lookup(axis, name)
        contract.test_every_registered_method_keeps_the_contract(entry)
        contract.test_signature_follows_the_axis_convention(entry)
