"""The GRPO-family trainer, read top to bottom: rollout -> rewards -> advantages -> PPO updates -> log -> checkpoint.

Where it departs from the papers (and from verl / TRL):
- Old log-probs are the rollout's own (recorded while sampling, see ``rollout.py``), not a second forward
  pass; they agree with a teacher-forced pass to ~1e-6 in fp32, so with one epoch the ratio is 1 up to that.
- Token filters run before the update of each optimisation minibatch (per micro-batch for
  ``scope="micro_batch"``) on rollout-time quantities (the behaviour policy's entropy and log-probs), not on
  the entropy of each update's forward pass; for the first pass over a batch they coincide. Running them first
  lets the aggregation's token counts include every mask-out drop.
- Schedules (target-entropy coefficients, PID thresholds, phases) react to the previous step's metrics and
  set other methods' options for the next step; their state is checkpointed with the rest.
- Log-probs and entropies of the update come from hidden states through the chunked LM-head op
  (``logprob.py``); full [B, T, V] logits are built only for a method that declares ``needs=("logits",)``.
- Sampling and the teacher-forced pass run through ``lean.py`` for Llama-family models (``backend="auto"``):
  each distinct prompt once per group, the dense layers over real tokens only. It computes the same function
  as the model's own forward (tested to 1e-10 in fp64); ``backend="hf"`` uses the model's forward instead.
- A sample whose reward function raised (``--on-reward-error skip``) is dropped from the update (its mask is
  zeroed, so it leaves every denominator) and counted in ``reward/errors``. For the group statistics its
  reward is set to the mean of the rest of its group, so it does not move the group baseline.
- The KL term (when the ``kl`` regulariser is chosen) is a per-token loss term as in GRPO, not a reward
  penalty as in classic RLHF PPO.
- The learning-rate schedule advances once per optimizer step (epochs x minibatches per training step).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entrolab import registry
from entrolab.config import TrainConfig, save_json
from entrolab.diagnostics import entropy_change_prediction
from entrolab.evaluate import decode_completions, evaluate
from entrolab.models import load_policy, save_policy
from entrolab.ops import discriminator_baseline_from_logits, group_view, masked_mean
from entrolab.rewards import load_reward_fn, score_completions
from entrolab.rollout import Rollout, generate, teacher_forced
from entrolab.sinks import make_sinks
from entrolab.tasks import Example, Task, make_task

CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------------------
def build_task(cfg: TrainConfig) -> Task:
    options = {"path": cfg.task_path} if cfg.task == "jsonl" else {}
    return make_task(cfg.task, seed=cfg.task_seed, **options)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def prompts_at(task: Task, seed: int, position: int, n: int) -> list[Example]:
    """The n training examples at ``position`` of the data stream: a seeded permutation per epoch.

    A pure function of (seed, position), so a resumed run and every method of a comparison see the same
    prompts in the same order.
    """
    size = len(task.train)
    return [task.train[_epoch_order(seed, i // size, size)[i % size]] for i in range(position, position + n)]


def lr_factor(cfg: TrainConfig, opt_step: int, total: int) -> float:
    if opt_step < cfg.warmup_steps:
        return (opt_step + 1) / cfg.warmup_steps
    progress = min((opt_step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "linear":
        return 1.0 - progress
    return 1.0


# Extra inputs a method may ask for with ``needs=(...)``; anything else fails at start-up.
SUPPLIED_NEEDS = {
    "ref_logp": "log-probs of the frozen reference model (a second model is loaded)",
    "logits": "the tempered logits [B, T, V] of the update's forward pass",
    "advantages": "the advantages of the micro-batch",
    "old_entropy": "the rollout's (behaviour policy's) entropy [B, T]",
    "vocab_baseline": "sum_j p_j^2 (H + log p_j) of the behaviour policy, recorded while sampling",
}
ROLLOUT_EXTRAS = {"vocab_baseline": discriminator_baseline_from_logits}


class Methods:
    """The registry entries and configs this run uses, looked up once; ``configured`` applies schedules."""

    def __init__(self, cfg: TrainConfig) -> None:
        opts = cfg.method_options()

        def pick(axis: str, name: str) -> tuple[registry.Entry, Any]:
            entry = registry.get(axis, name)
            return entry, entry.make_config(opts.get(name))

        self.advantage = pick("advantage", cfg.advantage)
        self.policy_loss = pick("policy_loss", cfg.policy_loss)
        self.aggregation = registry.get("aggregation", cfg.aggregation)
        self.shapers = [pick("reward_shaper", n) for n in cfg.reward_shapers]
        self.filters = [pick("token_filter", n) for n in cfg.token_filters]
        self.regularizers = [pick("regularizer", n) for n in cfg.regularizers]
        self.schedules = [pick("schedule", n) for n in cfg.schedules]
        needs = {n for e, _ in [self.policy_loss, *self.filters, *self.regularizers] for n in e.needs}
        unknown = sorted(needs - set(SUPPLIED_NEEDS))
        if unknown:
            raise ValueError(
                f"a chosen method needs {unknown}, which the trainer cannot supply: {sorted(SUPPLIED_NEEDS)}"
            )
        self.needs = needs

    def configured(self, values: dict[str, Any]) -> Methods:
        """A copy whose configs take this step's scheduled values (``"method.field" -> value``)."""
        if not values:
            return self
        by_name: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            name, _, fld = key.rpartition(".")
            by_name.setdefault(name, {})[fld] = value
        pairs = [self.advantage, self.policy_loss, *self.shapers, *self.filters, *self.regularizers]
        missing = sorted(set(by_name) - {e.name for e, _ in pairs})
        if missing:
            raise ValueError(f"a schedule sets options of {missing}, which this run does not use")

        def upd(pair: tuple[registry.Entry, Any]) -> tuple[registry.Entry, Any]:
            entry, c = pair
            return (entry, dataclasses.replace(c, **by_name[entry.name])) if entry.name in by_name else pair

        new = copy.copy(self)
        new.advantage, new.policy_loss = upd(self.advantage), upd(self.policy_loss)
        new.shapers = [upd(p) for p in self.shapers]
        new.filters = [upd(p) for p in self.filters]
        new.regularizers = [upd(p) for p in self.regularizers]
        return new


def _needed(entry: registry.Entry, available: dict[str, Any]) -> dict[str, Any]:
    return {k: available[k] for k in entry.needs if k != "ref_logp" and k in available}


def _scope(cfg: Any) -> str:
    return getattr(cfg, "scope", "batch")


def apply_filters(
    methods: Methods, cfg: TrainConfig, batch: Rollout, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Run the token filters on one minibatch (per micro-batch for ``scope="micro_batch"``).

    -> weight [b, T], mask [b, T], metrics. Filters see rollout-time tensors only, so running them before the
    update lets the aggregation's token counts include every mask-out drop.
    """
    weight = torch.ones_like(mask)
    metrics: dict[str, float] = {}
    b = len(batch)
    for entry, fcfg in methods.filters:
        mb = cfg.micro_batch_size if _scope(fcfg) == "micro_batch" and cfg.micro_batch_size else b
        weights, masks, sums = [], [], {}
        total = max(float(mask.sum()), 1.0)
        for start in range(0, b, mb):
            sl = slice(start, start + mb)
            extra = _needed(entry, {k: v[sl] for k, v in batch.extras.items()})
            w, m, fm = entry.fn(
                mask[sl],
                cfg=fcfg,
                entropy=batch.entropy[sl],
                old_logp=batch.logp[sl],
                advantages=advantages[sl],
                truncated=batch.truncated[sl],
                **extra,
            )
            weights.append(w)
            masks.append(m)
            _accumulate(sums, fm, float(mask[sl].sum()))  # token-weighted over the slices
        weight, mask = weight * torch.cat(weights), torch.cat(masks)
        metrics.update({k: v / total for k, v in sums.items()})
    return weight, mask, metrics


@torch.no_grad()
def reference_logp(ref_model, rollout: Rollout, cfg: TrainConfig) -> torch.Tensor:
    """Log-probs of the rollout's tokens under the frozen reference, micro-batch by micro-batch.  [B, T]"""
    b, t = rollout.response_ids.shape
    mb = cfg.micro_batch_size or b
    out = torch.zeros(b, t)
    for start in range(0, b, mb):
        part = rollout.select(slice(start, start + mb))
        width = max(int(part.response_mask.sum(-1).max()), 1)
        logp, _, _ = teacher_forced(
            ref_model,
            part.prompt_ids,
            part.prompt_mask,
            part.response_ids[:, :width],
            part.response_mask[:, :width],
            cfg.temperature,
            backend=cfg.backend,
        )
        out[start : start + mb, :width] = logp.float()
    return out


# ----------------------------------------------------------------------------------------------------------
# one update over a minibatch (gradient accumulation over micro-batches, normalisation fixed by the minibatch)
# ----------------------------------------------------------------------------------------------------------
def minibatch_loss_backward(
    model,
    ref_model,
    methods: Methods,
    cfg: TrainConfig,
    batch: Rollout,
    advantages: torch.Tensor,  # [b, 1] or [b, T]
    mask: torch.Tensor,  # [b, T] after token filters
    weight: torch.Tensor,  # [b, T] token weights from filters
    norm_len: float,
) -> dict[str, float]:
    """Forward/backward every micro-batch of ``batch``; returns token-weighted metrics. Does not step."""
    num_tokens = float(mask.sum())
    num_seqs = float((mask.sum(-1) > 0).sum())
    b = len(batch)
    mb = cfg.micro_batch_size or b
    pl_entry, pl_cfg = methods.policy_loss
    batch_stats = None
    if pl_entry.stats is not None and _scope(pl_cfg) == "batch":  # minibatch-wide statistics, computed once
        batch_stats = pl_entry.stats(
            mask=mask, old_logp=batch.logp, advantages=advantages, entropy=batch.entropy, cfg=pl_cfg
        )
    sums: dict[str, float] = {}
    for start in range(0, b, mb):
        sl = slice(start, start + mb)
        width = max(int(batch.response_mask[sl].sum(-1).max()), 1)  # trim right padding: results unchanged
        m = mask[sl, :width]
        part = batch.select(sl)
        ids, resp_mask = part.response_ids[:, :width], part.response_mask[:, :width]
        logp, entropy, logits = teacher_forced(
            model,
            part.prompt_ids,
            part.prompt_mask,
            ids,
            resp_mask,
            cfg.temperature,
            "logits" in methods.needs,
            backend=cfg.backend,
        )
        old_logp = part.logp[:, :width]
        adv = advantages[sl] if advantages.shape[1] == 1 else advantages[sl, :width]
        ref_logp = part.extras["ref_logp"][:, :width] if "ref_logp" in part.extras else None
        if ref_logp is None and "ref_logp" in methods.needs:  # not precomputed by the caller
            with torch.no_grad():
                ref_logp, _, _ = teacher_forced(
                    ref_model, part.prompt_ids, part.prompt_mask, ids, resp_mask, cfg.temperature, backend=cfg.backend
                )
        available = {
            "logits": logits,
            "advantages": adv,
            "old_entropy": part.entropy[:, :width],
            **{k: v[:, :width] for k, v in part.extras.items()},
        }
        extra = _needed(pl_entry, {**available, "ref_logp": ref_logp})
        if batch_stats is not None:
            extra["stats"] = {k: v[sl, :width] if v.dim() == 2 else v for k, v in batch_stats.items()}
        loss, metrics = pl_entry.fn(logp, old_logp, adv, m, cfg=pl_cfg, entropy=entropy, **extra)
        loss = loss * weight[sl, :width]
        metrics = dict(metrics)
        for entry, rcfg in methods.regularizers:
            term, rm = entry.fn(
                logp, m, cfg=rcfg, entropy=entropy, old_logp=old_logp, ref_logp=ref_logp, **_needed(entry, available)
            )
            loss = loss + term
            metrics.update(rm)
        total = methods.aggregation.fn(loss, m, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
        total.backward()
        n = float(m.sum())
        metrics["loss/total"] = total * (num_tokens / max(n, 1.0))  # so the token-weighted mean is the sum
        _accumulate(sums, metrics, n)
    return {k: v / max(num_tokens, 1.0) for k, v in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# checkpoints: one file, written to a temp name and renamed, so it is never half-written
# ----------------------------------------------------------------------------------------------------------
def save_checkpoint(run: Path, state: dict[str, Any]) -> None:
    tmp = run / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run / CHECKPOINT)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "gen": gen.get_state(),
    }


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    gen.set_state(state["gen"])


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to checkpoint and stop after the current step; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, log=print) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the summary (also written to ``summary.json``)."""
    run = Path(cfg.out)
    torch.set_num_threads(cfg.threads)
    model, tokenizer = load_policy(cfg.model)  # a bad path fails here, before any work
    task = build_task(cfg)
    methods = Methods(cfg)
    reward_fn = load_reward_fn(cfg.reward_fn) if cfg.reward_fn else task.verify
    ref_model = None
    if "ref_logp" in methods.needs:
        ref_model, _ = load_policy(cfg.model)
        ref_model.eval().requires_grad_(False)
    run.mkdir(parents=True, exist_ok=True)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    total_opt_steps = cfg.steps * cfg.ppo_epochs * cfg.minibatches
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total_opt_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    norm_len = float(cfg.norm_len or cfg.max_new_tokens)
    eval_kw = dict(
        backend=cfg.backend,
        samples=cfg.eval_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        limit=cfg.eval_prompts,
    )

    metrics_path = run / "metrics.jsonl"
    sinks = make_sinks(cfg.log_to, run, cfg.to_json())
    start_step, position, base_eval, elapsed = 0, 0, None, 0.0
    schedule_state: dict[str, dict[str, float]] = {e.name: {} for e, _ in methods.schedules}
    observed: dict[str, float] = {}  # the previous step's metrics, what the schedules react to
    if resume:
        ckpt = torch.load(run / CHECKPOINT, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], gen)
        start_step, position, base_eval, elapsed = (
            ckpt["step"],
            ckpt["position"],
            ckpt["base_eval"],
            ckpt["elapsed"],
        )
        schedule_state, observed = ckpt["schedule_state"], ckpt["observed"]
        # Drop metric lines written after the checkpoint: the resumed run writes them again.
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        keep = [ln for ln in lines if _step_of(ln) <= start_step]
        metrics_path.write_text("".join(ln + "\n" for ln in keep))
        log(f"resuming {run} at step {start_step}/{cfg.steps}")
    else:
        save_json(cfg, run / "config.json")
        metrics_path.write_text("")
        base_eval = evaluate(model, tokenizer, task, seed=cfg.seed, **eval_kw)
        row = {f"eval/{k}": v for k, v in base_eval.items()}
        _append(metrics_path, {"step": 0, **row})
        for sink in sinks:
            sink.log(0, row)

    def checkpoint(step: int) -> None:
        save_checkpoint(
            run,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_state(gen),
                "step": step,
                "position": position,
                "base_eval": base_eval,
                "elapsed": elapsed + time.perf_counter() - t_start,
                "schedule_state": schedule_state,
                "observed": observed,
                "config": cfg.to_json(),
            },
        )

    t_start = time.perf_counter()
    final_eval: dict[str, float] | None = None
    final_detail: dict[str, Any] = {}
    step = start_step
    with _StopFlag() as stop, _Progress(cfg, start_step, enabled=cfg.progress) as bar:
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            # --- schedules: this step's method options from the previous step's metrics --------------------
            values: dict[str, Any] = {}
            for entry, scfg in methods.schedules:
                schedule_state[entry.name], v = entry.fn(
                    schedule_state[entry.name], observed, cfg=scfg, step=step, total_steps=cfg.steps
                )
                values.update(v)
            step_methods = methods.configured(values)
            m: dict[str, float] = {f"schedule/{k}": float(v) for k, v in values.items()}
            # --- rollout ---------------------------------------------------------------------------------
            examples = prompts_at(task, cfg.seed, position, cfg.prompts_per_step)
            position += cfg.prompts_per_step
            rollout = generate(
                model,
                tokenizer,
                [task.prompt(e) for e in examples],
                group_size=cfg.group_size,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                generator=gen,
                extras={k: ROLLOUT_EXTRAS[k] for k in methods.needs if k in ROLLOUT_EXTRAS},
                backend=cfg.backend,
            )
            t1 = time.perf_counter()
            # --- rewards ---------------------------------------------------------------------------------
            texts = decode_completions(tokenizer, rollout)
            per_seq = [e for e in examples for _ in range(cfg.group_size)]
            scores = score_completions(texts, per_seq, reward_fn, on_error=cfg.on_reward_error)
            mask = rollout.response_mask * (~scores.errored).float().unsqueeze(-1)  # [B, T]
            rewards = _fill_errored(scores.reward, scores.errored, cfg.group_size)  # [B]
            for entry, scfg in step_methods.shapers:
                rewards, sm = entry.fn(
                    rewards,
                    mask,
                    cfg=scfg,
                    group_size=cfg.group_size,
                    lengths=rollout.lengths,
                    truncated=rollout.truncated,
                    max_length=cfg.max_new_tokens,
                )
                m.update({k: float(v) for k, v in sm.items()})
            # --- advantages ------------------------------------------------------------------------------
            adv_entry, adv_cfg = step_methods.advantage
            advantages, am = adv_entry.fn(rewards, mask, cfg=adv_cfg, group_size=cfg.group_size)
            m.update({k: float(v) for k, v in am.items()})
            # the frozen reference's log-probs, once per rollout (not once per epoch and minibatch)
            if "ref_logp" in methods.needs:
                rollout.extras["ref_logp"] = reference_logp(ref_model, rollout, cfg)
            # the entropy change the Entropy Mechanism paper predicts from Cov(log pi, A), logged next to the
            # observed change (entropy/token_mean of the next step minus this one)
            m.update(entropy_change_prediction(rollout.logp, advantages, mask, lr=sched.get_last_lr()[0]))
            t2 = time.perf_counter()
            # --- PPO updates over minibatches ----------------------------------------------------------
            model.train()
            b = len(rollout)
            size = b // cfg.minibatches
            sums: dict[str, float] = {}
            grad_norms = []
            for _epoch in range(cfg.ppo_epochs):
                order = torch.randperm(b, generator=gen) if cfg.minibatches > 1 else torch.arange(b)
                for k in range(cfg.minibatches):
                    idx = order[k * size : (k + 1) * size]
                    part, adv, mk = rollout.select(idx), advantages[idx], mask[idx]
                    weight, mk, fm = apply_filters(step_methods, cfg, part, adv, mk)
                    _accumulate(sums, fm, 1.0)
                    mm = minibatch_loss_backward(model, ref_model, step_methods, cfg, part, adv, mk, weight, norm_len)
                    _accumulate(sums, mm, 1.0)
                    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
                    grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
            n_updates = cfg.ppo_epochs * cfg.minibatches
            m.update({k: v / n_updates for k, v in sums.items()})
            t3 = time.perf_counter()
            # --- log -------------------------------------------------------------------------------------
            rmask = rollout.response_mask
            gen_tokens = float(rmask.sum())
            m.update(
                {
                    "reward/mean": float(scores.reward.mean()),
                    "reward/std": float(scores.reward.std()),
                    "reward/shaped_mean": float(rewards.mean()),
                    "reward/accuracy": float(scores.right.float().mean()),
                    "reward/format_error": float(scores.format_error.float().mean()),
                    "reward/errors": float(scores.errored.sum()),
                    "entropy/token_mean": float(masked_mean(rollout.entropy, rmask)),
                    "entropy/sampled_nll": float(masked_mean(-rollout.logp, rmask)),
                    "len/mean": float(rollout.lengths.float().mean()),
                    "len/max": float(rollout.lengths.max()),
                    "len/truncated_frac": float(rollout.truncated.float().mean()),
                    "grad_norm": sum(grad_norms) / len(grad_norms),
                    "lr": sched.get_last_lr()[0],
                    "time/rollout": t1 - t0,
                    "time/reward": t2 - t1,
                    "time/update": t3 - t2,
                    "time/step": t3 - t0,
                    "throughput/tokens_per_s": gen_tokens / (t3 - t0),
                }
            )
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                ev, detail = evaluate(model, tokenizer, task, seed=cfg.seed, return_detail=True, **eval_kw)
                m.update({f"eval/{k}": v for k, v in ev.items()})
                if step == cfg.steps:
                    final_eval, final_detail = ev, detail
            _append(metrics_path, {"step": step, **m})
            for sink in sinks:
                sink.log(step, m)
            observed = m
            bar.update(step, m)
            # --- checkpoint ------------------------------------------------------------------------------
            if stop.requested or (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                checkpoint(step)
            if stop.requested:
                print(
                    f"\n{stop.requested}: checkpoint written at step {step}; continue with "
                    f"`entrolab train --resume {run}`",
                    file=sys.stderr,
                )
                raise SystemExit(130 if stop.requested == "SIGINT" else 143)

    wall = elapsed + time.perf_counter() - t_start
    if final_eval is None:  # resumed after the last step
        final_eval, final_detail = evaluate(model, tokenizer, task, seed=cfg.seed, return_detail=True, **eval_kw)
    for sink in sinks:
        sink.close()
    save_policy(model, tokenizer, run / "final")
    _write_json(run / "eval_detail.json", final_detail)
    summary = {
        "base_eval": base_eval,
        "final_eval": final_eval,
        "wall_time_s": wall,
        "steps": cfg.steps,
        "s_per_step": wall / max(cfg.steps, 1),
        "config": cfg.to_json(),
    }
    _write_json(run / "summary.json", summary)
    return summary


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _fill_errored(rewards: torch.Tensor, errored: torch.Tensor, group_size: int) -> torch.Tensor:
    """Set errored samples' rewards to the mean of the valid ones of their group (0 if none is valid).  [B]"""
    if not bool(errored.any()):
        return rewards
    r, e = group_view(rewards, group_size), group_view(errored, group_size)  # [P, G]
    mean = masked_mean(r, ~e, dim=1).unsqueeze(1)  # [P, 1]
    return torch.where(e, mean, r).reshape(-1)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _accumulate(sums: dict[str, float], metrics: dict[str, Any], weight: float) -> None:
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + (v.item() if isinstance(v, torch.Tensor) else float(v)) * weight


class _Progress:
    """A rich progress bar with step, reward, entropy and s/step; a plain line every 10 steps when off."""

    def __init__(self, cfg: TrainConfig, start: int, enabled: bool) -> None:
        self.cfg, self.start, self.enabled = cfg, start, enabled
        self.bar = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.cfg.steps, completed=self.start, info="")
        return self

    def update(self, step: int, m: dict[str, float]) -> None:
        info = f"reward {m['reward/mean']:.3f}  entropy {m['entropy/token_mean']:.3f}  {m['time/step']:.2f} s/step"
        if "eval/pass@1" in m:
            info += f"  pass@1 {m['eval/pass@1']:.3f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % 10 == 0 or step == self.cfg.steps:
            print(f"step {step}/{self.cfg.steps}  {info}", flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["Methods", "minibatch_loss_backward", "prompts_at", "train"]
