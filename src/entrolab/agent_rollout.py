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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

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
    if turn_tokens < 1 or max_tokens < 1:
        raise ValueError(f"turn_tokens and max_tokens must be >= 1, got {turn_tokens} and {max_tokens}")
    max_turns = task.max_turns if max_turns is None else max_turns
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    rows = [e for e in examples for _ in range(group_size)]
    envs = [task.make_env() for _ in rows]
    first = [env.reset(e, seed=seed * 1_000_003 + i) for i, (env, e) in enumerate(zip(envs, rows, strict=True))]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, first)  # [B, Tp]
    prompts = [prompt_ids[i, prompt_mask[i].bool()].tolist() for i in range(len(rows))]
    eps = [_Episode(extras={k: [] for k in extras or {}}) for _ in rows]
    states: dict[str, int] = {}
    stops, eos, pad = newline_ids(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    t_model = 0.0
    for k in range(max_turns):
        live = [i for i, ep in enumerate(eps) if not ep.done]
        if not live:
            break
        contexts = [prompts[i] + eps[i].ids for i in live]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(live), width), pad, dtype=torch.long)
        mask = torch.zeros(len(live), width, dtype=torch.long)
        for j, c in enumerate(contexts):
            ids[j, width - len(c) :], mask[j, width - len(c) :] = torch.tensor(c), 1
        budget = [max_tokens - len(eps[i].ids) for i in live]
        t0 = time.perf_counter()
        out = generate_ids(
            model,
            ids,
            mask,
            eos_id=eos,
            pad_id=pad,
            max_new_tokens=min(turn_tokens, max(budget)),
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            batch_size=batch_size,
            extras=extras,
            backend=backend,
            stop_ids=stops,
        )
        t_model += time.perf_counter() - t0
        for j, i in enumerate(live):
            ep, env = eps[i], envs[i]
            n = min(int(out.lengths[j]), budget[j])
            toks = out.response_ids[j, :n].tolist()
            sid = states.setdefault(env.state_key(), len(states))
            ep.add(toks, model=True, step=k, state=sid, logp=out.logp[j, :n].tolist(), ent=out.entropy[j, :n].tolist())
            for name, x in out.extras.items():
                ep.extras[name] += x[j, :n].tolist()
            ep.turns += 1
            try:
                res = env.step(tokenizer.decode(toks, skip_special_tokens=True))
            except Exception as exc:  # an environment's fault: reported with the example, never scored 0 silently
                ep.done, ep.message = True, f"env {task.name!r} raised on example {rows[i].id!r}: {exc!r}"
                continue
            ep.reward += float(res.reward)
            ep.reward_at[-1] += float(res.reward)
            if res.info.get("valid"):
                ep.valid[-n:] = [1.0] * n
            ep.tool_calls += int(bool(res.info.get("tool_call")))
            ep.parse_errors += int(bool(res.info.get("parse_error")))
            ended = bool(toks) and toks[-1] == eos
            if res.done or ended:
                ep.done, ep.right = True, bool(res.info.get("right"))
                ep.format_error = bool(res.info.get("format_error", not res.done))
                continue
            obs = tokenizer(res.observation, add_special_tokens=False)["input_ids"] if res.observation else []
            if len(ep.ids) + len(obs) >= max_tokens:
                ep.done = ep.truncated = True
                continue
            ep.add(obs, model=False)
    for ep in eps:
        if not ep.done:
            ep.done = ep.truncated = True  # out of turns: no answer
    return _assemble(eps, prompt_ids, prompt_mask, pad, k + 1, t_model, list(extras or {}))


def episodes(cfg, model, tokenizer, task: EnvTask, examples, generator, extras, seed: int) -> AgentRollout:
    """A training step's episodes as ``TrainConfig`` ``cfg`` asks (env budget, turns, sampling); an episode
    whose environment raised stops the run (``RewardError``) unless ``on_reward_error="skip"``."""
    ar = multi_turn_rollout(
        model,
        tokenizer,
        task,
        examples,
        group_size=cfg.group_size,
        max_turns=cfg.max_turns,
        turn_tokens=cfg.turn_tokens,
        max_tokens=cfg.response_budget,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        generator=generator,
        extras=extras,
        backend=cfg.backend,
        seed=seed,
    )
    if bool(ar.scores.errored.any()) and cfg.on_reward_error == "raise":
        from entrolab.rewards import RewardError

        raise RewardError(next(m for m in ar.scores.messages if m))
    return ar


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


__all__ = ["ENV_NEEDS", "AgentRollout", "episodes", "multi_turn_rollout", "newline_ids"]
