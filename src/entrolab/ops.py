"""Shared tensor maths, written once: masked statistics, entropy and log-probs from logits, group statistics.

Shapes: B sequences, P prompts, G samples per prompt (B = P * G, groups contiguous), T response tokens,
V vocabulary. Masks are float or bool ``[B, T]`` with 1 on response tokens that count.
"""

from __future__ import annotations

import torch


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


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full-distribution entropy H = logsumexp(z) - sum softmax(z) z, in fp32.  [..., V] -> [...]"""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    return lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in fp32.  logits [..., V], targets [...] -> [...]"""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reshape ``[B]`` into ``[P, G]``; the B sequences hold P groups of G contiguous samples."""
    if group_size < 1 or x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} sequences is not a whole number of groups of {group_size}")
    return x.reshape(-1, group_size)


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
