"""The GRPO-family trainer loop, read top to bottom: data -> rollout -> rewards -> advantages -> compose -> step ->
log -> checkpoint.

Where it departs from the papers (and from verl / TRL):
- Old log-probs are the rollout's own (recorded while sampling, see ``rollout.py``), not a second forward
  pass; they agree with a teacher-forced pass to ~1e-6 in fp32, so with one epoch the ratio is 1 up to that.
- Token filters run before the update of each optimisation minibatch (per micro-batch for
  ``scope="micro_batch"``) on rollout-time quantities (the behaviour policy's entropy and log-probs), not on
  the entropy of each update's forward pass; for the first pass over a batch they coincide.
- Schedules react to the previous step's metrics and set other methods' options (or controller state) for
  the next step; what they set and read is checked at start-up, and their state is checkpointed.
- Log-probs and entropies of the update come from hidden states through the chunked LM-head op; full
  [B, T, V] logits are built only for a method that declares ``needs=("logits",)``. Sampling and the
  teacher-forced pass run through ``lean.py`` for Llama-family models (``backend="auto"``).
- Rewards are scored in worker processes with a per-sample time limit (``rewards.RewardPool``). A sample whose
  reward raised, timed out or killed its worker (``--on-reward-error skip``) leaves the loss (its loss mask is
  zeroed) and its reward is set to the mean of the rest of its group, so it does not move the group baseline.
- A non-finite loss or gradient norm skips that optimizer step (weights, optimizer state and learning-rate
  schedule untouched); ``max_nonfinite_steps`` consecutive skips checkpoint and stop the run.
- The KL term (``kl`` regulariser) is a per-token loss term as in GRPO, not a reward penalty as in RLHF PPO.
- The learning-rate schedule advances once per (taken) optimizer step.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import Any

import torch

from entrolab.agent_rollout import ENV_NEEDS
from entrolab.chat import with_chat_template
from entrolab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from entrolab.config import TrainConfig
from entrolab.data import prompts_at, task_of
from entrolab.diagnostics import entropy_change_prediction
from entrolab.episodes import episodes
from entrolab.evaluate import decode_completions, evaluate
from entrolab.jsonio import append_jsonl, truncate_after, write_json_atomic
from entrolab.learner import (
    ROLLOUT_EXTRAS,
    SAMPLED_LSE,
    lr_factor,
    ppo_update,
    probe_entropy_change,
    reference_logp,
)
from entrolab.models import load_policy, save_policy
from entrolab.prm_update import prm_step
from entrolab.progress import Progress
from entrolab.progress_estimator import ProgressEstimator
from entrolab.reference_rewards import ReferenceRewards
from entrolab.rewards import RewardPool, load_reward_fn
from entrolab.rm_reward import RewardModelReward, gold_metrics
from entrolab.rollout import generate
from entrolab.runfolder import claim_run_folder
from entrolab.sampling import advantage_of, answer_marker, sampled_batch, scored_batch, shape_rewards
from entrolab.self_imitation import SelfImitation
from entrolab.self_imitation import parse_options as parse_sil_options
from entrolab.signals import StopFlag
from entrolab.sinks import make_sinks
from entrolab.step_inputs import MODEL_NEEDS, greedy_rewards, info_inputs, pre_update_needs, round_inputs
from entrolab.stepstats import seed_everything, step_metrics
from entrolab.tasks import ANSWER_TAG
from entrolab.update import Methods, inactive_warnings

# Keys the trainer itself logs every step (methods add theirs); what a schedule may read is checked against them.
TRAINER_METRICS = (
    *("reward/mean", "reward/std", "reward/shaped_mean", "reward/accuracy", "reward/format_error"),
    *("reward/errors", "reward/timeouts", "entropy/token_mean", "entropy/sampled_nll", "len/mean", "len/max"),
    *("len/truncated_frac", "grad_norm", "lr", "loss/total", "update/skipped_nonfinite"),
    *("cov/logp_adv", "entropy/predicted_delta", "entropy/observed_delta"),
)


class _NoSchedule:
    """A learning-rate schedule that stays put: replay steps sit inside one training step."""

    def step(self) -> None:
        pass


def _steps(rollout, got) -> torch.Tensor:
    """The step of each response token: a multi-turn rollout's turns, else the newline steps.  [B, T]"""
    return rollout.extras["step_ids"] if "step_ids" in rollout.extras else got["step_ids"]


def _model(rollout) -> torch.Tensor | float:
    """1 on the policy's tokens (a multi-turn episode's observations 0).  [B, T] or 1.0"""
    return rollout.extras.get("model_mask", 1.0)


class NonFiniteError(RuntimeError):
    """The loss or gradient norm was non-finite in ``max_nonfinite_steps`` consecutive optimizer steps."""


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, log=print) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the summary (also written to ``summary.json``).

    ``overwrite`` replaces a finished or interrupted run in ``cfg.out``; without it (and without ``resume``) a
    folder that already holds a run is refused, and so is a folder another process is training in.
    """
    run = Path(cfg.out)
    torch.set_num_threads(cfg.threads)
    model, tokenizer = load_policy(cfg.model)  # a bad path fails here, before any work
    task = task_of(cfg, cfg.task_seed)
    if cfg.env is None:  # a multi-turn env's episodes are plain text turns
        task = with_chat_template(task, tokenizer, cfg.chat_template, cfg.system_prompt)
    methods = Methods(cfg)
    methods.check_schedules(TRAINER_METRICS, ("eval/", "schedule/"))
    reward_fn = load_reward_fn(cfg.reward_fn) if cfg.reward_fn else None if cfg.env else task.verify
    if cfg.reward_model:  # the proxy as the reward, the verifier as gold
        reward_fn = RewardModelReward(cfg.reward_model, task.verify, cfg.reward_mix)
    ref_model = None
    pre_needs = pre_update_needs(methods)
    env_only = sorted((pre_needs | set(methods.needs)) & set(ENV_NEEDS))
    if cfg.env is None and (cfg.rollout != "plain" or cfg.self_imitation):
        raise ValueError(f"rollout={cfg.rollout!r} and self_imitation={cfg.self_imitation} act on episodes: add --env")
    if env_only and cfg.env is None:
        raise ValueError(f"a chosen method needs {env_only}, which only a multi-turn environment supplies: add --env")
    if cfg.env is not None and "greedy_rewards" in pre_needs:
        raise ValueError("a chosen method needs greedy_rewards (ReMax's greedy rollout), single-turn only: drop --env")
    if "prm_logp" in pre_needs and not cfg.prm_model:
        raise ValueError("a chosen method needs prm_logp: give the implicit process reward model with --prm-model DIR")
    if "ref_logp" in methods.needs or cfg.base_kl or {"ref_rewards", "ref_logp"} & pre_needs:
        ref_model, _ = load_policy(cfg.model)
        ref_model.eval().requires_grad_(False)
    prm_model = None
    if "prm_logp" in pre_needs:  # the implicit PRM: frozen, or updated online (PRIME) with --prm-lr
        prm_model, _ = load_policy(cfg.prm_model)
        prm_model.eval().requires_grad_(cfg.prm_lr > 0)
    sil = SelfImitation(parse_sil_options(cfg.self_imitation_options)) if cfg.self_imitation else None  # SPEAR
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    pool = (
        RewardPool(reward_fn, workers=cfg.reward_workers, timeout=cfg.reward_timeout, on_error=cfg.on_reward_error)
        if reward_fn is not None
        else contextlib.nullcontext()  # an env scores its own episodes
    )
    with claim_run_folder(run, mode), pool as pool:
        estimator = ProgressEstimator(model.config.hidden_size) if "progress" in pre_needs else None  # SPA
        others = (ref_model, prm_model, estimator, sil)
        return _loop(cfg, run, resume, model, tokenizer, others, task, methods, pool, log)


def _loop(cfg, run, resume, model, tokenizer, others, task, methods, pool, log) -> dict[str, Any]:
    # the frozen base (reference), the implicit PRM and SPA's progress estimator, when a method needs them
    ref_model, prm_model, estimator, sil = others
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    prm_opt = torch.optim.AdamW(prm_model.parameters(), lr=cfg.prm_lr) if prm_model is not None and cfg.prm_lr else None
    est_opt = torch.optim.Adam(estimator.parameters(), lr=cfg.progress_lr) if estimator is not None else None
    total_opt_steps = cfg.steps * cfg.ppo_epochs * cfg.minibatches
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_opt_steps, cfg.warmup_steps, cfg.lr_schedule)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    seed_everything(cfg.seed)
    eval_kw = dict(
        backend=cfg.backend,
        samples=cfg.eval_samples,
        max_new_tokens=cfg.response_budget,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        limit=cfg.eval_prompts,
        turn_tokens=cfg.turn_tokens,
        max_turns=cfg.max_turns,
    )
    metrics_path = run / "metrics.jsonl"
    sinks = make_sinks(cfg.log_to, run, cfg.to_json())
    s: dict[str, Any] = {"step": 0, "position": 0, "elapsed": 0.0, "streak": 0, "observed": {}, "scale_warnings": {}}
    s["active_sums"] = {}
    s["schedule_state"] = {e.name: {} for e, _ in methods.schedules}
    if resume:
        ckpt, path = load_checkpoint(run, log=log)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if prm_opt is not None:  # PRIME's online PRM continues where it was
            prm_model.load_state_dict(ckpt["prm"])
            prm_opt.load_state_dict(ckpt["prm_optimizer"])
        if sil is not None:  # SPEAR's replay buffer and baseline FIFO
            sil.load_state_dict(ckpt["self_imitation"])
        if est_opt is not None:  # SPA's progress estimator continues where it was
            estimator.load_state_dict(ckpt["progress"])
            est_opt.load_state_dict(ckpt["progress_optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], gen)
        legacy = ("step", "position", "base_eval", "elapsed", "schedule_state", "observed")  # a checkpoint.pt
        s.update(ckpt["loop"] if "loop" in ckpt else {k: ckpt[k] for k in legacy})
        truncate_after(metrics_path, s["step"])  # the resumed run writes later lines again
        log(f"resuming {run} at step {s['step']}/{cfg.steps} from {path.name}")
    else:
        write_json_atomic(run / "config.json", cfg.to_json())
        metrics_path.write_text("")
        s["base_eval"] = evaluate(model, tokenizer, task, seed=cfg.seed, **eval_kw)
        row = {f"eval/{k}": v for k, v in s["base_eval"].items()}
        append_jsonl(metrics_path, {"step": 0, **row})
        for sink in sinks:
            sink.log(0, row)

    t_start = time.perf_counter()

    def checkpoint(step: int) -> None:
        loop = {**s, "step": step, "elapsed": s["elapsed"] + time.perf_counter() - t_start}
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        if prm_opt is not None:
            state.update(prm=prm_model.state_dict(), prm_optimizer=prm_opt.state_dict())
        if est_opt is not None:
            state.update(progress=estimator.state_dict(), progress_optimizer=est_opt.state_dict())
        if sil is not None:
            state["self_imitation"] = sil.state_dict()
        save_checkpoint(run, {**state, "rng": rng_state(gen), "loop": loop, "config": cfg.to_json()}, step=step)

    final: tuple[dict[str, float], dict[str, Any]] | None = None
    refs = None  # the base policy's reference rewards per prompt (ref_rewards), cached for the run
    if "ref_rewards" in pre_update_needs(methods):
        refs = ReferenceRewards(
            ref_model,
            tokenizer,
            pool,
            cfg.reference_responses,
            seed=cfg.seed,
            prompt_of=task.prompt,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            backend=cfg.backend,
        )
    with StopFlag() as stop, Progress(cfg.steps, s["step"], enabled=cfg.progress) as bar:
        for step in range(s["step"] + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            # --- schedules: this step's method options from the previous step's metrics ------------------
            values: dict[str, Any] = {}
            for entry, scfg in methods.schedules:
                s["schedule_state"][entry.name], v = entry.fn(
                    s["schedule_state"][entry.name], s["observed"], cfg=scfg, step=step, total_steps=cfg.steps
                )
                values.update(v)
            step_methods = methods.configured(values)
            m: dict[str, float] = {f"schedule/{k}": float(v) for k, v in values.items()}
            # --- data, rollout and rewards (more rounds when a sampler drops groups) -----------------------
            spent = {"rollout": 0.0, "reward": 0.0}
            # model-side inputs of the methods before the update, and of the trained ones (EPO's turn gate)
            model_needs = pre_update_needs(step_methods) | (set(MODEL_NEEDS) & set(step_methods.needs))
            if estimator is not None:  # SPA reads its estimator on the hidden states at each step's end
                model_needs |= {"hidden_states", "step_ids"}
            answers: dict[str, int] = {}  # answer_ids of the step, shared across the samplers' rounds
            # the update's first minibatch runs at the sampling weights: it can reuse the sampling pass's lse
            reuse_lse = cfg.reuse_sampling_pass and cfg.env is None and "rollout_logp" not in step_methods.needs
            env_metrics: dict[str, float] = {}

            def draw(
                step_methods=step_methods,
                spent=spent,
                model_needs=model_needs,
                answers=answers,
                refs=refs,
                env_metrics=env_metrics,
                reuse_lse=reuse_lse,
            ):
                t_draw = time.perf_counter()
                examples = prompts_at(task, cfg.seed, s["position"], cfg.prompts_per_step)
                s["position"] += cfg.prompts_per_step
                rows = [e for e in examples for _ in range(cfg.group_size)]
                wanted = set(step_methods.needs) | model_needs  # the trained methods' and the advantage's
                extras = {k: ROLLOUT_EXTRAS[k] for k in sorted(wanted) if k in ROLLOUT_EXTRAS}
                counts: dict[str, torch.Tensor] = {}
                if cfg.env is not None:  # multi-turn episodes, scored by the environment turn by turn
                    env_seed = cfg.seed * 100_003 + s["position"]
                    ar = episodes(cfg, model, tokenizer, task, examples, gen, extras, seed=env_seed)
                    rollout, scored = ar.rollout, ar.scores
                    env_metrics.update(ar.metrics)
                    counts = {"turns": ar.turns, "tool_calls": ar.tool_calls}
                    texts = decode_completions(tokenizer, rollout)
                    spent["rollout"] += time.perf_counter() - t_draw
                else:
                    rollout = generate(
                        model,
                        tokenizer,
                        [task.prompt(e) for e in examples],
                        group_size=cfg.group_size,
                        max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature,
                        top_p=cfg.top_p,
                        generator=gen,
                        extras=extras,
                        backend=cfg.backend,
                        keep_lse=reuse_lse,
                    )
                    t_score = time.perf_counter()
                    texts = decode_completions(tokenizer, rollout)
                    scored = pool.score(texts, rows)
                    spent["rollout"] += t_score - t_draw
                    spent["reward"] += time.perf_counter() - t_score
                    if "greedy_rewards" in model_needs:  # ReMax: one greedy completion per prompt, scored alike
                        counts["greedy_rewards"] = greedy_rewards(
                            model,
                            tokenizer,
                            [task.prompt(e) for e in examples],
                            functools.partial(pool.score, examples=examples),
                            group_size=cfg.group_size,
                            max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature,
                            seed=cfg.seed * 1_000_003 + s["position"],
                            backend=cfg.backend,
                        )
                got = round_inputs(
                    model_needs,
                    model=model,
                    tokenizer=tokenizer,
                    rollout=rollout,
                    texts=texts,
                    references=[e.answer for e in rows],
                    extract=lambda text, i: task.extract_answer(text, rows[i]),
                    table=answers,
                    marker=ANSWER_TAG,
                    phase_marker=answer_marker(step_methods),
                    temperature=cfg.temperature,
                    backend=cfg.backend,
                    ref_model=ref_model,
                    prm_model=prm_model,
                    micro_batch_size=cfg.micro_batch_size,
                )
                got.update(counts)
                if estimator is not None:
                    with torch.no_grad():
                        got["progress"] = estimator.contributions(
                            got["hidden_states"], _steps(rollout, got), rollout.response_mask * _model(rollout)
                        )
                got.update(info_inputs(model_needs, scored.info))  # rm_heads, reward_parts
                if refs is not None:  # PAR: the base policy's responses to the same prompts
                    got["ref_rewards"] = refs(rows)
                return rollout, scored, got

            run_inputs = {"generator": gen, "step": step, "total_steps": cfg.steps}
            rollout, scores, got, sampler_metrics, row_keep = sampled_batch(
                draw,
                step_methods,
                group_size=cfg.group_size,
                n_groups=cfg.prompts_per_step,
                max_length=cfg.response_budget,
                pad_id=tokenizer.pad_token_id,
                inputs=run_inputs,
            )
            m.update(sampler_metrics)
            m.update(env_metrics)  # turns, tool calls, parse errors and success of the last round
            t1 = time.perf_counter()
            # --- rewards and advantages ----------------------------------------------------------------
            if bool(scores.errored.any()):  # --on-reward-error skip: dropped, counted, and said
                first = next(m for m in scores.messages if m).splitlines()[0]
                n, t = int(scores.errored.sum()), int(scores.timed_out.sum())
                print(
                    f"warning: step {step}: {n} rewards failed ({t} timed out), dropped; first: {first}",
                    file=sys.stderr,
                )
            batch = scored_batch(rollout, scores, cfg.group_size)
            sampled_lse = batch.extras.pop(SAMPLED_LSE, None)  # for this step's update only (never replayed)
            inputs = {**run_inputs, **got}
            raw, rewards, sm = shape_rewards(step_methods, batch, scores, cfg.response_budget, inputs)  # [B]
            m.update(sm)
            advantages, am, provided = advantage_of(step_methods, batch, rewards, inputs)
            batch = batch.replace(advantages=advantages, loss_mask=batch.loss_mask * row_keep.float().unsqueeze(-1))
            batch.extras.update(provided)
            batch.extras.update({k: got[k] for k in step_methods.needs if k in got and k not in batch.extras})
            m.update({k: float(v) for k, v in am.items()})
            if est_opt is not None:  # SPA: the estimator learns to split this batch's rewards over its steps
                steps = batch.extras.get("step_ids", got.get("step_ids"))
                m.update(estimator.fit_step(got["hidden_states"], steps, batch.loss_mask, raw, est_opt))
            if prm_opt is not None:  # PRIME: the PRM learns from the rollouts it just scored
                m.update(
                    prm_step(
                        prm_model,
                        prm_opt,
                        batch,
                        got["ref_logp"],
                        scores.right,
                        beta=cfg.prm_beta,
                        temperature=cfg.temperature,
                        backend=cfg.backend,
                    )
                )
            if "ref_logp" in step_methods.needs or cfg.base_kl:  # the frozen reference's log-probs, once per rollout
                ref = got.get("ref_logp")  # already computed for a method before the update
                if ref is None:
                    ref = reference_logp(ref_model, batch, cfg.micro_batch_size, cfg.temperature, cfg.backend)
                if "ref_logp" in step_methods.needs:
                    batch.extras["ref_logp"] = ref
                if cfg.base_kl:  # E_pi[log pi(y) - log pi_base(y)] over the step's (on-policy) sequences
                    m["kl/seq_to_base"] = float(((batch.old_logp - ref) * batch.model_tokens).sum(-1).mean())
            if "rollout_logp" in step_methods.needs:  # rollout correction: old_logp becomes the trainer's own
                batch.extras["rollout_logp"] = batch.old_logp
                model.eval()
                proximal = reference_logp(model, batch, cfg.micro_batch_size, cfg.temperature, cfg.backend)
                batch = batch.replace(old_logp=proximal * batch.attention_mask)
                m["rollout_corr/max_abs_logp_diff"] = float(
                    ((proximal - batch.extras["rollout_logp"]).abs() * batch.model_tokens).max()
                )
            # the entropy change the Entropy Mechanism paper predicts from Cov(log pi, A)
            m.update(entropy_change_prediction(batch.old_logp, advantages, batch.loss_mask, lr=sched.get_last_lr()[0]))
            t2 = time.perf_counter()
            # --- PPO updates over minibatches: compose -> backward -> guarded step ----------------------
            replay, sm = sil.replay_batch(gen) if sil is not None else (None, {})  # before this step's rows enter
            m.update(sm)
            model.train()
            um, grad_norms, s["streak"], warns = ppo_update(
                model, opt, sched, step_methods, batch, cfg, gen, s["streak"], step, sampled_lse=sampled_lse
            )
            m.update(um)
            if replay is not None:  # SPEAR: the replayed episodes' loss, weighted by gamma(k), in steps of its own
                size = max(1, len(batch) // cfg.minibatches)
                rm, rn, s["streak"], _ = ppo_update(
                    model,
                    opt,
                    _NoSchedule(),
                    step_methods,
                    replay,
                    cfg,
                    gen,
                    s["streak"],
                    step,
                    minibatches=max(1, len(replay) // size),
                    loss_scale=sil.coef(step),
                )
                m.update({f"sil/{k.replace('/', '_')}": v for k, v in rm.items()})
                m["sil/coef"] = sil.coef(step)
                grad_norms += rn
            if sil is not None:
                tool_calls = got.get("tool_calls", torch.zeros(len(batch), dtype=torch.long))
                m["sil/admitted"] = float(sil.add(batch, rewards, tool_calls, step))
            inactive = inactive_warnings(step_methods, s["active_sums"], m, step)
            warns.update({f"{name}:inactive": w for name, w in inactive.items()})
            for name in sorted(set(warns) - set(s["scale_warnings"])):  # said once per method, kept with the run
                s["scale_warnings"][name] = warns[name]
                print(f"warning: step {step}: {warns[name]}", file=sys.stderr)
                write_json_atomic(run / "scale_warnings.json", {"warnings": list(s["scale_warnings"].values())})
            t_probe = time.perf_counter()  # the entropy change on the same states, after the update
            m.update(probe_entropy_change(model, batch, cfg.entropy_probe, cfg.temperature, cfg.backend))
            t3 = time.perf_counter()
            m["time/entropy_probe"] = t3 - t_probe
            # --- log -----------------------------------------------------------------------------------
            m.update(step_metrics(batch, scores, rewards, grad_norms, sched.get_last_lr()[0]))
            m.update(gold_metrics(scores.info, batch.group_id))
            timing = {"time/rollout": spent["rollout"], "time/reward": spent["reward"] + (t2 - t1)}
            m.update({**timing, "time/update": t3 - t2, "time/step": t3 - t0})
            m["throughput/tokens_per_s"] = float(batch.attention_mask.sum()) / (t3 - t0)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                ev, detail = evaluate(model, tokenizer, task, seed=cfg.seed, return_detail=True, **eval_kw)
                m.update({f"eval/{k}": v for k, v in ev.items()})
                if step == cfg.steps:
                    final = (ev, detail)
            append_jsonl(metrics_path, {"step": step, **m})
            for sink in sinks:
                sink.log(step, m)
            s["observed"] = m
            bar.update(step, m)
            # --- checkpoint ----------------------------------------------------------------------------
            if s["streak"] >= cfg.max_nonfinite_steps:
                checkpoint(step)
                raise NonFiniteError(
                    f"non-finite loss or gradient norm in {s['streak']} consecutive optimizer steps (last at step "
                    f"{step}); the last good state is checkpointed in {run}"
                )
            if stop.requested or (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                checkpoint(step)
            if stop.requested:
                hint = f"continue with `entrolab train --resume {run}`"
                print(f"\n{stop.requested}: checkpoint written at step {step}; {hint}", file=sys.stderr)
                raise SystemExit(stop.exit_code)

    wall = s["elapsed"] + time.perf_counter() - t_start
    if final is None:  # resumed after the last step
        final = evaluate(model, tokenizer, task, seed=cfg.seed, return_detail=True, **eval_kw)
    for sink in sinks:
        sink.close()
    save_policy(model, tokenizer, run / "final")
    if prm_opt is not None:
        save_policy(prm_model, tokenizer, run / "final_prm")
    write_json_atomic(run / "eval_detail.json", final[1])
    summary = {
        "base_eval": s["base_eval"],
        "final_eval": final[0],
        "wall_time_s": wall,
        "steps": cfg.steps,
        "s_per_step": wall / max(cfg.steps, 1),
        "config": cfg.to_json(),
    }
    write_json_atomic(run / "summary.json", summary)
    return summary


__all__ = ["TRAINER_METRICS", "NonFiniteError", "train"]
