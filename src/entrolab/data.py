"""The data stream: the task a run trains on and the prompts of each step, a pure function of (seed, position)."""

from __future__ import annotations

import functools
import random

from entrolab.tasks import Example, Task, make_task


def build_task(task: str, task_seed: int, task_path: str | None = None) -> Task:
    """The named task with its seeded train/test split (``task_path`` for the jsonl task)."""
    options = {"path": task_path} if task == "jsonl" else {}
    return make_task(task, seed=task_seed, **options)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def prompts_at(task: Task, seed: int, position: int, n: int) -> list[Example]:
    """The n training examples at ``position`` of the data stream: a seeded permutation per epoch.

    A pure function of (seed, position), so a resumed run and every method of a comparison see the same
    prompts in the same order.
    """
    size = len(task.train)
    return [task.train[_epoch_order(seed, i // size, size)[i % size]] for i in range(position, position + n)]


__all__ = ["build_task", "prompts_at"]
