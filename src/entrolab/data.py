"""The data stream: the task a run trains on and the prompts of each step, a pure function of (seed, position)."""

from __future__ import annotations

import ast
import functools
import random
from collections.abc import Sequence
from typing import Any

from entrolab.tasks import Example, Task, make_task

FILE_TASKS = ("jsonl", "math")
# the flags every command that builds a task takes (TrainConfig, pretrain, eval), besides --task
TASK_FLAGS = ("env", "task_path", "prompt_field", "answer_field", "data_split", "test_fraction", "task_options")


def parse_task_options(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> options (values read as Python literals, else kept as text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"task option {item!r} must look like 'key=value'")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def build_task(
    task: str,
    task_seed: int,
    task_path: str | None = None,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    data_split: str | None = None,
    test_fraction: float | None = None,
    task_options: Sequence[str] = (),
    env: str | None = None,
) -> Task:
    """The named task with its seeded train/test split: ``task_path`` and the column and split flags for the
    file tasks (jsonl, math), ``task_options`` (``key=value``) for any task's config fields."""
    options = parse_task_options(task_options)
    if env is not None:  # a multi-turn environment (entrolab.envs); --task-option sets its config fields
        from entrolab.envs import make_env_task

        return make_env_task(env, seed=task_seed, **options)
    if task_path is not None:
        if task not in FILE_TASKS:
            raise ValueError(f"--task-path applies to the file tasks {list(FILE_TASKS)}, not to task {task!r}")
        options["path"] = task_path
    named = {"prompt_field": prompt_field, "answer_field": answer_field, "split": data_split}
    named["test_fraction"] = test_fraction
    for key, value in named.items():
        if value is not None:
            if task not in FILE_TASKS:
                flag = "--data-split" if key == "split" else f"--{key.replace('_', '-')}"
                raise ValueError(f"{flag} applies to the file tasks {list(FILE_TASKS)}, not to task {task!r}")
            options[key] = value
    return make_task(task, seed=task_seed, **options)


def task_of(args: Any, seed: int) -> Task:
    """``build_task`` from an object with ``task`` and the ``TASK_FLAGS`` attributes (a config, CLI args)."""
    return build_task(
        args.task, seed, **{k: getattr(args, k, None) or (() if k == "task_options" else None) for k in TASK_FLAGS}
    )


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


__all__ = ["FILE_TASKS", "TASK_FLAGS", "build_task", "parse_task_options", "prompts_at", "task_of"]
