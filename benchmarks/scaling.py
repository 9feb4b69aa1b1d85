"""How an entrolab GRPO step scales: step time and peak memory against group size, completion length, model size.

    python benchmarks/scaling.py            # writes benchmarks/results/scaling.{json,md,png}
    python benchmarks/scaling.py --quick    # smoke run: tiny1m, G in (4, 8), length 16, 1 timed step

Grid: model size (tiny1m, tiny10m) x group size G (4, 8, 16) x completion length L (16, 32, 64), 8 prompts per
step of the ``arithmetic`` task, the ``grpo`` preset, one PPO epoch, one minibatch, no micro-batching, fp32,
``--threads`` torch threads (2). Every point runs ``entrolab.trainer.train`` in a fresh subprocess on a fresh
model (``build_tiny_model`` seed 0): one warm-up step, then ``--steps`` timed steps; "s/step" is the median
of the trainer's own ``time/step`` (rollout, reward, advantages, update incl. the optimizer step).

Every completion has exactly L tokens: the saved tokenizer's EOS is an extra token appended after the model's
vocabulary, which the model cannot emit, so no sequence stops early and B x L tokens are generated and trained
on per step (B = 8 x G).

Memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess. "peak RSS" is the whole process
(Python, torch, transformers, the model); "step extra" is the rise of that peak over a reading taken after the
imports and one model load, i.e. what training (optimizer state, activations, rollout buffers) adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).parent / "results"
PROMPTS = 8
MIB = 2**20


def build_model(size: str, out: Path) -> str:
    """A fresh model whose tokenizer's EOS is an id the model cannot sample (so lengths are exact)."""
    from entrolab.models import build_tiny_model, build_tokenizer, save_policy

    tok = build_tokenizer()
    model = build_tiny_model(tok, size, seed=0)  # vocabulary = the tokenizer's, before the extra token
    tok.add_special_tokens({"eos_token": "<never>"})
    assert tok.eos_token_id >= model.config.vocab_size
    return str(save_policy(model, tok, out))


def child(model_dir: str, group_size: int, length: int, steps: int, threads: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from dataclasses import replace

    import torch

    from entrolab.config import base_config
    from entrolab.models import load_policy
    from entrolab.trainer import train

    torch.set_num_threads(threads)
    load_policy(model_dir)  # imports and one model load, then the baseline reading
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as out:
        cfg = replace(
            base_config("grpo"),
            model=model_dir,
            task="arithmetic",
            out=out,
            steps=1 + steps,
            prompts_per_step=PROMPTS,
            group_size=group_size,
            max_new_tokens=length,
            eval_every=0,
            eval_samples=1,
            eval_prompts=1,
            save_every=0,
            progress=False,
            threads=threads,
        )
        train(cfg, log=lambda *a: None)
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = [r for r in rows if r["step"] > 1 and "time/step" in r]
    return {
        "group_size": group_size,
        "length": length,
        "sequences": PROMPTS * group_size,
        "tokens_per_step": statistics.mean(r["len/mean"] for r in rows) * PROMPTS * group_size,
        "s_per_step": statistics.median(r["time/step"] for r in rows),
        "rollout_s": statistics.median(r["time/rollout"] for r in rows),
        "update_s": statistics.median(r["time/update"] for r in rows),
        "peak_rss_mib": peak / MIB,
        "step_extra_mib": (peak - base) / MIB,
    }


def measure(model_dir: str, size: str, g: int, length: int, steps: int, threads: int) -> dict:
    spec = json.dumps([model_dir, g, length, steps, threads])
    out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{size} G={g} L={length} failed:\n{out.stderr[-4000:]}")
    return {"size": size, **json.loads(out.stdout.strip().splitlines()[-1])}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"tiny1m": "tab:blue", "tiny10m": "tab:red"}
    markers = {16: "o", 32: "s", 64: "^"}
    for (size, length), color in ((k, colors.get(k[0], "k")) for k in sorted({(r["size"], r["length"]) for r in rows})):
        pts = sorted((r for r in rows if r["size"] == size and r["length"] == length), key=lambda r: r["group_size"])
        x = [r["tokens_per_step"] for r in pts]
        for ax, key in zip(axes, ("s_per_step", "peak_rss_mib"), strict=True):
            ax.plot(x, [r[key] for r in pts], color=color, marker=markers.get(length, "x"), label=f"{size}, L={length}")
            for r in pts:
                ax.annotate(f"G={r['group_size']}", (r["tokens_per_step"], r[key]), fontsize=7, alpha=0.7)
    for ax, label in zip(axes, ("seconds per step", "peak RSS of the process (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(f"completion tokens per step ({PROMPTS} prompts x G x L)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("entrolab GRPO step on CPU: scaling with group size G, completion length L and model size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny1m, G in (4, 8), L = 16, 1 timed step")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per point, after one warm-up step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    if args.quick:
        sizes, groups, lengths, steps = ("tiny1m",), (4, 8), (16,), 1
    else:
        sizes, groups, lengths, steps = ("tiny1m", "tiny10m"), (4, 8, 16), (16, 32, 64), args.steps
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            model_dir = build_model(size, Path(tmp) / size)
            for length in lengths:
                for g in groups:
                    row = measure(model_dir, size, g, length, steps, args.threads)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    import torch

    meta = {
        "quick": args.quick,
        "command": " ".join(["python benchmarks/scaling.py", *sys.argv[1:]]),
        "prompts_per_step": PROMPTS,
        "preset": "grpo",
        "steps_timed": steps,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "memory": "ru_maxrss of a fresh subprocess per point; step extra = rise over imports + one model load",
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# entrolab GRPO step scaling (CPU, {args.threads} threads, fp32)",
        "",
        f"Written by `{meta['command']}` (torch {torch.__version__}): "
        f"{PROMPTS} prompts per step, grpo preset, exact completion lengths, median of {steps} timed step(s) "
        f"after a warm-up. Memory: {meta['memory']}. Plot: `scaling.png`.",
        "",
        "| model | G | L | sequences | tokens/step | s/step | rollout s | update s | tokens/s | peak RSS MiB "
        "| step extra MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['group_size']} | {r['length']} | {r['sequences']} | {r['tokens_per_step']:.0f} "
            f"| {r['s_per_step']:.2f} | {r['rollout_s']:.2f} | {r['update_s']:.2f} "
            f"| {r['tokens_per_step'] / r['s_per_step']:.0f} | {r['peak_rss_mib']:.0f} | {r['step_extra_mib']:.0f} |"
        )
    (OUT / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, OUT / "scaling.png")  # after the numbers are written: a failed plot loses nothing


if __name__ == "__main__":
    main()
