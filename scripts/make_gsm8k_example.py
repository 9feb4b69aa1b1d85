"""Write ``examples/data/gsm8k_tiny.jsonl`` (and a Parquet copy when ``datasets`` is installed): procedural
grade-school word problems in GSM8K's format, ``{"question": ..., "answer": "<steps>\\n#### <number>"}``.

    python scripts/make_gsm8k_example.py            # 300 problems, seed 0 (the shipped files)

Deterministic for a seed; plain ASCII, so the tiny character tokenizer reads it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo", "Mia", "Ned")
THINGS = ("apples", "pens", "books", "shells", "stamps", "marbles", "cards", "eggs", "coins", "beads")


def problem(rng: random.Random) -> dict[str, str]:
    name, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    kind = rng.randrange(5)
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 6)
    if kind == 0:
        q = f"{name} has {a} {thing}. {other} gives {name} {b} more. How many {thing} does {name} have now?"
        steps, ans = [f"{a}+{b}={a + b}"], a + b
    elif kind == 1:
        a = a + b
        q = f"{name} had {a} {thing} and gave {b} to {other}. How many {thing} does {name} have left?"
        steps, ans = [f"{a}-{b}={a - b}"], a - b
    elif kind == 2:
        q = f"{name} buys {c} bags with {a} {thing} in each bag. How many {thing} does {name} buy?"
        steps, ans = [f"{c}*{a}={c * a}"], c * a
    elif kind == 3:
        total = a * c
        q = f"{name} shares {total} {thing} equally among {c} friends. How many {thing} does each friend get?"
        steps, ans = [f"{total}/{c}={a}"], a
    else:
        q = (
            f"{name} has {a} {thing}. {other} has {c} times as many. "
            f"How many {thing} do they have together?"
        )
        steps, ans = [f"{c}*{a}={c * a}", f"{a}+{c * a}={a + c * a}"], a + c * a
    return {"question": q, "answer": "\n".join(steps) + f"\n#### {ans}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "examples" / "data" / "gsm8k_tiny.jsonl"))
    args = p.parse_args()
    rng = random.Random(args.seed)
    rows, seen = [], set()
    while len(rows) < args.n:
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} problems to {out}")
    try:
        import datasets
    except ImportError:
        return
    parquet = out.with_suffix(".parquet")
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    print(f"wrote {parquet}")


if __name__ == "__main__":
    main()
