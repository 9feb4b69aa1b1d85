"""Multi-turn rollouts: G episodes per prompt, model turns and environment observations alternating.

Each episode is one row. Its response holds every turn after the prompt: the model's tokens (as sampled,
never re-tokenised) and the observations' tokens, right-padded. Per token the rollout records:

- ``logp`` / ``entropy`` and any requested extras: the behaviour policy's, on model tokens (0 on observations);
- ``extras["model_mask"]`` 1 on model tokens: the batch's loss mask (observations are attended, never trained on);
- ``extras["step_ids"]`` the turn index on model tokens, -1 on observations and padding;
- ``extras["state_ids"]`` an id of the environment state the turn acted from (``Env.state_key``, numbered per
  rollout) on model tokens, -1 elsewhere; ``extras["step_valid"]`` 1 on turns whose action parsed;
- ``extras["step_rewards"]`` the turn's reward on its last model token.

A model turn ends at a newline token or EOS, or after ``turn_tokens`` tokens. An episode ends when the
environment says done, the model emits EOS, ``max_turns`` turns were taken, or its response (model and
observation tokens) would pass ``max_tokens`` (then it is ``truncated``). Each turn re-prefills the whole
context (prompt and every turn so far) through ``generate_ids``; the KV cache is not kept across turns (the
cost is measured in ``benchmarks/agent_throughput.py``). An environment that raises on a turn ends that
episode as errored, with the example and the message (never a silent 0).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from entrolab.envs import EnvTask
from entrolab.rewards import Scores
from entrolab.rollout import Rollout, encode_prompts, generate_ids
from entrolab.tasks import Example

_NEWLINES: dict[int, list[int]] = {}
ENV_NEEDS = ("state_ids", "step_rewards", "step_valid", "turns", "tool_calls")
"""Needs only a multi-turn rollout supplies (``--env``)."""


def newline_ids(tokenizer) -> list[int]:
    """Ids of every token whose text contains a newline (cached per tokenizer)."""
    key = id(tokenizer)
    if key not in _NEWLINES:
        vocab = tokenizer.get_vocab()
        _NEWLINES[key] = sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))
    return _NEWLINES[key]


def state_id(key: str) -> int:
    """A stable id of an environment state (a 62-bit hash of its key): equal on every process and run."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 2


@dataclass
class _Episode:
    ids: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    state: list[int] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    reward_at: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)
    reward: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    parse_errors: int = 0
    done: bool = False
    truncated: bool = False
    right: bool = False
    format_error: bool = True
    message: str | None = None
    starts: list[int] = field(default_factory=list)  # index in ids where each turn's model tokens begin
    records: list[dict] = field(default_factory=list)  # per turn: text, reward, tool_call, parse_error
    example: Any = None
    env: Any = None
    seed: int = 0
    prompt: list[int] = field(default_factory=list)
    prompt_text: str = ""
    parent: Any = None
    fork_turn: int = 0  # a branch: the turn it was forked at (its earlier turns are its parent's)

    def add(self, ids, *, model: bool, step: int = -1, state: int = -1, valid: float = 0.0, logp=None, ent=None):
        n = len(ids)
        self.ids += ids
        self.logp += logp if logp is not None else [0.0] * n
        self.entropy += ent if ent is not None else [0.0] * n
        self.model += [float(model)] * n
        self.step += [step] * n
        self.state += [state] * n
        self.valid += [valid] * n
        self.reward_at += [0.0] * n
        if not model:  # an observation: no behaviour quantities (the model's turns add theirs after this)
            for v in self.extras.values():
                v += [0.0] * n


@dataclass
class AgentRollout:
    """A multi-turn rollout: the token batch, the episodes' scores, per-episode counts and metrics."""

    rollout: Rollout
    scores: Scores
    turns: torch.Tensor  # [B] long
    tool_calls: torch.Tensor  # [B] long
    parse_errors: torch.Tensor  # [B] long
    metrics: dict[str, float]


@torch.no_grad()
def multi_turn_rollout(
    model,
    tokenizer,
    task: EnvTask,
    examples: Sequence[Example],
    *,
    group_size: int = 1,
    max_turns: int | None = None,
    turn_tokens: int = 24,
    max_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    extras: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    backend="auto",
    seed: int = 0,
    batch_size: int = 256,
) -> AgentRollout:
    """``group_size`` episodes of ``task``'s environment per example (groups contiguous, B = P * G rows)."""
    runner = Runner(
        model,
        tokenizer,
        task,
        max_turns=max_turns,
        turn_tokens=turn_tokens,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        extras=extras,
        backend=backend,
        batch_size=batch_size,
    )
    rows = [e for e in examples for _ in range(group_size)]
    eps = [runner.start(e, seed=seed * 1_000_003 + i) for i, e in enumerate(rows)]
    runner.run(eps)
    return runner.assemble(eps)


class Runner:
    """Runs episodes turn by turn, all live ones batched per turn; an episode may also start as a copy of
    another's first turns (a branch), its environment replayed to that point."""

    def __init__(
        self,
        model,
        tokenizer,
        task: EnvTask,
        *,
        max_turns,
        turn_tokens,
        max_tokens,
        temperature,
        top_p,
        generator,
        extras,
        backend,
        batch_size=256,
    ) -> None:
        if turn_tokens < 1 or max_tokens < 1:
            raise ValueError(f"turn_tokens and max_tokens must be >= 1, got {turn_tokens} and {max_tokens}")
        self.max_turns = task.max_turns if max_turns is None else max_turns
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        self.model, self.tok, self.task = model, tokenizer, task
        self.turn_tokens, self.max_tokens, self.batch_size = turn_tokens, max_tokens, batch_size
        self.sampling = dict(temperature=temperature, top_p=top_p, generator=generator, backend=backend)
        self.extras = dict(extras or {})
        self.stops, self.eos, self.pad = newline_ids(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
        self.t_model, self.rounds = 0.0, 0

    def start(self, example: Example, seed: int) -> _Episode:
        """A fresh episode of ``example``: its environment reset, its prompt (the first observation) encoded."""
        env = self.task.make_env()
        prompt = env.reset(example, seed=seed)
        ep = _Episode(extras={k: [] for k in self.extras})
        ep.example, ep.env, ep.seed, ep.prompt_text = example, env, seed, prompt
        ep.prompt = self.tok(prompt)["input_ids"]
        return ep

    def branch(self, parent: _Episode, turn: int) -> _Episode:
        """A new episode with ``parent``'s first ``turn`` turns (tokens, log-probs, observations) and its
        environment replayed through them; it continues from turn ``turn``."""
        ep = self.start(parent.example, parent.seed)
        cut = parent.starts[turn]
        for name in ("ids", "logp", "entropy", "model", "step", "state", "valid", "reward_at"):
            setattr(ep, name, getattr(parent, name)[:cut])
        ep.extras = {k: v[:cut] for k, v in parent.extras.items()}
        ep.starts, ep.records = parent.starts[:turn], parent.records[:turn]
        ep.turns = turn
        for rec in ep.records:
            ep.env.step(rec["text"])  # the built-in environments are deterministic given their seed
            ep.reward += rec["reward"]
            ep.tool_calls += int(rec["tool_call"])
            ep.parse_errors += int(rec["parse_error"])
        ep.parent, ep.fork_turn = parent, turn
        return ep

    def run(self, eps: list[_Episode]) -> None:
        """Take turns until every episode is done."""
        while True:
            live = [ep for ep in eps if not ep.done and ep.turns < self.max_turns]
            for ep in eps:
                if not ep.done and ep.turns >= self.max_turns:
                    ep.done = ep.truncated = True  # out of turns: no answer
            if not live:
                return
            self._turn(live)

    def _turn(self, live: list[_Episode]) -> None:
        contexts = [ep.prompt + ep.ids for ep in live]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(live), width), self.pad, dtype=torch.long)
        mask = torch.zeros(len(live), width, dtype=torch.long)
        for j, c in enumerate(contexts):
            ids[j, width - len(c) :], mask[j, width - len(c) :] = torch.tensor(c), 1
        budget = [self.max_tokens - len(ep.ids) for ep in live]
        t0 = time.perf_counter()
        out = generate_ids(
            self.model,
            ids,
            mask,
            eos_id=self.eos,
            pad_id=self.pad,
            max_new_tokens=min(self.turn_tokens, max(budget)),
            batch_size=self.batch_size,
            extras=self.extras,
            stop_ids=self.stops,
            **self.sampling,
        )
        self.t_model += time.perf_counter() - t0
        self.rounds += 1
        for j, ep in enumerate(live):
            n = min(int(out.lengths[j]), budget[j])
            toks = out.response_ids[j, :n].tolist()
            sid = state_id(ep.env.state_key())
            k = ep.turns
            ep.starts.append(len(ep.ids))
            ep.add(toks, model=True, step=k, state=sid, logp=out.logp[j, :n].tolist(), ent=out.entropy[j, :n].tolist())
            for name, x in out.extras.items():
                ep.extras[name] += x[j, :n].tolist()
            ep.turns += 1
            text = self.tok.decode(toks, skip_special_tokens=True)
            try:
                res = ep.env.step(text)
            except Exception as exc:  # an environment's fault: reported with the example, never scored 0 silently
                ep.done, ep.message = True, f"env {self.task.name!r} raised on example {ep.example.id!r}: {exc!r}"
                continue
            tool, parse = bool(res.info.get("tool_call")), bool(res.info.get("parse_error"))
            ep.records.append({"text": text, "reward": float(res.reward), "tool_call": tool, "parse_error": parse})
            ep.reward += float(res.reward)
            ep.reward_at[-1] += float(res.reward)
            if res.info.get("valid"):
                ep.valid[-n:] = [1.0] * n
            ep.tool_calls += int(tool)
            ep.parse_errors += int(parse)
            ended = bool(toks) and toks[-1] == self.eos
            if res.done or ended:
                ep.done, ep.right = True, bool(res.info.get("right"))
                ep.format_error = bool(res.info.get("format_error", not res.done))
                continue
            obs = self.tok(res.observation, add_special_tokens=False)["input_ids"] if res.observation else []
            if len(ep.ids) + len(obs) >= self.max_tokens:
                ep.done = ep.truncated = True
                continue
            ep.add(obs, model=False)

    def assemble(self, eps: list[_Episode]) -> AgentRollout:
        """The rollout of ``eps`` in this order (groups must be contiguous for the trainer)."""
        prompt_ids, prompt_mask = encode_prompts(self.tok, [ep.prompt_text for ep in eps])  # [B, Tp]
        return _assemble(eps, prompt_ids, prompt_mask, self.pad, self.rounds, self.t_model, list(self.extras))


def _assemble(eps, prompt_ids, prompt_mask, pad, rounds, t_model, extra_names) -> AgentRollout:
    b, t = len(eps), max(1, max(len(ep.ids) for ep in eps))

    def grid(get, fill, dtype) -> torch.Tensor:
        x = torch.full((b, t), fill, dtype=dtype)
        for i, ep in enumerate(eps):
            v = get(ep)
            if v:
                x[i, : len(v)] = torch.tensor(v, dtype=dtype)
        return x

    response_ids = grid(lambda e: e.ids, pad, torch.long)
    response_mask = grid(lambda e: [1.0] * len(e.ids), 0.0, torch.float32)
    model_mask = grid(lambda e: e.model, 0.0, torch.float32)
    extras = {
        "model_mask": model_mask,
        "step_ids": grid(lambda e: e.step, -1, torch.long),
        "state_ids": grid(lambda e: e.state, -1, torch.long),
        "step_valid": grid(lambda e: e.valid, 0.0, torch.float32),
        "step_rewards": grid(lambda e: e.reward_at, 0.0, torch.float32),
        **{k: grid(lambda e, k=k: e.extras[k], 0.0, torch.float32) for k in extra_names},
    }
    rollout = Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logp=grid(lambda e: e.logp, 0.0, torch.float32),
        entropy=grid(lambda e: e.entropy, 0.0, torch.float32),
        truncated=torch.tensor([ep.truncated for ep in eps]),
        extras=extras,
    )
    errored = torch.tensor([ep.message is not None for ep in eps])
    info = tuple({"turns": ep.turns, "tool_calls": ep.tool_calls, "parse_errors": ep.parse_errors} for ep in eps)
    scores = Scores(
        reward=torch.tensor([0.0 if ep.message else ep.reward for ep in eps], dtype=torch.float32),
        right=torch.tensor([ep.right for ep in eps]),
        format_error=torch.tensor([ep.format_error and ep.message is None for ep in eps]),
        errored=errored,
        timed_out=torch.zeros(b, dtype=torch.bool),
        messages=tuple(ep.message for ep in eps),
        info=info,
    )
    turns = torch.tensor([ep.turns for ep in eps])
    calls = torch.tensor([ep.tool_calls for ep in eps])
    parse = torch.tensor([ep.parse_errors for ep in eps])
    n_model = float(model_mask.sum())
    metrics = {
        "env/turns_mean": float(turns.float().mean()),
        "env/tool_calls_mean": float(calls.float().mean()),
        "env/parse_errors_mean": float(parse.float().mean()),
        "env/success": float(scores.right.float().mean()),
        "env/model_tokens_mean": n_model / b,
        "env/obs_tokens_mean": float((response_mask - model_mask).sum()) / b,
        "env/rounds": float(rounds),
        "env/model_tokens_per_s": n_model / max(t_model, 1e-9),
    }
    return AgentRollout(rollout, scores, turns, calls, parse, metrics)


__all__ = ["ENV_NEEDS", "AgentRollout", "multi_turn_rollout", "newline_ids"]
