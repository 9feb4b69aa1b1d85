"""Best-of-N selection (Yang et al., arXiv 2404.01730): only the top rows of each group by reward enter the loss.

Of the G samples of a prompt the ``keep`` best by reward stay in the loss; the others leave it but stay in the
batch, so the group's advantage is still computed over all G (``unit="sample"``, no refill). With ``keep=1``
the loss sees a best-of-G sample of the behaviour policy, whose distribution, KL and win rate against the
policy are in ``entrolab.bon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Metric = Literal["reward", "shaped"]
TieBreak = Literal["index", "entropy"]


@dataclass(frozen=True)
class BestOfNConfig:
    """Options of best-of-N selection."""

    keep: int = 1
    """Rows kept per group (the top ``keep``); >= G keeps every row."""
    metric: Metric = "reward"
    """What ranks the rows: the verifier's reward or the shaped reward."""
    tie_break: TieBreak = "index"
    """Among equal values: index: the lower row index within the group first; entropy: the lower mean
    behaviour entropy first (then the lower index)."""

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"best_of_n keep must be >= 1, got {self.keep}")
        if self.metric not in get_args(Metric):
            raise ValueError(f"best_of_n metric must be one of {list(get_args(Metric))}, got {self.metric!r}")
        if self.tie_break not in get_args(TieBreak):
            raise ValueError(f"best_of_n tie_break must be one of {list(get_args(TieBreak))}, got {self.tie_break!r}")


@register(
    "sampler",
    "best_of_n",
    config=BestOfNConfig,
    paper="arXiv:2404.01730",
    metrics=("sampler/kept_frac", "best_of_n/best_reward_mean"),
    unit="sample",
)
def best_of_n(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: BestOfNConfig,
    group_id: torch.Tensor,
    shaped: torch.Tensor,
    lengths: torch.Tensor,
    entropy: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Best-of-N: keep the ``keep`` highest-reward rows of each group, drop the rest from the loss.

    Paper: Yang, Salamatian, Sun, Suresh & Beirami, "Asymptotics of Language Model Alignment", arXiv:2404.01730:
    the best of N samples of p by reward r, with distribution pi_N(y) = F(y)^N - F^-(y)^N (distinct rewards), is
    asymptotically equivalent to the KL-regularised RL optimum p e^{r/beta} / Z at KL = log N - (N - 1)/N.
    Here, per group of G rows, rank by (value desc, tie-break asc) and keep the first ``min(keep, G)``.

    Args:
        rewards: ``[B]`` verifier rewards.  shaped: ``[B]`` shaped rewards (ranked when ``metric="shaped"``).
        mask: ``[B, T]`` response tokens (the entropy tie-break's mean).  lengths: ``[B]``, unused.
        entropy: ``[B, T]`` behaviour entropies (used only by ``tie_break="entropy"``).
        cfg: :class:`BestOfNConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes; rows of a group in batch order).

    Returns:
        ``(keep [B] bool, metrics)``, ``keep`` varying within a group. Metric keys: ``sampler/kept_frac``
        (fraction of the rows kept) and ``best_of_n/best_reward_mean`` (mean verifier reward of the kept rows:
        the best-of-G reward at ``keep=1``).

    Differences from the paper / released code:
        The paper studies best-of-N as inference-time sampling from a reference model; here it selects which
        training rollouts enter the loss (as in rejection-sampling fine-tuning), the dropped rows still counting
        in their group's advantage. Ties, which the paper's formula spreads at random, are broken
        deterministically (lower index, or lower mean entropy). No code to compare with.

    Example:
        >>> r, gid = torch.tensor([0.0, 1.0, 1.0, 0.2, 0.5, 0.1]), torch.tensor([0, 0, 0, 1, 1, 1])
        >>> keep, m = best_of_n(r, torch.ones(6, 2), cfg=BestOfNConfig(), group_id=gid, shaped=r, lengths=None,
        ...                     entropy=None)
        >>> keep.tolist(), round(m["best_of_n/best_reward_mean"].item(), 4)  # the tie in group 0: lower index
        ([False, True, False, False, True, False], 0.75)
    """
    groups = ops.Groups(group_id)
    values = groups.grid((rewards if cfg.metric == "reward" else shaped).detach().double())  # [P, G]
    order = torch.arange(groups.size, device=values.device).expand_as(values)  # [P, G] batch order in a group
    if cfg.tie_break == "entropy":
        if entropy is None:
            raise ValueError("best_of_n with tie_break='entropy' needs entropy (the behaviour entropies)")
        mean_h = groups.grid(ops.masked_mean(entropy.detach().double(), mask, dim=-1))  # [P, G]
        order = torch.sort(mean_h, dim=1, stable=True).indices  # [P, G] lower entropy first, then lower index
    ranked = torch.gather(values, 1, order)  # [P, G]
    top = torch.gather(order, 1, torch.sort(ranked, dim=1, descending=True, stable=True).indices)  # [P, G]
    chosen = torch.zeros_like(values, dtype=torch.bool).scatter(1, top[:, : min(cfg.keep, groups.size)], True)
    keep = groups.rows(chosen)  # [B]
    metrics = {
        "sampler/kept_frac": keep.double().mean().float(),
        "best_of_n/best_reward_mean": rewards.detach().double()[keep].mean().float(),
    }
    return keep, metrics


__all__ = ["BestOfNConfig", "best_of_n"]
