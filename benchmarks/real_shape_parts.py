"""Where entrolab's step goes at the real shape, and what each speed-up of issue 19 changed (before / after).

Run: ``.venv-ref/bin/python benchmarks/real_shape_parts.py [--model DIR] [--repeats 3]`` (about 5 minutes on 2
cores; builds ``benchmarks/real_shape.py``'s 54.5M Qwen2 with Qwen's 151,936-entry vocabulary unless given
``--model``). Writes ``benchmarks/results/real_shape_parts.json`` and ``.md``. Each comparison alternates its
two sides, ``--repeats`` times, on the same inputs; the tables give medians.

1. **Decode LM head**: ``F.linear`` (x W^T) against ``LeanDecoder.decode_logits`` (W x^T, a single row
   doubled) on real final hidden states, per number of live rows.
2. **Sampling arithmetic** (softmax, cumsum, draw, entropy) on real logits of 8-64 rows: all rows at once
   against blocks of ``entrolab.rollout.DRAW_ROWS``.
3. **A whole rollout** (8 prompts x 8, <= 256 tokens, one seed): the decode changes off (head by ``F.linear``,
   one block) against on, in tokens/s (the two heads round differently, so a draw can flip and the
   completions differ).
4. **The update's forward and backward** over that rollout: the full forward against
   ``teacher_forced(sampled=...)`` (the sampling pass's logsumexp and entropy, no LM-head forward), with the
   relative difference of the two parameter gradients.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results"
ROWS = (1, 2, 4, 8, 16, 32, 64)


def _real_shape():
    spec = importlib.util.spec_from_file_location("real_shape", Path(__file__).with_name("real_shape.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["real_shape"] = mod
    spec.loader.exec_module(mod)
    return mod


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(sides: dict, repeats: int, warm: bool = True) -> dict[str, float]:
    """Median seconds of each side's callable, the sides taking turns ``repeats`` times (after one warm-up each)."""
    for fn in sides.values() if warm else ():
        fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for k, fn in sides.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(model_dir: str, repeats: int) -> dict:
    import entrolab.lean as lean_mod
    import entrolab.rollout as ro
    from entrolab.lean import LeanDecoder
    from entrolab.models import load_policy
    from entrolab.rollout import _draw, generate, teacher_forced
    from entrolab.tasks import make_task

    torch.set_num_threads(2)
    model, tok = load_policy(model_dir)
    model.eval()
    lean = LeanDecoder.of(model)
    task = make_task("arithmetic", seed=0)
    texts = [task.prompt(e) for e in task.train[:8]]
    kw = dict(group_size=8, max_new_tokens=256, keep_lse=True)
    r = generate(model, tok, texts, generator=torch.Generator().manual_seed(0), **kw)
    mask = r.response_mask
    with torch.no_grad():  # real final hidden states of sampled positions
        hidden, _ = lean.response_hidden(r.prompt_ids, r.prompt_mask, r.response_ids, mask)
    out: dict = {"tokens": float(mask.sum()), "decode_head_ms": {}, "draw_ms": {}}

    # 1. the decode LM head (W x^T at every row count, also above the threshold it is used up to)
    lean_mod.DECODE_MM_MAX_ROWS = 10**9
    with torch.no_grad():
        for n in ROWS:
            h = hidden[:n].contiguous()
            t = alternate({"linear": lambda h=h: lean.logits(h), "decode_logits": lambda h=h: lean.decode_logits(h)}, 7)
            out["decode_head_ms"][n] = {k: 1e3 * v for k, v in t.items()}
            err = float((lean.logits(h) - lean.decode_logits(h)).abs().max())
            out["decode_head_ms"][n]["max_abs_diff"] = err
        lean_mod.DECODE_MM_MAX_ROWS = 16

        # 2. the sampling arithmetic
        for n in (8, 16, 32, 64):
            z = lean.logits(hidden[:n].contiguous())

            def draw(block, z=z):
                ro.DRAW_ROWS = block
                _draw(z, 1.0, 1.0, torch.Generator().manual_seed(0), {})

            t = alternate({"one_block": lambda: draw(10**9), "blocks_of_8": lambda: draw(8)}, 7)
            out["draw_ms"][n] = {k: 1e3 * v for k, v in t.items()}
        ro.DRAW_ROWS = 8

    # 3. a whole rollout, the decode changes off against on
    def rollout(on: bool):
        lean_mod.DECODE_MM_MAX_ROWS, ro.DRAW_ROWS = (16, 8) if on else (0, 10**9)
        got = generate(model, tok, texts, generator=torch.Generator().manual_seed(1), **kw)
        lean_mod.DECODE_MM_MAX_ROWS, ro.DRAW_ROWS = 16, 8
        return got

    tokens = {k: float(rollout(k == "after").response_mask.sum()) for k in ("before", "after")}  # (warm-ups)
    t = alternate({"before": lambda: rollout(False), "after": lambda: rollout(True)}, repeats, warm=False)
    out["rollout_s"] = {**t, "tokens": tokens}

    # 4. the update's forward / backward, full against reusing the sampling pass
    grads = {}
    parts: dict[str, list[tuple[float, float]]] = {"full": [], "reuse": []}
    for _ in range(repeats):
        for name in parts:
            model.zero_grad(set_to_none=True)
            sampled = (r.extras["sampled_lse"], r.entropy) if name == "reuse" else None
            t0 = time.perf_counter()
            lp, _, _ = teacher_forced(model, r.prompt_ids, r.prompt_mask, r.response_ids, mask, sampled=sampled)
            t1 = time.perf_counter()
            ((lp * mask).sum() / mask.sum()).backward()
            parts[name].append((t1 - t0, time.perf_counter() - t1))
            grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    out["update_s"] = {
        name: {"forward": statistics.median(x[0] for x in v), "backward": statistics.median(x[1] for x in v)}
        for name, v in parts.items()
    }
    out["update_s"]["grad_rel_diff"] = float((grads["full"] - grads["reuse"]).norm() / grads["full"].norm())
    return out


def write(res: dict, meta: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_shape_parts.json").write_text(json.dumps({"meta": meta, **res}, indent=1) + "\n")
    lines = [
        "# entrolab's step at the real shape, part by part (issue 19's speed-ups, before / after)",
        "",
        f"Written by `{meta['command']}` ({meta['machine']}, {meta['cpus']} CPUs, torch {meta['torch']}, 2 threads). "
        f"Model: `benchmarks/real_shape.py`'s Qwen2 (54.5M, V = 151,936, D = 320), fp32; one rollout of 8 prompts x "
        f"8, <= 256 tokens ({res['tokens']:.0f} completion tokens). Medians of sides taken in turn.",
        "",
        "## 1. Decode LM head, ms per call (real final hidden states)",
        "",
        "| live rows | `F.linear` (x W^T) | W x^T (`decode_logits`) | speed-up | max abs difference |",
        "|---|---|---|---|---|",
    ]
    for n, d in res["decode_head_ms"].items():
        used = "" if int(n) <= 16 else " (not used: > `DECODE_MM_MAX_ROWS` = 16)"
        lines.append(
            f"| {n} | {d['linear']:.1f} | {d['decode_logits']:.1f}{used} | {d['linear'] / d['decode_logits']:.2f}x "
            f"| {d['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        "## 2. Sampling arithmetic of one decode step, ms (real logits)",
        "",
        "| rows | one block | blocks of 8 | speed-up |",
        "|---|---|---|---|",
    ]
    for n, d in res["draw_ms"].items():
        lines.append(
            f"| {n} | {d['one_block']:.1f} | {d['blocks_of_8']:.1f} | {d['one_block'] / d['blocks_of_8']:.2f}x |"
        )
    ro, up = res["rollout_s"], res["update_s"]
    lines += [
        "",
        "## 3. A whole rollout, s",
        "",
        f"Before (head by `F.linear`, one block): **{ro['before']:.2f}** s, {ro['tokens']['before']:.0f} tokens; "
        f"after: **{ro['after']:.2f}** s, {ro['tokens']['after']:.0f} tokens: "
        f"{(ro['tokens']['after'] / ro['after']) / (ro['tokens']['before'] / ro['before']):.2f}x the tokens/s. "
        "One seed, but the completions may differ: the two heads round the logits differently, and one draw "
        "that lands on the other side of a boundary changes the rest of its row.",
        "",
        "## 4. The update over that rollout, s",
        "",
        "| forward | forward s | backward s | forward + backward |",
        "|---|---|---|---|",
    ]
    for name in ("full", "reuse"):
        f, b = up[name]["forward"], up[name]["backward"]
        label = "full (LM head over the vocabulary)" if name == "full" else "reusing the sampling pass's lse/entropy"
        lines.append(f"| {label} | {f:.2f} | {b:.2f} | {f + b:.2f} |")
    lines += [
        "",
        f"Relative difference of the two parameter gradients: {up['grad_rel_diff']:.1e} (fp32 rounding of the "
        "KV-cache pass against the teacher-forced one).",
        "",
    ]
    (out / "real_shape_parts.md").write_text("\n".join(lines))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a real-shape model folder (default: build one, ~40 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="results folder (default: benchmarks/results)")
    args = ap.parse_args()
    meta = {
        "command": " ".join([".venv-ref/bin/python benchmarks/real_shape_parts.py", *sys.argv[1:]]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or _real_shape().build(Path(tmp) / "real")["path"]
        res = measure(model_dir, args.repeats)
    print(write(res, meta, Path(args.out) if args.out else OUT))


if __name__ == "__main__":
    main()
