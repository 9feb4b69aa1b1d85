"""SPEAR's self-imitation in the trainer: keep promising trajectories, replay them with recalibrated advantages.

Per step, as the released ``dp_actor.py`` / ``ray_trainer_hybrid.py`` do (``TencentYoutuResearch/SPEAR``):

1. before the update, :meth:`SelfImitation.replay_batch` recalibrates every held row against the FIFO of
   group-mean rewards (A = R - P50, or w * A) and, when enough rows survive (``replay_due``), returns them as a
   ``TokenBatch`` (flush mode empties the buffer);
2. the on-policy update runs, then the replay batch is trained with the same policy loss and aggregation, its
   loss scaled by gamma(k) (``replay_coef``), in optimizer steps of its own that do not advance the
   learning-rate schedule (the code's replay steps sit inside one training step);
3. :meth:`SelfImitation.add` admits this step's rows with A > 0 and at least one tool call (stale rows
   evicted) and appends the step's group-mean rewards to the baseline FIFO.

The buffer, the recalibration and gamma(k) are ``entrolab.replay`` and ``entrolab.methods.spear_sil``; the
buffer's state is checkpointed with the run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from entrolab.batch import TokenBatch
from entrolab.methods.spear_sil import SpearReplayConfig, recalibrate, replay_coef, replay_due, replay_size
from entrolab.ops import Groups
from entrolab.options import dataclass_options
from entrolab.replay import ReplayBuffer

_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "attention_mask", "loss_mask", "old_logp", "old_entropy")


def parse_options(items: tuple[str, ...]) -> SpearReplayConfig:
    """``field=value`` items as a :class:`SpearReplayConfig`; an unknown field names the allowed ones."""
    return dataclass_options(SpearReplayConfig, items, "self_imitation")


class SelfImitation:
    """The replay buffer of one run and the replay batches it hands the trainer."""

    def __init__(self, cfg: SpearReplayConfig) -> None:
        self.cfg = cfg
        self.buffer = ReplayBuffer(
            capacity=cfg.max_held or None,
            tolerate_steps=cfg.tolerate_steps,
            min_tool_calls=cfg.min_tool_calls,
            baseline_capacity=cfg.baseline_capacity,
        )

    def coef(self, step: int) -> float:
        """gamma(k), the replay loss's weight at this step."""
        return replay_coef(step, self.cfg)

    def replay_batch(self, generator: torch.Generator) -> tuple[TokenBatch | None, dict[str, float]]:
        """The rows to replay this step with their recalibrated advantages, or None; and metrics
        (``sil/held``, ``sil/eligible``, ``sil/replayed``, ``sil/p50``)."""
        held = len(self.buffer)
        metrics = {"sil/held": float(held), "sil/eligible": 0.0, "sil/replayed": 0.0}
        p50 = self.buffer.p50()
        if p50 is not None:
            metrics["sil/p50"] = p50
        if not held or p50 is None:
            return None, metrics
        rows = self.buffer.rows()
        adv, keep = recalibrate(
            rows["rewards"],
            rows["advantages"],
            self.buffer.baseline(),
            self.cfg.weight_decay_trajectory_replay,
            keep_zero=self.cfg.keep_zero,
        )
        eligible = int(keep.sum())
        metrics["sil/eligible"] = float(eligible)
        if not replay_due(eligible, self.cfg):
            return None, metrics
        n = replay_size(eligible, self.cfg)
        idx = keep.nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)[:n]]
        if self.cfg.replay_mode == "flush":
            self.buffer.clear()
        metrics["sil/replayed"] = float(n)
        extras = {k: v[idx] for k, v in rows.items() if k not in (*_FIELDS, "rewards", "advantages", "truncated")}
        extras.pop("tool_calls", None)
        batch = TokenBatch(
            **{k: rows[k][idx] for k in _FIELDS},
            group_id=torch.arange(n),  # replayed rows come from different groups and steps
            truncated=rows["truncated"][idx].bool(),
            advantages=adv[idx].float(),
            extras=extras,
        )
        return batch.trim(), metrics

    def add(self, batch: TokenBatch, rewards: torch.Tensor, tool_calls: torch.Tensor, step: int) -> int:
        """Admit this step's rows (``rewards [B]`` the shaped rewards, as the code stores them) and append the
        step's group-mean rewards to the baseline FIFO; returns the rows admitted."""
        adv = batch.advantages
        rows = {k: getattr(batch, k) for k in _FIELDS}
        rows.update(rewards=rewards.float(), advantages=adv.float(), truncated=batch.truncated.long())
        rows["tool_calls"] = tool_calls.long()
        rows.update({k: v for k, v in batch.extras.items() if k == "model_mask" or k == "step_ids"})
        n = self.buffer.add(rows, step, keep=batch.loss_mask.sum(-1) > 0)  # rows still in the loss
        groups = Groups(batch.group_id)
        self.buffer.add_baseline(groups.grid(rewards.float()).mean(1))
        return n

    def state_dict(self) -> dict:
        return self.buffer.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.buffer.load_state_dict(state)


__all__ = ["SelfImitation", "parse_options"]
