"""Group baselines from verl's catalogue: OPO's length-weighted mean, the pass@k max baseline, and GPG's scaling.

OPO (arXiv 2505.23585) subtracts the length-weighted mean reward of the group (the optimal baseline when the
squared score-function norm grows with the length); ``grpo_passk`` (Tang et al., arXiv 2503.19595) optimises
pass@G: only the best sample of a group is credited, by how much it beats the runner-up; GPG (arXiv 2504.02546)
is Dr.GRPO's r - mean_g r scaled up by the share of the batch that carries a signal. All three return one
advantage per sequence, ``[B, 1]``, as verl's ``opo``, ``grpo_passk`` and ``gpg`` estimators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab.methods.advantages import METRICS, _groups, _metrics
from entrolab.registry import register

GpgAlpha = Literal["valid_fraction", "nonzero_rewards", "none"]
GpgNorm = Literal["one", "std"]


@register("advantage", "opo", paper="arXiv:2505.23585", metrics=METRICS)
def opo(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: None, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """OPO: the length-weighted group baseline, A_i = r_i - sum_j L_j r_j / sum_j L_j.

    Paper: On-Policy RL with Optimal reward baseline, arXiv:2505.23585: the variance-optimal baseline
    b* = E[||grad log pi(y)||^2 r] / E[||grad log pi(y)||^2], with the squared gradient norm taken proportional to
    the response length L (``L_i = mask.sum(-1)``), estimated over the G samples of the prompt.

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask: its row sums are the lengths L_i that weight the baseline.
        cfg: None (no options).
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups``.

    Differences from the paper / released code:
        As verl ``compute_opo_outcome_advantage``. A group whose responses are all empty gets the baseline 0
        (verl divides 0 by 0); verl gives a singleton group the baseline 0, here fewer than 2 samples raise.
        With equal lengths this is ``dr_grpo``.

    Example:
        >>> mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
        >>> adv, _ = opo(torch.tensor([1.0, 0.0]), mask, cfg=None, group_id=torch.zeros(2).long())
        >>> adv.squeeze(-1).tolist()
        [0.25, -0.75]
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    lengths = groups.grid(mask.bool().sum(-1).to(r.dtype))  # [P, G]
    base = (lengths * r).sum(-1, keepdim=True) / lengths.sum(-1, keepdim=True).clamp(min=1)  # [P, 1]
    adv = groups.rows(r - base).unsqueeze(-1)  # [B, 1]
    return adv, _metrics(adv, r)


@dataclass(frozen=True)
class GrpoPasskConfig:
    """Options of the pass@k (k = G) max baseline."""

    norm_by_std: bool = False
    """Divide by the group's std + eps: verl's default (``norm_adv_by_std_in_grpo=True``); the paper's estimator
    is unnormalised (False)."""
    eps: float = 1e-6
    """Added to the group std before dividing (verl's epsilon)."""

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"grpo_passk eps must be >= 0, got {self.eps}")


@register("advantage", "grpo_passk", config=GrpoPasskConfig, paper="arXiv:2503.19595", metrics=METRICS)
def grpo_passk(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: GrpoPasskConfig, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pass@G advantage: the best sample of a group gets max_g r - second_max_g r, every other sample 0.

    Paper: Tang et al., Optimizing Language Models for Inference Time Objectives using RL, arXiv:2503.19595:
    the leave-one-out policy gradient of the k-sample objective E[max_{i <= k} r_i] with k = n = G,
    A_i = max_j r_j - max_{j != i} r_j, which is 0 unless sample i is the group's (unique) best.

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`GrpoPasskConfig`.
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups``.

    Differences from the paper / released code:
        verl ``compute_grpo_passk_outcome_advantage`` reads ``norm_adv_by_std_in_grpo`` (default True) and divides
        by the group's unbiased std + 1e-6; that is ``norm_by_std=True`` here, the paper's unnormalised estimator
        the default. When the best reward is tied, the winner's advantage is 0, whichever row holds it.

    Example:
        >>> adv, _ = grpo_passk(torch.tensor([0.2, 0.9, 0.5, 1.0, 1.0, 0.0]), torch.ones(6, 2),
        ...                     cfg=GrpoPasskConfig(), group_id=torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> [round(a, 4) for a in adv.squeeze(-1).tolist()]
        [0.0, 0.4, 0.0, 0.0, 0.0, 0.0]
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    top, where = r.topk(2, dim=-1)  # [P, 2]
    gap = top[:, :1] - top[:, 1:]  # [P, 1]
    if cfg.norm_by_std:
        gap = gap / (r.std(-1, keepdim=True) + cfg.eps)
    adv = torch.zeros_like(r).scatter(-1, where[:, :1], gap)  # [P, G]
    adv = groups.rows(adv).unsqueeze(-1)  # [B, 1]
    return adv, _metrics(adv, r)


@dataclass(frozen=True)
class GPGConfig:
    """Options of GPG's corrected group advantage alpha (r - mean_g r) / F_norm."""

    alpha: GpgAlpha = "valid_fraction"
    """valid_fraction: alpha = B / (B - M), M the samples of groups whose rewards are all equal (the paper's
    accurate gradient estimation); nonzero_rewards: alpha = B / #{i: r_i != 0} (verl's ``gpg`` estimator);
    none: alpha = 1."""
    f_norm: GpgNorm = "one"
    """one: F_norm = 1 (the paper's best and verl's); std: F_norm = the group's unbiased std + eps."""
    eps: float = 1e-4
    """Added to the group std with ``f_norm="std"`` (the released GPG trainer's 1e-4)."""

    def __post_init__(self) -> None:
        if self.alpha not in get_args(GpgAlpha):
            raise ValueError(f"gpg alpha must be one of {list(get_args(GpgAlpha))}, got {self.alpha!r}")
        if self.f_norm not in get_args(GpgNorm):
            raise ValueError(f"gpg f_norm must be one of {list(get_args(GpgNorm))}, got {self.f_norm!r}")
        if not self.eps >= 0:
            raise ValueError(f"gpg eps must be >= 0, got {self.eps}")


@register("advantage", "gpg", config=GPGConfig, paper="arXiv:2504.02546", metrics=(*METRICS, "gpg/alpha"))
def gpg(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: GPGConfig, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG's advantage: A_i = alpha (r_i - mean_g r) / F_norm, alpha = B / (B - M).

    Paper: GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning, arXiv:2504.02546
    (the GPG objective with the advantage alpha (r - mean(r)) / F_norm): M of the B samples sit in groups
    whose rewards are all equal and carry no gradient; scaling by alpha = B / (B - M) undoes their dilution of a
    token-mean loss (the loss is verl's ``gpg`` policy loss, -logp * A under ``token-mean``).

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`GPGConfig`.
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups`` and
        ``gpg/alpha`` (the factor used).

    Differences from the paper / released code:
        The released trainer (``AMAP-ML/GPG``) counts the zero-std groups and divides the loss by
        (B - M) / B, the same as alpha here. verl ``compute_gpg_outcome_advantage`` instead uses
        alpha = B / max(#{r_i != 0}, 1), the number of non-zero *rewards* (``alpha="nonzero_rewards"``), and
        F_norm = 1 (its ``f_norm`` argument is never set by the trainer). The paper's threshold beta_th (draw more
        rollouts until enough groups are valid) is a sampler's job. alpha's denominator is clamped to 1 (a batch
        where every group is constant has only zero advantages).

    Example:
        >>> adv, m = gpg(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 2), cfg=GPGConfig(),
        ...              group_id=torch.tensor([0, 0, 1, 1]))
        >>> adv.squeeze(-1).tolist(), m["gpg/alpha"].item()
        ([1.0, -1.0, 0.0, 0.0], 2.0)
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    adv = r - r.mean(-1, keepdim=True)  # [P, G]
    if cfg.f_norm == "std":
        adv = adv / (r.std(-1, keepdim=True) + cfg.eps)
    b = torch.tensor(float(r.numel()), dtype=r.dtype, device=r.device)
    if cfg.alpha == "valid_fraction":
        valid = (r.amax(-1) != r.amin(-1)).to(r.dtype).sum() * groups.size
        alpha = b / valid.clamp(min=1)
    elif cfg.alpha == "nonzero_rewards":
        alpha = b / torch.count_nonzero(r).to(r.dtype).clamp(min=1)
    else:
        alpha = torch.ones((), dtype=r.dtype, device=r.device)
    adv = groups.rows(alpha * adv).unsqueeze(-1)  # [B, 1]
    return adv, {**_metrics(adv, r), "gpg/alpha": alpha}


__all__ = ["GPGConfig", "GrpoPasskConfig", "gpg", "grpo_passk", "opo"]
