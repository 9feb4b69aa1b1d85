"""entrolab.bon: the research note's checked numbers, ties against brute-force enumeration, the bound, and N back."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
import torch

from entrolab import bon
from entrolab.bon import bon_distribution, bon_kl, bon_kl_bound, bon_win_rate, equivalent_n, kl_tilt


def uniform(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((m,), 1.0 / m, dtype=torch.float64), torch.arange(m, dtype=torch.float64)


def test_the_tilt_of_the_note():
    # p = (1/2, 1/2), r = (0, 1), beta = 1: phi = (1, e) / (1 + e), KL = E[r] - log((1 + e)/2)
    phi, kl, reward = kl_tilt(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 1.0)
    e = math.e
    assert phi.tolist() == pytest.approx([1 / (1 + e), e / (1 + e)], abs=1e-12)
    assert [round(x, 4) for x in phi.tolist()] == [0.2689, 0.7311]
    assert round(kl, 4) == 0.1109 and round(reward, 4) == 0.7311
    assert kl == pytest.approx(reward - math.log((1 + e) / 2), abs=1e-12)
    # it is the maximiser of E[r] - KL over the two-point simplex (a brute-force grid, step 1e-4)
    x = torch.linspace(1e-4, 1 - 1e-4, 9999, dtype=torch.float64)
    objective = x - (x * (2 * x).log() + (1 - x) * (2 * (1 - x)).log())
    assert round(float(x[objective.argmax()]), 4) == 0.7311


def test_the_tilt_is_exact_at_large_rewards_and_leaves_p_at_zero_reward():
    phi, kl, _ = kl_tilt(torch.tensor([0.25, 0.75]), torch.tensor([0.0, 0.0]), 0.1)
    assert phi.tolist() == pytest.approx([0.25, 0.75]) and kl == pytest.approx(0.0, abs=1e-15)
    phi, kl, reward = kl_tilt(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 1000.0, 5000.0]), 1.0)
    assert phi.tolist() == [0.0, 1.0, 0.0] and kl == pytest.approx(math.log(2)) and reward == 1000.0


def test_bon_kl_of_the_note_against_the_bound():
    bound = bon_kl_bound(4)
    assert round(bound, 6) == 0.636294 and bound == pytest.approx(math.log(4) - 0.75, abs=1e-15)
    kls = {m: bon_kl(*uniform(m), 4) for m in (2, 3, 10, 100, 1000)}
    assert round(kls[2], 4) == 0.4594 and round(kls[10], 4) == 0.6288 and round(kls[1000], 6) == 0.636294
    values = list(kls.values())
    assert values == sorted(values) and all(v <= bound for v in values)  # monotone in M, below the bound
    # M = 2 by hand: pi_4 = (1/16, 15/16)
    assert kls[2] == pytest.approx(1 / 16 * math.log(1 / 8) + 15 / 16 * math.log(15 / 8), abs=1e-14)


def brute_force(p: list[float], r: list[float], n: int) -> list[float]:
    """Enumerate every n-tuple of draws; the winner is a uniform pick among the draws with the top reward."""
    out = [0.0] * len(p)
    for draws in itertools.product(range(len(p)), repeat=n):
        weight = math.prod(p[i] for i in draws)
        best = max(r[i] for i in draws)
        winners = [i for i in draws if r[i] == best]
        for i in winners:
            out[i] += weight / len(winners)
    return out


@pytest.mark.parametrize(
    ("p", "r", "n"),
    [
        ([0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 1.0, 2.0], 2),
        ([0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 1.0, 0.0], 3),
        ([0.5, 0.0, 0.2, 0.3], [2.0, 2.0, 1.0, 3.0], 3),
        ([0.3, 0.3, 0.4], [5.0, 5.0, 5.0], 4),
    ],
)
def test_bon_distribution_with_ties_is_the_brute_force_one(p, r, n):
    pi = bon_distribution(torch.tensor(p, dtype=torch.float64), torch.tensor(r, dtype=torch.float64), n)
    assert pi.tolist() == pytest.approx(brute_force(p, r, n), abs=1e-12)
    assert float(pi.sum()) == pytest.approx(1.0, abs=1e-12)


def test_bon_distribution_by_hand_and_degenerate_cases():
    # classes {0}: F = 1/4, {1, 1}: F = 3/4, F^- = 1/4, {2}: F = 1, F^- = 3/4; N = 2
    pi = bon_distribution(torch.full((4,), 0.25), torch.tensor([0.0, 1.0, 1.0, 2.0]), 2)
    assert pi.tolist() == pytest.approx([1 / 16, 0.25, 0.25, 7 / 16], abs=1e-15)
    p, r = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), torch.tensor([3.0, 1.0, 2.0])
    assert bon_distribution(p, r, 1).tolist() == pytest.approx(p.tolist(), abs=1e-15)  # N = 1 is p
    assert bon_kl(p, r, 1) == pytest.approx(0.0, abs=1e-15) and bon_kl_bound(1) == 0.0
    assert bon_distribution(p, r, 200).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    # one tie class: BoN is p; ties never raise the KL above the distinct-reward case
    assert bon_kl(p, torch.zeros(3), 5) == pytest.approx(0.0, abs=1e-15)
    assert bon_kl(*uniform(4), 3) >= bon_kl(torch.full((4,), 0.25), torch.tensor([0.0, 1.0, 1.0, 2.0]), 3)


def test_win_rate_is_the_continuous_limit_of_the_exact_one():
    assert bon_win_rate(1) == 0.5 and bon_win_rate(4) == 0.8
    p, r = uniform(2000)
    pi = bon_distribution(p, r, 4)
    below = torch.cumsum(p, 0) - p  # F^-: P(r(Y') < r(y))
    assert float((pi * below).sum()) == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("n", [1.0, 1.5, 2.0, 4.0, 16.0, 1000.0, 1e6])
def test_equivalent_n_inverts_the_bound(n):
    assert equivalent_n(bon_kl_bound(n)) == pytest.approx(n, rel=1e-9)


def test_equivalent_n_of_an_exact_kl_is_below_n():
    assert equivalent_n(0.0) == 1.0
    assert 1.0 < equivalent_n(bon_kl(*uniform(10), 4)) < 4.0  # the exact KL is below the bound


def test_bad_inputs():
    with pytest.raises(ValueError, match="p must sum to 1"):
        bon_distribution(torch.tensor([0.5, 0.6]), torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=">= 0"):
        bon_kl(torch.tensor([1.5, -0.5]), torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="one length"):
        bon_distribution(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0, 2.0]), 2)
    with pytest.raises(ValueError, match="n >= 1"):
        bon_distribution(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="n >= 1"):
        bon_kl_bound(0)
    with pytest.raises(ValueError, match="beta > 0"):
        kl_tilt(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 0.0)
    with pytest.raises(ValueError, match="kl >= 0"):
        equivalent_n(-0.1)


def test_docstring_examples_run():
    result = doctest.testmod(bon, verbose=False)
    assert result.failed == 0 and result.attempted >= 6
