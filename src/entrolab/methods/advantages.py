"""Advantage estimators from one scalar reward per sequence: GRPO, Dr.GRPO, RLOO.

All three use the group of G samples drawn for the same prompt (found by ``group_id``, in any order) as the baseline and
return one advantage per sequence, ``[B, 1]``, which the policy loss broadcasts over the response tokens.
Advantages are constants: the rewards are detached. The response mask is part of the axis convention but
unused here (verl multiplies the broadcast advantage by it; every consumer here masks anyway).

Metrics, identical keys for the three estimators (plain means over the B sequences / P groups given):
``adv/mean`` mean advantage, ``adv/std`` population std of the advantages, ``adv/frac_zero_std_groups``
fraction of groups whose G rewards are all equal (their advantages are exactly 0; TRL logs the same thing
as ``frac_reward_zero_std``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

METRICS = ("adv/mean", "adv/std", "adv/frac_zero_std_groups")


@dataclass(frozen=True)
class GRPOConfig:
    """Options of the GRPO group z-score."""

    eps: float = 1e-6
    """Added to the group std before dividing (verl uses 1e-6, TRL 1e-4)."""
    norm_by_std: bool = True
    """Divide by the std (GRPO); False leaves r - mean_g, which is Dr.GRPO's advantage."""
    std_scope: Literal["group", "batch"] = "group"
    """Whose std divides: the group's (GRPO), or the whole batch's (TRL ``scale_rewards="batch"``, the
    "Tricks or Traps" (arXiv:2508.08221) group-mean / batch-std form). The baseline is the group mean either way."""

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"grpo eps must be >= 0, got {self.eps}")
        if self.std_scope not in ("group", "batch"):
            raise ValueError(f"grpo std_scope must be one of ['group', 'batch'], got {self.std_scope!r}")


def _groups(rewards: torch.Tensor, group_id: torch.Tensor) -> tuple[ops.Groups, torch.Tensor]:
    """The groups and the detached float rewards as ``[P, G]``; a baseline needs two samples per group."""
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"a group baseline needs >= 2 samples per group, got {groups.size}")
    r = rewards.detach()
    return groups, groups.grid(r if r.is_floating_point() else r.float())  # [P, G]


def _metrics(adv: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = adv.flatten()  # [B]
    same = (r.amax(-1) == r.amin(-1)).to(adv.dtype)  # [P]
    return {
        "adv/mean": flat.mean(),
        "adv/std": flat.std(correction=0),
        "adv/frac_zero_std_groups": same.mean(),
    }


@register("advantage", "grpo", config=GRPOConfig, paper="arXiv:2402.03300", metrics=METRICS)
def grpo(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: GRPOConfig, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Group z-score advantage: A_i = (r_i - mean_g r) / (std_g r + eps).

    Paper: DeepSeekMath, arXiv:2402.03300, §4.1.2 (outcome supervision): A_i = (r_i - mean(r)) / std(r) for
    every token of sample i, r the G rewards of the sample's group.

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`GRPOConfig`.
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups``.

    Differences from the paper / released code:
        std is the *unbiased* (Bessel, G - 1) group std, as ``torch.std`` in verl
        (``compute_grpo_outcome_advantage``) and ``nanstd`` in TRL; the paper does not say which. A group
        whose rewards are all equal gets advantage exactly 0. verl gives a singleton group mean 0 and std 1
        (A = r / (1 + eps)); here a group of fewer than 2 samples raises. TRL's ``scale_rewards="batch"`` (batch
        std) is not offered.

    Example:
        >>> cfg = GRPOConfig()
        >>> adv, m = grpo(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), torch.ones(8, 3), cfg=cfg,
        ...            group_id=ops.contiguous_groups(8, 4))
        >>> [round(a, 4) for a in adv.squeeze(-1).tolist()]
        [0.866, -0.866, -0.866, 0.866, 0.0, 0.0, 0.0, 0.0]
        >>> m["adv/frac_zero_std_groups"].item()
        0.5
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    adv = r - r.mean(-1, keepdim=True)  # [P, G]
    if cfg.norm_by_std:
        std = r.std(-1, keepdim=True) if cfg.std_scope == "group" else r.flatten().std()  # [P, 1] or []
        adv = adv / (std + cfg.eps)  # [P, G]
    adv = groups.rows(adv).unsqueeze(-1)  # [B, 1]
    return adv, _metrics(adv, r)


@register("advantage", "dr_grpo", paper="arXiv:2503.20783", metrics=METRICS)
def dr_grpo(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: None, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Group-mean baseline without std scaling (Dr.GRPO): A_i = r_i - mean_g r.

    Paper: "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783, §3.2 / Fig. 1:
    Dr.GRPO removes GRPO's division by std(r) (and the per-sequence 1/|o_i|, which is the aggregation mode
    ``seq-mean-token-sum-norm`` here, not part of the advantage).

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: None (no options).
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups``.

    Differences from the paper / released code:
        Identical to ``grpo`` with ``norm_by_std=False`` (verl ``norm_adv_by_std_in_grpo=False``, TRL
        ``scale_rewards="none"``). a group of fewer than 2 samples raises (verl would use a baseline of 0).

    Example:
        >>> adv, _ = dr_grpo(torch.tensor([1.0, 0, 0, 0]), torch.ones(4, 2), cfg=None,
        ...                  group_id=ops.contiguous_groups(4, 4))
        >>> adv.squeeze(-1).tolist()
        [0.75, -0.25, -0.25, -0.25]
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    adv = groups.rows(r - r.mean(-1, keepdim=True)).unsqueeze(-1)  # [B, 1]
    return adv, _metrics(adv, r)


@register("advantage", "rloo", paper="arXiv:2402.14740", metrics=METRICS)
def rloo(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: None, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Leave-one-out baseline (RLOO): A_i = r_i - 1/(G-1) * sum_{j != i} r_j.

    Paper: "Back to Basics: Revisiting REINFORCE Style Optimization ...", arXiv:2402.14740, §3 (the RLOO
    estimator of Kool et al., 2019): each sample is baselined by the mean reward of the other G - 1 samples,
    which keeps the estimator unbiased. Equivalently A_i = G / (G - 1) * (r_i - mean_g r).

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: None (no options).
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups``.

    Differences from the paper / released code:
        Only the advantage: the paper folds a KL penalty into the reward and uses no ratio clipping; here
        those are the ``kl`` regulariser and the policy-loss choice. verl's ``rloo`` leaves a singleton
        group's reward unchanged and ``rloo_vectorized`` sets it to 0; here a group of fewer than 2 samples raises.

    Example:
        >>> adv, _ = rloo(torch.tensor([1.0, 0, 0, 1]), torch.ones(4, 2), cfg=None,
        ...                  group_id=ops.contiguous_groups(4, 4))
        >>> [round(a, 4) for a in adv.squeeze(-1).tolist()]
        [0.6667, -0.6667, -0.6667, 0.6667]
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    others = (r.sum(-1, keepdim=True) - r) / (groups.size - 1)  # [P, G] mean of the other G - 1 rewards
    adv = groups.rows(r - others).unsqueeze(-1)  # [B, 1]
    return adv, _metrics(adv, r)
