"""SPEAR's covariance-based token clipping (Qin et al., arXiv:2509.22601): Clip-Cov inside SPEAR's Dr.BoT update.

SPEAR keeps entropy from collapsing while it imitates its own past successes by detaching the gradient of a
random share of the tokens whose covariance Cov_i = (A_i - mean A)(logp_i - mean logp) lies in a band: the
Clip-Cov rule of arXiv:2505.22617. The defaults are what the released scripts ran on the on-policy loss
(verl's 2e-4 in (1, 5)); the README's 0.02 in (1, 40) and the replay loss's 0.02 in (2, 60) are options. The
curriculum, replay buffer and intrinsic rewards of SPEAR are other axes (schedules, shapers) and not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.methods.covariance import budget_warning
from entrolab.registry import register


@dataclass(frozen=True)
class SpearCovClipConfig:
    """Options of SPEAR's covariance clipping (the values its released scripts ran; README values in the docs)."""

    ratio: float = 2e-4
    """Fraction of the N valid tokens detached, at least 1 when > 0 (``clip_cov_ratio``: no script sets it, so
    the config default 0.0002 ran; README 0.02)."""
    cov_lb: float = 1.0
    """Candidates have cov_lb < Cov < cov_ub (``clip_cov_lb``: default 1.0 ran; README 1.0)."""
    cov_ub: float = 5.0
    """``clip_cov_ub``: default 5.0 ran; README 40.0."""

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"spear_cov_clip ratio must be in [0, 1], got {self.ratio}")
        if not self.cov_lb < self.cov_ub:
            raise ValueError(f"spear_cov_clip needs cov_lb < cov_ub, got {self.cov_lb} and {self.cov_ub}")


@register(
    "token_filter",
    "spear_cov_clip",
    config=SpearCovClipConfig,
    paper="arXiv:2509.22601",
    metrics=("filter/frac_cov_detached",),
    active="filter/frac_cov_detached",
    needs=("generator",),
    scale=lambda cfg, n: budget_warning("spear_cov_clip", cfg.ratio, n),
)
def spear_cov_clip(
    mask: torch.Tensor,
    *,
    cfg: SpearCovClipConfig,
    entropy: torch.Tensor | None,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    truncated: torch.Tensor | None,
    generator: torch.Generator | None = None,
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
        generator: the run's ``torch.Generator`` for the random subset; None uses torch's global RNG (as the
            released ``torch.randperm``).

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: weight 0 on detached tokens, else 1; mask unchanged.
        Metric key: ``filter/frac_cov_detached`` (detached / valid tokens).

    Differences from the paper / released code:
        Defaults are what the released scripts ran, not the README: ``TencentYoutuResearch/SPEAR`` @ 7e84315,
        ``verl/recipe/spear/run_qwen*-32b_spear.sh`` and ``verl-agent/examples/*/run_*_spear.sh`` set
        ``loss_mode="clip_cov"`` and only the ``*_replay`` copies, so ``compute_policy_loss_clip_cov`` (both
        ``core_algos.py`` copies) ran the on-policy loss with the config defaults ratio 0.0002, lb 1, ub 5
        (``actor.yaml`` / ``PolicyLossConfig``; verl-agent's ``ppo_trainer.yaml`` alike): these defaults equal
        the ``clip_cov`` filter's. The README's 0.02 / 1 / 40 is ``ratio=0.02, cov_ub=40.0``. The replay
        loss's ``is_replay`` branch is live only in the verl-agent copy, with the scripts' 0.02 / 2 / 60
        (``ratio=0.02, cov_lb=2.0, cov_ub=60.0``; the verl copy comments it out, so its scripts' 0.02 / 1 / 40
        replay values are unused); entrolab has no replay loss, so one set applies. SPEAR's code runs
        verl's ``clip_cov`` policy loss per micro-batch with the current log-probs and skips tokens PPO
        already clips; a filter sees rollout-time tensors of the whole minibatch (the same selection with one
        epoch and one micro-batch, up to those PPO-clipped tokens, whose gradient is 0 anyway). The subset is
        drawn from the generator passed in, not the global RNG. Pair with ``ppo_clip`` eps 0.2 / 0.28 and
        ``seq-mean-token-sum-norm`` as SPEAR's Dr.BoT.

    Example:
        >>> old_logp = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]]))
        >>> adv = torch.tensor([[4.0, 4, 4, -4, -4, -4]])  # Cov = 4 * [1.16, .57, -1.73, -1.16, -.57, 1.73]
        >>> cfg = SpearCovClipConfig(ratio=0.5, cov_ub=40.0)  # the README's band
        >>> w, m, s = spear_cov_clip(torch.ones(1, 6), cfg=cfg, entropy=None, old_logp=old_logp, advantages=adv,
        ...                          truncated=None, generator=torch.Generator().manual_seed(0))
        >>> w.tolist()  # candidates {0, 1, 5} (Cov 4.64, 2.29, 6.92); budget 3 takes them all
        [[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]
    """
    keep = mask.bool()
    cov = ops.centred_product(ops.upcast(advantages), ops.upcast(old_logp), keep)  # [B, T]
    candidates = keep & (cov > cfg.cov_lb) & (cov < cfg.cov_ub)  # [B, T]
    n_valid = int(keep.sum())
    budget = max(int(cfg.ratio * n_valid), 1) if cfg.ratio > 0 and n_valid > 0 else 0
    selected = ops.random_subset_mask(candidates, budget, generator)  # [B, T]
    weight = (~selected).to(torch.float32)  # [B, T]
    return weight, mask, {"filter/frac_cov_detached": ops.masked_mean(selected.to(torch.float32), mask)}
