"""Rollout throughput: KV-cache sampling of a batch of 64 prompts x 32 new tokens on the tiny models.

    python benchmarks/rollout_speed.py            # writes benchmarks/results/rollout_speed.json and .md

Every sequence generates exactly 32 tokens (EOS is masked out of the distribution for this measurement), so
tokens/s = 64 * 32 / seconds. The number quoted is the median of several repeats after a warm-up.
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


def bench(size: str, batch: int = 64, new_tokens: int = 32, repeats: int = 5) -> dict:
    tok = build_tokenizer()
    model = build_tiny_model(tok, size).eval()
    with torch.no_grad():  # no EOS: every row generates exactly new_tokens tokens
        model.lm_head.weight[tok.eos_token_id].zero_()
        model.model.embed_tokens.weight[tok.eos_token_id].zero_()
    prompts = [f"{i % 10}+{(3 * i) % 10}-{(7 * i) % 10}=?\n" for i in range(batch)]
    gen = torch.Generator().manual_seed(0)
    generate(model, tok, prompts, max_new_tokens=new_tokens, generator=gen)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = generate(model, tok, prompts, max_new_tokens=new_tokens, generator=gen)
        times.append(time.perf_counter() - t0)
    tokens = int(r.response_mask.sum())
    med = statistics.median(times)
    return {
        "size": size,
        "parameters": num_parameters(model),
        "batch": batch,
        "new_tokens": new_tokens,
        "generated_tokens": tokens,
        "seconds_median": med,
        "seconds_min": min(times),
        "seconds_max": max(times),
        "tokens_per_s_median": tokens / med,
    }


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
    lines = ["| model | params | batch x new tokens | s (median, min-max) | tokens/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['parameters']:,} | {r['batch']} x {r['new_tokens']} | "
            f"{r['seconds_median']:.3f} ({r['seconds_min']:.3f}-{r['seconds_max']:.3f}) | "
            f"{r['tokens_per_s_median']:,.0f} |"
        )
    (OUT / "rollout_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
