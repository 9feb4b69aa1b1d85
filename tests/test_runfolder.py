"""entrolab.runfolder (one writer per run folder, across processes) and entrolab.jsonio (the folder's JSON files)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from entrolab import jsonio
from entrolab.runfolder import RunFolderError, claim_run_folder, run_files

SRC = str(Path(__file__).resolve().parents[1] / "src")


def holder(run: Path, then: str) -> subprocess.Popen:
    """Another process that claims ``run``, prints its pid, waits for a line on stdin, then runs ``then``."""
    code = textwrap.dedent(f"""
        import os, sys
        from entrolab.runfolder import claim_run_folder
        lock = claim_run_folder({str(run)!r}, "new")
        print(os.getpid(), flush=True)
        sys.stdin.readline()
        {then}
    """)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == str(proc.pid)  # it holds the lock now
    return proc


def a_previous_run(run: Path) -> None:
    """The files a run leaves behind, plus files no run writes (which must survive an overwrite)."""
    run.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "summary.json", "eval_detail.json", "checkpoint.pt"):
        (run / name).write_text("{}")
    for name in ("checkpoint-000004.pt", "checkpoint-000004.pt.sha256", ".checkpoint-000006.pt.tmp"):
        (run / name).write_text("x")
    for folder in ("final", "tensorboard", "mlruns/0"):
        (run / folder).mkdir(parents=True)
        (run / folder / "data").write_text("x")
    (run / "worker.log").write_text("log")
    (run / "planned_config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")


# --- modes ------------------------------------------------------------------------------------------------
def test_new_on_an_empty_or_missing_folder_claims_it(tmp_path):
    run = tmp_path / "a" / "run"
    with claim_run_folder(run, "new") as lock:
        assert lock.held and run.is_dir()
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"
    assert not lock.held and (run / ".lock").read_text() == ""  # the pid is cleared, the file stays


def test_new_on_a_folder_holding_a_run_is_refused_suggesting_resume_or_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunFolderError) as err:
        claim_run_folder(tmp_path, "new")
    message = str(err.value)
    assert str(tmp_path) in message and "metrics.jsonl" in message
    assert "--resume" in message and "--overwrite" in message and "\n" not in message
    with claim_run_folder(tmp_path, "overwrite"):  # the refused claim did not keep the lock
        pass


@pytest.mark.parametrize("name", ["config.json", "checkpoint-000002.pt", "checkpoint.pt"])
def test_a_config_or_any_checkpoint_marks_a_folder_as_holding_a_run(tmp_path, name):
    (tmp_path / name).write_text("x")
    with pytest.raises(RunFolderError, match="already holds a run"):
        claim_run_folder(tmp_path, "new")


def test_overwrite_removes_the_previous_run_and_nothing_it_does_not_recognise(tmp_path):
    a_previous_run(tmp_path)
    with claim_run_folder(tmp_path, "overwrite") as lock:
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.txt", "planned_config.json", "worker.log"]
        assert "checkpoint-000004.pt" in lock.removed and "final" in lock.removed
    assert run_files(tmp_path) == []
    with claim_run_folder(tmp_path, "new"):  # what overwrite leaves, new accepts
        pass


def test_overwrite_recognises_what_entrolab_checkpoint_and_jsonio_actually_write(tmp_path):
    """The names are listed here and written there: this ties the two together."""
    import torch

    from entrolab.checkpoint import save_checkpoint

    for step in (1, 2):
        save_checkpoint(tmp_path, {"w": torch.ones(1)}, step)
    jsonio.write_json_atomic(tmp_path / "config.json", {})
    jsonio.append_jsonl(tmp_path / "metrics.jsonl", {"step": 0})
    (tmp_path / ".checkpoint-000003.pt.tmp").write_bytes(b"killed mid-save")
    (tmp_path / ".summary.json.abc123.tmp").write_text("{")
    with claim_run_folder(tmp_path, "overwrite") as lock:
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
        assert len(lock.removed) == 8


def test_overwrite_removes_a_symlinked_folder_but_not_what_it_points_to(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights").write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "final").symlink_to(elsewhere, target_is_directory=True)
    with claim_run_folder(run, "overwrite"):
        pass
    assert not (run / "final").exists() and (elsewhere / "weights").read_text() == "keep me"


def test_resume_needs_a_config(tmp_path):
    with pytest.raises(RunFolderError, match=r"no config\.json there"):
        claim_run_folder(tmp_path, "resume")
    (tmp_path / "config.json").write_text("{}")
    with claim_run_folder(tmp_path, "resume") as lock:
        assert lock.mode == "resume" and lock.removed == ()


def test_an_unknown_mode_or_a_file_in_the_way_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"mode must be one of \['new', 'resume', 'overwrite'\]"):
        claim_run_folder(tmp_path, "append")  # type: ignore[arg-type]
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is not a folder"):
        claim_run_folder(tmp_path / "file", "new")


def test_a_second_claim_in_this_process_says_so(tmp_path):
    with claim_run_folder(tmp_path, "new"):
        with pytest.raises(RunFolderError, match="already claimed by this process"):
            claim_run_folder(tmp_path, "new")
    with claim_run_folder(tmp_path, "new"):
        pass


# --- across processes -------------------------------------------------------------------------------------
def test_another_process_holding_the_folder_refuses_a_claim_at_once_until_it_releases(tmp_path):
    proc = holder(tmp_path, then="lock.release(); print('released', flush=True); sys.stdin.readline()")
    try:
        (tmp_path / "config.json").write_text("{}")  # the holder's: a refused overwrite must not touch it
        t0 = time.monotonic()
        with pytest.raises(RunFolderError) as err:
            claim_run_folder(tmp_path, "overwrite")
        assert time.monotonic() - t0 < 1.0  # refused at once, never waiting
        message = str(err.value)
        assert (tmp_path / "config.json").exists()
        assert message == (
            f"{tmp_path} is in use by another entrolab process (pid {proc.pid}); wait for it to finish or stop it"
        )
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        assert proc.poll() is None  # still alive, lock released
        with claim_run_folder(tmp_path, "overwrite"):
            pass
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("ending", ["os._exit(0)", "os.kill(os.getpid(), 9)"], ids=["os._exit", "SIGKILL"])
def test_the_lock_goes_with_the_process_however_it_ends(tmp_path, ending):
    proc = holder(tmp_path, then=ending)
    with pytest.raises(RunFolderError, match="in use by another entrolab process"):
        claim_run_folder(tmp_path, "overwrite")
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    with claim_run_folder(tmp_path, "overwrite") as lock:  # the dead holder's pid was in the file: not a problem
        assert lock.held


# --- jsonio -----------------------------------------------------------------------------------------------
def test_write_json_atomic_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    jsonio.write_json_atomic(path, {"a": 1})
    jsonio.write_json_atomic(path, {"b": [1.5, None], "nan": math.nan})
    data = json.loads(path.read_text())
    assert data["b"] == [1.5, None] and math.isnan(data["nan"])
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    jsonio.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        jsonio.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_step_of_reads_a_cut_line_or_a_stepless_line_as_after_everything():
    assert jsonio.step_of('{"step": 3, "loss/total": 0.1}') == 3
    assert jsonio.step_of('{"step": 3, "loss/to') == math.inf
    assert jsonio.step_of("") == math.inf
    assert jsonio.step_of('{"loss/total": 0.1}') == math.inf
    assert jsonio.step_of("[1, 2]") == math.inf
    assert jsonio.step_of('{"step": "3"}') == math.inf


def test_truncate_after_keeps_the_lines_up_to_the_step_and_drops_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in range(5):
        jsonio.append_jsonl(path, {"step": step, "x": step / 2})
    with open(path, "a") as f:
        f.write('{"step": 5, "x"')  # the line a kill cut short
    assert jsonio.truncate_after(path, 2) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert jsonio.truncate_after(path, 2) == 0
    assert jsonio.truncate_after(tmp_path / "missing.jsonl", 2) == 0 and not (tmp_path / "missing.jsonl").exists()


def test_truncate_after_ends_the_file_with_a_newline_so_the_next_append_is_its_own_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')  # a kill between the line and its newline
    assert jsonio.truncate_after(path, 2) == 0
    jsonio.append_jsonl(path, {"step": 3})
    assert [jsonio.step_of(line) for line in path.read_text().splitlines()] == [1, 2, 3]
