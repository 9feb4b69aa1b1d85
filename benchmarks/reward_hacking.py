"""Reward hacking against a learned proxy: does the proxy rise while the gold verifier falls, and does PAR stop it?

    python benchmarks/reward_hacking.py                 # RM + both grids of benchmarks/reward_hacking.toml, analysis
    python benchmarks/reward_hacking.py --analyse-only  # re-read the existing folders

A reward model is trained on the task's verifier pairs with a spurious marker on the preferred side of half of
them (`entrolab rm train --spurious marker`); then `entrolab compare` runs GRPO and PAR on that reward model
(`--set reward_model=...`, the verifier logged as gold) and, as a grid of its own, GRPO on the verifier. Per
method, over seeds (mean ± 95 % half-width): the proxy, the gold score and the spurious feature's rate in the
first and last 10 steps, and the final test pass@1. Results: benchmarks/results/reward_hacking.{json,md}.
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

from entrolab.report import mean_ci

HERE = Path(__file__).parent
ROOT = HERE.parent
KEYS = ("reward/proxy_mean", "reward/gold_mean", "reward/spurious_rate", "reward/accuracy")


def entrolab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "entrolab.cli", *args], check=True, cwd=ROOT)


def base_model(task: str) -> str:
    from entrolab.pretrain import PretrainConfig, cached_base
    from entrolab.tasks import make_task

    return str(cached_base(make_task(task, seed=0), PretrainConfig(), None))


def run_all(cfg: dict) -> dict[str, float]:
    out = ROOT / cfg["out"]
    rm, grid = cfg["rm"], cfg["grid"]
    base = base_model(rm["task"])
    t0 = time.perf_counter()
    rm_dir = out / "rm"
    if not (rm_dir / "entrolab_rm.json").exists():
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in rm.items()]
        entrolab("rm", "train", *flags, "--model", base, "--out", str(rm_dir))
    t_rm = time.perf_counter() - t0
    common = ["--task", grid["task"], "--seeds", str(grid["seeds"]), "--steps", str(grid["steps"])]
    common += ["--eval-every", str(grid["eval_every"]), "--model", base, "--no-progress"]
    t1 = time.perf_counter()
    entrolab(
        "compare", *common, "--methods", grid["on_rm"], "--set", f"reward_model={rm_dir}", "--out", str(out / "on_rm")
    )
    entrolab("compare", *common, "--methods", grid["on_gold"], "--out", str(out / "on_gold"))
    return {"rm_s": t_rm, "grids_s": time.perf_counter() - t1}


def _window(rows: list[dict], key: str, first: bool) -> float:
    if key == "reward/gold_mean" and not any(key in r for r in rows):  # trained on the verifier: it is the gold
        key = "reward/mean"
    vals = [r[key] for r in rows if r.get("step", 0) > 0 and key in r]
    vals = vals[:10] if first else vals[-10:]
    return float(np.mean(vals)) if vals else float("nan")


def analyse(cfg: dict, timing: dict | None) -> dict:
    out = ROOT / cfg["out"]
    rm_meta = json.loads((out / "rm" / "entrolab_rm.json").read_text())
    result: dict = {"rm": {k: rm_meta[k] for k in ("accuracy", "accuracy_clean", "accuracy_flipped")}, "methods": {}}
    for where in ("on_rm", "on_gold"):
        for method_dir in sorted(p for p in (out / where).iterdir() if p.is_dir() and p.name != "plots"):
            runs = sorted(method_dir.glob("seed*"))
            rows = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
            summ = [json.loads((r / "summary.json").read_text()) for r in runs]
            entry = {"seeds": len(runs)}
            for key in KEYS:
                for first in (True, False):
                    entry[f"{key} {'first' if first else 'last'} 10"] = mean_ci([_window(r, key, first) for r in rows])
            entry["final pass@1"] = mean_ci([s["final_eval"]["pass@1"] for s in summ])
            entry["base pass@1"] = summ[0]["base_eval"]["pass@1"]
            result["methods"][f"{method_dir.name} ({'reward model' if where == 'on_rm' else 'verifier'})"] = entry
    result["timing"] = timing
    return result


def write(result: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "reward_hacking.json").write_text(json.dumps(result, indent=2))
    rm = result["rm"]
    lines = [
        f"Reward model: held-out pairwise accuracy {rm['accuracy']:.3f} (with the spurious marker on half the "
        f"chosen sides), {rm['accuracy_clean']:.3f} without it, {rm['accuracy_flipped']:.3f} with the marker on the "
        "rejected side. Mean ± 95 % half-width over seeds; first / last 10 steps of the training rollouts.",
        "",
        "| run | proxy first → last | gold first → last | spurious rate first → last | final pass@1 (base) |",
        "|---|---|---|---|---|",
    ]

    def pm(v):
        m, h = v
        return "–" if not np.isfinite(m) else f"{m:.3f}" + (f" ± {h:.3f}" if np.isfinite(h) else "")

    for name, e in result["methods"].items():
        cells = []
        for key in ("reward/proxy_mean", "reward/gold_mean", "reward/spurious_rate"):
            cells.append(f"{pm(e[f'{key} first 10'])} → {pm(e[f'{key} last 10'])}")
        lines.append(f"| {name} | {' | '.join(cells)} | {pm(e['final pass@1'])} ({e['base pass@1']:.3f}) |")
    if result.get("timing"):
        lines += [
            "",
            f"Wall time: reward model {result['timing']['rm_s']:.0f} s, grids {result['timing']['grids_s']:.0f} s.",
        ]
    (HERE / "results" / "reward_hacking.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--config", default=str(HERE / "reward_hacking.toml"))
    args = p.parse_args()
    cfg = tomllib.loads(Path(args.config).read_text())
    timing = None if args.analyse_only else run_all(cfg)
    write(analyse(cfg, timing))


if __name__ == "__main__":
    main()
