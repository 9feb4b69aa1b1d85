from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from entrolab import catalogue
from entrolab.agent_rollout import ENV_NEEDS
from entrolab.batch import TokenBatch
from entrolab.checkpoint import has_checkpoint
from entrolab.config import PRESETS, TrainConfig, base_config
from entrolab.data import prompts_at
from entrolab.learner import minibatch_backward
from entrolab.step_inputs import pre_update_needs
from entrolab.trainer import train
from entrolab.update import Counts, Methods

AGG_MODES = catalogue.names("aggregation")
# bnpo normalises each micro-batch by its own token count (TRL's), so accumulation changes it by design
ADDITIVE = [m for m in AGG_MODES if m != "bnpo"]


def small_cfg(model_dir, out, base: TrainConfig | None = None, **kw) -> TrainConfig:
    """A few tiny steps on the random tiny model; ``base`` (e.g. a preset) supplies the algorithm."""
    small = dict(
        model=str(model_dir),
        task="arithmetic",
        out=str(out),
        steps=3,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=12,
        eval_every=0,
        eval_samples=2,
        eval_prompts=4,
        save_every=1,
        progress=False,
    )
    return replace(base or TrainConfig(), **{**small, **kw})


def fake_batch(model, tok, b: int = 16, seed: int = 0):
    """A rollout of the tiny model with rewards and group advantages, as the trainer would build it."""
    from entrolab.rollout import generate

    g = torch.Generator().manual_seed(seed)
    prompts = [f"{i}+{i + 1}-3=?\n" for i in range(b // 4)]
    r = generate(model, tok, prompts, group_size=4, max_new_tokens=10, generator=g)
    adv = torch.randn(b, 1, generator=g)
    return r, adv


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("mode", ADDITIVE)
def test_four_accumulated_micro_batches_give_the_gradient_of_one_big_batch(tiny_dir, tmp_path, mode):
    """Gradient accumulation never changes the loss normalisation (1e-6), for every aggregation mode."""
    from entrolab.models import load_policy

    model, tok = load_policy(tiny_dir)
    r, adv = fake_batch(model, tok)
    # float64, so that the check is about normalisation and not about fp32 summation order
    model.double()
    r.logp, r.response_mask = r.logp.double(), r.response_mask.double()
    # perturb old log-probs so that some ratios are clipped and the check covers both PPO branches
    noise = torch.randn(r.logp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r.logp = r.logp + 0.3 * noise * r.response_mask
    cfg = small_cfg(tiny_dir, tmp_path, aggregation=mode, regularizers=("entropy_bonus",))
    out = {}
    batch = TokenBatch.from_rollout(r, 4).replace(advantages=adv)
    for mb in (None, 4):
        model.zero_grad(set_to_none=True)
        metrics, finite = minibatch_backward(
            model, Methods(cfg), batch, Counts.of(batch, 12.0), micro_batch_size=mb, temperature=1.0
        )
        assert finite
        out[mb] = (grads(model).clone(), metrics)
    full, micro = out[None][0], out[4][0]
    assert full.abs().max() > 1e-4  # a real gradient
    assert torch.allclose(full, micro, atol=1e-6, rtol=0), (full - micro).abs().max()
    assert out[None][1]["loss/total"] == pytest.approx(out[4][1]["loss/total"], abs=1e-6)
    assert out[None][1]["clip/frac_low"] + out[None][1]["clip/frac_high"] > 0  # some tokens were clipped


def test_data_order_is_a_pure_function_of_seed_and_position():
    from entrolab.tasks import make_task

    task = make_task("arithmetic", seed=0)
    a = prompts_at(task, 0, 0, 10)
    assert prompts_at(task, 0, 4, 6) == a[4:]
    assert prompts_at(task, 1, 0, 10) != a
    n = len(task.train)  # a whole epoch visits every training example once
    assert len({e.id for e in prompts_at(task, 0, 0, n)}) == n


def test_train_writes_metrics_summary_and_final_model(tiny_dir, tmp_path):
    cfg = small_cfg(tiny_dir, tmp_path / "run", steps=2, eval_every=1, regularizers=("kl",), lr=1e-3, warmup_steps=4)
    summary = train(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    step = lines[1]
    for key in (
        "reward/mean",
        "reward/accuracy",
        "entropy/token_mean",
        "entropy/sampled_nll",
        "len/mean",
        "clip/frac_low",
        "clip/frac_high",
        "kl/ref_mean",
        "adv/mean",
        "grad_norm",
        "lr",
        "time/rollout",
        "time/update",
        "throughput/tokens_per_s",
        "eval/pass@1",
        "eval/pass@2",
        "loss/total",
    ):
        assert key in step, key
    assert step["kl/ref_mean"] == pytest.approx(0.0, abs=1e-6)  # first update: policy == reference
    assert [x.get("lr") for x in lines[1:]] == pytest.approx([1e-3 * 2 / 4, 1e-3 * 3 / 4])  # linear warm-up
    assert set(summary) >= {"base_eval", "final_eval", "wall_time_s", "config"}
    assert json.loads((run / "summary.json").read_text())["final_eval"] == summary["final_eval"]
    assert json.loads((run / "config.json").read_text())["regularizers"] == ["kl"]
    assert (run / "final" / "model.safetensors").is_file() and has_checkpoint(run)


def test_training_changes_every_parameter(tiny_dir, tmp_path):
    from entrolab.models import load_policy

    before = {k: v.clone() for k, v in load_policy(tiny_dir)[0].state_dict().items()}
    # a random model never answers, so reward the fraction of digits instead (varied rewards, real gradients)
    train(small_cfg(tiny_dir, tmp_path / "run", steps=2, reward_fn="tests.fault_fns:digits"), log=print)
    after = load_policy(tmp_path / "run" / "final")[0].state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k]) and "rotary" not in k]
    assert unchanged == []


def test_a_raising_reward_function_stops_the_run_with_the_example(tiny_dir, tmp_path):
    from entrolab.rewards import RewardError

    cfg = small_cfg(tiny_dir, tmp_path / "run", reward_fn="tests.fault_fns:raising_reward", prompts_per_step=16)
    with pytest.raises(RewardError, match=r"(?s)example 'arithmetic:1.*prompt: '1.*RuntimeError: boom"):
        train(cfg, log=lambda *a: None)


def test_skip_drops_errored_samples_and_counts_them(tiny_dir, tmp_path):
    cfg = small_cfg(
        tiny_dir,
        tmp_path / "run",
        reward_fn="tests.fault_fns:raising_reward",
        on_reward_error="skip",
        steps=1,
        prompts_per_step=16,
    )
    train(cfg, log=lambda *a: None)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1])
    task_prompts = prompts_at(__import__("entrolab.tasks", fromlist=["make_task"]).make_task("arithmetic"), 0, 0, 16)
    expected = 4 * sum(e.prompt.startswith("1") for e in task_prompts)
    assert expected > 0
    assert line["reward/errors"] == expected


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"lr": -1.0}, "lr must be > 0, got -1.0"),
        ({"group_size": 1}, "group_size must be >= 2"),
        ({"task": "chess"}, "unknown task 'chess'; known: arithmetic, countdown, jsonl"),
        ({"aggregation": "mean"}, "unknown aggregation 'mean'; known: bnpo, seq-mean-token-mean"),
        ({"policy_loss": "ppo"}, "unknown policy_loss 'ppo'; known:"),
        ({"options": ("ppo_clip.eps=0.1",)}, "unknown option"),
        ({"options": ("kl.coef=0.1",)}, "which this run does not use"),
        ({"minibatches": 3}, "minibatches=3 must divide"),
        ({"preset": "ppo"}, "unknown preset 'ppo'"),
    ],
)
def test_bad_values_fail_before_any_work_naming_the_value(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**kw)


def test_presets_and_toml_and_overrides(tmp_path):
    assert base_config("dapo").aggregation == "token-mean"
    assert "overlong_filter" in base_config("dapo").token_filters
    assert base_config("dr_grpo").advantage == "dr_grpo"
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "dapo"\nsteps = 7\n[options.ppo_clip]\neps_high = 0.3\n')
    cfg = base_config(None, str(toml))
    assert cfg.steps == 7 and cfg.preset == "dapo" and cfg.options == ("ppo_clip.eps_high=0.3",)
    assert cfg.method_options()["ppo_clip"] == {"eps_high": 0.3}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_end_to_end(tiny_dir, rm_dir, tmp_path, preset):
    """Each paper's recipe runs through the real trainer: finite metrics, every method's keys logged."""
    cfg = small_cfg(
        tiny_dir,
        tmp_path / "run",
        base=base_config(preset),
        steps=2,
        micro_batch_size=4,
        reward_fn="tests.fault_fns:digits",
    )
    needs = pre_update_needs(Methods(cfg)) | set(Methods(cfg).needs)
    if needs & set(ENV_NEEDS) or cfg.self_imitation or cfg.rollout != "plain":  # agent methods: episodes
        cfg = replace(cfg, env="lookup", reward_fn=None, turn_tokens=6, episode_tokens=40)
    if "prm_logp" in needs:  # PRIME's implicit PRM: any causal LM folder serves
        cfg = replace(cfg, prm_model=str(tiny_dir))
    if {"rm_heads", "reward_parts"} & needs:  # a reward model's heads / its proxy and gold parts
        cfg = replace(cfg, reward_model=str(rm_dir), reward_fn=None)
    train(cfg, log=lambda *a: None)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for v in last.values() if isinstance(v, float)), last
    methods = Methods(cfg)
    every = [methods.advantage, methods.policy_loss, *methods.filters, *methods.regularizers]
    for entry, _ in [*every, *methods.shapers, *methods.samplers]:
        missing = [k for k in entry.metrics if k not in last]
        assert not missing, (entry.name, missing)
    if methods.schedules:
        assert any(k.startswith("schedule/") for k in last)


def test_schedule_state_survives_resume(tiny_dir, tmp_path):
    """adaptive_entropy's coefficient continues from the checkpoint, not from its initial value."""
    kw = dict(
        reward_fn="tests.fault_fns:digits",
        regularizers=("entropy_bonus",),
        schedules=("adaptive_entropy",),
        options=("adaptive_entropy.target=10.0",),
    )
    full = small_cfg(tiny_dir, tmp_path / "full", steps=4, **kw)
    train(full, log=lambda *a: None)
    cut = small_cfg(tiny_dir, tmp_path / "cut", steps=2, **kw)
    train(cut, log=lambda *a: None)
    train(replace(cut, steps=4), resume=True, log=lambda *a: None)
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    coef = [x["schedule/entropy_bonus.coef"] for x in a[1:]]
    assert coef == sorted(coef) and coef[-1] > coef[0]  # entropy below the target: the bonus grows
    assert coef == [x["schedule/entropy_bonus.coef"] for x in b[1:]]


def test_a_policy_loss_that_needs_ref_logp_receives_them(tiny_dir, tmp_path):
    """A policy loss registered with needs=("ref_logp",) gets the frozen reference's log-probs (it used not to)."""
    cfg = small_cfg(
        tiny_dir,
        tmp_path / "run",
        steps=2,
        policy_loss="tests.user_methods:ref_aware",
        reward_fn="tests.fault_fns:digits",
        lr=1e-3,
        warmup_steps=1,
    )
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    assert rows[0]["test/ref_gap"] == pytest.approx(0.0, abs=1e-5)  # first update: the policy is the reference
    assert rows[1]["test/ref_gap"] > 1e-4  # after one step they differ


def test_base_kl_is_zero_on_the_first_rollout_and_logged_every_step(tiny_dir, tmp_path):
    """Step 1 samples from the base model itself: sum_t (log pi - log pi_base) = 0 up to the recording error."""
    cfg = small_cfg(tiny_dir, tmp_path / "run", steps=3, reward_fn="tests.fault_fns:digits", base_kl=True, lr=1e-2)
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    kl = [r["kl/seq_to_base"] for r in rows]
    assert abs(kl[0]) < 1e-4 and all(math.isfinite(v) for v in kl) and abs(kl[-1]) > abs(kl[0])


def test_rollout_correction_recomputes_old_logp_and_the_sampler_agrees_with_the_trainer(tiny_dir, tmp_path):
    """With rollout_is the update's old_logp is the trainer's own pass; on one machine the sampler's log-probs
    (the lean backend) equal it, so the IS weights are 1 and nothing is rejected."""
    cfg = small_cfg(
        tiny_dir, tmp_path / "run", steps=2, token_filters=("rollout_is",), reward_fn="tests.fault_fns:digits"
    )
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1:]]
    for r in rows:
        assert r["rollout_corr/max_abs_logp_diff"] < 1e-4, r["rollout_corr/max_abs_logp_diff"]
        assert abs(r["rollout_corr/is_mean"] - 1.0) < 1e-3 and r["rollout_corr/frac_rejected"] == 0.0


def test_remax_gets_the_reward_of_a_greedy_rollout_per_prompt(tiny_dir, tmp_path):
    """ReMax's baseline: one greedy completion per prompt, scored by the same reward function, the same for the
    G rows of a group (its mean is logged)."""
    cfg = small_cfg(tiny_dir, tmp_path / "run", steps=2, advantage="remax", reward_fn="tests.fault_fns:digits")
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1:]]
    assert all(math.isfinite(r["remax/greedy_reward_mean"]) for r in rows)
    with pytest.raises(ValueError, match="greedy_rewards"):
        train(replace(cfg, env="lookup", reward_fn=None, out=str(tmp_path / "env")), log=lambda *a: None)


def test_greedy_decoding_for_remax_ignores_the_seed_and_picks_the_top_token(tiny):
    from entrolab.rollout import generate
    from entrolab.step_inputs import GREEDY_TOP_P

    model, tok = tiny
    prompts = ["1+2=?\n", "7-3=?\n"]
    a, b = (
        generate(model, tok, prompts, max_new_tokens=6, top_p=GREEDY_TOP_P, generator=torch.Generator().manual_seed(s))
        for s in (0, 1)
    )
    assert torch.equal(a.response_ids, b.response_ids)
    # the first greedy token is the argmax of the model's next-token logits after each prompt
    from entrolab.rollout import encode_prompts

    ids, mask = encode_prompts(tok, prompts)
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    assert torch.equal(a.response_ids[:, 0], logits.argmax(-1))
