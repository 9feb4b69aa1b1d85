"""AEPO's entropy-balanced policy optimisation (Dong et al., arXiv:2510.14545), the update half of AEPO.

PPO's clip zeroes the gradient of tokens whose ratio left the trust region, and those are mostly the rare,
high-entropy ones (A > 0, r > 1 + eps_high). AEPO keeps the clipped value but lets a rescaled gradient
through with a stop-gradient: -A sg(c / r) r has value -A c and gradient -A c d(log pi). Its second part,
the entropy-aware advantage, is a token weight here (``aepo_entropy_advantage``, reconstructed: the paper's
equation was not available). AEPO's rollout half (entropy pre-monitoring, branch penalty) is out of scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register


@dataclass(frozen=True)
class AEPOConfig:
    """Options of the stop-gradient clipped surrogate."""

    eps_low: float = 0.2
    """Lower clip 1 - eps_low (A < 0). AEPO's values were not recovered; these are ppo_clip's defaults."""
    eps_high: float = 0.2
    """Upper clip 1 + eps_high (A > 0)."""
    sides: Literal["high", "both"] = "high"
    """high: only the upper (high-entropy) clip passes a gradient, as the abstract states; both: also the lower
    clip with sg((1 - eps_low) / r), the symmetric form of GPPO (arXiv:2508.07629)."""

    def __post_init__(self) -> None:
        if not 0 <= self.eps_low < 1:
            raise ValueError(f"aepo eps_low must be in [0, 1), got {self.eps_low}")
        if not self.eps_high >= 0:
            raise ValueError(f"aepo eps_high must be >= 0, got {self.eps_high}")
        if self.sides not in ("high", "both"):
            raise ValueError(f"aepo sides must be 'high' or 'both', got {self.sides!r}")


@register(
    "policy_loss",
    "aepo",
    config=AEPOConfig,
    paper="arXiv:2510.14545",
    metrics=("clip/frac_low", "clip/frac_high", "ratio/mean", "kl/approx_old"),
)
def aepo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: AEPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip whose clipped tokens keep a rescaled gradient through a stop-gradient (entropy-balanced clip).

    Paper: Agentic Entropy-Balanced Policy Optimization, arXiv:2510.14545 (Entropy-Balanced Policy
    Optimization). With r = exp(logp - old_logp) and sg the stop-gradient, per token:

        L = -A sg((1 + eps_high) / r) r     if A > 0 and r > 1 + eps_high
        L = -A sg((1 - eps_low) / r) r      if A < 0 and r < 1 - eps_low    (sides="both" only)
        L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))   otherwise (PPO)

    The value always equals PPO-clip's; where PPO's gradient is 0 this one is -A c (c the clip bound).

    Args:
        logp: ``[B, T]`` current log-probs (carry the gradient).  old_logp: ``[B, T]``.
        advantages: ``[B, 1]`` or ``[B, T]``.  mask: ``[B, T]``.  cfg: :class:`AEPOConfig`.  entropy: unused.

    Returns:
        ``(loss [B, T], metrics)``, 0 where mask is 0. Metric keys: ``clip/frac_low`` (A < 0, r < 1 - eps_low),
        ``clip/frac_high`` (A > 0, r > 1 + eps_high), ``ratio/mean``, ``kl/approx_old`` (mean of -log r).

    Differences from the paper / released code:
        No code for AEPO's update was released (ARPO's repository holds the rollout only); the form follows
        the abstract ("a stop-gradient operation in the high-entropy clipping term") and GPPO, from the same
        group. ``sides="both"`` is GPPO's symmetric form (a reconstruction, not the authors' code). No dual clip.

    Example:
        >>> logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
        >>> loss, m = aepo(logp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), cfg=AEPOConfig())
        >>> loss.sum().backward()
        >>> [round(x, 4) for x in loss[0].tolist()], [round(x, 4) for x in logp.grad[0].tolist()]
        ([-1.2, 0.8], [-1.2, 0.0])
    """
    keep = mask.bool()
    log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    high = (adv > 0) & (ratio > 1.0 + cfg.eps_high)  # [B, T]
    low = (adv < 0) & (ratio < 1.0 - cfg.eps_low)  # [B, T]
    ppo = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high))  # [B, T]
    scale = torch.where(high, (1.0 + cfg.eps_high) / ratio.detach(), 1.0)  # [B, T]
    kept = high
    if cfg.sides == "both":
        scale = torch.where(low, (1.0 - cfg.eps_low) / ratio.detach(), scale)
        kept = high | low
    loss = torch.where(kept, -adv * scale * ratio, ppo)  # [B, T]
    with torch.no_grad():
        metrics = {
            "clip/frac_low": ops.masked_mean(low.to(ratio.dtype), mask),
            "clip/frac_high": ops.masked_mean(high.to(ratio.dtype), mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@dataclass(frozen=True)
class AEPOEntropyAdvantageConfig:
    """Options of the (reconstructed) entropy-aware advantage weight."""

    alpha: float = 0.1
    """alpha_H: weight = max(0, 1 + alpha z), z the batch-standardised token entropy. Paper value not recovered."""

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"aepo_entropy_advantage alpha must be >= 0, got {self.alpha}")


@register(
    "token_filter",
    "aepo_entropy_advantage",
    config=AEPOEntropyAdvantageConfig,
    paper="arXiv:2510.14545",
    reconstructed=True,
    metrics=("filter/entropy_weight_mean", "filter/entropy_weight_max"),
)
def aepo_entropy_advantage(
    mask: torch.Tensor,
    *,
    cfg: AEPOEntropyAdvantageConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor | None,
    truncated: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """RECONSTRUCTED entropy-aware advantage: scale each token's advantage by 1 + alpha * standardised entropy.

    Paper: arXiv:2510.14545 ("entropy-aware advantage estimation to prioritise learning on high-uncertainty
    tokens"); the equation was not available, so this is a reconstruction: A~_t = A_t (1 + alpha z_t), with
    z_t = (H_t - mean H) / std H over the valid tokens given. Any policy loss here is positively homogeneous
    in A (PPO: L(wA) = w L(A) for w >= 0), so the factor is returned as a token weight.

    Args:
        mask: ``[B, T]`` valid tokens.  cfg: :class:`AEPOEntropyAdvantageConfig`.
        entropy: ``[B, T]`` behaviour-policy entropy.  old_logp, advantages, truncated: unused.

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: weight max(0, 1 + alpha z), mask unchanged. Metric keys:
        ``filter/entropy_weight_mean`` and ``filter/entropy_weight_max`` over valid tokens.

    Differences from the paper / released code:
        Reconstructed from the abstract and a third-party summary; the weight is clamped at 0 so a very
        low-entropy token is never pushed against its advantage. alpha = 0 is no filter.

    Example:
        >>> w, m, s = aepo_entropy_advantage(torch.ones(1, 3), cfg=AEPOEntropyAdvantageConfig(alpha=0.5),
        ...                                  entropy=torch.tensor([[0.0, 1.0, 2.0]]), old_logp=None,
        ...                                  advantages=None, truncated=None)
        >>> [round(x, 4) for x in w[0].tolist()]  # z = [-1.2247, 0, 1.2247]
        [0.3876, 1.0, 1.6124]
    """
    keep = mask.bool()
    h = torch.where(keep, ops.upcast(entropy), 0.0)  # [B, T]
    std = ops.masked_var(h, keep).sqrt()
    z = (h - ops.masked_mean(h, keep)) / std.clamp(min=1e-8)  # [B, T]
    weight = torch.where(keep, (1.0 + cfg.alpha * z).clamp(min=0.0), 1.0)  # [B, T]
    metrics = {
        "filter/entropy_weight_mean": ops.masked_mean(weight, keep),
        "filter/entropy_weight_max": torch.where(keep, weight, 0.0).max().detach(),
    }
    return weight, mask, metrics
