"""entrolab.checkpoint: exact round trips, rotation, damaged files, and loading that never runs code."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from entrolab.checkpoint import (
    CheckpointError,
    checksum_path,
    has_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def training_state(gen: torch.Generator) -> dict:
    """What the trainer checkpoints, for a tiny model after one AdamW step under a LambdaLR schedule."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model(torch.randn(4, 3, generator=gen)).sum().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(gen),
        "step": 6,
        "position": 24,
        "base_eval": {"pass@1": 0.25, "accuracy": 0.5},
        "elapsed": 1.5,
        "schedule_state": {"adaptive_entropy": {"coef": 0.01}},
        "observed": {"entropy/mean": 0.7, "loss/total": float("nan")},
        "config": {"lr": 1e-3, "adam_betas": (0.9, 0.95), "log_to": (), "reward_fn": None},
    }


def draws(gen: torch.Generator) -> list:
    """One draw from every RNG the trainer uses, Gaussians included (their cached second values are state)."""
    return [
        torch.rand(3).tolist(),
        torch.rand(3, generator=gen).tolist(),
        random.random(),
        random.gauss(0.0, 1.0),
        float(np.random.rand()),
        float(np.random.standard_normal()),
    ]


def save_steps(run: Path, steps, **kw) -> None:
    gen = torch.Generator().manual_seed(0)
    for step in steps:
        save_checkpoint(run, {"step": step, "w": torch.full((4,), float(step)), "rng": rng_state(gen)}, step, **kw)


def names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


# --- round trip -------------------------------------------------------------------------------------------
def test_round_trip_restores_tensors_data_and_every_next_random_draw(tmp_path):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    # An odd number of Gaussian draws leaves a cached second value in random and numpy: the state must keep it.
    random.gauss(0.0, 1.0), np.random.standard_normal()
    state = training_state(gen)
    expected = draws(gen)  # what the saved run draws next
    path = save_checkpoint(tmp_path, state, step=6)
    draws(gen), draws(gen)  # the RNGs move on; a resume must bring them back

    loaded, used = load_checkpoint(tmp_path, log=lambda msg: pytest.fail(f"unexpected log: {msg}"))
    set_rng_state(loaded["rng"], gen)

    assert used == path == tmp_path / "checkpoint-000006.pt"
    assert draws(gen) == expected
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    for key, value in state["optimizer"]["state"][0].items():
        assert torch.equal(loaded["optimizer"]["state"][0][key], value)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert loaded["scheduler"] == state["scheduler"]
    for key in ("step", "position", "base_eval", "elapsed", "schedule_state", "config"):
        assert loaded[key] == state[key]
    assert loaded["observed"]["entropy/mean"] == 0.7 and np.isnan(loaded["observed"]["loss/total"])


def test_loaded_state_restores_a_model_optimizer_and_scheduler(tmp_path):
    """The state dicts load into fresh objects, which then take the same next step as the originals."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    state = training_state(gen)
    save_checkpoint(tmp_path, state, step=1)
    loaded, _ = load_checkpoint(tmp_path)
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(loaded["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    opt.load_state_dict(loaded["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    sched.load_state_dict(loaded["scheduler"])
    assert sched.get_last_lr() == state["scheduler"]["_last_lr"]
    assert opt.state_dict()["state"][0]["step"] == state["optimizer"]["state"][0]["step"]


def test_the_file_is_weights_only_loadable_and_the_checksum_is_sha256sum_format(tmp_path):
    path = save_checkpoint(tmp_path, training_state(torch.Generator().manual_seed(0)), step=6)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == 1 and saved["step"] == 6 and saved["state"]["position"] == 24
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert checksum_path(path).read_text() == f"{digest}  checkpoint-000006.pt\n"
    assert names(tmp_path) == ["checkpoint-000006.pt", "checkpoint-000006.pt.sha256"]  # no temp file left


def test_a_value_weights_only_would_refuse_fails_the_save_naming_its_key(tmp_path):
    """np.float64 subclasses float yet pickles as a numpy scalar: refused when saving, not found out at resume."""
    state = {"base_eval": {"pass@1": np.float64(0.5)}, "w": torch.ones(2)}
    with pytest.raises(TypeError, match=r"state\['base_eval'\]\['pass@1'\] is numpy.float64"):
        save_checkpoint(tmp_path, state, step=1)
    assert names(tmp_path) == []


# --- rotation ---------------------------------------------------------------------------------------------
def test_only_the_newest_two_checkpoints_and_their_checksums_stay(tmp_path):
    save_steps(tmp_path, [2, 4, 6, 8])
    assert names(tmp_path) == [
        "checkpoint-000006.pt",
        "checkpoint-000006.pt.sha256",
        "checkpoint-000008.pt",
        "checkpoint-000008.pt.sha256",
    ]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-000008.pt" and has_checkpoint(tmp_path)
    save_steps(tmp_path / "three", [1, 2, 3, 4], keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path / "three")] == [2, 3, 4]


def test_a_save_before_newer_checkpoints_replaces_them(tmp_path):
    """Resumed at 4 because 6 was damaged: the save at 5 leaves 4 and 5, never the damaged 6."""
    save_steps(tmp_path, [4, 6])
    save_steps(tmp_path, [5])
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert not checksum_path(tmp_path / "checkpoint-000006.pt").exists()


def test_no_checkpoint_means_none_and_a_clear_error(tmp_path):
    assert latest_checkpoint(tmp_path) is None and not has_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*nothing to resume"):
        load_checkpoint(tmp_path)


# --- damaged files ----------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (truncate, "checksum mismatch"),
        (flip_a_bit, "checksum mismatch"),
        (lambda p: checksum_path(p).unlink(), "no checksum file checkpoint-000006.pt.sha256"),
        (lambda p: checksum_path(p).write_text("not a digest\n"), "checksum file .* is corrupt"),
    ],
    ids=["truncated", "bit-flipped", "checksum-missing", "checksum-garbled"],
)
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage, reason):
    save_steps(tmp_path, [4, 6])
    damage(tmp_path / "checkpoint-000006.pt")
    messages: list[str] = []
    state, used = load_checkpoint(tmp_path, log=messages.append)
    assert used.name == "checkpoint-000004.pt" and state["step"] == 4
    assert torch.equal(state["w"], torch.full((4,), 4.0))
    assert "checkpoint-000006.pt" in messages[0]
    assert re.search(reason, messages[0])
    assert messages[1] == "using the previous checkpoint, checkpoint-000004.pt"


def test_when_every_checkpoint_is_damaged_the_error_is_one_line_naming_each_file(tmp_path):
    save_steps(tmp_path, [4, 6])
    truncate(tmp_path / "checkpoint-000006.pt")
    checksum_path(tmp_path / "checkpoint-000004.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, log=lambda msg: None)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ValueError)
    assert "checkpoint-000006.pt (checksum mismatch" in message
    assert "checkpoint-000004.pt (no checksum file" in message


# --- loading never runs code ------------------------------------------------------------------------------
MARKER: list[str] = []


def _ran(what: str) -> None:
    MARKER.append(what)


class Payload:
    """A pickled object whose unpickling would run code (a call to ``_ran``): what weights_only prevents."""

    def __reduce__(self):
        return (_ran, ("unpickled",))


def write_with_valid_checksum(path: Path, obj) -> None:
    torch.save(obj, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    checksum_path(path).write_text(f"{digest}  {path.name}\n")


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    MARKER.clear()
    write_with_valid_checksum(tmp_path / "checkpoint-000003.pt", {"format": 1, "step": 3, "state": {"x": Payload()}})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, log=lambda msg: None)
    message = str(err.value)
    assert re.search(r"refusing to unpickle [\w.]*test_checkpoint\._ran \(not tensors or plain data\)", message)
    assert "\n" not in message and MARKER == []


def test_a_refused_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    MARKER.clear()
    save_steps(tmp_path, [2])
    write_with_valid_checksum(tmp_path / "checkpoint-000003.pt", {"format": 1, "step": 3, "state": {"x": Payload()}})
    messages: list[str] = []
    _, used = load_checkpoint(tmp_path, log=messages.append)
    assert used.name == "checkpoint-000002.pt" and MARKER == []
    assert "checkpoint-000003.pt" in messages[0] and "refusing to unpickle" in messages[0]


def test_a_file_that_is_not_an_entrolab_checkpoint_is_corrupt(tmp_path):
    write_with_valid_checksum(tmp_path / "checkpoint-000003.pt", {"model": torch.ones(1)})
    with pytest.raises(CheckpointError, match=r"checkpoint-000003.pt \(corrupt: not an entrolab checkpoint\)"):
        load_checkpoint(tmp_path, log=lambda msg: None)


# --- legacy checkpoint.pt ---------------------------------------------------------------------------------
def legacy_rng(gen: torch.Generator) -> dict:
    """entrolab 0.1's trainer.rng_state: the states as the libraries return them (numpy's holds an ndarray)."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "gen": gen.get_state(),
    }


def test_a_legacy_checkpoint_loads_safely_and_restores_the_rng(tmp_path):
    gen = torch.Generator().manual_seed(5)
    np.random.seed(2), random.seed(2)
    torch.save({"step": 7, "w": torch.ones(2), "rng": legacy_rng(gen)}, tmp_path / "checkpoint.pt")
    expected = draws(gen)
    assert has_checkpoint(tmp_path) and latest_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"
    messages: list[str] = []
    state, used = load_checkpoint(tmp_path, log=messages.append)
    set_rng_state(state["rng"], gen)
    assert used.name == "checkpoint.pt" and state["step"] == 7
    assert draws(gen) == expected
    assert "legacy" in messages[0] and "no checksum" in messages[0]


def test_a_legacy_checkpoint_holding_other_objects_cannot_be_resumed(tmp_path):
    MARKER.clear()
    gen = torch.Generator().manual_seed(5)
    torch.save({"step": 7, "rng": legacy_rng(gen), "x": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle .*before this version .*cannot be resumed safely"):
        load_checkpoint(tmp_path, log=lambda msg: None)
    assert MARKER == []


def test_new_checkpoints_come_before_the_legacy_one_which_rotation_then_removes(tmp_path):
    torch.save({"step": 1, "rng": legacy_rng(torch.Generator())}, tmp_path / "checkpoint.pt")
    save_steps(tmp_path, [2])
    assert latest_checkpoint(tmp_path).name == "checkpoint-000002.pt"
    assert (tmp_path / "checkpoint.pt").exists()  # still one of the two kept
    save_steps(tmp_path, [3])
    assert not (tmp_path / "checkpoint.pt").exists()
    assert load_checkpoint(tmp_path)[0]["step"] == 3
