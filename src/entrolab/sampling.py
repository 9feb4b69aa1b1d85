"""A step's rollouts: draw, score, shape, and let the samplers choose the groups that enter the update.

``shape_rewards`` fills errored samples' rewards and runs the reward shapers (what the advantage sees);
``sampled_batch`` draws rollout rounds until the samplers have kept ``n_groups`` groups or ``max_rounds``
rounds were drawn, then cuts the batch to ``n_groups`` groups (topping it up with dropped groups, whose
advantage is 0, when the rounds ran out), and returns the round counts as metrics. Without samplers it draws
exactly one round and returns it untouched. A sampler of ``unit="sample"`` drops single rows instead: they stay
in the batch (their group's advantage is computed on all its rows) and leave the loss (``row_keep``).

The methods that run before the update get their declared needs from :func:`pre_inputs`: the rollout's
tensors, its extras, the model-side inputs of ``entrolab.step_inputs`` and the run's generator and step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from entrolab.batch import TokenBatch
from entrolab.registry import Entry
from entrolab.rewards import Scores
from entrolab.rollout import Rollout
from entrolab.step_inputs import answer_phase, cat_rows, select_rows
from entrolab.stepstats import fill_errored
from entrolab.tasks import ANSWER_TAG
from entrolab.update import Methods

# a round: the rollout, its scores and the model-side inputs its methods declared (entrolab.step_inputs)
Draw = Callable[[], tuple[Rollout, Scores, dict[str, torch.Tensor]]]


def pre_inputs(batch: TokenBatch, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a reward shaper, sampler or advantage may declare in ``needs``: the behaviour policy's entropies
    and log-probs, the group ids, the rollout's extras and ``inputs`` (model-side needs, generator, step)."""
    return {
        "old_entropy": batch.old_entropy,
        "old_logp": batch.old_logp,
        "group_id": batch.group_id,
        **batch.extras,
        **(inputs or {}),
    }


def declared(entry: Entry, available: dict[str, Any]) -> dict[str, Any]:
    """The declared needs of ``entry``; one the caller did not supply raises, naming it."""
    missing = [k for k in entry.needs if k not in available and k != "group_id"]
    if missing:
        raise ValueError(f"{entry.axis} {entry.name!r} needs {missing}, which this caller did not supply")
    return {k: available[k] for k in entry.needs if k != "group_id"}


def shape_rewards(
    methods: Methods, batch: TokenBatch, scores: Scores, max_length: int, inputs: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """-> (the rewards with errored samples set to their group's mean [B], the shaped rewards [B], metrics)."""
    raw = fill_errored(scores.reward, scores.errored, batch.group_id)  # [B]
    rewards, m = apply_shapers(methods, batch, raw, max_length, inputs)
    return raw, rewards, m


def apply_shapers(
    methods: Methods, batch: TokenBatch, rewards: torch.Tensor, max_length: int, inputs: dict[str, Any] | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The reward shapers in order on ``rewards`` [B], each with its declared needs and controller state.
    -> (shaped rewards [B], metrics). The trainer and the TRL adapter both call it."""
    m: dict[str, float] = {}
    available = pre_inputs(batch, inputs)
    for entry, rcfg in methods.shapers:
        extra = declared(entry, available)
        if entry.state:
            extra["state"] = methods.state.get(entry.name, {})
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
    return rewards, m


def answer_marker(methods: Methods) -> str:
    """The answer marker of the run's phase-aware shapers (their ``marker`` option), else ``answer:``."""
    markers = {getattr(c, "marker", ANSWER_TAG) for e, c in methods.shapers if "answer_phase" in e.needs}
    if len(markers) > 1:
        raise ValueError(f"the reward shapers ask for different answer markers {sorted(markers)}; choose one")
    return markers.pop() if markers else ANSWER_TAG


def advantage_of(
    methods: Methods, batch: TokenBatch, rewards: torch.Tensor, inputs: dict[str, Any] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The advantage's output on ``rewards`` [B] with its declared needs and state.

    -> (advantages [B, 1] | [B, T], metrics, the extra per-sample tensors it ``provides`` (else {}))."""
    entry, cfg = methods.advantage
    extra = declared(entry, pre_inputs(batch, inputs))
    if entry.state:
        extra["state"] = methods.state.get(entry.name, {})
    out = entry.fn(rewards, batch.loss_mask, cfg=cfg, group_id=batch.group_id, **extra)
    if entry.provides:
        adv, metrics, provided = out
        missing = sorted(set(entry.provides) - set(provided))
        if missing:
            raise ValueError(f"advantage {entry.name!r} declares provides {missing} but did not return them")
        return adv, metrics, {k: provided[k] for k in entry.provides}
    adv, metrics = out
    return adv, metrics, {}


def scored_batch(rollout: Rollout, scores: Scores, group_size: int) -> TokenBatch:
    """The batch of a rollout with errored samples out of the loss."""
    batch = TokenBatch.from_rollout(rollout, group_size)
    return batch.replace(loss_mask=batch.loss_mask * (~scores.errored).float().unsqueeze(-1))


def _keep(
    methods: Methods, batch: TokenBatch, scores: Scores, max_length: int, inputs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """-> (group keep [B], row keep [B] of the sample-unit samplers, metrics)."""
    raw, shaped, _ = shape_rewards(methods, batch, scores, max_length, inputs)
    available = pre_inputs(batch, inputs)
    keep = torch.ones(len(batch), dtype=torch.bool)
    rows = torch.ones(len(batch), dtype=torch.bool)
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
            **declared(entry, available),
        )
        if entry.unit == "sample":
            rows &= k.bool()
        else:
            keep &= k.bool()
        metrics.update({key: float(v) for key, v in sm.items()})
    return keep, rows, metrics


def sampled_batch(
    draw: Draw,
    methods: Methods,
    *,
    group_size: int,
    n_groups: int,
    max_length: int,
    pad_id: int,
    inputs: dict[str, Any] | None = None,
) -> tuple[Rollout, Scores, dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
    """One round, or with samplers as many as needed (at most the samplers' ``max_rounds``), cut to
    ``n_groups`` groups of ``group_size``. ``inputs``: the generator and step, for the samplers' needs.
    -> (rollout, scores, the rounds' model-side inputs, metrics: ``sampler/rounds``,
    ``sampler/generated_groups``, ``sampler/kept_groups``, ``sampler/refilled_groups`` and the samplers' own,
    row keep [B]: False on the rows a sample-unit sampler dropped from the loss)."""
    rollout, scores, got = draw()
    if not methods.samplers:
        return rollout, scores, got, {}, torch.ones(len(rollout), dtype=torch.bool)
    refilling = [c for e, c in methods.samplers if e.unit == "group"]  # sample-unit samplers never refill
    max_rounds = max((int(getattr(c, "max_rounds", 1)) for c in refilling), default=1)
    rollouts, parts, gots, keeps, row_keeps, sums = [], [], [], [], [], {}
    while True:
        keep, rows_kept, sm = _keep(
            methods, scored_batch(rollout, scores, group_size), scores, max_length, {**(inputs or {}), **got}
        )
        grid = keep.view(-1, group_size)
        if not bool((grid.all(1) == grid.any(1)).all()):
            raise ValueError("a sampler must keep or drop whole groups (its keep mask varies within a group)")
        rollouts.append(rollout)
        parts.append(scores)
        gots.append(got)
        keeps.append(grid[:, 0])
        row_keeps.append(rows_kept)
        for k, v in sm.items():
            sums[k] = sums.get(k, 0.0) + v
        kept = int(torch.cat(keeps).sum())
        if kept >= n_groups or len(rollouts) >= max_rounds:
            break
        rollout, scores, got = draw()
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
    row_keep = torch.cat(row_keeps)[rows]  # [B]
    if any(e.unit == "sample" for e, _ in methods.samplers):
        metrics["sampler/dropped_rows"] = float((~row_keep).sum())
    got_all = select_rows(cat_rows(gots), rows)
    return whole.select(rows), Scores.cat(parts).select(rows), got_all, metrics, row_keep


__all__ = [
    "Draw",
    "advantage_of",
    "answer_marker",
    "answer_phase",
    "apply_shapers",
    "declared",
    "pre_inputs",
    "sampled_batch",
    "scored_batch",
    "shape_rewards",
]
