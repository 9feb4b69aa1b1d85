"""Sequence-level policy losses (gspo, luspo, gmpo, vespo): closed forms, reductions, padding, contract."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import registry
from entrolab.methods.aggregation import aggregate
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.sequence_losses import (
    GMPOConfig,
    GSPOConfig,
    VESPOConfig,
    gmpo,
    gspo,
    luspo,
    vespo,
)
from tests import test_contract
from tests.methods._helpers import INF, NAN, pad, ragged_batch, same_on_real_columns

LOSSES = {"gspo": (gspo, GSPOConfig), "luspo": (luspo, GSPOConfig), "gmpo": (gmpo, GMPOConfig)}
ALL = {**LOSSES, "vespo": (vespo, VESPOConfig)}


def _grad(value: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, logp, retain_graph=True)[0]


def _wide(seed: int):
    """ragged_batch with wider log-ratios (sd 0.9 per token), one empty row."""
    mask, logp, old, adv, entropy = ragged_batch(seed)
    logp = (old + 3 * (logp.detach() - old)).requires_grad_()
    return mask, logp, old, adv, entropy


def _seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


# ------------------------------------------------------------------------------------------ closed forms


def test_gspo_is_the_sequence_objective_under_seq_mean_token_mean():
    """Reduced with seq-mean-token-mean, gspo is eq. 5 written directly on s_i = exp(mean log r): value, grad."""
    for seed in range(3):
        mask, logp, old, adv, _ = _wide(seed)
        cfg = GSPOConfig(eps_low=0.1, eps_high=0.15)
        loss, _ = gspo(logp, old, adv, mask, cfg=cfg)
        ours = aggregate(loss, mask, "seq-mean-token-mean")
        s = torch.exp(_seq_mean(logp - old, mask))  # [B]
        a = adv.squeeze(-1)
        per_seq = torch.maximum(-a * s, -a * s.clamp(0.9, 1.15))
        rows = mask.sum(-1) > 0
        direct = per_seq[rows].sum() / rows.sum()
        torch.testing.assert_close(ours, direct)
        torch.testing.assert_close(_grad(ours, logp), _grad(direct, logp))
        # luspo: the same per-token loss; seq-mean-token-sum weights each sequence by its length
        lloss, _ = luspo(logp, old, adv, mask, cfg=cfg)
        assert torch.equal(lloss, loss)
        lus = aggregate(lloss, mask, "seq-mean-token-sum")
        weighted = (mask.sum(-1) * per_seq)[rows].sum() / rows.sum()
        torch.testing.assert_close(lus, weighted)
        torch.testing.assert_close(_grad(lus, logp), _grad(weighted, logp))


def test_gspo_closed_form_numbers_and_gradient():
    # row 0: s = e^0.1 > 1.05 with A > 0: clipped, no gradient; row 1: s = e^-0.03, A < 0: unclipped
    logp = torch.tensor([[0.3, 0.0, 0.0], [-0.03, -0.03, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]], dtype=torch.float64)
    adv = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    loss, m = gspo(logp, torch.zeros_like(logp), adv, mask, cfg=GSPOConfig(eps_low=0.2, eps_high=0.05))
    s1 = math.exp(-0.03)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.05] * 3, [s1, s1, 0.0]], dtype=torch.float64))
    grad = _grad(aggregate(loss, mask, "seq-mean-token-mean"), logp)  # d(A s / n) / 2 on row 1's tokens
    torch.testing.assert_close(grad, torch.tensor([[0.0] * 3, [s1 / 4, s1 / 4, 0.0]], dtype=torch.float64))
    assert m["clip/frac_high"].item() == pytest.approx(0.6) and m["clip/seq_frac_high"].item() == 0.5
    assert m["clip/frac_low"].item() == 0.0 and m["ratio/seq_mean"].item() == pytest.approx((math.exp(0.1) + s1) / 2)
    assert m["kl/approx_old"].item() == pytest.approx(-0.24 / 5)


def test_gspo_log_ratio_clamp_stops_the_gradient_above_it():
    logp = torch.full((1, 2), 12.0, requires_grad=True)  # log s = 12 > 10
    loss, m = gspo(logp, torch.zeros(1, 2), torch.tensor([[-1.0]]), torch.ones(1, 2), cfg=GSPOConfig())
    assert torch.allclose(loss, torch.full((1, 2), math.exp(10.0))) and m["ratio/seq_mean"].item() == pytest.approx(
        math.exp(10.0)
    )
    assert torch.all(_grad(loss.sum(), logp) == 0)
    free, _ = gspo(
        logp, torch.zeros(1, 2), torch.tensor([[-1.0]]), torch.ones(1, 2), cfg=GSPOConfig(log_ratio_max=None)
    )
    assert torch.allclose(free, torch.full((1, 2), math.exp(12.0))) and torch.all(_grad(free.sum(), logp) > 0)


def test_gmpo_closed_form_numbers_and_gradient():
    logp = torch.tensor([[0.6, 0.0], [-0.6, 0.2]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, m = gmpo(logp, torch.zeros_like(logp), adv, mask, cfg=GMPOConfig())
    rho = torch.tensor([math.exp(0.2), math.exp(-0.1)], dtype=torch.float64)  # exp(mean c), c = (0.4, 0), (-0.4, .2)
    torch.testing.assert_close(loss.detach(), (-adv.squeeze(-1) * rho).unsqueeze(-1).expand(2, 2))
    grad = _grad(aggregate(loss, mask, "seq-mean-token-mean"), logp)  # clipped tokens: 0; else -A rho / n / G
    torch.testing.assert_close(grad, torch.tensor([[0.0, -rho[0] / 4], [0.0, rho[1] / 4]], dtype=torch.float64))
    assert m["clip/frac_high"].item() == 0.25 and m["clip/frac_low"].item() == 0.25
    assert m["ratio/seq_mean"].item() == pytest.approx(rho.mean().item())


def test_gmpo_token_advantages_use_the_row_mean_and_each_tokens_sign():
    logp = torch.tensor([[0.6, 0.6]], dtype=torch.float64)
    adv = torch.tensor([[3.0, -1.0]], dtype=torch.float64)  # A_i = 1; token 0 clipped above, token 1 not
    loss, _ = gmpo(logp, torch.zeros_like(logp), adv, torch.ones(1, 2, dtype=torch.float64), cfg=GMPOConfig())
    torch.testing.assert_close(loss, torch.full((1, 2), -math.exp(0.5), dtype=torch.float64))


def test_vespo_gamma_kernel_closed_form():
    cfg = VESPOConfig()
    log_w = torch.tensor([0.2, -0.5, 0.0, math.log(2 / 3), 25.0], dtype=torch.float64)  # last: clamped to 20
    adv = torch.tensor([[1.0], [-2.0], [-1.0], [0.5], [1.0]], dtype=torch.float64)
    logp = torch.stack([log_w / 2, log_w / 2], -1).requires_grad_()  # two tokens, old = 0
    mask = torch.ones(5, 2, dtype=torch.float64)
    loss, m = vespo(logp, torch.zeros_like(logp), adv, mask, cfg=cfg)
    k = torch.tensor([2.0, 3.0, 3.0, 2.0, 2.0], dtype=torch.float64)
    lam = torch.tensor([3.0, 2.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    w = log_w.clamp(max=20).exp()
    phi = w**k * torch.exp(lam * (1 - w))  # phi(1) = 1; the mode of the A >= 0 kernel is w = k / lambda
    torch.testing.assert_close(loss.detach(), -(phi * adv.squeeze(-1)).unsqueeze(-1) * logp.detach())
    assert phi[2] == 1 and phi[3] > 1 and phi[4] == 0
    grad = _grad(loss.sum(), logp)  # phi is detached: the gradient is -phi A on every token
    torch.testing.assert_close(grad, -(phi * adv.squeeze(-1)).unsqueeze(-1).expand(5, 2))
    assert m["vespo/phi_mean"].item() == pytest.approx(phi.mean().item())
    assert m["vespo/log_w_mean"].item() == pytest.approx(log_w.clamp(max=20).mean().item())


# ----------------------------------------------------------------------------- reductions to the parents


@pytest.mark.parametrize("seed", range(3))
def test_one_token_sequences_reduce_to_ppo_clip(seed):
    """n_i = 1: s_i is the token ratio (GSPO = PPO-clip); GMPO clips at exp(eps) (PPO-clip with those bounds)."""
    mask, logp, old, adv, _ = _wide(seed)
    one = torch.zeros_like(mask)
    one[:, 0] = mask[:, 0]
    ref, _ = ppo_clip(logp, old, adv, one, cfg=PPOClipConfig(eps_low=0.1, eps_high=0.2))
    ours, _ = gspo(logp, old, adv, one, cfg=GSPOConfig(eps_low=0.1, eps_high=0.2, log_ratio_max=None))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(_grad(ours.sum(), logp), _grad(ref.sum(), logp))
    ref, _ = ppo_clip(logp, old, adv, one, cfg=PPOClipConfig(eps_low=1 - math.exp(-0.3), eps_high=math.exp(0.2) - 1))
    ours, _ = gmpo(logp, old, adv, one, cfg=GMPOConfig(eps_low=0.3, eps_high=0.2))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(_grad(ours.sum(), logp), _grad(ref.sum(), logp))


@pytest.mark.parametrize("name", sorted(ALL))
def test_on_policy_gradient_is_the_policy_gradient_of_ppo_clip(name):
    """At logp = old_logp every method's gradient is PPO-clip's (REINFORCE with A), under its own aggregation."""
    fn, cfg = ALL[name]
    mask, logp, old, adv, _ = ragged_batch(0)
    logp = old.clone().requires_grad_()
    mode = "token-mean" if name == "vespo" else "seq-mean-token-mean"
    ours = aggregate(fn(logp, old, adv, mask, cfg=cfg())[0], mask, mode)
    ref = aggregate(ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig())[0], mask, mode)
    torch.testing.assert_close(_grad(ours, logp), _grad(ref, logp))
    if name != "vespo":  # vespo's value is -A log pi, not a ratio
        torch.testing.assert_close(ours, ref)


def test_gradient_sign_follows_the_advantage():
    mask = torch.ones(2, 3)
    adv = torch.tensor([[1.0], [-1.0]])
    for name, (fn, cfg) in ALL.items():
        logp = torch.full((2, 3), -1.0, requires_grad=True)
        loss, _ = fn(logp, torch.full((2, 3), -1.0), adv, mask, cfg=cfg())
        grad = _grad(aggregate(loss, mask, "token-mean"), logp)
        assert torch.all(grad[0] < 0) and torch.all(grad[1] > 0), name  # descent raises logp where A > 0


# ------------------------------------------------------------------------ padding, masking, invariance


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("garbage", [NAN, INF, -INF])
def test_garbage_padding_gives_exact_zero_and_changes_nothing(name, garbage):
    fn, cfg = ALL[name]
    mask, logp, old, adv, _ = _wide(1)
    adv_t = adv.expand_as(mask) * 1.0
    narrow = fn(logp, old, adv_t, mask, cfg=cfg())
    wide_logp = pad(logp.detach(), garbage).requires_grad_()
    wide = fn(wide_logp, pad(old, garbage), pad(adv_t, garbage), pad(mask, 0.0), cfg=cfg())
    same_on_real_columns(narrow, wide)
    # garbage inside the mask too: entries where mask is 0 are never read
    holes = mask.clone()
    holes[0, 2] = 0
    dirty = logp.detach().clone()
    dirty[0, 2] = garbage
    dirty.requires_grad_()
    loss, metrics = fn(dirty, old, adv_t, holes, cfg=cfg())
    assert loss[0, 2] == 0 and torch.isfinite(loss).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    grad = _grad(aggregate(loss, holes, "seq-mean-token-mean"), dirty)
    assert torch.isfinite(grad).all() and grad[0, 2] == 0 and torch.all(grad[holes == 0] == 0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_row_order_does_not_matter(name):
    fn, cfg = ALL[name]
    mask, logp, old, adv, _ = _wide(2)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    loss, m = fn(logp, old, adv, mask, cfg=cfg())
    ploss, pm = fn(logp[perm], old[perm], adv[perm], mask[perm], cfg=cfg())
    torch.testing.assert_close(ploss, loss[perm])
    for key in m:
        torch.testing.assert_close(pm[key], m[key])


# ------------------------------------------------------------------------------------ config, contract


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (GSPOConfig, dict(eps_low=1.0), r"gspo eps_low must be in \[0, 1\), got 1.0"),
        (GSPOConfig, dict(eps_high=-0.1), "gspo eps_high must be >= 0, got -0.1"),
        (GSPOConfig, dict(log_ratio_max=0.0), "gspo log_ratio_max must be > 0 or None, got 0.0"),
        (GMPOConfig, dict(eps_low=-0.4), r"gmpo eps_low must be >= 0 \(a log-space range\), got -0.4"),
        (GMPOConfig, dict(eps_high=-1.0), "gmpo eps_high must be >= 0"),
        (VESPOConfig, dict(k_neg=-1.0), "vespo k_neg must be >= 0, got -1.0"),
        (VESPOConfig, dict(lambda_pos=0.0), "vespo lambda_pos must be > 0, got 0.0"),
    ],
)
def test_bad_config_is_refused_by_name(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_defaults_are_the_papers_and_engines():
    assert (GSPOConfig().eps_low, GSPOConfig().eps_high, GSPOConfig().log_ratio_max) == (3e-4, 4e-4, 10.0)
    assert (GMPOConfig().eps_low, GMPOConfig().eps_high) == (0.4, 0.4)
    v = VESPOConfig()
    assert (v.k_pos, v.lambda_pos, v.k_neg, v.lambda_neg) == (2.0, 3.0, 3.0, 2.0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_keeps_the_registry_contract(name):
    entry = registry.lookup("policy_loss", name)
    assert entry.fn is ALL[name][0] and entry.config is ALL[name][1]
    test_contract.test_every_registered_method_keeps_the_contract(entry)
    test_contract.test_signature_follows_the_axis_convention(entry)
