"""The real shape of ``benchmarks/vs_trl.py --shape real``: a Qwen2 model with Qwen's vocabulary, built locally.

Nothing is downloaded. ``build(out)`` writes one Hugging Face model folder that both sides load:

- **Tokenizer**: byte-level BPE with Qwen2's own pre-tokenization (transformers' ``Qwen2Tokenizer``: NFC, its
  split regex, ByteLevel), merges trained with the ``tokenizers`` library on the task's prompts and
  demonstrations (``entrolab.pretrain.task_texts``). The arithmetic text supports only a few hundred entries, so
  the vocabulary is then **padded to 151,936 entries** (the tokenizer, not only the embedding): filler entries
  of 3-4 lowercase letters that no merge produces, so encoding is that of the trained tokenizer, while every id
  the model can sample decodes to text, as with a real vocabulary. Specials as in Qwen2.5-Instruct: pad
  ``<|endoftext|>`` and EOS ``<|im_end|>`` (the last two ids), no BOS. transformers 5 loads any ``qwen2``
  folder with ``Qwen2Tokenizer``, which rebuilds the pre-tokenizer, hence training with that one.
- **Model**: ``Qwen2ForCausalLM`` (``QWEN``: hidden 320, 4 layers, 5 heads of 64, 1 KV head, MLP 1280, q/k/v
  bias, RoPE theta 1e6, tied embeddings), 54,522,432 parameters, 48,619,520 of them the embedding / LM head;
  fp32, seed 0. (Above ``entrolab.lean.FUSE_MAX_PARAMS`` = 50M, so entrolab takes the unfused path that real
  Qwen checkpoints take.)
- **Lengths**: a random-init model puts about 1/151,936 on EOS, so every completion would run to the cap. The
  weights are set so that EOS has a near-constant probability ``1 / MEAN_LENGTH`` at every step (lengths about
  geometric, truncated at the cap): residual dimension 0 is a constant ``CLOCK`` (every embedding row has it,
  and no layer writes it: row 0 of each ``o_proj`` and ``down_proj`` is zero), so after the final norm it is
  a near-constant h_0, and the EOS row of the tied embedding gets ``CLOCK + beta`` there: the EOS logit is
  raised by h_0 * beta over every other token, whose logits all get the same h_0 * CLOCK. ``beta`` is solved
  (bisection) so that the mean EOS probability over teacher-forced contexts (prompts + uniform random tokens,
  which is what this near-uniform model samples) is ``1 / MEAN_LENGTH``. The bias is in the weights, so both
  sides sample the same distribution with their own samplers, with no logits processor; it holds exactly
  while the weights stay put, and here they do: a random model scores 0 on every arithmetic prompt, every
  advantage is 0, so every gradient and AdamW step is 0 (the compute is the same as with real rewards). The
  model's other probabilities are near-uniform (entropy about 11.9 nats); no sampler cost depends on that
  (both sides compute the full softmax; top-p is 1, no top-k).

Also the measuring helpers of ``vs_trl.py``: ``peak_rss_kib`` (``VmHWM``), ``descendants_rss_kib`` (a side's own
child processes, polled from outside it) and ``cap_memory`` (``RLIMIT_AS``).
"""

from __future__ import annotations

import itertools
import json
import resource
import string
from pathlib import Path

import torch

VOCAB = 151_936
"""Qwen2/2.5's embedding rows."""
TASK = "arithmetic"
PROMPTS, GROUP, MAX_NEW = 8, 8, 256
"""A step of the real shape: prompts x samples each, at most this many new tokens."""
MEAN_LENGTH = 100.0
"""1 / the per-step EOS probability the weights are set to (before the cap at max_new_tokens)."""
CLOCK = 1.0
"""The constant value of residual dimension 0."""
PAD, EOS = "<|endoftext|>", "<|im_end|>"
QWEN = {
    "hidden_size": 320,
    "intermediate_size": 1280,
    "num_hidden_layers": 4,
    "num_attention_heads": 5,  # head_dim 64
    "num_key_value_heads": 1,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "initializer_range": 0.02,
}
"""Qwen2Config fields of the real shape (besides the vocabulary and the special ids)."""


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB):  # -> (Qwen2Tokenizer, info)
    """Byte-level BPE with Qwen2's pre-tokenization, trained on ``texts``, padded to ``vocab_size`` entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    qwen = Qwen2Tokenizer().backend_tokenizer  # Qwen2's normalizer, pre-tokenizer and decoder, never its vocabulary
    bpe = Tokenizer(models.BPE())
    bpe.normalizer, bpe.pre_tokenizer, bpe.decoder = qwen.normalizer, qwen.pre_tokenizer, qwen.decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    trained = len(vocab)
    fillers = ("".join(t) for n in (3, 4) for t in itertools.product(string.ascii_lowercase, repeat=n))
    for word in fillers:
        if len(vocab) == vocab_size - 2:
            break
        if word not in vocab:  # no merge makes a filler, so the trained encoding is unchanged
            vocab[word] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=PAD, eos_token=EOS, pad_token=PAD)
    tok.padding_side = "left"
    if len(tok) != vocab_size or min(tok.eos_token_id, tok.pad_token_id) != vocab_size - 2:
        raise RuntimeError(f"padded tokenizer has {len(tok)} entries, EOS id {tok.eos_token_id}; want {vocab_size}")
    info = {"trained_entries": trained, "merges": len(merges), "filler_entries": len(vocab) - trained, "specials": 2}
    return tok, info


def qwen2_config(tokenizer):  # -> transformers.Qwen2Config
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **QWEN,
    )


def build_model(tokenizer, seed: int = 0):  # -> Qwen2ForCausalLM
    """A fresh Qwen2 of the real shape, fp32, with the constant residual dimension 0 (EOS bias still 0)."""
    from transformers import Qwen2ForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(qwen2_config(tokenizer))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = CLOCK
        for layer in model.model.layers:  # nothing writes residual dimension 0
            layer.self_attn.o_proj.weight[0] = 0
            layer.mlp.down_proj.weight[0] = 0
    for k in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, k, getattr(tokenizer, k))
    return model


@torch.no_grad()
def eos_terms(model, tokenizer, prompts: list[str], length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per position of ``prompts`` + ``length`` uniform random tokens (the last prompt token on): h_0 (residual
    dimension 0 after the final norm), the EOS logit and the logsumexp of every other logit.  -> [N] each"""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    g = torch.Generator().manual_seed(seed)
    n = len(prompts)
    ordinary = len(tokenizer) - 2  # never the specials
    ids = torch.cat([enc["input_ids"], torch.randint(ordinary, (n, length), generator=g)], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones(n, length, dtype=torch.long)], 1)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -length - 1 : -1]  # [n, L, D]
    h = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
    eos = tokenizer.eos_token_id
    weight = model.lm_head.weight
    z_eos, rest = [], []
    for chunk in h.split(256):
        z = chunk @ weight.T  # [c, V]
        z_eos.append(z[:, eos].clone())
        z[:, eos] = float("-inf")
        rest.append(torch.logsumexp(z, -1))
    return {"h0": h[:, 0], "z_eos": torch.cat(z_eos), "lse_rest": torch.cat(rest)}


def solve_beta(terms: dict[str, torch.Tensor], hazard: float) -> float:
    """The EOS offset beta with mean_t sigmoid(z_eos + h_0 beta - lse_rest) = hazard (bisection)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        p = torch.sigmoid(terms["z_eos"] + terms["h0"] * mid - terms["lse_rest"]).mean()
        lo, hi = (mid, hi) if p < hazard else (lo, mid)
    return (lo + hi) / 2


def build(out: str | Path, max_new_tokens: int = MAX_NEW, seed: int = 0) -> dict:
    """Build and save the real-shape model folder at ``out``; returns its description (for the results), with
    the expected lengths at ``max_new_tokens`` (the weights do not depend on it)."""
    import transformers

    from entrolab.models import num_parameters
    from entrolab.pretrain import task_texts
    from entrolab.tasks import make_task

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    task = make_task(TASK, seed=0)
    tok, tok_info = train_tokenizer(task_texts(task, seed=seed))
    model = build_model(tok, seed)
    prompts = [task.prompt(e) for e in task.train[:8]]
    terms = eos_terms(model, tok, prompts, MAX_NEW, seed)  # at the full length, whatever max_new_tokens
    beta = solve_beta(terms, 1 / MEAN_LENGTH)
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.eos_token_id, 0] += beta  # tied: the LM head's EOS row too
    p = torch.sigmoid(terms["z_eos"] + terms["h0"] * beta - terms["lse_rest"]).view(len(prompts), -1)  # [n, L]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    check_folder(out, model, tok, task_texts(task, 200, seed))
    mean_p = float(p.mean())
    q = 1 - mean_p
    info = {
        "path": str(out),
        "architecture": "Qwen2ForCausalLM",
        "config": {"vocab_size": len(tok), **QWEN},
        "parameters": num_parameters(model),
        "embedding_parameters": model.model.embed_tokens.weight.numel(),
        "tokenizer": {
            "kind": "byte-level BPE, Qwen2 pre-tokenization, trained on the task's text, padded to the vocabulary",
            "entries": len(tok),
            **tok_info,
            "pad": PAD,
            "eos": EOS,
            "eos_id": tok.eos_token_id,
        },
        "task": TASK,
        "length_mechanism": {
            "kind": "EOS bias in the weights (constant residual dimension 0); lengths about geometric",
            "target_eos_probability": 1 / MEAN_LENGTH,
            "clock": CLOCK,
            "beta": beta,
            "eos_logit_offset": float((terms["h0"] * beta).mean()),
            "eos_probability": {
                "mean": mean_p,
                "min": float(p.min()),
                "max": float(p.max()),
                "first_32_positions": float(p[:, :32].mean()),
                "last_32_positions": float(p[:, -32:].mean()),
            },
            "expected_mean_length": (1 - q**max_new_tokens) / mean_p,
            "expected_truncated_fraction": q**max_new_tokens,
            "max_new_tokens": max_new_tokens,
        },
        "seed": seed,
    }
    (Path(out) / "real_shape.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_folder(out: str | Path, model, tok, texts: list[str]) -> None:
    """The folder loads as both sides load it (``AutoTokenizer`` / ``AutoModelForCausalLM``) into the same
    tokenizer (encoding ``texts`` alike) and the same model (logits equal); raises otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    same = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([tok(texts[0])["input_ids"]])
    with torch.no_grad():
        if not torch.equal(same(input_ids=ids).logits, model(input_ids=ids).logits):
            raise RuntimeError(f"{out}: the saved model's logits differ from the built one's")
    loaded = AutoTokenizer.from_pretrained(out, padding_side="left")
    if len(loaded) != len(tok) or loaded.eos_token_id != tok.eos_token_id or loaded.pad_token_id != tok.pad_token_id:
        raise RuntimeError(f"{out}: the saved tokenizer differs ({len(loaded)} entries, eos {loaded.eos_token_id})")
    bad = [t for t in texts if loaded(t)["input_ids"] != tok(t)["input_ids"]]
    if bad:
        raise RuntimeError(f"{out}: the saved tokenizer encodes {bad[0]!r} differently")


# ---------------------------------------------------------------------------------------- measuring helpers


def peak_rss_kib() -> int:
    """This process's peak resident set size so far, KiB: ``VmHWM`` of ``/proc/self/status``, the kernel's
    high-water mark of the process's resident memory since its ``exec``. (``getrusage(RUSAGE_SELF).ru_maxrss``
    is the same number except that Linux carries it across fork + exec: a child of a parent that had built
    the model would report the parent's peak when its own is lower.)"""
    return _status_kib("VmHWM")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _descendants(pid: int) -> list[int]:
    kids = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:  # the process or a thread ended meanwhile
        pass
    return kids + [g for k in kids for g in _descendants(k)]


def descendants_rss_kib(pid: int) -> tuple[int, int]:
    """The summed resident memory of process ``pid``'s descendants, KiB, and how many there are (shared pages
    count once per process: an upper bound).  -> (KiB, processes)"""
    total, kids = 0, _descendants(pid)
    for k in kids:
        try:
            for line in Path(f"/proc/{k}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:  # ended meanwhile
            pass
    return total, len(kids)


def memory_marks() -> dict:
    """This process's virtual and resident size now, KiB (what ``cap_memory`` and ``charged_peak_kib`` read)."""
    return {"vm_size_kib": _status_kib("VmSize"), "rss_kib": _status_kib("VmRSS")}


def charged_peak_kib(marks: dict) -> int:
    """The most memory ``cap_memory`` charged this process since ``marks`` (``memory_marks()`` then): the peak
    virtual size (``VmPeak``) minus the virtual size then plus the resident size then, KiB. Its excess over
    ``peak_rss_kib`` is how much stricter than a cap on resident memory the address-space cap was."""
    return _status_kib("VmPeak") - marks["vm_size_kib"] + marks["rss_kib"]


def cap_memory(cap_bytes: int) -> dict:
    """Cap this process so that its resident memory cannot pass ``cap_bytes`` (``RLIMIT_AS``, no cgroup).

    The address-space limit is set to the current virtual size plus ``cap_bytes`` minus the current resident
    size: what is resident now counts in full, and every byte mapped from now on counts as if resident (an
    upper bound: new mappings are the tensors, which are written). Address space already reserved but not
    resident (shared libraries, allocator arenas) does not count, so a side that imports more libraries is
    not charged for their reservations. An allocation beyond the cap fails (``RuntimeError: ... can't allocate
    memory`` / ``MemoryError``) instead of swapping; a run that completes must still have ``peak_rss_kib`` at
    most the cap to count as fitting. -> the numbers used, KiB
    """
    marks = memory_marks()
    limit = (marks["vm_size_kib"] - marks["rss_kib"]) * 1024 + cap_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return {**marks, "rlimit_as_kib": limit // 1024, "cap_kib": cap_bytes // 1024}


def available_gib() -> float:
    """``MemAvailable`` of this machine, GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemAvailable")


OOM_SIGNS = ("can't allocate memory", "cannot allocate memory", "memoryerror", "bad_alloc", "out of memory")


def is_oom(run: dict) -> bool:
    """Whether a failed child ran out of memory (an allocation refused under the cap, or killed by a signal)."""
    return run["returncode"] < 0 or any(sign in run["error"].lower() for sign in OOM_SIGNS)


# ------------------------------------------------------------------------------------------------ results

RESULTS = "vs_trl_real"


def read_results(out: Path) -> dict:
    """The results so far in ``out/vs_trl_real.json`` (the throughput and the largest-batch parts are written by
    separate runs), or {}."""
    try:
        return json.loads((Path(out) / f"{RESULTS}.json").read_text())
    except (OSError, ValueError):
        return {}


def write_results(out: Path, data: dict) -> str:
    """Write ``out/vs_trl_real.json`` and ``.md``.  -> the Markdown text"""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULTS}.json").write_text(json.dumps(data, indent=2) + "\n")
    text = "\n".join(_md(data)) + "\n"
    (out / f"{RESULTS}.md").write_text(text)
    return text


def _f(d: dict, fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(d[k]) for k in ("min", "median", "max"))


def _shape_lines(meta: dict) -> list[str]:
    m = meta["model"]
    if "config" not in m:
        return [f"Model: `{m['path']}` (given with --model)."]
    c, t, ln = m["config"], m["tokenizer"], m["length_mechanism"]
    p = ln["eos_probability"]
    return [
        f"Model: a fresh Qwen2ForCausalLM built locally (`benchmarks/real_shape.py`, seed {m['seed']}): vocabulary "
        f"{c['vocab_size']:,}, hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
        f"{c['num_attention_heads']} heads of {c['hidden_size'] // c['num_attention_heads']}, "
        f"{c['num_key_value_heads']} KV head(s), MLP {c['intermediate_size']}, q/k/v bias, RoPE theta "
        f"{c['rope_parameters']['rope_theta']:g}, tied embeddings: {m['parameters']:,} parameters "
        f"({m['embedding_parameters']:,} in the embedding / LM head), fp32.",
        f"Tokenizer: byte-level BPE with Qwen2's pre-tokenization, trained on the {m['task']} task's text "
        f"({t['trained_entries']} entries: 256 bytes and {t['merges']} merges), padded to {t['entries']:,} entries "
        f"with {t['filler_entries']:,} filler entries no merge produces; pad `{t['pad']}`, EOS `{t['eos']}`, no BOS.",
        f"Lengths: an EOS bias in the weights (a constant residual dimension; see `real_shape.py`) gives EOS a "
        f"probability of {p['mean']:.4f} per step (min {p['min']:.4f}, max {p['max']:.4f} over the calibration "
        f"positions; {p['first_32_positions']:.4f} over the first 32, {p['last_32_positions']:.4f} over the last "
        f"32): lengths about geometric, expected mean {ln['expected_mean_length']:.1f} tokens, "
        f"{100 * ln['expected_truncated_fraction']:.1f}% truncated at {ln['max_new_tokens']}. Both sides sample "
        "this same distribution with their own samplers; rewards are all 0 on a random model, so the weights do "
        "not move and the distribution stays put.",
    ]


def _md(data: dict) -> list[str]:
    lines = ["# entrolab vs TRL GRPOTrainer at the real shape (Qwen2 vocabulary, CPU)", ""]
    if "summary" in data:
        meta, s, reps = data["meta"], data["summary"], data["repeats"]
        lines += [
            f"Written by `{meta['command']}`: {meta['prompts_per_step']} prompts x group {meta['group_size']}, "
            f"<= {meta['max_new_tokens']} new tokens, temperature 1, top-p 1, one PPO epoch, no KL, fp32, "
            f"{meta['threads']} threads; trl {meta['trl']}, transformers {meta['transformers']}, torch "
            f"{meta['torch']}; {meta['repeats']} repeat(s) of {meta['warmup_steps']} warm-up + "
            f"{meta['steps_timed']} timed step(s) per side, sides alternating (each in a fresh process). Values are "
            "min / median / max over repeats." + (" **Smoke run (--quick), not a result.**" if meta["quick"] else ""),
            "",
            *_shape_lines(meta),
            "",
            "| quantity | TRL | entrolab | ratio, > 1 = entrolab ahead |",
            "|---|---|---|---|",
            f"| s/step | {_f(s['trl_s_per_step'])} | {_f(s['entrolab_s_per_step'])} "
            f"| {_f(s['ratio_s_per_step'])} (TRL / entrolab) |",
            f"| **completion tokens/s** | {_f(s['trl_tokens_per_s'], '{:.0f}')} "
            f"| {_f(s['entrolab_tokens_per_s'], '{:.0f}')} | **{_f(s['ratio_tokens_per_s'])}** (entrolab / TRL) |",
            f"| rollout s (before the update) | {_f(s['trl_rollout_s'])} | {_f(s['entrolab_rollout_s'])} "
            f"| {_f(s['ratio_rollout_s'])} |",
            f"| update s | {_f(s['trl_update_s'])} | {_f(s['entrolab_update_s'])} | {_f(s['ratio_update_s'])} |",
            f"| **peak RSS, GiB** (own + child processes) | {_f(s['trl_peak_rss_gib'])} "
            f"| {_f(s['entrolab_peak_rss_gib'])} | **{_f(s['ratio_peak_rss'])}** (TRL / entrolab) |",
            f"| peak RSS of the process alone, GiB | {_f(s['trl_own_peak_rss_gib'])} "
            f"| {_f(s['entrolab_own_peak_rss_gib'])} | |",
            f"| peak RSS of its child processes, GiB | {_f(s['trl_children_peak_rss_gib'])} "
            f"| {_f(s['entrolab_children_peak_rss_gib'])} | |",
            f"| mean completion length | {_f(s['trl_mean_length'], '{:.1f}')} "
            f"| {_f(s['entrolab_mean_length'], '{:.1f}')} | |",
            "",
            "Per repeat (medians over the timed steps):",
            "",
            "| repeat | side | s/step | rollout | update | tokens/step | peak RSS GiB: all = own + child processes "
            "| own RSS after imports GiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(reps, 1):
            for side in ("trl", "entrolab"):
                x = r[side]
                lines.append(
                    f"| {i} | {side} | {x['s_per_step']:.2f} | {x['rollout_s']:.2f} | {x['update_s']:.2f} "
                    f"| {x['mean_tokens_per_step']:.0f} | {x['peak_rss_gib']:.2f} = {x['own_peak_rss_gib']:.2f} + "
                    f"{x['children_peak_rss_gib']:.2f} | {x['rss_after_imports_gib']:.2f} |"
                )
        lines += [
            "",
            "Timed: TRL from `on_step_begin` to `on_step_end`, its rollout = `_generate_and_score_completions` "
            "(generation, rewards, advantages), update = the rest (loss, backward, optimizer); entrolab's "
            "`time/step`, its update = `time/update`, rollout = the rest. Tokens: completion tokens (EOS "
            "included) from each side's logged mean length. Peak RSS: `VmHWM` of the side's process at the end "
            "of training (imports, model, optimizer state and the steps) + the peak summed RSS of its child "
            "processes, polled every 0.5 s from the parent (entrolab's reward workers, one per core by default, "
            "and the multiprocessing forkserver; TRL scores rewards in-process).",
            "",
        ]
    if "largest_batch" in data:
        lb = data["largest_batch"]
        m = lb["meta"]
        lines += [
            f"## Largest batch in {m['memory_cap_gib']:g} GiB",
            "",
            f"Written by `{m['command']}`: one training step per attempt, {m['group_size']} samples per prompt, "
            f"prompts doubling from {m['start_prompts']} (at most {m['max_prompts']}), <= {m['max_new_tokens']} new "
            f"tokens, {m['threads']} threads, each attempt in its own process under an address-space cap "
            "(`RLIMIT_AS` = the process's virtual size after its imports + the cap - its resident size then: "
            "everything mapped later counts as resident, so an attempt cannot pass the cap without an allocation "
            "failing). An attempt fits when it completes and its peak RSS (`VmHWM`, plus its child processes' "
            "RSS) is at most the cap. Both sides at their defaults: the whole batch in one forward/backward (no "
            "micro-batches or gradient accumulation), entrolab sampling 256 sequences per pass, TRL all at once."
            + (" **Smoke run (--quick), not a result.**" if m["quick"] else ""),
            "",
            *_shape_lines(m),
            "",
            "| prompts x samples | TRL | entrolab |",
            "|---|---|---|",
        ]
        for prompts in sorted({a["prompts"] for a in lb["attempts"]}):
            cells = []
            for side in ("trl", "entrolab"):
                a = next((a for a in lb["attempts"] if a["side"] == side and a["prompts"] == prompts), None)
                if a is None:
                    cells.append("")
                elif a["ok"]:
                    verdict = "fits" if a["fits"] else "over the cap"
                    cells.append(
                        f"{verdict}: {a['peak_rss_gib']:.2f} GiB peak RSS ({a['charged_gib']:.2f} charged), "
                        f"{a['s_per_step']:.1f} s/step"
                    )
                else:
                    cells.append("out of memory" if a["out_of_memory"] else f"failed: {a['error'][-120:]}")
            lines.append(f"| {prompts} x {m['group_size']} | {cells[0]} | {cells[1]} |")
        big = lb["largest_rows"]
        lines += [
            "",
            "Charged: the most the cap counted (peak virtual size - virtual size after the imports + resident size"
            " then); its excess over the peak RSS is how much stricter than a cap on resident memory it was.",
            "",
            "Largest batch that fits, sequences: "
            + ", ".join(f"{side} {big[side] if big[side] is not None else 'none'}" for side in ("trl", "entrolab"))
            + (f" (still fitting at the last size tried: {', '.join(lb['still_fitting_at_max'])})."
               if lb["still_fitting_at_max"] else "."),
        ]  # fmt: skip
    return lines


__all__ = ["QWEN", "VOCAB", "build", "cap_memory", "peak_rss_kib", "read_results", "train_tokenizer", "write_results"]
