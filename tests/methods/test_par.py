"""PAR and its shaping baselines: the note's numbers, PAR's properties, each baseline on a hand case, the exact
running statistics (Welford across batches through the schedule), the schedule's plain-float state, bad configs."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from entrolab.methods.par import (
    LscConfig,
    ParConfig,
    RelativeConfig,
    par,
    par_centered,
    par_lsc,
    par_relative_tanh,
)
from entrolab.methods.reward_transforms import (
    CeilConfig,
    RunningStatsConfig,
    SigmoidConfig,
    reward_ceil,
    reward_clip,
    reward_meanstd,
    reward_minmax,
    reward_running_stats,
    reward_sigmoid,
    reward_tanh,
    welford_combine,
)

Z85 = 1.0364333894937898  # Phi^-1(0.85)


def shape(fn, r, refs=None, cfg=None, state=None):
    """Call a shaper on rewards r (list or [B]) and optional refs [B, M]; -> (list of shaped rewards, metrics)."""
    r = torch.as_tensor(r, dtype=torch.float32)
    extra = {} if refs is None else {"ref_rewards": torch.as_tensor(refs, dtype=torch.float32)}
    if state is not None:
        extra["state"] = state
    out, m = fn(r, torch.ones(len(r), 2), cfg=cfg, group_id=None, lengths=None, truncated=None, max_length=2, **extra)
    assert out.shape == r.shape and out.dtype == r.dtype and not out.requires_grad
    return out.tolist(), m


def test_note_numbers():
    assert shape(par, [2.0], [[1.0, 3.0]], ParConfig())[0] == [0.5]  # (sigmoid(1) + sigmoid(-1)) / 2
    lsc = shape(par_lsc, [2.0], [[1.0, 3.0]], LscConfig())[0][0]  # r_85 = 2 + 1.03643 * 1 (population std)
    assert lsc == pytest.approx(-1.3400, abs=5e-5)
    sample = shape(par_lsc, [2.0], [[1.0, 3.0]], LscConfig(ref_std="sample"))[0][0]  # the old code: std sqrt(2)
    assert sample == pytest.approx(-math.log1p(math.exp(Z85 * math.sqrt(2))), rel=1e-6)  # -1.6735


def test_par_is_a_bounded_monotone_centred_win_probability():
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(6, 4, generator=g) * 3
    r = torch.linspace(-8.0, 8.0, 6)
    out = torch.tensor(shape(par, r, refs, ParConfig())[0])
    assert torch.all((out > 0) & (out < 1))
    grid = torch.linspace(-6.0, 6.0, 25)
    rising = shape(par, grid, refs[:1].expand(25, 4), ParConfig())[0]
    assert all(b > a for a, b in itertools.pairwise(rising))
    shifted = torch.tensor(shape(par, r + 7.5, refs + 7.5, ParConfig())[0])
    torch.testing.assert_close(shifted, out)
    one = shape(par, r, refs[:, :1], ParConfig())[0]  # M = 1: P(sample beats reference) = 1 / (1 + e^-(r - r_ref))
    assert one == pytest.approx(
        [1 / (1 + math.exp(-(a - b))) for a, b in zip(r.tolist(), refs[:, 0].tolist(), strict=True)]
    )


def test_par_options_and_metrics():
    refs = [[1.0, 3.0, 100.0]]
    assert shape(par, [2.0], refs, ParConfig(max_refs=2))[0] == [0.5]  # the first two references only
    k2 = shape(par, [2.0], [[1.0]], ParConfig(k=2.0))[0][0]
    assert k2 == pytest.approx(1 / (1 + math.exp(-2.0)))
    sgfc = shape(par, [5.0], [[1.0, 3.0]], ParConfig(shift=3.0))[0]  # SgFc: PAR of r - 3
    assert sgfc == [0.5]
    _, m = shape(par, [2.0, 0.0], [[1.0, 3.0], [-1.0, 0.0]], ParConfig())
    assert m["par/win_frac"].item() == 0.5 and m["par/ref_mean"].item() == 0.75  # pairs won: (2 > 1), (0 > -1)


def test_reference_baselines_on_hand_cases():
    assert shape(par_centered, [2.0, 0.0], [[1.0, 4.0], [1.0, 1.0]], RelativeConfig())[0] == [-0.5, -1.0]
    tanh = shape(par_relative_tanh, [2.0, 1.0], [[1.0, 3.0], [0.0, 0.0]], RelativeConfig())[0]
    assert tanh == pytest.approx([0.0, math.tanh(1.0)])
    assert shape(par_centered, [2.0], [[1.0, 4.0]], RelativeConfig(max_refs=1))[0] == [1.0]
    # LSC: a single reference (std 0 under either estimator) centres at it; the median centres at the mean
    for std in ("population", "sample"):
        assert shape(par_lsc, [2.0], [[2.0]], LscConfig(ref_std=std))[0][0] == pytest.approx(math.log(0.5))
    median = shape(par_lsc, [2.0], [[0.0, 4.0]], LscConfig(percentile=0.5))[0][0]
    assert median == pytest.approx(math.log(0.5))
    lsc, m = shape(par_lsc, [-5.0, 0.0, 50.0], [[1.0, 3.0]] * 3, LscConfig())
    assert all(x < 0 for x in lsc) and lsc[2] == pytest.approx(0.0, abs=1e-6)  # bounded above by 0
    assert m["par_lsc/centre_mean"].item() == pytest.approx(2 + Z85)


def test_plain_baselines_on_hand_cases():
    out, m = shape(reward_ceil, [3.0, 6.0, 5.0, -9.0], cfg=CeilConfig(ceil=5.0))
    assert out == [3.0, 5.0, 5.0, -9.0] and m["reward_ceil/capped_frac"].item() == 0.25
    assert shape(reward_sigmoid, [0.0, 1.0], cfg=SigmoidConfig(k=2.0))[0] == pytest.approx(
        [0.5, 1 / (1 + math.exp(-2))]
    )
    assert shape(reward_tanh, [0.0, -1.0])[0] == pytest.approx([0.0, math.tanh(-1.0)])


def test_running_baselines_on_hand_cases():
    # no state: only this batch, mean 2, population std 1
    out, m = shape(reward_meanstd, [1.0, 3.0], state={})
    assert out == [-1.0, 1.0] and m["reward_meanstd/batch_var"].item() == 1.0
    past = {"n": 2.0, "mean": 0.0, "m2": 8.0, "min": -2.0, "max": 2.0}  # rewards [-2, 2] seen before
    out, m = shape(reward_meanstd, [1.0, 3.0], state=past)  # all of [-2, 2, 1, 3]: mean 1, var 3.5
    assert out == pytest.approx([0.0, 2 / math.sqrt(3.5)]) and m["reward_meanstd/run_mean"].item() == 1.0
    assert m["reward_meanstd/batch_n"].item() == 2.0 and m["reward_meanstd/batch_mean"].item() == 2.0  # raw batch
    clip, m = shape(reward_clip, [1.0, 3.0, -9.0], state=past)  # all 5: mean -1, var 18.8 -> [-5.34, 3.34]
    assert clip == pytest.approx([1.0, 3.0, -1 - math.sqrt(18.8)]) and m[
        "reward_clip/clipped_frac"
    ].item() == pytest.approx(1 / 3)
    out, m = shape(reward_minmax, [1.0, 3.0], state=past)  # range [-2, 3]
    assert out == pytest.approx([0.6, 1.0]) and m["reward_minmax/run_min"].item() == -2.0
    assert shape(reward_minmax, [4.0, 4.0], state={})[0] == [0.0, 0.0]  # every reward equal: 0, not a division by 0
    assert shape(reward_meanstd, [4.0], state={})[0] == [0.0]  # one reward: std 0 -> divide by 1
    perm, _ = shape(reward_meanstd, [3.0, 1.0], state=past)
    assert perm == pytest.approx([2 / math.sqrt(3.5), 0.0])


def test_welford_combination_is_exact_over_batches():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, generator=g, dtype=torch.float64) * 3 + 1 for n in (5, 1, 8, 3, 13)]
    acc: dict[str, float] = {}
    for b in batches:
        mean = float(b.mean())
        part = {"n": float(len(b)), "mean": mean, "m2": float(((b - mean) ** 2).sum())}
        acc = welford_combine(acc, {**part, "min": float(b.min()), "max": float(b.max())})
    full = torch.cat(batches)
    assert acc["n"] == len(full) and acc["min"] == float(full.min()) and acc["max"] == float(full.max())
    assert acc["mean"] == pytest.approx(float(full.mean()), rel=1e-12)
    assert acc["m2"] / acc["n"] == pytest.approx(float(full.var(unbiased=False)), rel=1e-12)
    assert welford_combine({}, {}) == {} and welford_combine(acc, {}) == acc


@pytest.mark.parametrize("fn", [reward_meanstd, reward_clip, reward_minmax])
def test_schedule_and_shaper_reproduce_the_codes_update_then_normalise(fn):
    """Step k's shaped rewards use every reward of steps 1..k; the schedule's state is all of steps 1..k-1."""
    name = fn.__name__
    cfg = RunningStatsConfig(shaper=name)
    g = torch.Generator().manual_seed(2)
    state, observed, seen = {}, {}, []
    for step, n in enumerate((4, 6, 2, 5), start=1):
        state, values = reward_running_stats(state, observed, cfg=cfg, step=step, total_steps=4)
        assert json.loads(json.dumps(state)) == state and all(isinstance(v, float) for v in state.values())
        assert (values == {}) == (step == 1)
        r = torch.randn(n, generator=g, dtype=torch.float64) * 2 + step
        seen.append(r)
        shaped, m = fn(
            r,
            torch.ones(n, 1),
            cfg=None,
            group_id=None,
            lengths=None,
            truncated=None,
            max_length=1,
            state={k.split(".")[1]: v for k, v in values.items()},
        )  # what the composer passes
        observed = {k: float(v) for k, v in m.items()}
        everything = torch.cat(seen)
        mu, sd = everything.mean(), everything.std(unbiased=False)
        expected = {
            "reward_meanstd": (r - mu) / sd,
            "reward_clip": r.clamp(float(mu - sd), float(mu + sd)),
            "reward_minmax": (r - everything.min()) / (everything.max() - everything.min()),
        }[name]
        torch.testing.assert_close(shaped, expected, rtol=1e-12, atol=1e-12)
    resumed = json.loads(json.dumps(state))  # a checkpoint round-trip continues identically
    assert reward_running_stats(resumed, observed, cfg=cfg, step=5, total_steps=4) == reward_running_stats(
        state, observed, cfg=cfg, step=5, total_steps=4
    )
    final, values = reward_running_stats(state, observed, cfg=cfg, step=5, total_steps=4)
    assert final["n"] == 17.0 and final["m2"] == pytest.approx(
        float(torch.cat(seen).var(unbiased=False)) * 17, rel=1e-12
    )
    assert set(values) == {f"{name}.{k}" for k in ("n", "mean", "m2", "min", "max")}


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="par k must be > 0, got 0"):
        ParConfig(k=0.0)
    with pytest.raises(ValueError, match="max_refs must be None"):
        ParConfig(max_refs=0)
    with pytest.raises(ValueError, match="max_refs must be None"):
        RelativeConfig(max_refs=-1)
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 1\), got 1"):
        LscConfig(percentile=1.0)
    with pytest.raises(ValueError, match=r"ref_std must be one of \['population', 'sample'\], got 'bessel'"):
        LscConfig(ref_std="bessel")
    with pytest.raises(ValueError, match="ceil must be finite"):
        CeilConfig(ceil=float("inf"))
    with pytest.raises(ValueError, match="k must be > 0"):
        SigmoidConfig(k=-1.0)
    with pytest.raises(ValueError, match=r"shaper must be one of \['reward_meanstd', 'reward_clip', 'reward_minmax'\]"):
        RunningStatsConfig(shaper="par")
    with pytest.raises(ValueError, match="needs ref_rewards"):
        shape(par, [1.0], None, ParConfig())
    with pytest.raises(ValueError, match=r"ref_rewards must be \[B, M\] with B = 2"):
        shape(par_lsc, [1.0, 2.0], [[1.0, 2.0]], LscConfig())
    with pytest.raises(ValueError, match=r"missing \['m2', 'min', 'max'\]"):
        shape(reward_meanstd, [1.0], state={"n": 1.0, "mean": 0.0})
    with pytest.raises(ValueError, match=r"reads .*reward_clip/batch_n.* absent from the logged metrics"):
        reward_running_stats(
            {}, {"reward/mean": 0.4}, cfg=RunningStatsConfig(shaper="reward_clip"), step=2, total_steps=3
        )
