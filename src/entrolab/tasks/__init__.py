"""Verifiable tasks: seeded train/test splits, a pure verifier, and imperfect demonstrations for warm-start.

Build a task by name: ``make_task("countdown", seed=0, n_numbers=4)``; the options are the fields of the
task's frozen config dataclass (``ArithmeticConfig``, ``CountdownConfig``, ``JsonlConfig``).

Every completion ends with a final line ``answer: <X>``. A verifier reads the text after the *last*
``answer:``, stripped, and returns a ``Verdict``: ``format_error`` (score 0) when there is no ``answer:`` or X
does not parse, else ``wrong`` (0) or ``right`` (1). Verifiers are pure module-level functions (they pickle,
for worker processes) and never raise on any string.

Prompts and demonstrations are plain text (no chat template) over ``CHARSET``, the alphabet of the
character-level tokenizer. This package is pure Python and the standard library: it never imports torch.
"""

from __future__ import annotations

import importlib
import math
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol, get_args

Reason = Literal["format_error", "wrong", "right"]
"""A verdict's reason; a demonstration's kind uses the same three words."""
REASONS: tuple[str, ...] = get_args(Reason)
ALPHABET: str = string.ascii_letters + string.digits + string.punctuation + " \n"
"""The tiny tokenizer's characters, in vocabulary order (``models.build_tokenizer``)."""
CHARSET: frozenset[str] = frozenset(ALPHABET)
"""The only characters a prompt or a demonstration may contain."""
ANSWER_TAG = "answer:"


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one completion."""

    score: float
    """In [0, 1]."""
    reason: Reason

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verdict score must be in [0, 1], got {self.score!r}")
        if self.reason not in REASONS:
            raise ValueError(f"Verdict reason must be one of {REASONS}, got {self.reason!r}")


RIGHT = Verdict(1.0, "right")
WRONG = Verdict(0.0, "wrong")
FORMAT_ERROR = Verdict(0.0, "format_error")


@dataclass(frozen=True)
class Example:
    """One problem. Hashable and picklable."""

    id: str
    """Stable, unique within the task (derived from the content, so the same across seeds)."""
    prompt: str
    """The full prompt text given to the model."""
    answer: str
    """The reference answer as text (for countdown: the target)."""
    data: tuple[tuple[str, Any], ...] = ()
    """Fields the verifier and demonstrations need, e.g. ``(("numbers", (3, 7, 8)), ("target", 29))``."""

    def get(self, key: str) -> Any:
        """The value of ``key`` in ``data``; a KeyError names the keys there are."""
        for k, v in self.data:
            if k == key:
                return v
        raise KeyError(f"example {self.id!r} has no data field {key!r}; it has {[k for k, _ in self.data]}")


class Task(Protocol):
    """What the trainer, the evaluator and the warm start use."""

    name: str
    train: Sequence[Example]
    test: Sequence[Example]

    def prompt(self, example: Example) -> str: ...

    def verify(self, completion: str, example: Example) -> Verdict: ...

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        """The final answer, normalised for majority vote; None on a format error.

        ``example`` is optional; countdown uses it to tell legal expressions from illegal ones.
        """
        ...

    def demonstration(self, example: Example, rng: random.Random) -> str: ...


# ---- shared by the task modules -----------------------------------------------------------------------


def final_answer(completion: str) -> str | None:
    """The text after the last ``answer:``, stripped; None when there is none."""
    at = completion.rfind(ANSWER_TAG)
    return None if at < 0 else completion[at + len(ANSWER_TAG) :].strip()


def draw_demo_kind(rng: random.Random, mix: tuple[float, float, float]) -> Reason:
    """Draw ``right`` / ``wrong`` / ``format_error`` with probabilities ``mix``."""
    u = rng.random()
    if u < mix[0]:
        return "right"
    return "wrong" if u < mix[0] + mix[1] else "format_error"


def check_demo_mix(mix: tuple[float, float, float]) -> None:
    """A ``demo_mix`` is three non-negative fractions (right, wrong, format_error) summing to 1."""
    if len(mix) != 3 or any(not 0.0 <= p <= 1.0 for p in mix) or not math.isclose(sum(mix), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"demo_mix must be 3 fractions (right, wrong, format_error) in [0, 1] summing to 1, got {mix!r}"
        )


def check_range(name: str, pair: tuple[int, int], lo: int, hi: int) -> None:
    """``pair`` is an inclusive ``(min, max)`` with ``lo <= min <= max <= hi``."""
    ok = isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
    if not ok or not lo <= pair[0] <= pair[1] <= hi:
        raise ValueError(
            f"{name} must be an inclusive (min, max) of ints with {lo} <= min <= max <= {hi}, got {pair!r}"
        )


def split_examples(
    examples: Iterable[Example], rng: random.Random, test_size: int, max_train: int | None
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(train, test): dedupe by prompt (first one wins), shuffle with ``rng``, take the test set first."""
    first: dict[str, Example] = {}
    for e in examples:
        first.setdefault(e.prompt, e)
    unique = list(first.values())
    if len(unique) <= test_size:
        raise ValueError(
            f"only {len(unique)} distinct problems for a test set of {test_size} plus a train set; "
            "widen the task's ranges or lower test_size"
        )
    rng.shuffle(unique)
    test = tuple(unique[:test_size])
    train = tuple(unique[test_size:] if max_train is None else unique[test_size : test_size + max_train])
    return train, test


class GeneratedTask:
    """Shared body of the procedurally generated tasks: a frozen config, a seed, seeded disjoint splits.

    Subclasses set ``name`` and ``config_class`` and implement ``generate`` (all candidate problems, drawn with
    ``rng``), ``verify``, ``extract_answer`` and ``demonstration``.
    """

    name: str
    config_class: type

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        self.config = config or self.config_class()
        self.seed = seed
        examples = self.generate(self.config, random.Random(seed))
        self.train, self.test = split_examples(
            examples, random.Random(seed), self.config.test_size, self.config.max_train
        )

    @staticmethod
    def generate(config: Any, rng: random.Random) -> list[Example]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, seed={self.seed}, train={len(self.train)}, test={len(self.test)})"

    def prompt(self, example: Example) -> str:
        return example.prompt


# ---- registry -------------------------------------------------------------------------------------------

TaskName = Literal["arithmetic", "countdown", "jsonl", "math"]
TASKS: tuple[str, ...] = get_args(TaskName)
_CLASSES: dict[str, tuple[str, str, str]] = {  # name -> (module, config class, task class); imported lazily
    "arithmetic": ("entrolab.tasks.arithmetic", "ArithmeticConfig", "ArithmeticTask"),
    "countdown": ("entrolab.tasks.countdown", "CountdownConfig", "CountdownTask"),
    "jsonl": ("entrolab.tasks.jsonl", "JsonlConfig", "JsonlTask"),
    "math": ("entrolab.tasks.math_answers", "MathConfig", "MathTask"),
}
DESCRIPTIONS: dict[str, str] = {
    "arithmetic": "integer expressions such as 3+7-5=?, one right answer",
    "countdown": "reach a target with given numbers (many right answers; the expression is checked)",
    "jsonl": "your problems from a local file (JSONL, JSON, Parquet, CSV, save_to_disk), exact or numeric match",
    "math": "word problems / competition math from a local file, answers compared symbolically by math-verify",
}


def task_list() -> list[tuple[str, str]]:
    """(name, one-line description) of every task: the built-in ones, then reasoning-gym's when installed."""
    rows = [(name, DESCRIPTIONS[name]) for name in TASKS]
    try:
        from entrolab.tasks.rg import list_tasks
    except ImportError:
        return [*rows, ("rg:<name>", "any reasoning-gym dataset (pip install 'entrolab[rg]' to list them)")]
    try:
        return [*rows, *list_tasks()]
    except ValueError:  # reasoning-gym itself is not installed
        return [*rows, ("rg:<name>", "any reasoning-gym dataset (pip install 'entrolab[rg]' to list them)")]


def make_task(name: str, *, seed: int = 0, **options: Any) -> Task:
    """Build task ``name`` with its config's fields set from ``options`` (lists become tuples);
    ``rg:<dataset>`` builds a reasoning-gym task (``entrolab.tasks.rg``)."""
    if name.startswith("rg:"):
        from entrolab.tasks.rg import make_rg_task

        return make_rg_task(name.removeprefix("rg:"), seed=seed, **options)
    if name not in _CLASSES:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    module_name, config_name, task_name = _CLASSES[name]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    allowed = sorted(f.name for f in fields(config_cls))
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for task {name!r}; allowed: {allowed}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return getattr(module, task_name)(config_cls(**options), seed=seed)


__all__ = [
    "ALPHABET",
    "ANSWER_TAG",
    "CHARSET",
    "FORMAT_ERROR",
    "REASONS",
    "RIGHT",
    "TASKS",
    "WRONG",
    "Example",
    "Reason",
    "Task",
    "TaskName",
    "Verdict",
    "make_task",
    "task_list",
]
