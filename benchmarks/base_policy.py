"""Base policies of `entrolab pretrain` at default settings: time, pass@1 and pass@16 per task.

    python benchmarks/base_policy.py [arithmetic countdown]   # writes benchmarks/results/base_policy.json and .md
    python benchmarks/base_policy.py calc lookup grid         # the environments: base_policy_envs.json and .md
    (a run over some of the tasks replaces their rows and keeps the others', when the pretrain config is the same)

Targets (issue 2): test-split pass@1 in [0.05, 0.40], pass@16 >= 2 x pass@1, pretrain under 3 minutes on
2 CPU cores. Run it on a quiet machine: other processes using the cores slow torch down several-fold.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from entrolab.envs import ENV_BUDGETS, ENVS, make_env_task
from entrolab.evaluate import evaluate
from entrolab.models import load_policy
from entrolab.pretrain import PretrainConfig, base_path, pretrain
from entrolab.tasks import make_task

OUT = Path(__file__).parent / "results"


def main(tasks: list[str]) -> None:
    torch.set_num_threads(2)
    rows = []
    for name in tasks:
        task = make_env_task(name) if name in ENVS else make_task(name, seed=0)
        budget = {"max_new_tokens": ENV_BUDGETS[name]} if name in ENVS else {}  # an episode's budget
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            stats = pretrain(task, d, PretrainConfig())
            model, tok = load_policy(d)
            ev = evaluate(model, tok, task, samples=16, seed=0, **budget)
            total = time.perf_counter() - t0
            cached = base_path(task, PretrainConfig())
            if not (cached / "model.safetensors").is_file():  # the same model cached_base would build: keep it
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
                shutil.copytree(d, tmp)
                tmp.rename(cached)
        rows.append(
            {
                "task": name,
                "pretrain_s": stats["seconds"],
                "pretrain_plus_eval_s": total,
                "final_loss": stats["final_loss"],
                **{k: ev[k] for k in ("pass@1", "pass@16", "format_error_rate", "mean_length", "entropy")},
            }
        )
        print(rows[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "base_policy_envs" if all(name in ENVS for name in tasks) else "base_policy"
    path = OUT / f"{stem}.json"
    if path.exists():  # keep the rows of the tasks not measured this time (same config only)
        old = json.loads(path.read_text())
        if old.get("config") == json.loads(json.dumps(PretrainConfig().__dict__)):
            done = {r["task"] for r in rows}
            rows = [r for r in old["results"] if r["task"] not in done] + rows
    path.write_text(json.dumps({"config": PretrainConfig().__dict__, "results": rows}, indent=2))
    lines = [
        "| task | pretrain s | pass@1 | pass@16 | format errors | mean length | entropy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['pretrain_s']:.0f} | {r['pass@1']:.3f} | {r['pass@16']:.3f} | "
            f"{r['format_error_rate']:.3f} | {r['mean_length']:.1f} | {r['entropy']:.3f} |"
        )
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or ["arithmetic", "countdown"])
