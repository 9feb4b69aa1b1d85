"""Numbers for Light-IF: TEA-RL's covariance-softmax entropy weights and Entropy-SFT's token selection
, their parents at degenerate settings, gradient sign and padding."""

from __future__ import annotations

import pytest
import torch

from entrolab import ops
from entrolab.methods.aggregation import aggregate
from entrolab.methods.light_if import EntropySFTConfig, TeaRLConfig, entropy_sft, tea_rl
from tests.methods._helpers import INF, NAN, assert_padding_invariant, call_regularizer, pad


def test_tea_rl_weights_sum_to_alpha_and_clamp():
    g = torch.Generator().manual_seed(1)
    logp, adv = -torch.rand(3, 6, generator=g) * 3, torch.tensor([[1.0], [-0.5], [2.0]])
    mask = (torch.arange(6) < torch.tensor([[6], [4], [1]])).float()
    h = torch.ones(3, 6)
    term, _ = call_regularizer(
        tea_rl, TeaRLConfig(alpha=3.0, weight_max=100.0), mask, entropy=h, logp=logp, advantages=adv
    )
    w = -term  # H = 1
    torch.testing.assert_close(w.sum(-1), torch.full((3,), 3.0))  # softmax over a response's positions x alpha
    assert torch.all(w[mask == 0] == 0) and w[2, 0].item() == pytest.approx(3.0)
    # Cov by hand for row 0: (A - mean A)(logp - mean logp), means over the 11 valid tokens.
    a_bt = adv.expand(3, 6)
    cov = (a_bt - ops.masked_mean(a_bt, mask)) * (logp - ops.masked_mean(logp, mask))
    torch.testing.assert_close(w[0], 3.0 * torch.softmax(cov[0], -1))
    clamped, _ = call_regularizer(
        tea_rl, TeaRLConfig(alpha=3.0, weight_max=1.5), mask, entropy=h, logp=logp, advantages=adv
    )
    assert (-clamped).max().item() == pytest.approx(1.5)
    zero, _ = call_regularizer(tea_rl, TeaRLConfig(alpha=0.0), mask, entropy=h, logp=logp, advantages=adv)
    assert torch.all(zero == 0)


def test_tea_rl_gradient_sign_detach_and_padding():
    mask = torch.tensor([[1.0, 1, 1, 0]])
    logp = torch.tensor([[-0.2, -1.0, -2.0, NAN]], requires_grad=True)
    h = torch.tensor([[0.5, 1.0, 1.5, INF]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 0.5, NAN]])
    term, _ = call_regularizer(tea_rl, TeaRLConfig(), mask, entropy=h, logp=logp, advantages=adv)
    aggregate(term, mask, "token-mean").backward()
    assert torch.all(h.grad[0, :3] < 0) and h.grad[0, 3] == 0  # descent raises entropy; padding untouched
    assert logp.grad is None or torch.all(logp.grad == 0)  # weights detached by default
    lp = logp.detach().clone().requires_grad_()
    term, _ = call_regularizer(
        tea_rl, TeaRLConfig(weights_grad=True), mask, entropy=h.detach(), logp=lp, advantages=adv
    )
    aggregate(term, mask, "token-mean").backward()
    assert lp.grad[0, :3].abs().sum() > 0 and lp.grad[0, 3] == 0 and torch.isfinite(lp.grad).all()
    x = (torch.tensor([[-0.2, -1.0, -2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.tensor([[1.0, -1.0, 0.5]]))
    narrow = call_regularizer(tea_rl, TeaRLConfig(), torch.ones(1, 3), entropy=x[1], logp=x[0], advantages=x[2])
    wide = call_regularizer(
        tea_rl,
        TeaRLConfig(),
        pad(torch.ones(1, 3), 0.0),
        entropy=pad(x[1]),
        logp=pad(x[0], INF),
        advantages=pad(x[2]),
    )
    assert_padding_invariant(narrow, wide, 3)
    with pytest.raises(ValueError, match="needs advantages"):
        call_regularizer(tea_rl, TeaRLConfig(), mask, entropy=h, logp=logp)


def test_entropy_sft_note_example_and_parent():
    # Hand-computed example: delta = CE - H = [1.9, 0.3, -1.5, 1.0]; rho = 0.5 keeps tokens 0 and 3: mean CE 2.5.
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
