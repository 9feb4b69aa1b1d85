"""Cost of each registered method against plain `ppo_clip` on the tiny model, measured in the same run.

    python benchmarks/method_overhead.py [--quick]   # writes benchmarks/results/method_overhead.json and .md

One fixed rollout (P=16 prompts x G=8 samples, up to 32 new tokens, tiny1m) is updated over and over: for
every method, the update (token filters + forward + loss + backward) is timed alternately with the plain
`ppo_clip` update, repeats interleaved so that machine noise hits both alike. Reported per method:

- `update_overhead`: median(method update) / median(ppo_clip update) - 1;
- `step_overhead`: the same extra seconds over a whole baseline step (rollout + update), the cost a user sees;
  a method that needs a quantity recorded while sampling (`vocab_baseline`) also pays its extra rollout time.

Target (issue 4): <= 5 % for every token-level method. Methods that run a second model (a frozen reference
for a KL) are listed too; their cost is that forward pass, not the token-level arithmetic.

The methods that run before the update (advantages, reward shapers, samplers; issue 15) are timed the same
way against GRPO's advantage: their declared needs (``entrolab.step_inputs``: the extracted answers, the extra
teacher-forced pass over the reference answer, the hidden states), the shapers, samplers and the advantage.
`step_overhead` is their extra seconds over the baseline step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from entrolab import catalogue
from entrolab.batch import TokenBatch
from entrolab.config import TrainConfig
from entrolab.evaluate import decode_completions
from entrolab.learner import ROLLOUT_EXTRAS, minibatch_backward, reference_logp
from entrolab.models import build_tiny_model, build_tokenizer, load_policy, save_policy
from entrolab.rollout import generate
from entrolab.sampling import advantage_of, answer_marker, pre_inputs, scored_batch, shape_rewards
from entrolab.step_inputs import pre_update_needs, round_inputs
from entrolab.tasks import ANSWER_TAG, make_task
from entrolab.update import Counts, Methods, apply_filters

OUT = Path(__file__).parent / "results"
AXIS_FIELD = {"policy_loss": "policy_loss", "token_filter": "token_filters", "regularizer": "regularizers"}


def configs(model_dir: str) -> dict[str, TrainConfig]:
    base = dict(model=model_dir, max_new_tokens=32, prompts_per_step=16, group_size=8)
    out = {"ppo_clip": TrainConfig(**base)}
    for axis, field in AXIS_FIELD.items():
        for name in catalogue.names(axis):
            if (axis, name) == ("policy_loss", "ppo_clip"):
                continue
            value = name if axis == "policy_loss" else (name,)
            opts = ()
            if name == "overlong_penalty":
                continue
            if name == "entropy_bonus":
                opts = ("entropy_bonus.coef=0.001",)
            key = f"{axis}:{name}"
            extra = {"advantage": "copo"} if (axis, name) == ("policy_loss", "copo_loss") else {}
            out[key] = TrainConfig(**base, **{field: value}, **extra, options=opts)
    return out


PRE_FIELD = {"advantage": "advantage", "reward_shaper": "reward_shapers", "sampler": "samplers"}


def pre_configs(model_dir: str) -> dict[str, TrainConfig]:
    """GRPO's advantage (the baseline) and every advantage, reward shaper and sampler on top of it."""
    base = dict(model=model_dir, max_new_tokens=32, prompts_per_step=16, group_size=8)
    out = {"advantage:grpo": TrainConfig(**base)}
    for axis, field in PRE_FIELD.items():
        for name in catalogue.names(axis):
            if (axis, name) != ("advantage", "grpo"):
                opts = ("overlong_penalty.buffer_len=8",) if name == "overlong_penalty" else ()
                value = name if axis == "advantage" else (name,)
                out[f"{axis}:{name}"] = TrainConfig(**base, **{field: value}, options=opts)
    return out


def time_pre(model, tok, methods: Methods, rollout, texts, rows, scores, gen: torch.Generator, ref=None) -> float:
    """The work before the update: model-side needs (the reference's and an implicit PRM's passes, both with the
    frozen ``ref`` here), reward shapers, samplers' keep masks, the advantage. What a reward model's info holds
    (heads, parts) and PAR's cached reference rewards cost nothing per step and are given as tensors."""
    t0 = time.perf_counter()
    needs = pre_update_needs(methods)
    given = {
        "rm_heads": scores.reward.unsqueeze(1).repeat(1, 2),
        "reward_parts": torch.stack([scores.reward, scores.reward.flip(0)], 1),
        "ref_rewards": scores.reward.view(-1, 8).mean(1, keepdim=True).repeat_interleave(8, 0),
    }
    got = round_inputs(
        pre_update_needs(methods),
        model=model,
        tokenizer=tok,
        rollout=rollout,
        texts=texts,
        references=[e.answer for e in rows],
        extract=lambda text, i: text.rpartition(ANSWER_TAG)[2].strip() or None,
        table={},
        marker=ANSWER_TAG,
        phase_marker=answer_marker(methods),
        ref_model=ref,
        prm_model=ref,
    )
    batch = scored_batch(rollout, scores, 8)
    inputs = {"generator": gen, "step": 2, "total_steps": 10, **got, **{k: v for k, v in given.items() if k in needs}}
    _, rewards, _ = shape_rewards(methods, batch, scores, 32, inputs)
    for entry, scfg in methods.samplers:
        entry.fn(
            rewards,
            batch.loss_mask,
            cfg=scfg,
            group_id=batch.group_id,
            shaped=rewards,
            lengths=batch.lengths,
            entropy=batch.old_entropy,
            **{k: v for k, v in pre_inputs(batch, inputs).items() if k in entry.needs and k != "group_id"},
        )
    advantage_of(methods, batch, rewards, inputs)
    return time.perf_counter() - t0


def time_update(model, ref, methods: Methods, cfg: TrainConfig, batch: TokenBatch, gen: torch.Generator) -> float:
    """Filters + (the reference's forward, when needed) + forward/loss/backward through the composer."""
    t0 = time.perf_counter()
    if "ref_logp" in methods.needs:
        ref_logp = reference_logp(ref, batch, cfg.micro_batch_size, cfg.temperature, cfg.backend)
        batch = batch.replace(extras={**batch.extras, "ref_logp": ref_logp})
    part, _ = apply_filters(methods, batch, cfg.micro_batch_size, gen)
    minibatch_backward(
        model,
        methods,
        part,
        Counts.of(part, float(cfg.max_new_tokens)),
        micro_batch_size=cfg.micro_batch_size,
        temperature=cfg.temperature,
        backend=cfg.backend,
        generator=gen,
    )
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _scores(task, texts, rows):
    """The task's verdicts as the trainer's Scores (no worker pool: the verifier is cheap and in-process)."""
    from entrolab.rewards import Scores

    verdicts = [task.verify(t, e) for t, e in zip(texts, rows, strict=True)]
    r = torch.tensor([v.score for v in verdicts])
    z = torch.zeros(len(r), dtype=torch.bool)
    fmt = torch.tensor([v.reason == "format_error" for v in verdicts])
    return Scores(r, r >= 1.0, fmt, z, z, (None,) * len(r), (None,) * len(r))


def main(quick: bool) -> None:
    torch.set_num_threads(2)
    repeats = 3 if quick else 15
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer()
        save_policy(build_tiny_model(tok, "tiny1m"), tok, d)
        model, tok = load_policy(d)
        ref, _ = load_policy(d)
        ref.requires_grad_(False)
        task = make_task("arithmetic")
        prompts = [task.prompt(e) for e in task.train[:16]]
        gen = torch.Generator().manual_seed(0)

        def rollout_with(extras):
            t0 = time.perf_counter()
            r = generate(
                model, tok, prompts, group_size=8, max_new_tokens=32, generator=gen.manual_seed(0), extras=extras
            )
            return r, time.perf_counter() - t0

        base_rollout, _ = rollout_with({})
        rollout_s = statistics.median(rollout_with({})[1] for _ in range(3))
        full_rollout, _ = rollout_with(dict(ROLLOUT_EXTRAS))
        rollout_extra_s = statistics.median(rollout_with(dict(ROLLOUT_EXTRAS))[1] for _ in range(3)) - rollout_s
        adv = torch.randn(len(base_rollout), 1, generator=torch.Generator().manual_seed(1))
        batch = TokenBatch.from_rollout(full_rollout, 8).replace(advantages=adv)
        cfgs = configs(d)
        methods = {k: Methods(c) for k, c in cfgs.items()}
        texts = decode_completions(tok, full_rollout)
        rows_ex = [e for e in task.train[:16] for _ in range(8)]
        scores = _scores(task, texts, rows_ex)
        copo = Methods(cfgs["policy_loss:copo_loss"])
        probe = TokenBatch.from_rollout(full_rollout, 8)
        ids = {
            "answer_ids": round_inputs(
                {"answer_ids"},
                model=model,
                tokenizer=tok,
                rollout=full_rollout,
                texts=texts,
                references=[e.answer for e in rows_ex],
                extract=lambda t, i: task.extract_answer(t, rows_ex[i]),
                table={},
                marker=ANSWER_TAG,
            )["answer_ids"]
        }
        _, _, provided = advantage_of(copo, probe, scores.reward, ids)
        batch = batch.replace(extras={**batch.extras, **provided})  # what copo_loss needs from its advantage
        pre_cfgs = pre_configs(d)
        pre_methods = {k: Methods(c) for k, c in pre_cfgs.items()}
        pre_times: dict[str, list[float]] = {k: [] for k in pre_cfgs}
        for k in pre_cfgs:  # warm-up
            time_pre(model, tok, pre_methods[k], full_rollout, texts, rows_ex, scores, gen, ref)
        for _ in range(repeats):
            for k in pre_cfgs:
                if k == "advantage:grpo":
                    continue
                pre_times["advantage:grpo"].append(
                    time_pre(model, tok, pre_methods["advantage:grpo"], full_rollout, texts, rows_ex, scores, gen, ref)
                )
                pre_times[k].append(
                    time_pre(model, tok, pre_methods[k], full_rollout, texts, rows_ex, scores, gen, ref)
                )
        model.train()
        times: dict[str, list[float]] = {k: [] for k in cfgs}
        for k in cfgs:  # warm-up
            time_update(model, ref, methods[k], cfgs[k], batch, gen)
        for _ in range(repeats):
            for k in cfgs:
                if k == "ppo_clip":
                    continue
                times["ppo_clip"].append(time_update(model, ref, methods["ppo_clip"], cfgs["ppo_clip"], batch, gen))
                times[k].append(time_update(model, ref, methods[k], cfgs[k], batch, gen))
    base = statistics.median(times["ppo_clip"])
    rows = []
    for k, ts in times.items():
        if k == "ppo_clip":
            continue
        extra = statistics.median(ts) - base
        needs_rollout = any(n in ROLLOUT_EXTRAS for n in methods[k].needs)
        step_extra = extra + (rollout_extra_s if needs_rollout else 0.0)
        rows.append(
            {
                "method": k,
                "update_s": statistics.median(ts),
                "update_overhead": extra / base,
                "step_overhead": step_extra / (rollout_s + base),
                "needs": sorted(methods[k].needs),
            }
        )
    pre_base = statistics.median(pre_times["advantage:grpo"])
    pre_rows = []
    for k, ts in pre_times.items():
        if k == "advantage:grpo":
            continue
        extra = statistics.median(ts) - pre_base
        pre_rows.append(
            {
                "method": k,
                "pre_update_s": statistics.median(ts),
                "step_overhead": extra / (rollout_s + base + pre_base),
                "needs": sorted(pre_update_needs(pre_methods[k])),
            }
        )
    result = {
        "baseline_update_s": base,
        "baseline_pre_update_s": pre_base,
        "pre_update_rows": pre_rows,
        "rollout_s": rollout_s,
        "repeats": repeats,
        "rows": rows,
        "setting": "tiny1m, 16 prompts x 8 samples, <= 32 new tokens, 2 threads",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "method_overhead.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Baseline `ppo_clip` update {base * 1000:.0f} ms, rollout {rollout_s * 1000:.0f} ms "
        f"({result['setting']}, median of {repeats} interleaved repeats).",
        "",
        "| method | needs | update ms | update overhead | step overhead |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["method"]):
        lines.append(
            f"| {r['method']} | {', '.join(r['needs']) or '-'} | {r['update_s'] * 1000:.0f} | "
            f"{r['update_overhead']:+.1%} | {r['step_overhead']:+.1%} |"
        )
    lines += [
        "",
        f"Before the update (issue 15): GRPO's advantage takes {pre_base * 1000:.1f} ms; each method below adds its",
        "declared needs (one extra model pass each for answer_logp, hidden_states, ref_logp, prm_logp),",
        "shapers, samplers and advantage.",
        "",
        "| method | needs | before-update ms | step overhead |",
        "|---|---|---|---|",
    ]
    for r in sorted(pre_rows, key=lambda r: r["method"]):
        lines.append(
            f"| {r['method']} | {', '.join(r['needs']) or '-'} | {r['pre_update_s'] * 1000:.1f} | "
            f"{r['step_overhead']:+.1%} |"
        )
    (OUT / "method_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 15 (a smoke run)")
    main(p.parse_args().quick)
