"""Numbers for the entropy catalogue: STEER, Light-IF (TEA-RL, Entropy-SFT), adaptive entropy.

SIREN, EPO and SAFE have their own files in ``tests/methods/``.

Per method: the research note's worked example (``research/methods_entropy.md``) as a closed form, the
reduction to the parent method at a degenerate setting, the gradient sign, exact zeros and padding
invariance on masked tokens, and, for every controller, a closed loop on a synthetic entropy trajectory.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from entrolab import ops
from entrolab.methods.aggregation import aggregate
from entrolab.methods.light_if import EntropySFTConfig, TeaRLConfig, entropy_sft, tea_rl
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.regularizers import EntropyBonusConfig, entropy_bonus
from entrolab.methods.schedules import AdaptiveEntropyConfig, adaptive_entropy
from entrolab.methods.steer import SteerConfig, steer

NAN, INF = float("nan"), float("inf")


def _reg(fn, cfg, mask, entropy=None, logp=None, ref_logp=None, **extra):
    """Call a regulariser with the axis's keywords."""
    return fn(logp, mask, cfg=cfg, entropy=entropy, old_logp=None, ref_logp=ref_logp, **extra)


def _pad(x: torch.Tensor, garbage: float = NAN, n: int = 2) -> torch.Tensor:
    """x with n extra columns of garbage along dim 1 (any trailing dims kept)."""
    return torch.cat([x, torch.full((x.shape[0], n, *x.shape[2:]), garbage, dtype=x.dtype)], 1)


def _assert_padding_invariant(narrow, wide, t: int) -> None:
    (a, ma), (b, mb) = narrow, wide
    torch.testing.assert_close(a, b[:, :t])
    assert torch.all(b[:, t:] == 0)
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-6, atol=1e-7)


def _entropy_of(z: torch.Tensor) -> torch.Tensor:
    return ops.entropy_from_logits(z)


# ---------------------------------------------------------------------------------------------------- STEER

# Note §3(f): A = [1, 1, -1], p = p_old = [0.9, 0.5, 0.1], H = [0.3, 1.0, 2.0].
STEER_P = torch.tensor([[0.9, 0.5, 0.1]])
STEER_A = torch.tensor([[1.0, 1.0, -1.0]])
STEER_H = torch.tensor([[0.3, 1.0, 2.0]])


def _steer(cfg, logp=None, old=None, adv=STEER_A, mask=None, h=STEER_H):
    logp = STEER_P.log().clone().requires_grad_() if logp is None else logp
    old = STEER_P.log() if old is None else old
    mask = torch.ones_like(adv) if mask is None else mask
    loss, m = steer(logp, old, adv, mask, cfg=cfg, old_entropy=h)
    return loss, m, logp


@pytest.mark.parametrize(
    ("mapping", "weights"),
    [
        ("linear", [1.2, 0.98809, 0.8]),  # smallest |Omega| -> w_max, largest -> w_min, linear in between
        ("exp", [0.98418, 0.88186, 0.8]),  # k = -ln 0.8 / Omega_max; w = exp(-k Omega)
    ],
)
def test_steer_note_example(mapping, weights):
    # Omega = |A (1 - p)(log p + H)| = [0.01946, 0.15343, 0.27233] (p = p_old, so the ratio is 1).
    loss, m, _ = _steer(SteerConfig(mapping=mapping))
    omega = (STEER_A * (1 - STEER_P) * (STEER_P.log() + STEER_H)).abs()
    torch.testing.assert_close(omega, torch.tensor([[0.01946, 0.15343, 0.27233]]), atol=5e-6, rtol=0)
    torch.testing.assert_close(loss, -STEER_A * torch.tensor([weights]), atol=5e-6, rtol=0)  # on-policy L = -A w
    assert m["steer/omega_mean"].item() == pytest.approx(omega.mean().item(), rel=1e-6)
    assert m["steer/weight_mean"].item() == pytest.approx(sum(weights) / 3, abs=5e-6)


def test_steer_uses_current_prob_and_old_prob():
    # Off-policy: Omega = |A / p_old * p (1 - p)(log p + H)| with p from logp, p_old from old_logp.
    p, p_old = torch.tensor([[0.6, 0.3]]), torch.tensor([[0.5, 0.4]])
    adv, h = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.2, 0.1]])
    _, m, _ = _steer(SteerConfig(), p.log(), p_old.log(), adv, h=h)
    omega = (adv / p_old * p * (1 - p) * (p.log() + h)).abs()
    assert m["steer/omega_mean"].item() == pytest.approx(omega.mean().item(), rel=1e-6)


def test_steer_neutral_weights_is_dual_clip_ppo():
    g = torch.Generator().manual_seed(0)
    logp = (torch.randn(3, 5, generator=g) * 0.3 - 1).requires_grad_()
    old, adv = torch.randn(3, 5, generator=g) * 0.3 - 1, torch.randn(3, 1, generator=g)
    mask = (torch.arange(5) < torch.tensor([[5], [2], [4]])).float()
    for mapping in ("linear", "exp"):
        cfg = SteerConfig(weight_min=1.0, weight_max=1.0, mapping=mapping, eps_high=0.28, dual_clip_c=3.0)
        a, ma = steer(logp, old, adv, mask, cfg=cfg, old_entropy=torch.rand(3, 5, generator=g))
        b, mb = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_high=0.28, dual_clip_c=3.0))
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a.sum(), logp)[0], torch.autograd.grad(b.sum(), logp)[0])
        assert all(torch.equal(ma[k], mb[k]) for k in mb) and ma["steer/weight_mean"].item() == 1.0


def test_steer_equal_omega_gives_midpoint_and_weights_carry_no_gradient():
    same = torch.full((1, 3), 0.5)
    loss, m, logp = _steer(
        SteerConfig(), same.log().clone().requires_grad_(), same.log(), torch.ones(1, 3), h=torch.ones(1, 3)
    )
    assert m["steer/weight_mean"].item() == pytest.approx(1.0)  # (0.8 + 1.2) / 2
    # On-policy the PPO gradient is -A; the weight is a constant factor: dL/dlogp = -A w.
    loss, _, logp = _steer(SteerConfig())
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, loss.detach())  # L = -A w r and dL/dlogp = -A w r at r = 1
    assert torch.all(grad[STEER_A > 0] < 0) and torch.all(grad[STEER_A < 0] > 0)


def test_steer_entropy_fallback_masked_zeros_and_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    logp = torch.tensor([[-0.1, -0.7, NAN]], requires_grad=True)
    old, adv, h = torch.tensor([[-0.1, -0.7, INF]]), torch.tensor([[1.0, -1.0, NAN]]), torch.tensor([[0.3, 1.0, NAN]])
    loss, m = steer(logp, old, adv, mask, cfg=SteerConfig(), entropy=h)
    same, _ = steer(logp, old, adv, mask, cfg=SteerConfig(), old_entropy=h)
    assert torch.equal(loss, same) and loss[0, 2] == 0 and all(torch.isfinite(v) for v in m.values())
    aggregate(loss, mask, "token-mean").backward()
    assert logp.grad[0, 2] == 0 and torch.isfinite(logp.grad).all()
    t = 3
    narrow = steer(STEER_P.log(), STEER_P.log(), STEER_A, torch.ones(1, t), cfg=SteerConfig(), old_entropy=STEER_H)
    wide = steer(
        _pad(STEER_P.log()),
        _pad(STEER_P.log(), INF),
        _pad(STEER_A),
        _pad(torch.ones(1, t), 0.0),
        cfg=SteerConfig(),
        old_entropy=_pad(STEER_H),
    )
    _assert_padding_invariant(narrow, wide, t)
    with pytest.raises(ValueError, match="old_entropy"):
        steer(logp, old, adv, mask, cfg=SteerConfig())
    with pytest.raises(ValueError, match=r"weight_min <= weight_max, got 1.3, 1.2"):
        SteerConfig(weight_min=1.3)
    with pytest.raises(ValueError, match=r"exp mapping needs weight_min in \(0, 1\], got 1.1"):
        SteerConfig(weight_min=1.1, weight_max=1.2, mapping="exp")
    with pytest.raises(ValueError, match="eps_low"):
        SteerConfig(eps_low=1.5)


# ------------------------------------------------------------------------------------------------- Light-IF


def test_tea_rl_weights_sum_to_alpha_and_clamp():
    g = torch.Generator().manual_seed(1)
    logp, adv = -torch.rand(3, 6, generator=g) * 3, torch.tensor([[1.0], [-0.5], [2.0]])
    mask = (torch.arange(6) < torch.tensor([[6], [4], [1]])).float()
    h = torch.ones(3, 6)
    term, _ = _reg(tea_rl, TeaRLConfig(alpha=3.0, weight_max=100.0), mask, entropy=h, logp=logp, advantages=adv)
    w = -term  # H = 1
    torch.testing.assert_close(w.sum(-1), torch.full((3,), 3.0))  # softmax over a response's positions x alpha
    assert torch.all(w[mask == 0] == 0) and w[2, 0].item() == pytest.approx(3.0)
    # Cov by hand for row 0: (A - mean A)(logp - mean logp), means over the 11 valid tokens.
    a_bt = adv.expand(3, 6)
    cov = (a_bt - ops.masked_mean(a_bt, mask)) * (logp - ops.masked_mean(logp, mask))
    torch.testing.assert_close(w[0], 3.0 * torch.softmax(cov[0], -1))
    clamped, _ = _reg(tea_rl, TeaRLConfig(alpha=3.0, weight_max=1.5), mask, entropy=h, logp=logp, advantages=adv)
    assert (-clamped).max().item() == pytest.approx(1.5)
    zero, _ = _reg(tea_rl, TeaRLConfig(alpha=0.0), mask, entropy=h, logp=logp, advantages=adv)
    assert torch.all(zero == 0)


def test_tea_rl_gradient_sign_detach_and_padding():
    mask = torch.tensor([[1.0, 1, 1, 0]])
    logp = torch.tensor([[-0.2, -1.0, -2.0, NAN]], requires_grad=True)
    h = torch.tensor([[0.5, 1.0, 1.5, INF]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 0.5, NAN]])
    term, _ = _reg(tea_rl, TeaRLConfig(), mask, entropy=h, logp=logp, advantages=adv)
    aggregate(term, mask, "token-mean").backward()
    assert torch.all(h.grad[0, :3] < 0) and h.grad[0, 3] == 0  # descent raises entropy; padding untouched
    assert logp.grad is None or torch.all(logp.grad == 0)  # weights detached by default
    lp = logp.detach().clone().requires_grad_()
    term, _ = _reg(tea_rl, TeaRLConfig(weights_grad=True), mask, entropy=h.detach(), logp=lp, advantages=adv)
    aggregate(term, mask, "token-mean").backward()
    assert lp.grad[0, :3].abs().sum() > 0 and lp.grad[0, 3] == 0 and torch.isfinite(lp.grad).all()
    x = (torch.tensor([[-0.2, -1.0, -2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.tensor([[1.0, -1.0, 0.5]]))
    narrow = _reg(tea_rl, TeaRLConfig(), torch.ones(1, 3), entropy=x[1], logp=x[0], advantages=x[2])
    wide = _reg(
        tea_rl,
        TeaRLConfig(),
        _pad(torch.ones(1, 3), 0.0),
        entropy=_pad(x[1]),
        logp=_pad(x[0], INF),
        advantages=_pad(x[2]),
    )
    _assert_padding_invariant(narrow, wide, 3)
    with pytest.raises(ValueError, match="needs advantages"):
        _reg(tea_rl, TeaRLConfig(), mask, entropy=h, logp=logp)


def test_entropy_sft_note_example_and_parent():
    # Note §15(f): delta = CE - H = [1.9, 0.3, -1.5, 1.0]; rho = 0.5 keeps tokens 0 and 3: mean CE 2.5.
    ce = torch.tensor([[2.0, 0.5, 1.0, 3.0]])
    logp = (-ce).clone().requires_grad_()
    h = torch.tensor([[0.1, 0.2, 2.5, 2.0]])
    loss, sel, m = entropy_sft(logp, h, torch.ones(1, 4), cfg=EntropySFTConfig(token_ratio=0.5))
    assert sel.tolist() == [[True, False, False, True]]
    assert aggregate(loss, sel, "token-mean").item() == pytest.approx(2.5) == m["sft/ce_selected_mean"].item()
    aggregate(loss, sel, "token-mean").backward()
    assert logp.grad.tolist() == [[-0.5, 0.0, 0.0, -0.5]]  # only the selected tokens are trained
    assert m["sft/entropy_selected_mean"].item() == pytest.approx(1.05) and m["sft/frac_selected"].item() == 0.5
    # rho = 1, lambda = 0: plain SFT (mean CE over the supervised tokens).
    mask = torch.tensor([[1.0, 1, 1, 0]])
    garbage = torch.tensor([[-2.0, -0.5, -1.0, NAN]])
    loss, sel, m = entropy_sft(
        garbage, torch.tensor([[0.1, 0.2, 2.5, NAN]]), mask, cfg=EntropySFTConfig(token_ratio=1.0, entropy_coef=0.0)
    )
    assert sel.tolist() == [[True, True, True, False]] and loss[0, 3] == 0
    assert aggregate(loss, sel, "token-mean").item() == pytest.approx(3.5 / 3) == m["sft/ce_mean"].item()
    with pytest.raises(ValueError, match=r"token_ratio must be in \(0, 1\], got 0"):
        EntropySFTConfig(token_ratio=0)


# ------------------------------------------------------------------------------------------ adaptive entropy


def _control(trajectory, cfg):
    state, values = adaptive_entropy({}, {}, cfg=cfg, step=1, total_steps=len(trajectory) + 1)
    coefs = [values["entropy_bonus.coef"]]
    for step, h in enumerate(trajectory, start=2):
        state, values = adaptive_entropy(
            state, {"entropy/token_mean": h}, cfg=cfg, step=step, total_steps=len(trajectory) + 1
        )
        coefs.append(values["entropy_bonus.coef"])
    return coefs, state


def test_adaptive_entropy_closed_form_and_degenerate():
    cfg = AdaptiveEntropyConfig(target=0.2, delta=0.001, coef_init=0.002, coef_max=0.005)
    coefs, state = _control([0.1, 0.1, 0.3, 0.2], cfg)
    # init 0.002 (applied ungated); below -> 0.003, 0.004 (applied); above -> 0.003 (gated to 0);
    # at target -> unchanged (0.003) and gated (e < target is false).
    assert coefs == pytest.approx([0.002, 0.003, 0.004, 0.0, 0.0])
    assert state["coef"] == pytest.approx(0.003)
    ungated, _ = _control([0.1, 0.1, 0.3, 0.2], replace(cfg, gate=False))
    assert ungated == pytest.approx([0.002, 0.003, 0.004, 0.003, 0.003])
    # delta = 0 and no gate: a constant coefficient, the plain entropy_bonus.
    const, _ = _control([0.01, 5.0, 0.3], replace(cfg, delta=0.0, gate=False))
    assert const == [0.002] * 4
    coefs, _ = _control([0.2] * 5, cfg)  # at target: the coefficient never moves
    assert coefs == [0.002] + [0.0] * 5
    state, values = adaptive_entropy(
        {"coef": 0.002, "gate": 1.0},
        {"entropy/sampled_nll": 0.5},
        cfg=replace(cfg, observe="entropy/sampled_nll"),
        step=2,
        total_steps=3,
    )
    assert values == {"entropy_bonus.coef": 0.0} and state["coef"] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="entropy/token_mean"):
        adaptive_entropy({"coef": 0.0, "gate": 1.0}, {"reward/mean": 1.0}, cfg=cfg, step=2, total_steps=3)
    with pytest.raises(ValueError, match=r"coef_init must be in \[coef_min, coef_max\] = \[0.0, 0.005\], got 0.1"):
        AdaptiveEntropyConfig(coef_init=0.1)
    with pytest.raises(ValueError, match=r"'method\.field'"):
        AdaptiveEntropyConfig(field="coef")


def test_adaptive_entropy_clamps_on_synthetic_trajectory():
    cfg = AdaptiveEntropyConfig(target=0.2, delta=0.001, coef_max=0.005)
    # Entropy stuck below target: the coefficient climbs by delta and stops at coef_max.
    coefs, state = _control([0.05] * 10, cfg)
    assert coefs[1:6] == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005]) and coefs[-1] == 0.005
    # Then stuck above target: it falls back and stops at coef_min (and the gate keeps it unapplied).
    state_high = dict(state)
    for step in range(20):
        state_high, values = adaptive_entropy(
            state_high, {"entropy/token_mean": 1.0}, cfg=cfg, step=step + 12, total_steps=40
        )
    assert state_high["coef"] == 0.0 and values["entropy_bonus.coef"] == 0.0


def test_adaptive_entropy_closed_loop_on_a_softmax_policy():
    # A one-state softmax policy trained by REINFORCE toward one action collapses its entropy; the
    # controller, setting entropy_bonus.coef each step, holds it near the target instead.
    def run(controlled: bool) -> list[float]:
        z = torch.zeros(1, 1, 6, requires_grad=True)
        opt = torch.optim.SGD([z], lr=0.5)
        cfg = AdaptiveEntropyConfig(target=0.8, delta=0.02, coef_max=2.0)
        state, observed, hist = {}, {}, []
        for step in range(1, 201):
            state, values = adaptive_entropy(state, observed, cfg=cfg, step=step, total_steps=200)
            coef = values["entropy_bonus.coef"] if controlled else 0.0
            logp = torch.log_softmax(z, -1)
            h = -(logp.exp() * logp).sum(-1)  # [1, 1]
            pg = -logp[..., 0]  # advantage 1 on action 0
            term, _ = _reg(entropy_bonus, EntropyBonusConfig(coef=coef), torch.ones(1, 1), entropy=h)
            opt.zero_grad()
            (pg + term).sum().backward()
            opt.step()
            observed = {"entropy/token_mean": h.item()}
            hist.append(h.item())
        return hist

    free, held = run(False), run(True)
    assert free[-1] < 0.1  # collapse without control
    assert 0.7 < sum(held[-50:]) / 50 < 0.9 and min(held[100:]) > 0.6  # target 0.8
