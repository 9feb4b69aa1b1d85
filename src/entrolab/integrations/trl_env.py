"""entrolab's multi-turn environments in TRL, through ``GRPOTrainer``'s ``rollout_func`` and ``env_mask``.

    env = EnvRollout("lookup")
    trainer = EntrolabGRPOTrainer(model=..., processing_class=tok, args=GRPOConfig(...), methods="gigpo",
                                  train_dataset=env.dataset(), reward_funcs=env.reward, rollout_func=env)

``EnvRollout(prompts, trainer)`` plays one episode per prompt TRL hands it (TRL repeats each prompt
``num_generations`` times, consecutively) with entrolab's multi-turn rollout on the trainer's model, and returns
``prompt_ids``, ``completion_ids`` (every turn: model tokens and observations), ``logprobs`` (the behaviour's, 0
on observations) and ``env_mask`` (1 on model tokens: TRL's loss mask is ``completion_mask * env_mask``, so
observations are never trained on), plus the episodes' rewards as the ``env_reward`` column, which
:meth:`EnvRollout.reward` returns to TRL (None for an episode whose environment raised: TRL's unscorable, never
0). The per-token turn tensors entrolab's agent methods read (``step_ids``, ``state_ids``, ``step_rewards``,
``step_valid``, ``turns``, ``tool_calls``) are left on the trainer for ``EntrolabGRPOTrainer`` to pick up.
"""

from __future__ import annotations

from typing import Any

import torch

from entrolab.agent_rollout import multi_turn_rollout
from entrolab.data import build_task
from entrolab.envs import ENV_BUDGETS

TOKEN_KEYS = {"step_ids": -1, "state_ids": -1, "step_rewards": 0.0, "step_valid": 0.0}
ATTRIBUTE = "_entrolab_episodes"


class EnvRollout:
    """A ``rollout_func`` (and its reward function and dataset) for one of entrolab's environments."""

    def __init__(
        self,
        env: str,
        *,
        task_seed: int = 0,
        seed: int = 0,
        max_turns: int | None = None,
        turn_tokens: int = 24,
        max_tokens: int | None = None,
        temperature: float | None = None,
        task_options: tuple[str, ...] = (),
    ) -> None:
        self.task = build_task(None, task_seed, env=env, task_options=task_options)
        self.by_prompt = {e.prompt: e for e in (*self.task.train, *self.task.test)}
        self.seed, self.max_turns, self.turn_tokens = seed, max_turns, turn_tokens
        self.max_tokens = max_tokens or ENV_BUDGETS[env]
        self.temperature, self.calls = temperature, 0

    def dataset(self, split: str = "train"):
        """The split's first observations as a ``datasets.Dataset`` with one ``prompt`` column."""
        from datasets import Dataset

        examples = self.task.train if split == "train" else self.task.test
        return Dataset.from_list([{"prompt": e.prompt} for e in examples])

    def __call__(self, prompts: list[Any], trainer) -> dict[str, list]:
        unknown = [p for p in prompts if p not in self.by_prompt]
        if unknown:
            raise ValueError(f"prompt {unknown[0]!r} is not a first observation of env {self.task.name!r}")
        examples = [self.by_prompt[p] for p in prompts]
        model = trainer.accelerator.unwrap_model(trainer.model)
        tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        rank = trainer.accelerator.process_index
        self.calls += 1
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls * 1_009 + rank)
        ar = multi_turn_rollout(
            model,
            tok,
            self.task,
            examples,
            group_size=1,
            max_turns=self.max_turns,
            turn_tokens=self.turn_tokens,
            max_tokens=self.max_tokens,
            temperature=self.temperature or trainer.temperature,
            top_p=getattr(trainer, "top_p", 1.0) or 1.0,
            generator=gen,
            seed=self.seed + self.calls,
        )
        r = ar.rollout
        lengths = r.lengths.tolist()
        rows = range(len(r))
        setattr(
            trainer,
            ATTRIBUTE,
            {**{k: r.extras[k] for k in TOKEN_KEYS}, "turns": ar.turns, "tool_calls": ar.tool_calls},
        )
        errored = ar.scores.errored.tolist()
        return {
            "prompt_ids": [r.prompt_ids[i][r.prompt_mask[i].bool()].tolist() for i in rows],
            "completion_ids": [r.response_ids[i, : lengths[i]].tolist() for i in rows],
            "logprobs": [r.logp[i, : lengths[i]].tolist() for i in rows],
            "env_mask": [r.extras["model_mask"][i, : lengths[i]].long().tolist() for i in rows],
            "env_reward": [None if errored[i] else float(ar.scores.reward[i]) for i in rows],
            "env_success": [bool(x) for x in ar.scores.right.tolist()],
        }

    @staticmethod
    def reward(prompts=None, completions=None, env_reward=None, **kw) -> list[float | None]:
        """TRL reward function: the episode's environment reward (None where the environment raised)."""
        if env_reward is None:
            raise ValueError("EnvRollout.reward needs the env_reward column: pass rollout_func=EnvRollout(...)")
        return list(env_reward)


def episode_inputs(trainer, width: int) -> dict[str, torch.Tensor]:
    """The turn tensors the last ``EnvRollout`` call left on ``trainer``, cut or padded to ``width`` columns
    (TRL's padded completions); {} when the rollout was not an ``EnvRollout``. Consumed once."""
    episodes = getattr(trainer, ATTRIBUTE, None)
    if episodes is None:
        return {}
    setattr(trainer, ATTRIBUTE, None)
    out = {}
    for key, fill in TOKEN_KEYS.items():
        x = episodes[key]
        if x.shape[1] < width:
            x = torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), fill)], 1)
        out[key] = x[:, :width]
    out["turns"], out["tool_calls"] = episodes["turns"], episodes["tool_calls"]
    return out


__all__ = ["EnvRollout", "episode_inputs"]
