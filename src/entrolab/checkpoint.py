"""Checkpoints: written atomically, checksummed, rotated, and read back with ``torch.load(weights_only=True)`` only.

Layout in a run folder::

    checkpoint-000004.pt          torch.save({"format": 1, "step": 4, "state": STATE})
    checkpoint-000004.pt.sha256   "<sha256 hex>  checkpoint-000004.pt\\n"   (``sha256sum -c`` reads it)
    checkpoint-000006.pt  (+ .sha256)                                     the newest ``keep`` (default 2) stay

Why it is built this way:

* **A checkpoint is data, so loading one never runs code.** ``STATE`` holds only tensors and plain data
  (dict, list, tuple, set, str, bytes, int, float, complex, bool, None, torch dtype/device/Size):
  ``save_checkpoint`` checks this before writing and names any other value. The RNG states that used to
  be pickled as they are (numpy's holds an ndarray) are stored by ``rng_state`` as tensors and plain data
  and restored exactly by ``set_rng_state``. ``load_checkpoint`` uses ``weights_only=True`` and refuses
  anything else: one file, no JSON beside it, one checksum.
* **The checksum catches what an atomic rename cannot**: a file truncated or bit-flipped after it was
  written (a copy or sync cut short, bad storage). Writing goes temp file ``.checkpoint-000006.pt.tmp``
  → fsync → ``os.replace`` → fsync the folder, and only then the checksum file (atomically too). A kill
  between the two renames leaves a ``.pt`` without a checksum, which reads as damaged, so the previous
  checkpoint is used: that is why two are kept.
* **Rotation by step.** After a save at step s the folder holds s and the newest ``keep - 1`` checkpoints
  before it. Checkpoints after s are removed too: they exist only when a run resumed from an earlier
  checkpoint because they were damaged, and the resumed run writes its own.

Legacy ``checkpoint.pt`` (entrolab 0.1: one file, no checksum, RNG states pickled with numpy arrays) is
still read, safely: with ``weights_only=True`` and exactly numpy's array-rebuilding globals allowlisted
(``numpy.ndarray``, ``numpy.dtype``, the uint32 dtype class, ``numpy…multiarray._reconstruct``), which build
arrays and nothing else. A legacy file that holds any other object is refused. Having no checksum, it is
tried only after every newer checkpoint, reported when used, and removed by the rotation once ``keep`` new
checkpoints exist.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entrolab.jsonio import fsync_dir, write_bytes_atomic

CHECKPOINT_FORMAT = 1
LEGACY_CHECKPOINT = "checkpoint.pt"
_NAME = re.compile(r"checkpoint-(\d{6,})\.pt")


class CheckpointError(ValueError):
    """No usable checkpoint: the one-line message names each file tried and why it was not used."""


class _Unusable(Exception):
    """One checkpoint file cannot be used; the message says why (for the log and for CheckpointError)."""


class _Refused(_Unusable):
    """The file holds a pickled object that is neither a tensor nor plain data."""


# ----------------------------------------------------------------------------------------------------------
# names in the run folder (presence only: nothing here reads a checkpoint)
# ----------------------------------------------------------------------------------------------------------
def checkpoint_path(run: Path, step: int) -> Path:
    """``run/checkpoint-{step:06d}.pt``."""
    return Path(run) / f"checkpoint-{step:06d}.pt"


def checksum_path(checkpoint: Path) -> Path:
    """The checksum file beside a checkpoint: ``checkpoint-000006.pt.sha256``."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-NNNNNN.pt`` in ``run``, oldest first (the legacy file is not listed)."""
    run = Path(run)
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint file present (by step; the legacy ``checkpoint.pt`` when there is no other), else None.

    Presence only: ``load_checkpoint`` verifies it and falls back to an older one when it is damaged.
    """
    found = list_checkpoints(run)
    if found:
        return found[-1][1]
    legacy = Path(run) / LEGACY_CHECKPOINT
    return legacy if legacy.is_file() else None


def has_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds any checkpoint file (new or legacy), i.e. whether a resume can be attempted."""
    return latest_checkpoint(run) is not None


# ----------------------------------------------------------------------------------------------------------
# RNG states as tensors and plain data
# ----------------------------------------------------------------------------------------------------------
def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every RNG the trainer draws from, as tensors and plain data (``weights_only``-loadable).

    Keys: ``torch`` (global CPU state, uint8 tensor), ``generator`` (``gen``'s state, uint8 tensor),
    ``python`` (``random``: version, the 625-word internal state as an int64 tensor, gauss_next) and
    ``numpy`` (the legacy global ``np.random`` MT19937: kind, the 624-word key as an int64 tensor, pos,
    has_gauss, cached_gaussian). CUDA RNG states are not included (nor were they in entrolab 0.1).
    """
    return {
        "torch": torch.get_rng_state(),
        "generator": gen.get_state(),
        "python": _python_plain(random.getstate()),
        "numpy": _numpy_plain(np.random.get_state()),
    }


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Restore what ``rng_state`` captured, so that every next draw is the one the saved run would have made."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    key = npy["key"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], key, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))


def _python_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _numpy_plain(state: tuple) -> dict[str, Any]:
    kind, key, pos, has_gauss, cached_gaussian = state
    if not (isinstance(key, np.ndarray) and key.dtype == np.uint32 and key.shape == (624,)):
        raise ValueError(f"numpy RNG key is not 624 uint32 words ({type(key).__name__})")
    return {
        "kind": str(kind),
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


# ----------------------------------------------------------------------------------------------------------
# save: temp -> fsync -> rename -> checksum -> rotate
# ----------------------------------------------------------------------------------------------------------
def save_checkpoint(run: Path, state: dict[str, Any], step: int, keep: int = 2) -> Path:
    """Write ``state`` as ``run/checkpoint-{step:06d}.pt`` plus its ``.sha256``, then keep only ``keep`` checkpoints.

    ``state`` must be tensors and plain data (see the module docstring); a ``TypeError`` naming the first
    offending keys is raised before anything is written. Returns the checkpoint's path.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (checkpoints to keep), got {keep}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    problems = _not_plain(state, "state")
    if problems:
        raise TypeError(
            f"checkpoint state holds values torch.load(weights_only=True) refuses: {', '.join(problems[:3])}; "
            "store tensors or plain data instead (e.g. float(x), x.tolist(), torch.from_numpy(a))"
        )
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(run, step)
    tmp = run / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, "step": step, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(run)
    write_bytes_atomic(checksum_path(path), f"{digest}  {path.name}\n".encode())
    _rotate(run, step, keep)
    return path


def _rotate(run: Path, step: int, keep: int) -> None:
    """Keep the checkpoint at ``step`` and the newest ``keep - 1`` before it; remove the rest and any leftovers."""
    found = list_checkpoints(run)
    older = [p for s, p in found if s < step]
    drop = older[: max(0, len(older) - (keep - 1))] + [p for s, p in found if s > step]
    legacy = run / LEGACY_CHECKPOINT
    if legacy.is_file() and len(older) + 1 >= keep:
        drop.append(legacy)
    for p in drop:
        p.unlink(missing_ok=True)  # the .pt first: a kill here leaves a checksum without a file, which is ignored
        checksum_path(p).unlink(missing_ok=True)
    for p in run.glob("checkpoint-*.pt.sha256"):  # checksums whose checkpoint is gone
        if not p.with_name(p.name.removesuffix(".sha256")).exists():
            p.unlink(missing_ok=True)
    for p in run.glob(".checkpoint-*.tmp"):  # temp files of saves that were killed
        p.unlink(missing_ok=True)
    fsync_dir(run)


_PLAIN_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)


def _not_plain(obj: Any, where: str, out: list[str] | None = None) -> list[str]:
    """Where ``obj`` holds a value that is neither a tensor nor plain data (exact types: np.float64 is refused)."""
    out = [] if out is None else out
    kind = type(obj)
    if kind in (torch.Tensor, torch.nn.Parameter) or kind in _PLAIN_LEAVES:
        return out
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            _not_plain(key, f"{where} key {key!r}", out)
            _not_plain(value, f"{where}[{key!r}]", out)
    elif kind in (list, tuple, set):
        for i, value in enumerate(obj):
            _not_plain(value, f"{where}[{i}]", out)
    else:
        out.append(f"{where} is {kind.__module__}.{kind.__qualname__}")
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------------------------------------
# load: newest first, checksum, weights_only
# ----------------------------------------------------------------------------------------------------------
def load_checkpoint(
    run: Path, log: Callable[[str], object] = print, *, map_location: str | torch.device | None = "cpu"
) -> tuple[dict[str, Any], Path]:
    """The state of the newest usable checkpoint in ``run``, and its path.

    Newest first; each is verified against its checksum and loaded with ``weights_only=True``. A damaged
    one (truncated, bit-flipped, no checksum, refused contents) is reported through ``log`` with its name
    and why, and the one before it is tried; the legacy ``checkpoint.pt`` comes last. The returned state's
    ``rng`` (when present) is in ``rng_state``'s form, for ``set_rng_state``, whichever file it came from.

    Raises:
        CheckpointError: none is usable (or there is none); the one-line message names each file and why.
    """
    run = Path(run)
    candidates = [p for _, p in reversed(list_checkpoints(run))]
    if (run / LEGACY_CHECKPOINT).is_file():
        candidates.append(run / LEGACY_CHECKPOINT)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {run} (checkpoint-NNNNNN.pt); nothing to resume from")
    failures: list[str] = []
    for path in candidates:
        try:
            state = _read_legacy(path, map_location) if path.name == LEGACY_CHECKPOINT else _read(path, map_location)
        except _Unusable as e:
            failures.append(f"{path.name} ({e})")
            log(f"checkpoint {path}: {e}; skipping it")
            continue
        if failures:
            log(f"using the previous checkpoint, {path.name}")
        if path.name == LEGACY_CHECKPOINT:
            log(f"checkpoint {path}: legacy single-file checkpoint, no checksum to verify; read with weights_only")
        return state, path
    raise CheckpointError(f"no usable checkpoint in {run}: {'; '.join(failures)}; start the run again")


def _read(path: Path, map_location: str | torch.device | None) -> dict[str, Any]:
    sidecar = checksum_path(path)
    try:
        words = sidecar.read_text().split()
    except FileNotFoundError:
        raise _Unusable(f"no checksum file {sidecar.name} (its save was cut short?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _Unusable(f"checksum file {sidecar.name} is unreadable ({e})") from None
    if not words or not re.fullmatch(r"[0-9a-f]{64}", words[0]):
        raise _Unusable(f"checksum file {sidecar.name} is corrupt")
    if _sha256(path) != words[0]:
        raise _Unusable("checksum mismatch: the file is corrupt (truncated or changed after it was written)")
    saved = _torch_load(path, map_location)
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise _Unusable("corrupt: not an entrolab checkpoint")
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise _Unusable(f"format {saved.get('format')!r}; this entrolab reads format {CHECKPOINT_FORMAT}")
    name_step = int(_NAME.fullmatch(path.name).group(1))
    if saved.get("step") != name_step:
        raise _Unusable(f"corrupt: it holds step {saved.get('step')!r}, its name says {name_step}")
    return saved["state"]


def _read_legacy(path: Path, map_location: str | torch.device | None) -> dict[str, Any]:
    """entrolab 0.1's ``checkpoint.pt``, with only numpy's array-rebuilding globals allowed besides the defaults."""
    reconstruct = np.zeros(0).__reduce__()[0]  # numpy's array-rebuild function, whatever module this numpy puts it in
    allowed = [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # the MT19937 key's dtype: no other dtype is allowed
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # written by numpy 1.x
        (reconstruct, "numpy._core.multiarray._reconstruct"),  # written by numpy 2.x
    ]
    with torch.serialization.safe_globals(allowed):
        try:
            state = _torch_load(path, map_location)
        except _Refused as e:
            raise _Refused(f"{e}; checkpoints from before this version holding it cannot be resumed safely") from None
    if not isinstance(state, dict) or not isinstance(state.get("rng"), dict):
        raise _Unusable("corrupt: not an entrolab checkpoint")
    rng = state["rng"]
    try:
        converted = {
            "torch": rng["torch"],
            "generator": rng["gen"],
            "python": _python_plain(rng["python"]),
            "numpy": _numpy_plain(rng["numpy"]),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise _Unusable(f"corrupt: legacy RNG state unreadable ({type(e).__name__}: {e})") from None
    return {**state, "rng": converted}


def _torch_load(path: Path, map_location: str | torch.device | None) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(e))
        what = (named.group(1) or named.group(2)) if named else "an object"
        raise _Refused(f"refusing to unpickle {what} (not tensors or plain data)") from None
    except Exception as e:  # a torn zip, a bad record: whatever torch raises for a file it cannot read
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise _Unusable(f"corrupt: torch.load failed ({type(e).__name__}: {first})") from None
