"""Problems from local files: JSONL, JSON, Parquet, CSV, or a folder saved with ``datasets``' ``save_to_disk``.

JSONL (and a JSON list of objects) is read with the standard library; Parquet, CSV and ``save_to_disk`` folders
through ``datasets`` (optional extra ``datasets``). Nothing is downloaded: a path that does not exist is an
error, and one that looks like a hub name (``openai/gsm8k``) says to download it first.

Columns: ``prompt_field`` (default: the first of ``prompt``, ``question``, ``problem``) and ``answer_field``
(default: the first of ``answer``, ``solution``, ``ground_truth``). The reference answer is the final answer of
that column: the text after the last ``####`` (GSM8K), else the content of the last ``\\boxed{...}`` (MATH),
else the whole value, stripped.

Splits: a ``save_to_disk`` folder of a ``DatasetDict`` with ``train`` and ``test`` splits is used as it is
(``split`` picks one split instead, which is then split in two); anything else is one pool, split into
seeded train/test parts with ``test_fraction``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrolab.tasks import Example, split_examples

PROMPT_FIELDS = ("prompt", "question", "problem")
ANSWER_FIELDS = ("answer", "solution", "ground_truth")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    """Where a file task's problems come from and how its columns map."""

    path: str
    prompt_field: str | None = None
    answer_field: str | None = None
    split: str | None = None
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("a file task needs path=FILE (.jsonl, .json, .parquet, .csv or a save_to_disk folder)")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ValueError(
            "reading Parquet, CSV or save_to_disk folders needs the datasets library: pip install 'entrolab[datasets]'"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _not_found(path: str) -> ValueError:
    if _HUB_NAME.match(path):
        return ValueError(
            f"{path!r} is not a local file or folder, and entrolab never downloads: download it first, e.g. "
            f"python -c \"import datasets; datasets.load_dataset('{path}').save_to_disk('data/{path.split('/')[-1]}')\""
            f" and pass --task-path data/{path.split('/')[-1]}"
        )
    return ValueError(f"task file {path!r} does not exist")


def _read_json(p: Path) -> list[dict[str, Any]]:
    text = p.read_text(encoding="utf-8")
    rows: list[Any] = []
    if p.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        rows = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{p}: row {i} is not an object: {str(row)[:80]!r}")
    return rows


def read_splits(source: Source) -> dict[str, list[dict[str, Any]]]:
    """The file's rows per split name (one split, ``"all"``, unless a DatasetDict folder has several)."""
    p = Path(source.path)
    if not p.exists():
        raise _not_found(source.path)
    if p.is_dir():
        datasets = _datasets()
        try:
            loaded = datasets.load_from_disk(str(p))
        except FileNotFoundError as e:
            raise ValueError(f"{source.path!r} is a folder but not one saved with save_to_disk: {e}") from None
        if isinstance(loaded, datasets.DatasetDict):
            return {name: [dict(r) for r in ds] for name, ds in loaded.items()}
        return {"all": [dict(r) for r in loaded]}
    if p.suffix not in SUFFIXES:
        raise ValueError(f"task file {source.path!r}: unknown format {p.suffix!r}; allowed: {', '.join(SUFFIXES)}")
    if p.suffix in (".jsonl", ".json"):
        return {"all": _read_json(p)}
    datasets = _datasets()
    kind = "parquet" if p.suffix == ".parquet" else "csv"
    loaded = datasets.load_dataset(kind, data_files=str(p), split="train")
    return {"all": [dict(r) for r in loaded]}


def _field(rows: list[dict[str, Any]], chosen: str | None, defaults: tuple[str, ...], what: str, path: str) -> str:
    columns = sorted(rows[0]) if rows else []
    if chosen is not None:
        if chosen not in columns:
            raise ValueError(f"{path}: no column {chosen!r} for the {what}; the columns are {columns}")
        return chosen
    for name in defaults:
        if name in columns:
            return name
    raise ValueError(
        f"{path}: none of the default {what} columns {list(defaults)} is there; the columns are {columns} "
        f"(choose one with --{what}-field)"
    )


def boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; None when there is none."""
    at = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if at < 0:
        return None
    start = text.index("{", at) + 1
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
    return None


def worked_steps(solution: str) -> str:
    """A GSM8K solution's working before its ``####`` line ('' when there is none)."""
    return solution.rsplit("####", 1)[0].strip() if "####" in solution else ""


def reference_answer(value: Any) -> str:
    """The final answer of an answer column: after the last ``####``, else the last boxed, else the value."""
    text = str(value).strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = boxed_content(text)
    return boxed if boxed is not None else text


def load_examples(source: Source, seed: int, prefix: str) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(train, test) examples of ``source``; every bad input is one ValueError naming the file and the value."""
    splits = read_splits(source)
    if source.split is not None:
        if source.split not in splits:
            raise ValueError(f"{source.path}: no split {source.split!r}; the splits are {sorted(splits)}")
        splits = {"all": splits[source.split]}
    parts = {"train": splits["train"], "test": splits["test"]} if {"train", "test"} <= set(splits) else None
    pool = splits.get("all") or next(iter(splits.values()))
    rows_for_columns = parts["train"] if parts else pool
    if not rows_for_columns:
        raise ValueError(f"{source.path}: the split is empty (no rows)")
    pf = _field(rows_for_columns, source.prompt_field, PROMPT_FIELDS, "prompt", source.path)
    af = _field(rows_for_columns, source.answer_field, ANSWER_FIELDS, "answer", source.path)

    def examples(rows: list[dict[str, Any]], tag: str) -> list[Example]:
        out = []
        for i, row in enumerate(rows):
            prompt, answer = row.get(pf), row.get(af)
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{source.path}: row {i} ({tag}): {pf!r} must be a non-empty string, got {prompt!r}")
            ref = reference_answer(answer) if answer is not None else ""
            if not ref:
                raise ValueError(f"{source.path}: row {i} ({tag}): empty answer in {af!r}")
            data = (("solution", str(answer).strip()),)
            out.append(Example(id=f"{prefix}:{tag}:{i}", prompt=prompt, answer=ref, data=data))
        return out

    if parts is not None:
        train, test = examples(parts["train"], "train"), examples(parts["test"], "test")
        if not train or not test:
            raise ValueError(f"{source.path}: the train or test split is empty")
        seen = {e.prompt for e in test}
        return tuple(e for e in train if e.prompt not in seen), tuple(test)
    every = examples(pool, "all")
    n = len({e.prompt for e in every})
    if n < 2:
        raise ValueError(f"{source.path}: needs at least 2 distinct prompts (one train, one test), has {n}")
    test_size = min(max(1, round(n * source.test_fraction)), n - 1)
    return split_examples(every, random.Random(seed), test_size, None)


__all__ = [
    "ANSWER_FIELDS",
    "PROMPT_FIELDS",
    "Source",
    "boxed_content",
    "load_examples",
    "reference_answer",
    "worked_steps",
]
