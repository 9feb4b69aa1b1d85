"""Clipped-ratio policy losses: PPO-clip with DAPO's decoupled clip (clip-higher) and optional dual-clip.

Every policy loss returns the *unreduced* per-token loss ``[B, T]`` (lower is better); the trainer reduces it
with ``aggregate``. Entries where ``mask`` is 0 are exactly 0 and their inputs are never read, so padding
may hold any value (inf/nan included) without reaching the loss or its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register

"""log(pi / pi_old) is clamped to [-20, 20] before exp, as verl does; out of range its gradient is 0."""


@dataclass(frozen=True)
class PPOClipConfig:
    """Options of the clipped surrogate."""

    eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - eps_low (acts when A < 0). verl ``clip_ratio_low``."""
    eps_high: float = 0.2
    """Upper clip: the ratio is clipped at 1 + eps_high (acts when A > 0); DAPO's clip-higher uses 0.28."""
    dual_clip_c: float | None = None
    """Dual-clip bound c > 1: for A < 0 the loss is capped at -c * A. None turns it off (verl default 3.0)."""

    def __post_init__(self) -> None:
        if not 0 <= self.eps_low < 1:
            raise ValueError(f"ppo_clip eps_low must be in [0, 1), got {self.eps_low}")
        if not self.eps_high >= 0:
            raise ValueError(f"ppo_clip eps_high must be >= 0, got {self.eps_high}")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1:
            raise ValueError(f"ppo_clip dual_clip_c must be > 1 or None, got {self.dual_clip_c}")


@register(
    "policy_loss",
    "ppo_clip",
    config=PPOClipConfig,
    paper="arXiv:1707.06347",
    metrics=("clip/frac_low", "clip/frac_high", "clip/frac_dual", "ratio/mean", "kl/approx_old"),
)
def ppo_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: PPOClipConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with decoupled clip range and optional dual-clip, per token.

    Paper: PPO, arXiv:1707.06347, eq. 7 (L^CLIP); clip-higher (eps_high > eps_low) from DAPO,
    arXiv:2503.14476, §3.1; dual-clip from arXiv:1912.09729. With r = exp(logp - old_logp):

        L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))      (minimise; = -min(rA, clip(r)A))
        L = min(L, -c A)  where A < 0, if dual_clip_c = c is set

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`PPOClipConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (masked means over tokens):
        ``clip/frac_low`` fraction with A < 0 and r < 1 - eps_low (lower clip active, no gradient);
        ``clip/frac_high`` fraction with A > 0 and r > 1 + eps_high (upper clip active, no gradient);
        ``clip/frac_dual`` fraction with A < 0 and -A r > -c A, i.e. r > c (dual clip active; 0 when off);
        ``ratio/mean`` mean of r; ``kl/approx_old`` mean of old_logp - logp (k1 estimate of KL(old || new)).

    Differences from the paper / released code:
        Dual-clip is off by default; verl's ``vanilla`` loss always applies it (``clip_ratio_c=3.0``). The
        clip fractions follow TRL (``clip_ratio/low_mean``, ``clip_ratio/high_mean``); verl's
        ``pg_clipfrac`` is their sum and its ``pg_clipfrac_lower`` is ``clip/frac_dual``. ``kl/approx_old``
        is verl's ``ppo_kl`` (k1, on the clamped log-ratio). The log-ratio is clamped to +-20 as in verl
        (TRL does not clamp). Masked tokens are sanitised to log-ratio 0 and A = 0 before any arithmetic, so
        garbage padding gives an exact 0 loss and gradient (verl multiplies by the mask afterwards).

    Example:
        >>> cfg = PPOClipConfig(eps_low=0.2, eps_high=0.28)
        >>> logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
        >>> loss, m = ppo_clip(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3),
        ...                    cfg=cfg)
        >>> [round(x, 4) for x in loss[0].tolist()]
        [-1.28, 0.8, -2.0]
        >>> round(m["clip/frac_high"].item(), 4), round(m["clip/frac_low"].item(), 4)
        (0.3333, 0.3333)
    """
    keep = mask.bool()  # [B, T]
    log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)  # [B, T]
    loss = torch.maximum(unclipped, clipped)  # [B, T]
    dual = torch.zeros_like(keep)  # [B, T]
    if cfg.dual_clip_c is not None:
        dual = (adv < 0) & (loss > -adv * cfg.dual_clip_c)  # [B, T]
        loss = torch.where(dual, -adv * cfg.dual_clip_c, loss)  # [B, T]

    with torch.no_grad():
        low = (adv < 0) & (ratio < 1.0 - cfg.eps_low)  # [B, T]
        high = (adv > 0) & (ratio > 1.0 + cfg.eps_high)  # [B, T]
        metrics = {
            "clip/frac_low": ops.masked_mean(low.to(ratio.dtype), mask),
            "clip/frac_high": ops.masked_mean(high.to(ratio.dtype), mask),
            "clip/frac_dual": ops.masked_mean(dual.to(ratio.dtype), mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics
