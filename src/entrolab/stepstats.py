"""The trainer's own per-step numbers of a batch (rewards, rollout entropy, lengths), the errored-reward fill, and
seeding every RNG a run draws from."""

from __future__ import annotations

import random

import numpy as np
import torch

from entrolab.batch import TokenBatch
from entrolab.ops import Groups, masked_mean


def seed_everything(seed: int) -> None:
    """torch's, python's and numpy's global RNGs (the run's own ``torch.Generator`` is seeded by the caller)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def step_metrics(batch: TokenBatch, scores, rewards, grad_norms: list[float], lr: float) -> dict[str, float]:
    """The trainer's own per-step metrics (rewards, rollout entropy, lengths, gradient norm, learning rate)."""
    attn = batch.model_tokens  # an episode's observations are not the policy's
    return {
        "reward/mean": float(scores.reward.mean()),
        "reward/std": float(scores.reward.std()),
        "reward/shaped_mean": float(rewards.mean()),
        "reward/accuracy": float(scores.right.float().mean()),
        "reward/format_error": float(scores.format_error.float().mean()),
        "reward/errors": float(scores.errored.sum()),
        "reward/timeouts": float(scores.timed_out.sum()),
        "entropy/token_mean": float(masked_mean(batch.old_entropy, attn)),
        "entropy/sampled_nll": float(masked_mean(-batch.old_logp, attn)),
        "len/mean": float(batch.lengths.float().mean()),
        "len/max": float(batch.lengths.max()),
        "len/truncated_frac": float(batch.truncated.float().mean()),
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "lr": lr,
    }


def fill_errored(rewards: torch.Tensor, errored: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """Set errored samples' rewards to the mean of the valid ones of their group (0 if none is valid).  [B]"""
    if not bool(errored.any()):
        return rewards
    groups = Groups(group_id)
    r, e = groups.grid(rewards), groups.grid(errored)  # [P, G]
    mean = masked_mean(r, ~e, dim=1).unsqueeze(1)  # [P, 1]
    return groups.rows(torch.where(e, mean, r))


__all__ = ["fill_errored", "seed_everything", "step_metrics"]
