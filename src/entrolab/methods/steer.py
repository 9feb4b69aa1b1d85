"""STEER: PPO with token weights that shrink the loss of tokens predicted to move entropy the most.

STEER is a policy loss, not a token filter, because its weight needs the *current* policy's probability of
the sampled token (p_t, which filters never see); everything else it reads is rollout-time. The weights
carry no gradient; the loss is dual-clip PPO times the weight (zero-weight style: the aggregation's
denominator is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.registry import register

Mapping = Literal["linear", "exp"]


@dataclass(frozen=True)
class SteerConfig:
    """Options of STEER (weights) and of the dual-clip PPO surrogate it weights."""

    weight_min: float = 0.8
    """Weight of the token with the largest |Omega| (``token_weight_min``, the paper's lambda_min)."""
    weight_max: float = 1.2
    """Weight of the token with the smallest |Omega| in linear mode (``token_weight_max``; exp mode caps at 1)."""
    mapping: Mapping = "linear"
    """linear: map |Omega| linearly onto [weight_max, weight_min]; exp: w = exp(-k |Omega|) clamped to [w_min, 1]."""
    omega_floor: float = 0.02
    """exp mode: k = -ln(weight_min) / max(Omega_max, omega_floor), as the released code."""
    eps_low: float = 0.2
    """PPO lower clip (STEER scripts 0.2)."""
    eps_high: float = 0.28
    """PPO upper clip (STEER scripts 0.28, clip-higher)."""
    dual_clip_c: float | None = 10.0
    """Dual-clip bound for A < 0 (STEER scripts ``clip_ratio_c=10``); None turns it off."""

    def __post_init__(self) -> None:
        if not 0 < self.weight_min <= self.weight_max:
            raise ValueError(f"steer needs 0 < weight_min <= weight_max, got {self.weight_min}, {self.weight_max}")
        if self.mapping not in ("linear", "exp"):
            raise ValueError(f"steer mapping must be one of ['linear', 'exp'], got {self.mapping!r}")
        if self.mapping == "exp" and not self.weight_min <= 1:
            raise ValueError(f"steer exp mapping needs weight_min in (0, 1], got {self.weight_min}")
        if not self.omega_floor > 0:
            raise ValueError(f"steer omega_floor must be > 0, got {self.omega_floor}")
        PPOClipConfig(self.eps_low, self.eps_high, self.dual_clip_c)  # validates the clip options


@torch.no_grad()
def steer_weights(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    cfg: SteerConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [B, T], |Omega| [B, T]), both 0 where mask is 0; min/max of |Omega| over the valid tokens given."""
    keep = mask.bool()  # [B, T]
    p = torch.exp(torch.where(keep, logp.detach().float(), 0.0)).clamp(1e-8, 1 - 1e-8)  # [B, T]
    p_old = torch.exp(torch.where(keep, old_logp.float(), 0.0)).clamp(1e-8, 1.0)  # [B, T]
    adv = torch.where(keep, advantages.float().expand_as(p), 0.0)  # [B, T]
    h = torch.where(keep, entropy.detach().float(), 0.0)  # [B, T]
    omega = adv / p_old * p * (1 - p) * (torch.log(p) + h)  # [B, T]
    omega = torch.where(torch.isfinite(omega) & keep, omega, 0.0).abs()  # [B, T]
    if not keep.any():
        return torch.zeros_like(omega), omega
    lo, hi = omega[keep].min(), omega[keep].max()
    if cfg.mapping == "linear":
        if hi > lo:
            w = cfg.weight_max - (omega - lo) * (cfg.weight_max - cfg.weight_min) / (hi - lo)  # [B, T]
        else:
            w = torch.full_like(omega, (cfg.weight_min + cfg.weight_max) / 2)  # [B, T]
        w = w.clamp(cfg.weight_min, cfg.weight_max)
    else:
        k = -math.log(cfg.weight_min) / torch.clamp(hi, min=cfg.omega_floor)
        w = torch.exp(-k * omega).clamp(cfg.weight_min, 1.0)  # [B, T]
    return torch.where(keep, w, 0.0), omega


@register(
    "policy_loss",
    "steer",
    config=SteerConfig,
    paper="arXiv:2510.10150",
    metrics=(
        "clip/frac_low",
        "clip/frac_high",
        "clip/frac_dual",
        "ratio/mean",
        "kl/approx_old",
        "steer/weight_mean",
        "steer/omega_mean",
    ),
    needs=("old_entropy",),
)
def steer(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SteerConfig,
    entropy: torch.Tensor | None = None,
    old_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """STEER: dual-clip PPO loss times a detached weight that falls with the token's predicted entropy change.

    Paper: STEER, arXiv:2510.10150 (token-level entropy-change reweighting); the equations are those of the
    released code (``zz-haooo/STEER`` ``compute_token_weights``). With p = pi(o_t), p_old = pi_old(o_t) and H
    the old policy's entropy at t, the first-order entropy-change proxy and the weights are

        Omega_t = | A_t / p_old * p (1 - p) (log p + H_t) |          (= r A (1 - p)(log p + H))
        linear: w_t = clamp(w_max - (Omega_t - Omega_min)(w_max - w_min) / (Omega_max - Omega_min), w_min, w_max)
                (w_t = (w_min + w_max) / 2 when Omega_max = Omega_min)
        exp:    w_t = clamp(exp(-k Omega_t), w_min, 1),  k = -ln(w_min) / max(Omega_max, omega_floor)
        L_t = w_t * L^PPO_t          (L^PPO = ppo_clip with eps_low, eps_high, dual_clip_c; w detached)

    Args:
        logp: ``[B, T]`` current log-prob of the sampled tokens (carries the gradient).
        old_logp: ``[B, T]`` rollout-time log-prob.  advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`SteerConfig`.
        entropy: ``[B, T]`` current forward pass's entropy; used (detached) only when old_entropy is None.
        old_entropy: ``[B, T]`` the rollout policy's entropy (``needs=("old_entropy",)``), as the code uses.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys: those of ``ppo_clip``
        (``clip/frac_low``, ``clip/frac_high``, ``clip/frac_dual``, ``ratio/mean``, ``kl/approx_old``), plus
        ``steer/weight_mean`` (masked mean of w) and ``steer/omega_mean`` (masked mean of |Omega|).

    Differences from the paper / released code:
        Omega_min / Omega_max are over the valid tokens of the call (one micro-batch, as the code), so the
        weights are not micro-batch invariant. Without ``old_entropy`` the current pass's entropy is used; it
        equals the old policy's on the first update of a rollout batch. Non-finite Omega is set to 0 as in
        the code. The code's defaults when the keys are absent (0.95 / 1.05) are not used.

    Example:
        >>> logp = torch.log(torch.tensor([[0.9, 0.5, 0.1]]))
        >>> loss, m = steer(logp, logp, torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3), cfg=SteerConfig(),
        ...                 old_entropy=torch.tensor([[0.3, 1.0, 2.0]]))
        >>> [round(x, 4) for x in loss[0].tolist()]
        [-1.2, -0.9881, 0.8]
    """
    if old_entropy is None and entropy is None:
        raise ValueError("policy loss 'steer' needs old_entropy (or entropy) to estimate the entropy change")
    ppo_cfg = PPOClipConfig(cfg.eps_low, cfg.eps_high, cfg.dual_clip_c)
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=ppo_cfg)
    weight, omega = steer_weights(
        logp, old_logp, advantages, mask, old_entropy if old_entropy is not None else entropy, cfg
    )
    metrics = dict(metrics)
    metrics["steer/weight_mean"] = ops.masked_mean(weight, mask)
    metrics["steer/omega_mean"] = ops.masked_mean(omega, mask)
    return loss * weight.to(loss.dtype), metrics
