"""Entropy-discriminator clipping (Wang et al., arXiv:2602.03392): Clip_B and Clip_V.

Raising the logit of token k by eps changes the entropy by -eps S_k + O(eps^2), S_k = p_k (H + log p_k); a
GRPO step on a sampled token moves it by about -eta A (S_k - N), N = E_{j~p}[S_j] = sum_j p_j^2 (H + log p_j).
So penalising (A < 0) a token whose S lies far below the baseline lowers the entropy most: both rules drop
those negative-advantage tokens from the loss (mask-out); positive-advantage tokens are all kept.
Clip_B uses the batch mean of S as the baseline, Clip_V the exact vocabulary baseline N (which needs the
full logits: the caller passes it as ``vocab_baseline``, see ``ops.discriminator_baseline_from_logits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

STD_FLOOR = 1e-12
"""Below this spread of S (or D) nothing is dropped, as in the reference code."""


@dataclass(frozen=True)
class DiscriminatorClipConfig:
    """Options of Clip_B / Clip_V."""

    variant: Literal["B", "V"] = "B"
    """B: batch baseline, drop A < 0 tokens with S - mean S < -mu std S. V: vocabulary baseline, drop A < 0
    tokens with D = N - S > mu std D (at most max_frac of the tokens, the largest D first)."""
    mu: float | None = None
    """Threshold in standard deviations; None = the paper's yaml value (2.5 for B, 8.5 for V; the Clip_V class
    default in the released code is 2.0)."""
    max_frac: float = 1e-4
    """Clip_V only: cap on the fraction of valid tokens dropped (at least one token may always be dropped)."""
    drop_zero_advantage: bool = False
    """Clip_V only: True reproduces the released code, which also drops A = 0 tokens with D > mu std D."""
    scope: Literal["micro_batch", "batch"] = "batch"
    """batch (the reference, in its advantage stage): statistics over the whole minibatch via ``stats``."""

    def __post_init__(self) -> None:
        if self.variant not in ("B", "V"):
            raise ValueError(f"discriminator_clip variant must be 'B' or 'V', got {self.variant!r}")
        if self.mu is not None and not self.mu > 0:
            raise ValueError(f"discriminator_clip mu must be > 0 or None, got {self.mu}")
        if not 0 < self.max_frac <= 1:
            raise ValueError(f"discriminator_clip max_frac must be in (0, 1], got {self.max_frac}")
        if self.scope not in ("micro_batch", "batch"):
            raise ValueError(f"discriminator_clip scope must be 'micro_batch' or 'batch', got {self.scope!r}")

    @property
    def threshold(self) -> float:
        return self.mu if self.mu is not None else (2.5 if self.variant == "B" else 8.5)


def _signal(old_logp: torch.Tensor, entropy: torch.Tensor, vocab_baseline: torch.Tensor | None, variant: str):
    """S = p (H + log p) for B; D = N - S for V (not centred, as the reference).  [B, T], fp32 or wider"""
    logp = ops.upcast(old_logp)
    s = logp.exp() * (ops.upcast(entropy) + logp)  # [B, T]
    if variant == "B":
        return s
    if vocab_baseline is None:
        raise ValueError(
            "discriminator_clip variant='V' needs vocab_baseline [B, T] = sum_v p_v^2 (H + log p_v) of the behaviour "
            "policy (ops.discriminator_baseline_from_logits); the caller did not pass it"
        )
    return ops.upcast(vocab_baseline) - s


def discriminator_stats(
    *,
    mask: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    cfg: DiscriminatorClipConfig,
    vocab_baseline: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{"mean", "std", "cap"}`` of the signal over the minibatch; V drops A < 0 candidates with D >= cap."""
    keep = mask.bool()
    x = torch.where(keep, _signal(old_logp, entropy, vocab_baseline, cfg.variant), 0.0)  # [B, T]
    mean = ops.masked_mean(x, keep)
    std = ops.masked_var(x, keep).sqrt()
    cap = torch.tensor(-torch.inf, device=x.device)
    if cfg.variant == "V" and std >= STD_FLOOR:
        adv = torch.where(keep, advantages, 0.0).expand_as(x)  # [B, T]
        over = keep & (x > cfg.threshold * std)  # [B, T]
        neg = over & (adv < 0)  # [B, T]
        dropped = int((over & (adv <= 0) if cfg.drop_zero_advantage else neg).sum())
        n_valid = int(keep.sum())
        budget = max(int(cfg.max_frac * n_valid), 1)
        if dropped > cfg.max_frac * n_valid and int(neg.sum()) > budget:
            cap = torch.where(neg, x, -torch.inf).flatten().topk(budget).values[-1]
    return {"mean": mean, "std": std, "cap": cap}


@register(
    "token_filter",
    "discriminator_clip",
    config=DiscriminatorClipConfig,
    paper="arXiv:2602.03392",
    metrics=("filter/disc_frac_masked", "filter/disc_frac_masked_neg", "disc/mean", "disc/std"),
    active="filter/disc_frac_masked",
    needs=("vocab_baseline",),
    stats=discriminator_stats,
)
def discriminator_clip(
    mask: torch.Tensor,
    *,
    cfg: DiscriminatorClipConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    truncated: torch.Tensor | None,
    stats: dict[str, torch.Tensor] | None = None,
    vocab_baseline: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Drop negative-advantage tokens whose update would lower entropy most, by the entropy discriminator.

    Paper: On the Entropy Dynamics in Reinforcement Fine-Tuning of LLMs, arXiv:2602.03392, Clip_B and Clip_V
    (its entropy-discriminator clipping). With S = p(H + log p) from the behaviour policy and mean / population std over
    the valid tokens:

        Clip_B:  drop i  iff  A_i < 0  and  S_i - mean S < -mu std S
        Clip_V:  drop i  iff  A_i < 0  and  D_i = N_i - S_i > mu std D   (then only the max(1, floor(max_frac n))
                 largest D if more than a max_frac share would go)

    Args:
        mask: ``[B, T]`` valid tokens.  cfg: :class:`DiscriminatorClipConfig`.
        entropy: ``[B, T]`` behaviour-policy entropy.  old_logp: ``[B, T]`` behaviour-policy log-probs.
        advantages: ``[B, 1]`` or ``[B, T]``.  truncated: unused.
        stats: ``{"mean", "std", "cap"}`` from :func:`discriminator_stats` (scope batch) or None to compute here.
        vocab_baseline: ``[B, T]`` N = sum_v p_v^2 (H + log p_v), required for variant V.

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: mask-out (mask 0 on dropped tokens), weight all ones. Metric
        keys: ``filter/disc_frac_masked`` dropped / valid tokens; ``filter/disc_frac_masked_neg`` dropped /
        A < 0 tokens; ``disc/mean`` mean of S (B) or D (V); ``disc/std`` its population std.

    Differences from the paper / released code:
        As Trinity-RFT ``clipb_advantage`` / ``clipv_advantage`` (the authors' code), which run once on the whole
        training batch before the PPO epochs; here once per minibatch (the same with one minibatch).
        ``mu`` defaults to the paper's yaml values; ``drop_zero_advantage=True`` is the released Clip_V's
        handling of A = 0 tokens (also dropped); by default they are kept, as the method is one-sided.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
        >>> entropy = torch.tensor([[1.3, 0.9, 0.9, 0.9]])  # S = 0.5 (H - log 2) = [.30, .10, .10, .10]
        >>> adv = torch.tensor([[-1.0, -1.0, 1.0, -1.0]])
        >>> w, m, s = discriminator_clip(torch.ones(1, 4), cfg=DiscriminatorClipConfig(mu=0.5), entropy=entropy,
        ...                              old_logp=logp, advantages=adv, truncated=None)
        >>> m.tolist()  # mean S = 0.15, std 0.087: tokens 1 and 3 (A < 0, S - 0.15 < -0.043) are dropped
        [[1.0, 0.0, 1.0, 0.0]]
    """
    keep = mask.bool()
    if stats is None:
        stats = discriminator_stats(
            mask=mask,
            old_logp=old_logp,
            advantages=advantages,
            entropy=entropy,
            cfg=cfg,
            vocab_baseline=vocab_baseline,
        )
    x = torch.where(keep, _signal(old_logp, entropy, vocab_baseline, cfg.variant), 0.0)  # [B, T]
    adv = torch.where(keep, advantages, 0.0).expand_as(x)  # [B, T]
    mean, std = stats["mean"], stats["std"]
    if cfg.variant == "B":
        drop = (adv < 0) & (x - mean < -cfg.threshold * std)  # [B, T]
    else:
        target = adv <= 0 if cfg.drop_zero_advantage else adv < 0  # [B, T]
        drop = target & (x > cfg.threshold * std) & ((adv == 0) | (x >= stats["cap"]))  # [B, T]
    drop = drop & keep & (std >= STD_FLOOR)  # [B, T]
    new_mask = torch.where(drop, torch.zeros_like(mask), mask)  # [B, T]
    fdrop = drop.to(torch.float32)  # [B, T]
    metrics = {
        "filter/disc_frac_masked": ops.masked_mean(fdrop, keep),
        "filter/disc_frac_masked_neg": ops.masked_mean(fdrop, keep & (adv < 0)),
        "disc/mean": mean.detach().float(),
        "disc/std": std.detach().float(),
    }
    return torch.ones(mask.shape, dtype=torch.float32, device=mask.device), new_mask, metrics
