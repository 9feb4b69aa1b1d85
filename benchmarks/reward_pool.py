"""RewardPool: throughput on a slow verifier, and the per-step overhead on the built-in fast verifiers.

    python benchmarks/reward_pool.py [--repeats 5] [--step-ms 750 | --measure-step]
    # writes benchmarks/results/reward_pool.json and .md

1. Throughput: a verifier that sleeps 20 ms per call (then runs the arithmetic verifier) on 128 samples,
   in-process ``score_completions`` against ``RewardPool(workers=2)``; ``--repeats`` each, interleaved, min /
   median / max; speed-up = median in-process / median pool. Target (the issue): >= 1.8x.
2. Overhead: ``task.verify`` of arithmetic and countdown on 128 realistic completions (each task's
   demonstrations: right, wrong and badly formatted ones, about 35 / 45 / 20 %), pool (``default_workers()``
   workers) against in-process, 25 interleaved repeats; the pool's extra milliseconds per step, and that as a
   share of a demo step. Target: < 5 %.

The demo step is by default 750 ms: rollout 343 ms + update 407 ms of ``benchmarks/results/method_overhead.md``,
the demo's shape (tiny1m, 16 prompts x 8 samples, <= 32 new tokens, 2 torch threads). ``--measure-step`` runs
``entrolab.trainer.train`` (the ``grpo`` preset) for 4 steps on a random tiny1m model and takes the median
``time/step`` of steps 2-4 instead (only meaningful on a quiet machine: with other jobs on this 2-core box,
steps of that run took 1.7 to 16.8 s); ``--step-ms`` sets it. The share of a 300 ms step, the fast end of the
demo on this machine, is reported too. The pool's start-up (once per run) is reported apart.

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
from collections.abc import Callable
from pathlib import Path

from entrolab.rewards import RewardPool, default_workers, score_completions
from entrolab.tasks import Example, make_task
from entrolab.tasks.arithmetic import verify_arithmetic

OUT = Path(__file__).parent / "results"
BATCH = 128
DEFAULT_STEP_MS = 750.0
FAST_STEP_MS = 300.0


def slow_verify(completion: str, example: Example):
    """The arithmetic verifier, 20 ms slower: a stand-in for a verifier that does real work."""
    time.sleep(0.02)
    return verify_arithmetic(completion, example)


def batch(task_name: str) -> tuple[list[str], list[Example]]:
    task = make_task(task_name)
    examples = list(task.train[:BATCH])
    rng = random.Random(0)
    return [task.demonstration(e, rng) for e in examples], examples


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def spread(seconds: list[float]) -> dict[str, float]:
    return {"min_s": min(seconds), "median_s": statistics.median(seconds), "max_s": max(seconds)}


def throughput(repeats: int) -> dict:
    texts, examples = batch("arithmetic")
    t0 = time.perf_counter()
    with RewardPool(slow_verify, workers=2, timeout=60.0) as pool:
        startup = time.perf_counter() - t0
        pool.score(texts[:8], examples[:8])  # warm-up
        local, pooled = [], []
        for _ in range(repeats):
            local.append(timed(lambda: score_completions(texts, examples, slow_verify)))
            pooled.append(timed(lambda: pool.score(texts, examples)))
    return {
        "verifier": "sleep 20 ms + verify_arithmetic",
        "samples": BATCH,
        "workers": 2,
        "repeats": repeats,
        "pool_startup_s": startup,
        "in_process": spread(local),
        "pool": spread(pooled),
        "speedup": statistics.median(local) / statistics.median(pooled),
    }


def overhead(task_name: str, step_ms: float, repeats: int = 25) -> dict:
    task = make_task(task_name)
    texts, examples = batch(task_name)
    workers = default_workers()
    t0 = time.perf_counter()
    with RewardPool(task.verify, workers=workers, timeout=60.0) as pool:
        startup = time.perf_counter() - t0
        pool.score(texts, examples)  # warm-up
        score_completions(texts, examples, task.verify)
        local, pooled = [], []
        for _ in range(repeats):
            local.append(timed(lambda: score_completions(texts, examples, task.verify)))
            pooled.append(timed(lambda: pool.score(texts, examples)))
    extra_ms = (statistics.median(pooled) - statistics.median(local)) * 1e3
    return {
        "task": task_name,
        "samples": BATCH,
        "workers": workers,
        "repeats": repeats,
        "pool_startup_s": startup,
        "in_process": spread(local),
        "pool": spread(pooled),
        "extra_ms": extra_ms,
        "share_of_step": extra_ms / step_ms,
        "share_of_fast_step": extra_ms / FAST_STEP_MS,
    }


def measure_step_ms(steps: int = 4) -> float:
    """Median ``time/step`` of steps 2.. of a short ``grpo`` run on a random tiny1m model (the demo's shape)."""
    import tempfile
    from dataclasses import replace

    import torch

    from entrolab.config import base_config
    from entrolab.models import build_tiny_model, build_tokenizer, save_policy
    from entrolab.trainer import train

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer()
        save_policy(build_tiny_model(tok, "tiny1m"), tok, f"{d}/model")
        cfg = replace(
            base_config("grpo"),
            model=f"{d}/model",
            out=f"{d}/run",
            steps=steps,
            eval_every=0,
            eval_prompts=1,
            eval_samples=1,
            progress=False,
        )
        train(cfg, log=lambda *a: None)
        rows = [json.loads(line) for line in Path(d, "run", "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["time/step"] for r in rows if r["step"] >= 2 and "time/step" in r) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the slow-verifier throughput run")
    parser.add_argument("--step-ms", type=float, default=None, help=f"demo step in ms (default {DEFAULT_STEP_MS})")
    parser.add_argument("--measure-step", action="store_true", help="measure the demo step with the trainer")
    args = parser.parse_args()
    if args.measure_step:
        step_ms, step_source = measure_step_ms(), "measured: entrolab.trainer.train, grpo, random tiny1m, median"
    elif args.step_ms is not None:
        step_ms, step_source = args.step_ms, "--step-ms"
    else:
        step_ms, step_source = DEFAULT_STEP_MS, "default: rollout + update of benchmarks/results/method_overhead.md"
    result = {
        "meta": {
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "default_workers": default_workers(),
            "demo_step_ms": step_ms,
            "demo_step_source": step_source,
        },
        "throughput": throughput(args.repeats),
        "overhead": [overhead(name, step_ms) for name in ("arithmetic", "countdown")],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reward_pool.json").write_text(json.dumps(result, indent=2) + "\n")
    tp = result["throughput"]

    def ms(d: dict) -> str:
        return f"{d['median_s'] * 1e3:.1f} ({d['min_s'] * 1e3:.1f}-{d['max_s'] * 1e3:.1f})"

    lines = [
        f"Slow verifier ({tp['verifier']}), {tp['samples']} samples, {tp['repeats']} repeats, ms median (min-max):",
        "",
        "| in-process | pool, 2 workers | speed-up | pool start-up |",
        "|---|---|---|---|",
        f"| {ms(tp['in_process'])} | {ms(tp['pool'])} | {tp['speedup']:.2f}x | {tp['pool_startup_s'] * 1e3:.0f} ms |",
        "",
        f"Fast built-in verifiers, {BATCH} demonstrations, 25 repeats, ms median (min-max); demo step "
        f"{step_ms:.0f} ms ({step_source}):",
        "",
        f"| task | workers | in-process | pool | pool extra | share of a {step_ms:.0f} ms step | "
        f"of a {FAST_STEP_MS:.0f} ms step | pool start-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in result["overhead"]:
        lines.append(
            f"| {o['task']} | {o['workers']} | {ms(o['in_process'])} | {ms(o['pool'])} | {o['extra_ms']:.1f} ms | "
            f"{o['share_of_step']:.1%} | {o['share_of_fast_step']:.1%} | {o['pool_startup_s'] * 1e3:.0f} ms |"
        )
    (OUT / "reward_pool.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
