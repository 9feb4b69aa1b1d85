"""A training step's episodes as a ``TrainConfig`` asks: the plain multi-turn rollout or AEPO's branching one."""

from __future__ import annotations

from entrolab.agent_rollout import AgentRollout, Runner, multi_turn_rollout
from entrolab.branching import aepo_rollout
from entrolab.envs import EnvTask
from entrolab.methods.aepo_rollout import AEPORolloutConfig
from entrolab.options import dataclass_options
from entrolab.rewards import RewardError


def episodes(cfg, model, tokenizer, task: EnvTask, examples, generator, extras, seed: int) -> AgentRollout:
    """A training step's episodes as ``TrainConfig`` ``cfg`` asks (env budget, turns, sampling, AEPO's
    branching rollout); an episode whose environment raised stops the run (``RewardError``) unless
    ``on_reward_error="skip"``."""
    kw = dict(max_turns=cfg.max_turns, turn_tokens=cfg.turn_tokens, max_tokens=cfg.response_budget)
    kw.update(temperature=cfg.temperature, top_p=cfg.top_p, generator=generator, extras=extras, backend=cfg.backend)
    if cfg.rollout == "aepo":
        acfg = dataclass_options(AEPORolloutConfig, cfg.rollout_options, "rollout")
        ar = aepo_rollout(Runner(model, tokenizer, task, **kw), examples, cfg.group_size, acfg, seed)
    else:
        ar = multi_turn_rollout(model, tokenizer, task, examples, group_size=cfg.group_size, seed=seed, **kw)
    if bool(ar.scores.errored.any()) and cfg.on_reward_error == "raise":
        raise RewardError(next(m for m in ar.scores.messages if m))
    return ar


__all__ = ["episodes"]
