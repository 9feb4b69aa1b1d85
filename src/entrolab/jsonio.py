"""The run folder's JSON files, written so that a kill at any instant leaves each one whole or absent.

* ``write_json_atomic`` for the files written once (``config.json``, ``summary.json``, ``eval_detail.json``):
  a temp file beside the target, fsynced, then ``os.replace`` (atomic on POSIX), then the folder fsynced so
  that the rename itself survives a power cut.
* ``append_jsonl`` for ``metrics.jsonl``: one line per call, flushed and fsynced before it returns. A kill
  can still cut the last line short; ``step_of`` reads such a line as step ``math.inf``.
* ``truncate_after`` drops the lines a resumed run will write again (those after its checkpoint's step),
  and any line cut short, rewriting the file atomically.

Nothing here imports torch, so the CLI and ``entrolab compare`` use it without the cost of that import.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file ``.NAME.XXXX.tmp`` in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (a trailing newline) to ``path`` atomically: whole or not at all.

    Like ``json.dumps``, NaN and infinities are written as ``NaN`` / ``Infinity``, which Python reads back.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "summary.json"
    >>> write_json_atomic(p, {"steps": 3}); json.loads(p.read_text())
    {'steps': 3}
    """
    write_bytes_atomic(Path(path), (json.dumps(data, indent=2) + "\n").encode())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path`` (created if missing), flushed and fsynced before returning."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def step_of(line: str) -> float:
    """The ``step`` of a metrics line; a line cut short by a kill (or with no numeric step) counts as ``math.inf``.

    >>> step_of('{"step": 4, "loss/total": 0.5}'), step_of('{"step": 4, "loss/to')
    (4, inf)
    """
    try:
        step = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
    if isinstance(step, bool) or not isinstance(step, int | float):
        return math.inf
    return step


def truncate_after(path: Path, step: int) -> int:
    """Keep only the lines of ``path`` whose ``step_of`` is ``<= step``, rewriting it atomically.

    What a resumed run does before it continues from the checkpoint at ``step``: the lines after it (and a
    last line cut short) are dropped, because the resumed run writes them again; the file is left ending in a
    newline, so the next ``append_jsonl`` starts a line of its own. A missing file is left missing. Returns the
    number of lines dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    text = path.read_text()
    lines = text.splitlines()
    keep = [line for line in lines if step_of(line) <= step]
    if len(keep) != len(lines) or (text and not text.endswith("\n")):  # a whole last line may lack its newline
        write_bytes_atomic(path, "".join(line + "\n" for line in keep).encode())
    return len(lines) - len(keep)
