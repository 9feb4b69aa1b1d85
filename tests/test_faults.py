"""The fault classes a user can hit, each through the real command line: rewards that hang, raise or kill their
worker; a loss that turns NaN once or always; damaged or unsafe checkpoints; run folders reused or shared."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.test_cli import ENV, ROOT, TRAIN, entrolab, metric_lines

FAST = list(TRAIN)  # 4 prompts x 4 samples, checkpoint every 2 steps, the digit-share reward


def train(model: Path, out: Path, *extra: str, steps: int = 3, check: bool = False) -> subprocess.CompletedProcess:
    args = [*FAST, *extra]
    args[args.index("--steps") + 1] = str(steps)
    return entrolab("train", "--model", str(model), "--out", str(out), *args, check=check, timeout=240)


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------ rewards
def test_a_hanging_reward_stops_the_run_with_a_timeout_message(tiny_dir, tmp_path):
    t0 = time.perf_counter()
    proc = train(tiny_dir, tmp_path / "run", "--reward-fn", "tests.fault_fns:hang", "--reward-timeout", "1")
    assert proc.returncode == 1, proc.stderr
    assert "timed out after 1 s" in proc.stderr and "prompt:" in proc.stderr and "arithmetic:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - t0 < 120  # never hangs


def test_a_hanging_reward_with_skip_is_counted_and_the_run_finishes(tiny_dir, tmp_path):
    run = tmp_path / "run"
    proc = train(
        tiny_dir, run, "--reward-fn", "tests.fault_fns:hang_on_ones", "--reward-timeout", "0.5",
        "--on-reward-error", "skip", "--reward-workers", "2", "--prompts-per-step", "16", steps=1,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = metric_lines(run)[1]
    assert row["reward/timeouts"] > 0 and row["reward/errors"] >= row["reward/timeouts"]
    assert row["reward/timeouts"] % 4 == 0  # every sample of a hanging prompt's group of 4
    assert "warning: step 1:" in proc.stderr and "timed out after 0.5 s" in proc.stderr  # said, not only counted


def test_a_raising_reward_stops_the_run_naming_the_example(tiny_dir, tmp_path):
    proc = train(tiny_dir, tmp_path / "run", "--reward-fn", "tests.fault_fns:raise_on_ones", "--prompts-per-step", "16")
    assert proc.returncode == 1
    assert "example 'arithmetic:1" in proc.stderr and "RuntimeError: boom" in proc.stderr
    assert "--on-reward-error skip" in proc.stderr


def test_a_dying_reward_worker_is_reported(tiny_dir, tmp_path):
    proc = train(tiny_dir, tmp_path / "run", "--reward-fn", "tests.fault_fns:die")
    assert proc.returncode == 1
    assert "died" in proc.stderr and "exit code 3" in proc.stderr


# ------------------------------------------------------------------------------------------------ NaN loss
def test_a_nan_loss_once_skips_exactly_one_step_and_the_run_finishes(tiny_dir, tmp_path):
    run = tmp_path / "run"
    proc = train(tiny_dir, run, "--policy-loss", "tests.user_methods:nan_once", steps=3)
    assert proc.returncode == 0, proc.stderr
    rows = metric_lines(run)[1:]
    assert [r["update/skipped_nonfinite"] for r in rows] == [0.0, 1.0, 0.0]
    assert "step 2: non-finite loss" in proc.stderr
    weights = load_file(run / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_nan_loss_always_stops_the_run_cleanly(tiny_dir, tmp_path):
    run = tmp_path / "run"
    proc = train(tiny_dir, run, "--policy-loss", "tests.user_methods:nan_always", "--max-nonfinite-steps", "2", steps=5)
    assert proc.returncode == 1
    assert "non-finite" in last_line(proc.stderr) and "Traceback" not in proc.stderr
    assert [r["step"] for r in metric_lines(run)] == [0, 1, 2]
    assert list(run.glob("checkpoint-000002.pt"))  # the last good state
    before = load_file(tiny_dir / "model.safetensors")
    state = torch.load(sorted(run.glob("checkpoint-*.pt"))[-1], weights_only=True)["state"]["model"]
    assert all(torch.equal(state[k], before[k]) for k in before)  # never a NaN step: the weights are the base's


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_truncated_checkpoint_falls_back_to_the_previous_and_ends_bit_identical(tiny_dir, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert train(tiny_dir, ref, steps=6).returncode == 0
    assert train(tiny_dir, cut, "--save-every", "1", steps=6).returncode == 0
    latest = sorted(cut.glob("checkpoint-*.pt"))
    assert [p.name for p in latest] == ["checkpoint-000005.pt", "checkpoint-000006.pt"]
    latest[-1].write_bytes(latest[-1].read_bytes()[:1000])  # cut short
    (cut / "summary.json").unlink()
    proc = entrolab("train", "--resume", str(cut), check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "checkpoint-000006.pt" in out and ("checksum" in out or "corrupt" in out)
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metric_lines(ref) == metric_lines(cut)


def test_both_checkpoints_damaged_is_a_one_line_error(tiny_dir, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_dir, run, "--save-every", "1", steps=2).returncode == 0
    for p in run.glob("checkpoint-*.pt"):
        p.write_bytes(b"garbage")
    proc = entrolab("train", "--resume", str(run), "--steps", "4", check=False)
    assert proc.returncode == 2
    assert "no usable checkpoint" in last_line(proc.stderr) and "Traceback" not in proc.stderr


class Payload:
    """Not a tensor nor plain data: unpickling it would run code."""


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tiny_dir, tmp_path):
    import hashlib

    run = tmp_path / "run"
    assert train(tiny_dir, run, "--save-every", "1", steps=1).returncode == 0
    (path,) = run.glob("checkpoint-*.pt")
    data = torch.load(path, weights_only=True)
    data["state"]["loop"]["observed"] = Payload()
    torch.save(data, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (run / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
    proc = entrolab("train", "--resume", str(run), "--steps", "3", check=False)
    assert proc.returncode == 2
    assert "refusing to unpickle" in proc.stderr and "Payload" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ run folders
def test_a_finished_run_folder_is_refused_unless_overwrite(tiny_dir, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_dir, run, steps=3).returncode == 0
    proc = train(tiny_dir, run, steps=2)
    assert proc.returncode == 2
    line = last_line(proc.stderr)
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert [r["step"] for r in metric_lines(run)] == [0, 1, 2, 3]  # untouched
    assert train(tiny_dir, run, "--overwrite", steps=2).returncode == 0
    assert [r["step"] for r in metric_lines(run)] == [0, 1, 2]


def test_a_second_process_on_a_folder_in_use_is_refused_at_once(tiny_dir, tmp_path):
    run = tmp_path / "run"
    args = [*FAST, "--reward-fn", "tests.fault_fns:hang", "--reward-timeout", "60"]
    first = subprocess.Popen(
        [sys.executable, "-m", "entrolab.cli", "train", "--model", str(tiny_dir), "--out", str(run), *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists():  # the first run holds the folder (it hangs on its reward)
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        t0 = time.perf_counter()
        proc = train(tiny_dir, run, "--overwrite", steps=2)
        assert proc.returncode == 2 and "in use by another entrolab process" in proc.stderr
        assert time.perf_counter() - t0 < 60
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 0  # not truncated
    finally:
        first.kill()
        first.communicate()
