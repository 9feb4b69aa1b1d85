"""Policy losses that keep every token's gradient: CISPO clips the importance weight (not the update) and SAPO
replaces the hard clip by a smooth sigmoid gate.

Both return the *unreduced* per-token loss ``[B, T]`` (lower is better); the trainer reduces it with
``aggregate``. Entries where ``mask`` is 0 are exactly 0 and their inputs are never read, so padding may hold
any value (inf/nan included). The log-ratio is clamped to +-``ops.LOG_RATIO_CLAMP`` before exp, as verl does
(TRL does not clamp; the two agree wherever |log pi - log pi_old| <= 20).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

CispoBounds = Literal["paper", "trl"]


def _sanitised(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, clamped log-ratio, advantages), each ``[B, T]`` and 0 where ``mask`` is 0 (garbage never read)."""
    keep = mask.bool()  # [B, T]
    logp = torch.where(keep, logp, 0.0)  # [B, T]
    log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    return logp, log_ratio, torch.where(keep, advantages, 0.0)


@dataclass(frozen=True)
class CISPOConfig:
    """Options of CISPO's clipped importance weight."""

    eps_low: float | None = None
    """Lower bound 1 - eps_low of the weight; None: no lower bound (the paper: "a large eps_low"). verl
    ``clip_ratio_low`` (its default 0.2 does clip at 0.8; its CISPO example sets 10, i.e. no bound)."""
    eps_high: float = 0.2
    """bounds="paper": the weight is capped at 1 + eps_high (verl ``clip_ratio_high``, default 0.2; the paper
    tunes it, value unpublished). bounds="trl": the cap itself, TRL's ``epsilon_high`` (eps_max; TRL
    recommends 5.0 after ScaleRL, arXiv:2510.13786)."""
    bounds: CispoBounds = "paper"
    """"paper": sg(clip(r, 1 - eps_low, 1 + eps_high)) (MiniMax-M1's r-hat, verl). "trl": sg(min(r, eps_high))."""

    def __post_init__(self) -> None:
        if self.bounds not in get_args(CispoBounds):
            raise ValueError(f"cispo bounds must be one of {list(get_args(CispoBounds))}, got {self.bounds!r}")
        if self.eps_low is not None and not self.eps_low >= 0:
            raise ValueError(f"cispo eps_low must be >= 0 or None, got {self.eps_low}")
        if not self.eps_high > 0:
            raise ValueError(f"cispo eps_high must be > 0, got {self.eps_high}")
        if self.bounds == "trl" and self.eps_low is not None:
            raise ValueError(f"cispo bounds='trl' has no lower bound: eps_low must be None, got {self.eps_low}")


@register(
    "policy_loss",
    "cispo",
    config=CISPOConfig,
    paper="arXiv:2506.13585",
    metrics=("clip/frac_high", "cispo/frac_clipped", "ratio/mean", "kl/approx_old"),
)
def cispo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: CISPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO: REINFORCE with a clipped, stop-gradient importance weight, so no token loses its gradient.

    Paper: MiniMax-M1, arXiv:2506.13585, §3.1 (the CISPO objective and its clipped weight r-hat). With
    r = exp(logp - old_logp):

        w = sg(clip(r, 1 - eps_low, 1 + eps_high))        (bounds="paper"; no lower bound if eps_low is None)
        w = sg(min(r, eps_high))                          (bounds="trl")
        L = -w A logp                                     (gradient -w A dlogp on every token)

    The paper averages over all tokens of the batch (``token-mean``), as TRL (``loss_type="cispo"``
    normalises by the accumulated batch's token count) and verl's default do.

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`CISPOConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (masked means over tokens):
        ``clip/frac_high`` fraction with A > 0 and r above the cap (TRL ``cispo_clip_ratio``);
        ``cispo/frac_clipped`` fraction whose weight was clipped at either bound, any A (verl
        ``actor/pg_clipfrac``); ``ratio/mean`` mean of r; ``kl/approx_old`` mean of old_logp - logp (verl
        ``actor/ppo_kl``).

    Differences from the paper / released code:
        The paper sets no lower bound (a large eps_low); that is eps_low=None here, whereas verl's default
        ``clip_ratio_low=0.2`` clips the weight from below at 0.8 unless the run sets it (its CISPO example
        sets 10). The paper does not publish eps_high; the default 0.2 is verl's. TRL reads ``epsilon_high`` as
        the cap on r itself and has no lower bound (bounds="trl"): TRL epsilon_high=5.0 is eps_high=4.0 here
        with bounds="paper". Left unset, TRL's epsilon_high falls back to ``epsilon`` = 0.2, a cap of 0.2 that
        scales every on-policy gradient by 0.2. TRL's ``delta`` (two-sided clip) does not apply to CISPO.
        The paper's token mask M (its unified formulation) is not implemented: with M = 1 it is CISPO.

    Example:
        >>> cfg = CISPOConfig(eps_high=0.2)
        >>> logp = torch.log(torch.tensor([[0.6, 0.25, 0.5]]))
        >>> old = torch.log(torch.tensor([[0.4, 0.5, 0.5]]))
        >>> loss, m = cispo(logp, old, torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3), cfg=cfg)
        >>> [round(x, 4) for x in loss[0].tolist()]
        [0.613, -0.6931, 1.3863]
        >>> round(m["clip/frac_high"].item(), 4), round(m["cispo/frac_clipped"].item(), 4)
        (0.3333, 0.3333)
    """
    logp, log_ratio, adv = _sanitised(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)  # [B, T]
    if cfg.bounds == "trl":
        low, high = None, cfg.eps_high
    else:
        low, high = (None if cfg.eps_low is None else 1.0 - cfg.eps_low), 1.0 + cfg.eps_high
    weight = ratio.clamp(min=low, max=high).detach()  # [B, T]
    loss = -weight * adv * logp  # [B, T]

    with torch.no_grad():
        above = ratio > high  # [B, T]
        clipped = above if low is None else above | (ratio < low)  # [B, T]
        metrics = {
            "clip/frac_high": ops.masked_mean((above & (adv > 0)).to(ratio.dtype), mask),
            "cispo/frac_clipped": ops.masked_mean(clipped.to(ratio.dtype), mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@dataclass(frozen=True)
class SAPOConfig:
    """Temperatures of SAPO's soft gate (the paper's values for Qwen3-30B-A3B-Base; verl and TRL defaults)."""

    tau_pos: float = 1.0
    """Gate temperature where A > 0. verl ``actor.tau_pos``, TRL ``sapo_temperature_pos``."""
    tau_neg: float = 1.05
    """Gate temperature where A <= 0 (the paper: tau_neg > tau_pos, as negative updates spread over the
    vocabulary). verl ``actor.tau_neg``, TRL ``sapo_temperature_neg``."""

    def __post_init__(self) -> None:
        if not self.tau_pos > 0:
            raise ValueError(f"sapo tau_pos must be > 0, got {self.tau_pos}")
        if not self.tau_neg > 0:
            raise ValueError(f"sapo tau_neg must be > 0, got {self.tau_neg}")


@register(
    "policy_loss",
    "sapo",
    config=SAPOConfig,
    paper="arXiv:2511.20347",
    metrics=("sapo/gate_weight", "ratio/mean", "kl/approx_old"),
)
def sapo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SAPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO: the ratio passes a temperature-controlled sigmoid gate instead of a hard clip, per token.

    Paper: Soft Adaptive Policy Optimization, arXiv:2511.20347 (the soft gate f and its objective). With
    r = exp(logp - old_logp) and tau = tau_pos where A > 0, tau_neg elsewhere:

        f(r) = sigmoid(tau (r - 1)) * 4 / tau
        L = -f(r) A                                       (gradient -4 s (1 - s) r A dlogp, s = sigmoid(tau (r - 1)))

    On-policy (r = 1) the gradient weight 4 s (1 - s) is 1, the plain policy gradient; it decays smoothly as r
    leaves 1, faster for larger tau. The paper averages per sequence, then over sequences
    (``seq-mean-token-mean``); verl applies that aggregation whatever ``loss_agg_mode`` says, TRL
    (``loss_type="sapo"``) uses its ``grpo`` normalisation, the same.

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`SAPOConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (masked means over tokens):
        ``sapo/gate_weight`` mean of 4 s (1 - s), the gate's factor on the policy gradient (1 on-policy);
        ``ratio/mean`` mean of r; ``kl/approx_old`` mean of old_logp - logp (verl ``actor/ppo_kl``; verl's
        ``pg_clipfrac`` is a constant 0 for SAPO and has no counterpart).

    Differences from the paper / released code:
        None in the loss: verl and TRL implement the same gate and temperatures. verl ignores the configured
        ``loss_agg_mode`` for SAPO and always uses seq-mean-token-mean; TRL's ``grpo`` normalisation divides by
        every row of the micro-batch, fully padded ones included, while ``aggregate`` counts rows with a valid
        token unless ``num_seqs`` is passed. TRL builds the temperatures with ``torch.where`` on Python floats,
        so in fp64 they are rounded to fp32 (1.05 -> 1.0499999523). TRL's
        ``importance_sampling_level="sequence"`` (one ratio per sequence) is not covered here.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.5, 0.9]]))
        >>> old = torch.log(torch.tensor([[0.5, 0.25, 0.6]]))
        >>> loss, m = sapo(logp, old, torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3), cfg=SAPOConfig())
        >>> [round(x, 4) for x in loss[0].tolist()]
        [-2.0, -2.9242, 2.3936]
        >>> round(m["sapo/gate_weight"].item(), 4)
        0.9069
    """
    _, log_ratio, adv = _sanitised(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)  # [B, T]
    tau = torch.where(adv > 0, adv.new_tensor(cfg.tau_pos), adv.new_tensor(cfg.tau_neg))  # [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0))  # [B, T]
    loss = -gate * (4.0 / tau) * adv  # [B, T]

    with torch.no_grad():
        metrics = {
            "sapo/gate_weight": ops.masked_mean(4.0 * gate * (1.0 - gate), mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics
