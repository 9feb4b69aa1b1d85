"""Numbers for the entropy catalogue: STEER, SIREN, EPO, Light-IF (TEA-RL, Entropy-SFT), SAFE, adaptive entropy.

Per method: the research note's worked example (``research/methods_entropy.md``) as a closed form, the
reduction to the parent method at a degenerate setting, the gradient sign, exact zeros and padding
invariance on masked tokens, and, for every controller, a closed loop on a synthetic entropy trajectory.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from entrolab import ops
from entrolab.methods.aggregation import aggregate
from entrolab.methods.epo import EPOConfig, EPOPhaseConfig, epo, epo_phase, epo_phase_weight
from entrolab.methods.light_if import EntropySFTConfig, TeaRLConfig, entropy_sft, tea_rl
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.regularizers import EntropyBonusConfig, entropy_bonus
from entrolab.methods.safe import SafeConfig, SafePIDConfig, safe, safe_pid
from entrolab.methods.schedules import AdaptiveEntropyConfig, adaptive_entropy
from entrolab.methods.siren import SirenAnchorConfig, SirenConfig, siren, siren_anchor, topp_entropy
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


# ---------------------------------------------------------------------------------------------------- SIREN


def test_siren_topp_entropy_note_example_both_conventions():
    # p = [.5, .2, .15, .1, .05], top_p = 0.8: exclusive keeps {.5, .2} (cum .7 < .8; .15 crosses to .85),
    # H = -(5/7 ln 5/7 + 2/7 ln 2/7); inclusive keeps the crossing token too.
    z = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    excl = -(5 / 7 * math.log(5 / 7) + 2 / 7 * math.log(2 / 7))
    q = torch.tensor([0.5, 0.2, 0.15]) / 0.85
    incl = -(q * q.log()).sum().item()
    assert topp_entropy(z, 0.8, 5).item() == pytest.approx(excl, abs=1e-6) == pytest.approx(0.59827, abs=1e-5)
    assert topp_entropy(z, 0.8, 5, "inclusive").item() == pytest.approx(incl, abs=1e-6)
    assert incl == pytest.approx(0.95869, abs=1e-5)
    assert topp_entropy(z, 0.8, 2).item() == pytest.approx(excl, abs=1e-6)  # top-k = 2 holds the nucleus
    assert topp_entropy(z, 0.8, 100).item() == pytest.approx(excl, abs=1e-6)  # k > V: min(k, V)


def test_siren_topp_entropy_top1_above_p_is_zero_with_zero_gradient():
    z = torch.tensor([3.0, 0.0, -1.0], requires_grad=True)  # top-1 prob 0.94 >= 0.8
    h = topp_entropy(z, 0.8, 3)
    (grad,) = torch.autograd.grad(h, z)
    assert h.item() == 0.0 and torch.all(grad == 0)


def _bernoulli_logits(p: list[list[float]]) -> torch.Tensor:
    """[B, T, 2] logits of Bernoulli(p): with top_p=1 and the inclusive nucleus H^top is the full entropy."""
    p = torch.tensor(p)
    return torch.stack([p.log(), (1 - p).log()], -1)


def _h2(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


SIREN_FULL = SirenConfig(coef=1.0, top_p=1.0, nucleus="inclusive")


def test_siren_peak_mask_is_per_response():
    # Row 0 has small entropies rising along t: only t = 4 is above its own 0.8-quantile.
    # Row 1 has large entropies, highest at t = 1 (p = 0.5). A batch-wide quantile would keep row 1 only.
    logits = _bernoulli_logits([[0.99, 0.98, 0.97, 0.96, 0.95], [0.6, 0.5, 0.7, 0.8, 0.9]])
    term, m = _reg(siren, replace(SIREN_FULL, anchor=0.0), torch.ones(2, 5), logits=logits)
    assert m["siren/peak_frac"].item() == pytest.approx(2 / 10)
    h_hat = (_h2(0.95) + math.log(2)) / 2  # seq-mean-token-mean over the two peaks
    assert m["entropy/topp_peak_mean"].item() == pytest.approx(h_hat, rel=1e-5)
    assert m["siren/penalty"].item() == pytest.approx(h_hat**2, rel=1e-5)  # coef (H_hat - 0)^2
    torch.testing.assert_close(term, torch.full((2, 5), h_hat**2))
    # Quantile by hand (note §4(f)): entropies [0, 1, 2, 3, 4] -> tau = 3.2 -> only 4 kept.
    tau = torch.nanquantile(torch.tensor([[0.0, 1, 2, 3, 4]]), 0.8, dim=-1)
    assert tau.item() == pytest.approx(3.2)


def test_siren_gradient_vanishes_at_anchor_and_points_to_it():
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8, 0.6]])
    mask = torch.ones(1, 5)
    _, m = _reg(siren, SIREN_FULL, mask, logits=logits)
    h_hat = m["entropy/topp_peak_mean"].item()
    at = logits.clone().requires_grad_()
    term, _ = _reg(siren, replace(SIREN_FULL, anchor=h_hat), mask, logits=at)
    (grad,) = torch.autograd.grad(aggregate(term, mask, "token-mean"), at)
    assert grad.abs().max().item() < 1e-6
    for anchor in (h_hat + 0.3, h_hat - 0.3):  # one descent step moves H_hat toward the anchor
        z = logits.clone().requires_grad_()
        term, _ = _reg(siren, replace(SIREN_FULL, anchor=anchor), mask, logits=z)
        (grad,) = torch.autograd.grad(aggregate(term, mask, "token-mean"), z)
        _, after = _reg(siren, replace(SIREN_FULL, anchor=anchor), mask, logits=z.detach() - 0.5 * grad)
        assert abs(after["entropy/topp_peak_mean"].item() - anchor) < abs(h_hat - anchor)


def test_siren_degenerate_masked_and_padding():
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8, 0.6], [0.55, 0.99, 0.7, 0.6, 0.5]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    zero, m = _reg(siren, SirenConfig(coef=0.0, top_p=1.0, anchor=1.0), mask, logits=logits)
    assert torch.all(zero == 0) and m["siren/penalty"].item() == 0
    none, _ = _reg(siren, SIREN_FULL, mask, logits=logits)  # no anchor yet: no penalty
    assert torch.all(none == 0)
    garbage = logits.clone()
    garbage[1, 3:] = NAN
    z = garbage.clone().requires_grad_()
    term, m = _reg(siren, replace(SIREN_FULL, anchor=2.0), mask, logits=z)
    aggregate(term, mask, "token-mean").backward()
    assert torch.all(term[1, 3:] == 0) and torch.isfinite(term).all()
    assert torch.all(z.grad[1, 3:] == 0) and torch.isfinite(z.grad).all() and z.grad[mask.bool()].abs().sum() > 0
    cfg = replace(SIREN_FULL, anchor=2.0)
    narrow = _reg(siren, cfg, mask, logits=logits)
    wide = _reg(siren, cfg, _pad(mask, 0.0), logits=_pad(logits, INF))
    _assert_padding_invariant(narrow, wide, 5)
    with pytest.raises(ValueError, match="needs logits"):
        _reg(siren, SIREN_FULL, mask)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        SirenConfig(top_p=1.5)


def test_siren_anchor_records_once():
    state, values = siren_anchor({}, {}, cfg=SirenAnchorConfig(), step=1, total_steps=5)
    assert values == {} and state == {}
    trajectory = [0.9, 0.4, 0.1, 1.5]
    for step, h in enumerate(trajectory, start=2):
        state, values = siren_anchor(
            state, {"entropy/topp_peak_mean": h}, cfg=SirenAnchorConfig(), step=step, total_steps=5
        )
        assert values == {"siren.anchor": 0.9}  # the first observation, never updated


# ------------------------------------------------------------------------------------------------------ EPO


@pytest.mark.parametrize(("low", "outside"), [(0.0, [False, False, False, True]), (0.8, [True, False, False, True])])
def test_epo_corridor_note_example(low, outside):
    # Note §6(f): H_ref = 1, rows of constant entropy [0.5, 1.0, 1.9, 2.5]; kappa_r = 2.
    h = torch.tensor([[0.5], [1.0], [1.9], [2.5]]).expand(4, 3)
    cfg = EPOConfig(coef=1.0, low_ratio=low, high_ratio=2.0, ref_entropy=1.0, code_faithful=True)
    for mode in ("token", "seq"):
        term, m = _reg(epo, replace(cfg, mask_mode=mode), torch.ones(4, 3), entropy=h)
        expected = -h + 0.05 * torch.tensor(outside).float().unsqueeze(-1)  # -c_H H + c_H c_s beta penalty
        torch.testing.assert_close(term, expected)
        assert m["epo/out_of_corridor_frac"].item() == pytest.approx(sum(outside) / 4)


def test_epo_phase_weight_note_example_and_monotone():
    got = [epo_phase_weight(k, 150) for k in (0, 75, 76, 150)]
    assert got == pytest.approx([1.0, 0.8271, 0.7686, 0.0398], abs=5e-5)
    assert got[1] == pytest.approx(1 - 0.2 * (1 - math.exp(-2)))
    weights = [epo_phase_weight(k, 150) for k in range(151)]
    assert all(a >= b for a, b in itertools.pairwise(weights))
    assert epo_phase_weight(500, 150) == weights[-1]  # k past K is clamped


def test_epo_phase_history_and_closed_loop():
    # History reducer (note §6(f)): cumulative mean of [1, 2, 3, 4] = 2.5, sliding window of 2 = 3.5.
    for window, expected in ((None, 2.5), (2, 3.5)):
        state, values = epo_phase({}, {}, cfg=EPOPhaseConfig(window=window), step=1, total_steps=150)
        assert values == {"epo.smooth_weight": 1.0}  # no history yet: no ref_entropy, smoothing off
        for step, h in enumerate([1.0, 2.0, 3.0, 4.0], start=2):
            state, values = epo_phase(
                state, {"entropy/token_mean": h}, cfg=EPOPhaseConfig(window=window), step=step, total_steps=150
            )
        assert values["epo.ref_entropy"] == pytest.approx(expected)
    # Closed loop: the regulariser with the schedule's values penalises a spike of entropy above
    # kappa_r * H_ref and, later in training, penalises it less (beta decays).
    cfg, sched = EPOConfig(coef=1.0, high_ratio=1.5), EPOPhaseConfig(horizon=20, start_step=1)
    state, values = epo_phase({}, {}, cfg=sched, step=1, total_steps=20)
    assert values["epo.smooth_weight"] == 0.0  # before start_step
    penalties = []
    for step in range(2, 21):
        state, values = epo_phase(state, {"entropy/token_mean": 1.0}, cfg=sched, step=step, total_steps=20)
        _, m = _reg(
            epo,
            replace(cfg, **{k.split(".")[1]: v for k, v in values.items()}),
            torch.ones(1, 1),
            entropy=torch.tensor([[2.0]]),
        )
        penalties.append(values["epo.smooth_weight"] * m["epo/smooth_mean"].item())
    assert values["epo.ref_entropy"] == 1.0 and penalties[0] == pytest.approx(0.5 * epo_phase_weight(1, 20))
    assert all(a >= b for a, b in itertools.pairwise(penalties)) and penalties[-1] < 0.1 * penalties[0]


def test_epo_gradient_paper_vs_code_and_degenerate():
    h0 = torch.tensor([[0.2, 1.0, 3.0]])  # below, inside, above the corridor [0.5, 2.0] around H_ref = 1
    cfg = EPOConfig(coef=0.1, low_ratio=0.5, high_ratio=2.0, ref_entropy=1.0, smooth_coef=2.0)
    grads = {}
    for faithful in (False, True):
        h = h0.clone().requires_grad_()
        term, _ = _reg(epo, replace(cfg, code_faithful=faithful), torch.ones(1, 3), entropy=h)
        (grads[faithful],) = torch.autograd.grad(term.sum(), h)
    torch.testing.assert_close(grads[True], torch.full((1, 3), -0.1))  # code: only the bonus has a gradient
    # paper: below the floor the push up doubles-plus (-c_H - c_H c_s), above the ceiling it reverses.
    torch.testing.assert_close(grads[False], torch.tensor([[-0.1 - 0.2, -0.1, -0.1 + 0.2]]))
    bonus, _ = _reg(entropy_bonus, EntropyBonusConfig(coef=0.1), torch.ones(1, 3), entropy=h0)
    plain, _ = _reg(epo, replace(cfg, ref_entropy=None), torch.ones(1, 3), entropy=h0)
    torch.testing.assert_close(plain, bonus)  # no history: EPO is the entropy bonus
    zero, _ = _reg(epo, replace(cfg, coef=0.0), torch.ones(1, 3), entropy=h0)
    assert torch.all(zero == 0)
    mask = torch.tensor([[1.0, 1, 0]])
    h = torch.tensor([[0.2, 1.0, NAN]], requires_grad=True)
    term, _ = _reg(epo, replace(cfg, mask_mode="seq"), mask, entropy=h)
    aggregate(term, mask, "token-mean").backward()
    assert term[0, 2] == 0 and h.grad[0, 2] == 0 and torch.isfinite(h.grad).all()
    narrow = _reg(epo, cfg, torch.ones(1, 3), entropy=h0)
    _assert_padding_invariant(narrow, _reg(epo, cfg, _pad(torch.ones(1, 3), 0.0), entropy=_pad(h0)), 3)
    with pytest.raises(ValueError, match=r"high_ratio > low_ratio, got 0.5 <= 0.8"):
        EPOConfig(low_ratio=0.8, high_ratio=0.5)


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


# ----------------------------------------------------------------------------------------------------- SAFE


def _safe(kl: float, h: float, cfg=None, requires_grad=False):
    logp = torch.full((1, 2), -1.0, requires_grad=requires_grad)
    term, m = _reg(
        safe,
        cfg or SafeConfig(),
        torch.ones(1, 2),
        entropy=torch.full((1, 2), h),
        logp=logp,
        ref_logp=torch.full((1, 2), -1.0 - kl),
    )
    return term, m, logp


def test_safe_note_example():
    # Note §16(f): fresh controller, KL 5.0 -> kl_short 0.5 > tau 0.45; factor 2 / (1.9 + 0.1) = 1.
    term, m, _ = _safe(5.0, 1.9)
    assert m["safe/kl_short"].item() == pytest.approx(0.5)
    assert m["safe/penalty"].item() == pytest.approx(0.1 * 0.05**2) == pytest.approx(2.5e-4)
    torch.testing.assert_close(term, torch.full((1, 2), 2.5e-4))
    term, m, _ = _safe(1.0, 1.9)  # kl_short 0.1 < tau: no penalty
    assert torch.all(term == 0) and m["safe/active"].item() == 0.0
    _, m, _ = _safe(5.0, 0.3)
    assert m["safe/entropy_factor"].item() == pytest.approx(5.0)  # 2 / (0.3 + 0.1): low entropy amplifies
    _, m, _ = _safe(5.0, 10.0)
    assert m["safe/entropy_factor"].item() == pytest.approx(0.5)  # the floor of the factor
    zero, _, _ = _safe(5.0, 1.9, SafeConfig(coef=0.0))
    assert torch.all(zero == 0)


def test_safe_gradient_intended_vs_code_and_masked():
    term, _, logp = _safe(8.0, 1.0, requires_grad=True)
    (grad,) = torch.autograd.grad(aggregate(term, torch.ones(1, 2), "token-mean"), logp)
    # d/dlogp of coef (0.9 kl_prev + 0.1 KL - tau)^2 f, KL = mean(logp - ref): 2 coef x 0.1 x f / 2 per token.
    excess, f = 0.8 - 0.45, 2.0 / 1.1
    torch.testing.assert_close(grad, torch.full((1, 2), 2 * 0.1 * excess * f * 0.1 / 2))
    assert torch.all(grad > 0)  # descent lowers logp toward the reference
    term, _, logp = _safe(8.0, 1.0, SafeConfig(code_faithful=True), requires_grad=True)
    assert term.sum() > 0 and not term.requires_grad  # the released trainer: a constant, no gradient
    mask = torch.tensor([[1.0, 0.0]])
    logp = torch.tensor([[-1.0, NAN]], requires_grad=True)
    term, m = _reg(
        safe, SafeConfig(), mask, entropy=torch.tensor([[1.0, NAN]]), logp=logp, ref_logp=torch.tensor([[-9.0, INF]])
    )
    aggregate(term, mask, "token-mean").backward()
    assert term[0, 1] == 0 and logp.grad[0, 1] == 0 and torch.isfinite(logp.grad).all()
    assert m["kl/ref_k1_mean"].item() == pytest.approx(8.0)
    narrow = _reg(
        safe,
        SafeConfig(),
        torch.ones(1, 1),
        entropy=torch.ones(1, 1),
        logp=torch.zeros(1, 1),
        ref_logp=torch.full((1, 1), -9.0),
    )
    wide = _reg(
        safe,
        SafeConfig(),
        _pad(torch.ones(1, 1), 0.0),
        entropy=_pad(torch.ones(1, 1)),
        logp=_pad(torch.zeros(1, 1)),
        ref_logp=_pad(torch.full((1, 1), -9.0), INF),
    )
    _assert_padding_invariant(narrow, wide, 1)


def _run_pid(rewards, kl=0.0, cfg=None):
    cfg = cfg or SafePIDConfig()
    state, values = safe_pid({}, {}, cfg=cfg, step=1, total_steps=len(rewards) + 1)
    taus, phases = [values["safe.threshold"]], []
    for step, r in enumerate(rewards, start=2):
        state, values = safe_pid(
            state, {"reward/mean": r, "kl/ref_k1_mean": kl}, cfg=cfg, step=step, total_steps=len(rewards) + 1
        )
        taus.append(values["safe.threshold"])
        phases.append(int(state["phase"]))
    return taus, phases, state, values


def test_safe_pid_closed_loop_phases_and_bounds():
    # Climbing rewards: CLIMBING (x1.2) once 100 rewards are seen; flat low rewards: PLATEAU (x0.8);
    # flat high rewards with tiny spread: CONVERGED (x1.0). WARMUP (x1.5) for the first 49 observations.
    taus, phases, _, _ = _run_pid([0.005 * i for i in range(120)])
    assert set(phases[:49]) == {0} and phases[-1] == 1
    _, phases, state, values = _run_pid([0.3] * 120)
    assert phases[-1] == 2 and values["safe.threshold"] == pytest.approx((0.3 + state["u"]) * 0.8)
    _, phases, _, _ = _run_pid([0.9] * 120)
    assert phases[-1] == 3
    # PID: with flat rewards the velocity error is -0.001 each update, so u settles slightly below 0.
    assert -0.02 < state["u"] < 0
    # tau within [0.1, 0.6] on a wild trajectory; the KL average follows 0.9 / 0.1.
    g = torch.Generator().manual_seed(0)
    taus, _, state, values = _run_pid((torch.rand(150, generator=g) * 40 - 20).tolist(), kl=2.0)
    assert all(0.1 <= t <= 0.6 for t in taus) and min(taus) == 0.1 and max(taus) == 0.6
    assert values["safe.kl_prev"] == pytest.approx(2.0 * (1 - 0.9**150))


def test_safe_pid_code_updates_twice_per_step():
    # updates_per_step=2 (the code steps the controller once per PPO epoch): the same as two observations.
    once, _, _, _ = _run_pid([0.1, 0.1, 0.4, 0.4], kl=1.0, cfg=SafePIDConfig())
    twice, _, state2, values2 = _run_pid([0.1, 0.4], kl=1.0, cfg=SafePIDConfig(updates_per_step=2))
    assert twice[-1] == pytest.approx(once[-1]) and values2["safe.kl_prev"] == pytest.approx(1 - 0.9**4)
    with pytest.raises(ValueError, match="reward/mean"):
        safe_pid(state2, {}, cfg=SafePIDConfig(), step=4, total_steps=4)


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
