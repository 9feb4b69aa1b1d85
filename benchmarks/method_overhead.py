"""Cost of each registered method against plain `ppo_clip` on the tiny model, measured in the same run.

    python benchmarks/method_overhead.py [--quick]   # writes benchmarks/results/method_overhead.json and .md

One fixed rollout (P=16 prompts x G=8 samples, up to 32 new tokens, tiny1m) is updated over and over: for
every method, the update (token filters + forward + loss + backward) is timed alternately with the plain
`ppo_clip` update, repeats interleaved so that machine noise hits both alike. Reported per method:

- `update_overhead`: median(method update) / median(ppo_clip update) - 1;
- `step_overhead`: the same extra seconds over a whole baseline step (rollout + update), the cost a user sees;
  a method that needs a quantity recorded while sampling (`vocab_baseline`) also pays its extra rollout time.

Target (issue 4): <= 5 % for every token-level method. Methods that run a second model (a frozen reference
for a KL) are listed too; their cost is that forward pass, not the token-level arithmetic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from entrolab import catalogue
from entrolab.batch import TokenBatch
from entrolab.config import TrainConfig
from entrolab.learner import ROLLOUT_EXTRAS, minibatch_backward, reference_logp
from entrolab.models import build_tiny_model, build_tokenizer, load_policy, save_policy
from entrolab.rollout import generate
from entrolab.tasks import make_task
from entrolab.update import Counts, Methods, apply_filters

OUT = Path(__file__).parent / "results"
AXIS_FIELD = {"policy_loss": "policy_loss", "token_filter": "token_filters", "regularizer": "regularizers"}


def configs(model_dir: str) -> dict[str, TrainConfig]:
    base = dict(model=model_dir, max_new_tokens=32, prompts_per_step=16, group_size=8)
    out = {"ppo_clip": TrainConfig(**base)}
    for axis, field in AXIS_FIELD.items():
        for name in catalogue.names(axis):
            if (axis, name) == ("policy_loss", "ppo_clip"):
                continue
            value = name if axis == "policy_loss" else (name,)
            opts = ()
            if name == "overlong_penalty":
                continue
            if name == "entropy_bonus":
                opts = ("entropy_bonus.coef=0.001",)
            key = f"{axis}:{name}"
            out[key] = TrainConfig(**base, **{field: value}, options=opts)
    return out


def time_update(model, ref, methods: Methods, cfg: TrainConfig, batch: TokenBatch, gen: torch.Generator) -> float:
    """Filters + (the reference's forward, when needed) + forward/loss/backward through the composer."""
    t0 = time.perf_counter()
    if "ref_logp" in methods.needs:
        ref_logp = reference_logp(ref, batch, cfg.micro_batch_size, cfg.temperature, cfg.backend)
        batch = batch.replace(extras={**batch.extras, "ref_logp": ref_logp})
    part, _ = apply_filters(methods, batch, cfg.micro_batch_size, gen)
    minibatch_backward(
        model,
        methods,
        part,
        Counts.of(part, float(cfg.max_new_tokens)),
        micro_batch_size=cfg.micro_batch_size,
        temperature=cfg.temperature,
        backend=cfg.backend,
        generator=gen,
    )
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(quick: bool) -> None:
    torch.set_num_threads(2)
    repeats = 3 if quick else 15
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer()
        save_policy(build_tiny_model(tok, "tiny1m"), tok, d)
        model, tok = load_policy(d)
        ref, _ = load_policy(d)
        ref.requires_grad_(False)
        task = make_task("arithmetic")
        prompts = [task.prompt(e) for e in task.train[:16]]
        gen = torch.Generator().manual_seed(0)

        def rollout_with(extras):
            t0 = time.perf_counter()
            r = generate(
                model, tok, prompts, group_size=8, max_new_tokens=32, generator=gen.manual_seed(0), extras=extras
            )
            return r, time.perf_counter() - t0

        base_rollout, _ = rollout_with({})
        rollout_s = statistics.median(rollout_with({})[1] for _ in range(3))
        full_rollout, _ = rollout_with(dict(ROLLOUT_EXTRAS))
        rollout_extra_s = statistics.median(rollout_with(dict(ROLLOUT_EXTRAS))[1] for _ in range(3)) - rollout_s
        adv = torch.randn(len(base_rollout), 1, generator=torch.Generator().manual_seed(1))
        batch = TokenBatch.from_rollout(full_rollout, 8).replace(advantages=adv)
        cfgs = configs(d)
        methods = {k: Methods(c) for k, c in cfgs.items()}
        model.train()
        times: dict[str, list[float]] = {k: [] for k in cfgs}
        for k in cfgs:  # warm-up
            time_update(model, ref, methods[k], cfgs[k], batch, gen)
        for _ in range(repeats):
            for k in cfgs:
                if k == "ppo_clip":
                    continue
                times["ppo_clip"].append(time_update(model, ref, methods["ppo_clip"], cfgs["ppo_clip"], batch, gen))
                times[k].append(time_update(model, ref, methods[k], cfgs[k], batch, gen))
    base = statistics.median(times["ppo_clip"])
    rows = []
    for k, ts in times.items():
        if k == "ppo_clip":
            continue
        extra = statistics.median(ts) - base
        needs_rollout = any(n in ROLLOUT_EXTRAS for n in methods[k].needs)
        step_extra = extra + (rollout_extra_s if needs_rollout else 0.0)
        rows.append(
            {
                "method": k,
                "update_s": statistics.median(ts),
                "update_overhead": extra / base,
                "step_overhead": step_extra / (rollout_s + base),
                "needs": sorted(methods[k].needs),
            }
        )
    result = {
        "baseline_update_s": base,
        "rollout_s": rollout_s,
        "repeats": repeats,
        "rows": rows,
        "setting": "tiny1m, 16 prompts x 8 samples, <= 32 new tokens, 2 threads",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "method_overhead.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Baseline `ppo_clip` update {base * 1000:.0f} ms, rollout {rollout_s * 1000:.0f} ms "
        f"({result['setting']}, median of {repeats} interleaved repeats).",
        "",
        "| method | needs | update ms | update overhead | step overhead |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["method"]):
        lines.append(
            f"| {r['method']} | {', '.join(r['needs']) or '-'} | {r['update_s'] * 1000:.0f} | "
            f"{r['update_overhead']:+.1%} | {r['step_overhead']:+.1%} |"
        )
    (OUT / "method_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 15 (a smoke run)")
    main(p.parse_args().quick)
