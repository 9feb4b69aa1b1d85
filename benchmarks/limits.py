"""What this machine allows on the vs_trl workload: how far past TRL's GRPOTrainer any trainer could get.

    .venv-ref/bin/python benchmarks/limits.py    # writes benchmarks/results/limits.json and .md, about 4 minutes

(the reference venv, ``pip install -e ".[reference]"``, has TRL, which part 4 runs.)

The workload is ``benchmarks/vs_trl.py``'s: a fresh tiny1m (hidden 128, 4 layers, MLP 512, vocabulary 100),
8 prompts x 8 samples of the arithmetic task, at most 32 new tokens, fp32, on this machine's 2 cores. Measured:

1. **GEMM speed**: ``F.linear`` GFLOP/s at the step's shapes (64 decode rows; about 1,850 trained tokens) and at
   2048^3, on 1 thread, on 2 threads, and in two single-thread processes that run at the same moment (does one
   core slow down when the other works?).
2. **Processes instead of threads**: the step's bare parts (``generate`` of the batch + one forward/backward
   over it) by one process with 2 threads, against two processes with 1 thread each that take half of the
   prompts. Both processes pass a barrier before every repeat, so they really run at the same time, and a repeat
   counts the slower one.
3. **The fastest decode step found**: lean's eager decode step against the same arithmetic written as one
   static-shape function compiled by ``torch.compile`` (inductor), 64 rows; with the compile time.
4. **The bound**, in 5 rounds, each part measured within its round against this machine's drift: TRL's step
   (``vs_trl.py``'s TRL side, 1 warm-up + 3 steps) against a lower bound on a step: the compiled decode (scaled to
   the rollout's row-steps) + the update's dense matrix multiplies alone (``vs_trl.matmul_floor_parts``) + the
   update's attention alone + one AdamW step; also without the update's forward (a trainer that kept the
   sampling pass's activations could skip it; entrolab does not). The decode counts the faster of the
   compiled step and the decode's matrix multiplies alone.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

OUT = Path(__file__).parent / "results"
P, G, MAX_NEW = 8, 8, 32
SHAPES = {  # (rows, in, out): decode at 64 rows, update at ~1,850 tokens, and a large square one
    "decode q|k|v": (64, 128, 384),
    "decode gate|up": (64, 128, 1024),
    "decode down": (64, 512, 128),
    "update q|k|v": (1850, 128, 384),
    "update gate|up": (1850, 128, 1024),
    "update down": (1850, 512, 128),
    "2048^3": (2048, 2048, 2048),
}


def _vs_trl():
    spec = importlib.util.spec_from_file_location("vs_trl", Path(__file__).parent / "vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gflops(rows: int, k: int, n: int, seconds: float = 0.5) -> float:
    """GFLOP/s of ``F.linear`` [rows, k] x [n, k]^T on this process's threads, over about ``seconds``."""
    a, w = torch.randn(rows, k), torch.randn(n, k)
    for _ in range(5):
        F.linear(a, w)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        F.linear(a, w)
        reps += 1
    return 2 * rows * k * n * reps / (time.perf_counter() - t0) / 1e9


def _gemm_child(rank: int, barrier, queue) -> None:
    torch.set_num_threads(1)
    out = {}
    for name, shape in SHAPES.items():
        barrier.wait()
        out[name] = gflops(*shape)
    queue.put((rank, out))


def gemm() -> dict:
    rows = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows[f"{threads} thread(s)"] = {name: gflops(*shape) for name, shape in SHAPES.items()}
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_gemm_child, args=(r, barrier, queue)) for r in range(2)]
    for p in procs:
        p.start()
    both = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    rows["2 processes x 1 thread, each"] = both[0]
    rows["2 processes x 1 thread, sum"] = {k: both[0][k] + both[1][k] for k in SHAPES}
    torch.set_num_threads(2)
    return rows


def _bare_child(rank: int, n_procs: int, threads: int, repeats: int, barrier, queue) -> None:
    torch.set_num_threads(threads)
    from entrolab.models import build_tiny_model, build_tokenizer
    from entrolab.tasks import make_task

    vs_trl = _vs_trl()
    tok = build_tokenizer()
    model = build_tiny_model(tok, "tiny1m", seed=0)
    task = make_task("arithmetic", seed=0)
    prompts = [task.prompt(e) for e in task.train[:P]]
    share = prompts[rank * P // n_procs : (rank + 1) * P // n_procs]
    gen = torch.Generator().manual_seed(rank)
    times = []
    for i in range(repeats + 2):  # the first two are a warm-up
        barrier.wait()
        r, gen_s, fwd_bwd_s = vs_trl.bare_parts(model, tok, share, gen)
        if i >= 2:
            times.append((gen_s + fwd_bwd_s, float(r.response_mask.sum())))
    queue.put((rank, times))


def processes(repeats: int = 10, rounds: int = 2) -> dict:
    """Seconds of the bare parts per repeat: 1 process x 2 threads (all prompts) vs 2 x 1 (half each)."""
    ctx = mp.get_context("spawn")
    out: dict[str, list[float]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    tokens: dict[str, list[float]] = {k: [] for k in out}
    for _ in range(rounds):  # alternate, against the machine's drift
        for name, (n, threads) in {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}.items():
            barrier, queue = ctx.Barrier(n), ctx.Queue()
            procs = [ctx.Process(target=_bare_child, args=(r, n, threads, repeats, barrier, queue)) for r in range(n)]
            for p in procs:
                p.start()
            res = dict(queue.get() for _ in procs)
            for p in procs:
                p.join()
            for i in range(repeats):  # a repeat takes as long as its slower process
                out[name].append(max(res[r][i][0] for r in res))
                tokens[name].append(sum(res[r][i][1] for r in res))
    return {
        k: {"seconds_median": statistics.median(v), "tokens_mean": statistics.mean(tokens[k])} for k, v in out.items()
    }


def decode_step():
    """Lean's eager decode step and a compiled static-shape equivalent, 64 rows.  -> (compile info, a function
    that times both: (eager ms, compiled ms) per step)."""
    from entrolab.lean import LeanDecoder, _rms, distinct_prompts
    from entrolab.models import build_tiny_model, build_tokenizer
    from entrolab.rollout import encode_prompts
    from entrolab.tasks import make_task

    tok = build_tokenizer()
    model = build_tiny_model(tok, "tiny1m", seed=0)
    task = make_task("arithmetic", seed=0)
    lean = LeanDecoder.of(model)
    ids, mask = encode_prompts(tok, [task.prompt(e) for e in task.train[:P]])
    uids, umask, rows = distinct_prompts(ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0))
    h, kv, d, eps, scale = lean.heads, lean.kv_heads, lean.head_dim, lean.eps, lean.scale

    def rms(x: torch.Tensor) -> torch.Tensor:
        return _rms(x, None, eps)

    def step(tokens, pos, slot, bias, ks, vs, emb, cos_t, sin_t, qkvw, ow, guw, dw, normw, headw):
        """One decode step over the whole preallocated cache (unfilled slots masked by ``bias``): static shapes."""
        x = F.embedding(tokens, emb)
        n, half = x.shape[0], d // 2
        cos, sin = cos_t[pos][:, None], sin_t[pos][:, None]  # [n, 1, d]
        for i in range(len(qkvw)):
            qkv = F.linear(rms(x), qkvw[i]).view(n, h + 2 * kv, d)
            qk = qkv[:, : h + kv]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
            ks[i].index_copy_(2, slot, qk[:, h:, None])
            vs[i].index_copy_(2, slot, qkv[:, h + kv :, None])
            s = torch.einsum("nhd,nhld->nhl", qk[:, :h], ks[i]) * scale + bias[:, None]
            x = x + F.linear(torch.einsum("nhl,nhld->nhd", s.softmax(-1), vs[i]).reshape(n, h * d), ow[i])
            g, u = F.linear(rms(x), guw[i]).chunk(2, -1)
            x = x + F.linear(F.silu(g) * u, dw[i])
        return F.linear(rms(x) * normw, headw)

    def run(fn) -> tuple[float, list[torch.Tensor]]:
        with torch.no_grad():
            logits, cache = lean.start(uids, umask, rows, MAX_NEW)
            nxt, outs = logits.argmax(-1), []
            if fn is not None:
                plan = cache.plan
                weights = (
                    [w.qkv[0] for w in plan],
                    [w.o.weight for w in plan],
                    [w.gu[0] for w in plan],
                    [w.down.weight for w in plan],
                )
                cos_t, sin_t = lean.tables(cache.tp + MAX_NEW + 1, logits)
                bias = cache.bias.clone()
                bias[:, cache.tp :] = float("-inf")
            t0 = time.perf_counter()
            for _ in range(MAX_NEW - 1):
                if fn is None:
                    logits = lean.step(nxt, cache)
                else:
                    bias[:, cache.length] = 0
                    slot = torch.tensor([cache.length])
                    logits = fn(nxt, cache.positions(), slot, bias, cache.k, cache.v, lean.embed.weight, cos_t, sin_t,
                                *weights, lean.norm.weight, lean.head.weight)  # fmt: skip
                    cache.length += 1
                nxt = logits.argmax(-1)
                outs.append(logits)
            return (time.perf_counter() - t0) / (MAX_NEW - 1), outs

    _, ref = run(None)
    t0 = time.perf_counter()
    compiled = torch.compile(step, dynamic=False)
    _, got = run(compiled)
    compile_s = time.perf_counter() - t0
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))

    def measure() -> tuple[float, float]:
        """(eager, compiled) ms per step, the median of 3 alternating runs each."""
        eager, fast = [], []
        for _ in range(3):
            eager.append(run(None)[0])
            fast.append(run(compiled)[0])
        return 1e3 * statistics.median(eager), 1e3 * statistics.median(fast)

    return {"rows": len(rows), "compile_s": compile_s, "max_logit_diff": diff}, measure


def update_attention(model, r) -> dict[str, float]:
    """Seconds of the update's attention alone (SDPA over every layer, forward and backward), at the shapes of
    ``entrolab.lean.response_hidden`` for rollout ``r``: the response tokens of all rows attending to their
    prompt and earlier response tokens (the prompts' own attention, 8 short rows, left out)."""
    cfg = model.config
    h, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    b, tp = r.prompt_ids.shape
    tr = int(r.response_mask.sum(-1).max()) - 1
    causal = torch.ones(tr, tr, dtype=torch.bool).tril()
    mask = torch.cat([r.prompt_mask.bool()[:, None, :].expand(b, tr, tp), causal[None].expand(b, tr, tr)], -1)
    mask = mask[:, None]  # [B, 1, tr, Tp + tr]
    fwd, bwd = [], []
    for _ in range(8):
        q = torch.randn(b, h, tr, d, requires_grad=True)
        k = torch.randn(b, h, tp + tr, d, requires_grad=True)
        v = torch.randn(b, h, tp + tr, d, requires_grad=True)
        t0 = time.perf_counter()
        outs = [F.scaled_dot_product_attention(q, k, v, attn_mask=mask) for _ in range(cfg.num_hidden_layers)]
        t1 = time.perf_counter()
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    return {"forward": statistics.median(fwd[2:]), "backward": statistics.median(bwd[2:])}


def bound(measure_decode, rounds: int = 5) -> dict:
    """The least a step could take, per round (all parts measured in that round, against the drift): compiled
    decode over the rollout's row-steps + the update's matmuls alone + its attention alone + an AdamW step."""
    from entrolab.models import build_tiny_model, build_tokenizer
    from entrolab.rollout import generate
    from entrolab.tasks import make_task

    vs_trl = _vs_trl()
    tok = build_tokenizer()
    model = build_tiny_model(tok, "tiny1m", seed=0)
    task = make_task("arithmetic", seed=0)
    prompts = [task.prompt(e) for e in task.train[:P]]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # the trainer's optimizer (foreach)
    per_round = []
    tmp = tempfile.TemporaryDirectory()
    model_dir = vs_trl.build_model(Path(tmp.name) / "tiny1m")
    for i in range(rounds + 1):  # the first round is a warm-up
        trl = vs_trl.child("trl", model_dir, 3, 1, 2) if i else None  # TRL's step, in this round
        eager_ms, compiled_ms = measure_decode()
        r = generate(model, tok, prompts, group_size=G, max_new_tokens=MAX_NEW, generator=gen)
        floor = vs_trl.matmul_floor_parts(model, r)
        row_steps = float((r.response_mask.sum(-1) - 1).clamp(min=0).sum())  # decode steps after the prefill
        compiled = compiled_ms / 1e3 * row_steps / (P * G)  # per-row cost of a 64-row step
        decode = min(compiled, floor["decode"])  # the faster of the compiled step and the decode's matmuls alone
        attn = update_attention(model, r)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        t0 = time.perf_counter()
        opt.step()
        adamw = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        if i:
            trl_s = statistics.median(trl["step_s"])
            lower = decode + floor["forward"] + floor["backward"] + attn["forward"] + attn["backward"] + adamw
            per_round.append(
                {
                    "trl_s_per_step": trl_s,
                    "eager_decode_ms": eager_ms,
                    "compiled_decode_ms": compiled_ms,
                    "matmul_floor_s": floor,
                    "compiled_decode_s": compiled,
                    "decode_s": decode,
                    "update_attention_s": attn,
                    "adamw_step_s": adamw,
                    "lower_bound_s": lower,
                    "lower_bound_no_forward_s": decode + floor["backward"] + attn["backward"] + adamw,
                    "max_speedup": trl_s / lower,
                }
            )
    tmp.cleanup()
    return {
        "rounds": per_round,
        **{
            k: vs_trl._mmm([x[k] for x in per_round])
            for k in ("trl_s_per_step", "lower_bound_s", "lower_bound_no_forward_s", "max_speedup")
        },
        "vs_trl_json": _vs_trl_summary(),
    }


def _vs_trl_summary() -> dict | None:
    """The summary of ``benchmarks/results/vs_trl.json`` for the comparison row, None when there is none."""
    try:
        return json.loads((OUT / "vs_trl.json").read_text())["summary"]
    except (OSError, ValueError, KeyError):
        return None


def write_md(res: dict) -> None:
    g = res["gemm"]
    lines = [
        "# What this machine allows on the vs_trl workload",
        "",
        f"Written by `.venv-ref/bin/python benchmarks/limits.py` ({res['meta']['machine']}, "
        f"{res['meta']['cpus']} CPUs, torch {res['meta']['torch']}). Workload: `benchmarks/vs_trl.py`'s (fresh "
        "tiny1m, 8 prompts x 8, <= 32 new tokens, fp32).",
        "",
        "## 1. GEMM speed, GFLOP/s (`F.linear` [rows, in] x [in, out])",
        "",
        "| shape (rows, in, out) | " + " | ".join(g) + " |",
        "|---|" + "---|" * len(g),
    ]
    for name, shape in SHAPES.items():
        lines.append(f"| {name} {shape} | " + " | ".join(f"{g[k][name]:.0f}" for k in g) + " |")
    pr = res["processes"]
    lines += [
        "",
        "## 2. Processes instead of threads: the bare parts (generate + forward/backward) of one step",
        "",
        "| how | seconds (median) | completion tokens |",
        "|---|---|---|",
        *[f"| {k} | {v['seconds_median']:.3f} | {v['tokens_mean']:.0f} |" for k, v in pr.items()],
        "",
        "Two processes start every repeat together (a barrier); a repeat counts the slower one.",
        "",
        "## 3. The fastest decode step found (64 rows)",
        "",
        f"torch.compile (inductor) of one static-shape decode step: {res['decode']['compile_s']:.1f} s to compile; "
        f"max logit difference from lean's step {res['decode']['max_logit_diff']:.1e}. Its time per step, against"
        " lean's eager step, is in each round of the table below.",
        "",
        "## 4. The bound (seconds per step), per round",
        "",
        "Every part of a round is measured in that round, against this machine's drift. The lower bound is the"
        " decode (the faster of the compiled step, scaled to the rollout's row-steps, and the decode's matmuls"
        " alone) + the update's matmuls + the update's attention + one AdamW step. It leaves out"
        " everything but these parts: the update's norms, RoPE, SiLU, loss, log-probs and gradient clipping, the"
        " sampling of tokens, the prefill, rewards and advantages. TRL / lower bound is thus about the most a"
        " trainer doing this arithmetic in fp32 on this machine could gain over TRL.",
        "",
        "| round | TRL step | decode step eager / compiled (ms) | decode: compiled / matmuls alone"
        " | update matmuls fwd / bwd | update"
        " attention fwd / bwd | AdamW | **lower bound** | without the update's forward | **TRL / lower bound** |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = res["bound"]
    for i, x in enumerate(b["rounds"], 1):
        f, a = x["matmul_floor_s"], x["update_attention_s"]
        lines.append(
            f"| {i} | {x['trl_s_per_step']:.3f} | {x['eager_decode_ms']:.2f} / {x['compiled_decode_ms']:.2f} | "
            f"{x['compiled_decode_s']:.3f} / {f['decode']:.3f} | {f['forward']:.3f} / {f['backward']:.3f} | "
            f"{a['forward']:.3f} / {a['backward']:.3f} | {x['adamw_step_s']:.3f} | **{x['lower_bound_s']:.3f}** | "
            f"{x['lower_bound_no_forward_s']:.3f} | **{x['max_speedup']:.2f}** |"
        )

    def mmm(d: dict) -> str:
        return " / ".join(f"{d[k]:.3f}" for k in ("min", "median", "max"))

    v = b["vs_trl_json"]
    lines += [
        "",
        "| quantity (min / median / max over rounds) | |",
        "|---|---|",
        f"| TRL s/step | {mmm(b['trl_s_per_step'])} |",
        f"| lower bound on a step, s | {mmm(b['lower_bound_s'])} |",
        f"| the same without the update's forward, s | {mmm(b['lower_bound_no_forward_s'])} |",
        f"| **the most any trainer could be faster than TRL: TRL / lower bound** | **{mmm(b['max_speedup'])}** |",
    ]
    if v is not None:  # vs_trl.py's results, when there are any
        lines.append(
            f"| for comparison, entrolab now (`vs_trl.json`): tokens/s ratio | {mmm(v['speedup_tokens_per_s'])} |"
        )
    (OUT / "limits.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if importlib.util.find_spec("trl") is None:  # part 4 runs TRL: fail now, not after parts 1-3
        sys.exit('limits.py runs TRL: use the reference venv (pip install -e ".[reference,dev]"), e.g. .venv-ref')
    torch.set_num_threads(2)
    res = {
        "meta": {
            "machine": platform.processor() or platform.machine(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }
    }
    res["gemm"] = gemm()
    res["processes"] = processes()
    torch.set_num_threads(2)
    res["decode"], measure_decode = decode_step()
    res["bound"] = bound(measure_decode)
    OUT.mkdir(exist_ok=True)
    (OUT / "limits.json").write_text(json.dumps(res, indent=2) + "\n")
    write_md(res)
    print((OUT / "limits.md").read_text())


if __name__ == "__main__":
    main()
