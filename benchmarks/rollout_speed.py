"""Rollout throughput: KV-cache sampling of a batch of 64 prompts x 32 new tokens on the tiny models.

    python benchmarks/rollout_speed.py            # writes benchmarks/results/rollout_speed.json and .md

Every sequence generates exactly 32 tokens (EOS is masked out of the distribution for this measurement), so
tokens/s = 64 * 32 / seconds. Both backends are timed, alternating within one process (this machine's speed
drifts by tens of percent over minutes, so only interleaved timings compare): ``lean`` (``entrolab.lean``, the
default) and ``hf`` (the model's own forward with a DynamicCache). The prompts are 64 distinct ones, so the
lean backend's prompt sharing does not apply; this is decode speed alone. Median of the repeats after a
warm-up.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from entrolab.models import build_tiny_model, build_tokenizer, num_parameters
from entrolab.rollout import generate

OUT = Path(__file__).parent / "results"


def bench(size: str, batch: int = 64, new_tokens: int = 32, repeats: int = 7) -> dict:
    tok = build_tokenizer()
    model = build_tiny_model(tok, size).eval()
    with torch.no_grad():  # no EOS: every row generates exactly new_tokens tokens
        model.lm_head.weight[tok.eos_token_id].zero_()
        model.model.embed_tokens.weight[tok.eos_token_id].zero_()
    prompts = [f"{i % 10}+{(3 * i) % 10}-{(7 * i) % 10}=?\n" for i in range(batch)]
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"lean": [], "hf": []}
    for backend in times:  # warm-up
        generate(model, tok, prompts, max_new_tokens=new_tokens, generator=gen, backend=backend)
    for _ in range(repeats):
        for backend, ts in times.items():
            t0 = time.perf_counter()
            r = generate(model, tok, prompts, max_new_tokens=new_tokens, generator=gen, backend=backend)
            ts.append(time.perf_counter() - t0)
    tokens = int(r.response_mask.sum())
    out = {"size": size, "parameters": num_parameters(model), "batch": batch, "new_tokens": new_tokens}
    out["generated_tokens"] = tokens
    for backend, ts in times.items():
        med = statistics.median(ts)
        out[backend] = {
            "seconds_median": med,
            "seconds_min": min(ts),
            "seconds_max": max(ts),
            "tokens_per_s_median": tokens / med,
        }
    return out


def main() -> None:
    torch.set_num_threads(2)
    rows = [bench("tiny1m"), bench("tiny10m")]
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rollout_speed.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "| model | params | batch x new tokens | backend | s (median, min-max) | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for backend in ("lean", "hf"):
            b = r[backend]
            lines.append(
                f"| {r['size']} | {r['parameters']:,} | {r['batch']} x {r['new_tokens']} | {backend} | "
                f"{b['seconds_median']:.3f} ({b['seconds_min']:.3f}-{b['seconds_max']:.3f}) | "
                f"{b['tokens_per_s_median']:,.0f} |"
            )
    (OUT / "rollout_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
