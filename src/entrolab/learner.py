"""What the update does with the model: forward passes over a ``TokenBatch``, backward, a guarded optimizer step.

The maths of the loss is not here (it is ``entrolab.update.compose``, a pure function); this module only runs the
model to get log-probs and entropies, calls the composer per micro-batch, and steps the optimizer unless the
loss or the gradient norm is non-finite.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch

from entrolab.batch import TokenBatch
from entrolab.kinds import Backend
from entrolab.methods.optimal_baseline import sum_pi_sq_from_logits
from entrolab.ops import discriminator_baseline_from_logits, masked_mean
from entrolab.rollout import SAMPLED_LSE, teacher_forced
from entrolab.update import (
    Counts,
    Methods,
    accumulate,
    apply_filters,
    compose,
    minibatch_stats,
    scale_warnings,
    slice_stats,
)

# Per-token quantities recorded while sampling for the methods that need them (``generate(extras=...)``).
ROLLOUT_EXTRAS = {"vocab_baseline": discriminator_baseline_from_logits, "sum_pi_sq": sum_pi_sq_from_logits}


def lr_factor(opt_step: int, total: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant, cosine or linear decay to 0."""
    if opt_step < warmup_steps:
        return (opt_step + 1) / warmup_steps
    progress = min((opt_step - warmup_steps) / max(total - warmup_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def forward(
    model,
    batch: TokenBatch,
    temperature: float,
    need_logits: bool = False,
    backend: Backend = "auto",
    reuse_sampled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Teacher-forced log-probs, entropies (and logits when asked) of the batch's responses.  [b, T] each

    ``reuse_sampled``: the weights are those the batch was sampled at, and ``extras[SAMPLED_LSE]`` with
    ``old_entropy`` spare the LM head's forward (``teacher_forced(sampled=...)``)."""
    sampled = None
    if reuse_sampled and SAMPLED_LSE in batch.extras:
        sampled = (batch.extras[SAMPLED_LSE], batch.old_entropy)
    return teacher_forced(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.attention_mask,
        temperature,
        need_logits,
        backend=backend,
        sampled=sampled,
    )


@torch.no_grad()
def reference_logp(
    ref_model, batch: TokenBatch, micro_batch_size: int | None, temperature: float, backend: Backend
) -> torch.Tensor:
    """Log-probs of the batch's tokens under the frozen reference, micro-batch by micro-batch.  [B, T]"""
    b, t = batch.response_ids.shape
    out = torch.zeros(b, t)
    for rows, micro in batch.micro_batches(micro_batch_size):
        logp, _, _ = forward(ref_model, micro, temperature, backend=backend)
        out[rows, : micro.width] = logp.float()
    return out


def minibatch_backward(
    model,
    methods: Methods,
    batch: TokenBatch,
    counts: Counts,
    *,
    micro_batch_size: int | None,
    temperature: float,
    backend: Backend = "auto",
    generator: torch.Generator | None = None,
    loss_scale: float = 1.0,
    reuse_sampled: bool = False,
) -> tuple[dict[str, float], bool]:
    """Forward/backward every micro-batch of one minibatch (gradients accumulate); does not step.
    ``loss_scale`` multiplies what is back-propagated (SPEAR's gamma(k) on its replay loss), not the metrics.
    ``reuse_sampled``: the weights are the sampling pass's (see ``forward``).

    -> (token-weighted metrics, whether every micro-batch's loss was finite). ``loss/total`` is the
    minibatch's loss (the sum of the micro-batches' normalised losses).
    """
    stats = {e.name: minibatch_stats(e, c, batch, generator) for e, c in methods.trained()}
    sums: dict[str, float] = {}
    finite = True
    for rows, micro in batch.micro_batches(micro_batch_size):
        logp, entropy, logits = forward(model, micro, temperature, "logits" in methods.needs, backend, reuse_sampled)
        loss, metrics = compose(
            methods,
            micro,
            logp,
            entropy,
            logits,
            counts=counts,
            stats={k: slice_stats(v, rows, micro.width) for k, v in stats.items()},
            generator=generator,
        )
        finite = finite and bool(torch.isfinite(loss))
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        n = float(micro.loss_mask.sum())
        metrics = dict(metrics)
        metrics["loss/total"] = loss * (counts.num_tokens / max(n, 1.0))  # so the token-weighted mean is the sum
        accumulate(sums, metrics, n)
    return {k: v / max(counts.num_tokens, 1.0) for k, v in sums.items()}, finite


@dataclass
class StepResult:
    """One optimizer step: the gradient norm (before clipping) and, when skipped, which quantity was non-finite."""

    grad_norm: float
    skipped: str | None = None  # "loss" | "gradient norm" | None


def guarded_step(model, opt: torch.optim.Optimizer, sched: Any, loss_finite: bool, max_grad_norm: float) -> StepResult:
    """Clip and step, unless the loss or the gradient norm is non-finite: then the gradients are dropped and the
    weights, the optimizer state and the learning-rate schedule are left untouched."""
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    skipped = None if loss_finite else "loss"
    if skipped is None and not math.isfinite(norm):
        skipped = "gradient norm"
    if skipped is None:
        opt.step()
        sched.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(norm, skipped)


def ppo_update(
    model,
    opt,
    sched,
    methods: Methods,
    batch: TokenBatch,
    cfg,
    gen: torch.Generator,
    streak: int,
    step: int,
    *,
    minibatches: int | None = None,
    loss_scale: float = 1.0,
    sampled_lse: torch.Tensor | None = None,
) -> tuple[dict[str, float], list[float], int, dict[str, str]]:
    """``cfg.ppo_epochs`` passes over the batch in ``cfg.minibatches`` shuffled minibatches: filters, then
    forward/backward per micro-batch through the composer, then a guarded optimizer step per minibatch.

    -> (metrics averaged over the optimizer steps, with ``update/skipped_nonfinite`` = steps skipped; the
    gradient norm of each optimizer step; the updated count of consecutive skipped steps; the scale warnings
    of methods whose selection is degenerate at this size, also logged as ``scale/<method>_degenerate``). A
    skipped step prints a warning naming the training step and the non-finite quantity. ``minibatches``
    overrides ``cfg.minibatches`` (a replay batch's own count) and ``loss_scale`` weights the loss.
    ``sampled_lse`` [B, T]: the sampling pass's logsumexp of these rows at the current weights
    (``generate(keep_lse=True)``); the first minibatch of the first epoch, which still runs at those weights,
    then skips the LM head's forward (``teacher_forced(sampled=...)``); every later one runs it in full.
    """
    n_mini = minibatches or cfg.minibatches
    norm_len = float(cfg.norm_len or cfg.response_budget)
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    skipped = 0
    warnings: dict[str, str] = {}
    b = len(batch)
    size = b // n_mini
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(b, generator=gen) if n_mini > 1 else torch.arange(b)
        for k in range(n_mini):
            rows = order[k * size : (k + 1) * size]
            part = batch.select(rows)
            reuse = sampled_lse is not None and _epoch == 0 and k == 0
            if reuse:
                part = part.replace(extras={**part.extras, SAMPLED_LSE: sampled_lse[rows]})
            part, fm = apply_filters(methods, part, cfg.micro_batch_size, gen)
            accumulate(sums, fm, 1.0)
            warnings.update(scale_warnings(methods, part, cfg.micro_batch_size))
            mm, finite = minibatch_backward(
                model,
                methods,
                part,
                Counts.of(part, norm_len),
                micro_batch_size=cfg.micro_batch_size,
                temperature=cfg.temperature,
                backend=cfg.backend,
                generator=gen,
                loss_scale=loss_scale,
                reuse_sampled=reuse,
            )
            accumulate(sums, mm, 1.0)
            result = guarded_step(model, opt, sched, finite, cfg.max_grad_norm)
            grad_norms.append(result.grad_norm)
            streak = streak + 1 if result.skipped else 0
            if result.skipped:
                skipped += 1
                print(
                    f"warning: step {step}: non-finite {result.skipped}; the optimizer step was skipped "
                    "(weights and optimizer state untouched)",
                    file=sys.stderr,
                )
    metrics = {k: v / (cfg.ppo_epochs * n_mini) for k, v in sums.items()}
    metrics["update/skipped_nonfinite"] = float(skipped)
    metrics.update({f"scale/{name}_degenerate": 1.0 for name in warnings})
    return metrics, grad_norms, streak, warnings


@torch.no_grad()
def probe_entropy_change(model, batch: TokenBatch, n: int, temperature: float, backend: Backend) -> dict[str, float]:
    """The entropy change on the same states: re-measure, after the update, the entropy of ``n`` of this step's
    sequences (evenly spaced rows) and compare it with the behaviour policy's entropy there.

    -> ``entropy/probe_before`` (mean behaviour entropy over the probed tokens), ``entropy/probe_after`` and
    ``entropy/observed_delta`` (after - before), the quantity the Entropy Mechanism paper's prediction
    ``entropy/predicted_delta`` is about.
    """
    b = len(batch)
    if n <= 0 or b == 0:
        return {}
    rows = torch.linspace(0, b - 1, min(n, b)).round().long().unique()
    probe = batch.select(rows).trim()
    _, entropy, _ = forward(model, probe, temperature, backend=backend)
    mask = probe.model_tokens
    before = float(masked_mean(probe.old_entropy, mask))
    after = float(masked_mean(entropy.float(), mask))
    return {"entropy/probe_before": before, "entropy/probe_after": after, "entropy/observed_delta": after - before}


__all__ = [
    "ROLLOUT_EXTRAS",
    "StepResult",
    "forward",
    "guarded_step",
    "lr_factor",
    "minibatch_backward",
    "ppo_update",
    "probe_entropy_change",
    "reference_logp",
]
