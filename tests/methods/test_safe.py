"""SAFE (code ``ryyzn9/SAFE``): the entropy-gated KL penalty and its PID / phase threshold controller.

A hand-computed worked example as a closed form, the intended (differentiable) penalty against the
released code's constant one, exact zeros and padding invariance on masked tokens, and the controller on
synthetic reward trajectories. tau and kl_prev are controller state: ``safe_pid`` sets ``safe.threshold`` and
``safe.kl_prev``, the composer passes them as ``state={"threshold": tau, "kl_prev": kl_short}``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.aggregation import aggregate
from entrolab.methods.safe import SafeConfig, SafePIDConfig, safe, safe_pid
from tests.methods._helpers import INF, NAN, pad

FRESH = {"threshold": 0.45, "kl_prev": 0.0}  # safe_pid's first values: WARMUP tau 0.3 x 1.5, kl_short 0


def _reg(cfg, mask, entropy, logp, ref_logp, state=FRESH):
    return safe(logp, mask, cfg=cfg, entropy=entropy, old_logp=None, ref_logp=ref_logp, state=state)


def _safe(kl: float, h: float, cfg=None, requires_grad=False, state=FRESH):
    logp = torch.full((1, 2), -1.0, requires_grad=requires_grad)
    term, m = _reg(
        cfg or SafeConfig(), torch.ones(1, 2), torch.full((1, 2), h), logp, torch.full((1, 2), -1.0 - kl), state
    )
    return term, m, logp


def test_safe_note_example():
    # Hand-computed example: fresh controller, KL 5.0 -> kl_short 0.5 > tau 0.45; factor 2 / (1.9 + 0.1) = 1.
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


def test_threshold_and_kl_prev_come_from_state():
    # kl_short = 0.9 kl_prev + 0.1 KL = 0.9 x 1.0 + 0.1 x 5 = 1.4; tau 0.2: penalty 0.1 x 1.2^2 x 1.
    term, m, _ = _safe(5.0, 1.9, state={"threshold": 0.2, "kl_prev": 1.0})
    assert m["safe/kl_short"].item() == pytest.approx(1.4) and m["safe/active"].item() == 1.0
    torch.testing.assert_close(term, torch.full((1, 2), 0.1 * 1.2**2))
    term, m, _ = _safe(5.0, 1.9, state={"threshold": 0.6, "kl_prev": 0.0})  # kl_short 0.5 below tau 0.6
    assert torch.all(term == 0) and m["safe/active"].item() == 0.0
    # Missing keys take the controller's starting values (tau 0.45, kl_prev 0): the same as FRESH.
    for state in (None, {}, {"threshold": 0.45}, {"kl_prev": 0.0}):
        got, gm, _ = _safe(5.0, 1.9, state=state)
        want, wm, _ = _safe(5.0, 1.9)
        torch.testing.assert_close(got, want)
        assert gm.keys() == wm.keys() and all(torch.equal(gm[k], wm[k]) for k in gm)
    first_tau = safe_pid({}, {}, cfg=SafePIDConfig(), step=1, total_steps=2)[1]["safe.threshold"]
    assert first_tau == pytest.approx(0.45)  # the fallback is safe_pid's first value


def test_state_is_not_config():
    names = {f.name for f in dataclasses.fields(SafeConfig)}
    assert not names & {"threshold", "kl_prev"}
    entry = catalogue.get("regularizer", "safe")
    assert entry.state == ("threshold", "kl_prev") and entry.needs == ("ref_logp",)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['threshold'\]"):
        entry.make_config({"threshold": 0.3})
    sched = catalogue.get("schedule", "safe_pid")
    assert set(sched.sets(SafePIDConfig())) == {f"safe.{k}" for k in entry.state}
    assert sched.reads(SafePIDConfig()) == ("reward/mean", "kl/ref_k1_mean")


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
    term, m = _reg(SafeConfig(), mask, torch.tensor([[1.0, NAN]]), logp, torch.tensor([[-9.0, INF]]))
    aggregate(term, mask, "token-mean").backward()
    assert term[0, 1] == 0 and logp.grad[0, 1] == 0 and torch.isfinite(logp.grad).all()
    assert m["kl/ref_k1_mean"].item() == pytest.approx(8.0)
    one = torch.ones(1, 1)
    narrow = _reg(SafeConfig(), one, one, torch.zeros(1, 1), torch.full((1, 1), -9.0))
    wide = _reg(SafeConfig(), pad(one, 0.0), pad(one), pad(torch.zeros(1, 1)), pad(torch.full((1, 1), -9.0), INF))
    torch.testing.assert_close(narrow[0], wide[0][:, :1])
    assert torch.all(wide[0][:, 1:] == 0)
    for k in narrow[1]:
        torch.testing.assert_close(narrow[1][k], wide[1][k])


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


def test_closed_loop_schedule_values_routed_into_the_regulariser_state():
    # The controller's values, routed as the composer does ("safe.threshold" -> state["threshold"]), drive the
    # penalty: a KL far above tau is penalised, and kl_prev carries the previous steps' KL average.
    state, values = safe_pid({}, {}, cfg=SafePIDConfig(), step=1, total_steps=4)
    for step in (2, 3):
        state, values = safe_pid(
            state, {"reward/mean": 0.5, "kl/ref_k1_mean": 5.0}, cfg=SafePIDConfig(), step=step, total_steps=4
        )
    routed = {k.partition(".")[2]: v for k, v in values.items()}
    assert routed["kl_prev"] == pytest.approx(0.5 + 0.45)  # 0.9 x 0.5 + 0.1 x 5
    _, m, _ = _safe(5.0, 1.9, state=routed)
    assert m["safe/kl_short"].item() == pytest.approx(0.9 * 0.95 + 0.5)
    assert m["safe/active"].item() == 1.0 and m["safe/penalty"].item() > 0


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"safe coef must be >= 0, got -1"):
        SafeConfig(coef=-1)
    with pytest.raises(ValueError, match=r"kl_decay must be in \[0, 1\), got 1.0"):
        SafeConfig(kl_decay=1.0)
