"""Offline preference training: task pairs, a 3-step DPO run and a POWER-DL run on the tiny model, input errors."""

from __future__ import annotations

import json

import pytest
import torch

from entrolab.models import ModelLoadError, load_policy
from entrolab.prefs import PrefsConfig, read_pairs, task_pairs, train_prefs, write_pairs
from entrolab.tasks import make_task


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return write_pairs(task_pairs("arithmetic", 12, seed=0), path)


def test_task_pairs_put_a_right_demonstration_over_a_wrong_one():
    pairs = task_pairs("arithmetic", 6, seed=1)
    task = make_task("arithmetic", seed=1)
    by_prompt = {task.prompt(ex): ex for ex in task.train}
    assert len(pairs) == 6 and pairs == task_pairs("arithmetic", 6, seed=1)  # seeded
    for p in pairs:
        ex = by_prompt[p["prompt"]]
        assert task.verify(p["chosen"], ex).reason == "right"
        assert task.verify(p["rejected"], ex).reason in ("wrong", "format_error")
    with pytest.raises(ValueError, match="no problem gave both"):
        task_pairs("arithmetic", 1, tries=0)


def test_three_dpo_steps(tiny_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    cfg = PrefsConfig(model=str(tiny_dir), pairs=str(pairs_file), out=str(out), steps=3, batch_size=4, lr=1e-3,
                      eval_fraction=0.25)  # fmt: skip
    summary = train_prefs(cfg)
    assert summary["pairs"] == {"train": 9, "eval": 3} and summary["loss"] == "dpo"
    before, after = summary["eval_before"], summary["eval_after"]
    # before any step the policy is the reference: every implicit-reward margin is exactly 0, a tie
    assert before["accuracy"] == 0.0 and before["margin_mean"] == 0.0 and before["pairs"] == 3
    assert 0.0 <= after["accuracy"] <= 1.0 and 0.0 <= after["logp_accuracy"] <= 1.0
    assert summary["loss_curve"][0] == pytest.approx(0.6931, abs=1e-4)  # -log sigma(0) on the first step
    assert json.loads((out / "summary.json").read_text())["eval_after"] == after
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("pref/accuracy" in r for r in rows)
    trained, _ = load_policy(out / "final")
    base, _ = load_policy(tiny_dir)
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(), strict=True)]
    assert all(changed)
    assert not (out / "labels.json").exists()


def test_power_dl_keeps_and_saves_the_label_buffer(tiny_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    cfg = PrefsConfig(model=str(tiny_dir), pairs=str(pairs_file), out=str(out), loss="power_dl", steps=2,
                      batch_size=3, eval_fraction=0.25, dl_gamma=0.5, options=("power_dl.eta=0.1",))  # fmt: skip
    summary = train_prefs(cfg)
    assert summary["loss_config"]["eta"] == 0.1
    saved = json.loads((out / "labels.json").read_text())
    labels = saved["labels"]
    assert saved["gamma"] == 0.5 and len(labels) == 12 and labels.count(None) == 3  # the held-out pairs
    seen = [x for x in labels if x is not None and x < 1.0]
    assert len(seen) == 6 and all(0.5 < x < 1.0 for x in seen)  # 2 steps x 3 pairs moved toward sigma(margin)
    assert summary["dynamic_labels"]["min"] == pytest.approx(min(seen), abs=1e-6)


def _write(tmp_path, text: str, name: str = "pairs.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "has no pairs"),
        ("\n\n", "has no pairs"),
        ("{not json\n", r"pairs.jsonl:1: not valid JSON"),
        ('["p", "a", "b"]\n', r":1: expected an object with keys \['prompt', 'chosen', 'rejected'\], got list"),
        (GOOD + '{"prompt": "p", "chosen": "a"}\n', r":2: field 'rejected' must be a non-empty string, got missing"),
        (
            '{"prompt": "p", "chosen": 3, "rejected": "b"}\n',
            r":1: field 'chosen' must be a non-empty string, got int 3",
        ),
        ('{"prompt": "p", "chosen": "", "rejected": "b"}\n', "field 'chosen' must be a non-empty string"),
        ('{"prompt": null, "chosen": "a", "rejected": "b"}\n', r"field 'prompt' must be a string, got NoneType"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}\n', ":1: chosen and rejected are the same text"),
    ],
)
def test_bad_pairs_files(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_pairs(_write(tmp_path, text))


def test_bad_inputs_fail_before_any_work(tiny_dir, tmp_path):
    def run(**kw):
        base = {"model": str(tiny_dir), "pairs": str(_write(tmp_path, GOOD * 4)), "out": str(tmp_path / "o")}
        return train_prefs(PrefsConfig(**(base | kw)))

    with pytest.raises(ValueError, match="does not exist"):
        run(pairs=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="1 pair"):
        run(pairs=str(_write(tmp_path, GOOD, "one.jsonl")))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        run(model=str(tmp_path))
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"unknown preference_loss 'dop'; known: .*power_dl"):
        PrefsConfig(model="m", pairs="p", out="o", loss="dop")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bta'\]"):
        PrefsConfig(model="m", pairs="p", out="o", options=("dpo.bta=0.2",))
    with pytest.raises(ValueError, match="names method 'power_dl', which this run does not use"):
        PrefsConfig(model="m", pairs="p", out="o", options=("power_dl.eta=0.2",))
    for field, value, match in [
        ("steps", 0, "steps must be >= 1, got 0"),
        ("lr", 0.0, "lr must be > 0"),
        ("eval_fraction", 1.0, r"eval_fraction must be in \[0, 1\)"),
        ("dl_gamma", 2.0, r"dl_gamma must be in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            PrefsConfig(model="m", pairs="p", out="o", **{field: value})


def test_the_prefs_command_makes_pairs_from_a_task_and_trains(tiny_dir, tmp_path):
    from entrolab.cli import main

    out = tmp_path / "dpo"
    argv = ["prefs", "--model", str(tiny_dir), "--task", "arithmetic", "--n-pairs", "12", "--steps", "2"]
    assert main([*argv, "--out", str(out), "--batch-size", "4"]) == 0
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == "dpo" and (out / "final" / "config.json").is_file()
    assert main(["prefs", "--model", str(tiny_dir), "--out", str(out)]) == 2  # neither --pairs nor --task
    power = tmp_path / "power"
    argv = ["prefs", "--model", str(tiny_dir), "--pairs", str(out / "pairs.jsonl"), "--preset", "power_dl"]
    assert main([*argv, "--steps", "2", "--batch-size", "4", "--out", str(power)]) == 0
    assert json.loads((power / "summary.json").read_text())["loss"] == "power_dl"
