"""One writer per run folder: ``claim_run_folder`` locks ``RUN/.lock`` and checks the folder suits the mode.

Two processes writing one run folder (a second ``entrolab train`` on the same ``--out``, a ``compare`` run
twice at once) would interleave metrics and overwrite each other's checkpoints. The claim is an exclusive,
non-blocking ``fcntl.flock`` on ``RUN/.lock``, so a second claimant is refused at once, and the kernel
drops the lock when the holder's file descriptor closes: on ``release()``, at the end of the ``with``
block, or when the process ends however it ends (``os._exit``, SIGKILL, a crash). The lock file stays (a
lock file that is deleted can be locked twice through two inodes); it holds the holder's pid, for the
message. ``flock`` is advisory and may not work across machines on some network file systems.

The fd is not inherited by ``exec``-ed children (Python's default), but a ``fork`` without ``exec`` shares
the lock with the child, so it is held until both have closed it.

Modes:

* ``new``: the folder must not hold a run (any of ``run_files``), or the claim fails, suggesting
  ``--resume`` or ``--overwrite``.
* ``resume``: the folder must hold ``config.json`` (whether a checkpoint is usable is
  ``entrolab.checkpoint.load_checkpoint``'s to say).
* ``overwrite``: the previous run's files (exactly ``run_files``) are removed after the lock is taken;
  files this module does not recognise (``worker.log``, ``planned_config.json``, a user's notes) stay.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Literal

RunMode = Literal["new", "resume", "overwrite"]
MODES: tuple[RunMode, ...] = ("new", "resume", "overwrite")
LOCK = ".lock"

# What a run writes into its folder (trainer, sinks, entrolab.checkpoint, entrolab.jsonio's temp files).
RUN_FILE_NAMES = ("config.json", "metrics.jsonl", "summary.json", "eval_detail.json", "checkpoint.pt")
RUN_DIR_NAMES = ("final", "tensorboard", "mlruns", "wandb")
RUN_FILE_PATTERNS = (
    "checkpoint-*.pt",  # entrolab.checkpoint
    "checkpoint-*.pt.sha256",
    ".checkpoint-*.tmp",  # a checkpoint or checksum save that was killed
    *(f"{name}.tmp" for name in RUN_FILE_NAMES),  # entrolab 0.1's temp names (checkpoint.pt.tmp, summary.json.tmp)
    *(f".{name}.*.tmp" for name in RUN_FILE_NAMES),  # entrolab.jsonio's temp names
)


class RunFolderError(ValueError):
    """The run folder cannot be claimed in this mode; the one-line message says why and what to do."""


class RunLock:
    """The claim on a run folder: held until ``release()``, the end of the ``with`` block, or process exit.

    Dropping the object without releasing it keeps the lock until the process ends (the fd is not closed
    by garbage collection), which errs on the safe side.

    Attributes:
        run: the folder.
        mode: the mode it was claimed in.
        removed: names of the previous run's files removed by ``mode="overwrite"`` (sorted; else empty).
    """

    def __init__(self, run: Path, mode: RunMode, fd: int) -> None:
        self.run, self.mode, self.removed = run, mode, ()
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Give the folder up (idempotent). The pid is cleared first, while the lock is still held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last fd of the open file releases the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.run)!r}, mode={self.mode!r}, held={self.held})"


def run_files(run: Path) -> list[Path]:
    """The previous run's files and folders present in ``run`` (what ``new`` refuses and ``overwrite`` removes)."""
    run = Path(run)
    found = {
        run / name for name in (*RUN_FILE_NAMES, *RUN_DIR_NAMES) if (run / name).exists() or (run / name).is_symlink()
    }
    for pattern in RUN_FILE_PATTERNS:
        found.update(run.glob(pattern))
    found.discard(run / LOCK)
    return sorted(found)


def claim_run_folder(run: Path, mode: RunMode) -> RunLock:
    """Lock ``run`` for this process (creating it) and check it suits ``mode``; see the module docstring.

    Returns the held ``RunLock`` (use it as a context manager). Raises ``RunFolderError`` at once, never
    waiting, when another process holds the folder or the folder does not suit the mode; the lock is not
    kept when it raises.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    run = Path(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"{run} is not a folder (a file is in the way)") from None
    lock = RunLock(run, mode, _lock(run))
    try:
        present = run_files(run)
        if mode == "new" and present:
            names = ", ".join(p.name for p in present[:4]) + (", ..." if len(present) > 4 else "")
            raise RunFolderError(
                f"{run} already holds a run ({names}); pass --resume to continue it or --overwrite to start again"
            )
        if mode == "resume" and not (run / "config.json").is_file():
            raise RunFolderError(f"{run}: no config.json there, so nothing to resume (is it a run folder?)")
        if mode == "overwrite":
            for p in present:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)  # a symlink: only the link goes, never what it points to
            lock.removed = tuple(p.name for p in present)
    except BaseException:
        lock.release()
        raise
    return lock


def _lock(run: Path) -> int:
    """The fd of ``run/.lock`` with an exclusive flock on it, our pid written in; RunFolderError if it is taken."""
    path = run / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if holder == str(os.getpid()):
            raise RunFolderError(
                f"{run} is already claimed by this process (pid {holder}); release that RunLock first"
            ) from None
        who = f"pid {holder}" if holder.isdigit() else "pid unknown"
        raise RunFolderError(
            f"{run} is in use by another entrolab process ({who}); wait for it to finish or stop it"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
