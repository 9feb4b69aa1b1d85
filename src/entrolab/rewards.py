"""Scoring completions: the task's verifier or a user's reward function, and what happens when one raises.

A reward function is ``fn(completion: str, example: Example) -> float | Verdict`` (a pure, picklable callable).
A function that raises is never scored 0 silently: by default the run stops with the failing example and the
traceback (``on_error="raise"``); with ``on_error="skip"`` that sample is dropped from the update (its mask is
zeroed) and counted in ``reward/errors``.
"""

from __future__ import annotations

import importlib
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from entrolab.tasks import Example, Verdict

OnRewardError = Literal["raise", "skip"]


class RewardError(RuntimeError):
    """A reward function raised (or returned a non-finite score) on one sample."""


@dataclass(frozen=True)
class Scores:
    """Scores of B completions."""

    reward: torch.Tensor  # [B] float, 0 where the sample errored
    right: torch.Tensor  # [B] bool
    format_error: torch.Tensor  # [B] bool
    errored: torch.Tensor  # [B] bool, the reward function raised (only with on_error="skip")


def load_reward_fn(spec: str) -> Callable[[str, Example], Any]:
    """Load ``"package.module:function"``; a clear error when it is not there."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name!r} for reward function {spec!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r}: {module_name!r} has no callable {attr!r}")
    return fn


def score_completions(
    completions: Sequence[str],
    examples: Sequence[Example],
    reward_fn: Callable[[str, Example], Any],
    on_error: OnRewardError = "raise",
) -> Scores:
    """Score each completion against its example.

    A float return is a score (right iff >= 1); a ``Verdict`` carries its own reason. Non-finite scores count
    as errors.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    reward, right, fmt, err = [], [], [], []
    for completion, example in zip(completions, examples, strict=True):
        try:
            out = reward_fn(completion, example)
            if isinstance(out, Verdict):
                score, is_right, is_fmt = (
                    float(out.score),
                    out.reason == "right",
                    out.reason == "format_error",
                )
            else:
                score = float(out)
                is_right, is_fmt = score >= 1.0, False
            if not math.isfinite(score):
                raise ValueError(f"reward function returned a non-finite score {score!r}")
        except Exception as e:
            if on_error == "raise":
                raise RewardError(
                    f"reward function raised on example {example.id!r}\n"
                    f"  prompt: {example.prompt!r}\n  completion: {completion!r}\n"
                    f"{traceback.format_exc()}"
                    "Pass --on-reward-error skip to drop such samples and count them in reward/errors."
                ) from e
            reward.append(0.0)
            right.append(False)
            fmt.append(False)
            err.append(True)
            continue
        reward.append(score)
        right.append(is_right)
        fmt.append(is_fmt)
        err.append(False)
    return Scores(
        reward=torch.tensor(reward, dtype=torch.float32),
        right=torch.tensor(right, dtype=torch.bool),
        format_error=torch.tensor(fmt, dtype=torch.bool),
        errored=torch.tensor(err, dtype=torch.bool),
    )
