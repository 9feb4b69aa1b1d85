"""EPO's multi-turn gate: ``epo`` exactly with from_turn 0, the bonus alone on early turns, the schedule's target."""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.epo import EPOConfig, EPOPhaseConfig, epo, epo_phase
from entrolab.methods.epo_turns import EPOTurnsConfig, epo_turns

H = torch.tensor([[0.5, 1.0, 2.5, 2.5, 0.1, 9.0], [3.0, 0.2, 0.2, 3.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1, 1, 1, 0, 0], [1, 1, 0, 1, 0, 0]])  # an observation token at [1, 2]
TURNS = torch.tensor([[0, 0, 1, 1, -1, -1], [0, 1, -1, 2, -1, -1]])
STATE = {"ref_entropy": 1.0, "smooth_weight": 0.5}


def test_from_turn_zero_is_epo() -> None:
    a, ma = epo_turns(
        None, MASK, cfg=EPOTurnsConfig(coef=1.0), entropy=H, old_logp=None, ref_logp=None, step_ids=TURNS, state=STATE
    )
    b, mb = epo(None, MASK, cfg=EPOConfig(coef=1.0), entropy=H, old_logp=None, ref_logp=None, state=STATE)
    assert torch.equal(a, b)
    assert ma["epo/gated_frac"].item() == 1.0 and all(torch.equal(ma[k], mb[k]) for k in mb)


def test_early_turns_get_the_bonus_only() -> None:
    h = H.clone().requires_grad_()
    cfg = EPOTurnsConfig(coef=1.0, from_turn=1)
    term, m = epo_turns(None, MASK, cfg=cfg, entropy=h, old_logp=None, ref_logp=None, step_ids=TURNS, state=STATE)
    # corridor (0, 2): row 0 turn 1 tokens 2.5 are 0.5 above -> -2.5 + 0.5 * 0.5; turn 0 tokens: -H only
    assert term[0].tolist() == [-0.5, -1.0, -2.25, -2.25, 0.0, 0.0]
    torch.testing.assert_close(term[1], torch.tensor([-3.0, -0.2, 0.0, -3.0 + 0.5, 0.0, 0.0]))
    assert m["epo/gated_frac"].item() == pytest.approx(4 / 7)
    term.sum().backward()
    assert h.grad[0].tolist() == [-1.0, -1.0, -0.5, -0.5, 0.0, 0.0]  # the hinge's +c_s beta above the ceiling
    assert h.grad[1, 2] == 0  # the observation token


def test_schedule_sets_the_gated_regulariser() -> None:
    cfg = EPOPhaseConfig(target="epo_turns")
    state, values = epo_phase({}, {}, cfg=cfg, step=1, total_steps=10)
    assert set(values) == {"epo_turns.smooth_weight"}
    _, values = epo_phase(state, {"entropy/token_mean": 0.7}, cfg=cfg, step=2, total_steps=10)
    assert values["epo_turns.ref_entropy"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"target must be one of \['epo', 'epo_turns'\], got 'x'"):
        EPOPhaseConfig(target="x")
    with pytest.raises(ValueError, match="from_turn must be >= 0"):
        EPOTurnsConfig(from_turn=-1)
