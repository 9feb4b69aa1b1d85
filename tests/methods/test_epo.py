"""EPO (arXiv:2509.22576): the entropy bonus with a smoothing corridor and the phase-weight schedule.

Hand-computed corridor and beta(k) examples as closed forms, the history reducer, a closed loop of the
schedule's values into the regulariser, the paper's hinge against the released code's constant penalty, and
the horizon K: the run's total steps by default (the paper), ``horizon=150`` as the released code hardcodes it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.epo import EPOConfig, EPOPhaseConfig, epo, epo_phase, epo_phase_weight
from entrolab.methods.regularizers import EntropyBonusConfig, entropy_bonus
from tests.methods._helpers import NAN, assert_padding_invariant, call_regularizer, pad


@pytest.mark.parametrize(("low", "outside"), [(0.0, [False, False, False, True]), (0.8, [True, False, False, True])])
def test_epo_corridor_note_example(low, outside):
    # Hand-computed example: H_ref = 1, rows of constant entropy [0.5, 1.0, 1.9, 2.5]; kappa_r = 2.
    h = torch.tensor([[0.5], [1.0], [1.9], [2.5]]).expand(4, 3)
    cfg = EPOConfig(coef=1.0, low_ratio=low, high_ratio=2.0, code_faithful=True)
    for mode in ("token", "seq"):
        term, m = call_regularizer(
            epo, replace(cfg, mask_mode=mode), torch.ones(4, 3), entropy=h, state={"ref_entropy": 1.0}
        )
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
    # History reducer (hand-computed): cumulative mean of [1, 2, 3, 4] = 2.5, sliding window of 2 = 3.5.
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
        _, m = call_regularizer(  # the schedule's values reach the regulariser as its controller state
            epo,
            cfg,
            torch.ones(1, 1),
            entropy=torch.tensor([[2.0]]),
            state={k.split(".")[1]: v for k, v in values.items()},
        )
        penalties.append(values["epo.smooth_weight"] * m["epo/smooth_mean"].item())
    assert values["epo.ref_entropy"] == 1.0 and penalties[0] == pytest.approx(0.5 * epo_phase_weight(1, 20))
    assert all(a >= b for a, b in itertools.pairwise(penalties)) and penalties[-1] < 0.1 * penalties[0]


def test_epo_gradient_paper_vs_code_and_degenerate():
    h0 = torch.tensor([[0.2, 1.0, 3.0]])  # below, inside, above the corridor [0.5, 2.0] around H_ref = 1
    cfg = EPOConfig(coef=0.1, low_ratio=0.5, high_ratio=2.0, smooth_coef=2.0)
    ref = {"ref_entropy": 1.0}
    grads = {}
    for faithful in (False, True):
        h = h0.clone().requires_grad_()
        term, _ = call_regularizer(epo, replace(cfg, code_faithful=faithful), torch.ones(1, 3), entropy=h, state=ref)
        (grads[faithful],) = torch.autograd.grad(term.sum(), h)
    torch.testing.assert_close(grads[True], torch.full((1, 3), -0.1))  # code: only the bonus has a gradient
    # paper: below the floor the push up doubles-plus (-c_H - c_H c_s), above the ceiling it reverses.
    torch.testing.assert_close(grads[False], torch.tensor([[-0.1 - 0.2, -0.1, -0.1 + 0.2]]))
    bonus, _ = call_regularizer(entropy_bonus, EntropyBonusConfig(coef=0.1), torch.ones(1, 3), entropy=h0)
    plain, _ = call_regularizer(epo, cfg, torch.ones(1, 3), entropy=h0, state={})
    torch.testing.assert_close(plain, bonus)  # no history: EPO is the entropy bonus
    zero, _ = call_regularizer(epo, replace(cfg, coef=0.0), torch.ones(1, 3), entropy=h0, state=ref)
    assert torch.all(zero == 0)
    mask = torch.tensor([[1.0, 1, 0]])
    h = torch.tensor([[0.2, 1.0, NAN]], requires_grad=True)
    term, _ = call_regularizer(epo, replace(cfg, mask_mode="seq"), mask, entropy=h, state=ref)
    aggregate(term, mask, "token-mean").backward()
    assert term[0, 2] == 0 and h.grad[0, 2] == 0 and torch.isfinite(h.grad).all()
    narrow = call_regularizer(epo, cfg, torch.ones(1, 3), entropy=h0, state=ref)
    wide = call_regularizer(epo, cfg, pad(torch.ones(1, 3), 0.0), entropy=pad(h0), state=ref)
    assert_padding_invariant(narrow, wide, 3)
    with pytest.raises(ValueError, match=r"high_ratio > low_ratio, got 0.5 <= 0.8"):
        EPOConfig(low_ratio=0.8, high_ratio=0.5)


def _weights(cfg: EPOPhaseConfig, total_steps: int) -> list[float]:
    """beta for steps 1..total_steps, as the schedule sets ``epo.smooth_weight``."""
    state, out = {}, []
    for step in range(1, total_steps + 1):
        observed = {} if step == 1 else {"entropy/token_mean": 1.0}
        state, values = epo_phase(state, observed, cfg=cfg, step=step, total_steps=total_steps)
        out.append(values["epo.smooth_weight"])
    return out


def test_horizon_default_is_the_runs_total_steps_and_150_is_the_code():
    # The paper's K is the run's length (ScienceWorld 125 epochs); the released code hardcodes max_epochs = 150.
    assert EPOPhaseConfig().horizon is None
    paper, code = _weights(EPOPhaseConfig(), 125), _weights(EPOPhaseConfig(horizon=150), 125)
    assert paper == pytest.approx([epo_phase_weight(k, 125) for k in range(125)])
    assert code == pytest.approx([epo_phase_weight(k, 150) for k in range(125)])
    # k = step - 1 = 124 on the last step: 0.8 exp(-3 (124 - 62) / 63) against 0.8 exp(-3 (124 - 75) / 75).
    assert paper[-1] == pytest.approx(0.8 * math.exp(-3 * 62 / 63)) == pytest.approx(0.0418, abs=1e-4)
    assert code[-1] == pytest.approx(0.8 * math.exp(-3 * 49 / 75)) == pytest.approx(0.1127, abs=1e-4)
    assert paper[62] == pytest.approx(1 - 0.2 * (1 - math.exp(-2)))  # k = 62 = K // 2: the end of the slow half
    # With a 150-step run the two coincide.
    assert _weights(EPOPhaseConfig(), 150) == pytest.approx(_weights(EPOPhaseConfig(horizon=150), 150))


def test_phase_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"horizon must be >= 1 or None, got 0"):
        EPOPhaseConfig(horizon=0)
    with pytest.raises(ValueError, match=r"window must be >= 1 or None, got 0"):
        EPOPhaseConfig(window=0)
