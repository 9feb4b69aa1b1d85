"""Multi-turn environments: the ``Env`` protocol, tool calls parsed from the model's text, and the built-in envs.

An episode starts from an :class:`~entrolab.tasks.Example`: ``reset(example)`` returns the first observation
(the prompt), then the model and the environment alternate. One model *turn* is one line of text, a thought
and an action: a tool call ``name(args)`` at the end of the line, or the final ``answer: X``. ``step(action)``
returns the observation to append (``-> result``), the turn's reward, whether the episode is over, and info
(``right``, ``format_error``, ``tool_call``, ``parse_error``, ``valid``). Text that is neither a call nor an
answer gets a parse-error observation (``error: ...``) and the episode goes on: it is never an exception.

An :class:`EnvTask` is a task (train/test examples, seeded) that also makes environments and imperfect
demonstrations of tool use for the warm start (``entrolab pretrain --env NAME``). Built in: ``calc``
(arithmetic word problems with a calculator tool), ``lookup`` (multi-hop questions over a procedurally
generated fact base with ``search(query)``) and ``grid`` (walk to a goal on a small map with ``move(dir)``).
"""

from __future__ import annotations

import importlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from entrolab.tasks import ANSWER_TAG, Example, GeneratedTask

EnvName = Literal["calc", "lookup", "grid"]
ENVS: tuple[str, ...] = get_args(EnvName)
_CLASSES: dict[str, tuple[str, str, str]] = {
    "calc": ("entrolab.envs.calc", "CalcConfig", "CalcTask"),
    "lookup": ("entrolab.envs.lookup", "LookupConfig", "LookupTask"),
    "grid": ("entrolab.envs.grid", "GridConfig", "GridTask"),
}
DESCRIPTIONS: dict[str, str] = {
    "calc": "arithmetic word problems; the model may call calc(expression) before it answers",
    "lookup": "multi-hop questions over a generated fact base, answered with search(relation of name) calls",
    "grid": "walk to the goal of a small map with move(up|down|left|right), several moves per episode",
}
ENV_BUDGETS: dict[str, int] = {"calc": 96, "lookup": 160, "grid": 160}
"""An episode's default response budget (model turns and observations, tokens) per environment."""
_CALL = re.compile(r"([a-z_]+)\(([^()\n]*)\)\s*$")


@dataclass(frozen=True)
class StepResult:
    """What the environment answers to one model turn."""

    observation: str
    """Text appended after the turn (tokens attended, never trained on); may be empty."""
    reward: float = 0.0
    """The turn's reward; the episode's reward is the sum over its turns."""
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    """``right`` / ``format_error`` (on the last turn), ``tool_call`` / ``parse_error`` / ``valid`` (each turn)."""


class Env(Protocol):
    """One episode's environment (seeded by the caller through ``reset``)."""

    def reset(self, example: Example, seed: int = 0) -> str: ...

    def step(self, action: str) -> StepResult: ...

    def state_key(self) -> str:
        """The environment state the next turn acts from (equal keys: identical states, for GiGPO)."""
        ...


@dataclass(frozen=True)
class Action:
    """A parsed model turn: a final answer, a tool call, or a parse error."""

    kind: Literal["answer", "call", "error"]
    name: str = ""
    args: str = ""


def parse_action(text: str, tools: tuple[str, ...]) -> Action:
    """The model turn ``text`` (one line) as an answer (``answer: X`` anywhere), a call of one of ``tools``
    (``name(args)`` at the end of the line), or an error naming what was expected."""
    line = text.strip()
    at = line.rfind(ANSWER_TAG)
    if at >= 0:
        return Action("answer", args=line[at + len(ANSWER_TAG) :].strip())
    m = _CALL.search(line)
    if m is None:
        return Action("error", args=f"say {'|'.join(tools)}(...) or the answer")
    if m.group(1) not in tools:
        return Action("error", args=f"unknown tool {m.group(1)!r}; tools: {', '.join(tools)}")
    return Action("call", name=m.group(1), args=m.group(2).strip())


class ToolEnv:
    """An environment whose actions are tool calls and a final answer: subclasses set ``tools`` and implement
    ``call(name, args) -> str`` and ``judge(answer) -> bool``. The observation of a call is ``-> result``."""

    tools: tuple[str, ...] = ()

    def reset(self, example: Example, seed: int = 0) -> str:
        self.example, self.rng, self.history = example, random.Random(seed), []
        return example.prompt

    def call(self, name: str, args: str) -> str:
        raise NotImplementedError

    def judge(self, answer: str) -> bool:
        raise NotImplementedError

    def step(self, action: str) -> StepResult:
        act = parse_action(action, self.tools)
        if act.kind == "answer":
            right = self.judge(act.args)
            info = {"right": right, "format_error": not act.args, "valid": True}
            return StepResult("", 1.0 if right else 0.0, True, info)
        if act.kind == "error":
            obs = f"error: {act.args}\n"
            self.history.append(obs)
            return StepResult(obs, info={"parse_error": True, "valid": False})
        obs = f"-> {self.call(act.name, act.args)}\n"
        self.history.append(obs)
        return StepResult(obs, info={"tool_call": True, "valid": True})

    def state_key(self) -> str:
        return "".join(self.history)


class EnvTask(GeneratedTask):
    """A task whose episodes run in an environment: ``make_env()``, ``max_turns``, and ``demo_segments``
    (an imperfect demonstration as ``[(text, trained)]``: model turns trained on, observations not)."""

    max_turns: int = 4

    def make_env(self) -> Env:
        raise NotImplementedError

    def demo_segments(self, example: Example, rng: random.Random) -> list[tuple[str, bool]]:
        raise NotImplementedError

    def demonstration(self, example: Example, rng: random.Random) -> str:
        return "".join(text for text, _ in self.demo_segments(example, rng))

    def verify(self, completion: str, example: Example):  # a multi-turn task is scored by its environment
        raise TypeError(f"env {self.name!r} is scored by its environment, turn by turn, not by a verifier")

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        at = completion.rfind(ANSWER_TAG)
        return None if at < 0 else completion[at + len(ANSWER_TAG) :].strip().split("\n")[0] or None


def play(env: Env, example: Example, segments: list[tuple[str, bool]], seed: int = 0) -> list[tuple[str, bool]]:
    """Run the model turns of ``segments`` through ``env`` and return them with the env's real observations
    (a demonstration is always consistent with its environment)."""
    env.reset(example, seed)
    out = []
    for text, trained in segments:
        if not trained:
            continue
        out.append((text, True))
        res = env.step(text)
        if res.done:
            break
        if res.observation:
            out.append((res.observation, False))
    return out


def env_list() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in environment."""
    return [(name, DESCRIPTIONS[name]) for name in ENVS]


def make_env_task(name: str, *, seed: int = 0, **options: Any) -> EnvTask:
    """The built-in environment ``name`` with config options; an unknown name or option says what is allowed."""
    if name not in _CLASSES:
        raise ValueError(f"unknown env {name!r}; built-in envs: {list(ENVS)}")
    module, config_name, task_name = _CLASSES[name]
    mod = importlib.import_module(module)
    config_cls = getattr(mod, config_name)
    allowed = set(config_cls.__dataclass_fields__)
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"unknown option(s) {bad} for env {name!r}; allowed: {sorted(allowed)}")
    return getattr(mod, task_name)(config_cls(**options), seed=seed)


__all__ = [
    "ENVS",
    "ENV_BUDGETS",
    "Action",
    "Env",
    "EnvName",
    "EnvTask",
    "StepResult",
    "ToolEnv",
    "env_list",
    "make_env_task",
    "parse_action",
    "play",
]
