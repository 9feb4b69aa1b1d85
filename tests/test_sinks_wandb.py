"""--log-to wandb: the real wandb library, offline, read back from its own transaction log.

The offline run's ``.wandb`` log is read with ``wandb leet inspect --json`` (wandb-core's reader; wandb 0.31 has
no Python reader for the log any more), one JSON record a line.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from entrolab.sinks import SINKS, WandbSink, make_sinks, wandb_run_id

ROWS = [
    (0, {"eval/pass@1": 0.25, "eval/mean_reward": 0.5}),
    (1, {"loss/policy": -0.125, "entropy/token_mean": 1.5, "reward/mean": 0.75}),
    (2, {"loss/policy": 0.0625, "entropy/token_mean": 1.25, "reward/mean": 1.0, "eval/pass@1": 0.5}),
]
CONFIG = {"lr": 1e-3, "group_size": 4, "log_to": ["wandb"], "reward_fn": None}


@pytest.fixture(autouse=True)
def _no_user_wandb_env(monkeypatch, tmp_path):
    """No WANDB_* setting of the machine leaks in; wandb's own settings files live in tmp_path."""
    for key in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_PROJECT", "WANDB_SILENT", "WANDB_DIR", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def read_records(wandb_file: Path) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def history(records: list[dict]) -> list[tuple[int, dict]]:
    """(step, the logged metrics) per history record, without wandb's own ``_`` keys."""
    rows = []
    for r in records:
        if r["type"] == "history":
            item = r["history"]["item"]
            rows.append((r["history"]["step"]["num"], {k: v for k, v in item.items() if not k.startswith("_")}))
    return rows


def log_rows(run: Path, rows=ROWS) -> None:
    (sink,) = make_sinks(("wandb",), run, CONFIG)
    assert isinstance(sink, WandbSink)
    for step, metrics in rows:
        sink.log(step, metrics)
    sink.close()


def test_offline_run_records_the_logged_steps_values_and_config(tmp_path):
    run = tmp_path / "grpo seed0"
    log_rows(run)
    assert "WANDB_MODE" not in os.environ  # offline is passed to wandb.init, the environment is left alone
    (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    assert wandb_file.name == f"run-{wandb_run_id(run)}.wandb"
    records = read_records(wandb_file)
    assert history(records) == ROWS
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["display_name"] == "grpo seed0" and header["project"] == "entrolab"
    assert header["run_id"] == wandb_run_id(run) and wandb_run_id(run).startswith("grpo-seed0-")
    config = header["config"]["update"]
    assert {k: config[k] for k in CONFIG} == CONFIG
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]  # close() finished the run
    assert not list(run.glob("wandb/offline-run-*/files/requirements.txt"))  # no environment snapshot


def test_resume_writes_a_second_offline_folder_of_the_same_run(tmp_path):
    run = tmp_path / "r"
    log_rows(run, ROWS[:2])
    log_rows(run, ROWS[2:])
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{wandb_run_id(run)}.wandb"] * 2
    assert sorted((h for f in files for h in history(read_records(f))), key=lambda h: h[0]) == ROWS


def test_run_id_is_a_pure_function_of_the_folder(tmp_path):
    assert wandb_run_id(tmp_path / "a") == wandb_run_id(tmp_path / "x" / ".." / "a")
    assert wandb_run_id(tmp_path / "a") != wandb_run_id(tmp_path / "b" / "a")
    assert set(wandb_run_id(tmp_path / "a b/c:d")) <= set(string.ascii_letters + string.digits + "_-")


def test_explicit_wandb_mode_disabled_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = tmp_path / "off"
    log_rows(run)
    assert not (run / "wandb").exists()


def test_missing_wandb_is_a_clear_error_at_construction(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ValueError, match=r"--log-to wandb needs the wandb package: pip install 'entrolab\[wandb\]'"):
        make_sinks(("wandb",), tmp_path / "x", CONFIG)
    assert not (tmp_path / "x").exists()


def test_unknown_sink_lists_all_three(tmp_path):
    assert SINKS == ("tensorboard", "mlflow", "wandb")
    with pytest.raises(ValueError, match="unknown log_to sink 'neptune'; allowed: tensorboard, mlflow, wandb"):
        make_sinks(("neptune",), tmp_path, {})
