"""Do the seed papers' phenomena hold on the built-in task? Six numbers from one `entrolab compare` grid.

    python benchmarks/phenomena.py                  # runs benchmarks/phenomena.toml, then analyses it
    python benchmarks/phenomena.py --analyse-only   # only re-reads an existing comparison folder

Writes benchmarks/results/phenomena.json and .md:
(i)   entropy collapse under grpo: rollout entropy of the first vs the last 10 steps;
(ii)  the entropy-performance law R = -a e^H + b fitted to (eval entropy, eval pass@1) points, R^2 per method;
(iii) clip_cov / kl_cov final entropy and pass@16 against grpo;
(iv)  forking_tokens (top-20 % entropy tokens) vs low_entropy_tokens (bottom 80 %) vs full updates (grpo);
(v)   support shrinkage vs the base at the largest budget k = eval samples (problems the base solves within k
      and the trained policy no longer does, and the reverse);
(vi)  Pearson correlation between the predicted (-lr Cov(log pi, A)) and observed entropy change per step.
Means over seeds; the wall time of the grid is in the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from entrolab.diagnostics import fit_entropy_law, support_change

HERE = Path(__file__).parent
ROOT = HERE.parent


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def analyse(cmp: Path, methods: list[str], wall: float | None) -> dict:
    base = json.loads((cmp / "base_eval.json").read_text())
    out: dict = {"wall_time_s": wall, "methods": {}}
    for method in methods:
        runs = sorted((cmp / method).glob("seed*"))
        per_seed = []
        for run in runs:
            rows = rows_of(run)
            steps = [r for r in rows if r["step"] > 0]
            summary = json.loads((run / "summary.json").read_text())
            detail = json.loads((run / "eval_detail.json").read_text())
            ent = np.array([r["entropy/token_mean"] for r in steps])
            pred = np.array([r["entropy/predicted_delta"] for r in steps[:-1]])
            obs = np.diff(ent)
            evals = [r for r in rows if "eval/pass@1" in r]
            sc = support_change(base["right"], detail["right"], base["samples"], detail["samples"])
            per_seed.append(
                {
                    "entropy_first10": float(ent[:10].mean()),
                    "entropy_last10": float(ent[-10:].mean()),
                    "final_pass@1": summary["final_eval"]["pass@1"],
                    "final_pass@16": summary["final_eval"]["pass@16"],
                    "final_eval_entropy": summary["final_eval"]["entropy"],
                    "law_points": [(r["eval/entropy"], r["eval/pass@1"]) for r in evals],
                    "pred_obs_r": float(np.corrcoef(pred, obs)[0, 1]) if len(obs) > 2 else float("nan"),
                    "shrunk": sc.shrunk,
                    "expanded": sc.expanded,
                    "preserved": sc.preserved,
                    "k": sc.k,
                }
            )
        law = fit_entropy_law(*zip(*[p for s in per_seed for p in s["law_points"]], strict=True))
        mean = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0] if k != "law_points"}
        out["methods"][method] = {**mean, "law_a": law.a, "law_b": law.b, "law_r2": law.r2, "seeds": len(per_seed)}
    out["base"] = {k: base["metrics"][k] for k in ("pass@1", "pass@16", "entropy")}
    return out


def table(res: dict) -> str:
    m = res["methods"]
    lines = [
        f"Grid wall time: {res['wall_time_s']:.0f} s" if res["wall_time_s"] else "",
        "",
        f"Base: pass@1 {res['base']['pass@1']:.3f}, pass@16 {res['base']['pass@16']:.3f}, "
        f"eval entropy {res['base']['entropy']:.3f}",
        "",
        "| method | rollout entropy first10 -> last10 | final eval entropy | pass@1 | pass@16 | law R^2 | "
        "shrunk / expanded problems (k=16) | r(predicted, observed dH) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in m.items():
        lines.append(
            f"| {name} | {r['entropy_first10']:.3f} -> {r['entropy_last10']:.3f} | {r['final_eval_entropy']:.3f} "
            f"| {r['final_pass@1']:.3f} | {r['final_pass@16']:.3f} | {r['law_r2']:.2f} | "
            f"{r['shrunk']:.1f} / {r['expanded']:.1f} | {r['pred_obs_r']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(analyse_only: bool, wall_seconds: float | None) -> None:
    cfg = tomllib.loads((HERE / "phenomena.toml").read_text())
    cmp = ROOT / cfg["out"]
    wall = wall_seconds
    if not analyse_only:
        t0 = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "entrolab.cli",
            "compare",
            "--out",
            str(cmp),
            "--task",
            cfg["task"],
            "--methods",
            cfg["methods"],
            "--seeds",
            str(cfg["seeds"]),
            "--steps",
            str(cfg["steps"]),
            "--eval-every",
            str(cfg["eval_every"]),
            "--threads",
            str(cfg["threads"]),
            "--no-progress",
            "--set",
            *cfg["set"],
        ]
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    res = analyse(cmp, cfg["methods"].split(","), wall)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "phenomena.json").write_text(json.dumps(res, indent=2))
    (HERE / "results" / "phenomena.md").write_text(table(res))
    print(table(res))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument(
        "--wall-seconds", type=float, default=None, help="with --analyse-only: the grid's measured wall time"
    )
    a = p.parse_args()
    main(a.analyse_only, a.wall_seconds)
