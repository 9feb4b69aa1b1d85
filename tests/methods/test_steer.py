"""Numbers for STEER: a hand-computed worked example as a closed
form, current vs behaviour probabilities, neutral weights are dual-clip PPO, gradient sign, exact zeros on
masked tokens and padding invariance."""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.steer import SteerConfig, steer
from tests.methods._helpers import INF, NAN, assert_padding_invariant, pad

# Hand-computed example: A = [1, 1, -1], p = p_old = [0.9, 0.5, 0.1], H = [0.3, 1.0, 2.0].
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
        pad(STEER_P.log()),
        pad(STEER_P.log(), INF),
        pad(STEER_A),
        pad(torch.ones(1, t), 0.0),
        cfg=SteerConfig(),
        old_entropy=pad(STEER_H),
    )
    assert_padding_invariant(narrow, wide, t)
    with pytest.raises(ValueError, match="old_entropy"):
        steer(logp, old, adv, mask, cfg=SteerConfig())
    with pytest.raises(ValueError, match=r"weight_min <= weight_max, got 1.3, 1.2"):
        SteerConfig(weight_min=1.3)
    with pytest.raises(ValueError, match=r"exp mapping needs weight_min in \(0, 1\], got 1.1"):
        SteerConfig(weight_min=1.1, weight_max=1.2, mapping="exp")
    with pytest.raises(ValueError, match="eps_low"):
        SteerConfig(eps_low=1.5)
