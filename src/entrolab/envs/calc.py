"""``calc``: arithmetic word problems; the model may call a calculator, ``calc(expression)``, before it answers.

A problem needs one product and one sum or difference of two-digit numbers, e.g. ``a box holds 23 pens. 7
boxes and 12 loose pens: how many pens?``. The right episode is ``calc(23*7+12)`` -> ``-> 173`` ->
``answer: 173``; answering at once is allowed (and, for a small model, usually wrong). The calculator takes
integers, ``+``, ``-``, ``*`` and spaces (``*`` binds tighter); anything else gets ``-> error: ...``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from entrolab.envs import EnvTask, ToolEnv, play
from entrolab.tasks import Example, check_demo_mix, check_range, draw_demo_kind

_TEMPLATES = (
    ("a box holds {a} pens. {b} boxes and {c} loose pens: how many pens?", "{a}*{b}+{c}"),
    ("{a} kids get {b} cards each, then {c} cards are lost. how many cards?", "{a}*{b}-{c}"),
    ("a bus has {a} rows of {b} seats and {c} are taken. how many are free?", "{a}*{b}-{c}"),
    ("ann had {a} coins, got {b} bags of {c} coins. how many coins now?", "{a}+{b}*{c}"),
)
_EXPR = re.compile(r"\s*-?\d{1,9}(\s*[-+*]\s*-?\d{1,9}){0,5}\s*")


def calculate(expr: str) -> int | None:
    """The value of a flat integer expression (``*`` before ``+``/``-``), or None if it is not one."""
    if not _EXPR.fullmatch(expr):
        return None
    tokens = re.findall(r"(?<![\d\s])-?\d+|\d+|[-+*]", expr.replace(" ", ""))
    nums, ops = [int(tokens[0])], []
    for op, v in zip(tokens[1::2], tokens[2::2], strict=False):
        if op == "*":
            nums[-1] *= int(v)
        else:
            ops.append(op)
            nums.append(int(v))
    total = nums[0]
    for op, v in zip(ops, nums[1:], strict=True):
        total = total + v if op == "+" else total - v
    return total


@dataclass(frozen=True)
class CalcConfig:
    """Word problems with a calculator tool."""

    first: tuple[int, int] = (11, 49)
    """Inclusive range of the first number."""
    second: tuple[int, int] = (2, 9)
    """Inclusive range of the second number."""
    third: tuple[int, int] = (1, 30)
    """Inclusive range of the third number."""
    test_size: int = 128
    """Problems in the test split."""
    max_train: int = 20_000
    """At most this many problems in the train split."""
    max_turns: int = 3
    """Model turns per episode before it ends without an answer."""
    demo_mix: tuple[float, float, float] = (0.3, 0.5, 0.2)
    """Fractions of right, wrong and badly formatted demonstrations of the warm start."""

    def __post_init__(self) -> None:
        for name in ("first", "second", "third"):
            check_range(name, getattr(self, name), 0, 999)
        if self.test_size < 1 or self.max_train < 1 or self.max_turns < 1:
            raise ValueError(
                f"test_size, max_train and max_turns must be >= 1, got {self.test_size}, {self.max_train}, "
                f"{self.max_turns}"
            )
        check_demo_mix(self.demo_mix)


class CalcEnv(ToolEnv):
    tools = ("calc",)

    def call(self, name: str, args: str) -> str:
        value = calculate(args)
        return "error: not an integer expression of + - *" if value is None else str(value)

    def judge(self, answer: str) -> bool:
        return answer == self.example.answer


class CalcTask(EnvTask):
    name = "calc"
    config_class = CalcConfig

    def __init__(self, config: CalcConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.max_turns = self.config.max_turns

    @staticmethod
    def generate(config: CalcConfig, rng: random.Random) -> list[Example]:
        out = []
        for _ in range(4 * (config.test_size + config.max_train)):
            t = rng.randrange(len(_TEMPLATES))
            v = {k: rng.randint(*getattr(config, n)) for k, n in zip("abc", ("first", "second", "third"), strict=True)}
            text, expr = (s.format(**v) for s in _TEMPLATES[t])
            data = (("expression", expr),)
            out.append(Example(id=f"calc:{t}:{expr}", prompt=f"Q: {text}\n", answer=str(calculate(expr)), data=data))
            if len(out) >= config.test_size + config.max_train:
                break
        return out

    def make_env(self) -> CalcEnv:
        return CalcEnv()

    def demo_segments(self, example: Example, rng: random.Random) -> list[tuple[str, bool]]:
        kind, expr = draw_demo_kind(rng, self.config.demo_mix), example.get("expression")
        value = int(example.answer)
        if kind == "right":
            turns = [f"calc({expr})\n", f"answer: {value}"]
        elif kind == "wrong":
            if rng.random() < 0.5:  # a guess without the tool
                turns = [f"answer: {value + rng.choice([-10, -2, -1, 1, 2, 10])}"]
            else:  # the wrong operation
                swapped = expr.replace("+", "#").replace("-", "+").replace("#", "-")
                turns = [f"calc({swapped})\n", f"answer: {calculate(swapped)}"]
        else:  # a malformed call, then a guess
            turns = [f"calc {expr}\n", f"answer: {value + rng.choice([-1, 1])}"]
        return play(self.make_env(), example, [(t, True) for t in turns])


__all__ = ["CalcConfig", "CalcEnv", "CalcTask", "calculate"]
