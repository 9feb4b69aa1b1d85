"""Token filters: decide which tokens enter the loss, by mask-out (leave the denominator) or weight."""

from __future__ import annotations

import torch

from entrolab import ops
from entrolab.registry import register


@register(
    "token_filter",
    "overlong_filter",
    paper="arXiv:2503.14476",
    metrics=("filter/frac_masked_tokens", "filter/frac_truncated"),
)
def overlong_filter(
    mask: torch.Tensor,
    *,
    cfg: None,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    truncated: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Overlong filtering (DAPO): drop every token of a truncated response from the loss (mask-out).

    Paper: DAPO, arXiv:2503.14476, §3.4 (overlong filtering: mask the loss of truncated samples). The new
    mask is m'_it = m_it * (1 - truncated_i); the tokens leave the aggregation's denominator too.

    Args:
        mask: ``[B, T]`` response mask, bool or float.
        cfg: None (no options).
        entropy: ``[B, T]``, unused.  old_logp: ``[B, T]``, unused.
        advantages: ``[B, 1]`` | ``[B, T]``, unused.
        truncated: ``[B]`` bool, True for a response cut at the length budget (no EOS).

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``; weight is all ones (float32), mask has mask's dtype. Metric
        keys: ``filter/frac_masked_tokens`` (tokens dropped / tokens in the given mask) and
        ``filter/frac_truncated`` (truncated sequences / B).

    Differences from the paper / released code:
        As TRL ``mask_truncated_completions=True`` (verl has no built-in equivalent). Truncated responses
        still count in their group's advantage statistics, as in TRL; they are only left out of the loss.
        Callers passing minibatch-wide ``num_tokens`` / ``num_seqs`` to ``aggregate`` must count them with
        the filtered mask.

    Example:
        >>> cut = torch.tensor([False, True])
        >>> w, m, stats = overlong_filter(torch.ones(2, 3), cfg=None, entropy=None, old_logp=None,
        ...                               advantages=None, truncated=cut)
        >>> m.tolist(), stats["filter/frac_masked_tokens"].item()
        ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], 0.5)
    """
    cut = truncated.bool().unsqueeze(-1)  # [B, 1]
    kept = torch.where(cut, torch.zeros_like(mask), mask)  # [B, T]
    weight = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)  # [B, T]
    before = mask.to(torch.float32)  # [B, T]
    metrics = {
        "filter/frac_masked_tokens": ops.masked_mean(cut.to(torch.float32).expand_as(before), before),
        "filter/frac_truncated": truncated.to(torch.float32).mean(),
    }
    return weight, kept, metrics
