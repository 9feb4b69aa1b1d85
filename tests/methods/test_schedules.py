"""Numbers for the adaptive-entropy controller: closed form, the constant-coefficient degenerate case, the
clamps on a synthetic trajectory, and a closed loop on a softmax policy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from entrolab.methods.regularizers import EntropyBonusConfig, entropy_bonus
from entrolab.methods.schedules import AdaptiveEntropyConfig, adaptive_entropy
from tests.methods._helpers import call_regularizer


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
            term, _ = call_regularizer(entropy_bonus, EntropyBonusConfig(coef=coef), torch.ones(1, 1), entropy=h)
            opt.zero_grad()
            (pg + term).sum().backward()
            opt.step()
            observed = {"entropy/token_mean": h.item()}
            hist.append(h.item())
        return hist

    free, held = run(False), run(True)
    assert free[-1] < 0.1  # collapse without control
    assert 0.7 < sum(held[-50:]) / 50 < 0.9 and min(held[100:]) > 0.6  # target 0.8
