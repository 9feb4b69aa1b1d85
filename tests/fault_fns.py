"""Reward functions for tests run through the trainer and the CLI; some fail on purpose.

Kept free of torch and of the trainer, so a reward worker process starts in a fraction of a second."""

from __future__ import annotations

import os
import time


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


def raising_reward(completion: str, example) -> float:
    """Raises on prompts that start with '1', else 0.5."""
    if example.prompt.startswith("1"):
        raise RuntimeError("boom")
    return 0.5
