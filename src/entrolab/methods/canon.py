"""CANON (Chen et al., arXiv 2509.23962): conditional advantages that compare each half of a group with the other.

Each group is split by a metric of its responses (the behaviour policy's mean token entropy, or the length)
into a lower and an upper half; an inter-half advantage compares a response with the *other* half's mean
reward (which trend pays), an intra-half one with its *own* half's mean (winners within a trend), mixed by mu.
mu = 0.5 with equal halves is Dr.GRPO's r - mean(r).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

CanonMetric = Literal["entropy", "length"]
AlphaOn = Literal["paper", "code"]


@dataclass(frozen=True)
class CanonConfig:
    """Options of CANON's conditional advantage."""

    metric: CanonMetric = "entropy"
    """What splits a group: the behaviour policy's mean token entropy (math in the paper) or the length."""
    mu: float = 1.0
    """Weight of the inter-half advantage (1: CANON-Inter, the paper's best for math; 0: CANON-Intra;
    0.5: Dr.GRPO). The code's lambda."""
    alpha: float = 1.0
    """The paper's alpha-variant factor (0.9 with length grouping, for efficiency); 1 turns it off."""
    alpha_on: AlphaOn = "paper"
    """paper: the upper half gets alpha R_o - mean(lower); code: the upper half gets R_o - alpha mean(lower)
    (the released code attaches alpha to the opposite terms; the same for alpha = 1)."""
    beta: float = 0.0
    """The released code's extra offset of the inter term (+beta upper half, -beta lower half); not in the paper."""

    def __post_init__(self) -> None:
        if self.metric not in get_args(CanonMetric):
            raise ValueError(f"canon metric must be one of {list(get_args(CanonMetric))}, got {self.metric!r}")
        if self.alpha_on not in get_args(AlphaOn):
            raise ValueError(f"canon alpha_on must be one of {list(get_args(AlphaOn))}, got {self.alpha_on!r}")
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"canon mu must be in [0, 1], got {self.mu}")
        if not self.alpha > 0:
            raise ValueError(f"canon alpha must be > 0, got {self.alpha}")


@register(
    "advantage",
    "canon",
    config=CanonConfig,
    paper="arXiv:2509.23962",
    metrics=("adv/mean", "adv/std", "canon/upper_reward_mean", "canon/lower_reward_mean"),
    needs=("old_entropy",),
)
def canon(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: CanonConfig,
    group_id: torch.Tensor,
    old_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CANON: per group, A = mu A_inter + (1 - mu) A_intra over the lower / upper halves by a metric.

    Paper: Conditional Advantage Estimation, arXiv:2509.23962, §3 (CANON). Sort the G responses of a prompt by
    the metric c (stable, ascending); L = the first floor(G/2), U = the rest (U has the extra one for odd G):

        A_inter(o) = R_o - mean_U R   (o in L),     R_o - mean_L R   (o in U)
        A_intra(o) = R_o - mean_L R   (o in L),     R_o - mean_U R   (o in U)
        A = mu A_inter + (1 - mu) A_intra
        alpha-variant of A_inter: o in L: R_o - alpha mean_U R;  o in U: alpha R_o - mean_L R

    Args:
        rewards: ``[B]`` scalar rewards.  mask: ``[B, T]`` response tokens that count (the length metric,
        and the entropy metric's mean).
        cfg: :class:`CanonConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes, >= 2).
        old_entropy: ``[B, T]`` the behaviour policy's token entropies (``needs=("old_entropy",)``; required for
        ``metric="entropy"``).

    Returns:
        ``(adv [B, 1], metrics)``; no std normalisation. Metric keys: ``adv/mean``, ``adv/std``,
        ``canon/upper_reward_mean`` and ``canon/lower_reward_mean`` (the halves' mean rewards over the groups).

    Differences from the paper / released code:
        As the released ``compute_dr_entropy_per_token_group_outcome_advantage`` (``biuboomc/CANON``), whose
        lambda is mu and whose alpha sits on the opposite terms (``alpha_on="code"``), with its ``beta`` offset;
        the code's division by ``max_response_length`` under ``seq-mean-token-sum`` is left to the aggregation
        (``seq-mean-token-sum-norm``). Its scheduled-lambda and random-split variants are not here. A group of
        one raises (the code gives it means of 0).

    Example:
        >>> r, m = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.ones(4, 3)
        >>> h = torch.tensor([0.2, 0.4, 0.6, 0.8]).unsqueeze(1).expand(4, 3)
        >>> adv, _ = canon(r, m, cfg=CanonConfig(mu=1.0), group_id=torch.zeros(4, dtype=torch.long), old_entropy=h)
        >>> adv.squeeze(1).tolist()
        [1.0, 1.0, -1.0, -1.0]
    """
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"canon needs >= 2 samples per group, got {groups.size}")
    if cfg.metric == "entropy":
        if old_entropy is None:
            raise ValueError("canon with metric='entropy' needs old_entropy (the behaviour policy's entropies)")
        value = ops.masked_mean(old_entropy.detach().float(), mask, dim=-1)  # [B]
    else:
        value = mask.sum(-1).float()  # [B]
    r = groups.grid(rewards.detach().float())  # [P, G]
    order = torch.sort(groups.grid(value), dim=1, stable=True).indices  # [P, G] ascending
    g = groups.size
    upper = torch.zeros_like(r, dtype=torch.bool).scatter(1, order[:, g // 2 :], True)  # [P, G]
    mean_u = (r * upper).sum(1, keepdim=True) / upper.sum(1, keepdim=True)  # [P, 1]
    mean_l = (r * ~upper).sum(1, keepdim=True) / (~upper).sum(1, keepdim=True).clamp(min=1)  # [P, 1]
    a = cfg.alpha
    if cfg.alpha_on == "paper":
        inter = torch.where(upper, a * r - mean_l + cfg.beta, r - a * mean_u - cfg.beta)
    else:
        inter = torch.where(upper, r - a * mean_l + cfg.beta, a * r - mean_u - cfg.beta)
    intra = torch.where(upper, r - mean_u, r - mean_l)
    adv = groups.rows(cfg.mu * inter + (1.0 - cfg.mu) * intra).unsqueeze(1)  # [B, 1]
    metrics = {
        "adv/mean": adv.mean(),
        "adv/std": adv.std() if adv.numel() > 1 else torch.zeros(()),
        "canon/upper_reward_mean": mean_u.mean(),
        "canon/lower_reward_mean": mean_l.mean(),
    }
    return adv, metrics


__all__ = ["CanonConfig", "canon"]
