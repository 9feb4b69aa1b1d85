"""Covariance-based entropy control (Cui et al., arXiv:2505.22617): Clip-Cov and KL-Cov.

Both rank tokens by the centred product Cov_i = (A_i - mean A)(logp_i - mean logp) over the N valid tokens
(the term that drives entropy down: the paper's Lemma 1, ΔH ≈ −Cov(log π, Δz)) and restrain the few with the
largest one:
Clip-Cov detaches a random r*N of those inside a band (zero weight: they stay in the denominator), KL-Cov
adds beta*|log r| to the top k*N. ``scope="micro_batch"`` (verl) selects from the current log-probs of the
tokens given; ``scope="batch"`` (the paper) selects once per minibatch with :func:`clip_cov_stats` /
:func:`kl_cov_stats` from rollout-time tensors (old_logp stands in for logp: equal on an on-policy pass).
Clip-Cov's random subset is drawn from the run's generator, passed in (``needs=("generator",)``) to whichever
function draws: :func:`clip_cov_stats` in batch scope, the loss / filter itself otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register

_SCOPES = ("micro_batch", "batch")


def _budget(ratio: float, n_valid: int) -> int:
    """Tokens to select: max(1, floor(ratio * N)) as verl, and 0 when ratio = 0 (the method is off)."""
    return max(int(ratio * n_valid), 1) if ratio > 0 and n_valid > 0 else 0


def budget_warning(name: str, ratio: float, n_valid: int) -> str | None:
    """A warning when floor(ratio * N) < 1, so the floor of one token is all the method selects (nearly off)."""
    if ratio <= 0 or n_valid <= 0 or int(ratio * n_valid) >= 1:
        return None
    return f"{name} selects 1 of {n_valid:,} tokens (ratio {ratio:g}; ratio * N < 1: the method is nearly off)"


def _scale(name: str):
    return lambda cfg, n: budget_warning(name, cfg.ratio, n)


@dataclass(frozen=True)
class ClipCovConfig:
    """Options of Clip-Cov (the policy loss and the token filter share them)."""

    ratio: float = 2e-4
    """r: fraction of the N valid tokens detached (at least 1 when r > 0; 0 turns it off). verl clip_cov_ratio."""
    cov_lb: float = 1.0
    """omega_low: candidates have lb < Cov < ub. verl clip_cov_lb."""
    cov_ub: float = 5.0
    """omega_high. verl clip_cov_ub."""
    eps_low: float | None = None
    """None (paper): other tokens keep the plain ratio surrogate -A r. A value: verl's PPO clip on them (verl
    default 0.2, the authors' scripts 1.0) and already PPO-clipped tokens are not candidates."""
    eps_high: float | None = None
    """Upper clip of the verl variant; set together with eps_low."""
    scope: ops.Scope = "micro_batch"
    """micro_batch (verl): select per call from the current log-probs; batch (paper): once per minibatch."""

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"clip_cov ratio must be in [0, 1], got {self.ratio}")
        if not self.cov_lb < self.cov_ub:
            raise ValueError(f"clip_cov needs cov_lb < cov_ub, got cov_lb={self.cov_lb}, cov_ub={self.cov_ub}")
        if (self.eps_low is None) != (self.eps_high is None):
            raise ValueError(f"clip_cov eps_low and eps_high are set together, got {self.eps_low}, {self.eps_high}")
        if self.eps_low is not None and not (0 <= self.eps_low <= 1 and self.eps_high >= 0):
            raise ValueError(f"clip_cov needs eps_low in [0, 1] and eps_high >= 0, got {self.eps_low}, {self.eps_high}")
        if self.scope not in _SCOPES:
            raise ValueError(f"clip_cov scope must be one of {_SCOPES}, got {self.scope!r}")


def _band_subset(
    cov: torch.Tensor,
    candidates: torch.Tensor,
    cfg: ClipCovConfig,
    n_valid: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    in_band = candidates & (cov > cfg.cov_lb) & (cov < cfg.cov_ub)  # [B, T]
    return ops.random_subset_mask(in_band, _budget(cfg.ratio, n_valid), generator)


def clip_cov_stats(
    *,
    mask: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor | None,
    cfg: ClipCovConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Batch scope: the detached set of the whole minibatch, ``{"selected": bool [B, T]}`` (caller slices it).

    The random subset is drawn from ``generator`` (the run's, passed by the caller; None: torch's global RNG).
    """
    keep = mask.bool()
    cov = ops.centred_product(ops.upcast(advantages), ops.upcast(old_logp), keep)  # [B, T]
    return {"selected": _band_subset(cov, keep, cfg, int(keep.sum()), generator)}


@register(
    "policy_loss",
    "clip_cov",
    config=ClipCovConfig,
    paper="arXiv:2505.22617",
    metrics=("clip/frac_cov", "clip/frac_ppo", "cov/logp_adv", "ratio/mean", "kl/approx_old"),
    active="clip/frac_cov",
    needs=("generator",),
    stats=clip_cov_stats,
    scale=_scale("clip_cov"),
)
def clip_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: ClipCovConfig,
    entropy: torch.Tensor | None = None,
    stats: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov: detach the gradient of a random r*N of the tokens whose covariance lies in (lb, ub).

    Paper: The Entropy Mechanism of RL for Reasoning LMs, arXiv:2505.22617, §4 (Clip-Cov). With
    r = exp(logp - old_logp) and Cov_i = (A_i - mean A)(logp_i - mean logp) over the N valid tokens:

        I = uniform subset of size max(1, floor(r_clip N)) of {i : lb < Cov_i < ub}
        L_i = 0 if i in I, else -A_i r_i        (verl variant: max(-A r, -A clip(r, 1-eps_low, 1+eps_high)))

    Args:
        logp: ``[B, T]`` current log-probs of the sampled tokens (carry the gradient).
        old_logp: ``[B, T]`` behaviour-policy log-probs.  advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on valid tokens.  cfg: :class:`ClipCovConfig`.  entropy: unused.
        stats: ``{"selected": [B, T]}`` from :func:`clip_cov_stats` (scope batch, sliced like advantages) or
            None: micro_batch selects from this call's tensors; batch computes the stats from them.
        generator: the run's ``torch.Generator`` for the random subset, when this call draws it (no stats);
            None uses torch's global RNG (as verl's ``torch.randperm``).

    Returns:
        ``(loss [B, T], metrics)``, 0 where mask is 0 and on detached tokens. Metric keys: ``clip/frac_cov``
        detached fraction (verl ``pg_clipfrac``); ``clip/frac_ppo`` PPO-clipped fraction (0 without eps);
        ``cov/logp_adv`` mean of Cov_i (the sample covariance); ``ratio/mean``; ``kl/approx_old`` mean of -log r.

    Differences from the paper / released code:
        Default is the paper: no PPO clip. ``eps_low``/``eps_high`` give verl ``compute_policy_loss_clip_cov``
        (PPO clip, PPO-clipped tokens excluded from the candidates; the authors' scripts use 1 / 1). The
        paper's r*N is floored at 1 as in the code (r = 0 turns it off). verl and the paper's code select
        per micro-batch (``scope="micro_batch"``, default); batch scope selects once over the minibatch from
        rollout-time tensors, where no token is PPO-clipped yet. The log-ratio is clamped to +-20 (verl: no
        clamp here). Masked tokens never enter the means, candidates or loss. The subset is drawn from the
        generator passed in (the run's); None is torch's global RNG as verl's (seeded alike, they draw alike).

    Example:
        >>> logp = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]]))
        >>> adv = torch.tensor([[1.0, 1, 1, -1, -1, -1]])  # Cov = [1.16, .57, -1.73, -1.16, -.57, 1.73]
        >>> cfg = ClipCovConfig(ratio=2 / 6, cov_lb=0.5)
        >>> loss, m = clip_cov(logp, logp, adv, torch.ones(1, 6), cfg=cfg,
        ...                    generator=torch.Generator().manual_seed(0))  # 2 of candidates {0, 1, 5}
        >>> loss.tolist(), round(m["clip/frac_cov"].item(), 4)
        ([[0.0, -1.0, -1.0, 1.0, 1.0, 0.0]], 0.3333)
    """
    keep = mask.bool()
    log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    loss = -adv * ratio  # [B, T]
    ppo_clipped = torch.zeros_like(keep)  # [B, T]
    if cfg.eps_low is not None:
        clipped = -adv * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)  # [B, T]
        ppo_clipped = keep & (clipped > loss)
        loss = torch.maximum(loss, clipped)
    with torch.no_grad():
        cov = ops.centred_product(adv, torch.where(keep, logp, 0.0), keep)  # [B, T]
        if stats is None and cfg.scope == "batch":
            stats = clip_cov_stats(
                mask=mask, old_logp=old_logp, advantages=advantages, entropy=entropy, cfg=cfg, generator=generator
            )
        if stats is None:
            selected = _band_subset(cov, keep & ~ppo_clipped, cfg, int(keep.sum()), generator)  # [B, T]
        else:
            selected = stats["selected"].bool() & keep  # [B, T]
    loss = torch.where(selected, 0.0, loss)  # [B, T]
    with torch.no_grad():
        metrics = {
            "clip/frac_cov": ops.masked_mean(selected.to(ratio.dtype), mask),
            "clip/frac_ppo": ops.masked_mean(ppo_clipped.to(ratio.dtype), mask),
            "cov/logp_adv": ops.masked_mean(cov, mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@register(
    "token_filter",
    "clip_cov",
    config=ClipCovConfig,
    paper="arXiv:2505.22617",
    metrics=("filter/frac_cov_detached",),
    active="filter/frac_cov_detached",
    needs=("generator",),
    stats=clip_cov_stats,
    scale=_scale("clip_cov"),
)
def clip_cov_filter(
    mask: torch.Tensor,
    *,
    cfg: ClipCovConfig,
    entropy: torch.Tensor | None,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    truncated: torch.Tensor | None,
    stats: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov's detachment on its own: weight 0 on a random r*N of the tokens with lb < Cov < ub.

    Paper: arXiv:2505.22617, §4 (the set I of Clip-Cov), with Cov_i = (A_i - mean A)(old_logp_i - mean old_logp)
    over the valid tokens given. Zero-weight: L_i * 0 keeps token i in the aggregation's denominator, as the
    policy loss's ``corr = 0`` does; combine with ``ppo_clip`` (eps 1 / 1 is the authors' script setting).

    Args:
        mask: ``[B, T]`` valid tokens.  cfg: :class:`ClipCovConfig` (eps_low, eps_high and scope unused).
        entropy: ``[B, T]``, unused.  old_logp: ``[B, T]`` rollout log-probs (stand in for the current ones).
        advantages: ``[B, 1]`` | ``[B, T]``.  truncated: ``[B]``, unused.
        stats: ``{"selected": [B, T]}`` from :func:`clip_cov_stats`, or None to select from these tensors.
        generator: the run's ``torch.Generator`` for the random subset when this call draws it (no stats);
            None uses torch's global RNG.

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: weight 0 on detached tokens, mask unchanged. Metric key:
        ``filter/frac_cov_detached`` (detached / valid tokens).

    Differences from the paper / released code:
        Filters see rollout-time tensors, so Cov uses old_logp (the current log-probs coincide with them with
        one PPO epoch and one minibatch) and no token can be excluded for being PPO-clipped already (verl
        excludes those; their gradient is 0 anyway). Statistics cover the tensors given (the minibatch).

    Example:
        >>> old_logp = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]]))
        >>> adv = torch.tensor([[1.0, 1, 1, -1, -1, -1]])  # Cov = [1.16, .57, -1.73, -1.16, -.57, 1.73]
        >>> cfg = ClipCovConfig(ratio=2 / 6, cov_lb=0.5)
        >>> w, m, s = clip_cov_filter(torch.ones(1, 6), cfg=cfg, entropy=None, old_logp=old_logp,
        ...                           advantages=adv, truncated=None, generator=torch.Generator().manual_seed(0))
        >>> w.tolist(), torch.equal(m, torch.ones(1, 6))
        ([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]], True)
    """
    if stats is None:
        stats = clip_cov_stats(
            mask=mask, old_logp=old_logp, advantages=advantages, entropy=entropy, cfg=cfg, generator=generator
        )
    selected = stats["selected"].bool() & mask.bool()  # [B, T]
    weight = (~selected).to(torch.float32)  # [B, T]
    return weight, mask, {"filter/frac_cov_detached": ops.masked_mean(selected.to(torch.float32), mask)}


@dataclass(frozen=True)
class KLCovConfig:
    """Options of KL-Cov."""

    ratio: float = 2e-3
    """k: fraction of the N valid tokens penalised (at least 1 when k > 0; 0 turns it off). The paper's 7B value;
    verl kl_cov_ratio (same unit, default 2e-4 = the 32B value); PRIME-RL's k_percent is 100x this."""
    coef: float = 1.0
    """beta on |log r| (paper and the authors' scripts 1; verl's dataclass default ppo_kl_coef = 0.1)."""
    scope: ops.Scope = "micro_batch"
    """micro_batch (verl): top-k per call from the current log-probs; batch (paper): once per minibatch."""

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"kl_cov ratio must be in [0, 1], got {self.ratio}")
        if not self.coef >= 0:
            raise ValueError(f"kl_cov coef must be >= 0, got {self.coef}")
        if self.scope not in _SCOPES:
            raise ValueError(f"kl_cov scope must be one of {_SCOPES}, got {self.scope!r}")


def kl_cov_stats(
    *,
    mask: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor | None,
    cfg: KLCovConfig,
) -> dict[str, torch.Tensor]:
    """Batch scope: the penalised set of the whole minibatch, ``{"selected": bool [B, T]}`` (caller slices it)."""
    keep = mask.bool()
    cov = ops.centred_product(ops.upcast(advantages), ops.upcast(old_logp), keep)  # [B, T]
    return {"selected": ops.topk_mask(cov, keep, _budget(cfg.ratio, int(keep.sum())))}


@register(
    "policy_loss",
    "kl_cov",
    config=KLCovConfig,
    paper="arXiv:2505.22617",
    metrics=("kl/frac_cov", "kl/abs_log_ratio", "cov/logp_adv", "ratio/mean"),
    active="kl/frac_cov",
    stats=kl_cov_stats,
    scale=_scale("kl_cov"),
)
def kl_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: KLCovConfig,
    entropy: torch.Tensor | None = None,
    stats: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov: the unclipped ratio surrogate plus beta*|log r| on the top k*N tokens by covariance.

    Paper: arXiv:2505.22617, §4 (KL-Cov). With r = exp(logp - old_logp), Cov_i as in Clip-Cov:

        I = the max(1, floor(k N)) tokens of largest Cov_i
        L_i = -A_i r_i + beta |logp_i - old_logp_i| * 1[i in I]          (no PPO clipping on any token)

    Args:
        logp: ``[B, T]`` current log-probs (carry the gradient).  old_logp: ``[B, T]``.
        advantages: ``[B, 1]`` or ``[B, T]``.  mask: ``[B, T]``.  cfg: :class:`KLCovConfig`.  entropy: unused.
        stats: ``{"selected": [B, T]}`` from :func:`kl_cov_stats` (scope batch, sliced like advantages) or None.

    Returns:
        ``(loss [B, T], metrics)``, 0 where mask is 0. Metric keys: ``kl/frac_cov`` penalised fraction;
        ``kl/abs_log_ratio`` mean |log r| over valid tokens (verl ``ppo_kl``); ``cov/logp_adv`` mean Cov_i;
        ``ratio/mean``.

    Differences from the paper / released code:
        The per-token "KL" is |log r| as in both released codes (the paper writes D_KL(pi_old || pi_theta)).
        Defaults follow the paper's 7B run (k = 2e-3, beta = 1), not verl's dataclass (2e-4, 0.1). k*N is
        floored at 1 as in the code (k = 0 turns it off). Selection per micro-batch by default as verl; on an
        on-policy pass log r = 0, so the term only acts from the second minibatch or epoch on. The log-ratio
        is clamped to +-20 (verl: no clamp here).

    Example:
        >>> logp = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]]))
        >>> adv = torch.tensor([[1.0, 1, 1, -1, -1, -1]])  # Cov = [1.16, .57, -1.73, -1.16, -.57, 1.73]
        >>> loss, m = kl_cov(logp, logp - 0.1, adv, torch.ones(1, 6), cfg=KLCovConfig(ratio=2 / 6))
        >>> [round(x, 4) for x in loss[0].tolist()]  # tokens 5 and 0 get + |0.1|
        [-1.0052, -1.1052, -1.1052, 1.1052, 1.1052, 1.2052]
    """
    keep = mask.bool()
    log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    with torch.no_grad():
        cov = ops.centred_product(adv, torch.where(keep, logp, 0.0), keep)  # [B, T]
        if stats is None and cfg.scope == "batch":
            stats = kl_cov_stats(mask=mask, old_logp=old_logp, advantages=advantages, entropy=entropy, cfg=cfg)
        if stats is None:
            selected = ops.topk_mask(cov, keep, _budget(cfg.ratio, int(keep.sum())))  # [B, T]
        else:
            selected = stats["selected"].bool() & keep  # [B, T]
    loss = -adv * ratio + torch.where(selected, cfg.coef * log_ratio.abs(), 0.0)  # [B, T]
    with torch.no_grad():
        metrics = {
            "kl/frac_cov": ops.masked_mean(selected.to(ratio.dtype), mask),
            "kl/abs_log_ratio": ops.masked_mean(log_ratio.abs(), mask),
            "cov/logp_adv": ops.masked_mean(cov, mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
        }
    return loss, metrics
