"""Multi-turn rollouts: token layout (model turns, observations, padding), behaviour log-probs that a
teacher-forced pass reproduces, observations that never receive gradient, and environments that fail loudly."""

from __future__ import annotations

import pytest
import torch

from entrolab.agent_rollout import multi_turn_rollout
from entrolab.batch import TokenBatch
from entrolab.config import TrainConfig
from entrolab.envs import StepResult, ToolEnv, make_env_task
from entrolab.envs.calc import CalcTask
from entrolab.episodes import episodes
from entrolab.rewards import RewardError
from entrolab.rollout import teacher_forced
from entrolab.update import Counts, Methods, compose


def _rollout(model, tok, name="lookup", turn_tokens=6, max_tokens=60, group_size=3, n=4):
    task = make_env_task(name)
    gen = torch.Generator().manual_seed(0)
    ar = multi_turn_rollout(
        model,
        tok,
        task,
        task.test[:n],
        group_size=group_size,
        turn_tokens=turn_tokens,
        max_tokens=max_tokens,
        generator=gen,
    )
    return task, ar


def test_layout_of_turns_and_observations(tiny) -> None:
    model, tok = tiny
    task, ar = _rollout(model, tok)
    r = ar.rollout
    mm, sid = r.extras["model_mask"], r.extras["step_ids"]
    assert r.response_ids.shape[0] == 12 and r.lengths.max() <= 60
    assert torch.equal(mm.bool(), sid >= 0)  # model tokens are exactly the ones with a turn
    assert torch.all(mm <= r.response_mask)
    obs = (r.response_mask > 0) & (mm == 0)
    assert obs.any(), "the random model's turns get parse-error observations"
    assert torch.all(r.logp[obs] == 0) and torch.all(r.entropy[obs] == 0)
    assert torch.all(r.extras["state_ids"][~mm.bool()] == -1)
    for i in range(len(r)):
        turns = sid[i][sid[i] >= 0]
        assert int(turns.unique().numel()) == int(ar.turns[i]) <= task.max_turns
        assert torch.all(turns[1:] >= turns[:-1])  # turns in order
        text = tok.decode(r.response_ids[i][obs[i]])
        assert text.replace("-> no result\n", "").replace("error: say search(...) or the answer\n", "") == ""
    assert ar.scores.right.sum() == 0 and not ar.scores.errored.any()
    assert set(ar.metrics) >= {"env/turns_mean", "env/tool_calls_mean", "env/parse_errors_mean", "env/success"}


def test_behaviour_logp_is_what_a_teacher_forced_pass_gives(tiny) -> None:
    model, tok = tiny
    _, ar = _rollout(model, tok)
    r = ar.rollout
    mm = r.extras["model_mask"] * r.response_mask
    logp, ent, _ = teacher_forced(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    torch.testing.assert_close(logp * mm, r.logp, atol=2e-5, rtol=0)
    torch.testing.assert_close(ent * mm, r.entropy, atol=2e-5, rtol=0)


def test_observations_never_receive_gradient(tiny) -> None:
    model, tok = tiny
    _, ar = _rollout(model, tok)
    batch = TokenBatch.from_rollout(ar.rollout, 3)
    obs = (batch.attention_mask > 0) & (batch.extras["model_mask"] == 0)
    assert torch.equal(batch.loss_mask, batch.attention_mask * batch.extras["model_mask"])
    batch = batch.replace(advantages=torch.randn(len(batch), 1, generator=torch.Generator().manual_seed(1)))
    methods = Methods(TrainConfig(model="x", advantage="grpo", policy_loss="ppo_clip", regularizers=("kl",)))
    batch.extras["ref_logp"] = batch.old_logp - 0.1
    logp, entropy, _ = teacher_forced(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.attention_mask
    )
    logp.retain_grad()
    loss, _ = compose(methods, batch, logp, entropy, counts=Counts.of(batch, 60))
    loss.backward()
    assert torch.all(logp.grad[obs] == 0)
    assert torch.all(logp.grad[batch.loss_mask > 0] != 0)
    # the loss does not depend on what the policy predicts at an observation token
    moved = logp.detach() + 5.0 * obs
    again, _ = compose(methods, batch, moved, entropy.detach(), counts=Counts.of(batch, 60))
    assert torch.equal(again, loss.detach())


class _Broken(ToolEnv):
    tools = ("calc",)

    def step(self, action: str) -> StepResult:
        raise RuntimeError("the simulator crashed")


class _BrokenTask(CalcTask):
    def make_env(self):
        return _Broken()


def test_an_environment_that_raises_is_reported_never_scored_zero(tiny) -> None:
    model, tok = tiny
    task = _BrokenTask()
    cfg = TrainConfig(model="x", env="calc", group_size=2, prompts_per_step=2, turn_tokens=4)
    with pytest.raises(RewardError, match=r"env 'calc' raised on example 'calc:.*the simulator crashed"):
        episodes(cfg, model, tok, task, task.test[:2], torch.Generator().manual_seed(0), {}, seed=0)
    skip = TrainConfig(model="x", env="calc", group_size=2, prompts_per_step=2, turn_tokens=4, on_reward_error="skip")
    ar = episodes(skip, model, tok, task, task.test[:2], torch.Generator().manual_seed(0), {}, seed=0)
    assert ar.scores.errored.all() and all("the simulator crashed" in m for m in ar.scores.messages)


def test_budget_and_turn_limit_end_episodes(tiny) -> None:
    model, tok = tiny
    _, ar = _rollout(model, tok, turn_tokens=3, max_tokens=20)
    assert ar.rollout.lengths.max() <= 20
    r = ar.rollout
    last = r.response_ids.gather(1, (r.lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    assert torch.all(r.truncated | (last == tok.eos_token_id))  # out of budget or turns, unless it stopped
    _, one = _rollout(model, tok, turn_tokens=3, max_tokens=200)
    assert one.turns.max() <= make_env_task("lookup").max_turns


def test_requested_extras_stay_aligned_with_the_tokens(tiny) -> None:
    from entrolab.learner import ROLLOUT_EXTRAS

    model, tok = tiny
    task = make_env_task("lookup")
    extras = {"vocab_baseline": ROLLOUT_EXTRAS["vocab_baseline"]}
    ar = multi_turn_rollout(
        model,
        tok,
        task,
        task.test[:2],
        group_size=2,
        turn_tokens=6,
        max_tokens=60,
        extras=extras,
        generator=torch.Generator().manual_seed(0),
    )
    r = ar.rollout
    vb, mm = r.extras["vocab_baseline"], r.extras["model_mask"] * r.response_mask
    assert torch.all(vb[mm == 0] == 0) and torch.all(vb[mm > 0] != 0)
