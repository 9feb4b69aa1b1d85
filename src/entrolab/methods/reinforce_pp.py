"""REINFORCE++ (Hu et al., arXiv 2501.03262) and ReMax (Li et al., arXiv 2310.10505): critic-free baselines.

REINFORCE++ discounts the outcome reward back over the response tokens and whitens the returns over every
response token of the batch (global advantage normalisation); its ``baseline`` variant first subtracts the
prompt group's mean reward. ReMax subtracts the reward of one greedy (temperature 0) rollout of the same prompt.
As verl's ``reinforce_plus_plus``, ``reinforce_plus_plus_baseline`` and ``remax`` estimators
(``verl/trainer/ppo/core_algos.py``), with the score on each row's last response token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.methods.advantages import _groups, _metrics
from entrolab.registry import register

TOKEN_METRICS = ("adv/mean", "adv/std")


def _check_eps(name: str, eps: float) -> None:
    if not eps >= 0:
        raise ValueError(f"{name} whiten_eps must be >= 0, got {eps}")


@dataclass(frozen=True)
class ReinforcePPConfig:
    """Options of REINFORCE++'s discounted, globally whitened return."""

    gamma: float = 1.0
    """Discount per response token (verl ``algorithm.gamma`` = 1.0); in [0, 1]."""
    whiten_eps: float = 1e-8
    """Added to the batch variance before the reciprocal square root (verl ``masked_whiten``)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"reinforce_pp gamma must be in [0, 1], got {self.gamma}")
        _check_eps("reinforce_pp", self.whiten_eps)


@dataclass(frozen=True)
class ReinforcePPBaselineConfig:
    """Options of REINFORCE++-baseline's group-mean baseline with global whitening."""

    whiten_eps: float = 1e-8
    """Added to the batch variance before the reciprocal square root (verl ``masked_whiten``)."""

    def __post_init__(self) -> None:
        _check_eps("reinforce_pp_baseline", self.whiten_eps)


def _token_count(mask: torch.Tensor, name: str) -> torch.Tensor:
    n = mask.bool().sum()
    if int(n) < 2:  # verl's masked_var raises here too (Bessel's n - 1)
        raise ValueError(f"{name} whitens over the batch's response tokens and needs >= 2 of them, got {int(n)}")
    return n


def _token_metrics(adv: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masked mean and population std of token-level advantages over the response tokens."""
    mean = ops.masked_mean(adv, mask)
    return {"adv/mean": mean, "adv/std": ops.masked_mean((adv - mean) ** 2, mask).sqrt()}


@register("advantage", "reinforce_pp", config=ReinforcePPConfig, paper="arXiv:2501.03262", metrics=TOKEN_METRICS)
def reinforce_pp(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: ReinforcePPConfig, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++: discounted return of the outcome reward, whitened over all response tokens of the batch.

    Paper: REINFORCE++, arXiv:2501.03262 (token reward r_t = 1[t = last] r - beta KL_t, return
    G_t = sum_{s >= t} gamma^(s - t) r_s) and the global advantage normalisation
    A_t = (G_t - mean_batch G) / std_batch G over every response token of the batch:

        G_t = gamma^(k_t) r,   k_t = the number of response tokens after t;   A_t = (G_t - mu) / sqrt(var + eps)

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (placed on the row's last response token).
        mask: ``[B, T]`` response mask; the whitening statistics run over its tokens (>= 2 of them).
        cfg: :class:`ReinforcePPConfig`.
        group_id: ``[B]`` the prompt group of each row (unused: REINFORCE++ needs no groups, k >= 1).

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, with keys ``adv/mean`` and ``adv/std`` (masked mean and
        population std over the response tokens).

    Differences from the paper / released code:
        As verl ``compute_reinforce_plus_plus_outcome_advantage``: a masked token inside a response (an
        observation) carries the return through undiscounted; unbiased (Bessel) batch variance and
        ``rsqrt(var + 1e-8)``. The paper folds a per-token KL penalty into the token rewards; here the reward is
        the outcome score only and the KL is a regulariser (``kl``) or a reward shaper, so the discount is the
        only thing that varies along a row (with ``gamma = 1`` every token of a row gets the same value).
        A batch with fewer than 2 response tokens raises (verl's ``masked_var`` raises too).

    Example:
        >>> adv, m = reinforce_pp(torch.tensor([1.0, 0.0]), torch.ones(2, 2), cfg=ReinforcePPConfig(),
        ...                       group_id=torch.arange(2))
        >>> [[round(a, 4) for a in row] for row in adv.tolist()]
        [[0.866, 0.866], [-0.866, -0.866]]
    """
    keep = mask.bool()
    r = rewards.detach()
    r = r if r.is_floating_point() else r.float()
    n = _token_count(mask, "reinforce_pp")
    m = keep.to(r.dtype)  # [B, T]
    after = m.sum(-1, keepdim=True) - m.cumsum(-1)  # [B, T] response tokens after t
    returns = torch.where(keep, r.unsqueeze(-1) * torch.pow(cfg.gamma, after), 0.0)  # [B, T]
    mean = returns.sum() / n
    var = torch.where(keep, (returns - mean) ** 2, 0.0).sum() / (n - 1)
    adv = torch.where(keep, (returns - mean) * torch.rsqrt(var + cfg.whiten_eps), 0.0)  # [B, T]
    return adv, _token_metrics(adv, keep)


@register(
    "advantage",
    "reinforce_pp_baseline",
    config=ReinforcePPBaselineConfig,
    paper="arXiv:2501.03262",
    metrics=("adv/mean", "adv/std", "adv/frac_zero_std_groups"),
)
def reinforce_pp_baseline(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: ReinforcePPBaselineConfig, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++-baseline: r - mean_g r, then whitened over all response tokens of the batch.

    Paper: REINFORCE++, arXiv:2501.03262 (REINFORCE++ w/ baseline, k > 1 samples per prompt):
    A'_i = r_i - mean_g r, then the global normalisation A_i = (A'_i - mu) / sigma, where mu and sigma are the
    mean and std of A' over every response token of the batch (each sequence weighted by its length L_i):

        mu = sum_i L_i A'_i / N,   var = sum_i L_i (A'_i - mu)^2 / (N - 1),   A_i = (A'_i - mu) / sqrt(var + eps)

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask: L_i = its row sums weight the batch statistics (>= 2 tokens in all).
        cfg: :class:`ReinforcePPBaselineConfig`.
        group_id: ``[B]`` int, the prompt group of each row (any order; equal group sizes >= 2).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std`` (plain means over the B sequences) and
        ``adv/frac_zero_std_groups`` (groups whose rewards are all equal).

    Differences from the paper / released code:
        As verl ``compute_reinforce_plus_plus_baseline_outcome_advantage`` (token-weighted statistics, Bessel
        variance, ``rsqrt(var + 1e-8)``), which returns the same value on every token of a row; here it is one
        value per row, ``[B, 1]``. The paper's k2 KL loss is the ``kl`` regulariser. verl gives a singleton group
        a baseline of 0; here a group of fewer than 2 samples raises.

    Example:
        >>> adv, _ = reinforce_pp_baseline(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4, 2),
        ...                                cfg=ReinforcePPBaselineConfig(), group_id=ops.contiguous_groups(4, 2))
        >>> [round(a, 4) for a in adv.squeeze(-1).tolist()]
        [1.3229, -1.3229, 0.0, 0.0]
    """
    groups, r = _groups(rewards, group_id)  # [P, G]
    centred = groups.rows(r - r.mean(-1, keepdim=True))  # [B]
    n = _token_count(mask, "reinforce_pp_baseline")
    lengths = mask.bool().sum(-1).to(centred.dtype)  # [B]
    mean = (lengths * centred).sum() / n
    var = (lengths * (centred - mean) ** 2).sum() / (n - 1)
    adv = ((centred - mean) * torch.rsqrt(var + cfg.whiten_eps)).unsqueeze(-1)  # [B, 1]
    return adv, _metrics(adv, r)


@register(
    "advantage",
    "remax",
    paper="arXiv:2310.10505",
    metrics=("adv/mean", "adv/std", "remax/greedy_reward_mean"),
    needs=("greedy_rewards",),
)
def remax(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: None,
    group_id: torch.Tensor,
    greedy_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ReMax: the reward minus the reward of a greedy rollout of the same prompt, A_i = r_i - r(x_i, y_greedy).

    Paper: ReMax, arXiv:2310.10505 (its Algorithm 1): REINFORCE with the baseline b(x) = r(x, y_bar), y_bar
    the greedy (argmax) response to the prompt x, recomputed from the current policy at every step.

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence.
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: None (no options).
        group_id: ``[B]`` the prompt group of each row (unused: the baseline is the prompt's greedy rollout).
        greedy_rewards: ``[B]`` the reward of one greedy (temperature 0) rollout of each row's prompt
            (``needs``; rows of one prompt carry the same value).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std`` (plain mean and population std over the B
        sequences) and ``remax/greedy_reward_mean`` (mean of the greedy baselines).

    Differences from the paper / released code:
        As verl ``compute_remax_outcome_advantage`` (its ``reward_baselines`` are the greedy rollouts' summed
        token rewards); verl writes the return on every position before the last response token and leaves
        masked positions inside a response non-zero, here one value per row is broadcast and the consumers mask.
        The paper's KL term is the ``kl`` regulariser.

    Example:
        >>> adv, _ = remax(torch.tensor([1.0, 0.0, 1.0]), torch.ones(3, 2), cfg=None, group_id=torch.arange(3),
        ...                greedy_rewards=torch.tensor([0.0, 0.0, 1.0]))
        >>> adv.squeeze(-1).tolist()
        [1.0, 0.0, 0.0]
    """
    if greedy_rewards is None:
        raise ValueError("advantage 'remax' needs greedy_rewards [B] (the reward of a greedy rollout per prompt)")
    r = rewards.detach()
    r = r if r.is_floating_point() else r.float()
    base = greedy_rewards.detach().to(r.dtype)
    if base.shape != r.shape:
        raise ValueError(f"remax greedy_rewards must be [B] = {tuple(r.shape)}, got {tuple(base.shape)}")
    adv = (r - base).unsqueeze(-1)  # [B, 1]
    flat = adv.squeeze(-1)
    metrics = {"adv/mean": flat.mean(), "adv/std": flat.std(correction=0), "remax/greedy_reward_mean": base.mean()}
    return adv, metrics


__all__ = ["ReinforcePPBaselineConfig", "ReinforcePPConfig", "reinforce_pp", "reinforce_pp_baseline", "remax"]
