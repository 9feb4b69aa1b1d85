"""math-verify through the reward pool: answers verified per second with 1 and 2 workers.

    python benchmarks/verifier_throughput.py [--n 512] [--repeats 3]
    # writes benchmarks/results/verifier_throughput.json and .md

The completions are the math task's own demonstrations on the shipped GSM8K-format file
(``examples/data/gsm8k_tiny.jsonl``: right, wrong and badly formatted answers, about 35 / 45 / 20 %), scored
against their problems by ``MathTask.verify`` (math-verify, its alarm timeouts off) in ``RewardPool`` with 1
and 2 workers, interleaved, after a warm-up batch (the workers' import of math-verify and sympy is reported
apart, as the pool's start-up). In-process ``score_completions`` is reported as the reference.

Top-level imports stay light: the forkserver imports this script once to serve the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from entrolab.rewards import RewardPool, score_completions
from entrolab.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    task = make_task("math", path=str(ROOT / "examples" / "data" / "gsm8k_tiny.jsonl"))
    rng = random.Random(0)
    examples = [task.train[rng.randrange(len(task.train))] for _ in range(args.n)]
    completions = [task.demonstration(e, rng) for e in examples]
    results: dict[str, list[float]] = {"in-process": [], "pool, 1 worker": [], "pool, 2 workers": []}
    startup: dict[str, float] = {}
    pools = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        pool = RewardPool(task.verify, workers=workers, timeout=60.0, on_error="raise")
        pool.__enter__()
        pool.score(completions[:8], examples[:8])  # the workers import math-verify and sympy here
        startup[f"pool, {workers} worker{'s' if workers > 1 else ''}"] = time.perf_counter() - t0
        pools[workers] = pool
    score_completions(completions[:8], examples[:8], task.verify)
    right = None
    try:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            s = score_completions(completions, examples, task.verify)
            results["in-process"].append(args.n / (time.perf_counter() - t0))
            right = float(s.right.float().mean())
            for workers, pool in pools.items():
                t0 = time.perf_counter()
                s2 = pool.score(completions, examples)
                key = f"pool, {workers} worker{'s' if workers > 1 else ''}"
                results[key].append(args.n / (time.perf_counter() - t0))
                assert s2.right.tolist() == s.right.tolist()
    finally:
        for pool in pools.values():
            pool.__exit__(None, None, None)
    summary = {k: {"min": min(v), "median": statistics.median(v), "max": max(v)} for k, v in results.items()}
    meta = {"n": args.n, "repeats": args.repeats, "cpus": os.cpu_count(), "python": platform.python_version()}
    meta["right_fraction"] = right
    OUT.mkdir(exist_ok=True)
    (OUT / "verifier_throughput.json").write_text(
        json.dumps({"meta": meta, "answers_per_s": summary, "startup_s": startup}, indent=2)
    )
    lines = [
        "# math-verify through the reward pool (answers verified per second)",
        "",
        f"{args.n} demonstrations of the math task on `examples/data/gsm8k_tiny.jsonl` "
        f"({right:.0%} right), {args.repeats} interleaved repeats, {os.cpu_count()} CPUs.",
        "",
        "| scorer | min | median | max | start-up (s) |",
        "|---|---|---|---|---|",
    ]
    for k, v in summary.items():
        lines.append(f"| {k} | {v['min']:.0f} | {v['median']:.0f} | {v['max']:.0f} | {startup.get(k, 0.0):.2f} |")
    (OUT / "verifier_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
