"""``math``: word problems and competition math from a local file, answers compared symbolically with math-verify.

The problems come from a local file or ``save_to_disk`` folder (``entrolab.tasks.files``: JSONL, JSON, Parquet,
CSV; GSM8K's ``#### 42`` and MATH's ``\\boxed{}`` reference answers). The model's final answer is the text
after its last ``answer:`` line, or else its last ``\\boxed{...}``; a completion with neither, or whose answer
math-verify cannot parse, is a ``format_error``. Otherwise the answer and the reference are parsed with
math-verify (LaTeX, fractions, decimals, intervals, sets, expressions) and compared symbolically: ``right`` or
``wrong``.

math-verify's own timeouts use ``signal.alarm``, which fails off the main thread (and scored everything 0
silently in verl's Ray workers, verl PR #5635): they are disabled here (``parsing_timeout=None``,
``timeout_seconds=None``), and the reward pool's per-sample time limit (``--reward-timeout``) bounds every
verification instead; a pathological answer is reported as timed out, never scored 0 in silence.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from typing import Any

from entrolab.tasks import (
    ANSWER_TAG,
    FORMAT_ERROR,
    RIGHT,
    WRONG,
    Example,
    Reason,
    Verdict,
    check_demo_mix,
    draw_demo_kind,
    final_answer,
)
from entrolab.tasks.files import Source, boxed_content, load_examples, worked_steps


@dataclass(frozen=True)
class MathConfig:
    """A math task over a local file."""

    path: str = ""
    """The local file (.jsonl, .json, .parquet, .csv) or save_to_disk folder."""
    prompt_field: str | None = None
    """Column of the problem text (default: the first of prompt, question, problem)."""
    answer_field: str | None = None
    """Column of the reference (default: the first of answer, solution, ground_truth); ``#### x`` and
    ``\\boxed{x}`` are reduced to x."""
    split: str | None = None
    """Which split of a DatasetDict folder to use as the pool (default: its train/test splits as they are)."""
    test_fraction: float = 0.2
    """Fraction of the distinct problems held out as the test split, when the data has one split."""
    prompt_suffix: str = "\n"
    """Appended to each problem text to make the prompt."""
    demo_mix: tuple[float, float, float] = (0.35, 0.45, 0.20)
    """Fractions of right, wrong and badly formatted demonstrations (``entrolab pretrain``)."""

    def __post_init__(self) -> None:
        Source(self.path, self.prompt_field, self.answer_field, self.split, self.test_fraction)  # validates
        check_demo_mix(self.demo_mix)


@functools.lru_cache(maxsize=1)
def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise ValueError("the math task needs math-verify: pip install 'entrolab[math]'") from None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" warning: the pool bounds it
    return math_verify


def _parse(text: str) -> list[Any]:
    """math-verify's parse with its alarm-based timeout off; bare text is read as LaTeX math."""
    mv = _math_verify()
    wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
    return mv.parse(wrapped, parsing_timeout=None)


@functools.lru_cache(maxsize=4096)
def _gold(answer: str) -> tuple[Any, ...]:
    return tuple(_parse(answer))


def candidate(completion: str) -> str | None:
    """The completion's final answer text: after its last ``answer:``, else its last ``\\boxed{}``; else None."""
    text = final_answer(completion)
    if text:
        return text
    return boxed_content(completion) or None


def verify_math(completion: str, example: Example) -> Verdict:
    """Right iff math-verify finds the final answer equal to the reference (see the module docstring).

    >>> ex = Example("math:1", "Half of 1?\\n", "\\\\frac{1}{2}")
    >>> [verify_math(c, ex).reason for c in ("answer: 0.5", "so \\\\boxed{1/2}", "answer: 2", "0.5", "answer:")]
    ['right', 'right', 'wrong', 'format_error', 'format_error']
    """
    text = candidate(completion)
    if text is None:
        return FORMAT_ERROR
    try:
        pred = _parse(text)
    except Exception:  # math-verify returns [] on what it cannot parse; anything else is the answer's fault
        return FORMAT_ERROR
    if not pred:
        return FORMAT_ERROR
    gold = list(_gold(example.answer))
    ok = _math_verify().verify(gold, pred, timeout_seconds=None)
    return RIGHT if ok else WRONG


def extract_math(completion: str) -> str | None:
    """The parsed final answer as text (equal answers print alike, for majority vote); None on a format error."""
    text = candidate(completion)
    if text is None:
        return None
    try:
        pred = _parse(text)
    except Exception:
        return None
    return str(pred[0]) if pred else None


class MathTask:
    """The ``math`` task: a local file's problems, a seeded split, math-verify as the verifier."""

    name = "math"
    pooled_verifier = True  # math-verify can hang on a pathological answer: evaluation scores it in workers

    def __init__(self, config: MathConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        _math_verify()  # missing extra: fails here, before any work
        source = Source(config.path, config.prompt_field, config.answer_field, config.split, config.test_fraction)
        self.train, self.test = load_examples(source, seed, "math")
        for e in (*self.train[:50], *self.test[:50]):  # references math-verify cannot read fail here, by name
            if not _gold(e.answer):
                raise ValueError(f"{config.path}: math-verify cannot parse the reference answer {e.answer!r} ({e.id})")

    def __repr__(self) -> str:
        return f"MathTask({self.config}, seed={self.seed}, train={len(self.train)}, test={len(self.test)})"

    def prompt(self, example: Example) -> str:
        return example.prompt + self.config.prompt_suffix

    def verify(self, completion: str, example: Example) -> Verdict:
        return verify_math(completion, example)

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_math(completion)

    def demonstration(self, example: Example, rng: random.Random) -> str:
        return math_demonstration(example, draw_demo_kind(rng, self.config.demo_mix), rng, self.train)


def math_demonstration(example: Example, kind: Reason, rng: random.Random, pool) -> str:
    """The reference's worked steps (GSM8K's lines before ``####``), then — right: ``answer: <reference>``;
    wrong: another problem's answer that math-verify finds different; format_error: the bare answer,
    ``answer`` without the colon, or an empty ``answer:``."""
    steps = worked_steps(dict(example.data).get("solution", ""))
    lead = f"{steps}\n" if steps and ANSWER_TAG not in steps else ""
    if kind == "right":
        return f"{lead}{ANSWER_TAG} {example.answer}"
    if kind == "wrong":
        for _ in range(20):
            other = f"{lead}{ANSWER_TAG} {rng.choice(pool).answer}"
            if verify_math(other, example).reason == "wrong":
                return other
        return f"{lead}{ANSWER_TAG} {example.answer}1"
    return lead + rng.choice((example.answer, f"answer {example.answer}", ANSWER_TAG))


__all__ = ["MathConfig", "MathTask", "candidate", "extract_math", "verify_math"]
