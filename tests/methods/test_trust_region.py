"""Numbers for DPPO (binary TV / KL), DRO and GPG: masks, divergences and gradients by hand, the paper's motivating
example against PPO-clip, reductions at degenerate settings (no mask is the IS policy gradient; beta -> 0 and
on-policy are GPG; on-policy GPG is PPO-clip's gradient), exact zeros on masked garbage, padding invariance,
config errors and the registry contract."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.trust_region import DPPOKLConfig, DPPOTVConfig, DROConfig, dppo_kl, dppo_tv, dro, gpg
from entrolab.registry import lookup
from tests.methods._helpers import INF, NAN, RAGGED, gen, pad, ragged_batch, same_on_real_columns

D = torch.float64


def _run(fn, cfg, prob, old_prob, adv, mask=None):
    """(loss, dloss.sum()/dlogp, metrics) for probabilities of the sampled tokens."""
    logp = torch.tensor([prob], dtype=D).log().requires_grad_()
    old = torch.tensor([old_prob], dtype=D).log()
    adv = torch.tensor([adv], dtype=D)
    mask = torch.ones_like(old) if mask is None else mask
    loss, m = fn(logp, old, adv, mask, cfg=cfg)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return loss.detach(), grad, m


def _binary_kl(q: float, p: float) -> float:
    return q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))


# ---------------------------------------------------------------------------------------------------- DPPO


def test_dppo_tv_masks_moves_beyond_delta_in_the_advantages_direction():
    # p_old -> p: +0.2 with A > 0 (masked), -0.2 with A < 0 (masked), -0.3 with A > 0 and +0.3 with A < 0 (moves
    # against the advantage: kept), +0.1 with A > 0 (inside). Kept tokens get PPO's gradient -A r.
    old = [0.5, 0.5, 0.6, 0.2, 0.4]
    new = [0.7, 0.3, 0.3, 0.5, 0.5]
    adv = [1.0, -1.0, 1.0, -1.0, 2.0]
    loss, grad, m = _run(dppo_tv, DPPOTVConfig(), new, old, adv)
    r = torch.tensor([n / o for n, o in zip(new, old, strict=True)], dtype=D)
    keep = torch.tensor([0, 0, 1, 1, 1], dtype=D)
    torch.testing.assert_close(grad[0], -torch.tensor(adv, dtype=D) * r * keep)
    torch.testing.assert_close(loss[0], -torch.tensor(adv, dtype=D) * r * torch.tensor(new, dtype=D).log() * keep)
    assert m["clip/frac_high"].item() == pytest.approx(0.2) and m["clip/frac_low"].item() == pytest.approx(0.2)
    assert m["dppo/divergence"].item() == pytest.approx((0.2 + 0.2 + 0.3 + 0.3 + 0.1) / 5)
    assert m["dppo/frac_truncated"].item() == 0.0


def test_dppo_tv_is_the_papers_fix_of_ppo_clip_on_rare_and_common_tokens():
    # a rare token 1e-3 -> 1e-2 (ratio 10, TV 0.009): PPO-clip drops it, DPPO keeps it;
    # a common token 0.99 -> 0.8 with A < 0 (ratio 0.81, TV 0.19): PPO-clip keeps it, DPPO masks it
    _, dppo_grad, _ = _run(dppo_tv, DPPOTVConfig(), [1e-2, 0.8], [1e-3, 0.99], [1.0, -1.0])
    _, ppo_grad, _ = _run(ppo_clip, PPOClipConfig(), [1e-2, 0.8], [1e-3, 0.99], [1.0, -1.0])
    assert dppo_grad[0, 0].item() == pytest.approx(-10.0) and ppo_grad[0, 0].item() == 0.0
    assert dppo_grad[0, 1].item() == 0.0 and ppo_grad[0, 1].item() == pytest.approx(0.8 / 0.99)


def test_dppo_kl_by_hand_is_one_sided():
    # binary KL(0.5 || 0.7) = KL(0.5 || 0.3) = 0.0872: with delta_high 0.05 the rise (A > 0) is masked, with
    # delta_low 0.1 the fall (A < 0) is kept; a fall with A > 0 is never masked whatever its KL (0.3 -> 0.01)
    cfg = DPPOKLConfig(delta_low=0.1, delta_high=0.05)
    _, grad, m = _run(dppo_kl, cfg, [0.7, 0.3, 0.01], [0.5, 0.5, 0.3], [1.0, -1.0, 1.0])
    torch.testing.assert_close(grad[0], torch.tensor([0.0, 0.3 / 0.5, -0.01 / 0.3], dtype=D))
    kls = [_binary_kl(0.5, 0.7), _binary_kl(0.5, 0.3), _binary_kl(0.3, 0.01)]
    assert kls[0] == pytest.approx(0.0872, abs=1e-4)
    assert m["dppo/divergence"].item() == pytest.approx(sum(kls) / 3, rel=1e-6)
    assert m["clip/frac_high"].item() == pytest.approx(1 / 3) and m["clip/frac_low"].item() == 0.0


def test_dppo_truncated_importance_weight():
    # is_cap 1.2: the kept token with r = 1.5 gets weight 1.2, the one with r = 0.8 keeps 0.8
    _, grad, m = _run(dppo_tv, DPPOTVConfig(is_cap=1.2), [0.3, 0.4], [0.2, 0.5], [1.0, 1.0])
    torch.testing.assert_close(grad[0], torch.tensor([-1.2, -0.8], dtype=D))
    assert m["dppo/frac_truncated"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("fn,cfg", [(dppo_tv, DPPOTVConfig(1.0, 1.0)), (dppo_kl, DPPOKLConfig(1e9, 1e9))])
def test_dppo_without_a_region_is_the_importance_weighted_policy_gradient(fn, cfg):
    mask, logp, old, adv, _ = ragged_batch(4)
    loss, m = fn(logp, old, adv, mask, cfg=cfg)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, -(adv * (logp - old).exp()).detach() * mask)  # d(-r A)/dlogp
    assert m["clip/frac_low"].item() == m["clip/frac_high"].item() == 0.0


# ----------------------------------------------------------------------------------------------- DRO, GPG


def test_dro_loss_and_gradient_by_hand():
    # L = -(A logp - beta/2 (logp - old)^2), dL/dlogp = -(A - beta (logp - old)); at A = 0 the penalty alone
    # pulls logp back towards old_logp
    loss, grad, m = _run(dro, DROConfig(beta=0.5), [0.5, 0.25], [0.25, 0.5], [1.0, 0.0])
    lr = math.log(2.0)
    torch.testing.assert_close(loss[0], torch.tensor([-(math.log(0.5) - 0.25 * lr**2), 0.25 * lr**2], dtype=D))
    torch.testing.assert_close(grad[0], torch.tensor([-(1.0 - 0.5 * lr), -0.5 * lr], dtype=D))
    assert m["dro/penalty"].item() == pytest.approx(0.25 * lr**2)
    assert m["kl/approx_old"].item() == pytest.approx(0.0)  # -ln 2 and +ln 2
    assert m["ratio/mean"].item() == pytest.approx(1.25)


def test_gpg_by_hand():
    loss, grad, m = _run(gpg, None, [0.5, 0.25], [0.5, 0.5], [1.0, -2.0])
    torch.testing.assert_close(loss[0], torch.tensor([-math.log(0.5), 2 * math.log(0.25)], dtype=D))
    torch.testing.assert_close(grad[0], torch.tensor([-1.0, 2.0], dtype=D))
    assert m["ratio/mean"].item() == pytest.approx(0.75)


def test_dro_reduces_to_gpg_on_policy_and_as_beta_vanishes():
    mask, logp, old, adv, _ = ragged_batch(5)
    g_loss, _ = gpg(logp, old, adv, mask, cfg=None)
    on, _ = dro(logp, logp.detach(), adv, mask, cfg=DROConfig())
    torch.testing.assert_close(on, g_loss)
    tiny, _ = dro(logp, old, adv, mask, cfg=DROConfig(beta=1e-12))
    torch.testing.assert_close(tiny, g_loss)


@pytest.mark.parametrize(
    "fn,cfg", [(gpg, None), (dro, DROConfig()), (dppo_tv, DPPOTVConfig()), (dppo_kl, DPPOKLConfig())]
)
def test_on_policy_gradient_is_ppo_clip_s(fn, cfg):
    mask, logp, _, adv, _ = ragged_batch(6)
    on = logp.detach().clone().requires_grad_()
    loss, _ = fn(on, on.detach(), adv, mask, cfg=cfg)
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "seq-mean-token-mean"), on)
    ref, _ = ppo_clip(on, on.detach(), adv, mask, cfg=PPOClipConfig())
    (ref_grad,) = torch.autograd.grad(aggregate(ref, mask, "seq-mean-token-mean"), on)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.all(torch.sign(grad) == -torch.sign(adv) * mask)


# ---------------------------------------------------------------------------------------------------- all

CASES = [
    (dppo_tv, DPPOTVConfig(is_cap=3.0)),
    (dppo_kl, DPPOKLConfig()),
    (dro, DROConfig()),
    (gpg, None),
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
    g = gen(8)
    logp, old = (-torch.rand(2, 3, generator=g) * 3 for _ in range(2))
    adv = torch.randn(2, 3, generator=g)
    narrow = fn(logp, old, adv, RAGGED, cfg=cfg)
    wide = fn(pad(logp), pad(old, INF), pad(adv), pad(RAGGED, 0.0), cfg=cfg)
    same_on_real_columns(narrow, wide)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"dppo_tv delta_high must be in \(0, 1.0\], got 1.5"):
        DPPOTVConfig(delta_high=1.5)
    with pytest.raises(ValueError, match=r"dppo_kl delta_low .* got 0"):
        DPPOKLConfig(delta_low=0.0)
    with pytest.raises(ValueError, match=r"is_cap must be > 0 or None, got -1"):
        DPPOTVConfig(is_cap=-1.0)
    with pytest.raises(ValueError, match=r"dro beta must be > 0, got 0"):
        DROConfig(beta=0.0)


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl", "dro", "gpg"])
def test_registry_contract(name):
    entry = lookup("policy_loss", name)
    params = inspect.signature(entry.fn).parameters.values()
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == ["logp", "old_logp", "advantages", "mask"]
    assert {p.name for p in params if p.kind is p.KEYWORD_ONLY} == {"cfg", "entropy"}
    assert entry.needs == ()
    mask, logp, old, adv, _ = ragged_batch(0)
    _, m = entry.fn(logp, old.clamp(max=-1e-3), adv, mask, cfg=entry.make_config())
    assert sorted(m) == sorted(entry.metrics)
    doc = inspect.getdoc(entry.fn)
    for part in ("Args:", "Returns:", "Differences from the paper", "Example:", ">>>", *entry.metrics):
        assert part in doc, part
