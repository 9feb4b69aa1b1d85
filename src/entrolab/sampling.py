"""A step's rollouts: draw, score, shape, and let the samplers choose the groups that enter the update.

``shape_rewards`` fills errored samples' rewards and runs the reward shapers (what the advantage sees);
``sampled_batch`` draws rollout rounds until the samplers have kept ``n_groups`` groups or ``max_rounds``
rounds were drawn, then cuts the batch to ``n_groups`` groups (topping it up with dropped groups, whose
advantage is 0, when the rounds ran out), and returns the round counts as metrics. Without samplers it draws
exactly one round and returns it untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from entrolab.batch import TokenBatch
from entrolab.rewards import Scores
from entrolab.rollout import Rollout
from entrolab.stepstats import fill_errored
from entrolab.update import Methods

Draw = Callable[[], tuple[Rollout, Scores]]


def shape_rewards(
    methods: Methods, batch: TokenBatch, scores: Scores, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """-> (the rewards with errored samples set to their group's mean [B], the shaped rewards [B], metrics)."""
    raw = fill_errored(scores.reward, scores.errored, batch.group_id)  # [B]
    rewards, m = raw, {}
    available = {"old_entropy": batch.old_entropy, **batch.extras}
    for entry, rcfg in methods.shapers:
        extra = {k: available[k] for k in entry.needs if k in available}
        rewards, sm = entry.fn(
            rewards,
            batch.loss_mask,
            cfg=rcfg,
            group_id=batch.group_id,
            lengths=batch.lengths,
            truncated=batch.truncated,
            max_length=max_length,
            **extra,
        )
        m.update({k: float(v) for k, v in sm.items()})
    return raw, rewards, m


def answer_phase(response_ids: torch.Tensor, mask: torch.Tensor, marker_ids: list[int]) -> torch.Tensor:
    """1 on each response's tokens from the start of its last occurrence of ``marker_ids`` on (all 0 when the
    marker is absent), within ``mask``.  [B, T]"""
    out = torch.zeros_like(mask, dtype=torch.float32)
    n = len(marker_ids)
    if n == 0:
        return out
    for i, (ids, length) in enumerate(zip(response_ids.tolist(), mask.sum(-1).long().tolist(), strict=True)):
        for start in range(length - n, -1, -1):
            if ids[start : start + n] == marker_ids:
                out[i, start:length] = 1.0
                break
    return out


def scored_batch(rollout: Rollout, scores: Scores, group_size: int) -> TokenBatch:
    """The batch of a rollout with errored samples out of the loss."""
    batch = TokenBatch.from_rollout(rollout, group_size)
    return batch.replace(loss_mask=batch.attention_mask * (~scores.errored).float().unsqueeze(-1))


def _keep(methods: Methods, batch: TokenBatch, scores: Scores, max_length: int) -> tuple[torch.Tensor, dict]:
    raw, shaped, _ = shape_rewards(methods, batch, scores, max_length)
    keep = torch.ones(len(batch), dtype=torch.bool)
    metrics: dict[str, float] = {}
    for entry, scfg in methods.samplers:
        k, sm = entry.fn(
            raw,
            batch.loss_mask,
            cfg=scfg,
            group_id=batch.group_id,
            shaped=shaped,
            lengths=batch.lengths,
            entropy=batch.old_entropy,
        )
        keep &= k.bool()
        metrics.update({key: float(v) for key, v in sm.items()})
    return keep, metrics


def sampled_batch(
    draw: Draw, methods: Methods, *, group_size: int, n_groups: int, max_length: int, pad_id: int
) -> tuple[Rollout, Scores, dict[str, float]]:
    """One round, or with samplers as many as needed (at most the samplers' ``max_rounds``), cut to
    ``n_groups`` groups of ``group_size``. -> (rollout, scores, metrics: ``sampler/rounds``,
    ``sampler/generated_groups``, ``sampler/kept_groups``, ``sampler/refilled_groups`` and the samplers' own)."""
    rollout, scores = draw()
    if not methods.samplers:
        return rollout, scores, {}
    max_rounds = max(int(getattr(c, "max_rounds", 1)) for _, c in methods.samplers)
    rollouts, parts, keeps, sums = [], [], [], {}
    while True:
        keep, sm = _keep(methods, scored_batch(rollout, scores, group_size), scores, max_length)
        grid = keep.view(-1, group_size)
        if not bool((grid.all(1) == grid.any(1)).all()):
            raise ValueError("a sampler must keep or drop whole groups (its keep mask varies within a group)")
        rollouts.append(rollout)
        parts.append(scores)
        keeps.append(grid[:, 0])
        for k, v in sm.items():
            sums[k] = sums.get(k, 0.0) + v
        kept = int(torch.cat(keeps).sum())
        if kept >= n_groups or len(rollouts) >= max_rounds:
            break
        rollout, scores = draw()
    kept_groups = torch.cat(keeps)  # [rounds * n_groups]
    order = torch.cat([kept_groups.nonzero().flatten(), (~kept_groups).nonzero().flatten()])[:n_groups]
    rows = (order.unsqueeze(1) * group_size + torch.arange(group_size)).flatten()
    metrics = {k: v / len(rollouts) for k, v in sums.items()}
    metrics.update(
        {
            "sampler/rounds": float(len(rollouts)),
            "sampler/generated_groups": float(kept_groups.numel()),
            "sampler/kept_groups": float(kept_groups.sum()),
            "sampler/refilled_groups": float(max(0, n_groups - int(kept_groups.sum()))),
        }
    )
    whole = Rollout.cat(rollouts, pad_id) if len(rollouts) > 1 else rollouts[0]
    return whole.select(rows), Scores.cat(parts).select(rows), metrics


__all__ = ["Draw", "answer_phase", "sampled_batch", "scored_batch", "shape_rewards"]
