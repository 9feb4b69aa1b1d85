"""Numbers for the KL (k1 / k2 / k3) and entropy-bonus regularisers: closed forms, TRL / verl formulas,
gradient direction, coefficient 0, exact zeros on masked garbage, padding invariance."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.regularizers import EntropyBonusConfig, KLConfig, entropy_bonus, kl
from tests.methods._helpers import RAGGED, gen, same_on_real_columns

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


def test_kl_and_entropy_bonus_padding_invariance():
    # Two padded columns of garbage (mask 0) change neither the per-token outputs nor the metrics.
    g = gen(7)
    logp, _old, ref, ent, _adv_bt = (torch.randn(2, 3, generator=g) for _ in range(5))
    garbage = torch.tensor([[float("nan"), float("inf")], [-float("inf"), 1e30]])

    def wide(x):
        return torch.cat([x, garbage], 1)

    wide_mask = torch.cat([RAGGED, torch.zeros(2, 2)], 1)
    for est in ("k1", "k2", "k3"):
        kw = {"cfg": KLConfig(estimator=est), "entropy": None, "old_logp": None}
        same_on_real_columns(kl(logp, RAGGED, ref_logp=ref, **kw), kl(wide(logp), wide_mask, ref_logp=wide(ref), **kw))
    kw = {"cfg": EntropyBonusConfig(), "old_logp": None, "ref_logp": None}
    same_on_real_columns(
        entropy_bonus(None, RAGGED, entropy=ent, **kw),
        entropy_bonus(None, wide_mask, entropy=wide(ent), **kw),
    )
