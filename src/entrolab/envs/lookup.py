"""``lookup``: multi-hop questions over a procedurally generated fact base, answered with ``search`` calls.

Every problem has its own small fact base of invented names (``boss of zeb: kira``, ``mentor of kira: lom``,
and distractors), so the answer cannot be memorised: the model must search, read the result and search again,
the shape of the search-agent tasks SPEAR and AEPO train on. ``search(mentor of kira)`` -> ``-> lom``; a
query with no fact -> ``-> no result``. Question: ``who is the mentor of the boss of zeb?`` (hops from
``hops``); the right episode is one search per hop, then ``answer: lom``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from entrolab.envs import EnvTask, ToolEnv, play
from entrolab.tasks import Example, check_demo_mix, check_range, draw_demo_kind

RELATIONS = ("boss", "friend", "mentor", "coach", "tutor")
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))) + rng.choice("nrsl")


@dataclass(frozen=True)
class LookupConfig:
    """Multi-hop questions over a generated fact base."""

    hops: tuple[int, int] = (1, 4)
    """Inclusive range of the number of relations in a question."""
    distractors: int = 4
    """Extra facts per problem about the same names."""
    test_size: int = 128
    """Problems in the test split."""
    max_train: int = 20_000
    """At most this many problems in the train split."""
    max_turns: int = 5
    """Model turns per episode before it ends without an answer."""
    demo_mix: tuple[float, float, float] = (0.3, 0.5, 0.2)
    """Fractions of right, wrong and badly formatted demonstrations of the warm start."""

    def __post_init__(self) -> None:
        check_range("hops", self.hops, 1, 4)
        if self.distractors < 0 or self.test_size < 1 or self.max_train < 1 or self.max_turns < 1:
            raise ValueError(
                "distractors must be >= 0 and test_size, max_train, max_turns >= 1, got "
                f"{self.distractors}, {self.test_size}, {self.max_train}, {self.max_turns}"
            )
        check_demo_mix(self.demo_mix)


class LookupEnv(ToolEnv):
    tools = ("search",)

    def call(self, name: str, args: str) -> str:
        facts = dict(self.example.get("facts"))
        return facts.get(" ".join(args.split()), "no result")

    def judge(self, answer: str) -> bool:
        return answer == self.example.answer


class LookupTask(EnvTask):
    name = "lookup"
    config_class = LookupConfig

    def __init__(self, config: LookupConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.max_turns = self.config.max_turns

    @staticmethod
    def generate(config: LookupConfig, rng: random.Random) -> list[Example]:
        out = []
        for _ in range(config.test_size + config.max_train):
            n = rng.randint(*config.hops)
            rels = [rng.choice(RELATIONS) for _ in range(n)]
            names = [_name(rng)]
            while len(names) <= n:
                nm = _name(rng)
                if nm not in names:
                    names.append(nm)
            facts = {f"{r} of {a}": b for r, a, b in zip(rels, names, names[1:], strict=False)}
            for _ in range(config.distractors):
                key = f"{rng.choice(RELATIONS)} of {rng.choice(names)}"
                facts.setdefault(key, _name(rng))
            question = " of the ".join(reversed(rels))
            prompt = f"Q: who is the {question} of {names[0]}?\n"
            data = (("facts", tuple(sorted(facts.items()))), ("relations", tuple(rels)), ("start", names[0]))
            out.append(Example(id=f"lookup:{prompt.strip()}:{names[-1]}", prompt=prompt, answer=names[-1], data=data))
        return out

    def make_env(self) -> LookupEnv:
        return LookupEnv()

    def demo_segments(self, example: Example, rng: random.Random) -> list[tuple[str, bool]]:
        kind, facts = draw_demo_kind(rng, self.config.demo_mix), dict(example.get("facts"))
        rels, who = list(example.get("relations")), example.get("start")
        turns = []
        if kind == "right":
            for r in rels:
                turns.append(f"search({r} of {who})\n")
                who = facts[f"{r} of {who}"]
            turns.append(f"answer: {who}")
        elif kind == "wrong":
            stop = rng.randrange(len(rels))  # stops early, or answers an intermediate name
            for r in rels[:stop]:
                turns.append(f"search({r} of {who})\n")
                who = facts[f"{r} of {who}"]
            turns.append(f"answer: {who if rng.random() < 0.5 else _name(rng)}")
        else:
            turns = [f"search {rels[0]} of {who}\n", f"answer: {_name(rng)}"]
        return play(self.make_env(), example, [(t, True) for t in turns])


__all__ = ["RELATIONS", "LookupConfig", "LookupEnv", "LookupTask"]
