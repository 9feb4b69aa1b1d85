"""Peak memory and time of token log-probs + entropy, forward and backward, at the Qwen vocabulary.

    python benchmarks/logprob_memory.py            # writes benchmarks/results/logprob_memory.json and .md
    python benchmarks/logprob_memory.py --quick    # a smoke run at 256 tokens (same files, marked quick)

Two ways of getting logp [N] and entropy [N] from final hidden states h [N, D] and an LM head W [V, D]
(V = 151,936, D = 896 as in Qwen2.5-0.5B), each followed by the backward of a random combination of both
outputs into h and W:

- ``naive``: what ``teacher_forced`` did before: z = lm_head(h) / temperature as full [N, V] fp32 logits, then
  ``ops.logprobs_from_logits`` and ``ops.entropy_from_logits``; autograd keeps what it needs.
- ``chunked``: ``entrolab.logprob.chunked_logprob_entropy`` at a given chunk size.

Method: every (variant, N, chunk) runs in a fresh subprocess, so allocator caches and earlier peaks cannot leak
between measurements. The child builds its inputs (h, W, targets, upstream gradients), runs one small warm-up,
reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's peak resident set so far), then runs
forward+backward ``repeats`` times and reads it again. The warm-up (8 tokens, full V) has already held one
gradient of W (V x D fp32, 0.51 GiB), so "peak extra", the difference of the two readings, is the memory the
computation needs beyond its inputs and a parameter-sized gradient buffer, which both variants need alike.
Time is the median wall time of the repeats, with ``torch.set_num_threads(2)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results"
V, D = 151_936, 896
GIB = 2**30


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(variant: str, n: int, chunk: int, repeats: int, temperature: float = 1.0) -> dict:
    """One measurement, in this (fresh) process."""
    from entrolab.logprob import chunked_logprob_entropy
    from entrolab.ops import entropy_from_logits, logprobs_from_logits

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, D, generator=g).requires_grad_()
    w = (0.02 * torch.randn(V, D, generator=g)).requires_grad_()
    y = torch.randint(0, V, (n,), generator=g)
    up = torch.randn(2, n, generator=g)

    def run(h, y, up) -> None:
        if variant == "naive":
            z = torch.nn.functional.linear(h, w) / temperature  # [N, V]
            lp, ent = logprobs_from_logits(z, y), entropy_from_logits(z)
        else:
            lp, ent = chunked_logprob_entropy(h, w, y, temperature=temperature, chunk_size=chunk)
        ((lp * up[0]).sum() + (ent * up[1]).sum()).backward()
        h.grad = w.grad = None

    run(h[:8].detach().requires_grad_(), y[:8], up[:, :8])  # warm-up: kernels, thread pool
    base = _maxrss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(h, y, up)
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "tokens": n,
        "chunk_size": chunk if variant == "chunked" else None,
        "peak_extra_gib": (_maxrss_bytes() - base) / GIB,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "fp32_logits_gib": n * V * 4 / GIB,
    }


def measure(variant: str, n: int, chunk: int, repeats: int) -> dict:
    spec = json.dumps({"variant": variant, "n": n, "chunk": chunk, "repeats": repeats})
    out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"variant": variant, "tokens": n, "chunk_size": chunk, "error": out.stderr.strip()[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 256 tokens, one repeat")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096], help="N values")
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 1024], help="chunk sizes of the chunked op")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["variant"], spec["n"], spec["chunk"], spec["repeats"])))
        return
    tokens, repeats = ([256], 1) if args.quick else (args.tokens, args.repeats)
    rows = []
    for n in tokens:
        naive = measure("naive", n, 0, repeats)
        rows.append(naive)
        print(json.dumps(naive), flush=True)
        for chunk in args.chunks:
            row = measure("chunked", n, chunk, repeats)
            if "error" not in naive and "error" not in row:
                row["peak_vs_naive"] = row["peak_extra_gib"] / max(naive["peak_extra_gib"], 1e-9)
                row["time_vs_naive"] = row["seconds_median"] / naive["seconds_median"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "quick": args.quick,
        "V": V,
        "D": D,
        "dtype": "float32",
        "torch": torch.__version__,
        "threads": 2,
        "machine": platform.processor() or platform.machine(),
        "repeats": repeats,
        "method": "peak ru_maxrss rise over the inputs, fresh subprocess per row; median wall time of the repeats",
        "targets": "chunked peak <= 1/8 of naive at <= 1.3x its time",
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "logprob_memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# logp + entropy, forward + backward, from hidden states at V = 151,936, D = 896 (fp32, 2 threads)",
        "",
        f"Written by `python benchmarks/logprob_memory.py{' --quick' if args.quick else ''}`"
        f" (torch {torch.__version__}, {meta['machine']}). {meta['method']}.",
        "",
        "| tokens N | variant | chunk | fp32 logits [N, V] GiB | peak extra GiB | s (median) | peak / naive "
        "| time / naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tokens']} | {r['variant']} | {r['chunk_size'] or ''} | | failed | | | |")
            continue
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['chunk_size'] or ''} | {r['fp32_logits_gib']:.2f} "
            f"| {r['peak_extra_gib']:.2f} | {r['seconds_median']:.2f} "
            f"| {r.get('peak_vs_naive', float('nan')):.3f} | {r.get('time_vs_naive', float('nan')):.2f} |"
        )
    lines += ["", f"Target: {meta['targets']}."]
    (OUT / "logprob_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
