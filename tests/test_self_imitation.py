"""SPEAR's self-imitation in the trainer: what enters the buffer, what is replayed with which advantage, and a
run in which replayed episodes are trained on."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from entrolab.batch import TokenBatch
from entrolab.config import TrainConfig
from entrolab.self_imitation import SelfImitation, parse_options
from entrolab.trainer import train


def _batch(adv: list[float], width: int = 3) -> TokenBatch:
    b = len(adv)
    ones = torch.ones(b, width)
    return TokenBatch(
        prompt_ids=torch.arange(b * 2).view(b, 2),
        prompt_mask=torch.ones(b, 2, dtype=torch.long),
        response_ids=torch.arange(b * width).view(b, width),
        attention_mask=ones,
        loss_mask=ones.clone(),
        old_logp=-ones,
        old_entropy=ones,
        group_id=torch.arange(b).div(2, rounding_mode="floor"),
        truncated=torch.zeros(b, dtype=torch.bool),
        advantages=torch.tensor(adv).unsqueeze(1),
    )


def test_admission_recalibration_and_flush() -> None:
    sil = SelfImitation(parse_options(("capacity=2", "trigger_ratio=1.0", "tolerate_steps=5")))
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5])
    calls = torch.tensor([1, 1, 0, 2])
    # rows 0 and 3 have A > 0 and a tool call; row 2 has no call, row 1 a negative advantage
    assert sil.add(_batch([0.7, -0.7, 0.7, 0.1]), rewards, calls, step=1) == 2
    torch.testing.assert_close(sil.buffer.baseline(), torch.tensor([0.5, 0.75], dtype=sil.buffer.baseline().dtype))
    replay, m = sil.replay_batch(torch.Generator().manual_seed(0))
    # P50 of the group means [0.5, 0.75] is 0.625: R = 1 -> A = 0.375 kept, R = 0.5 -> -0.125 dropped
    assert m["sil/eligible"] == 1.0 and replay is None  # 1 eligible row is not > trigger_ratio * capacity = 2
    sil.add(_batch([0.2, 0.3, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.ones(4, dtype=torch.long), step=2)
    replay, m = sil.replay_batch(torch.Generator().manual_seed(0))
    assert m["sil/eligible"] == 3.0 and m["sil/replayed"] == 2.0 and len(sil.buffer) == 0  # flushed
    p50 = float(torch.quantile(torch.tensor([0.5, 0.75, 1.0, 0.0]), 0.5))
    torch.testing.assert_close(replay.advantages, torch.full((2, 1), 1.0 - p50))
    assert replay.group_id.tolist() == [0, 1]


def test_bad_option_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown self_imitation option\(s\) \['size'\]; allowed"):
        parse_options(("size=3",))
    with pytest.raises(ValueError, match="must look like 'field=value'"):
        parse_options(("capacity",))


def test_replayed_episodes_are_trained_and_checkpointed(tiny_dir, tmp_path) -> None:
    cfg = TrainConfig(
        model=str(tiny_dir),
        env="lookup",
        out=str(tmp_path / "run"),
        steps=3,
        prompts_per_step=2,
        group_size=4,
        turn_tokens=6,
        episode_tokens=150,
        eval_every=0,
        eval_samples=2,
        eval_prompts=2,
        progress=False,
        reward_shapers=("spear_tool_reward",),
        self_imitation=True,
        save_every=1,
        # every row with A > 0 enters (the random model calls no tool), 2 are replayed per step
        self_imitation_options=("min_tool_calls=0", "replay_mode='sample'", "replay_rows=2", "max_replay_loss_steps=2"),
        options=("spear_tool_reward.per_call=0.0",),
        reward_fn=None,
    )
    # the random model never succeeds: give the episodes a reward through the tool reward's count of turns
    cfg = replace(cfg, options=("spear_tool_reward.count='turns'",))
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1:]]
    assert rows[0]["sil/replayed"] == 0.0 and rows[0]["sil/admitted"] > 0
    replayed = [r for r in rows if r["sil/replayed"] > 0]
    assert replayed and all("sil/loss_total" in r and r["sil/coef"] > 0 for r in replayed)
    ckpt = torch.load(sorted((tmp_path / "run").glob("checkpoint-*.pt"))[-1], weights_only=True)
    assert "self_imitation" in ckpt["state"] and ckpt["state"]["self_imitation"]["baseline"]
