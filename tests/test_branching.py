"""AEPO's entropy-balanced rollout: branches copy their parent's turns and environment state exactly, groups stay
whole and contiguous, and the budget split adds up."""

from __future__ import annotations

import torch

from entrolab.agent_rollout import Runner
from entrolab.batch import TokenBatch
from entrolab.branching import aepo_rollout
from entrolab.envs import make_env_task
from entrolab.methods.aepo_rollout import AEPORolloutConfig
from entrolab.rollout import teacher_forced


def _runner(model, tok, task, seed=0):
    return Runner(
        model,
        tok,
        task,
        max_turns=None,
        turn_tokens=6,
        max_tokens=120,
        temperature=1.0,
        top_p=1.0,
        generator=torch.Generator().manual_seed(seed),
        extras={},
        backend="auto",
    )


def test_a_branch_copies_its_parents_turns_and_environment(tiny) -> None:
    model, tok = tiny
    task = make_env_task("lookup")
    runner = _runner(model, tok, task)
    parent = runner.start(task.test[0], seed=3)
    runner.run([parent])
    assert parent.turns >= 2  # the random model's turns get parse errors until its turns run out
    child = runner.branch(parent, 1)
    cut = parent.starts[1]
    assert child.ids == parent.ids[:cut] and child.logp == parent.logp[:cut] and child.turns == 1
    replay = task.make_env()
    replay.reset(task.test[0], seed=3)
    replay.step(parent.records[0]["text"])
    assert child.env.state_key() == replay.state_key()
    runner.run([child])
    assert child.ids[:cut] == parent.ids[:cut] and child.done
    ar = runner.assemble([parent, child])
    r = ar.rollout
    logp, _, _ = teacher_forced(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    mm = r.response_mask * r.extras["model_mask"]
    torch.testing.assert_close(logp * mm, r.logp, atol=2e-5, rtol=0)  # the copied prefix is still on-policy


def test_groups_are_whole_and_the_split_adds_up(tiny) -> None:
    model, tok = tiny
    task = make_env_task("calc")
    cfg = AEPORolloutConfig(alpha=1.0)  # every candidate forks: the budget is the only limit
    ar = aepo_rollout(_runner(model, tok, task), task.test[:3], group_size=4, cfg=cfg, seed=0)
    assert len(ar.rollout) == 12
    batch = TokenBatch.from_rollout(ar.rollout, 4)  # contiguous groups of 4
    prompts = [tok.decode(batch.prompt_ids[i][batch.prompt_mask[i].bool()]) for i in range(12)]
    assert all(len(set(prompts[g * 4 : g * 4 + 4])) == 1 for g in range(3))
    m = ar.metrics
    total = m["aepo/global_frac"] + m["aepo/branch_frac"] + m["aepo/refill_frac"]
    assert abs(total - 1.0) < 1e-9 and 0 < m["aepo/global_frac"] <= 1
