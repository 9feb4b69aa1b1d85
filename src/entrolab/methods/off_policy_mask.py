"""DeepSeek-V3.2's off-policy sequence masking (arXiv:2512.02556 eq. 9; TRL ``off_policy_mask_threshold``).

``ppo_clip_opmask`` is PPO-clip with the tokens of negative-advantage sequences that drifted too far from the
policy masked out. It is a policy loss and not a token filter because its KL is to the *current* policy,
which token filters never see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.registry import register


@dataclass(frozen=True)
class OffPolicyMaskConfig:
    """Options of the off-policy sequence mask and of the PPO-clip surrogate it masks."""

    threshold: float = 0.5
    """delta: a negative-advantage sequence is dropped when its mean log(pi_old / pi_theta) exceeds it (TRL
    ``off_policy_mask_threshold``; the paper gives no value, 0.5 is TRL's documented example)."""
    eps_low: float = 0.2
    """PPO lower clip."""
    eps_high: float = 0.2
    """PPO upper clip."""
    dual_clip_c: float | None = None
    """Dual-clip bound for A < 0; None turns it off (TRL's GRPO loss has none)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"ppo_clip_opmask threshold must be a finite number >= 0, got {self.threshold}")
        PPOClipConfig(self.eps_low, self.eps_high, self.dual_clip_c)  # validates the clip options


def off_policy_sequence_mask(
    advantages: torch.Tensor, logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, threshold: float
) -> torch.Tensor:
    """DeepSeek-V3.2 eq. 9 (TRL ``get_off_policy_mask``): False on the tokens of sequences with A < 0 and
    mean_t (behaviour_logp - logp) > threshold, and on padding.  ``[B, T]`` bool; logp is read detached."""
    keep = mask.bool()  # [B, T]
    kl = torch.where(keep, behaviour_logp - logp.detach(), 0.0)  # [B, T]
    kl = torch.nan_to_num(kl, nan=0.0)  # TRL: an unscored token gives no KL evidence
    seq_kl = kl.sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    return ((adv >= 0) | (seq_kl <= threshold)) & keep  # [B, T]


@register(
    "policy_loss",
    "ppo_clip_opmask",
    config=OffPolicyMaskConfig,
    paper="arXiv:2512.02556",
    metrics=(
        "clip/frac_low",
        "clip/frac_high",
        "clip/frac_dual",
        "ratio/mean",
        "kl/approx_old",
        "opsm/frac_masked",
        "opsm/frac_masked_seqs",
    ),
)
def ppo_clip_opmask(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: OffPolicyMaskConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip with DeepSeek-V3.2's off-policy sequence masking (OPSM) of far-off-policy negative sequences.

    Paper: DeepSeek-V3.2, arXiv:2512.02556, eq. 9: with pi_old the policy that sampled o_i,

        M_i,t = 0 if A_i,t < 0 and (1/|o_i|) sum_t log(pi_old(o_t) / pi_theta(o_t)) > delta, else 1
        L_t = M_i,t * L^PPO_t       (M detached; zero-weight: the aggregation's denominator keeps the tokens)

    Args:
        logp: ``[B, T]`` current log-probs pi_theta (carry the gradient; the KL reads them detached).
        old_logp: ``[B, T]`` pi_old: the sampler's log-probs by default (the paper's and TRL's
            ``sampling_per_token_logps``); the trainer's recomputation when a method asks for ``rollout_logp``.
        advantages: ``[B, 1]`` or ``[B, T]``.  mask: ``[B, T]`` 1 on tokens that count.
        cfg: :class:`OffPolicyMaskConfig`.  entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0 or M is 0. Metric keys: those of ``ppo_clip``
        (``clip/frac_low``, ``clip/frac_high``, ``clip/frac_dual``, ``ratio/mean``, ``kl/approx_old``) before
        the mask, ``opsm/frac_masked`` (tokens with M = 0) and ``opsm/frac_masked_seqs`` (such sequences among
        the non-empty ones).

    Differences from the paper / released code:
        As TRL (``off_policy_mask_threshold``; NaN log-prob differences count 0; A = 0 is kept). A policy loss,
        not a token filter: the KL is to the current policy. TRL compares with the vLLM log-probs when it has
        them and its PPO ratio with its recomputed ones; here both use ``old_logp``, which is the sampler's
        unless another chosen method (``rollout_is``) asks for ``rollout_logp``, and then the KL misses the
        sampler mismatch (use ``rollout_is`` for that part). The threshold default 0.5 is TRL's example.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
        >>> old = torch.log(torch.tensor([[1.0, 1.0], [0.5, 0.5]]))  # row 0: mean KL log 2 > 0.5
        >>> loss, m = ppo_clip_opmask(logp, old, torch.tensor([[-1.0], [-1.0]]), torch.ones(2, 2),
        ...                           cfg=OffPolicyMaskConfig(threshold=0.5))
        >>> loss.tolist(), m["opsm/frac_masked_seqs"].item()
        ([[0.0, 0.0], [1.0, 1.0]], 0.5)
    """
    pcfg = PPOClipConfig(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip_c=cfg.dual_clip_c)
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=pcfg)
    keep = off_policy_sequence_mask(advantages, logp, old_logp, mask, cfg.threshold)  # [B, T]
    loss = torch.where(keep, loss, 0.0)  # [B, T]
    with torch.no_grad():
        valid = mask.bool()
        dropped = valid & ~keep  # [B, T]
        metrics["opsm/frac_masked"] = ops.masked_mean(dropped.to(loss.dtype), valid)
        metrics["opsm/frac_masked_seqs"] = ops.masked_mean(dropped.any(-1).to(loss.dtype), valid.any(-1))
    return loss, metrics
