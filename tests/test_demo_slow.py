"""The demo as a new user runs it, with its targets (slow: about 5 minutes on 2 cores; `pytest -m slow`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_cli import ENV, ROOT


@pytest.mark.slow
def test_demo_learns_and_entropy_collapses(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrolab.cli",
            "demo",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    base, final = summary["base_eval"], summary["final_eval"]
    assert 0.05 <= base["pass@1"] <= 0.40  # the base policy leaves room to improve
    assert base["pass@16"] >= 2 * base["pass@1"]
    assert final["pass@1"] - base["pass@1"] >= 0.15  # GRPO raises test pass@1 by at least 0.15 absolute
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
    first = sum(r["entropy/token_mean"] for r in rows[:10]) / 10
    last = sum(r["entropy/token_mean"] for r in rows[-10:]) / 10
    assert last < 0.8 * first  # entropy collapse under plain GRPO
    assert "pass@1" in proc.stdout and "demo wall time" in proc.stdout
    # the second demo reuses the cached base model
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrolab.cli",
            "demo",
            "--out",
            str(tmp_path / "demo2"),
            "--cache",
            str(tmp_path / "cache"),
            "--steps",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "using cached base model" in again.stdout
