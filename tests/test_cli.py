"""The real command line, run as a user runs it (subprocesses), on a random tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def entrolab(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "entrolab.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_methods_engines_prints_every_verl_and_trl_counterpart():
    from entrolab.anchors import COUNTERPARTS, EXCLUSIONS

    out = entrolab("methods", "--engines").stdout
    rows = [line for line in out.splitlines() if line.startswith("| verl") or line.startswith("| trl")]
    assert len(rows) == len(COUNTERPARTS) + len(EXCLUSIONS)
    assert "| verl | policy_loss | `geo_mean` | `policy_loss:gmpo` |" in out
    assert "| verl | advantage | `gae` | none |" in out  # an exclusion, with its reason


def test_methods_json_lists_every_axis_with_papers():
    out = json.loads(entrolab("methods", "--json").stdout)
    assert set(out) >= {"policy_loss", "advantage", "reward_shaper", "token_filter", "regularizer", "aggregation"}
    names = {axis: {m["name"] for m in ms} for axis, ms in out.items()}
    assert {"grpo", "dr_grpo", "rloo"} <= names["advantage"]
    assert "ppo_clip" in names["policy_loss"]
    assert {
        "token-mean",
        "token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
        "bnpo",
    } == (names["aggregation"])
    grpo = next(m for m in out["advantage"] if m["name"] == "grpo")
    assert grpo["paper"] == "arXiv:2402.03300" and grpo["summary"]


def test_eval_json_prints_one_object_with_the_documented_keys(tiny_dir):
    proc = entrolab(
        "eval",
        "--model",
        str(tiny_dir),
        "--task",
        "countdown",
        "--samples",
        "4",
        "--limit",
        "5",
        "--max-new-tokens",
        "8",
        "--json",
    )
    out = json.loads(proc.stdout)
    assert {"pass@1", "pass@2", "pass@4", "accuracy", "mean_length", "format_error_rate"} <= set(out)
    assert "pass@8" not in out  # k > samples is not reported
    assert out["n_prompts"] == 5


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["train", "--model", "nowhere", "--task", "arithmetic"], "model path 'nowhere' does not exist"),
        (["train", "--model", "x", "--lr", "-0.1"], "lr must be > 0, got -0.1"),
        (["train", "--model", "x", "--group-size", "1"], "group_size must be >= 2, got 1"),
        (["train", "--model", "x", "--task", "chess"], "unknown task 'chess'; known: arithmetic, countdown, jsonl, "),
        (["train", "--model", "x", "--aggregation", "avg"], "unknown aggregation 'avg'; known:"),
        (["train", "--model", "x", "--advantage", "gae"], "unknown advantage 'gae'; known: aem, aepo_adv, "),
        (["eval", "--model", "nowhere", "--task", "arithmetic"], "model path 'nowhere' does not exist"),
        (["train", "--resume", "nowhere"], "no config.json there"),
        (["train", "--model", "x", "--preset", "ppo"], "unknown preset 'ppo'"),
        (["train", "--model", "x", "--config", "nowhere.toml"], "config file 'nowhere.toml' does not exist"),
        (["train", "--model", "x", "--reward-timeout", "0"], "reward_timeout must be > 0 seconds, got 0.0"),
        (["train", "--model", "x", "--reward-workers", "0"], "reward_workers must be >= 1 or None"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_clear_line_not_a_traceback(args, msg):
    """Each refused before any work, with exit code 2 and one line naming the value."""
    proc = entrolab(*args, check=False, timeout=120)
    assert proc.returncode == 2
    assert msg in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--schedules", "adaptive_entropy"], "schedule 'adaptive_entropy' sets 'entropy_bonus.coef', but this run"),
        (
            [
                "--regularizers",
                "entropy_bonus",
                "--schedules",
                "adaptive_entropy",
                "--options",
                "adaptive_entropy.observe=x/y",
            ],
            "schedule 'adaptive_entropy' reads metric 'x/y', which this run never logs",
        ),
    ],
)
def test_a_schedule_that_cannot_work_is_refused_before_the_base_evaluation(tiny_dir, tmp_path, args, msg):
    run = tmp_path / "run"
    proc = entrolab("train", "--model", str(tiny_dir), "--out", str(run), "--no-progress", *args, check=False)
    assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "metrics.jsonl").exists()  # nothing evaluated, nothing written


def test_preset_config_and_flags_apply_in_order(tiny_dir, tmp_path):
    """defaults < --preset < --config < flags, all typed fields of the train command."""
    toml = tmp_path / "run.toml"
    toml.write_text("steps = 1\nlr = 0.0005\n[options.ppo_clip]\neps_high = 0.3\n")
    run = tmp_path / "run"
    entrolab("train", "--model", str(tiny_dir), "--out", str(run), "--preset", "dapo", "--config", str(toml), *TRAIN,
             "--steps", "1", "--lr", "0.0002")  # fmt: skip
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == "dapo" and "overlong_filter" in cfg["token_filters"]  # from the preset
    assert "ppo_clip.eps_high=0.3" in cfg["options"]  # from the file
    assert cfg["lr"] == 0.0002 and cfg["steps"] == 1  # flags win


TRAIN = [
    "--task",
    "arithmetic",
    "--steps",
    "10",
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--max-new-tokens",
    "10",
    "--eval-every",
    "5",
    "--eval-samples",
    "2",
    "--eval-prompts",
    "4",
    "--save-every",
    "2",
    "--threads",
    "1",
    "--no-progress",
    "--reward-fn",
    "tests.fault_fns:digits",
]
VOLATILE = ("time/", "throughput/")


def metric_lines(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def wait_for_step(run: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        path = run / "metrics.jsonl"
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines() if x.strip()):
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tiny_dir, tmp_path, sig):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    entrolab("train", "--model", str(tiny_dir), "--out", str(ref), *TRAIN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrolab.cli", "train", "--model", str(tiny_dir), "--out", str(cut), *TRAIN],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_step(cut, proc, 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # SIGTERM: checkpoint at the current step, a resume hint, exit 143
        assert proc.returncode == 143, err
        assert b"entrolab train --resume" in err or b"--resume" in err
    assert list(cut.glob("checkpoint-*.pt")) and not list(cut.glob("*.tmp"))
    assert not (cut / "summary.json").exists()
    entrolab("train", "--resume", str(cut))
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metric_lines(ref) == metric_lines(cut)
    assert [r["step"] for r in metric_lines(cut)] == list(range(11))


def test_pretrain_writes_a_normal_hf_folder_that_eval_reads(tmp_path):
    out = tmp_path / "base"
    proc = entrolab("pretrain", "--task", "countdown", "--out", str(out), "--steps", "3", "--eval-samples", "2")
    assert "pretrained" in proc.stdout and "pass@1" in proc.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "pretrain.json"} <= {p.name for p in out.iterdir()}
    stats = json.loads((out / "pretrain.json").read_text())
    assert stats["config"]["steps"] == 3 and len(stats["loss_curve"]) == 3
    ev = json.loads(
        entrolab("eval", "--model", str(out), "--task", "countdown", "--samples", "2", "--limit", "3", "--json").stdout
    )
    assert ev["n_prompts"] == 3 and 0 <= ev["pass@1"] <= ev["pass@2"] <= 1
