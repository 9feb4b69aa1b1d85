"""``countdown``: reach a target with the given numbers, each used at most once; many right answers.

Prompt ``use 3 7 8 to make 29``; demonstration ``7*3=21\\n21+8=29\\nanswer: 7*3+8``. The answer X is an
expression over integers with ``+ - * /``, parentheses and unary minus, parsed by a small recursive-descent
parser (never ``eval``) and evaluated exactly with ``Fraction``. Unparseable, longer than
``MAX_ANSWER_CHARS`` or nested deeper than ``MAX_DEPTH``: ``format_error``. A number used more often than it
is given, division by zero, or a value other than the target: ``wrong``.

Targets come from *chains*: the first step combines two numbers, each later step combines the running result
``r`` with a new number ``n`` as ``r op n`` or ``n op r``; intermediate results stay non-negative (with 3
numbers and ``+ - *`` that loses no positive target). Generation uses no division.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, NamedTuple, get_args

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
MAX_ANSWER_CHARS = 200
MAX_DEPTH = 40  # parentheses and unary minuses; keeps the parser far from the recursion limit
_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))", re.ASCII)
_ENUMERATE_UP_TO = 300_000  # chains; smaller spaces are listed exhaustively, larger ones sampled


@dataclass(frozen=True)
class CountdownConfig:
    """Countdown-style number puzzles."""

    n_numbers: int = 3
    """How many numbers each problem gives."""
    values: tuple[int, int] = (1, 9)
    """Inclusive (min, max) of the given numbers."""
    target_terms: tuple[int, int] = (2, 3)
    """Inclusive (min, max) count of numbers combined into the target."""
    operators: tuple[Operator, ...] = ("+", "-", "*")
    """Operators used to build targets (answers may also divide)."""
    test_size: int = 128
    """Problems in the test split."""
    max_train: int = 20_000
    """At most this many problems in the train split (all the others when there are fewer)."""
    demo_mix: tuple[float, float, float] = (0.35, 0.45, 0.20)
    """Fractions of right, wrong and badly formatted demonstrations."""

    def __post_init__(self) -> None:
        if not isinstance(self.n_numbers, int) or not 2 <= self.n_numbers <= 6:
            raise ValueError(f"n_numbers must be an int in [2, 6], got {self.n_numbers!r}")
        check_range("values", self.values, 0, 999)
        check_range("target_terms", self.target_terms, 2, min(self.n_numbers, 4))
        if not self.operators or len(set(self.operators)) != len(self.operators):
            raise ValueError(f"operators must be distinct, non-empty, from {OPERATORS}, got {self.operators!r}")
        if any(op not in OPERATORS for op in self.operators):
            raise ValueError(f"operators must be drawn from {OPERATORS}, got {self.operators!r}")
        if self.test_size < 1 or self.max_train < 1:
            raise ValueError(f"test_size and max_train must be >= 1, got {self.test_size}, {self.max_train}")
        check_demo_mix(self.demo_mix)


class Chain(NamedTuple):
    expression: str  # minimal parentheses, e.g. "(7+3)*8"
    steps: tuple[str, ...]  # e.g. ("7+3=10", "10*8=80")
    value: int
    picked: tuple[int, ...]  # the numbers in order of use, e.g. (7, 3, 8)
    ops: tuple[str, ...]  # one per step
    flips: tuple[bool, ...]  # one per step after the first: True for ``n op r``


_PREC = {"+": 1, "-": 1, "*": 2}


def build_chain(picked: tuple[int, ...], ops: tuple[str, ...], flips: tuple[bool, ...]) -> Chain | None:
    """``picked[0] op0 picked[1]``, then ``r op n`` (or ``n op r`` where flipped); None if a step is < 0."""
    expr, prec, value, steps = str(picked[0]), 3, picked[0], []
    for n, op, flip in zip(picked[1:], ops, (False, *flips), strict=True):
        left, right = (n, value) if flip else (value, n)
        new = left * right if op == "*" else left + right if op == "+" else left - right
        if new < 0:
            return None
        steps.append(f"{left}{op}{right}={new}")
        if flip:  # the running expression is the right operand: '-' needs parentheses around a sum too
            wrap = prec < _PREC[op] or (prec == _PREC[op] and op == "-")
            expr = f"{n}{op}({expr})" if wrap else f"{n}{op}{expr}"
        else:
            expr = f"({expr}){op}{n}" if prec < _PREC[op] else f"{expr}{op}{n}"
        prec, value = _PREC[op], new
    return Chain(expr, tuple(steps), value, picked, ops, flips)


@functools.lru_cache(maxsize=4096)
def chains(numbers: tuple[int, ...], terms: tuple[int, int], operators: tuple[str, ...]) -> tuple[Chain, ...]:
    """Every distinct chain over ``terms`` of ``numbers`` (each used at most once)."""
    out: dict[str, Chain] = {}
    for k in range(terms[0], terms[1] + 1):
        for idx in itertools.permutations(range(len(numbers)), k):
            for ops in itertools.product(operators, repeat=k - 1):
                for flips in itertools.product((False, True), repeat=k - 2):
                    chain = build_chain(tuple(numbers[i] for i in idx), ops, flips)
                    if chain is not None:
                        out.setdefault(chain.expression, chain)
    return tuple(out.values())


def _example(numbers: tuple[int, ...], target: int) -> Example:
    listed = " ".join(map(str, numbers))
    return Example(
        id=f"countdown:{listed}:{target}",
        prompt=f"use {listed} to make {target}\n",
        answer=str(target),
        data=(("numbers", numbers), ("target", target)),
    )


def generate_countdown(cfg: CountdownConfig, rng: random.Random) -> list[Example]:
    """Every (sorted numbers, positive target) pair when the space is small (the defaults), else a sample."""
    values, n = range(cfg.values[0], cfg.values[1] + 1), cfg.n_numbers
    per_set = sum(
        math.perm(n, k) * len(cfg.operators) ** (k - 1) * 2 ** (k - 2)
        for k in range(cfg.target_terms[0], cfg.target_terms[1] + 1)
    )
    if math.comb(len(values) + n - 1, n) * per_set <= _ENUMERATE_UP_TO:
        return [
            _example(numbers, target)
            for numbers in itertools.combinations_with_replacement(values, n)
            for target in sorted({c.value for c in chains(numbers, cfg.target_terms, cfg.operators)} - {0})
        ]
    want, out = cfg.test_size + cfg.max_train, {}
    for _ in range(20 * want):
        numbers = tuple(sorted(rng.choice(values) for _ in range(n)))
        k = rng.randint(*cfg.target_terms)
        ops = tuple(rng.choice(cfg.operators) for _ in range(k - 1))
        chain = build_chain(tuple(rng.sample(numbers, k)), ops, tuple(rng.random() < 0.5 for _ in range(k - 2)))
        if chain is not None and chain.value > 0:
            ex = _example(numbers, chain.value)
            out.setdefault(ex.prompt, ex)
            if len(out) == want:
                break
    return list(out.values())


# ---- the parser: expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
#      factor := '-' factor | '(' expr ')' | integer. A value of None means "divided by zero".


class _Syntax(Exception):
    pass


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.used = tokens, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        if self.pos >= len(self.tokens):
            raise _Syntax
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expr(self, depth: int) -> Fraction | None:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.term(depth)
            value = None if value is None or right is None else value + right if op == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction | None:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor(depth)
            if value is None or right is None or (op == "/" and right == 0):
                value = None
            else:
                value = value * right if op == "*" else value / right
        return value

    def factor(self, depth: int) -> Fraction | None:
        if depth > MAX_DEPTH:
            raise _Syntax
        tok = self.take()
        if tok == "-":
            value = self.factor(depth + 1)
            return None if value is None else -value
        if tok == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _Syntax
            return value
        if not tok.isdigit():
            raise _Syntax
        self.used.append(int(tok))
        return Fraction(int(tok))


def parse_expression(text: str | None) -> tuple[Fraction | None, tuple[int, ...]] | None:
    """(value, or None on division by zero; the integers used) of an answer expression; None if malformed.

    >>> parse_expression("(8-2)/3")
    (Fraction(2, 1), (8, 2, 3))
    >>> parse_expression("1/(3-3)"), parse_expression("7*")
    ((None, (1, 3, 3)), None)
    """
    if text is None or len(text) > MAX_ANSWER_CHARS:
        return None
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    parser = _Parser(tokens)
    try:
        value = parser.expr(0)
    except _Syntax:
        return None
    return None if parser.pos != len(tokens) else (value, tuple(parser.used))


def _legal(used: tuple[int, ...], numbers: tuple[int, ...]) -> bool:
    have = Counter(numbers)
    return all(have[n] >= c for n, c in Counter(used).items())


def verify_countdown(completion: str, example: Example) -> Verdict:
    """Right iff the answer expression uses only the given numbers (each at most as often as given) and
    equals the target exactly."""
    parsed = parse_expression(final_answer(completion))
    if parsed is None:
        return FORMAT_ERROR
    value, used = parsed
    ok = value is not None and _legal(used, example.get("numbers")) and value == example.get("target")
    return RIGHT if ok else WRONG


def extract_countdown(completion: str, example: Example | None = None) -> str | None:
    """For majority vote: the expression's value as text (``29``, ``7/2``) when it is defined and (given the
    example) legal, so different right expressions vote together; otherwise ``illegal:`` and the
    expression without whitespace, so an illegal ``29`` never votes with a legal 29. None if malformed."""
    text = final_answer(completion)
    parsed = parse_expression(text)
    if text is None or parsed is None:
        return None
    value, used = parsed
    if value is None or (example is not None and not _legal(used, example.get("numbers"))):
        return "illegal:" + "".join(text.split())
    return str(value)


def countdown_demonstration(example: Example, kind: Reason, rng: random.Random, cfg: CountdownConfig) -> str:
    """One completion of the given kind.

    right: the steps of a random solution. wrong: a near-miss expression over the same numbers, or a
    solution with one number swapped for one not given. format_error: the steps without the answer line,
    cut off before the expression, a dangling operator, or ``=target`` written after the expression.
    """
    numbers, target = example.get("numbers"), example.get("target")
    every = chains(numbers, cfg.target_terms, cfg.operators)
    solution = rng.choice([c for c in every if c.value == target])
    if kind == "right":
        return "\n".join([*solution.steps, f"{ANSWER_TAG} {solution.expression}"])
    if kind == "wrong":
        wrong: Chain | None = None
        if rng.random() < 0.5:  # one used number swapped for a neighbour that is not given at all
            i = rng.randrange(len(solution.picked))
            lo, hi = cfg.values
            near = [v for v in (solution.picked[i] + d for d in (-2, -1, 1, 2)) if lo <= v <= hi and v not in numbers]
            if near:
                picked = (*solution.picked[:i], rng.choice(near), *solution.picked[i + 1 :])
                wrong = build_chain(picked, solution.ops, solution.flips)
        if wrong is None:  # a near miss: one of the six closest legal values that is not the target
            misses = sorted(
                (c for c in every if c.value != target), key=lambda c: (abs(c.value - target), c.expression)
            )
            if not misses:
                return f"{ANSWER_TAG} {target + 1}"
            wrong = rng.choice(misses[:6])
        return "\n".join([*wrong.steps, f"{ANSWER_TAG} {wrong.expression}"])
    failure = rng.randrange(4)
    right = "\n".join([*solution.steps, f"{ANSWER_TAG} {solution.expression}"])
    if failure == 0:
        return "\n".join(solution.steps)
    if failure == 1:
        return right[: rng.randint(1, right.rindex(ANSWER_TAG) + len(ANSWER_TAG) + 1)]
    if failure == 2:
        cuts = [i + 1 for i, ch in enumerate(solution.expression) if ch in "+-*("]
        return "\n".join([*solution.steps, f"{ANSWER_TAG} {solution.expression[: rng.choice(cuts)]}"])
    return "\n".join([*solution.steps, f"{ANSWER_TAG} {solution.expression}={target}"])


class CountdownTask(GeneratedTask):
    """The ``countdown`` task: seeded, disjoint train/test splits of distinct (numbers, target) problems."""

    name = "countdown"
    config_class = CountdownConfig
    generate = staticmethod(generate_countdown)

    def verify(self, completion: str, example: Example) -> Verdict:
        return verify_countdown(completion, example)

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_countdown(completion, example)

    def demonstration(self, example: Example, rng: random.Random) -> str:
        return countdown_demonstration(example, draw_demo_kind(rng, self.config.demo_mix), rng, self.config)
