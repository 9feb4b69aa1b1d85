"""Random rewards: seeded determinism and resume, the empirical rate, independence from the rewards, errors."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import registry
from entrolab.methods.spurious import RandomRewardConfig, random_reward

from ._helpers import gen


def call(rewards, generator, **cfg_kw):
    b = rewards.shape[0]
    return random_reward(
        rewards,
        torch.ones(b, 2),
        cfg=RandomRewardConfig(**cfg_kw),
        group_id=None,
        lengths=None,
        truncated=None,
        max_length=2,
        generator=generator,
    )


def test_same_seed_same_draws_other_seed_other_draws():
    r = torch.zeros(256)
    a, b, c = call(r, gen(7))[0], call(r, gen(7))[0], call(r, gen(8))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.tolist()) == {0.0, 1.0}


def test_a_resumed_generator_draws_the_same_rewards():
    g = gen(3)
    call(torch.zeros(32), g)  # step 1
    state = g.get_state()  # the checkpoint
    step2 = call(torch.zeros(32), g)[0]
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(call(torch.zeros(32), resumed)[0], step2)


@pytest.mark.parametrize("rate", [0.5, 0.1, 0.9])
def test_empirical_rate_within_a_binomial_bound(rate):
    n = 20000
    out, m = call(torch.zeros(n), gen(0), rate=rate)
    bound = 5 * math.sqrt(rate * (1 - rate) / n)  # 5 sigma: fails with probability < 1e-6
    assert abs(out.mean().item() - rate) < bound
    assert m["random_reward/frac_high"].item() == pytest.approx(out.mean().item())


def test_draws_do_not_depend_on_the_rewards():
    g1, g2, g3 = gen(5), gen(5), gen(5)
    r1 = torch.zeros(64)
    r2 = torch.ones(64)
    r3 = torch.randn(64, generator=gen(1), dtype=torch.float64) * 10
    o1, o2, o3 = call(r1, g1)[0], call(r2, g2)[0], call(r3, g3)[0]
    assert torch.equal(o1, o2) and torch.equal(o1, o3.float())
    assert torch.equal(g1.get_state(), g2.get_state())  # the same stream consumed: B uniforms whatever r


def test_rate_zero_and_one_are_degenerate_with_custom_values():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    low, m0 = call(r, gen(0), rate=0.0, high=2.0, low=-1.0)
    high, m1 = call(r, gen(0), rate=1.0, high=2.0, low=-1.0)
    assert low.tolist() == [-1.0] * 4 and high.tolist() == [2.0] * 4
    assert m0["random_reward/mean"].item() == -1.0 and m1["random_reward/mean"].item() == 2.0
    assert m0["random_reward/agreement"].item() == 0.5 and m1["random_reward/agreement"].item() == 0.5
    assert call(torch.ones(4), gen(0), rate=1.0)[1]["random_reward/agreement"].item() == 1.0
    assert call(torch.ones(4), gen(0), rate=0.0)[1]["random_reward/agreement"].item() == 0.0


def test_metrics_are_the_registered_scalars_and_the_dtype_follows_the_rewards():
    out, m = call(torch.ones(8, dtype=torch.float64, requires_grad=True), gen(0))
    assert out.dtype == torch.float64 and not out.requires_grad
    assert sorted(m) == sorted(registry.lookup("reward_shaper", "random_reward").metrics)
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in m.values())
    assert call(torch.ones(8, dtype=torch.long), gen(0))[0].dtype == torch.float32
    torch.manual_seed(0)
    a = call(torch.ones(8), None)[0]  # no generator: torch's global RNG
    torch.manual_seed(0)
    assert torch.equal(a, call(torch.ones(8), None)[0])


def test_bad_config_raises():
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            RandomRewardConfig(rate=rate)
    with pytest.raises(ValueError, match="high and low must be finite"):
        RandomRewardConfig(high=float("inf"))
    with pytest.raises(ValueError, match=r"needs low < high, got low=1\.0, high=1\.0"):
        RandomRewardConfig(low=1.0)
