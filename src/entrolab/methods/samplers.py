"""Samplers: which groups of a step's rollouts enter the update (the ``sampler`` axis).

A sampler runs after rewards, on rewards, shaped rewards, lengths, behaviour entropies and group ids, and
returns a keep mask that is the same for every row of a group. With ``max_rounds > 1`` in its config the
trainer draws more rollouts (the next prompts of the data stream) until the batch holds ``prompts_per_step``
kept groups or the rounds run out, and logs how many it drew (``sampler/rounds``, ``sampler/generated_groups``,
``sampler/kept_groups``, ``sampler/refilled_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Metric = Literal["reward", "shaped"]
METRICS: tuple[str, ...] = get_args(Metric)


@dataclass(frozen=True)
class DynamicSamplingConfig:
    """Options of DAPO's dynamic sampling."""

    metric: Metric = "reward"
    """What must vary within a group: the verifier's reward (DAPO's ``acc``) or the shaped reward."""
    max_rounds: int = 10
    """Rollout batches drawn per step at most (DAPO's ``max_num_gen_batches``); 1: filter, never refill."""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"dynamic_sampling metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.max_rounds < 1:
            raise ValueError(f"dynamic_sampling max_rounds must be >= 1, got {self.max_rounds}")


@register(
    "sampler",
    "dynamic_sampling",
    config=DynamicSamplingConfig,
    paper="arXiv:2503.14476",
    metrics=("sampler/kept_frac",),
)
def dynamic_sampling(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: DynamicSamplingConfig,
    group_id: torch.Tensor,
    shaped: torch.Tensor,
    lengths: torch.Tensor,
    entropy: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DAPO's dynamic sampling: drop every group whose rewards are all equal (all right or all wrong).

    Paper: DAPO, arXiv:2503.14476, §3.2 and eq. 11: the constraint 0 < |{o_i : is_equivalent(a, o_i)}| < G, met
    by over-sampling and filtering out groups with accuracy 0 or 1 until the batch is full. Such a group has
    advantage exactly 0 under GRPO, so it only dilutes the batch.

    Args:
        rewards: ``[B]`` the verifier's rewards.  shaped: ``[B]`` after the reward shapers.
        mask: ``[B, T]``, unused.  lengths: ``[B]``, unused.  entropy: ``[B, T]``, unused.
        cfg: :class:`DynamicSamplingConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes).

    Returns:
        ``(keep [B] bool, metrics)``: True on every row of a group whose ``cfg.metric`` is not constant. Metric
        key: ``sampler/kept_frac`` (fraction of the groups kept).

    Differences from the paper / released code:
        As verl's DAPO recipe (``algorithm.filter_groups``, metric ``acc``, ``np.std > 0``): kept groups are
        collected over at most ``max_rounds`` generation batches and the batch is cut to ``prompts_per_step``
        groups. When the rounds run out short, verl raises; here the batch is topped up with dropped groups
        (zero advantage, so no gradient) and the number is logged as ``sampler/refilled_groups``.

    Example:
        >>> r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
        >>> keep, m = dynamic_sampling(r, None, cfg=DynamicSamplingConfig(), group_id=torch.tensor([0, 0, 1, 1, 2, 2]),
        ...                            shaped=r, lengths=None, entropy=None)
        >>> keep.tolist(), round(m["sampler/kept_frac"].item(), 4)
        ([False, False, True, True, False, False], 0.3333)
    """
    groups = ops.Groups(group_id)
    values = groups.grid((rewards if cfg.metric == "reward" else shaped).detach().float())  # [P, G]
    varied = (values.max(dim=1).values - values.min(dim=1).values) > 0  # [P]
    keep = groups.rows(varied.unsqueeze(1).expand_as(values))  # [B]
    return keep, {"sampler/kept_frac": varied.float().mean()}


__all__ = ["DynamicSamplingConfig", "dynamic_sampling"]
