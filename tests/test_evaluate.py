from __future__ import annotations

import itertools
import math

import pytest

from entrolab.ops import majority_at_k, pass_at_k, passk_from_counts


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Enumerate every k-subset of n samples (c right ones) and count subsets with at least one right."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_values():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 1) == pytest.approx(1 / 16)
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))  # 5/6
    # large n stays finite and exact enough
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100), rel=1e-9)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_passk_from_counts_averages_over_problems_and_skips_k_above_n():
    out = passk_from_counts([0, 4, 2], n=4)
    assert set(out) == {"pass@1", "pass@2", "pass@4"}
    assert out["pass@1"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert out["pass@4"] == pytest.approx(2 / 3)
    assert out["pass@2"] == pytest.approx((0 + 1 + 5 / 6) / 3)


def test_majority_vote():
    answers = [["3", "3", "4", None], ["1", "2", "2", "2"], [None, None, None, None]]
    rights = [[True, True, False, False], [True, False, False, False], [False] * 4]
    assert majority_at_k(answers, rights) == pytest.approx(1 / 3)


def test_evaluate_reports_every_key_and_is_seeded(tiny):
    from entrolab.evaluate import evaluate
    from entrolab.tasks import make_task

    model, tok = tiny
    task = make_task("arithmetic", seed=0)
    a = evaluate(model, tok, task, samples=4, limit=6, max_new_tokens=12, seed=3)
    b = evaluate(model, tok, task, samples=4, limit=6, max_new_tokens=12, seed=3)
    assert a == b
    expected = {
        "accuracy",
        "mean_length",
        "format_error_rate",
        "truncated_rate",
        "entropy",
        "pass@1",
        "pass@2",
        "pass@4",
        "maj@4",
        "n_prompts",
        "samples",
    }
    assert set(a) == expected
    assert a["n_prompts"] == 6 and a["pass@1"] == pytest.approx(a["accuracy"])
    assert 0 < a["mean_length"] <= 12 and 0 < a["entropy"] <= math.log(len(tok)) + 1e-4
    # a random model almost never writes `answer: N`: its samples are format errors
    assert a["format_error_rate"] > 0.9
