"""Preference pairs ``{prompt, chosen, rejected}``: read and written as JSONL, or made from a task's verifier.

``entrolab rm train`` (a reward model) and ``entrolab prefs`` (offline preference optimisation) both read them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

FIELDS = ("prompt", "chosen", "rejected")


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """The pairs of a JSONL file, checked: every line an object whose prompt/chosen/rejected are strings."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pairs file {str(path)!r} does not exist (expected JSONL rows with keys {list(FIELDS)})")
    pairs = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not valid JSON: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{p}:{n}: expected an object with keys {list(FIELDS)}, got {type(row).__name__}")
        for key in FIELDS:
            value = row.get(key)
            if not isinstance(value, str) or (key != "prompt" and not value):
                got = "missing" if key not in row else f"{type(value).__name__} {value!r}"[:60]
                raise ValueError(
                    f"{p}:{n}: field {key!r} must be a {'non-empty ' * (key != 'prompt')}string, got {got}"
                )
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"{p}:{n}: chosen and rejected are the same text")
        pairs.append({key: row[key] for key in FIELDS})
    if not pairs:
        raise ValueError(f"pairs file {str(path)!r} has no pairs")
    return pairs


def write_pairs(pairs: list[dict[str, str]], path: str | Path) -> Path:
    """Write ``pairs`` as JSONL (the format ``read_pairs`` reads)."""
    p = Path(path)
    p.write_text("".join(json.dumps({k: row[k] for k in FIELDS}) + "\n" for row in pairs))
    return p


def verifier_pairs(task: Any, n: int, seed: int = 0, max_draws: int = 50) -> list[dict[str, str]]:
    """``n`` pairs (prompt, chosen = a right demonstration, rejected = a wrong or badly formatted one of the
    same problem), cycling over the task's training problems; problems whose demonstrations never give both
    kinds within ``max_draws`` are skipped."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    examples = list(task.train)
    if not examples:
        raise ValueError(f"task {task.name!r} has no training problems to make pairs from")
    i = 0
    while len(out) < n:
        if i >= len(examples) * 4 and not out:
            raise ValueError(f"task {task.name!r}: no problem gave both a right and a wrong demonstration")
        ex = examples[i % len(examples)]
        i += 1
        right = wrong = None
        for _ in range(max_draws):
            text = task.demonstration(ex, rng)
            if task.verify(text, ex).reason == "right":
                right = right or text
            else:
                wrong = wrong or text
            if right and wrong:
                out.append({"prompt": task.prompt(ex), "chosen": right, "rejected": wrong})
                break
    return out


def task_pairs(task_name: str, n: int, seed: int = 0, tries: int = 50) -> list[dict[str, str]]:
    """``n`` verifier pairs of the named built-in task (its seeded split's training problems), at most ``tries``
    demonstrations drawn per problem."""
    from entrolab.tasks import make_task

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return verifier_pairs(make_task(task_name, seed=seed), n, seed, max_draws=tries)


__all__ = ["FIELDS", "read_pairs", "task_pairs", "verifier_pairs", "write_pairs"]
