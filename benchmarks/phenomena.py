"""Do the seed papers' phenomena hold on the built-in task? Measured with `entrolab compare`, one recipe per grid.

    python benchmarks/phenomena.py                    # runs both grids of benchmarks/phenomena.toml, then analyses
    python benchmarks/phenomena.py --analyse-only     # only re-reads existing comparison folders
    python benchmarks/phenomena.py --only grid        # one of the two grids (grid, sweep)

Writes benchmarks/results/phenomena.json and .md, each number a mean over seeds with the half-width of its
95 % t-interval:
(i)   entropy collapse under grpo: rollout entropy of the first vs the last 10 steps;
(ii)  the entropy-performance law R = -a e^H + b fitted to (eval entropy, eval pass@1) points, and its R^2;
(iii) final entropy and pass@16 of clip_cov / kl_cov against grpo (and the ratio sweep, a grid of its own);
(iv)  the 80/20 ablation: forking_tokens (top-20 % entropy tokens) vs low_entropy_tokens vs full updates (grpo);
(v)   support shrinkage vs the base at k = eval samples (problems the base solves within k and the trained policy
      no longer does, and the reverse);
(vi)  correlation of the predicted entropy change (-lr Cov(log pi, A)) with the one observed on the same states
      (``entropy/observed_delta``), next to the old comparison with the next step's batch.
Each grid's wall time (base model build included, when it was not cached) and its scale warnings are kept.
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
from entrolab.report import mean_ci

HERE = Path(__file__).parent
ROOT = HERE.parent


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _r(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")


def per_seed(run: Path, base: dict) -> dict:
    rows = rows_of(run)
    steps = [r for r in rows if r["step"] > 0]
    summary = json.loads((run / "summary.json").read_text())
    detail = json.loads((run / "eval_detail.json").read_text())
    ent = np.array([r["entropy/token_mean"] for r in steps])
    pred = np.array([r["entropy/predicted_delta"] for r in steps])
    same = np.array([r.get("entropy/observed_delta", np.nan) for r in steps])
    sc = support_change(base["right"], detail["right"], base["samples"], detail["samples"])
    warnings = (
        json.loads((run / "scale_warnings.json").read_text())["warnings"]
        if (run / "scale_warnings.json").exists()
        else []
    )
    return {
        "entropy_first10": float(ent[:10].mean()),
        "entropy_last10": float(ent[-10:].mean()),
        "final_pass@1": summary["final_eval"]["pass@1"],
        "final_pass@16": summary["final_eval"]["pass@16"],
        "final_eval_entropy": summary["final_eval"]["entropy"],
        "r_same_states": _r(pred, same),
        "sign_same_states": float(np.mean(np.sign(pred) == np.sign(same))),
        "r_next_batch": _r(pred[:-1], np.diff(ent)),
        "shrunk": float(sc.shrunk),
        "expanded": float(sc.expanded),
        "k": sc.k,
        "law_points": [(r["eval/entropy"], r["eval/pass@1"]) for r in rows if "eval/pass@1" in r],
        "warnings": warnings,
    }


def analyse(cmp: Path, methods: list[str], wall: float | None) -> dict:
    base = json.loads((cmp / "base_eval.json").read_text())
    out: dict = {"wall_time_s": wall, "methods": {}, "grid": json.loads((cmp / "grid.json").read_text())}
    for method in methods:
        seeds = [per_seed(run, base) for run in sorted((cmp / method).glob("seed*"))]
        stats = {}
        for key in seeds[0]:
            if key in ("law_points", "warnings", "k"):
                continue
            mean, half = mean_ci([s[key] for s in seeds])
            stats[key] = {"mean": mean, "ci95": half}
        law = fit_entropy_law(*zip(*[p for s in seeds for p in s["law_points"]], strict=True))
        warnings = sorted({w for s in seeds for w in s["warnings"]})
        out["methods"][method] = {**stats, "law_a": law.a, "law_b": law.b, "law_r2": law.r2, "seeds": len(seeds)}
        out["methods"][method]["scale_warnings"] = warnings
        out["methods"][method]["k"] = seeds[0]["k"]
    out["base"] = {k: base["metrics"][k] for k in ("pass@1", "pass@16", "entropy")}
    return out


def _pm(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['ci95']:.{digits}f}"


def table(name: str, res: dict) -> str:
    m = res["methods"]
    wall = f"{res['wall_time_s']:.0f} s" if res["wall_time_s"] else "not measured (analysed only)"
    lines = [
        f"### {name}: recipe {res['grid']['recipe']}'s for every run; wall time {wall}",
        "",
        *[f"- {n}" for n in res["grid"]["notes"]],
        "",
        f"Base: pass@1 {res['base']['pass@1']:.3f}, pass@16 {res['base']['pass@16']:.3f}, "
        f"eval entropy {res['base']['entropy']:.3f}. Mean ± 95 % half-width over seeds.",
        "",
        "| method | seeds | rollout entropy first 10 | last 10 | final eval entropy | pass@1 | pass@16 | law R^2 | "
        "shrunk / expanded (k) | r(pred, obs) same states | sign agreement | r(pred, next batch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in m.items():
        lines.append(
            f"| {method} | {r['seeds']} | {_pm(r['entropy_first10'])} | {_pm(r['entropy_last10'])} | "
            f"{_pm(r['final_eval_entropy'])} | {_pm(r['final_pass@1'])} | {_pm(r['final_pass@16'])} | "
            f"{r['law_r2']:.2f} | {_pm(r['shrunk'], 1)} / {_pm(r['expanded'], 1)} ({r['k']}) | "
            f"{_pm(r['r_same_states'], 2)} | {_pm(r['sign_same_states'], 2)} | {_pm(r['r_next_batch'], 2)} |"
        )
    warned = [(method, w) for method, r in m.items() for w in r["scale_warnings"]]
    if warned:
        lines += ["", "Scale warnings:", *[f"- {method}: {w}" for method, w in warned]]
    return "\n".join(lines) + "\n"


def run_grid(spec: dict) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "entrolab.cli", "compare", "--out", str(ROOT / spec["out"]), "--task", spec["task"]]
    cmd += ["--methods", spec["methods"], "--seeds", str(spec["seeds"]), "--steps", str(spec["steps"])]
    cmd += ["--eval-every", str(spec["eval_every"]), "--threads", str(spec["threads"]), "--no-progress"]
    if spec["set"]:
        cmd += ["--set", *spec["set"]]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def main(analyse_only: bool, only: str | None, walls: dict[str, float]) -> None:
    cfg = tomllib.loads((HERE / "phenomena.toml").read_text())
    previous = (
        json.loads((HERE / "results" / "phenomena.json").read_text())
        if (HERE / "results" / "phenomena.json").exists()
        else {}
    )
    results, text = {}, []
    for name in ("grid", "sweep"):
        spec = cfg[name]
        cmp = ROOT / spec["out"]
        wall = walls.get(name)
        if not analyse_only and only in (None, name):
            wall = run_grid(spec)
        if not (cmp / "grid.json").exists():
            continue
        if wall is None:
            wall = (previous.get(name) or {}).get("wall_time_s")
        results[name] = analyse(cmp, spec["methods"].split(","), wall)
        text.append(table(name, results[name]))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "phenomena.json").write_text(json.dumps(results, indent=2))
    (HERE / "results" / "phenomena.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--only", choices=("grid", "sweep"), default=None, help="run one grid (the other is re-read)")
    p.add_argument("--grid-seconds", type=float, default=None, help="with --analyse-only: the grid's wall time")
    p.add_argument("--sweep-seconds", type=float, default=None, help="with --analyse-only: the sweep's wall time")
    a = p.parse_args()
    walls = {k: v for k, v in (("grid", a.grid_seconds), ("sweep", a.sweep_seconds)) if v is not None}
    main(a.analyse_only, a.only, walls)
