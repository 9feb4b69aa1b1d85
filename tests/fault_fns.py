"""User functions that fail on purpose, for the fault tests run through the real CLI."""

from __future__ import annotations

import os
import time

import torch

from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip

_CALLS = {"n": 0}


def digits(completion: str, example) -> float:
    """A reward with spread on the random tiny model: the share of digits."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def hang(completion: str, example) -> float:
    """A reward that never returns."""
    time.sleep(3600)
    return 0.0


def hang_on_ones(completion: str, example) -> float:
    """Hangs on prompts that start with '1', else the digit share."""
    if example.prompt.startswith("1"):
        time.sleep(3600)
    return digits(completion, example)


def die(completion: str, example) -> float:
    """Kills its worker process (as a segfault in a native verifier would)."""
    os._exit(3)


def raise_on_ones(completion: str, example) -> float:
    if example.prompt.startswith("1"):
        raise RuntimeError("boom")
    return digits(completion, example)


def nan_once(logp, old_logp, advantages, mask, *, cfg, entropy=None):
    """PPO-clip whose loss is NaN on exactly one call (the second), then normal again."""
    _CALLS["n"] += 1
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=PPOClipConfig(), entropy=entropy)
    if _CALLS["n"] == 2:
        loss = loss * torch.tensor(float("nan"))
    return loss, metrics


def nan_always(logp, old_logp, advantages, mask, *, cfg, entropy=None):
    """PPO-clip whose loss is always NaN."""
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=PPOClipConfig(), entropy=entropy)
    return loss * torch.tensor(float("nan")), metrics
