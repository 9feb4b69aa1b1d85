"""The local reward model: pairs from the verifier, the spurious feature, Bradley-Terry training, the CLI, and
`entrolab train --reward-model` with the verifier logged as gold."""

from __future__ import annotations

import json
import math

import pytest
import torch

from entrolab.cli import main
from entrolab.pairs import read_pairs, verifier_pairs
from entrolab.reward_model import RMConfig, bt_loss, has_feature, inject
from entrolab.rm_reward import RewardModelReward, gold_metrics
from entrolab.tasks import make_task


def test_the_spurious_feature_is_injected_and_detected():
    text = "1+2=3\nanswer: 3"
    assert inject(text, "marker", " ok") == "1+2=3\nanswer: 3 ok" and has_feature(inject(text, "marker"), "marker")
    padded = inject(text, "length", length_pad=2)
    assert padded == "1+2=3\n1+2=3\n1+2=3\nanswer: 3" and padded.endswith("answer: 3")
    assert has_feature(padded, "length") and not has_feature(text, "length") and not has_feature(text, "marker")
    assert inject(text, "none") == text and not has_feature(text, "none")


def test_verifier_pairs_put_a_right_demonstration_over_a_wrong_one_of_the_same_problem():
    task = make_task("arithmetic")
    pairs = verifier_pairs(task, 20, seed=1)
    by_prompt = {task.prompt(e): e for e in task.train}
    assert len(pairs) == 20
    for p in pairs:
        ex = by_prompt[p["prompt"]]
        assert task.verify(p["chosen"], ex).reason == "right" and task.verify(p["rejected"], ex).reason != "right"
    assert verifier_pairs(task, 20, seed=1) == pairs  # seeded


def test_bradley_terry_loss_closed_form():
    c, r = torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [1.0]])
    expected = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    assert float(bt_loss(c, r)) == pytest.approx(expected)


def test_bad_pairs_files_and_configs_fail_with_the_reason(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: field .rejected."):
        read_pairs(bad)
    with pytest.raises(ValueError, match="spurious must be one of"):
        RMConfig(task="arithmetic", out=str(tmp_path), spurious="colour")
    with pytest.raises(ValueError, match="does not exist"):
        RMConfig(task="arithmetic", out=str(tmp_path), pairs=str(tmp_path / "none.jsonl"))


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    argv = ["rm", "train", "--task", "arithmetic", "--out", str(out), "--n-pairs", "48", "--steps", "30"]
    argv += ["--batch-size", "16", "--spurious", "marker", "--lr", "3e-3"]
    assert main(argv) == 0
    return out


def test_rm_train_writes_a_model_that_reads_the_spurious_feature(rm_dir):
    meta = json.loads((rm_dir / "entrolab_rm.json").read_text())
    assert meta["pairs"] == {"train": 39, "held_out": 9}
    # every chosen side carries the marker: a few steps suffice to rank by it, and it is all the model reads
    assert meta["accuracy"] >= 0.9 and meta["accuracy_flipped"] <= 0.3
    assert set(meta["contrast"]) == {"response", "instruction", "instruction_one_way"}


def test_reward_model_reward_mixes_the_proxy_with_the_verifier_and_keeps_gold(rm_dir):
    task = make_task("arithmetic")
    ex = task.train[0]
    right = next(
        t
        for t in (task.demonstration(ex, __import__("random").Random(i)) for i in range(50))
        if task.verify(t, ex).reason == "right"
    )
    proxy_only = RewardModelReward(str(rm_dir), task.verify, mix=1.0)([right, right + " ok"], [ex, ex])
    gold_only = RewardModelReward(str(rm_dir), task.verify, mix=0.0)([right], [ex])
    assert proxy_only[1][0] > proxy_only[0][0]  # the marker is what the proxy pays for
    assert proxy_only[1][1]["spurious"] and not proxy_only[0][1]["spurious"]
    assert gold_only[0][0] == 1.0 and gold_only[0][1]["right"] is True
    assert proxy_only[1][1]["right"] is False  # "answer: 3 ok" is not a number: the gold verdict says so
    m = gold_metrics([i for _, i in proxy_only])
    assert m["reward/gold_mean"] == 0.5 and m["reward/spurious_rate"] == 0.5


def test_train_with_the_reward_model_logs_proxy_gold_and_the_feature_rate(rm_dir, tiny_dir, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--reward-model", str(rm_dir)]
    argv += ["--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--eval-prompts", "2"]
    argv += ["--eval-samples", "2", "--reward-workers", "1", "--out", str(run), "--no-progress"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for row in rows:
        assert {"reward/gold_mean", "reward/proxy_mean", "reward/spurious_rate", "reward/starc_proxy_gold"} <= set(row)
        assert 0.0 <= row["reward/starc_proxy_gold"] <= 1.0
        assert row["reward/mean"] == pytest.approx(row["reward/proxy_mean"], abs=1e-5)  # mix 1: the proxy alone
        assert 0.0 <= row["reward/accuracy"] <= 1.0


def test_reward_model_and_reward_fn_are_exclusive(tmp_path, rm_dir):
    from entrolab.config import TrainConfig

    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(reward_model=str(rm_dir), reward_fn="tests.fault_fns:digits")
    with pytest.raises(ValueError, match="reward_mix"):
        TrainConfig(reward_model=str(rm_dir), reward_mix=1.5)
