"""SPEAR's covariance-based token clipping (Qin et al., arXiv:2509.22601): Clip-Cov with a wide, busy band.

SPEAR keeps entropy from collapsing while it imitates its own past successes by detaching the gradient of a
random 2 % of the tokens whose covariance Cov_i = (A_i - mean A)(logp_i - mean logp) lies in (1, 40) — the
Clip-Cov rule of arXiv:2505.22617 with a 100x larger ratio and a wider band. The curriculum, replay buffer
and intrinsic rewards of SPEAR are other axes (schedules, shapers) and not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register


@dataclass(frozen=True)
class SpearCovClipConfig:
    """Options of SPEAR's covariance clipping (README values)."""

    ratio: float = 0.02
    """Fraction of the N valid tokens detached, at least 1 when > 0 (SPEAR README clip_cov_ratio)."""
    cov_lb: float = 1.0
    """Candidates have cov_lb < Cov < cov_ub (README clip_cov_lb)."""
    cov_ub: float = 40.0
    """README clip_cov_ub."""
    generator: torch.Generator | None = None
    """Random source of the subset; None uses torch's global RNG (as the released torch.randperm)."""

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"spear_cov_clip ratio must be in [0, 1], got {self.ratio}")
        if not self.cov_lb < self.cov_ub:
            raise ValueError(f"spear_cov_clip needs cov_lb < cov_ub, got {self.cov_lb} and {self.cov_ub}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise ValueError(f"spear_cov_clip generator must be a torch.Generator or None, got {self.generator!r}")


@register(
    "token_filter",
    "spear_cov_clip",
    config=SpearCovClipConfig,
    paper="arXiv:2509.22601",
    metrics=("filter/frac_cov_detached",),
)
def spear_cov_clip(
    mask: torch.Tensor,
    *,
    cfg: SpearCovClipConfig,
    entropy: torch.Tensor | None,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    truncated: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Weight 0 on a random ``ratio`` share of the valid tokens with cov_lb < Cov < cov_ub (SPEAR's Clip-Cov).

    Paper: SPEAR, arXiv:2509.22601 (entropy control by covariance-based clipping, after Clip-Cov,
    arXiv:2505.22617). With Cov_i = (A_i - mean A)(old_logp_i - mean old_logp) over the N valid tokens:
    I = uniform subset of size max(1, floor(ratio N)) of {i : lb < Cov_i < ub}; weight_i = 0 for i in I.
    Zero-weight: the tokens stay in the denominator, as the released ``L * corr`` with corr = 0.

    Args:
        mask: ``[B, T]`` valid tokens.  cfg: :class:`SpearCovClipConfig`.  entropy: unused.
        old_logp: ``[B, T]`` rollout log-probs (stand in for the current ones).
        advantages: ``[B, 1]`` or ``[B, T]``.  truncated: unused.

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: weight 0 on detached tokens, else 1; mask unchanged.
        Metric key: ``filter/frac_cov_detached`` (detached / valid tokens).

    Differences from the paper / released code:
        SPEAR's code uses verl's ``clip_cov`` policy loss per micro-batch with the current log-probs and skips
        tokens PPO already clips; a filter sees rollout-time tensors of the whole minibatch (the same selection
        with one epoch and one micro-batch, up to those PPO-clipped tokens, whose gradient is 0 anyway). The
        replay-loss copies of the options (``*_replay``) are commented out in the released code, so one set is
        used. Pair with ``ppo_clip`` eps 0.2 / 0.28 and ``seq-mean-token-sum-norm`` as SPEAR's Dr.BoT.

    Example:
        >>> old_logp = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]]))
        >>> adv = torch.tensor([[4.0, 4, 4, -4, -4, -4]])  # Cov = 4 * [1.16, .57, -1.73, -1.16, -.57, 1.73]
        >>> cfg = SpearCovClipConfig(ratio=0.5, generator=torch.Generator().manual_seed(0))
        >>> w, m, s = spear_cov_clip(torch.ones(1, 6), cfg=cfg, entropy=None, old_logp=old_logp,
        ...                          advantages=adv, truncated=None)
        >>> w.tolist()  # candidates {0, 1, 5} (Cov 4.64, 2.29, 6.92); budget 3 takes them all
        [[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]
    """
    keep = mask.bool()
    cov = ops.centred_product(ops.upcast(advantages), ops.upcast(old_logp), keep)  # [B, T]
    candidates = keep & (cov > cfg.cov_lb) & (cov < cfg.cov_ub)  # [B, T]
    n_valid = int(keep.sum())
    budget = max(int(cfg.ratio * n_valid), 1) if cfg.ratio > 0 and n_valid > 0 else 0
    selected = ops.random_subset_mask(candidates, budget, cfg.generator)  # [B, T]
    weight = (~selected).to(torch.float32)  # [B, T]
    return weight, mask, {"filter/frac_cov_detached": ops.masked_mean(selected.to(torch.float32), mask)}
