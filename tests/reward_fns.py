"""Reward functions for tests/test_rewards.py, in an importable module so that worker processes can load them.

``behave`` reads what to do from the completion: a number is its score; ``right`` / ``wrong`` / ``format`` are
Verdicts; ``raise`` raises, ``nan`` / ``inf`` are non-finite, ``hang`` sleeps 60 s, ``die`` exits the process
with code 3, ``killed`` sends it SIGKILL (as the out-of-memory killer would). Every score comes with
``{"pid": the worker's pid}``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

from entrolab.rewards import batched_reward
from entrolab.tasks import FORMAT_ERROR, RIGHT, WRONG, Example, Verdict

VERDICTS = {"right": RIGHT, "wrong": WRONG, "format": FORMAT_ERROR}


def behave(completion: str, example: Example) -> tuple[float | Verdict, dict]:
    if completion in VERDICTS:
        return VERDICTS[completion], {"pid": os.getpid()}
    if completion == "raise":
        raise ValueError(f"told to raise on {example.id}")
    if completion == "hang":
        time.sleep(60)
    if completion == "die":
        os._exit(3)
    if completion == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    return float(completion), {"pid": os.getpid()}


def plain(completion: str, example: Example) -> float:
    """A score of the number the completion is, nothing else."""
    return float(completion)


@batched_reward
def batched_length(completions: Sequence[str], examples: Sequence[Example]) -> list[tuple[float, dict]]:
    """len(completion) / 10 for each, with the call's size; ``nan`` anywhere scores that one sample NaN, ``raise``
    anywhere fails the whole call."""
    if "raise" in completions:
        raise RuntimeError("batched call told to raise")
    return [
        (float("nan") if c == "nan" else len(c) / 10, {"call_size": len(completions), "pid": os.getpid()})
        for c in completions
    ]


@batched_reward
def batched_hang(completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
    if "hang" in completions:
        time.sleep(60)
    return [1.0] * len(completions)


@batched_reward
def batched_too_few(completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
    return [1.0] * (len(completions) - 1)


def _refuse_to_load() -> None:
    raise RuntimeError("this reward cannot be loaded here")


class Unloadable:
    """Pickles, but unpickling it (in a worker) raises."""

    def __call__(self, completion: str, example: Example) -> float:
        return 1.0

    def __reduce__(self):
        return (_refuse_to_load, ())
