"""The sampler axis: DAPO's dynamic sampling, and the trainer's refill rounds (``entrolab.sampling``)."""

from __future__ import annotations

import json

import pytest
import torch

from entrolab.integrations.choice import MethodSpec
from entrolab.methods.samplers import DynamicSamplingConfig, dynamic_sampling
from entrolab.rewards import Scores
from entrolab.rollout import Rollout
from entrolab.sampling import sampled_batch
from entrolab.update import Methods

G = 2


def test_dynamic_sampling_drops_the_groups_whose_rewards_are_all_equal():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    shaped = torch.tensor([1.0, 0.0, 1.0, 0.9, 0.0, 0.0, 0.5, 0.5])
    gid = torch.arange(4).repeat_interleave(G)
    keep, m = dynamic_sampling(
        r, None, cfg=DynamicSamplingConfig(), group_id=gid, shaped=shaped, lengths=None, entropy=None
    )
    assert keep.tolist() == [True, True, False, False, False, False, False, False]
    assert m["sampler/kept_frac"].item() == 0.25
    on_shaped = DynamicSamplingConfig(metric="shaped")
    keep, _ = dynamic_sampling(r, None, cfg=on_shaped, group_id=gid, shaped=shaped, lengths=None, entropy=None)
    assert keep.tolist() == [True, True, True, True, False, False, False, False]
    shuffled = torch.tensor([3, 0, 2, 1, 0, 3, 1, 2])  # groups by id, never by position
    keep, _ = dynamic_sampling(
        r, None, cfg=DynamicSamplingConfig(), group_id=shuffled, shaped=r, lengths=None, entropy=None
    )
    assert keep.tolist() == [True, False, True, True, False, True, True, True]  # only group 0 (rows 1, 4) is flat
    with pytest.raises(ValueError, match="max_rounds must be >= 1"):
        DynamicSamplingConfig(max_rounds=0)


def _round(rewards: list[float], tag: float) -> tuple[Rollout, Scores]:
    b = len(rewards)
    t = 3
    rollout = Rollout(
        prompt_ids=torch.ones(b, 2, dtype=torch.long),
        prompt_mask=torch.ones(b, 2),
        response_ids=torch.full((b, t), int(tag), dtype=torch.long),
        response_mask=torch.ones(b, t),
        logp=torch.zeros(b, t),
        entropy=torch.zeros(b, t),
        truncated=torch.zeros(b, dtype=torch.bool),
    )
    z = torch.zeros(b, dtype=torch.bool)
    r = torch.tensor(rewards)
    scores = Scores(r, r > 0, z, z, z, (None,) * b, (None,) * b)
    return rollout, scores, {}


def _draws(rounds):
    it = iter(rounds)
    return lambda: next(it)


def test_refill_rounds_collect_kept_groups_in_order_and_log_the_counts():
    methods = Methods(MethodSpec(samplers=("dynamic_sampling",)))
    rounds = [_round([1, 1, 0, 1], 1), _round([0, 0, 1, 0], 2), _round([0, 1, 1, 0], 3)]
    rollout, scores, _, m, _ = sampled_batch(_draws(rounds), methods, group_size=G, n_groups=2, max_length=3, pad_id=0)
    assert rollout.response_ids[:, 0].tolist() == [1, 1, 2, 2]  # round 1's second group, round 2's second group
    assert scores.reward.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert (m["sampler/rounds"], m["sampler/generated_groups"], m["sampler/kept_groups"]) == (2.0, 4.0, 2.0)
    assert m["sampler/refilled_groups"] == 0.0


def test_rounds_are_bounded_and_a_short_batch_is_topped_up_with_dropped_groups():
    methods = Methods(MethodSpec(samplers=("dynamic_sampling",), options=("dynamic_sampling.max_rounds=2",)))
    rounds = [_round([1, 1, 0, 1], 1), _round([0, 0, 1, 1], 2), _round([0, 1, 1, 0], 3)]
    rollout, scores, _, m, _ = sampled_batch(_draws(rounds), methods, group_size=G, n_groups=2, max_length=3, pad_id=0)
    assert m["sampler/rounds"] == 2.0 and m["sampler/kept_groups"] == 1.0 and m["sampler/refilled_groups"] == 1.0
    assert rollout.response_ids[:, 0].tolist() == [1, 1, 1, 1] and len(scores) == 4


def test_without_samplers_one_round_is_returned_untouched():
    methods = Methods(MethodSpec())
    first = _round([1, 1, 0, 0], 1)
    rollout, scores, _, m, _ = sampled_batch(_draws([first]), methods, group_size=G, n_groups=2, max_length=3, pad_id=0)
    assert rollout is first[0] and scores is first[1] and m == {}


def test_the_dapo_preset_samples_dynamically_through_the_cli(tiny_dir, tmp_path):
    from entrolab.cli import main
    from entrolab.presets import PRESETS

    assert PRESETS["dapo"]["samplers"] == ("dynamic_sampling",)
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", "dapo", "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--group-size", "2", "--eval-prompts", "2", "--eval-samples", "2"]
    argv += ["--option", "dynamic_sampling.max_rounds=2", "--out", str(run), "--no-progress"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for row in rows:
        assert 1 <= row["sampler/rounds"] <= 2
        assert row["sampler/kept_groups"] + row["sampler/refilled_groups"] >= 4
    from entrolab.checkpoint import load_checkpoint

    state, _ = load_checkpoint(run, log=lambda *_: None)
    assert state["loop"]["position"] == 4 * sum(int(r["sampler/rounds"]) for r in rows)  # every round's prompts used


def test_with_every_group_varied_dynamic_sampling_is_the_plain_batch():
    """No flat group: one round, nothing dropped, the batch of plain GRPO."""
    methods = Methods(MethodSpec(samplers=("dynamic_sampling",)))
    first = _round([1, 0, 0, 1], 1)
    rollout, scores, _, m, _ = sampled_batch(_draws([first]), methods, group_size=G, n_groups=2, max_length=3, pad_id=0)
    assert torch.equal(rollout.response_ids, first[0].response_ids) and torch.equal(scores.reward, first[1].reward)
    assert m["sampler/rounds"] == 1.0 and m["sampler/kept_groups"] == 2.0 and m["sampler/refilled_groups"] == 0.0
