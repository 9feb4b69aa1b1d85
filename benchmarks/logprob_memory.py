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

On a GPU, ``--device cuda [--dtype bfloat16]`` measures ``torch.cuda.max_memory_allocated`` over the allocation
after the warm-up instead (exact, the caching allocator's view) and writes ``logprob_memory_cuda[_bfloat16].*``.
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


def child(
    variant: str, n: int, chunk: int, repeats: int, device: str = "cpu", dtype: str = "float32", temperature=1.0
) -> dict:
    """One measurement, in this (fresh) process."""
    from entrolab.logprob import chunked_logprob_entropy
    from entrolab.ops import entropy_from_logits, logprobs_from_logits

    torch.set_num_threads(2)
    cuda = device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    h = torch.randn(n, D, generator=g).to(device, dt).requires_grad_()
    w = (0.02 * torch.randn(V, D, generator=g)).to(device, dt).requires_grad_()
    y = torch.randint(0, V, (n,), generator=g).to(device)
    up = torch.randn(2, n, generator=g).to(device)

    def run(h, y, up) -> None:
        if variant == "naive":
            z = torch.nn.functional.linear(h, w) / temperature  # [N, V]
            lp, ent = logprobs_from_logits(z, y), entropy_from_logits(z)
        else:
            lp, ent = chunked_logprob_entropy(h, w, y, temperature=temperature, chunk_size=chunk)
        ((lp * up[0]).sum() + (ent * up[1]).sum()).backward()
        h.grad = w.grad = None

    run(h[:8].detach().requires_grad_(), y[:8], up[:, :8])  # warm-up: kernels, thread pool
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _maxrss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(h, y, up)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _maxrss_bytes()
    return {
        "variant": variant,
        "tokens": n,
        "chunk_size": chunk if variant == "chunked" else None,
        "peak_extra_gib": (peak - base) / GIB,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "fp32_logits_gib": n * V * 4 / GIB,
    }


def measure(variant: str, n: int, chunk: int, repeats: int, device: str, dtype: str) -> dict:
    spec = json.dumps(
        {"variant": variant, "n": n, "chunk": chunk, "repeats": repeats, "device": device, "dtype": dtype}
    )
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda: torch.cuda.max_memory_allocated)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(**spec)))
        return
    name = "logprob_memory" + ("" if args.device == "cpu" else f"_{args.device.split(':')[0]}")
    name += "" if args.dtype == "float32" else f"_{args.dtype}"
    tokens, repeats = ([256], 1) if args.quick else (args.tokens, args.repeats)
    rows = []
    for n in tokens:
        naive = measure("naive", n, 0, repeats, args.device, args.dtype)
        rows.append(naive)
        print(json.dumps(naive), flush=True)
        for chunk in args.chunks:
            row = measure("chunked", n, chunk, repeats, args.device, args.dtype)
            if "error" not in naive and "error" not in row:
                row["peak_vs_naive"] = row["peak_extra_gib"] / max(naive["peak_extra_gib"], 1e-9)
                row["time_vs_naive"] = row["seconds_median"] / naive["seconds_median"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "quick": args.quick,
        "command": " ".join(["python benchmarks/logprob_memory.py", *sys.argv[1:]]),
        "V": V,
        "D": D,
        "dtype": args.dtype,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "threads": 2,
        "machine": platform.processor() or platform.machine(),
        "repeats": repeats,
        "method": (
            "peak ru_maxrss rise over the inputs"
            if args.device == "cpu"
            else "torch.cuda.max_memory_allocated minus the allocation after the warm-up"
        )
        + ", fresh subprocess per row; median wall time of the repeats",
        "targets": "chunked peak <= 1/8 of naive at <= 1.3x its time",
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    command = meta["command"]
    lines = [
        f"# logp + entropy, forward + backward, from hidden states at V = 151,936, D = 896 ({args.dtype}, "
        f"{meta['device']})",
        "",
        f"Written by `{command}` (torch {torch.__version__}, {meta['machine']}). {meta['method']}.",
        "",
        "| tokens N | variant | chunk | fp32 logits [N, V] GiB | peak extra GiB | s (median) | peak / naive "
        "| time / naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            why = "out of memory" if "OutOfMemory" in r["error"] or "MemoryError" in r["error"] else "see the json"
            lines.append(f"| {r['tokens']} | {r['variant']} | {r['chunk_size'] or ''} | | failed: {why} | | | |")
            continue
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['chunk_size'] or ''} | {r['fp32_logits_gib']:.2f} "
            f"| {r['peak_extra_gib']:.2f} | {r['seconds_median']:.2f} "
            f"| {r.get('peak_vs_naive', float('nan')):.3f} | {r.get('time_vs_naive', float('nan')):.2f} |"
        )
    lines += ["", f"Target: {meta['targets']}."]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
