"""The Optimal Token Baseline (Li et al., arXiv 2602.07078): a per-token group baseline weighted by path variance.

Instead of one baseline per sequence, every response position t of a prompt group gets its own baseline: the
group's returns at t averaged with weights W_t, the cumulative squared logit-gradient norm of the path so far
(the Logit-Gradient Proxy ||e_y - pi||^2 = 1 - 2 pi(y) + sum_v pi(v)^2, from forward-pass probabilities only).
``optimal_token_baseline`` aligns the rows of a group by column (single-turn responses);
``tir_optimal_token_baseline`` by the index of the model token, skipping masked observation tokens (multi-turn
tool-integrated reasoning). As verl's estimators of the same names. ``sum_pi_sq_from_logits`` is the proxy's
input, computed by the caller while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register

METRICS = ("adv/mean", "adv/std", "adv/frac_zero_std_groups", "otb/w_mean")


@dataclass(frozen=True)
class OptimalTokenBaselineConfig:
    """Options of the Optimal Token Baseline."""

    handle_zero_tail: bool = True
    """Where a group's single longest response runs past the second longest, its baseline there is 0 (the
    advantage is the return, not return - itself = 0), as verl's default."""
    eps: float = 1e-8
    """Added to the baseline's denominator sum_i W_t (verl's epsilon)."""

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"optimal_token_baseline eps must be >= 0, got {self.eps}")


def sum_pi_sq_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """sum_v pi(v)^2 = exp(logsumexp(2 z) - 2 logsumexp(z)) of softmax(z), in fp32 or wider.  [B, T, V] -> [B, T]

    Pass the logits the sampler drew from (after temperature), at each response position.

    >>> round(sum_pi_sq_from_logits(torch.zeros(1, 1, 4)).item(), 6)
    0.25
    """
    logits = ops.upcast(logits)
    return torch.exp(torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * torch.logsumexp(logits, dim=-1))


def _compact(x: torch.Tensor, keep: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """The masked entries of each row moved to its first columns, in order (zeros after).  [B, T] -> [B, T]"""
    out = torch.zeros(x.shape[0], x.shape[1] + 1, dtype=x.dtype, device=x.device)
    return out.scatter(1, slot, torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)))[:, :-1]


def _otb(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor | None,
    sum_pi_sq: torch.Tensor | None,
    cfg: OptimalTokenBaselineConfig,
    group_id: torch.Tensor,
    name: str,
    by_token: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The estimator for both alignments: by column, or (``by_token``) by the index of the model token."""
    if old_logp is None or sum_pi_sq is None:
        raise ValueError(f"advantage {name!r} needs old_logp and sum_pi_sq [B, T] (declared in needs)")
    if old_logp.shape != mask.shape or sum_pi_sq.shape != mask.shape:
        raise ValueError(
            f"{name} old_logp {tuple(old_logp.shape)} and sum_pi_sq {tuple(sum_pi_sq.shape)} must be the mask's "
            f"shape {tuple(mask.shape)}"
        )
    groups = ops.Groups(group_id)
    r = rewards.detach()
    dtype = torch.promote_types(r.dtype if r.is_floating_point() else torch.float32, old_logp.dtype)
    dtype = torch.promote_types(dtype, sum_pi_sq.dtype)
    r, keep, zero = r.to(dtype), mask.bool(), torch.zeros((), dtype=dtype, device=mask.device)
    w = torch.where(keep, 1.0 - 2.0 * old_logp.detach().to(dtype).exp() + sum_pi_sq.detach().to(dtype), zero)
    big_w = w.cumsum(-1)  # [B, T] W_t = sum_{s <= t} w_s over the response tokens
    returns = torch.where(keep, r.unsqueeze(-1), zero)  # [B, T] reward-to-go of the outcome reward
    lengths = keep.sum(-1)  # [B]
    t = mask.shape[-1]
    if by_token:  # the k-th model token of every row in column k
        slot = torch.where(keep, keep.cumsum(-1) - 1, t)  # [B, T]; masked -> a dropped extra column
        returns, big_w = _compact(returns, keep, slot), _compact(big_w, keep, slot)
        at = torch.arange(t, device=mask.device) < lengths.unsqueeze(-1)  # [B, T]
    else:
        at = keep
    ret_g, w_g, at_g = groups.grid(returns), groups.grid(big_w), groups.grid(at.to(dtype))  # [P, G, T]
    num = (ret_g * w_g * at_g).sum(1, keepdim=True)  # [P, 1, T]
    base = (num / ((w_g * at_g).sum(1, keepdim=True) + cfg.eps)).expand_as(ret_g)  # [P, G, T]
    len_g = groups.grid(lengths)  # [P, G]
    if cfg.handle_zero_tail and groups.size >= 2:
        top = len_g.topk(2, dim=-1).values  # [P, 2]
        longest = len_g == top[:, :1]  # [P, G]
        single = (longest.sum(-1) == 1) & (top[:, 0] > top[:, 1])  # [P]
        past = torch.arange(t, device=mask.device) >= top[:, 1:].unsqueeze(-1)  # [P, 1, T]
        base = torch.where((single.unsqueeze(-1) & longest).unsqueeze(-1) & past, zero, base)
    rows = (len_g > 0).sum(-1) if by_token else torch.full_like(len_g[:, 0], groups.size)  # [P] trajectories
    base = torch.where((rows >= 2).view(-1, 1, 1), base, zero)  # one trajectory: no baseline
    adv = torch.where(at, returns - groups.rows(base), zero)  # [B, T]
    if by_token:
        adv = torch.where(keep, adv.gather(1, slot.clamp(max=t - 1)), zero)
    mean = ops.masked_mean(adv, keep)
    r_g = groups.grid(r)
    metrics = {
        "adv/mean": mean,
        "adv/std": ops.masked_mean((adv - mean) ** 2, keep).sqrt(),
        "adv/frac_zero_std_groups": (r_g.amax(-1) == r_g.amin(-1)).to(dtype).mean(),
        "otb/w_mean": ops.masked_mean(w, keep),
    }
    return adv, metrics


@register(
    "advantage",
    "optimal_token_baseline",
    config=OptimalTokenBaselineConfig,
    paper="arXiv:2602.07078",
    metrics=METRICS,
    needs=("old_logp", "sum_pi_sq"),
)
def optimal_token_baseline(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: OptimalTokenBaselineConfig,
    group_id: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    sum_pi_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Optimal Token Baseline: A_t = G_t - sum_i G_t^i W_t^i / sum_i W_t^i over the group, per column t.

    Paper: The Optimal Token Baseline, Li et al., arXiv:2602.07078 (ICML 2026), the per-token optimal baseline
    B_t* = E[G_t W_t] / E[W_t] with the Logit-Gradient Proxy for the cumulative gradient norm:

        w_t = 1 - 2 pi(y_t) + sum_v pi(v)^2,   W_t = sum_{s <= t} w_s,
        B_t = sum_i G_t^i W_t^i m_t^i / (sum_i W_t^i m_t^i + eps),   A_t = G_t - B_t

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (its return on every response token).
        mask: ``[B, T]`` response mask (model tokens; multi-turn observations are 0).
        cfg: :class:`OptimalTokenBaselineConfig`.
        group_id: ``[B]`` int, the prompt group of each row (any order; equal sizes; a group of one has no
            baseline).
        old_logp: ``[B, T]`` log pi(y_t) of the sampled tokens under the policy before the update (``needs``;
            verl's ``old_log_probs``).
        sum_pi_sq: ``[B, T]`` sum_v pi(v)^2 of the same policy at each response position (``needs``; verl's
            ``sum_pi_squared``; :func:`sum_pi_sq_from_logits`).

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, with keys ``adv/mean``, ``adv/std`` (masked mean and
        population std over the response tokens), ``adv/frac_zero_std_groups`` (groups whose rewards are all
        equal) and ``otb/w_mean`` (mean of the per-token proxy w_t).

    Differences from the paper / released code:
        As verl ``compute_optimal_token_baseline_advantage`` with the outcome reward on the last response token
        (G_t = r on every response token) and its ``handle_zero_tail``, which, like here, takes the second
        longest *length* as the column where the tail starts (for responses that are a prefix of the row; use
        ``tir_optimal_token_baseline`` for masks with holes). verl's optional ``rollout_is_weights`` (w_t scaled
        by the squared truncated IS ratio) are not offered: that needs the rollout-correction weights [B, T].

    Example:
        >>> mask, half = torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.full((2, 2), 0.5)
        >>> adv, _ = optimal_token_baseline(torch.tensor([1.0, 0.0]), mask, cfg=OptimalTokenBaselineConfig(),
        ...     group_id=torch.zeros(2).long(), old_logp=half.log(), sum_pi_sq=half)
        >>> [[round(a, 4) for a in row] for row in adv.tolist()]
        [[0.5, 1.0], [-0.5, 0.0]]
    """
    return _otb(rewards, mask, old_logp, sum_pi_sq, cfg, group_id, "optimal_token_baseline", by_token=False)


@register(
    "advantage",
    "tir_optimal_token_baseline",
    config=OptimalTokenBaselineConfig,
    paper="arXiv:2602.07078",
    metrics=METRICS,
    needs=("old_logp", "sum_pi_sq"),
)
def tir_optimal_token_baseline(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: OptimalTokenBaselineConfig,
    group_id: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    sum_pi_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-turn Optimal Token Baseline: as ``optimal_token_baseline``, rows aligned by model-token index.

    Paper: The Optimal Token Baseline, Li et al., arXiv:2602.07078, its tool-integrated reasoning (TIR) setting:
    the k-th model token of every trajectory of a group shares the baseline B_k = sum_i G_k^i W_k^i /
    (sum_i W_k^i + eps), observation tokens (mask 0) skipped; W_k sums w over the first k model tokens.

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (its return on every response token).
        mask: ``[B, T]`` response mask (model tokens; multi-turn observations are 0).
        cfg: :class:`OptimalTokenBaselineConfig`.
        group_id: ``[B]`` int, the prompt group of each row (any order; equal sizes; a group of one has no
            baseline).
        old_logp: ``[B, T]`` log pi(y_t) of the sampled tokens under the policy before the update (``needs``;
            verl's ``old_log_probs``).
        sum_pi_sq: ``[B, T]`` sum_v pi(v)^2 of the same policy at each response position (``needs``; verl's
            ``sum_pi_squared``; :func:`sum_pi_sq_from_logits`).

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, with keys ``adv/mean``, ``adv/std`` (masked mean and
        population std over the response tokens), ``adv/frac_zero_std_groups`` (groups whose rewards are all
        equal) and ``otb/w_mean`` (mean of the per-token proxy w_t).

    Differences from the paper / released code:
        As verl ``compute_multi_turn_optimal_token_baseline_advantage``: empty responses leave their group, and a
        group with one non-empty response gets no baseline (also with ``handle_zero_tail=False``, where the
        column-aligned estimator still baselines it against itself). Apart from that, for masks without holes it
        equals ``optimal_token_baseline``. ``rollout_is_weights`` are not offered (see there).

    Example:
        >>> mask, half = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]), torch.full((2, 3), 0.5)
        >>> adv, _ = tir_optimal_token_baseline(torch.tensor([1.0, 0.0]), mask, cfg=OptimalTokenBaselineConfig(),
        ...     group_id=torch.zeros(2).long(), old_logp=half.log(), sum_pi_sq=half)
        >>> [[round(a, 4) for a in row] for row in adv.tolist()]
        [[0.5, 0.0, 0.5], [-0.5, -0.5, 0.0]]
    """
    return _otb(rewards, mask, old_logp, sum_pi_sq, cfg, group_id, "tir_optimal_token_baseline", by_token=True)


__all__ = [
    "OptimalTokenBaselineConfig",
    "optimal_token_baseline",
    "sum_pi_sq_from_logits",
    "tir_optimal_token_baseline",
]
