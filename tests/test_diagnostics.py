"""entrolab.diagnostics on hand-computable inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entrolab import diagnostics as dg
from entrolab import ops
from entrolab.methods.forking import ForkingTokensConfig, forking_tokens


def entropy_of(probs: torch.Tensor) -> float:
    return float(-(probs * probs.log()).sum())


# ----------------------------------------------------------------------------------------------------------
# token entropy
# ----------------------------------------------------------------------------------------------------------
def test_entropy_profile_averages_over_sequences_reaching_each_position():
    # Row 0 has 3 tokens, row 1 has 1: position 0 averages both rows, positions 1-2 only row 0; the padded
    # values (inf, nan) never leak in; position 3 is reached by nobody -> NaN, count 0.
    entropy = torch.tensor([[1.0, 2.0, 4.0, 7.0], [3.0, math.inf, math.nan, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    profile, count = dg.entropy_profile(entropy, mask)
    assert profile[:3].tolist() == [2.0, 2.0, 4.0]
    assert math.isnan(profile[3])
    assert count.tolist() == [2.0, 1.0, 1.0, 0.0]


def test_token_entropy_stats_hand_values():
    entropy = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0], [99.0] * 5])
    mask = torch.tensor([[1] * 5, [1] * 5, [0] * 5])  # the third row is all padding
    stats = dg.token_entropy_stats(entropy, mask, threshold=6.5, rho=0.2)
    assert stats["entropy/mean"] == pytest.approx(4.5)
    assert stats["entropy/seq_mean"] == pytest.approx(4.5)  # (2 + 7) / 2
    assert stats["entropy/frac_above_threshold"] == pytest.approx(0.3)  # 7, 8, 9 of 10 tokens
    # top 20 % of N = 10 tokens: k = int(2 + 0.9999) = 2 -> the 2nd largest valid entropy, 8 (not 99).
    assert stats["entropy/top_rho_threshold"] == 8.0


def test_top_rho_threshold_is_the_forking_filter_threshold():
    gen = torch.Generator().manual_seed(0)
    entropy = torch.rand(4, 9, generator=gen)
    mask = (torch.rand(4, 9, generator=gen) > 0.3).float()
    tau = dg.top_rho_threshold(entropy, mask, rho=0.3)
    cfg = ForkingTokensConfig(rho=0.3)
    _, kept, _ = forking_tokens(mask, cfg=cfg, entropy=entropy, old_logp=None, advantages=None, truncated=None)
    assert torch.equal(kept.bool(), mask.bool() & (entropy >= tau))
    with pytest.raises(ValueError, match="rho"):
        dg.top_rho_threshold(entropy, mask, rho=0.0)


# ----------------------------------------------------------------------------------------------------------
# Cov(log pi, A) and the predicted entropy change
# ----------------------------------------------------------------------------------------------------------
def test_cov_logp_adv_hand_example_and_broadcast():
    # logp = [0, -1, -2, -3] (mean -1.5), A = [1, 1, -1, -1] (mean 0): products 1.5, 0.5, 0.5, 1.5 -> mean 1.
    logp = torch.tensor([[0.0, -1.0], [-2.0, -3.0]])
    adv_tok = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    mask = torch.ones(2, 2)
    assert dg.cov_logp_adv(logp, adv_tok, mask) == pytest.approx(1.0)
    # [B, 1] advantages broadcast over the tokens exactly like the [B, T] ones
    assert dg.cov_logp_adv(logp, torch.tensor([[1.0], [-1.0]]), mask) == pytest.approx(1.0)


def test_cov_logp_adv_ignores_padding_values():
    logp = torch.tensor([[0.0, -1.0, -math.inf], [-2.0, -3.0, math.nan]])  # padding holds inf / nan
    adv = torch.tensor([[1.0], [-1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert dg.cov_logp_adv(logp, adv, mask) == pytest.approx(1.0)


def test_cov_matches_research_note_per_token_example():
    # hand-computed: per-token products [1.1594, 0.5716, -1.7310, -1.1594, -0.5716, 1.7310];
    # their mean (the covariance) is 0 by the example's symmetry.
    p = torch.tensor([0.9, 0.5, 0.05, 0.9, 0.5, 0.05])
    adv = torch.tensor([1.0, 1, 1, -1, -1, -1])
    mask = torch.ones(1, 6)
    per_token = ops.centred_product(p.log().view(1, 6), adv.view(1, 6), mask)
    assert per_token.flatten().tolist() == pytest.approx([1.1594, 0.5716, -1.7310, -1.1594, -0.5716, 1.7310], abs=1e-4)
    assert dg.cov_logp_adv(p.log().view(1, 6), adv.view(1, 6), mask) == pytest.approx(0.0, abs=1e-7)


def test_entropy_change_prediction_hand_values():
    logp = torch.tensor([[0.0], [-1.0], [-2.0], [-3.0]])
    adv = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    out = dg.entropy_change_prediction(logp, adv, torch.ones(4, 1), lr=0.1)
    assert out == pytest.approx({"cov/logp_adv": 1.0, "entropy/predicted_delta": -0.1})
    with pytest.raises(ValueError, match="form"):
        dg.entropy_change_prediction(logp, adv, torch.ones(4, 1), lr=0.1, form="adam")


def _one_state_batch(probs: list[float], counts: list[int], adv_per_action: list[float]):
    """A batch whose sampled tokens follow ``probs`` exactly (action a appears counts[a] times), so the
    batch covariance equals the covariance under pi of the identity (Cui et al., arXiv:2505.22617, Lemma 1)."""
    logp = torch.tensor([math.log(probs[a]) for a, c in enumerate(counts) for _ in range(c)], dtype=torch.float64)
    adv = torch.tensor([adv_per_action[a] for a, c in enumerate(counts) for _ in range(c)], dtype=torch.float64)
    return logp.view(-1, 1), adv.view(-1, 1), torch.ones(len(logp), 1)


@pytest.mark.parametrize("form", ["natural", "vanilla"])
def test_entropy_change_prediction_matches_the_exact_softmax_change(form):
    # One state, pi = [1/2, 1/4, 1/4], sampled tokens [0, 0, 1, 2] (empirical distribution = pi).
    probs, eta = [0.5, 0.25, 0.25], 1e-5
    adv_a = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    z = torch.tensor(probs, dtype=torch.float64).log()
    pi = torch.softmax(z, -1)
    step = adv_a if form == "natural" else pi * adv_a  # natural PG: dz = eta A; softmax PG: dz = eta pi A
    exact = entropy_of(torch.softmax(z + eta * step, -1)) - entropy_of(pi)
    logp, adv, mask = _one_state_batch(probs, [2, 1, 1], adv_a.tolist())
    pred = dg.entropy_change_prediction(logp, adv, mask, lr=eta, form=form)["entropy/predicted_delta"]
    assert pred == pytest.approx(exact, rel=1e-4)  # first order: the relative error is O(eta)
    assert pred < 0  # the likely action (log pi high) has a positive advantage on average here


# ----------------------------------------------------------------------------------------------------------
# entropy–performance law
# ----------------------------------------------------------------------------------------------------------
def test_fit_entropy_law_recovers_known_coefficients():
    h = np.linspace(0.05, 1.5, 30)
    law = dg.fit_entropy_law(h, -0.6 * np.exp(h) + 0.9)
    assert (law.a, law.b, law.r2, law.ceiling, law.n) == pytest.approx((0.6, 0.9, 1.0, 0.3, 30))
    noisy = -0.6 * np.exp(h) + 0.9 + np.random.default_rng(0).normal(0, 0.005, h.size)
    law = dg.fit_entropy_law(h, noisy)
    assert law.a == pytest.approx(0.6, abs=1e-2) and law.b == pytest.approx(0.9, abs=1e-2)
    assert 0.99 < law.r2 < 1.0
    assert law.predict([0.0]).tolist() == pytest.approx([law.ceiling])


def test_fit_entropy_law_drops_non_finite_points_and_rejects_degenerate_input():
    h = [0.1, 0.5, math.nan, 1.0]
    law = dg.fit_entropy_law(h, [-0.6 * math.exp(x) + 0.9 if math.isfinite(x) else 0.0 for x in h])
    assert (law.a, law.b, law.n) == pytest.approx((0.6, 0.9, 3))
    with pytest.raises(ValueError, match="two distinct"):
        dg.fit_entropy_law([0.3, 0.3], [0.1, 0.2])
    # every R equal: a = 0, R^2 undefined
    law = dg.fit_entropy_law([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert law.a == pytest.approx(0.0, abs=1e-12) and math.isnan(law.r2)


# ----------------------------------------------------------------------------------------------------------
# pass@k, support, answers
# ----------------------------------------------------------------------------------------------------------
def test_pass_at_k_helpers_are_the_shared_ones():
    assert dg.pass_at_k is ops.pass_at_k
    assert dg.passk_from_counts is ops.passk_from_counts
    assert dg.majority_at_k is ops.majority_at_k
    assert dg.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # hand-computed: 1 - C(3,2)/C(5,2)


def test_support_change_reproduces_the_invisible_leash_numbers():
    # methods_reward.md §16: P = 2388, E = 48, S = 175 (and some O) at k = n.
    base = [3] * 2388 + [0] * 48 + [1] * 175 + [0] * 10
    trained = [5] * 2388 + [2] * 48 + [0] * 175 + [0] * 10
    s = dg.support_change(base, trained, n_base=8)
    assert (s.preserved, s.expanded, s.shrunk, s.out_of_support, s.k) == (2388, 48, 175, 10, 8)
    assert s.srr == pytest.approx(0.9317, abs=1e-4)
    assert s.ndr == pytest.approx(0.0197, abs=1e-4)
    assert s.sds == pytest.approx(0.0386, abs=1e-4)
    assert s.nscr == pytest.approx(-0.0486, abs=1e-4)
    assert s.expansion == tuple(range(2388, 2388 + 48))
    assert s.shrinkage == tuple(range(2436, 2436 + 175))


def test_support_change_at_smaller_budget_uses_pass_at_k_probabilities():
    # n = 2. Problem 0: base 1/2 right, trained 0 -> P(shrunk within k=1) = 1/2, within k=2 = 1.
    # Problem 1: base 0, trained 2/2 -> expanded with probability 1 at any k.
    # Problem 2: base 2/2, trained 1/2 -> at k=1 shrunk with probability 1/2, preserved 1/2; at k=2 preserved.
    base, trained = [1, 0, 2], [0, 2, 1]
    k1 = dg.support_change(base, trained, n_base=2, k=1)
    assert (k1.preserved, k1.expanded, k1.shrunk, k1.out_of_support) == pytest.approx((0.5, 1.0, 1.0, 0.5))
    assert k1.shrinkage == (0, 2) and k1.expansion == (1,)
    k2 = dg.support_change(base, trained, n_base=2)
    assert (k2.preserved, k2.expanded, k2.shrunk, k2.out_of_support) == (1.0, 1.0, 1.0, 0.0)
    assert k2.shrinkage == (0,) and k2.expansion == (1,)
    with pytest.raises(ValueError, match="k must be"):
        dg.support_change(base, trained, n_base=2, n_trained=4, k=3)
    with pytest.raises(ValueError, match="different problems"):
        dg.support_change(base, trained[:2], n_base=2)
    assert math.isnan(dg.support_change([0], [0], n_base=2).srr)


def test_answer_entropy_and_format_errors():
    assert dg.answer_entropy(["A", "A", "B", "C"]) == pytest.approx(1.0397, abs=1e-4)
    assert dg.answer_entropy(["7", "7", "7"]) == 0.0
    with_errors = ["A", None, None, "A"]
    assert dg.answer_entropy(with_errors, "bucket") == pytest.approx(math.log(2))  # {A: 2, no answer: 2}
    assert dg.answer_entropy(with_errors, "drop") == 0.0  # only A
    assert dg.answer_entropy(with_errors, "distinct") == pytest.approx(1.0397, abs=1e-4)  # {A: 2, 1, 1}
    assert dg.answer_entropy([None, None], "drop") == 0.0
    assert dg.answer_entropy([], "bucket") == 0.0
    assert dg.mean_answer_entropy([["A", "B"], ["C", "C"]]) == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError, match="format_errors"):
        dg.answer_entropy(["A"], "ignore")


# ----------------------------------------------------------------------------------------------------------
# effective rank
# ----------------------------------------------------------------------------------------------------------
def test_effective_rank_known_values():
    assert dg.effective_rank(torch.diag(torch.tensor([3.0, 1.0])), center=False) == pytest.approx(1.7548, abs=1e-4)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    equal_rank3 = 2.5 * q[:, :3] @ q[:, 3:6].T  # three equal singular values
    assert dg.effective_rank(equal_rank3, center=False) == pytest.approx(3.0)
    rank1 = torch.outer(torch.arange(1.0, 6.0), torch.tensor([1.0, -2.0, 0.5]))
    assert dg.effective_rank(rank1, center=False) == pytest.approx(1.0)
    # N orthonormal rows, centred: I - 11^T/N has N - 1 unit singular values and one zero
    assert dg.effective_rank(torch.eye(5)) == pytest.approx(4.0)
    assert dg.effective_rank(torch.eye(5), center=False) == pytest.approx(5.0)
    assert dg.effective_rank(torch.zeros(3, 4)) == 0.0
    assert dg.effective_rank(7.0 * equal_rank3, center=False) == pytest.approx(3.0)  # scale invariant
    with pytest.raises(ValueError, match="matrix"):
        dg.effective_rank(torch.zeros(2, 3, 4))


def test_pool_hidden_mean_and_last():
    hidden = torch.arange(12.0).view(2, 3, 2)  # [B=2, T=3, d=2]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert dg.pool_hidden(hidden, mask, "mean").tolist() == [[1.0, 2.0], [6.0, 7.0]]
    assert dg.pool_hidden(hidden, mask, "last").tolist() == [[2.0, 3.0], [6.0, 7.0]]
    assert dg.pool_hidden(hidden, torch.zeros(2, 3), "last").tolist() == [[0.0, 0.0], [0.0, 0.0]]


# ----------------------------------------------------------------------------------------------------------
# metrics rows
# ----------------------------------------------------------------------------------------------------------
ROWS = [
    {"step": 0, "eval/pass@1": 0.1},
    {
        "step": 1,
        "clip/frac_low": 0.1,
        "clip/frac_high": 0.0,
        "len/mean": 10.0,
        "len/max": 20,
        "len/truncated_frac": 0.0,
    },
    {"step": 2, "clip/frac_low": 0.3, "clip/frac_high": math.nan, "len/mean": 14.0, "len/max": 32},
    {
        "step": 3,
        "clip/frac_low": 0.2,
        "clip/frac_high": 0.4,
        "len/mean": 12.0,
        "len/max": 25,
        "len/truncated_frac": 0.5,
    },
]


def test_metric_series_skips_missing_and_non_finite():
    steps, values = dg.metric_series(ROWS, "clip/frac_high")
    assert steps.tolist() == [1.0, 3.0] and values.tolist() == [0.0, 0.4]
    assert dg.metric_series(ROWS, "nope")[0].size == 0


def test_clip_fractions_and_length_summary():
    clip = dg.clip_fractions(ROWS)
    assert clip == pytest.approx(
        {"clip/frac_low_mean": 0.2, "clip/frac_low_final": 0.2, "clip/frac_high_mean": 0.2, "clip/frac_high_final": 0.4}
    )
    lens = dg.length_summary(ROWS)
    assert lens == pytest.approx(
        {"len/mean_mean": 12.0, "len/mean_final": 12.0, "len/max": 32.0, "len/truncated_frac_mean": 0.25}
    )
    assert all(math.isnan(v) for v in dg.clip_fractions([{"step": 0}]).values())


def test_docstring_examples():
    import doctest

    assert doctest.testmod(dg, extraglobs={"torch": torch, "np": np}).failed == 0
