"""High-entropy "forking" tokens (Wang et al., arXiv:2506.01939): train on the top-rho entropy tokens only.

``forking_tokens`` keeps the top-rho fraction of the valid tokens by entropy, ``low_entropy_tokens`` the
complement (the paper's bottom-80 % ablation). Both are token filters on the behaviour policy's entropy.
Selection ``topk`` is the authors' verl code (k = max(1, int(rho N + 0.9999)) tokens), ``quantile`` is TRL's
``top_entropy_quantile`` (H >= torch.quantile(H, 1 - rho), linear interpolation). Ties at the threshold are
all kept. ``drop="mask_out"`` (authors' code) removes the other tokens from the loss and its denominator;
``"zero_weight"`` (the paper's formula and TRL) gives them weight 0 and keeps them in the denominator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

Selection = Literal["topk", "quantile"]
Drop = Literal["mask_out", "zero_weight"]


def _check(name: str, rho: float, selection: str, drop: str, scope: str) -> None:
    if not 0 < rho <= 1:
        raise ValueError(f"{name} rho must be in (0, 1], got {rho}")
    if selection not in ("topk", "quantile"):
        raise ValueError(f"{name} selection must be 'topk' or 'quantile', got {selection!r}")
    if drop not in ("mask_out", "zero_weight"):
        raise ValueError(f"{name} drop must be 'mask_out' or 'zero_weight', got {drop!r}")
    if scope not in ("micro_batch", "batch"):
        raise ValueError(f"{name} scope must be 'micro_batch' or 'batch', got {scope!r}")


@dataclass(frozen=True)
class ForkingTokensConfig:
    """Options of the top-rho entropy filter."""

    rho: float = 0.2
    """Fraction of the valid tokens kept, by highest entropy; 1 keeps every token. verl entropy_top_ratio."""
    selection: Selection = "topk"
    """topk (the authors' code) or quantile (TRL top_entropy_quantile); they can differ by one token."""
    drop: Drop = "mask_out"
    """mask_out (the authors' code: denominator = kept tokens) or zero_weight (paper formula, TRL)."""
    scope: ops.Scope = "micro_batch"
    """micro_batch (both references): threshold over the tokens given; batch: from ``stats``, per minibatch."""

    def __post_init__(self) -> None:
        _check("forking_tokens", self.rho, self.selection, self.drop, self.scope)


@dataclass(frozen=True)
class LowEntropyTokensConfig:
    """Options of the bottom-rho entropy filter (the complement of ``forking_tokens`` with 1 - rho)."""

    rho: float = 0.8
    """Fraction of the valid tokens kept, by lowest entropy; 1 keeps every token."""
    selection: Selection = "topk"
    """How the top 1 - rho are found (see ``ForkingTokensConfig.selection``); those are dropped."""
    drop: Drop = "mask_out"
    """mask_out or zero_weight, as for ``forking_tokens``."""
    scope: ops.Scope = "micro_batch"
    """micro_batch or batch, as for ``forking_tokens``."""

    def __post_init__(self) -> None:
        _check("low_entropy_tokens", self.rho, self.selection, self.drop, self.scope)


def fraction_warning(cfg, n_valid: int) -> str | None:
    """A warning when the kept fraction is degenerate among N tokens: rho * N < 1 (the floor of one token is the
    whole selection) or a selection that keeps every token or none."""
    name = "low_entropy_tokens" if isinstance(cfg, LowEntropyTokensConfig) else "forking_tokens"
    rho = cfg.rho
    if n_valid <= 0:
        return None
    if rho >= 1.0 or rho <= 0.0:
        return f"{name} with rho={rho:g} keeps {'every token' if rho >= 1 else 'no token'}: it is no filter"
    if rho * n_valid < 1.0:
        return f"{name} keeps 1 of {n_valid:,} tokens (rho {rho:g}; rho * N < 1)"
    return None


def forking_stats(
    *, mask: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, entropy: torch.Tensor, cfg
) -> dict[str, torch.Tensor]:
    """Batch scope: ``{"threshold": tau}``, the entropy threshold over the whole minibatch."""
    if isinstance(cfg, LowEntropyTokensConfig):
        return {"threshold": ops.top_fraction_threshold(entropy, mask, 1.0 - cfg.rho, cfg.selection)}
    tau = ops.top_fraction_threshold(entropy, mask, cfg.rho, cfg.selection)
    if cfg.selection == "topk" and mask.bool().any():  # the authors' max(1, k): never an empty selection
        tau = torch.minimum(tau, ops.upcast(entropy[mask.bool()]).max())
    return {"threshold": tau}


def _apply(mask: torch.Tensor, kept: torch.Tensor, drop: str, tau: torch.Tensor) -> tuple:
    kept = kept & mask.bool()  # [B, T]
    if drop == "mask_out":
        weight = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)  # [B, T]
        new_mask = torch.where(kept, mask, torch.zeros_like(mask))  # [B, T]
    else:
        weight, new_mask = torch.where(mask.bool() & ~kept, 0.0, 1.0), mask  # [B, T] 0 on dropped valid tokens
    metrics = {
        "filter/frac_kept": ops.masked_mean(kept.to(torch.float32), mask),
        "filter/entropy_threshold": torch.nan_to_num(tau.detach().float(), posinf=0.0),
    }
    return weight, new_mask, metrics


@register(
    "token_filter",
    "forking_tokens",
    config=ForkingTokensConfig,
    paper="arXiv:2506.01939",
    metrics=("filter/frac_kept", "filter/entropy_threshold"),
    stats=forking_stats,
    scale=lambda cfg, n: fraction_warning(cfg, n),
)
def forking_tokens(
    mask: torch.Tensor,
    *,
    cfg: ForkingTokensConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor | None,
    truncated: torch.Tensor | None,
    stats: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Keep only the top-rho fraction of the valid tokens by entropy (the "forking" tokens).

    Paper: Beyond the 80/20 Rule, arXiv:2506.01939 (the DAPO objective with the indicator 1[H_it >= tau_rho],
    tau_rho the entropy above which a fraction rho of the batch's tokens lie). Kept: m'_it = m_it 1[H_it >= tau].

    Args:
        mask: ``[B, T]`` valid tokens.  cfg: :class:`ForkingTokensConfig`.
        entropy: ``[B, T]`` token entropy of the behaviour policy (detached).
        old_logp: unused.  advantages: unused.  truncated: unused.
        stats: ``{"threshold": tau}`` from :func:`forking_stats` (scope batch) or None to compute tau here.

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``. mask_out: mask 0 on dropped tokens, weight 1; zero_weight:
        weight 0 on them, mask unchanged. rho = 1 returns the mask unchanged and weight 1. Metric keys:
        ``filter/frac_kept`` (kept / valid tokens) and ``filter/entropy_threshold`` (tau; 0 if no token).

    Differences from the paper / released code:
        Both references take the entropy of the update's forward pass per micro-batch; a filter sees the
        rollout's (the same with one PPO epoch). ``topk`` ties at tau are all kept (torch.topk keeps k of them).
        The paper normalises by all tokens (``drop="zero_weight"``, as TRL); the authors' code, the default,
        by the kept ones. TRL gathers the entropies across processes; here the caller passes ``stats``.

    Example:
        >>> entropy = torch.tensor([[0.1, 2.0, 0.3, 1.5, 0.2]])
        >>> w, m, s = forking_tokens(torch.ones(1, 5), cfg=ForkingTokensConfig(rho=0.4), entropy=entropy,
        ...                          old_logp=None, advantages=None, truncated=None)
        >>> m.tolist(), s["filter/entropy_threshold"].item()  # k = int(5 * 0.4 + 0.9999) = 2
        ([[0.0, 1.0, 0.0, 1.0, 0.0]], 1.5)
    """
    if stats is None:
        stats = forking_stats(mask=mask, old_logp=old_logp, advantages=advantages, entropy=entropy, cfg=cfg)
    tau = stats["threshold"]
    return _apply(mask, entropy >= tau, cfg.drop, tau)


@register(
    "token_filter",
    "low_entropy_tokens",
    config=LowEntropyTokensConfig,
    paper="arXiv:2506.01939",
    metrics=("filter/frac_kept", "filter/entropy_threshold"),
    stats=forking_stats,
    scale=lambda cfg, n: fraction_warning(cfg, n),
)
def low_entropy_tokens(
    mask: torch.Tensor,
    *,
    cfg: LowEntropyTokensConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor | None,
    truncated: torch.Tensor | None,
    stats: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Keep only the bottom-rho fraction by entropy: the complement of the top 1 - rho (the 80/20 ablation).

    Paper: arXiv:2506.01939, ablation ("train on the bottom 80 % of tokens", which hurts). Kept:
    m'_it = m_it 1[H_it < tau_{1-rho}], tau as in ``forking_tokens`` for the fraction 1 - rho.

    Args:
        mask: ``[B, T]`` valid tokens.  cfg: :class:`LowEntropyTokensConfig`.
        entropy: ``[B, T]`` behaviour-policy entropy.  old_logp, advantages, truncated: unused.
        stats: ``{"threshold": tau_{1-rho}}`` from :func:`forking_stats` (scope batch) or None.

    Returns:
        ``(weight [B, T], mask [B, T], metrics)`` as ``forking_tokens``; with the same ``selection`` and
        rho_low = 1 - rho_top the two kept sets partition the valid tokens. Metric keys: ``filter/frac_kept``,
        ``filter/entropy_threshold`` (tau; 0 when nothing is dropped).

    Differences from the paper / released code:
        The authors released no code for the ablation; this is the exact complement of their top-k
        (no max(1, k) floor on the dropped side, so rho = 1 drops nothing).

    Example:
        >>> entropy = torch.tensor([[0.1, 2.0, 0.3, 1.5, 0.2]])
        >>> w, m, s = low_entropy_tokens(torch.ones(1, 5), cfg=LowEntropyTokensConfig(rho=0.6),
        ...                              entropy=entropy, old_logp=None, advantages=None, truncated=None)
        >>> m.tolist()
        [[1.0, 0.0, 1.0, 0.0, 1.0]]
    """
    if stats is None:
        stats = forking_stats(mask=mask, old_logp=old_logp, advantages=advantages, entropy=entropy, cfg=cfg)
    tau = stats["threshold"]
    return _apply(mask, entropy < tau, cfg.drop, tau)
