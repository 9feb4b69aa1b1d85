"""The plain supervised loss of the warm start: cross-entropy on every demonstration token (``sft_loss`` axis).

``entrolab pretrain --loss NAME`` minimises the chosen ``sft_loss``; Light-IF's ``entropy_sft`` (in
``light_if.py``) is the other one.
"""

from __future__ import annotations

import torch

from entrolab import ops
from entrolab.registry import register


@register("sft_loss", "cross_entropy", metrics=("sft/ce_mean",))
def cross_entropy(
    logp: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, *, cfg: None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level cross-entropy on the supervised tokens: CE_t = -log p(y_t).

    Paper: none (maximum likelihood on demonstrations); the objective is mean_t CE_t over the supervised tokens
    (``aggregate(loss, used, "token-mean")``), what a Hugging Face causal LM's ``loss`` computes with labels.

    Args:
        logp: ``[B, T]`` log-prob of the label tokens (carries the gradient).
        entropy: ``[B, T]``, unused.
        mask: ``[B, T]`` 1 on supervised tokens.
        cfg: unused (no options).

    Returns:
        ``(loss [B, T], used [B, T] bool, metrics)``: CE on the supervised tokens, 0 elsewhere; ``used`` is the
        mask. Metric key: ``sft/ce_mean``.

    Differences from the paper / released code:
        None: the same mean as HF's ``CrossEntropyLoss(ignore_index=-100)`` over the shifted labels.

    Example:
        >>> loss, used, m = cross_entropy(torch.log(torch.tensor([[0.5, 0.25]])), None, torch.tensor([[1.0, 0.0]]))
        >>> round(loss[0, 0].item(), 4), loss[0, 1].item(), round(m["sft/ce_mean"].item(), 4)
        (0.6931, 0.0, 0.6931)
    """
    keep = mask.bool()  # [B, T]
    ce = torch.where(keep, -logp, 0.0)  # [B, T]; exactly +0 and no gradient on the other tokens
    return ce, keep, {"sft/ce_mean": ops.masked_mean(ce.detach(), mask)}


__all__ = ["cross_entropy"]
