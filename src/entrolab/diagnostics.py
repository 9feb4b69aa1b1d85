"""Diagnostics of a run: token and answer entropy, Cov(log π, A), the entropy–performance law, pass@k, support
change, effective rank of hidden states, clip and length summaries. Pure functions over tensors / arrays / rows.

Nothing here changes training; the trainer, ``entrolab.report`` and notebooks call these on what a run
recorded. Shapes: B sequences, T response tokens, d hidden size; masks are float or bool ``[B, T]``.

Definitions and the formula each follows:

- **Token entropy** is the full-distribution entropy recorded while sampling (``Rollout.entropy``, nats).
- **Cov(log π, A)** (Cui et al., arXiv:2505.22617): the centred covariance over the N valid tokens,
  ``mean_i (logp_i − mean logp)(A_i − mean A)`` with population normalisation (1/N), the masked mean of
  ``ops.centred_product``; the quantity the paper plots and Clip-Cov / KL-Cov rank tokens by.
- **Predicted entropy change** (Cui et al., arXiv:2505.22617, Lemma 1 and Theorem 1): for a softmax
  policy a logit change Δz gives ΔH ≈ −Cov_{a∼π}(log π(a), Δz_a). Under natural policy gradient with step
  size η, Δz_a = η·A(a), hence ``ΔH ≈ −η·Cov(log π, A)`` (the paper's Theorem for natural PG, the default
  here); ``form="vanilla"`` uses softmax PG, Δz_a = η·π(a)·A(a), hence ``ΔH ≈ −η·Cov(log π, π·A)``.
- **Entropy–performance law** (same paper): R = −a·exp(H) + b, least squares on the basis (e^H, 1).
- **pass@k** is the unbiased estimator of Chen et al. (2021); ``pass_at_k``, ``passk_from_counts`` and
  ``majority_at_k`` are the ones of ``entrolab.ops``, re-exported.
- **Support change** ("The Invisible Leash", arXiv:2507.14843) and **answer-level entropy**: see
  :func:`support_change` and :func:`answer_entropy`.
- **Effective rank** (Roy & Vetterli; VERL, arXiv:2509.23808): exp of the Shannon entropy of the normalised
  singular values of the (row-centred) matrix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from entrolab import ops
from entrolab.ops import majority_at_k, pass_at_k, passk_from_counts

# ----------------------------------------------------------------------------------------------------------
# token entropy
# ----------------------------------------------------------------------------------------------------------


def entropy_profile(entropy: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy at each response position over the sequences that reach it.

    Args:
        entropy: ``[B, T]`` token entropies (padding values are ignored, even inf/nan).
        mask: ``[B, T]`` 1 on valid response tokens.
    Returns:
        ``(profile [T], count [T])``: ``profile[t]`` is the mean of ``entropy[:, t]`` over the ``count[t]``
        sequences whose position t is valid, NaN where ``count[t] == 0``.

    >>> p, c = entropy_profile(torch.tensor([[1.0, 3.0], [2.0, 9.0]]), torch.tensor([[1, 1], [1, 0]]))
    >>> p.tolist(), c.tolist()
    ([1.5, 3.0], [2.0, 1.0])
    """
    count = mask.to(ops.upcast(entropy).dtype).sum(0)  # [T]
    total = ops.masked_sum(ops.upcast(entropy), mask, dim=0)  # [T]
    profile = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))  # [T]
    return profile, count


def high_entropy_fraction(entropy: torch.Tensor, mask: torch.Tensor, threshold: float) -> float:
    """Fraction of the valid tokens whose entropy is strictly above ``threshold`` (0.0 with no valid token)."""
    above = (ops.upcast(entropy) > threshold).to(torch.float64)  # [B, T]
    return float(ops.masked_mean(above, mask))


def top_rho_threshold(entropy: torch.Tensor, mask: torch.Tensor, rho: float = 0.2) -> float:
    """The entropy τ such that {H ≥ τ} is the top-ρ fraction of the valid tokens.

    The same threshold the ``forking_tokens`` filter uses with ``selection="topk"`` (the authors' verl code):
    the k-th largest valid entropy with k = int(ρN + 0.9999). inf when there is no valid token.
    """
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return float(ops.top_fraction_threshold(entropy, mask, rho, "topk"))


def token_entropy_stats(
    entropy: torch.Tensor, mask: torch.Tensor, *, threshold: float | None = None, rho: float = 0.2
) -> dict[str, float]:
    """Summary of the token entropies of a batch.

    Args:
        entropy: ``[B, T]`` full-distribution token entropies. mask: ``[B, T]``.
        threshold: when given, also the fraction of valid tokens above it.
        rho: the top fraction whose threshold is reported (0.2 = the 80/20 paper's forking tokens).
    Returns:
        ``entropy/mean`` (token-weighted over valid tokens), ``entropy/seq_mean`` (mean over sequences of each
        sequence's mean), ``entropy/top_rho_threshold`` (see :func:`top_rho_threshold`) and, with a threshold,
        ``entropy/frac_above_threshold``.
    """
    ent = ops.upcast(entropy)
    has = mask.sum(-1) > 0  # [B]
    per_seq = ops.masked_mean(ent, mask, dim=-1)  # [B]
    out = {
        "entropy/mean": float(ops.masked_mean(ent, mask)),
        "entropy/seq_mean": float(per_seq[has].mean()) if bool(has.any()) else 0.0,
        "entropy/top_rho_threshold": top_rho_threshold(ent, mask, rho),
    }
    if threshold is not None:
        out["entropy/frac_above_threshold"] = high_entropy_fraction(ent, mask, threshold)
    return out


# ----------------------------------------------------------------------------------------------------------
# covariance and the entropy change it predicts
# ----------------------------------------------------------------------------------------------------------


def cov_logp_adv(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> float:
    """Cov(log π, A) over the valid tokens: mean_i (ℓ_i − mean ℓ)(A_i − mean A), population (1/N) normalisation.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens. advantages: ``[B, 1]`` or ``[B, T]``. mask: ``[B, T]``.
    """
    logp = ops.upcast(logp).detach()
    adv = ops.upcast(advantages).detach().to(logp.dtype).expand_as(logp)  # [B, T]
    return float(ops.masked_mean(ops.centred_product(logp, adv, mask), mask))


def entropy_change_prediction(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    lr: float,
    *,
    form: Literal["natural", "vanilla"] = "natural",
) -> dict[str, float]:
    """First-order prediction of the entropy change of one update (Cui et al., arXiv:2505.22617).

    ``form="natural"`` (default, the paper's natural-PG theorem): ΔH ≈ −η·Cov(log π, A).
    ``form="vanilla"`` (softmax PG): ΔH ≈ −η·Cov(log π, π·A), π = exp(logp) of the sampled token.
    The covariance is over the valid tokens of the batch, pooled across states (what the paper logs); the
    per-state expectation of the theorem is exact when every state's tokens are drawn from π.

    η is the step size *in logit space*. The trainer passes its parameter learning rate, so with a neural
    network and Adam the prediction is proportional to the true first-order change only up to an unknown
    positive scale: compare its sign and its trend over steps with the observed change, not its magnitude.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens (rollout / old policy). advantages: ``[B, 1]`` or
            ``[B, T]``. mask: ``[B, T]``. lr: η.
    Returns:
        ``cov/logp_adv`` (Cov(log π, A), whatever the form; for ``vanilla`` also ``cov/logp_prob_adv``) and
        ``entropy/predicted_delta`` (the predicted ΔH in nats).

    >>> logp = torch.tensor([[0.0], [-1.0], [-2.0], [-3.0]])
    >>> adv = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    >>> entropy_change_prediction(logp, adv, torch.ones(4, 1), lr=0.1)
    {'cov/logp_adv': 1.0, 'entropy/predicted_delta': -0.1}
    """
    if form not in ("natural", "vanilla"):
        raise ValueError(f"form must be 'natural' or 'vanilla', got {form!r}")
    cov = cov_logp_adv(logp, advantages, mask)
    out = {"cov/logp_adv": cov}
    if form == "natural":
        out["entropy/predicted_delta"] = -lr * cov
    else:
        lp = ops.upcast(logp).detach()
        weighted = lp.exp() * ops.upcast(advantages).detach().to(lp.dtype)  # [B, T]
        out["cov/logp_prob_adv"] = cov_pa = cov_logp_adv(lp, weighted, mask)
        out["entropy/predicted_delta"] = -lr * cov_pa
    return out


# ----------------------------------------------------------------------------------------------------------
# entropy–performance law
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntropyLaw:
    """R = −a·exp(H) + b fitted by least squares (Cui et al., arXiv:2505.22617)."""

    a: float
    b: float
    r2: float
    """Coefficient of determination of the fit; NaN when every R is equal."""
    n: int
    """Number of points fitted."""

    @property
    def ceiling(self) -> float:
        """The predicted performance at H = 0 (entropy exhausted): b − a."""
        return self.b - self.a

    def predict(self, entropy: Any) -> np.ndarray:
        return -self.a * np.exp(np.asarray(entropy, dtype=np.float64)) + self.b


def fit_entropy_law(entropy: Iterable[float], performance: Iterable[float]) -> EntropyLaw:
    """Fit R = −a·e^H + b to (H, R) points: ordinary least squares, linear in the basis (e^H, 1).

    Non-finite points are dropped. Raises ValueError with fewer than two distinct finite entropies.

    >>> h = np.array([0.1, 0.5, 1.0]); law = fit_entropy_law(h, -0.6 * np.exp(h) + 0.9)
    >>> round(law.a, 6), round(law.b, 6), round(law.ceiling, 6), round(law.r2, 6)
    (0.6, 0.9, 0.3, 1.0)
    """
    h = np.asarray(list(entropy), dtype=np.float64)
    r = np.asarray(list(performance), dtype=np.float64)
    if h.shape != r.shape:
        raise ValueError(f"entropy and performance need the same length, got {h.shape} and {r.shape}")
    ok = np.isfinite(h) & np.isfinite(r)
    h, r = h[ok], r[ok]
    if np.unique(h).size < 2:
        raise ValueError(f"the entropy law needs at least two distinct finite entropies, got {h.tolist()}")
    design = np.stack([-np.exp(h), np.ones_like(h)], axis=1)  # [N, 2]: R = a·(−e^H) + b·1
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    resid = r - design @ np.array([a, b])
    ss_tot = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return EntropyLaw(a=float(a), b=float(b), r2=r2, n=int(h.size))


# ----------------------------------------------------------------------------------------------------------
# support change (The Invisible Leash) and answer-level entropy
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportChange:
    """Per-problem support categories of a trained model against its base at a sampling budget k.

    Counts are expected numbers of problems (floats; whole numbers at k = n, see :func:`support_change`).
    """

    k: int
    preserved: float
    """P: both solve within k."""
    expanded: float
    """E: the trained model solves within k, the base does not."""
    shrunk: float
    """S: the base solves within k, the trained model does not."""
    out_of_support: float
    """O: neither does."""
    expansion: tuple[int, ...]
    """Indices of problems with P(expanded) ≥ 1/2 (at k = n: base count 0, trained count ≥ 1)."""
    shrinkage: tuple[int, ...]
    """Indices of problems with P(shrunk) ≥ 1/2 (at k = n: base count ≥ 1, trained count 0)."""

    @property
    def srr(self) -> float:
        """Support retention rate P/(P + S) (NaN when the base solves nothing)."""
        return _ratio(self.preserved, self.preserved + self.shrunk)

    @property
    def ndr(self) -> float:
        """Net discovery rate E/(P + E) (NaN when the trained model solves nothing)."""
        return _ratio(self.expanded, self.preserved + self.expanded)

    @property
    def sds(self) -> float:
        """Support dynamic score, the harmonic mean of SRR and NDR."""
        return _ratio(2 * self.srr * self.ndr, self.srr + self.ndr)

    @property
    def nscr(self) -> float:
        """Net support change rate (E − S)/(P + E + S)."""
        return _ratio(self.expanded - self.shrunk, self.preserved + self.expanded + self.shrunk)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else math.nan


def support_change(
    base_right: Sequence[int],
    trained_right: Sequence[int],
    n_base: int,
    n_trained: int | None = None,
    k: int | None = None,
) -> SupportChange:
    """Which problems the base solves within k samples and the trained model does not (shrinkage), and the reverse.

    "Solves within k" is the event that at least one of k samples is right. From c right out of n samples,
    its unbiased probability estimate is pass@k = 1 − C(n−c, k)/C(n, k), so with independent samples of the
    two models P(shrunk) = pass_base@k·(1 − pass_trained@k) per problem (and likewise for P, E, O); the
    returned counts sum these over problems and are unbiased estimates of the counts at budget k. At k = n
    (the default, the largest budget the samples support) pass@n = 1[c ≥ 1] and the categories are the exact
    counts of the paper ("solved" = at least one right sample). Note that "pass@k > 0" alone does not depend
    on k (it is c ≥ 1 for every k), which is why the probabilities are used.

    Args:
        base_right / trained_right: per-problem numbers of right samples, the same problems in the same order.
        n_base: samples per problem of the base; n_trained: of the trained model (default n_base).
        k: budget, 1 ≤ k ≤ min(n_base, n_trained) (default: that minimum).
    """
    n_trained = n_base if n_trained is None else n_trained
    if len(base_right) != len(trained_right):
        raise ValueError(f"base and trained counts cover different problems: {len(base_right)} vs {len(trained_right)}")
    k = min(n_base, n_trained) if k is None else k
    if not 1 <= k <= min(n_base, n_trained):
        raise ValueError(f"k must be in [1, {min(n_base, n_trained)}], got {k}")
    pb = np.array([pass_at_k(n_base, int(c), k) for c in base_right], dtype=np.float64)  # [N]
    pt = np.array([pass_at_k(n_trained, int(c), k) for c in trained_right], dtype=np.float64)  # [N]
    expand, shrink = (1 - pb) * pt, pb * (1 - pt)  # [N]
    return SupportChange(
        k=k,
        preserved=float((pb * pt).sum()),
        expanded=float(expand.sum()),
        shrunk=float(shrink.sum()),
        out_of_support=float(((1 - pb) * (1 - pt)).sum()),
        expansion=tuple(int(i) for i in np.flatnonzero(expand >= 0.5)),
        shrinkage=tuple(int(i) for i in np.flatnonzero(shrink >= 0.5)),
    )


FormatErrors = Literal["bucket", "drop", "distinct"]


def answer_entropy(answers: Sequence[str | None], format_errors: FormatErrors = "bucket") -> float:
    """Shannon entropy (nats) of the empirical distribution of final answers of one prompt's samples.

    ``answers`` are ``task.extract_answer`` strings, None for a format error. ``format_errors`` says what a
    None is: ``"bucket"`` (default) one extra answer "no answer" shared by all format errors; ``"drop"``
    left out (entropy of the answers given; 0 when none is given); ``"distinct"`` each its own answer (the
    most uncertain reading). Answers are compared as exact strings.

    >>> round(answer_entropy(["A", "A", "B", "C"]), 4)
    1.0397
    """
    if format_errors not in ("bucket", "drop", "distinct"):
        raise ValueError(f"format_errors must be 'bucket', 'drop' or 'distinct', got {format_errors!r}")
    valid = [a for a in answers if a is not None]
    counts = list(Counter(valid).values())
    n_none = len(answers) - len(valid)
    if n_none and format_errors == "bucket":
        counts.append(n_none)
    elif n_none and format_errors == "distinct":
        counts.extend([1] * n_none)
    total = sum(counts)
    return float(-sum(c / total * math.log(c / total) for c in counts)) if total else 0.0


def mean_answer_entropy(answers: Sequence[Sequence[str | None]], format_errors: FormatErrors = "bucket") -> float:
    """:func:`answer_entropy` averaged over prompts (``answers[i]`` are prompt i's samples); 0.0 with no prompt."""
    return float(np.mean([answer_entropy(a, format_errors) for a in answers])) if len(answers) else 0.0


# ----------------------------------------------------------------------------------------------------------
# effective rank of hidden states (VERL)
# ----------------------------------------------------------------------------------------------------------


def effective_rank(hidden: torch.Tensor, *, center: bool = True) -> float:
    """exp(−Σ p_i log p_i) with p = σ / Σσ, σ the singular values of ``hidden`` ``[N, d]`` (rows centred first).

    Between 1 and min(N, d) for a nonzero matrix (N − 1 bounds it after centring); 0.0 for an all-zero one.
    Rows are e.g. one final-layer hidden state per response (:func:`pool_hidden`) or a response's tokens.

    >>> round(effective_rank(torch.diag(torch.tensor([3.0, 1.0])), center=False), 4)
    1.7548
    """
    if hidden.dim() != 2:
        raise ValueError(f"effective_rank takes a matrix [N, d], got shape {tuple(hidden.shape)}")
    h = hidden.detach().to(torch.float64)
    if center:
        h = h - h.mean(0, keepdim=True)
    sigma = torch.linalg.svdvals(h)  # [min(N, d)]
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, how: Literal["mean", "last"] = "mean") -> torch.Tensor:
    """One vector per response from token hidden states ``[B, T, d]``: the mean over valid tokens, or the last
    valid token's.  -> ``[B, d]`` (zeros for a response with no valid token)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    if how == "mean":
        return ops.masked_mean(hidden, m, dim=1)
    if how == "last":
        last = (mask.sum(-1).long() - 1).clamp(min=0)  # [B]; a right-padded mask
        out = hidden[torch.arange(hidden.shape[0]), last]  # [B, d]
        return out * (mask.sum(-1) > 0).to(hidden.dtype).unsqueeze(-1)
    raise ValueError(f"how must be 'mean' or 'last', got {how!r}")


# ----------------------------------------------------------------------------------------------------------
# metrics rows (metrics.jsonl)
# ----------------------------------------------------------------------------------------------------------


def metric_series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` over the rows that carry a finite value of it, in row order."""
    pairs = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    steps = np.array([p[0] for p in pairs], dtype=np.float64)
    return steps, np.array([p[1] for p in pairs], dtype=np.float64)


def _summ(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[float, float]:
    _, v = metric_series([r for r in rows if r.get("step", 0) > 0], key)  # training steps only (not step 0)
    return (float(v.mean()), float(v[-1])) if v.size else (math.nan, math.nan)


def clip_fractions(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over training steps and last value of ``clip/frac_low`` and ``clip/frac_high`` (NaN when absent).

    Returns ``clip/frac_low_mean``, ``clip/frac_low_final``, ``clip/frac_high_mean``, ``clip/frac_high_final``.
    """
    out = {}
    for side in ("low", "high"):
        out[f"clip/frac_{side}_mean"], out[f"clip/frac_{side}_final"] = _summ(rows, f"clip/frac_{side}")
    return out


def length_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Response lengths over training steps: ``len/mean_mean`` and ``len/mean_final`` (of ``len/mean``),
    ``len/max`` (the largest ``len/max``), ``len/truncated_frac_mean``. NaN when absent."""
    mean, final = _summ(rows, "len/mean")
    _, mx = metric_series([r for r in rows if r.get("step", 0) > 0], "len/max")
    trunc, _ = _summ(rows, "len/truncated_frac")
    return {
        "len/mean_mean": mean,
        "len/mean_final": final,
        "len/max": float(mx.max()) if mx.size else math.nan,
        "len/truncated_frac_mean": trunc,
    }


__all__ = [
    "EntropyLaw",
    "SupportChange",
    "answer_entropy",
    "clip_fractions",
    "cov_logp_adv",
    "effective_rank",
    "entropy_change_prediction",
    "entropy_profile",
    "fit_entropy_law",
    "high_entropy_fraction",
    "length_summary",
    "majority_at_k",
    "mean_answer_entropy",
    "metric_series",
    "pass_at_k",
    "passk_from_counts",
    "pool_hidden",
    "support_change",
    "token_entropy_stats",
    "top_rho_threshold",
]
