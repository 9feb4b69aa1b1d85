"""Does Cov(log pi, A) predict the entropy change? Measured on the same states, as the paper states it.

    python benchmarks/entropy_change.py [--steps 100] [--quick]   # writes results/entropy_change.{json,md}

The Entropy Mechanism paper (arXiv:2505.22617, eq. 2-3) states that under a policy-gradient step the entropy of
the *same states* changes by about -eta * Cov(log pi(a|s), A(s, a)). The trainer logs that prediction as
``entropy/predicted_delta`` and, after the update, re-measures the entropy of ``entropy_probe`` (16) of the
step's own sequences with one no-grad teacher-forced pass: ``entropy/observed_delta``. This script runs
``grpo`` on the built-in arithmetic task from the cached base model (the demo's) and reports

- the Pearson correlation and sign agreement of predicted vs observed on the same states;
- the same for the old measure, the next step's ``entropy/token_mean`` minus this step's (other prompts);
- the cost of the probe per step (``time/entropy_probe``) against the step time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results"


def _corr(x: list[float], y: list[float]) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _sign(x: list[float], y: list[float]) -> float:
    return float(np.mean(np.sign(x) == np.sign(y))) if x else math.nan


def main(steps: int, cache: str | None) -> dict:
    import torch

    from entrolab.config import base_config
    from entrolab.pretrain import PretrainConfig, cached_base
    from entrolab.tasks import make_task
    from entrolab.trainer import train

    torch.set_num_threads(2)
    base = cached_base(make_task("arithmetic", seed=0), PretrainConfig(seed=0), cache)
    with tempfile.TemporaryDirectory() as d:
        cfg = replace(
            base_config("grpo"),
            model=str(base),
            task="arithmetic",
            out=str(Path(d) / "run"),
            steps=steps,
            eval_every=0,
            progress=False,
        )
        train(cfg, log=lambda *a: None)
        rows = [json.loads(x) for x in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    pred = [r["entropy/predicted_delta"] for r in rows]
    same = [r["entropy/observed_delta"] for r in rows]
    h = [r["entropy/token_mean"] for r in rows]
    nxt = [b - a for a, b in itertools.pairwise(h)]
    probe = [r["time/entropy_probe"] for r in rows]
    step = [r["time/step"] for r in rows]
    result = {
        "setting": f"grpo, arithmetic, cached tiny1m base, {steps} steps, 16 prompts x 8, probe 16 sequences",
        "steps": steps,
        "same_states": {"pearson_r": _corr(pred, same), "sign_agreement": _sign(pred, same), "n": len(pred)},
        "next_batch": {"pearson_r": _corr(pred[:-1], nxt), "sign_agreement": _sign(pred[:-1], nxt), "n": len(nxt)},
        "probe_ms_median": 1000 * statistics.median(probe),
        "step_ms_median": 1000 * statistics.median(step),
        "probe_share_of_step": statistics.median(p / s for p, s in zip(probe, step, strict=True)),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "entropy_change.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Predicted (-lr * Cov(log pi, A)) vs observed entropy change, {result['setting']}.",
        "",
        "| observed change | Pearson r | sign agreement | steps |",
        "|---|---|---|---|",
        "| same sequences, re-measured after the update (`entropy/observed_delta`) | "
        f"{result['same_states']['pearson_r']:.3f} | {result['same_states']['sign_agreement']:.2f} | "
        f"{result['same_states']['n']} |",
        "| next step's batch minus this one (`entropy/token_mean`, other prompts) | "
        f"{result['next_batch']['pearson_r']:.3f} | {result['next_batch']['sign_agreement']:.2f} | "
        f"{result['next_batch']['n']} |",
        "",
        f"Probe cost: {result['probe_ms_median']:.1f} ms per step (median), "
        f"{result['probe_share_of_step']:.1%} of a {result['step_ms_median']:.0f} ms step.",
    ]
    (OUT / "entropy_change.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    p.add_argument("--quick", action="store_true", help="10 steps (a smoke run)")
    p.add_argument("--cache", default=None, help="base-model cache (default: $ENTROLAB_CACHE or ~/.cache/entrolab)")
    a = p.parse_args()
    main(10 if a.quick else a.steps, a.cache)
