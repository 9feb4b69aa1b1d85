"""The self-imitation replay buffer: admission, stale and capacity eviction, ragged padding, the baseline FIFO,
seeded sampling and the checkpoint round trip (SPEAR's ``TrajectoryBufferBatch`` semantics)."""

from __future__ import annotations

import io

import pytest
import torch

from entrolab.replay import ReplayBuffer


def batch(ids, adv, calls=None, width=3, prompt_width=2, rewards=None):
    """Rows tagged by ``ids`` (stored in ``row_id`` and on every response token), ``width`` response tokens."""
    b = len(ids)
    row = torch.tensor(ids, dtype=torch.long)
    return {
        "prompt_ids": (row.unsqueeze(-1) + 100).expand(b, prompt_width).clone(),
        "prompt_mask": torch.ones(b, prompt_width),
        "response_ids": row.unsqueeze(-1).expand(b, width).clone(),
        "attention_mask": torch.ones(b, width),
        "loss_mask": torch.ones(b, width),
        "old_logp": -torch.ones(b, width),
        "old_entropy": torch.ones(b, width),
        "step_ids": torch.zeros(b, width, dtype=torch.long),
        "rewards": torch.tensor(rewards if rewards is not None else [1.0] * b),
        "advantages": torch.tensor(adv, dtype=torch.float32).unsqueeze(-1),  # [B, 1]
        "truncated": torch.zeros(b, dtype=torch.bool),
        "tool_calls": torch.tensor(calls if calls is not None else [1] * b),
        "row_id": row,
    }


def held_ids(buf):
    return buf.rows()["row_id"].tolist() if len(buf) else []


def test_admits_positive_advantage_rows_with_a_tool_call_and_keep():
    buf = ReplayBuffer()
    keep = torch.tensor([True, True, True, True, False])
    n = buf.add(batch([0, 1, 2, 3, 4], adv=[0.5, 0.0, -1.0, 0.2, 0.9], calls=[1, 3, 2, 0, 5]), step=1, keep=keep)
    assert n == 1 and held_ids(buf) == [0] and buf.steps.tolist() == [1]  # 1: A = 0; 2: A < 0; 3: no call; 4: keep
    loose = ReplayBuffer(min_tool_calls=0)  # verl-agent: no tool-call requirement
    assert loose.add(batch([0, 3], adv=[0.5, 0.2], calls=[1, 0]), step=1) == 2


def test_token_level_advantages_admit_by_their_mean():
    buf = ReplayBuffer()
    rows = batch([0, 1], adv=[0.0, 0.0])
    rows["advantages"] = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.0, 0.0]])
    assert buf.add(rows, step=1) == 1 and held_ids(buf) == [0]


def test_stale_rows_are_dropped_relative_to_the_newest_held_step():
    buf = ReplayBuffer(tolerate_steps=10)
    buf.add(batch([0], adv=[1.0]), step=1)
    buf.add(batch([1], adv=[1.0]), step=11)  # gap 10 to step 1: kept
    buf.add(batch([2], adv=[1.0]), step=12)  # newest held 11: step 1 is 10 behind, kept (remove_old runs first)
    assert held_ids(buf) == [0, 1, 2]
    buf.add(batch([3], adv=[-1.0]), step=13)  # newest held 12: step 1 is 11 behind -> dropped, even if none enters
    assert held_ids(buf) == [1, 2] and buf.steps.tolist() == [11, 12]
    buf.add(batch([4], adv=[1.0]), step=30)  # newest held 12: 11 and 12 are fresh until something newer is held
    assert held_ids(buf) == [1, 2, 4]
    buf.add(batch([5], adv=[1.0]), step=31)
    assert held_ids(buf) == [4, 5]


def test_capacity_evicts_the_oldest_rows():
    buf = ReplayBuffer(capacity=4)
    buf.add(batch([0, 1, 2], adv=[1.0, 1.0, 1.0]), step=1)
    buf.add(batch([3, 4, 5], adv=[1.0, 1.0, 1.0]), step=2)
    assert held_ids(buf) == [2, 3, 4, 5] and buf.steps.tolist() == [1, 2, 2, 2]
    buf.add(batch([6, 7, 8, 9, 10], adv=[1.0] * 5), step=3)
    assert held_ids(buf) == [7, 8, 9, 10]


def test_ragged_widths_pad_prompts_left_and_responses_right():
    buf = ReplayBuffer()
    buf.add(batch([1], adv=[1.0], width=2, prompt_width=3), step=1)
    buf.add(batch([2], adv=[1.0], width=4, prompt_width=1), step=2)
    buf.add(batch([3], adv=[1.0], width=3, prompt_width=2), step=2)
    rows = buf.rows()
    assert rows["response_ids"].tolist() == [[1, 1, 0, 0], [2, 2, 2, 2], [3, 3, 3, 0]]
    assert rows["loss_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert rows["prompt_ids"].tolist() == [[101, 101, 101], [0, 0, 102], [0, 103, 103]]
    assert rows["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert rows["step_ids"].tolist() == [[0, 0, -1, -1], [0, 0, 0, 0], [0, 0, 0, -1]]  # -1 off the turns
    assert rows["old_logp"][0].tolist() == [-1, -1, 0, 0] and rows["rewards"].shape == (3,)
    assert rows["advantages"].shape == (3, 1) and rows["truncated"].dtype == torch.bool


def test_mismatched_rows_raise_naming_the_keys():
    buf = ReplayBuffer()
    buf.add(batch([0], adv=[1.0]), step=1)
    rows = batch([1], adv=[1.0])
    rows.pop("old_entropy")
    with pytest.raises(ValueError, match="old_entropy"):
        buf.add(rows, step=2)
    with pytest.raises(ValueError, match="'advantages' and 'tool_calls'"):
        buf.add({"rewards": torch.ones(1)}, step=2)


def test_seeded_sampling_is_reproducible_and_distinct():
    buf = ReplayBuffer()
    buf.add(batch(list(range(10)), adv=[1.0] * 10), step=1)
    a = buf.sample(4, torch.Generator().manual_seed(3))
    b = buf.sample(4, torch.Generator().manual_seed(3))
    assert a is not None and b is not None and torch.equal(a["row_id"], b["row_id"])
    assert len(set(a["row_id"].tolist())) == 4 and set(a) == set(buf.rows())
    every = buf.sample(10, torch.Generator().manual_seed(0))
    assert sorted(every["row_id"].tolist()) == list(range(10))
    assert buf.sample(11, torch.Generator()) is None and buf.sample(0) is None
    assert ReplayBuffer().sample(1) is None


def test_baseline_fifo_p50_and_whole_batch_eviction():
    buf = ReplayBuffer(baseline_capacity=5)
    assert buf.p50() is None
    buf.add_baseline(torch.tensor([0.2, 0.4]))
    buf.add_baseline(torch.tensor([0.6, 0.8, 1.0]))
    assert buf.p50() == pytest.approx(0.6)  # D_R = [0.2, 0.4, 0.6, 0.8, 1.0]
    buf.add_baseline(torch.tensor([0.0]))  # 5 held, not more than 5: nothing dropped first
    assert buf.baseline().tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.0])
    buf.add_baseline(torch.tensor([0.9]))  # 6 > 5: the oldest batch [0.2, 0.4] goes, then 0.9 is appended
    assert buf.baseline().tolist() == pytest.approx([0.6, 0.8, 1.0, 0.0, 0.9])
    buf.clear()
    assert len(buf) == 0 and buf.p50() == pytest.approx(0.8)  # clearing rows keeps D_R


def test_state_dict_round_trips_through_torch_load_weights_only():
    buf = ReplayBuffer(capacity=6)
    buf.add(batch([0, 1], adv=[1.0, 1.0], width=2), step=1)
    buf.add(batch([2, 3, 4], adv=[1.0, 1.0, 1.0], width=5, prompt_width=4), step=3)
    buf.add_baseline(torch.tensor([0.1, 0.7]))
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    fresh = ReplayBuffer(capacity=6)
    fresh.load_state_dict(torch.load(blob, weights_only=True))
    assert len(fresh) == 5 and torch.equal(fresh.steps, buf.steps) and fresh.p50() == buf.p50()
    assert all(torch.equal(fresh.rows()[k], v) and fresh.rows()[k].dtype == v.dtype for k, v in buf.rows().items())
    a, b = buf.sample(3, torch.Generator().manual_seed(1)), fresh.sample(3, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh.add(batch([5], adv=[1.0], width=3), step=4)  # and it keeps working after the restore
    assert held_ids(fresh) == list(range(6))
    empty = io.BytesIO()
    torch.save(ReplayBuffer().state_dict(), empty)
    empty.seek(0)
    restored = ReplayBuffer()
    restored.load_state_dict(torch.load(empty, weights_only=True))
    assert len(restored) == 0 and restored.p50() is None
    with pytest.raises(ValueError, match="format"):
        restored.load_state_dict({"format": 99})


def test_constructor_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="capacity must be >= 1 or None, got 0"):
        ReplayBuffer(capacity=0)
    with pytest.raises(ValueError, match="tolerate_steps >= 0"):
        ReplayBuffer(tolerate_steps=-1)
