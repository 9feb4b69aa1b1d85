"""The lean backend on a GPU: agreement with the model's own forward, and speed, at a Qwen-sized vocabulary.

    PYTHONPATH=src python3 benchmarks/lean_cuda.py [OUT_DIR]   # writes lean_cuda.json and lean_cuda.md

A Llama-architecture model (hidden 512, 8 layers, 8 heads with 4 kv heads, vocabulary 151,936) with random
weights, on CUDA. For fp32 and bf16: the largest difference between ``teacher_forced(backend="lean")`` and
``backend="hf"`` (log-probs, entropies, and the largest gradient difference relative to the largest
gradient), then the time of one ``generate`` (16 prompts x 8 samples x 128 new tokens; with random weights EOS has
probability ~1/V per token, so rows run to the end) and of
one forward+backward over its tokens with each backend, median of 5 after a warm-up.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from entrolab.rollout import generate, teacher_forced


class Tok:
    """Random prompts as token ids: the bits of a tokenizer that ``generate`` uses."""

    def __init__(self, vocab: int) -> None:
        self.eos_token_id, self.pad_token_id, self.vocab = 2, 0, vocab

    def __call__(self, prompts, return_tensors, padding, padding_side):
        g = torch.Generator().manual_seed(0)
        lens = [8 + (i * 7) % 17 for i in range(len(prompts))]
        width = max(lens)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lens):
            ids[i, width - n :] = torch.randint(3, self.vocab, (n,), generator=g)
            mask[i, width - n :] = 1
        return {"input_ids": ids, "attention_mask": mask}


def timed(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def fwd_bwd(model, r, backend: str) -> None:
    model.zero_grad(set_to_none=True)
    lp, _, _ = teacher_forced(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, backend=backend)
    (lp * r.response_mask).sum().backward()


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    cfg = LlamaConfig(
        vocab_size=151_936,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    tok = Tok(cfg.vocab_size)
    prompts = [str(i) for i in range(16)]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = LlamaForCausalLM(cfg).to("cuda", dtype)
        model.load_state_dict(base.state_dict())
        gen = torch.Generator(device="cuda").manual_seed(0)
        r = generate(model, tok, prompts, group_size=8, max_new_tokens=128, generator=gen)
        args = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        m = r.response_mask.bool()
        res = {}
        for backend in ("hf", "lean"):
            model.zero_grad(set_to_none=True)
            lp, ent, _ = teacher_forced(model, *args, backend=backend)
            ((lp * r.response_mask).sum() + 0.1 * (ent * r.response_mask).sum()).backward()
            grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
            res[backend] = (lp.float(), ent.float(), grads)
        gmax = max(float(g.abs().max()) for g in res["hf"][2].values())
        row = {
            "dtype": str(dtype).removeprefix("torch."),
            "max_logp_diff": float((res["lean"][0] - res["hf"][0])[m].abs().max()),
            "max_entropy_diff": float((res["lean"][1] - res["hf"][1])[m].abs().max()),
            "max_grad_diff_rel": max(float((res["lean"][2][n] - res["hf"][2][n]).abs().max()) for n in res["hf"][2])
            / gmax,
            "tokens": int(r.response_mask.sum()),
        }
        for backend in ("hf", "lean"):
            row[f"{backend}_generate_s"] = timed(
                lambda b=backend, m_=model, g=gen: generate(
                    m_, tok, prompts, group_size=8, max_new_tokens=128, generator=g, backend=b
                )
            )
            row[f"{backend}_fwd_bwd_s"] = timed(lambda b=backend, m_=model, r_=r: fwd_bwd(m_, r_, b))
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": "hidden 512, 8 layers"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lean_cuda.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [
        f"# lean vs hf backend on {meta['device']} (torch {meta['torch']})",
        "",
        "Llama, hidden 512, 8 layers, GQA 8/4 heads, vocabulary 151,936, random weights; 16 prompts x 8 samples x "
        "128 new tokens. Written by `PYTHONPATH=src python3 benchmarks/lean_cuda.py`.",
        "",
        "| dtype | max logp diff | max entropy diff | max grad diff / max grad | generate hf / lean s "
        "| fwd+bwd hf / lean s |",
        "|---|---|---|---|---|---|",
    ]
    for w in rows:
        lines.append(
            f"| {w['dtype']} | {w['max_logp_diff']:.2e} | {w['max_entropy_diff']:.2e} | {w['max_grad_diff_rel']:.2e} "
            f"| {w['hf_generate_s']:.3f} / {w['lean_generate_s']:.3f} "
            f"| {w['hf_fwd_bwd_s']:.3f} / {w['lean_fwd_bwd_s']:.3f} |"
        )
    (out_dir / "lean_cuda.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
