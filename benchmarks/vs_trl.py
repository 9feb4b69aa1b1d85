"""entrolab vs TRL's GRPOTrainer: seconds per GRPO step and completion tokens per second, same model and task.

    .venv-ref/bin/python benchmarks/vs_trl.py            # writes benchmarks/results/vs_trl.json and .md
    .venv-ref/bin/python benchmarks/vs_trl.py --quick    # smoke run: 1 warm-up + 2 steps, 1 repeat
    .venv-ref/bin/python benchmarks/vs_trl.py --profile  # also profile entrolab (needs pip install -e ".[bench]")
    .venv-ref/bin/python benchmarks/vs_trl.py --shape real --repeats 5  # writes benchmarks/results/vs_trl_real.*
    .venv-ref/bin/python benchmarks/vs_trl.py --largest-batch           # adds the largest batch in 24 GiB to them

Both sides run in the same venv (``.venv-ref``: trl 1.16, transformers 5.10.4, entrolab installed -e), each in
a fresh subprocess with ``torch.set_num_threads(2)`` (``--threads``), on the same local model folder (a fresh
``tiny1m`` from ``build_tiny_model``, or ``--model PATH``, e.g. a base from ``entrolab pretrain``), with:
the built-in ``arithmetic`` task's prompts as plain strings, its verifier as the reward, 8 prompts x group
size 8 = 64 completions per step, at most 32 new tokens, temperature 1, top-p 1, no top-k, one PPO epoch
(TRL ``num_iterations=1``), one optimizer step per generation batch, no KL (beta 0), GRPO loss
(seq-mean-token-mean; TRL ``loss_type="grpo"``), AdamW lr 1e-4 constant, betas (0.9, 0.99), clip 1.0, fp32, no
vLLM. The sides run alternately (who goes first rotates every repeat), a warm-up step each, then ``--steps``
steps. Sides: ``trl``; ``entrolab`` (``backend="auto"``: the lean forward of ``entrolab.lean``); and, unless
``--no-hf``, ``entrolab-hf`` (``backend="hf"``: the model's own Hugging Face forward), the "before" of the
lean backend. This machine's speed drifts by tens of percent over minutes, so compare sides within a repeat
and use several repeats (``--repeats 5`` for the quoted results).

What is timed, per step:
- TRL: wall time from ``on_step_begin`` to ``on_step_end`` of a ``TrainerCallback``: generation, reward,
  advantages, forward/backward and the optimizer step (logging after the step is not counted).
- entrolab: the trainer's own ``time/step`` (rollout, reward, advantages, update incl. the optimizer step).
Completion tokens per step are 64 x the mean completion length (EOS included) each side logs.

entrolab's step is also compared with its bare parts, measured in the same process right after training on
the same model: one ``entrolab.rollout.generate`` of the 64-sequence batch alone, plus one forward+backward
(``teacher_forced`` and a mean log-prob loss, no optimizer) over exactly those tokens. The overhead ratio is
per token: (step seconds / step tokens) / ((generate + forward-backward seconds) / bare tokens).

On a shared machine use ``--threads 1``: two OpenMP threads on two busy cores can make the small matmuls of
the tiny model 5-20x slower (barrier waits), which swamps everything else.

With ``--profile`` (which needs pyinstrument, ``pip install -e ".[bench]"``, checked before anything runs), one
more entrolab run is profiled with pyinstrument, plus torch.profiler tables of the bare parts, and the text report
is written to ``benchmarks/results/vs_trl_profile.txt``. The results files are written first, so a failed
profile run loses nothing; they are rewritten to point at the profile once it exists.

``--shape real`` (``benchmarks/real_shape.py`` builds it: a 54.5M-parameter Qwen2 with Qwen's 151,936-entry
vocabulary, a byte-level BPE tokenizer trained on the task and padded to that size, and an EOS bias in the
weights that spreads completion lengths about geometrically, mean ~92 of at most 256) runs the sides ``trl`` and
``entrolab`` only, 8 prompts x 8 samples, <= 256 new tokens, everything else as above, alternating who goes
first; it reports s/step, completion tokens/s, the rollout/update split (TRL: ``_generate_and_score_completions``
vs the rest; entrolab: ``time/step - time/update`` vs ``time/update``) and each side's peak RSS (``VmHWM`` of its
process), with entrolab-vs-TRL ratios as min / median / max over repeats, in
``benchmarks/results/vs_trl_real.json`` and ``.md``. ``--largest-batch`` finds, per side, the largest batch
(prompts x 8, prompts doubling from 8) whose one training step fits in ``--memory-gib`` (24), each attempt in its
own process under an address-space cap (``real_shape.cap_memory``), and merges the table into the same files.
``--quick`` shrinks the real shape to 2 prompts x 8 and 64 new tokens (smoke runs; use ``--out`` to keep them out
of ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"
P, G, MAX_NEW, LR = 8, 8, 32, 1e-4


def _setup(threads: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)


def run_trl(
    model_dir: str,
    steps: int,
    warmup: int,
    threads: int,
    prompts: int = P,
    group: int = G,
    max_new: int = MAX_NEW,
    mem_cap_gib: float | None = None,
) -> dict:
    _setup(threads)
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from entrolab.tasks import make_task

    capped = _cap(mem_cap_gib)  # after the imports: what they reserved but never touched does not count
    transformers.logging.set_verbosity_error()
    task = make_task("arithmetic", seed=0)
    examples = list(task.train[: 64 * prompts])
    ds = Dataset.from_list([{"prompt": task.prompt(e), "idx": i} for i, e in enumerate(examples)])

    def verifier(prompts, completions, idx, **kw) -> list[float]:
        return [float(task.verify(c, examples[i]).score) for c, i in zip(completions, idx, strict=True)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.lengths: list[float] = []
            self.threads = 0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.threads = torch.get_num_threads()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out,
            max_steps=warmup + steps,
            per_device_train_batch_size=prompts * group,
            gradient_accumulation_steps=1,
            num_generations=group,
            max_completion_length=max_new,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            num_iterations=1,
            beta=0.0,
            loss_type="grpo",
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            adam_beta2=0.99,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            logging_steps=1,
            report_to="none",
            use_vllm=False,
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        timer = Timer()
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=verifier, args=cfg, train_dataset=ds)
        trainer.add_callback(timer)
        rollout_s: list[float] = []  # per step: generation, rewards, advantages (everything before the loss)
        generate_and_score = trainer._generate_and_score_completions

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = generate_and_score(*a, **kw)
            rollout_s.append(time.perf_counter() - t0)
            return out

        trainer._generate_and_score_completions = timed
        trainer.train()
        memory = _memory(capped)
    times, lengths = timer.times[warmup:], timer.lengths[warmup:]
    return {
        "side": "trl",
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "threads": timer.threads,
        "step_s": times,
        "tokens": [n * prompts * group for n in lengths],
        "rollout_s": rollout_s[warmup:],
        "update_s": [t - r for t, r in zip(times, rollout_s[warmup:], strict=True)],
        **memory,
    }


def run_entrolab(
    model_dir: str,
    steps: int,
    warmup: int,
    threads: int,
    profile: bool = False,
    backend: str = "auto",
    prompts: int = P,
    group: int = G,
    max_new: int = MAX_NEW,
    mem_cap_gib: float | None = None,
    bare: bool = True,
) -> dict:
    """entrolab's side; ``bare``: also time the bare parts (``bare_parts``, ``matmul_floor``) after training."""
    _setup(threads)
    from dataclasses import replace

    import torch

    from entrolab.config import base_config
    from entrolab.models import load_policy
    from entrolab.rollout import generate, teacher_forced
    from entrolab.tasks import make_task
    from entrolab.trainer import train

    capped = _cap(mem_cap_gib)
    with tempfile.TemporaryDirectory() as out:
        cfg = replace(
            base_config("grpo"),
            model=model_dir,
            task="arithmetic",
            out=out,
            steps=warmup + steps,
            prompts_per_step=prompts,
            group_size=group,
            max_new_tokens=max_new,
            temperature=1.0,
            top_p=1.0,
            ppo_epochs=1,
            minibatches=1,
            micro_batch_size=None,
            lr=LR,
            lr_schedule="constant",
            warmup_steps=0,
            eval_every=0,
            eval_samples=1,
            eval_prompts=1,
            save_every=0,
            progress=False,
            threads=threads,
            backend=backend,
            # the same work as TRL's step: no same-state entropy probe (a diagnostic TRL does not run; about
            # 15 ms a step here, quoted in benchmarks/results/entropy_change.md)
            **({"entropy_probe": 0} if hasattr(base_config("grpo"), "entropy_probe") else {}),
        )
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.002)
            profiler.start()
        train(cfg, log=lambda *a: None)
        memory = _memory(capped)  # before the bare parts below
        if profiler is not None:
            profiler.stop()
            OUT.mkdir(exist_ok=True)
            (OUT / "vs_trl_profile.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > warmup and "time/step" in r]
    result = {
        "side": "entrolab",
        "threads": torch.get_num_threads(),
        "step_s": [r["time/step"] for r in rows],
        "rollout_s": [r["time/rollout"] for r in rows],
        "reward_s": [r["time/reward"] for r in rows],
        "update_s": [r["time/update"] for r in rows],
        "tokens": [r["len/mean"] * prompts * group for r in rows],
        **memory,
    }
    if not bare:
        return result
    # --- bare parts (the tiny shape's P, G, MAX_NEW): KV-cache generation of one batch alone + one
    # forward/backward over the same tokens
    model, tok = load_policy(model_dir)
    task = make_task("arithmetic", seed=0)
    texts = [task.prompt(e) for e in task.train[:P]]
    gen = torch.Generator().manual_seed(0)
    bare = {"generate_s": [], "fwd_bwd_s": [], "tokens": [], "matmul_floor_s": []}
    for _ in range(max(steps, 2) + 1):
        r, gen_s, fwd_bwd_s = bare_parts(model, tok, texts, gen, backend)
        bare["generate_s"].append(gen_s)
        bare["fwd_bwd_s"].append(fwd_bwd_s)
        bare["tokens"].append(float(r.response_mask.sum()))
        bare["matmul_floor_s"].append(matmul_floor(model, r))
    result["bare"] = {k: v[1:] for k, v in bare.items()}  # the first is a warm-up
    if profile:  # which aten ops the two bare parts spend their time in
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        tables = []
        for name in ("generate", "forward+backward"):
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                if name == "generate":
                    generate(model, tok, texts, group_size=G, max_new_tokens=MAX_NEW, generator=gen, backend=backend)
                else:
                    logp, _, _ = teacher_forced(
                        model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, backend=backend
                    )
                    (-(logp * r.response_mask).sum() / r.response_mask.sum()).backward()
                    model.zero_grad(set_to_none=True)
            tables.append(f"\n--- aten ops of one bare {name} (torch.profiler) ---\n")
            tables.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        with open(OUT / "vs_trl_profile.txt", "a") as f:
            f.write("".join(tables))
    return result


def bare_parts(model, tok, prompts: list[str], gen, backend: str = "auto"):
    """One step's bare parts: ``generate`` of G samples per prompt alone, then one forward+backward over exactly
    those tokens (``teacher_forced`` and a mean log-prob loss, no optimizer).  -> (rollout, generate seconds,
    forward+backward seconds)"""
    from entrolab.rollout import generate, teacher_forced

    t0 = time.perf_counter()
    r = generate(
        model, tok, prompts, group_size=G, max_new_tokens=MAX_NEW, temperature=1.0, generator=gen, backend=backend
    )
    t1 = time.perf_counter()
    model.train()
    logp, _, _ = teacher_forced(
        model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, 1.0, backend=backend
    )
    (-(logp * r.response_mask).sum() / r.response_mask.sum()).backward()
    model.zero_grad(set_to_none=True)
    return r, t1 - t0, time.perf_counter() - t1


def matmul_floor(model, r) -> float:
    """Seconds of just the dense matrix multiplies a step over rollout ``r`` cannot avoid, timed here (the sum of
    ``matmul_floor_parts``)."""
    return sum(matmul_floor_parts(model, r).values())


def matmul_floor_parts(model, r) -> dict[str, float]:
    """Seconds of just the dense matrix multiplies a step over rollout ``r`` cannot avoid, timed here, by part:
    ``decode`` (sampling), ``forward`` and ``backward`` (the update).

    Sampling: one decode step per generated token position over the rows still generating (each row's
    prompt once per distinct prompt, prefill included), forward only. Update: forward + backward over every
    trained token (the distinct prompts' tokens and each response but its last token). Each layer's q/k/v/o and
    MLP weights, at the step's exact row counts; no attention, norms, sampling or Python around them. A step
    can approach this, never beat it, so TRL's step / this floor bounds the speed-up any implementation of the
    same arithmetic could show.
    """
    import torch
    import torch.nn.functional as F

    from entrolab.lean import distinct_prompts

    weights = []
    for ly in model.model.layers:
        a, m = ly.self_attn, ly.mlp
        weights += [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight]
        weights += [m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight]
    weights.append(model.lm_head.weight)

    def chain(x: torch.Tensor) -> torch.Tensor:
        wide = x.new_ones(x.shape[0], model.config.intermediate_size, requires_grad=x.requires_grad)
        out = x.new_zeros(())
        for w in weights:
            out = out + F.linear(x if w.shape[1] == x.shape[1] else wide, w).sum()
        return out

    lengths = r.response_mask.sum(-1).long()
    prompt_tokens = int(distinct_prompts(r.prompt_ids, r.prompt_mask)[1].sum())
    d = model.config.hidden_size
    rows_per_step = [int((lengths > t).sum()) for t in range(1, int(lengths.max()))]  # decode steps after prefill
    trained = prompt_tokens + int(lengths.sum()) - len(lengths)
    t0 = time.perf_counter()
    with torch.no_grad():
        chain(torch.ones(prompt_tokens, d))
        for n in rows_per_step:
            chain(torch.ones(n, d))
    t1 = time.perf_counter()
    x = torch.ones(trained, d, requires_grad=True)
    out = chain(x)
    t2 = time.perf_counter()
    out.backward()
    t3 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    return {"decode": t1 - t0, "forward": t2 - t1, "backward": t3 - t2}


def child(
    side: str,
    model_dir: str,
    steps: int,
    warmup: int,
    threads: int,
    check: bool = True,
    watch: bool = False,
    **opts,
) -> dict:
    """Run one side in a fresh process.  ``opts``: ``prompts``, ``group``, ``max_new``, ``mem_cap_gib`` and
    (entrolab) ``bare``. ``watch``: poll the summed RSS of the process's own child processes every 0.5 s from
    here (nothing runs in the measured process) and add their peak to its ``peak_rss_kib``. A failed run
    raises, or with ``check=False`` returns ``{"ok": False, "error": ...}``."""
    cmd = [sys.executable, __file__, "--child", json.dumps([side, model_dir, steps, warmup, threads, opts])]
    kids = {"children_peak_rss_kib": 0, "child_processes": 0}
    if not watch:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        returncode, stdout, stderr = out.returncode, out.stdout, out.stderr
    else:
        rs = _real_shape()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:  # retrying communicate loses no output
                kib, n = rs.descendants_rss_kib(proc.pid)
                kids = {
                    "children_peak_rss_kib": max(kids["children_peak_rss_kib"], kib),
                    "child_processes": max(kids["child_processes"], n),
                }
        returncode = proc.returncode
    if returncode != 0:
        if check:
            raise RuntimeError(f"{side} run failed:\n{stderr[-4000:]}")
        lines = [x for x in stderr.strip().splitlines() if x.strip()]
        return {"side": side, "ok": False, "returncode": returncode, "error": lines[-1] if lines else ""}
    res = {**json.loads(stdout.strip().splitlines()[-1]), "ok": True}
    if watch:
        res.update(kids, peak_rss_kib=res["own_peak_rss_kib"] + kids["children_peak_rss_kib"])
    return res


def _real_shape():
    """``benchmarks/real_shape.py``, however this file was loaded."""
    if "real_shape" not in sys.modules:  # a sibling file of this script, not an installed module
        spec = importlib.util.spec_from_file_location("real_shape", Path(__file__).with_name("real_shape.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["real_shape"] = module
        spec.loader.exec_module(module)
    return sys.modules["real_shape"]


def peak_rss_kib() -> int:
    """This process's peak resident set size so far, KiB."""
    return _real_shape().peak_rss_kib()


def _cap(mem_cap_gib: float | None) -> dict:
    """Cap this process's memory at ``mem_cap_gib`` GiB (``real_shape.cap_memory``; None: no cap).  -> what
    ``_memory`` reads at the end"""
    rs = _real_shape()
    marks = {"rss_after_imports_kib": peak_rss_kib(), "marks": rs.memory_marks()}
    if mem_cap_gib is not None:
        marks["memory_cap"] = rs.cap_memory(int(mem_cap_gib * 2**30))
    return marks


def _memory(capped: dict) -> dict:
    """This process's peak RSS now, KiB (``child(watch=True)`` adds its child processes'), and what the
    address-space cap charged (``real_shape.charged_peak_kib``)."""
    own = peak_rss_kib()
    return {
        "peak_rss_kib": own,
        "own_peak_rss_kib": own,
        "charged_peak_kib": _real_shape().charged_peak_kib(capped["marks"]),
        **capped,
    }


def summarise(run: dict) -> dict:
    s = {
        "s_per_step": statistics.median(run["step_s"]),
        "tokens_per_s": sum(run["tokens"]) / sum(run["step_s"]),
        "mean_tokens_per_step": statistics.mean(run["tokens"]),
    }
    if "bare" in run:
        b = run["bare"]
        parts_s = statistics.median(g + f for g, f in zip(b["generate_s"], b["fwd_bwd_s"], strict=True))
        parts_per_token = sum(b["generate_s"] + b["fwd_bwd_s"]) / sum(b["tokens"])
        s.update(
            generate_s=statistics.median(b["generate_s"]),
            fwd_bwd_s=statistics.median(b["fwd_bwd_s"]),
            parts_s=parts_s,
            matmul_floor_s=statistics.median(b["matmul_floor_s"]),
            step_over_parts_per_token=(sum(run["step_s"]) / sum(run["tokens"])) / parts_per_token,
            rollout_s=statistics.median(run["rollout_s"]),
            reward_s=statistics.median(run["reward_s"]),
            update_s=statistics.median(run["update_s"]),
        )
    return s


def _mmm(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def build_model(out: Path) -> str:
    from entrolab.models import build_tiny_model, build_tokenizer, save_policy

    tok = build_tokenizer()
    return str(save_policy(build_tiny_model(tok, "tiny1m", seed=0), tok, out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, 1 repeat: tiny 1 warm-up + 2 steps; real 2 prompts x 8, <= 64 new tokens, 1 warm-up + 1 step",
    )
    ap.add_argument("--model", help="local HF model folder (default: a fresh tiny1m, saved to a temp folder)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run, after the warm-up")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the results are written, profile one entrolab run with pyinstrument (needs .[bench])",
    )
    ap.add_argument(
        "--no-hf", action="store_true", help="skip the 'before' side: entrolab with backend='hf' (the model's forward)"
    )
    ap.add_argument(
        "--shape",
        choices=["tiny", "real"],
        default="tiny",
        help="tiny: tiny1m, <= 32 new tokens (vs_trl.json); real: a 54.5M Qwen2 with Qwen's 151,936-entry vocabulary"
        ", <= 256 new tokens (benchmarks/real_shape.py; vs_trl_real.json)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per run, before the timed ones")
    ap.add_argument(
        "--largest-batch",
        action="store_true",
        help="real shape: the largest batch (prompts x 8, prompts doubling from 8) each side fits in --memory-gib, "
        "one step per attempt; merged into vs_trl_real.json",
    )
    ap.add_argument("--memory-gib", type=float, default=24.0, help="--largest-batch: the memory cap, GiB")
    ap.add_argument("--max-prompts", type=int, default=1024, help="--largest-batch: stop doubling after this")
    ap.add_argument("--out", help="folder for the results files (default: benchmarks/results)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, model_dir, steps, warmup, threads, *rest = json.loads(args.child)
        opts = rest[0] if rest else {}
        if side == "trl":
            res = run_trl(model_dir, steps, warmup, threads, **{k: v for k, v in opts.items() if k != "bare"})
        else:
            backend = "hf" if side == "entrolab-hf" else "auto"
            profile = side == "entrolab-profile"
            res = run_entrolab(model_dir, steps, warmup, threads, profile=profile, backend=backend, **opts)
        print(json.dumps(res))
        return
    if importlib.util.find_spec("trl") is None:
        ap.error('needs TRL: run it in the reference venv (pip install -e ".[reference,dev]"), e.g. .venv-ref')
    if args.profile and importlib.util.find_spec("pyinstrument") is None:  # fail now, not after the repeats
        ap.error('--profile needs pyinstrument: pip install -e ".[bench]" (in the venv that runs this script)')
    if args.shape == "real" or args.largest_batch:
        if args.profile:
            ap.error("--profile is for the tiny shape")
        main_real(args)
        return
    out_dir = Path(args.out) if args.out else OUT
    steps, repeats, warmup = (2, 1, 1) if args.quick else (args.steps, args.repeats, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_model(Path(tmp) / "tiny1m")
        model_name = args.model or "fresh tiny1m (build_tiny_model seed 0)"
        reps = []
        for i in range(repeats):
            sides = ["trl", "entrolab"] + ([] if args.no_hf else ["entrolab-hf"])
            order = sides[i % len(sides) :] + sides[: i % len(sides)]  # rotate who goes first
            runs = {side: child(side, model_dir, steps, warmup, args.threads) for side in order}
            rep = {side: {**summarise(run), "raw": run} for side, run in runs.items()}
            rep["speedup_s_per_step"] = rep["trl"]["s_per_step"] / rep["entrolab"]["s_per_step"]
            rep["speedup_tokens_per_s"] = rep["entrolab"]["tokens_per_s"] / rep["trl"]["tokens_per_s"]
            b = rep["entrolab"]["raw"]["bare"]
            floor_tokens_per_s = sum(b["tokens"]) / sum(b["matmul_floor_s"])
            rep["ceiling_tokens_per_s"] = floor_tokens_per_s / rep["trl"]["tokens_per_s"]
            if "entrolab-hf" in rep:
                rep["speedup_tokens_per_s_hf"] = rep["entrolab-hf"]["tokens_per_s"] / rep["trl"]["tokens_per_s"]
            reps.append(rep)
            print(
                f"repeat {i + 1}/{repeats}: TRL {rep['trl']['s_per_step']:.2f} s/step, "
                f"entrolab {rep['entrolab']['s_per_step']:.2f} s/step, tokens/s ratio "
                f"{rep['speedup_tokens_per_s']:.2f}, entrolab step / bare parts (per token) "
                f"{rep['entrolab']['step_over_parts_per_token']:.2f}",
                flush=True,
            )
        summary = {
            "speedup_tokens_per_s": _mmm([r["speedup_tokens_per_s"] for r in reps]),
            "speedup_s_per_step": _mmm([r["speedup_s_per_step"] for r in reps]),
            "trl_s_per_step": _mmm([r["trl"]["s_per_step"] for r in reps]),
            "entrolab_s_per_step": _mmm([r["entrolab"]["s_per_step"] for r in reps]),
            "trl_tokens_per_s": _mmm([r["trl"]["tokens_per_s"] for r in reps]),
            "entrolab_tokens_per_s": _mmm([r["entrolab"]["tokens_per_s"] for r in reps]),
            "entrolab_step_over_parts_per_token": _mmm([r["entrolab"]["step_over_parts_per_token"] for r in reps]),
            "ceiling_tokens_per_s": _mmm([r["ceiling_tokens_per_s"] for r in reps]),
        }
        if "entrolab-hf" in reps[0]:
            summary["speedup_tokens_per_s_hf"] = _mmm([r["speedup_tokens_per_s_hf"] for r in reps])
            summary["entrolab_hf_s_per_step"] = _mmm([r["entrolab-hf"]["s_per_step"] for r in reps])
            summary["entrolab_hf_step_over_parts_per_token"] = _mmm(
                [r["entrolab-hf"]["step_over_parts_per_token"] for r in reps]
            )
        import torch

        meta = {
            "quick": args.quick,
            "command": " ".join([".venv-ref/bin/python benchmarks/vs_trl.py", *sys.argv[1:]]),
            "model": model_name,
            "prompts_per_step": P,
            "group_size": G,
            "max_new_tokens": MAX_NEW,
            "steps_timed": steps,
            "warmup_steps": warmup,
            "repeats": repeats,
            "threads": args.threads,
            "python": sys.executable,
            "torch": torch.__version__,
            "trl": reps[0]["trl"]["raw"]["trl"],
            "transformers": reps[0]["trl"]["raw"]["transformers"],
            "machine": platform.processor() or platform.machine(),
            "targets": "entrolab >= 3x TRL in completion tokens/s; entrolab step <= 1.5x its bare parts",
            "profile": None,
        }
        print(write_results(meta, summary, reps, out_dir))  # before anything optional: a failed profile loses nothing
        if args.profile:
            try:
                child("entrolab-profile", model_dir, steps, warmup, args.threads)
            except RuntimeError as err:
                sys.exit(f"results written to {out_dir}/vs_trl.json and .md; the profile run failed: {err}")
            meta["profile"] = "benchmarks/results/vs_trl_profile.txt"
            write_results(meta, summary, reps, out_dir)


SIDES = ("trl", "entrolab")
"""The sides of the real shape (no entrolab-hf 'before' side and no bare parts: each costs about a step)."""


def summarise_real(run: dict, rows: int) -> dict:
    """Medians of one real-shape run; rollout = everything before the update (sampling, rewards, advantages):
    TRL's ``_generate_and_score_completions``, entrolab's ``time/step - time/update``."""
    pre = [s - u for s, u in zip(run["step_s"], run["update_s"], strict=True)]
    return {
        "s_per_step": statistics.median(run["step_s"]),
        "tokens_per_s": sum(run["tokens"]) / sum(run["step_s"]),
        "mean_tokens_per_step": statistics.mean(run["tokens"]),
        "mean_length": statistics.mean(run["tokens"]) / rows,
        "rollout_s": statistics.median(pre),
        "update_s": statistics.median(run["update_s"]),
        "peak_rss_gib": run["peak_rss_kib"] / 2**20,  # own + child processes
        "own_peak_rss_gib": run["own_peak_rss_kib"] / 2**20,
        "children_peak_rss_gib": run["children_peak_rss_kib"] / 2**20,
        "rss_after_imports_gib": run["rss_after_imports_kib"] / 2**20,
    }


REAL_RATIOS = {  # name -> (quantity, numerator side); each > 1 where entrolab is ahead
    "tokens_per_s": ("tokens_per_s", "entrolab"),
    "s_per_step": ("s_per_step", "trl"),
    "rollout_s": ("rollout_s", "trl"),
    "update_s": ("update_s", "trl"),
    "peak_rss": ("peak_rss_gib", "trl"),
}


def main_real(args) -> None:
    """``--shape real`` (throughput, per repeat both sides alternating) or ``--largest-batch``."""
    rs = _real_shape()
    out_dir = Path(args.out) if args.out else OUT
    available = rs.available_gib()
    if args.largest_batch and available < args.memory_gib + 1:
        sys.exit(
            f"--largest-batch: the cap is {args.memory_gib:g} GiB but this machine has {available:.1f} GiB "
            "available: an attempt that grows to the cap would meet the system's OOM killer (which may kill other "
            "processes) before the cap; run it where more memory is free, or lower --memory-gib"
        )
    if args.quick:  # smoke: 2 prompts x 8, <= 64 new tokens, 1 warm-up + 1 step, 1 repeat
        prompts, group, max_new, steps, repeats, warmup = 2, 8, 64, 1, 1, 1
    else:
        prompts, group, max_new = rs.PROMPTS, rs.GROUP, rs.MAX_NEW
        steps, repeats, warmup = args.steps, args.repeats, args.warmup
    shape = {"prompts": prompts, "group": group, "max_new": max_new}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir, model_info = args.model, {"path": args.model}
        else:
            model_info = rs.build(Path(tmp) / "real", max_new_tokens=max_new)
            model_dir = model_info["path"]
        import torch

        meta = {
            "quick": args.quick,
            "command": " ".join([".venv-ref/bin/python benchmarks/vs_trl.py", *sys.argv[1:]]),
            "model": model_info,
            "prompts_per_step": prompts,
            "group_size": group,
            "max_new_tokens": max_new,
            "threads": args.threads,
            "python": sys.executable,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        }
        data = rs.read_results(out_dir)
        if args.largest_batch:
            start = 2 if args.quick else rs.PROMPTS

            def save(partial: dict) -> None:
                data["largest_batch"] = partial
                rs.write_results(out_dir, data)

            data["largest_batch"] = largest_batch(
                model_dir, args.threads, args.memory_gib, start, args.max_prompts, group, max_new, meta, save
            )
            print(rs.write_results(out_dir, data))
            return
        reps = []
        for i in range(repeats):
            order = SIDES if i % 2 == 0 else SIDES[::-1]  # who goes first alternates
            runs = {
                side: child(side, model_dir, steps, warmup, args.threads, bare=False, watch=True, **shape)
                for side in order
            }
            rep = {side: {**summarise_real(run, prompts * group), "raw": run} for side, run in runs.items()}
            rep["ratios"] = {
                name: rep[num][q] / rep[SIDES[1] if num == SIDES[0] else SIDES[0]][q]
                for name, (q, num) in REAL_RATIOS.items()
            }
            reps.append(rep)
            t, e = rep["trl"], rep["entrolab"]
            print(
                f"repeat {i + 1}/{repeats}: TRL {t['s_per_step']:.1f} s/step ({t['rollout_s']:.1f} rollout, "
                f"{t['update_s']:.1f} update, {t['peak_rss_gib']:.2f} GiB), entrolab {e['s_per_step']:.1f} s/step "
                f"({e['rollout_s']:.1f} rollout, {e['update_s']:.1f} update, {e['peak_rss_gib']:.2f} GiB); "
                f"tokens/s ratio {rep['ratios']['tokens_per_s']:.2f}",
                flush=True,
            )
        quantities = (
            *("s_per_step", "tokens_per_s", "rollout_s", "update_s", "mean_length"),
            *("peak_rss_gib", "own_peak_rss_gib", "children_peak_rss_gib"),
        )
        summary = {f"{side}_{q}": _mmm([r[side][q] for r in reps]) for side in SIDES for q in quantities}
        summary.update({f"ratio_{name}": _mmm([r["ratios"][name] for r in reps]) for name in REAL_RATIOS})
        meta.update(
            steps_timed=steps,
            warmup_steps=warmup,
            repeats=repeats,
            trl=reps[0]["trl"]["raw"]["trl"],
            transformers=reps[0]["trl"]["raw"]["transformers"],
        )
        data.update(meta=meta, summary=summary, repeats=reps)
        print(rs.write_results(out_dir, data))


def largest_batch(
    model_dir: str,
    threads: int,
    cap_gib: float,
    start: int,
    max_prompts: int,
    group: int,
    max_new: int,
    meta: dict,
    save=None,
) -> dict:
    """Per side, one training step at ``start`` x ``group``, then with the prompts doubled, each attempt in its own
    process capped at ``cap_gib`` (``real_shape.cap_memory``), until an attempt does not fit or ``max_prompts``.
    An attempt fits when it completes and its peak RSS (its own + its child processes') is at most the cap.
    ``save(result so far)`` is called after every attempt (a long search that dies keeps what it found)."""
    rs = _real_shape()
    attempts: list[dict] = []
    alive = dict.fromkeys(SIDES, True)
    prompts, k = start, 0
    while any(alive.values()) and prompts <= max_prompts:
        for side in SIDES if k % 2 == 0 else SIDES[::-1]:
            if not alive[side]:
                continue
            t0 = time.perf_counter()
            run = child(
                side, model_dir, 1, 0, threads, check=False, bare=False, watch=True,
                prompts=prompts, group=group, max_new=max_new, mem_cap_gib=cap_gib,
            )  # fmt: skip
            row = {"side": side, "prompts": prompts, "group": group, "rows": prompts * group, "ok": run["ok"]}
            if run["ok"]:
                peak = run["peak_rss_kib"] / 2**20
                row.update(
                    fits=peak <= cap_gib,
                    peak_rss_gib=peak,
                    own_peak_rss_gib=run["own_peak_rss_kib"] / 2**20,
                    children_peak_rss_gib=run["children_peak_rss_kib"] / 2**20,
                    charged_gib=run["charged_peak_kib"] / 2**20,
                    s_per_step=run["step_s"][0],
                    mean_length=run["tokens"][0] / (prompts * group),
                )
            else:
                row.update(fits=False, out_of_memory=rs.is_oom(run), error=run["error"][-500:])
            row["wall_s"] = time.perf_counter() - t0
            attempts.append(row)
            alive[side] = row["fits"]
            if save is not None:
                save(_largest(attempts, alive, meta, cap_gib, start, max_prompts))
            print(
                f"largest batch: {side} {prompts}x{group}: "
                + (f"fits, {row['peak_rss_gib']:.2f} GiB, {row['s_per_step']:.1f} s" if row["fits"] else "does not fit")
                + ("" if run["ok"] else f" ({row['error'][-200:]})"),
                flush=True,
            )
        prompts, k = prompts * 2, k + 1
    return _largest(attempts, alive, meta, cap_gib, start, max_prompts)


def _largest(attempts: list[dict], alive: dict, meta: dict, cap_gib: float, start: int, max_prompts: int) -> dict:
    largest = {s: max((a["rows"] for a in attempts if a["side"] == s and a["fits"]), default=None) for s in SIDES}
    return {
        "meta": {**meta, "memory_cap_gib": cap_gib, "start_prompts": start, "max_prompts": max_prompts},
        "attempts": list(attempts),
        "largest_rows": largest,
        "still_fitting_at_max": [s for s in SIDES if alive[s]],
    }


def write_results(meta: dict, summary: dict, reps: list[dict], out: Path = OUT) -> str:
    """Write ``vs_trl.json`` and ``.md`` into ``out`` (``benchmarks/results``).  -> the Markdown text"""
    out.mkdir(exist_ok=True, parents=True)
    (out / "vs_trl.json").write_text(json.dumps({"meta": meta, "summary": summary, "repeats": reps}, indent=2) + "\n")
    return write_md(meta, summary, reps, out)


def write_md(meta: dict, summary: dict, reps: list[dict], out: Path = OUT) -> str:
    def f(d: dict, fmt: str = "{:.2f}") -> str:
        return " / ".join(fmt.format(d[k]) for k in ("min", "median", "max"))

    lines = [
        f"# entrolab vs TRL GRPOTrainer, one GRPO step (CPU, {meta['threads']} threads)",
        "",
        f"Written by `{meta['command']}`: "
        f"{meta['model']}, arithmetic task, {meta['prompts_per_step']} prompts x group {meta['group_size']}, "
        f"<= {meta['max_new_tokens']} new tokens, temperature 1, one PPO epoch, no KL, fp32; "
        f"trl {meta['trl']}, transformers {meta['transformers']}, torch {meta['torch']}; "
        f"{meta['repeats']} repeat(s) of {meta['warmup_steps']} warm-up + {meta['steps_timed']} timed steps "
        "per side, sides alternating. Values are min / median / max over repeats.",
        "",
        "| quantity | min / median / max |",
        "|---|---|",
        f"| TRL s/step | {f(summary['trl_s_per_step'])} |",
        f"| entrolab s/step | {f(summary['entrolab_s_per_step'])} |",
        f"| TRL completion tokens/s | {f(summary['trl_tokens_per_s'], '{:.0f}')} |",
        f"| entrolab completion tokens/s | {f(summary['entrolab_tokens_per_s'], '{:.0f}')} |",
        f"| **speed-up, tokens/s (entrolab / TRL)** | {f(summary['speedup_tokens_per_s'])} |",
        f"| speed-up, s/step (TRL / entrolab) | {f(summary['speedup_s_per_step'])} |",
        f"| **entrolab step / (generate + fwd-bwd), per token** | {f(summary['entrolab_step_over_parts_per_token'])} |",
        f"| ceiling: (tokens / matmul floor) / TRL tokens/s | {f(summary['ceiling_tokens_per_s'])} |",
    ]
    if "speedup_tokens_per_s_hf" in summary:
        lines += [
            f"| before: entrolab backend='hf' s/step | {f(summary['entrolab_hf_s_per_step'])} |",
            f"| before: speed-up, tokens/s (entrolab hf / TRL) | {f(summary['speedup_tokens_per_s_hf'])} |",
            f"| before: step / bare parts, per token | {f(summary['entrolab_hf_step_over_parts_per_token'])} |",
        ]
    lines += [
        "",
        "entrolab = backend 'auto' (the lean forward, `entrolab.lean`); before = backend 'hf', the model's own "
        "Hugging Face forward, as entrolab ran until the lean backend.",
        "",
        "entrolab's step, per repeat (medians, seconds):",
        "",
        "| repeat | step | rollout | reward | update | bare generate | bare fwd+bwd | matmul floor | tokens/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(reps):
        e = r["entrolab"]
        lines.append(
            f"| {i + 1} | {e['s_per_step']:.3f} | {e['rollout_s']:.3f} | {e['reward_s']:.3f} | {e['update_s']:.3f} "
            f"| {e['generate_s']:.3f} | {e['fwd_bwd_s']:.3f} | {e['matmul_floor_s']:.3f} "
            f"| {e['mean_tokens_per_step']:.0f} |"
        )
    lines += [
        "",
        f"Targets: {meta['targets']}.",
        "",
        "Matmul floor: the dense matrix multiplies alone (q/k/v/o, MLP, LM head) at the step's exact row counts, "
        "timed in the same process: decode steps over the rows still generating plus forward+backward over the "
        "trained tokens (see `matmul_floor`). No implementation of the same fp32 arithmetic on this machine "
        "can beat it, so the ceiling row bounds the speed-up over TRL that any trainer could show here.",
        "A tighter bound, which also counts the decode's other work, the update's attention and the optimizer, and "
        "times TRL in the same round: `benchmarks/results/limits.md` (`benchmarks/limits.py`).",
    ]
    if meta["profile"]:
        lines.append(f"Profile of an entrolab run (pyinstrument): `{meta['profile']}`.")
    (out / "vs_trl.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
