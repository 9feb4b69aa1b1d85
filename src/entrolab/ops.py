"""Shared tensor maths, written once: masked statistics, entropy and log-probs from logits, group statistics.

Shapes: B sequences, P prompts, G samples per prompt (B = P * G, groups found by ``group_id``), T response tokens,
V vocabulary. Masks are float or bool ``[B, T]`` with 1 on response tokens that count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch

Scope = Literal["micro_batch", "batch"]
"""Where a method's statistics come from: the micro-batch it is given, or the whole optimisation minibatch."""
LOG_RATIO_CLAMP = 20.0
"""|log pi - log pi_old| (and |log pi_ref - log pi|) is clamped to this before exp, as verl does."""


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1. Masked entries contribute an exact zero even when ``x`` is inf/nan."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (0 where the mask is empty)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of ``x`` over the masked entries (population variance unless ``unbiased``)."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_sum((x - mean) ** 2, mask)
    return var / (n - 1).clamp(min=1) if unbiased else var / n.clamp(min=1)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 for numerically safe softmax maths; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full-distribution entropy H = logsumexp(z) - sum softmax(z) z, in fp32 or wider.  [..., V] -> [...]"""
    logits = upcast(logits)
    lse = torch.logsumexp(logits, dim=-1)
    return lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in fp32 or wider.  logits [..., V], targets [...] -> [...]"""
    logits = upcast(logits)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class Groups:
    """The rows of each prompt group, found by ``group_id [B]`` (any order), as a ``[P, G]`` grid.

    ``grid(x)`` gathers ``x [B, ...]`` into ``[P, G, ...]`` (groups in increasing id, rows of a group in batch
    order); ``rows(y)`` scatters ``[P, G, ...]`` back to the batch order. For contiguous groups both are the
    identity permutation, so results are bit-identical to a plain reshape. Every group must have the same size.
    """

    def __init__(self, group_id: torch.Tensor) -> None:
        if group_id.dim() != 1:
            raise ValueError(f"group_id must be [B], got shape {tuple(group_id.shape)}")
        ids, counts = torch.unique(group_id, return_counts=True)
        if counts.numel() and bool((counts != counts[0]).any()):
            sizes = dict(zip(ids.tolist(), counts.tolist(), strict=True))
            raise ValueError(f"every group must have the same number of samples, got sizes {sizes}")
        self.num_groups = int(ids.numel())
        self.size = int(counts[0]) if counts.numel() else 0
        self.order = torch.sort(group_id, stable=True).indices  # [B] rows grouped, batch order inside a group
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)  # [B]

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` -> ``[P, G, ...]``."""
        return x[self.order].reshape(self.num_groups, self.size, *x.shape[1:])

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        """``[P, G, ...]`` -> ``[B, ...]`` in the batch's own order."""
        return y.reshape(self.num_groups * self.size, *y.shape[2:])[self.inverse]


def contiguous_groups(batch_size: int, group_size: int) -> torch.Tensor:
    """``group_id [B]`` of B = P * G rows in contiguous groups of G (the order ``generate`` returns)."""
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch of {batch_size} sequences is not a whole number of groups of {group_size}")
    return torch.arange(batch_size // group_size).repeat_interleave(group_size)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def discriminator_baseline_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """N = E_{j~p}[S_j] = sum_j p_j^2 (H + log p_j), the exact policy average of the entropy discriminator
    S_j = p_j (H + log p_j) (arXiv:2602.03392), in fp32 or wider.  [..., V] -> [...]"""
    logits = upcast(logits)
    logp = torch.log_softmax(logits, dim=-1)
    p2 = torch.exp(2 * logp)
    entropy = -(logp.exp() * logp).sum(-1)
    return entropy * p2.sum(-1) + (p2 * logp).sum(-1)


def centred_product(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    x_mean: torch.Tensor | None = None,
    y_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """(x - mean x)(y - mean y) per entry, 0 where ``mask`` is 0; means over the masked entries unless given.

    The per-token covariance of Cui et al. (arXiv:2505.22617); its masked mean is the sample Cov(x, y).
    ``x`` / ``y`` broadcast to the mask's shape (e.g. advantages ``[B, 1]`` against ``[B, T]``).
    """
    keep = mask.bool()
    x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))  # [B, T]
    y = torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))  # [B, T]
    x_mean = masked_mean(x, keep) if x_mean is None else x_mean
    y_mean = masked_mean(y, keep) if y_mean is None else y_mean
    return torch.where(keep, (x - x_mean) * (y - y_mean), torch.zeros((), dtype=x.dtype, device=x.device))


def topk_mask(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``scores`` among entries where ``mask`` is 1 (all of them if fewer).

    Ties are broken by ``torch.topk``'s order; masked entries are never chosen, whatever their score.
    """
    keep = mask.bool()
    k = min(int(k), int(keep.sum()))
    out = torch.zeros(keep.numel(), dtype=torch.bool, device=keep.device)
    if k > 0:
        flat = torch.where(keep, scores, torch.full((), -torch.inf, dtype=scores.dtype, device=scores.device))
        out[flat.flatten().topk(k).indices] = True
    return out.view(keep.shape)


def random_subset_mask(candidates: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask of ``n`` entries drawn uniformly without replacement from the True ``candidates`` (all if fewer).

    As verl's Clip-Cov: candidates in row-major order, permuted by ``torch.randperm`` (the global RNG when
    ``generator`` is None), the first ``n`` kept. The RNG is used only when there are candidates and n > 0.
    """
    flat = candidates.bool().flatten()
    out = torch.zeros_like(flat)
    idx = flat.nonzero().squeeze(-1)  # [M]
    if n > 0 and idx.numel() > 0:
        perm = torch.randperm(idx.numel(), generator=generator, device=generator.device if generator else idx.device)
        out[idx[perm[:n]]] = True
    return out.view(candidates.shape)


def top_fraction_threshold(
    entropy: torch.Tensor, mask: torch.Tensor, ratio: float, selection: Literal["topk", "quantile"] = "topk"
) -> torch.Tensor:
    """tau with {H >= tau} the top-``ratio`` fraction of the valid tokens; +inf when that is no token.

    ``selection="topk"`` (the forking-tokens authors' verl code): the k-th largest valid value with
    k = int(ratio * N + 0.9999); ``"quantile"`` (TRL's ``top_entropy_quantile``): ``torch.quantile(H, 1 - ratio)``,
    linear interpolation. +inf (a 0-d tensor on ``entropy``'s device) when ratio is 0 or no token is valid.
    entropy ``[B, T]``, mask ``[B, T]`` -> 0-d tensor, fp32 or wider.

    >>> h = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 9.0]]); m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> float(top_fraction_threshold(h, m, 0.4)), float(top_fraction_threshold(h, m, 0.0))
    (0.699999988079071, inf)
    """
    values = upcast(entropy[mask.bool()])  # [N]
    k = int(values.numel() * ratio + 0.9999) if selection == "topk" else int(ratio > 0)
    if values.numel() == 0 or k == 0:
        return torch.tensor(torch.inf, device=entropy.device)
    if selection == "topk":
        return values.topk(k).values[-1]
    return torch.quantile(values, 1.0 - ratio)


def passk_from_counts(correct: Sequence[int], n: int, ks: Sequence[int] = (1, 2, 4, 8, 16)) -> dict[str, float]:
    """Mean unbiased pass@k over problems, given each problem's number of right samples out of ``n``.

    Keys ``pass@k`` for every k in ``ks`` with k <= n; 0.0 for every k when there is no problem.

    >>> passk_from_counts([0, 4, 2], n=4, ks=(1, 4, 8))
    {'pass@1': 0.5, 'pass@4': 0.6666666666666666}
    """
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / max(len(correct), 1) for k in ks if k <= n}


def majority_at_k(answers: Sequence[Sequence[str | None]], rights: Sequence[Sequence[bool]]) -> float:
    """maj@n: fraction of problems whose most frequent non-None answer is a right one (ties: first seen).

    ``answers[p][i]`` is sample i's extracted answer to problem p (None on a format error), ``rights[p][i]``
    whether it was right; a problem with no answer at all counts as a miss.

    >>> majority_at_k([["4", "4", "5"], [None, None], ["1", "2"]], [[True, True, False], [False, False], [False, True]])
    0.3333333333333333
    """
    hits = 0
    for ans, ok in zip(answers, rights, strict=True):
        votes = Counter(a for a in ans if a is not None)
        if not votes:
            continue
        top = votes.most_common(1)[0][0]
        hits += any(r for a, r in zip(ans, ok, strict=True) if a == top)
    return hits / max(len(answers), 1)
