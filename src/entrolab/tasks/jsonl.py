"""``jsonl``: your own problems, one ``{"prompt": ..., "answer": ...}`` object per line of a local file — or any
local file or folder ``entrolab.tasks.files`` reads (JSON, Parquet, CSV, ``save_to_disk``), with its column
mapping (``prompt_field``, ``answer_field``) and splits.

The prompt is the line's prompt text, as is. ``match="exact"``: right iff the text after the last
``answer:``, stripped, equals the reference answer (stripped). ``match="numeric"``: both parse as finite
floats and agree within a relative tolerance of 1e-6; an answer that is not a number is a ``format_error``.
Blank lines are skipped; a repeated prompt keeps its first line. Prompts and answers must use ``CHARSET``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Literal, get_args

from entrolab.tasks import (
    ANSWER_TAG,
    CHARSET,
    FORMAT_ERROR,
    RIGHT,
    WRONG,
    Example,
    Reason,
    Verdict,
    check_demo_mix,
    draw_demo_kind,
    final_answer,
    split_examples,
)

Match = Literal["exact", "numeric"]
MATCHES: tuple[str, ...] = get_args(Match)
REL_TOL = 1e-6
_MAX_NUMBER_CHARS = 100


@dataclass(frozen=True)
class JsonlConfig:
    """Problems from a local JSON-lines file."""

    path: str = ""
    """The .jsonl file (required), or a .json / .parquet / .csv file or save_to_disk folder."""
    prompt_field: str | None = None
    """Column of the prompt (default: prompt, question or problem); for a .jsonl file, ``prompt``."""
    answer_field: str | None = None
    """Column of the reference answer (default: answer, solution or ground_truth; ``#### x`` / ``\\boxed{x}``
    reduced to x)."""
    split: str | None = None
    """Which split of a DatasetDict folder to use as the pool (default: its train/test splits as they are)."""
    match: Match = "exact"
    """How an answer is compared with the reference: exact text, or numeric with rel. tolerance 1e-6."""
    test_fraction: float = 0.2
    """Fraction of the distinct problems held out as the test split (at least one each way)."""
    demo_mix: tuple[float, float, float] = (0.35, 0.45, 0.20)
    """Fractions of right, wrong and badly formatted demonstrations."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError('task jsonl needs path=FILE.jsonl, a file of {"prompt": ..., "answer": ...} lines')
        if self.match not in MATCHES:
            raise ValueError(f"match must be one of {MATCHES}, got {self.match!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        check_demo_mix(self.demo_mix)


def _number(text: str | None) -> float | None:
    if text is None or len(text) > _MAX_NUMBER_CHARS:
        return None
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def load_jsonl(path: str, match: Match) -> list[Example]:
    """The file's examples in order; a ValueError names the file, the line and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"jsonl task: cannot read {path!r}: {e}") from e
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
            raise ValueError(f'{where}: expected an object with "prompt" and "answer", got {line[:80]!r}')
        prompt, answer = row["prompt"], row["answer"]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f'{where}: "prompt" must be a non-empty string, got {prompt!r}')
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise ValueError(f'{where}: "answer" must be a string or a number, got {answer!r}')
        answer = str(answer).strip()
        if not answer or ANSWER_TAG in answer:
            raise ValueError(f'{where}: "answer" must be non-empty and must not contain {ANSWER_TAG!r}')
        bad = sorted(set(prompt + answer) - CHARSET)
        if bad:
            raise ValueError(f"{where}: characters outside the tokenizer's alphabet: {bad}")
        if match == "numeric" and _number(answer) is None:
            raise ValueError(f'{where}: match="numeric" but "answer" {answer!r} is not a finite number')
        out.append(Example(id=f"jsonl:{lineno}", prompt=prompt, answer=answer))
    return out


def verify_jsonl(completion: str, example: Example, match: Match = "exact") -> Verdict:
    """Right iff the text after the last ``answer:`` matches the reference (see the module docstring).

    >>> ex = Example("jsonl:1", "2/8?\\n", "0.25")
    >>> [verify_jsonl(c, ex, "numeric").reason for c in ("answer: .25", "answer: 0.3", "answer: a", "0.25")]
    ['right', 'wrong', 'format_error', 'format_error']
    """
    text = final_answer(completion)
    if not text:
        return FORMAT_ERROR
    if match == "exact":
        return RIGHT if text == example.answer else WRONG
    x = _number(text)
    if x is None:
        return FORMAT_ERROR
    return RIGHT if math.isclose(x, float(example.answer), rel_tol=REL_TOL) else WRONG


def extract_jsonl(completion: str, match: Match = "exact") -> str | None:
    """The stripped answer text (numeric: the number to 9 significant digits); None on a format error."""
    text = final_answer(completion)
    if not text:
        return None
    if match == "exact":
        return text
    x = _number(text)
    return None if x is None else f"{x:.9g}"


def _other_number(answer: str) -> str:
    """A number that is not within tolerance of ``answer``."""
    x = float(answer)
    return "0" if abs(x) >= 1 else f"{x + 1:.9g}"


class JsonlTask:
    """The ``jsonl`` task: a seeded split of the file's distinct prompts."""

    name = "jsonl"

    def __init__(self, config: JsonlConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        if not config.path.endswith(".jsonl") or config.prompt_field or config.answer_field or config.split:
            self.train, self.test = _from_files(config, seed)
            return
        examples = load_jsonl(config.path, config.match)
        n = len({e.prompt for e in examples})
        if n < 2:
            raise ValueError(f"{config.path}: needs at least 2 distinct prompts (one train, one test), has {n}")
        test_size = min(max(1, round(n * config.test_fraction)), n - 1)
        self.train, self.test = split_examples(examples, random.Random(seed), test_size, None)

    def __repr__(self) -> str:
        return f"JsonlTask({self.config}, seed={self.seed}, train={len(self.train)}, test={len(self.test)})"

    def prompt(self, example: Example) -> str:
        return example.prompt

    def verify(self, completion: str, example: Example) -> Verdict:
        return verify_jsonl(completion, example, self.config.match)

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_jsonl(completion, self.config.match)

    def demonstration(self, example: Example, rng: random.Random) -> str:
        return jsonl_demonstration(example, draw_demo_kind(rng, self.config.demo_mix), rng, self)


def _from_files(config: JsonlConfig, seed: int):
    """(train, test) through ``entrolab.tasks.files``, answers checked against ``match``."""
    from entrolab.tasks.files import Source, load_examples

    source = Source(config.path, config.prompt_field, config.answer_field, config.split, config.test_fraction)
    train, test = load_examples(source, seed, "jsonl")
    if config.match == "numeric":
        bad = next((e for e in (*train, *test) if _number(e.answer) is None), None)
        if bad is not None:
            raise ValueError(f'{config.path}: match="numeric" but the answer {bad.answer!r} ({bad.id}) is not a number')
    return train, test


def jsonl_demonstration(example: Example, kind: Reason, rng: random.Random, task: JsonlTask) -> str:
    """right: ``answer: <answer>``. wrong: another train example's answer (one that really is wrong).
    format_error: the bare answer, ``answer`` without the colon, or an empty ``answer:``."""
    if kind == "right":
        return f"{ANSWER_TAG} {example.answer}"
    if kind == "wrong":
        for _ in range(20):
            other = f"{ANSWER_TAG} {rng.choice(task.train).answer}"
            if task.verify(other, example).reason == "wrong":
                return other
        numeric = task.config.match == "numeric"
        return f"{ANSWER_TAG} {_other_number(example.answer) if numeric else example.answer + '0'}"
    return rng.choice((example.answer, f"answer {example.answer}", ANSWER_TAG))
