"""``arithmetic``: integer expressions such as ``3+7-5=?``, exactly one right answer.

The demonstration computes step by step (multiplications first, then left to right) and ends with the
value, e.g. ``3+7=10\\n10-5=5\\nanswer: 5``. The answer X must be an integer (optional leading minus).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from entrolab.tasks import (
    ANSWER_TAG,
    FORMAT_ERROR,
    RIGHT,
    WRONG,
    Example,
    GeneratedTask,
    Reason,
    Verdict,
    check_demo_mix,
    check_range,
    draw_demo_kind,
    final_answer,
)

Operator = Literal["+", "-", "*"]
OPERATORS: tuple[str, ...] = get_args(Operator)
_INTEGER = re.compile(r"-?[0-9]{1,60}")  # bounded: int() refuses strings over 4300 digits
_ENUMERATE_UP_TO = 200_000  # problem spaces up to this size are listed exhaustively, larger ones sampled


@dataclass(frozen=True)
class ArithmeticConfig:
    """Multi-operand integer expressions."""

    n_operands: tuple[int, int] = (3, 3)
    """Inclusive (min, max) number of operands per expression."""
    values: tuple[int, int] = (0, 9)
    """Inclusive (min, max) of the operand values (non-negative)."""
    operators: tuple[Operator, ...] = ("+", "-")
    """Operators drawn uniformly between operands; ``*`` binds tighter than ``+`` and ``-``."""
    test_size: int = 128
    """Problems in the test split."""
    max_train: int = 20_000
    """At most this many problems in the train split (all the others when there are fewer)."""
    demo_mix: tuple[float, float, float] = (0.35, 0.45, 0.20)
    """Fractions of right, wrong and badly formatted demonstrations."""

    def __post_init__(self) -> None:
        check_range("n_operands", self.n_operands, 2, 8)
        check_range("values", self.values, 0, 999)
        if not self.operators or len(set(self.operators)) != len(self.operators):
            raise ValueError(f"operators must be distinct, non-empty, from {OPERATORS}, got {self.operators!r}")
        if any(op not in OPERATORS for op in self.operators):
            raise ValueError(f"operators must be drawn from {OPERATORS}, got {self.operators!r}")
        if self.test_size < 1 or self.max_train < 1:
            raise ValueError(f"test_size and max_train must be >= 1, got {self.test_size}, {self.max_train}")
        check_demo_mix(self.demo_mix)


def _steps(operands: Sequence[int], ops: Sequence[str], slip: tuple[int, int] | None = None) -> tuple[list[str], int]:
    """The step lines and the final value; ``slip=(step, delta)`` adds ``delta`` to that step's result, and
    the later steps carry the error on."""
    vals, rest, steps = list(operands), list(ops), []

    def result(left: int, op: str, right: int) -> int:
        r = left * right if op == "*" else left + right if op == "+" else left - right
        if slip is not None and slip[0] == len(steps):
            r += slip[1]
        steps.append(f"{left}{op}{right}={r}")
        return r

    while "*" in rest:
        j = rest.index("*")
        vals[j : j + 2] = [result(vals[j], "*", vals[j + 1])]
        del rest[j]
    acc = vals[0]
    for op, v in zip(rest, vals[1:], strict=True):
        acc = result(acc, op, v)
    return steps, acc


def _example(operands: Sequence[int], ops: Sequence[str]) -> Example:
    expr = "".join(f"{v}{op}" for v, op in zip(operands, ops, strict=False)) + str(operands[-1])
    _, value = _steps(operands, ops)
    data = (("operands", tuple(operands)), ("operators", tuple(ops)))
    return Example(id=f"arithmetic:{expr}", prompt=f"{expr}=?\n", answer=str(value), data=data)


def generate_arithmetic(cfg: ArithmeticConfig, rng: random.Random) -> list[Example]:
    """Every problem when the space is small (the defaults: 4,000), else a random sample of distinct ones."""
    values, (lo_n, hi_n) = range(cfg.values[0], cfg.values[1] + 1), cfg.n_operands
    space = sum(len(values) ** n * len(cfg.operators) ** (n - 1) for n in range(lo_n, hi_n + 1))
    if space <= _ENUMERATE_UP_TO:
        return [
            _example(operands, ops)
            for n in range(lo_n, hi_n + 1)
            for operands in itertools.product(values, repeat=n)
            for ops in itertools.product(cfg.operators, repeat=n - 1)
        ]
    want, out = cfg.test_size + cfg.max_train, {}
    for _ in range(20 * want):
        n = rng.randint(lo_n, hi_n)
        ex = _example([rng.choice(values) for _ in range(n)], [rng.choice(cfg.operators) for _ in range(n - 1)])
        out.setdefault(ex.prompt, ex)
        if len(out) == want:
            break
    return list(out.values())


def _integer(text: str | None) -> int | None:
    return int(text) if text is not None and _INTEGER.fullmatch(text) else None


def verify_arithmetic(completion: str, example: Example) -> Verdict:
    """Right iff the integer after the last ``answer:`` equals the expression's value.

    >>> ex = _example((3, 7, 5), ("+", "-"))
    >>> [verify_arithmetic(c, ex).reason for c in ("answer: 5", "answer: -5", "answer: 5.0", "5")]
    ['right', 'wrong', 'format_error', 'format_error']
    """
    x = _integer(final_answer(completion))
    if x is None:
        return FORMAT_ERROR
    return RIGHT if x == int(example.answer) else WRONG


def extract_arithmetic(completion: str) -> str | None:
    """The answer integer as canonical text (``-05`` -> ``-5``); None on a format error."""
    x = _integer(final_answer(completion))
    return None if x is None else str(x)


def arithmetic_demonstration(example: Example, kind: Reason, rng: random.Random) -> str:
    """One completion of the given kind.

    right: the true steps. wrong: one step off by +-1 or +-2, carried on to the answer. format_error: the
    steps without the answer line, the text cut off before the answer's value, or a non-integer answer.
    """
    operands, ops = example.get("operands"), example.get("operators")
    steps, value = _steps(operands, ops)
    if kind == "right":
        return "\n".join([*steps, f"{ANSWER_TAG} {value}"])
    if kind == "wrong":
        delta = rng.choice((-2, -1, 1, 2))
        bad_steps, bad_value = _steps(operands, ops, (rng.randrange(len(steps)), delta))
        if bad_value == value:  # the slip was multiplied by 0 later on: slip on the last step instead
            bad_steps, bad_value = _steps(operands, ops, (len(steps) - 1, delta))
        return "\n".join([*bad_steps, f"{ANSWER_TAG} {bad_value}"])
    right = "\n".join([*steps, f"{ANSWER_TAG} {value}"])
    failure = rng.randrange(3)
    if failure == 0:  # stops before the answer line
        return "\n".join(steps)
    if failure == 1:  # cut off anywhere before the answer's first character
        return right[: rng.randint(1, right.rindex(ANSWER_TAG) + len(ANSWER_TAG) + 1)]
    garbage = rng.choice((steps[-1].split("=")[0], f"{value}=", "?"))  # an expression, a dangling '=', a '?'
    return "\n".join([*steps, f"{ANSWER_TAG} {garbage}"])


class ArithmeticTask(GeneratedTask):
    """The ``arithmetic`` task: seeded, disjoint train/test splits of distinct expressions."""

    name = "arithmetic"
    config_class = ArithmeticConfig
    generate = staticmethod(generate_arithmetic)

    def verify(self, completion: str, example: Example) -> Verdict:
        return verify_arithmetic(completion, example)

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_arithmetic(completion)

    def demonstration(self, example: Example, rng: random.Random) -> str:
        return arithmetic_demonstration(example, draw_demo_kind(rng, self.config.demo_mix), rng)
