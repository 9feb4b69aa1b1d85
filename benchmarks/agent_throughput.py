"""Multi-turn rollout throughput on each built-in environment, and what re-prefilling each turn costs.

    python benchmarks/agent_throughput.py [--envs calc,lookup,grid] [--repeats 3] [--model-dir DIR]
    # writes benchmarks/results/agent_throughput.json and .md

For each environment: its warm-start base model (``entrolab pretrain --env NAME``'s cached base, built once
when missing, or DIR/NAME), 16 test problems x 8 episodes, the environment's default budget and turns, 2
threads. Reported per environment (median over repeats): model tokens/s and turns/s of the whole rollout
(environment steps included), mean turns, tool calls, success, and the re-prefill share: the rollout
re-prefills the whole context (prompt and every earlier turn) at each turn instead of keeping the KV cache, so
the benchmark times the same prefills alone (one token sampled per context) and divides by the rollout's
sampling time. That share (turns after the first; their last observation's few tokens neglected) is what a
cache kept across turns could save.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from entrolab.agent_rollout import multi_turn_rollout
from entrolab.envs import ENV_BUDGETS, ENVS, make_env_task
from entrolab.models import load_policy
from entrolab.pretrain import PretrainConfig, cached_base
from entrolab.rollout import generate_ids

OUT = Path(__file__).parent / "results"


def prefill_seconds(model, tok, ar) -> float:
    """Seconds to prefill, once, every context the rollout sampled a later turn (turn >= 1) from, one token
    each: the prefills a KV cache kept across turns would avoid (each turn would then prefill only the last
    observation, left out here)."""
    r, steps = ar.rollout, ar.rollout.extras["step_ids"]
    by_turn: dict[int, list[list[int]]] = {}
    for i in range(len(r)):
        prompt = r.prompt_ids[i][r.prompt_mask[i].bool()].tolist()
        ids = r.response_ids[i].tolist()
        for t in range(1, int(ar.turns[i])):  # turn 0's prefill happens with or without a kept cache
            where = (steps[i] == t).nonzero()
            if len(where):
                by_turn.setdefault(t, []).append(prompt + ids[: int(where[0])])
    total = 0.0
    for contexts in by_turn.values():  # one left-padded batch per turn, as the rollout batches them
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), tok.pad_token_id)
        mask = torch.zeros(len(contexts), width, dtype=torch.long)
        for j, c in enumerate(contexts):
            ids[j, width - len(c) :], mask[j, width - len(c) :] = torch.tensor(c), 1
        t0 = time.perf_counter()
        generate_ids(
            model,
            ids,
            mask,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
            max_new_tokens=1,
            generator=torch.Generator().manual_seed(0),
        )
        total += time.perf_counter() - t0
    return total


def measure(name: str, model_dir: str | None, repeats: int) -> dict:
    task = make_env_task(name)
    path = model_dir or str(cached_base(task, PretrainConfig()))
    model, tok = load_policy(path)
    runs = []
    for rep in range(repeats):
        gen = torch.Generator().manual_seed(rep)
        t0 = time.perf_counter()
        ar = multi_turn_rollout(
            model, tok, task, task.test[:16], group_size=8, max_tokens=ENV_BUDGETS[name], generator=gen, seed=rep
        )
        wall = time.perf_counter() - t0
        model_tokens = float((ar.rollout.response_mask * ar.rollout.extras["model_mask"]).sum())
        sampling = ar.metrics["env/model_tokens_mean"] * len(ar.rollout) / ar.metrics["env/model_tokens_per_s"]
        runs.append(
            {
                "wall_s": wall,
                "model_tokens_per_s": model_tokens / wall,
                "turns_per_s": float(ar.turns.sum()) / wall,
                "turns_mean": ar.metrics["env/turns_mean"],
                "tool_calls_mean": ar.metrics["env/tool_calls_mean"],
                "success": ar.metrics["env/success"],
                "rounds": ar.metrics["env/rounds"],
                "prefill_share": prefill_seconds(model, tok, ar) / sampling,
            }
        )
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"model": path, "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", default=",".join(ENVS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", default=None, help="DIR/NAME holds each env's base model (default: the cache)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name in args.envs.split(","):
        results[name] = measure(name, f"{args.model_dir}/{name}" if args.model_dir else None, args.repeats)
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in results[name].items()}, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "agent_throughput.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Multi-turn rollout throughput (16 problems x 8 episodes, tiny1m warm starts, 2 threads)",
        "",
        "`python benchmarks/agent_throughput.py`; medians over repeats. Re-prefill share: the time to prefill the",
        "contexts of turns after the first once, over the rollout's sampling time (what a KV cache kept across turns",
        "could save).",
        "",
        "| env | model tokens/s | turns/s | turns | tool calls | success | turn rounds | re-prefill share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['model_tokens_per_s']:.0f} | {r['turns_per_s']:.1f} | {r['turns_mean']:.2f} | "
            f"{r['tool_calls_mean']:.2f} | {r['success']:.3f} | {r['rounds']:.0f} | {r['prefill_share']:.1%} |"
        )
    (OUT / "agent_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
