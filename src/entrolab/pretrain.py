"""Warm-start a tiny policy by supervised training on a task's deliberately imperfect demonstrations.

The demonstrations mix right, wrong and badly formatted completions (the task's ``demo_mix``), so the base
policy solves some problems some of the time: RL has room to improve and pass@k has something to show.
The result is a normal Hugging Face model folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from entrolab import catalogue, ops
from entrolab.methods.aggregation import aggregate
from entrolab.models import (
    SIZES,
    SizePreset,
    build_byte_tokenizer,
    build_tiny_model,
    build_tokenizer,
    num_parameters,
    save_policy,
)
from entrolab.tasks import CHARSET, Task

TokenizerKind = Literal["auto", "char", "bytes", "bpe"]
TOKENIZERS: tuple[str, ...] = get_args(TokenizerKind)


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised warm start of a tiny model on demonstrations."""

    size: SizePreset = "tiny1m"
    """Model size preset."""
    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 64
    """Demonstrations per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10 %)."""
    warmup: int = 40
    """Warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initial weights and the demonstration stream."""
    tokenizer: TokenizerKind = "auto"
    """char: one token per character of the built-in alphabet (the built-in tasks); bytes: the 256 bytes, any
    UTF-8 text; bpe: byte-level BPE trained on the task's prompts and demonstrations up to ``bpe_vocab``
    entries; auto: char when every prompt and demonstration is in the alphabet, else bytes."""
    bpe_vocab: int = 512
    """Vocabulary size of tokenizer=bpe."""
    loss: str = "cross_entropy"
    """The ``sft_loss`` minimised: cross_entropy, or entropy_sft (Light-IF's entropy-preserving SFT)."""
    loss_options: tuple[str, ...] = ()
    """Options of the loss as 'method.field=value', e.g. 'entropy_sft.token_ratio=0.5'."""

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.bpe_vocab < 264:
            raise ValueError(f"bpe_vocab must be >= 264 (the 256 bytes and the specials), got {self.bpe_vocab}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        sft_loss(self)  # an unknown loss, option or value fails here
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


def _batch(tokenizer, task: Task, rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n (prompt + demonstration + EOS) sequences, right-padded; labels are -100 outside the completion (and on a
    multi-turn demonstration's observations)."""
    seqs, labels = [], []
    for _ in range(n):
        ex = task.train[rng.randrange(len(task.train))]
        p = tokenizer(task.prompt(ex))["input_ids"]
        seq, lab = list(p), [-100] * len(p)
        # a multi-turn env's demonstration: model turns are trained on, the environment's observations are not
        segments = (
            task.demo_segments(ex, rng) if hasattr(task, "demo_segments") else [(task.demonstration(ex, rng), True)]
        )
        for text, trained in segments:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            seq += ids
            lab += ids if trained else [-100] * len(ids)
        seqs.append([*seq, tokenizer.eos_token_id])
        labels.append([*lab, tokenizer.eos_token_id])
    width = max(len(s) for s in seqs)
    ids = torch.full((n, width), tokenizer.pad_token_id)
    lab = torch.full((n, width), -100)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab


def lr_lambda(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` of the peak at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def sft_loss(cfg: PretrainConfig):
    """(entry, config) of the configured ``sft_loss``."""
    from entrolab.config import parse_method_options

    opts = parse_method_options([("sft_loss", cfg.loss)], cfg.loss_options)
    entry = catalogue.get("sft_loss", cfg.loss)
    return entry, entry.make_config(opts.get(cfg.loss))


def sft_step_loss(model, ids: torch.Tensor, labels: torch.Tensor, pad_id: int, loss) -> tuple[torch.Tensor, dict]:
    """The chosen ``sft_loss`` of one batch, reduced as a token mean over the tokens it uses."""
    entry, lcfg = loss
    logits = model(input_ids=ids, attention_mask=(ids != pad_id).long()).logits[:, :-1].float()  # [B, L-1, V]
    target = labels[:, 1:]  # [B, L-1]
    mask = (target != -100).float()
    logp = ops.logprobs_from_logits(logits, target.clamp(min=0))  # [B, L-1]
    with torch.no_grad():
        entropy = ops.entropy_from_logits(logits)  # [B, L-1]; ranks tokens only (Entropy-SFT)
    per_token, used, metrics = entry.fn(logp, entropy, mask, cfg=lcfg)
    return aggregate(per_token, used.float(), "token-mean"), metrics


def task_texts(task: Task, n: int = 2000, seed: int = 0) -> list[str]:
    """Prompts and demonstrations of up to ``n`` train examples (what the tokenizer must read)."""
    rng = random.Random(seed)
    return [t for ex in task.train[:n] for t in (task.prompt(ex), task.demonstration(ex, rng))]


def make_tokenizer(task: Task, cfg: PretrainConfig):
    """The tokenizer ``cfg.tokenizer`` names, for ``task``."""
    kind = cfg.tokenizer
    if kind in ("auto", "char"):
        texts = task_texts(task, 500, cfg.seed)
        outside = sorted({c for t in texts for c in t} - CHARSET)
        if kind == "char" and outside:
            raise ValueError(
                f"task {task.name!r} has characters outside the character tokenizer's alphabet: {outside[:10]}; "
                "use --tokenizer bytes or bpe"
            )
        kind = "bytes" if outside else "char"
    if kind == "char":
        return build_tokenizer()
    if kind == "bytes":
        return build_byte_tokenizer()
    return build_byte_tokenizer(task_texts(task, seed=cfg.seed), cfg.bpe_vocab)


def pretrain(
    task: Task,
    out: str | Path,
    cfg: PretrainConfig = PretrainConfig(),
    log: Callable[[int, float], None] | None = None,
) -> dict:
    """Train a tiny model on ``task``'s demonstrations and save it to ``out``; returns the run's stats."""
    torch.manual_seed(cfg.seed)
    tokenizer = make_tokenizer(task, cfg)
    model = build_tiny_model(tokenizer, cfg.size, seed=cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.steps))
    rng = random.Random(cfg.seed)
    loss_fn = sft_loss(cfg)
    t0 = time.perf_counter()
    losses = []
    for step in range(cfg.steps):
        ids, labels = _batch(tokenizer, task, rng, cfg.batch_size)
        loss, _ = sft_step_loss(model, ids, labels, tokenizer.pad_token_id, loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log is not None:
            log(step + 1, losses[-1])
    seconds = time.perf_counter() - t0
    save_policy(model, tokenizer, out)
    stats = {
        "task": task.name,
        "config": asdict(cfg),
        "parameters": num_parameters(model),
        "vocabulary": len(tokenizer),
        "seconds": seconds,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "loss_curve": losses[:: max(1, len(losses) // 50)],
    }
    (Path(out) / "pretrain.json").write_text(json.dumps(stats, indent=2))
    return stats


def default_cache() -> Path:
    """Where base models are cached: ``$ENTROLAB_CACHE`` or ``~/.cache/entrolab``."""
    return Path(os.environ.get("ENTROLAB_CACHE", Path.home() / ".cache" / "entrolab"))


def base_path(task: Task, cfg: PretrainConfig = PretrainConfig(), cache: str | Path | None = None) -> Path:
    """Where :func:`cached_base` keeps the base model of ``task`` and ``cfg`` (keyed by task and every field)."""
    fields = asdict(cfg)
    for name in ("tokenizer", "bpe_vocab", "loss", "loss_options"):  # at their defaults: earlier base models' keys
        if fields[name] == getattr(PretrainConfig, name):
            del fields[name]
    key = hashlib.sha256(json.dumps([task.name, fields], sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache or default_cache()) / "base" / f"{task.name}-{cfg.size}-{key}"


def cached_base(
    task: Task,
    cfg: PretrainConfig = PretrainConfig(),
    cache: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The base model for ``task`` and ``cfg``, built once and reused (keyed by task and every config field).

    Built into a temporary folder and renamed, so a killed build never leaves a half-written base behind and
    concurrent callers end with one complete folder.
    """
    base = base_path(task, cfg, cache)
    if (base / "config.json").is_file() and (base / "model.safetensors").is_file():
        log(f"using cached base model {base}")
        return base
    log(f"building the base model for {task.name} -> {base}")
    tmp = base.with_name(base.name + f".tmp{os.getpid()}")

    def progress(step: int, loss: float) -> None:
        if step % 100 == 0 or step == cfg.steps:
            log(f"  step {step}/{cfg.steps}  loss {loss:.3f}")

    pretrain(task, tmp, cfg, log=progress)
    if base.exists():  # another process built it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(base)
    return base
