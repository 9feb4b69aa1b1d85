"""``entrolab.integrations.trl`` against TRL 1.16 itself (reference venv; skipped where TRL is not installed).

- Parity: on hand-built generation batches (random prompts and completions of ragged lengths, random rewards,
  behaviour log-probs perturbed so that ratios leave the clip range), the adapter's loss and every parameter
  gradient equal TRL's own ``GRPOTrainer._compute_loss`` on the same trainer and the same micro-batches, for
  ``loss_type`` grpo / dr_grpo / dapo / bnpo under gradient accumulation, for ``top_entropy_quantile`` and for
  ``entropy_coef``.
- Runs: 3 real ``train()`` steps of a tiny local model for clip_cov, steer, kl and forking_tokens: the weights
  move and entrolab's metric keys reach TRL's log history.
- Two processes (``accelerate launch --multi_gpu --num_processes 2`` on CPU, gloo): filters and minibatch
  statistics are computed over both processes' tokens (recomputed here from both ranks' tensors).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import split_tensor_dict

from entrolab.integrations.trl import STATE_FILE, EntrolabGRPOTrainer
from entrolab.integrations.trl_config import check_version, trl_methods
from entrolab.models import load_policy

TOL = dict(atol=1e-6, rtol=1e-5)
ROOT = Path(__file__).resolve().parents[1]


def ones_reward(completions, **kw) -> list[float]:
    """A reward that varies between completions of a random model: the number of '1' characters."""
    return [float(c.count("1")) for c in completions]


def _args(tmp_path, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        learning_rate=1e-3,
    )
    base.update(kw)
    return GRPOConfig(**base)


def _trainer(tiny_dir, tmp_path, methods=None, **kw) -> EntrolabGRPOTrainer:
    model, tok = load_policy(tiny_dir)
    tok.padding_side = "left"
    ds = Dataset.from_list([{"prompt": f"{i} + {i} ="} for i in range(64)])
    return EntrolabGRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=ones_reward,
        args=_args(tmp_path, **kw),
        train_dataset=ds,
        methods=methods,
    )


def _hand_built(tr: EntrolabGRPOTrainer, n: int, seed: int) -> dict:
    """A generation batch as TRL's ``_generate_and_score_completions`` returns it, built by hand."""
    g = torch.Generator().manual_seed(seed)
    vocab = tr.model.config.vocab_size
    tp, t = 5, tr.max_completion_length
    prompt_ids = torch.randint(3, vocab, (n, tp), generator=g)
    prompt_len = torch.randint(2, tp + 1, (n,), generator=g)
    prompt_mask = (torch.arange(tp) >= tp - prompt_len.unsqueeze(1)).long()  # left-padded
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[0] = t
    completion_ids = torch.randint(3, vocab, (n, t), generator=g)
    completion_mask = (torch.arange(t) < lengths.unsqueeze(1)).long()
    eos = tr.eos_token_ids[0]
    ends = torch.rand(n, generator=g) < 0.5  # half of the rows end with EOS
    completion_ids[ends, (lengths - 1)[ends]] = eos
    completion_ids = completion_ids * completion_mask + tr._tokenizer.pad_token_id * (1 - completion_mask)
    tr._rewards_per_func = torch.randint(0, 3, (n, 1), generator=g).float()
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.zeros(n),
        "num_items_in_batch": completion_mask.sum(),
    }


def _perturb_old(tr: EntrolabGRPOTrainer, out: dict, seed: int) -> None:
    """Behaviour log-probs = the current ones + noise, so ratios spread over roughly [0.6, 1.6]."""
    g = torch.Generator().manual_seed(seed + 100)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        logp, _, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, out["completion_ids"].shape[1])
    out["old_per_token_logps"] = logp + 0.3 * torch.randn(logp.shape, generator=g)


def _loss_and_grads(tr, fn, chunks) -> tuple[float, list[torch.Tensor]]:
    tr.model.zero_grad(set_to_none=True)
    total = 0.0
    for chunk in chunks:
        loss = fn(tr.model, chunk)
        loss.backward()
        total += float(loss.detach())
    grads = [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
    return total, grads


def _parity(tr: EntrolabGRPOTrainer, ga: int, seed: int, perturb: bool = True) -> None:
    tr.model.train()
    tr.current_gradient_accumulation_steps = ga
    n = tr.args.per_device_train_batch_size * ga
    out = tr.entrolab_prepare(_hand_built(tr, n, seed))
    if perturb:
        _perturb_old(tr, out, seed)
    chunks = split_tensor_dict(out, ga)
    ours, ours_g = _loss_and_grads(tr, tr._compute_loss, chunks)
    trls, trl_g = _loss_and_grads(tr, lambda m, x: GRPOTrainer._compute_loss(tr, m, x), chunks)
    assert abs(ours - trls) <= 1e-6 + 1e-5 * abs(trls), (ours, trls)
    assert len(ours_g) == len(trl_g) > 0
    for a, b in zip(ours_g, trl_g, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert any(float(x.abs().max()) > 0 for x in ours_g)  # a real gradient, not two zeros


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("ga", [1, 2])
def test_ppo_clip_with_each_aggregation_matches_trl_loss_types(tiny_dir, tmp_path, loss_type, ga):
    tr = _trainer(tiny_dir, tmp_path, loss_type=loss_type, gradient_accumulation_steps=ga, epsilon_high=0.28)
    spec = tr.entrolab_methods
    assert spec.policy_loss == "ppo_clip" and "ppo_clip.eps_high=0.28" in spec.options
    _parity(tr, ga, seed=ga)


def test_forking_tokens_matches_top_entropy_quantile(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, loss_type="dapo", top_entropy_quantile=0.3)
    assert tr.entrolab_methods.token_filters == ("forking_tokens",)
    _parity(tr, 1, seed=3)
    metrics = tr._metrics["train"]
    assert 0.2 < metrics["filter/frac_kept"][-1] < 0.45  # about 30 % of the tokens kept


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_entropy_bonus_matches_entropy_coef(tiny_dir, tmp_path, loss_type):
    tr = _trainer(tiny_dir, tmp_path, loss_type=loss_type, entropy_coef=0.05)
    assert tr.entrolab_methods.regularizers == ("entropy_bonus",)
    _parity(tr, 1, seed=4, perturb=False)


def test_kl_beta_matches_trl_kl_with_bias_correction(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, loss_type="dapo", beta=0.1)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    out = tr.entrolab_prepare(_hand_built(tr, 8, seed=5))
    _perturb_old(tr, out, 5)
    g = torch.Generator().manual_seed(9)
    old = out["old_per_token_logps"]
    out["ref_per_token_logps"] = old + 0.2 * torch.randn(old.shape, generator=g)
    chunks = [out]
    ours, ours_g = _loss_and_grads(tr, tr._compute_loss, chunks)
    trls, trl_g = _loss_and_grads(tr, lambda m, x: GRPOTrainer._compute_loss(tr, m, x), chunks)
    assert abs(ours - trls) <= 1e-6 + 1e-5 * abs(trls)
    for a, b in zip(ours_g, trl_g, strict=True):
        torch.testing.assert_close(a, b, **TOL)


TRL_OWN = [  # TRL settings whose loss is one of the catalogue's own policy losses (issue 18)
    (dict(loss_type="cispo", epsilon_high=4.0), "cispo"),
    (dict(loss_type="sapo"), "sapo"),
    (dict(loss_type="vespo"), "vespo"),
    (dict(loss_type="dapo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4), "gspo"),
    (dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4), "gspo"),
    (dict(loss_type="luspo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4), "luspo"),
    (dict(loss_type="dapo", delta=1.5), "ppo_clip"),
    (dict(loss_type="dapo", off_policy_mask_threshold=0.05), "ppo_clip_opmask"),
]


@pytest.mark.parametrize(("settings", "policy"), TRL_OWN, ids=[p for _, p in TRL_OWN])
@pytest.mark.parametrize("ga", [1, 2])
def test_trl_loss_types_map_to_the_catalogue_and_match_trl(tiny_dir, tmp_path, settings, policy, ga):
    tr = _trainer(tiny_dir, tmp_path, gradient_accumulation_steps=ga, **settings)
    assert tr.entrolab_methods.policy_loss == policy
    _parity(tr, ga, seed=10 + ga)


def test_unsupported_trl_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="importance_sampling_level='sequence' with loss_type='sapo'"):
        trl_methods(_args(tmp_path, loss_type="sapo", importance_sampling_level="sequence"), None)
    with pytest.raises(ValueError, match="delta"):
        trl_methods(_args(tmp_path, loss_type="cispo", delta=2.0), None)
    with pytest.raises(ValueError, match="normalize_then_sum"):
        trl_methods(_args(tmp_path, multi_objective_aggregation="normalize_then_sum"), {"advantage": "rloo"})
    with pytest.raises(ValueError, match="unknown option"):
        trl_methods(_args(tmp_path), {"policy_loss": "steer", "options": ["steer.w_max=1.2"]})
    with pytest.raises(ValueError, match="unknown key"):
        trl_methods(_args(tmp_path), {"policy": "steer"})
    with pytest.raises(ImportError, match=r"trl>=1\.16,<1\.17"):
        check_version("1.17.0")
    check_version("1.16.3")


def test_methods_mapping_overrides_trl_fields(tmp_path):
    spec, rule, _ = trl_methods(
        _args(tmp_path, loss_type="bnpo", epsilon=0.1, beta=0.02),
        {"policy_loss": "steer", "token_filters": ["forking_tokens"], "options": ["steer.weight_max=1.2"]},
    )
    assert (spec.policy_loss, spec.aggregation, spec.token_filters, spec.regularizers) == (
        "steer",
        "token-mean",
        ("forking_tokens",),
        ("kl",),
    )
    assert "steer.eps_low=0.1" in spec.options and "steer.weight_max=1.2" in spec.options
    assert "kl.coef=0.02" in spec.options and rule == "micro_batch"
    spec, rule, _ = trl_methods(_args(tmp_path, loss_type="bnpo"), "dr_grpo")  # the preset names its aggregation
    assert spec.aggregation == "seq-mean-token-sum-norm" and rule == "window"


# --------------------------------------------------------------------------------------------- real runs
RUNS = {
    "clip_cov": ("clip_cov", "clip/frac_cov"),
    "steer": ("steer", "steer/weight_mean"),
    "kl": ({"regularizers": ["kl"], "options": ["kl.coef=0.05"]}, "kl/ref_mean"),
    "forking_tokens": ("forking_tokens", "filter/frac_kept"),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_three_step_run_moves_weights_and_logs_entrolab_metrics(tiny_dir, tmp_path, name):
    methods, key = RUNS[name]
    tr = _trainer(tiny_dir, tmp_path, methods=methods)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))
    logged = [row for row in tr.state.log_history if "loss" in row]
    assert len(logged) == 3
    for row in logged:
        assert key in row and "adv/std" in row and "entropy/token_mean" in row and "reward/errors" in row
    if name == "kl":
        assert tr.ref_model is not None and any(row["kl/ref_mean"] > 0 for row in logged[1:])


def test_schedule_state_is_saved_with_trl_checkpoints_and_restored(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, methods="skywork_or1", save_strategy="steps", save_steps=2, max_steps=2)
    tr.train()
    path = tmp_path / "out" / "checkpoint-2" / STATE_FILE
    state = json.loads(path.read_text())
    assert "adaptive_entropy" in state["schedule_state"] and "entropy/token_mean" in state["observed"]
    logged = [row for row in tr.state.log_history if "schedule/entropy_bonus.coef" in row]
    assert len(logged) == 2
    fresh = _trainer(tiny_dir, tmp_path, methods="skywork_or1")
    fresh.entrolab_load_state(str(path.parent))
    assert fresh._schedule_state == state["schedule_state"] and fresh._observed == state["observed"]
    resumed = _trainer(tiny_dir, tmp_path, methods="skywork_or1", max_steps=3)
    resumed.train(resume_from_checkpoint=str(path.parent))  # TRL's own resume, through the adapter's hook
    assert resumed.state.global_step == 3


def test_unscorable_completions_leave_the_loss_and_are_counted(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path)
    tr.model.train()
    out = _hand_built(tr, 8, seed=7)
    tr._rewards_per_func[2] = float("nan")  # every reward function returned None for row 2
    out = tr.entrolab_prepare(out)
    batch = tr._generation["train"].batch
    assert float(batch.loss_mask[2].sum()) == 0 and float(batch.attention_mask[2].sum()) > 0
    assert tr._metrics["train"]["reward/errors"][-1] == 1.0
    assert torch.isfinite(out["advantages"]).all()


# ---------------------------------------------------------------------------------------------- 2 processes
def test_two_processes_compute_filters_and_statistics_over_both(tiny_dir, tmp_path):
    from entrolab.batch import TokenBatch
    from entrolab.integrations.choice import MethodSpec
    from entrolab.update import Methods, apply_filters, minibatch_stats

    env = {**os.environ, "ENTROLAB_TINY": str(tiny_dir), "ENTROLAB_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += [str(ROOT / "tests" / "trl_two_processes.py")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # DDP: one model
    width = max(r["attention_mask"].shape[1] for r in ranks)

    def cat(key):
        return torch.cat([torch.nn.functional.pad(r[key], (0, width - r[key].shape[1])) for r in ranks])

    n = sum(r["attention_mask"].shape[0] for r in ranks)
    glob = TokenBatch(
        prompt_ids=torch.zeros(n, 1, dtype=torch.long),
        prompt_mask=torch.zeros(n, 1),
        response_ids=torch.zeros(n, width, dtype=torch.long),
        attention_mask=cat("attention_mask"),
        loss_mask=cat("attention_mask"),
        old_logp=cat("old_logp"),
        old_entropy=cat("old_entropy"),
        group_id=torch.arange(n // 4).repeat_interleave(4),
        truncated=torch.cat([r["truncated"] for r in ranks]),
        advantages=torch.cat([r["advantages"] for r in ranks]),
    )
    methods = Methods(MethodSpec(**ranks[0]["spec"]))
    filtered, _ = apply_filters(methods, glob, None, None)
    kept = filtered.loss_mask
    assert torch.equal(kept, cat("loss_mask"))  # the 30 % threshold of both ranks' tokens, on each rank
    selected = minibatch_stats(*methods.policy_loss, filtered)["selected"]
    assert torch.equal(selected, cat("selected"))  # KL-Cov's top-k over both ranks' kept tokens
    # ... which is not what each rank alone would select: the test can tell the two apart
    alone, _ = apply_filters(methods, glob.select(slice(0, n // 2)), None, None)
    first = ranks[0]["attention_mask"].shape[1]
    assert not torch.equal(alone.loss_mask[:, :first], ranks[0]["loss_mask"])


def test_dynamic_sampling_drops_flat_groups_from_the_loss_without_refill(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, methods="dapo")
    assert tr.entrolab_methods.samplers == ("dynamic_sampling",)
    tr.model.train()
    out = _hand_built(tr, 8, seed=11)
    tr._rewards_per_func = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.0], [1.0], [0.0], [0.0]])  # groups of 4
    tr.entrolab_prepare(out)
    batch = tr._generation["train"].batch
    assert float(batch.loss_mask[:4].sum()) == 0 and float(batch.loss_mask[4:].sum()) > 0
    assert tr._metrics["train"]["sampler/kept_frac"][-1] == 0.5
    assert tr._generation["train"].window_tokens == float(batch.loss_mask.sum())  # the dapo count drops them too


def test_pear_gets_the_behaviour_entropies_and_answer_phase_in_the_adapter(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, methods="pear")
    tr.model.train()
    out = _hand_built(tr, 8, seed=12)
    tr._rewards_per_func = torch.ones(8, 1)  # every answer right: the reward is 1 - P
    out = tr.entrolab_prepare(out)
    gen = tr._generation["train"]
    assert float(gen.batch.old_entropy.abs().sum()) > 0  # the behaviour pass ran for PEAR
    assert tr._metrics["train"]["pear/think_entropy"][-1] > 0
    assert tr._metrics["train"]["reward/shaped_mean"][-1] < 1.0


# ------------------------------------------------------------------------------ issue 15's methods in TRL
NEW_RUNS = {
    "copo": ("copo", "copo/weight_mean"),
    "riskpo": ("riskpo", "riskpo/objective"),
    "best_of_n": ("best_of_n", "best_of_n/best_reward_mean"),
    "entrocraft": ("entrocraft", "entrocraft/target"),
    "epe": ("epe", "epe/weight_mean"),
    "spurious_reward": ("spurious_reward", "random_reward/frac_high"),
}


@pytest.mark.parametrize("name", sorted(NEW_RUNS))
def test_issue_15_presets_train_in_trl_and_log_their_metrics(tiny_dir, tmp_path, name):
    methods, key = NEW_RUNS[name]
    tr = _trainer(tiny_dir, tmp_path, methods=methods, max_steps=2)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    logged = [row for row in tr.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(key in row and math.isfinite(row[key]) for row in logged), logged
    if name != "spurious_reward":  # a random reward may leave every group flat (zero advantage) on a tiny run
        assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))


def test_copo_gets_answer_ids_equal_for_equal_answers_and_its_global_advantage(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, methods="copo")
    ids = tr._answer_ids(["x answer: 4", "answer: 4", "no marker", "answer: 5"])
    assert ids[0] == ids[1] and ids[2] == -1 and ids[3] != ids[0] and bool((ids[[0, 1, 3]] >= 0).all())
    tr.model.train()
    out = _hand_built(tr, 8, seed=13)
    tr._rewards_per_func = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.0], [1.0], [0.0], [0.0]])
    tr.entrolab_prepare(out)
    batch = tr._generation["train"].batch
    assert set(batch.extras) >= {"copo_global_adv", "copo_weight"}
    # the all-right group: local advantage 0, global advantage > 0 (its accuracy is above the batch's)
    assert float(batch.advantages[:4].abs().max()) == 0 and float(batch.extras["copo_global_adv"][:4].min()) > 0


def test_methods_needing_an_extra_model_pass_are_refused_by_the_adapter(tiny_dir, tmp_path):
    for preset, need in (("likelihood", "answer_logp"), ("erank", "hidden_states")):
        with pytest.raises(ValueError, match=need):
            _trainer(tiny_dir, tmp_path, methods=preset)


def zeros_reward(completions, **kw) -> list[float]:
    """A second reward component: the number of '0' characters."""
    return [float(c.count("0")) for c in completions]


def test_issue_16_advantages_in_trl_prl_on_trls_reference_and_marble_on_its_reward_functions(tiny_dir, tmp_path):
    tr = _trainer(tiny_dir, tmp_path, methods={"advantage": "prl", "options": ["prl.step_len=4"]}, max_steps=2)
    assert tr.ref_model is not None  # prl reads the reference's log-probs: TRL loads its reference model
    tr.train()
    logged = [row for row in tr.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(math.isfinite(row["prl/kl_seq_mean"]) for row in logged)
    model, tok = load_policy(tiny_dir)
    tok.padding_side = "left"
    ds = Dataset.from_list([{"prompt": f"{i} + {i} ="} for i in range(64)])
    tr = EntrolabGRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=[ones_reward, zeros_reward],
        args=_args(tmp_path / "marble", max_steps=2),
        train_dataset=ds,
        methods="marble",
    )
    tr.train()
    logged = [row for row in tr.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(0 <= row["marble/valid_frac"] <= 1 for row in logged)


def test_normalize_then_sum_is_gdpo_with_trls_weights_and_eps(tiny_dir, tmp_path):
    from trl.trainer.utils import nanstd

    from entrolab.methods.marble import GdpoConfig, gdpo

    args = _args(tmp_path, multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5])
    spec, _, _ = trl_methods(args, None)
    assert spec.advantage == "gdpo" and "gdpo.eps=0.0001" in spec.options and "gdpo.weights=(1.0, 0.5)" in spec.options
    # TRL's normalize_then_sum (GRPOTrainer._generate_and_score_completions), on 3 groups of 4 and 2 functions
    g = torch.Generator().manual_seed(0)
    parts = torch.randint(0, 3, (12, 2), generator=g).float()
    grouped = parts.view(-1, 4, 2)
    reward_k = ((grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)).view(-1, 2)
    summed = (reward_k * torch.tensor([1.0, 0.5])).sum(1)
    trl_adv = (summed - summed.mean()) / (nanstd(summed) + 1e-4)
    ours, _ = gdpo(
        parts.sum(1),
        torch.ones(12, 3),
        cfg=GdpoConfig(eps=1e-4, weights=(1.0, 0.5)),
        group_id=torch.arange(12) // 4,
        reward_parts=parts,
    )
    torch.testing.assert_close(ours.squeeze(1), trl_adv, atol=1e-6, rtol=0)
    model, tok = load_policy(tiny_dir)
    tok.padding_side = "left"
    tr = EntrolabGRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=[ones_reward, zeros_reward],
        args=_args(tmp_path / "gdpo", max_steps=2, multi_objective_aggregation="normalize_then_sum"),
        train_dataset=Dataset.from_list([{"prompt": f"{i} + {i} ="} for i in range(64)]),
    )
    tr.train()
    logged = [row for row in tr.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(math.isfinite(row["gdpo/pre_norm_std"]) for row in logged)


@pytest.mark.parametrize(("preset", "need"), [("par", "ref_rewards"), ("prime", "prm_logp"), ("ctrl_u", "rm_heads")])
def test_issue_16_methods_needing_what_trl_does_not_compute_are_refused(tiny_dir, tmp_path, preset, need):
    with pytest.raises(ValueError, match=need):
        _trainer(tiny_dir, tmp_path, methods=preset)


def test_running_statistics_shapers_get_their_schedule_state_in_trl(tiny_dir, tmp_path):
    """reward_meanstd normalises by every reward seen: at step 2 its running mean pools both steps' batches."""
    methods = {"reward_shapers": ["reward_meanstd"], "schedules": ["reward_running_stats"]}
    tr = _trainer(tiny_dir, tmp_path, methods=methods, max_steps=2)
    tr.train()
    first, second = [row for row in tr.state.log_history if "loss" in row]
    n1, m1 = first["reward_meanstd/batch_n"], first["reward_meanstd/batch_mean"]
    n2, m2 = second["reward_meanstd/batch_n"], second["reward_meanstd/batch_mean"]
    assert second["schedule/reward_meanstd.n"] == n1
    assert second["reward_meanstd/run_mean"] == pytest.approx((n1 * m1 + n2 * m2) / (n1 + n2), rel=1e-5)


def length_reward(completions, **kw) -> list[float]:
    """Characters of the whole episode (model turns and observations): varies between random episodes."""
    return [float(len(c)) / 100 for c in completions]


def _env_trainer(tiny_dir, tmp_path, methods, **kw):
    from entrolab.integrations.trl_env import EnvRollout

    model, tok = load_policy(tiny_dir)
    tok.padding_side = "left"
    env = EnvRollout("lookup", turn_tokens=6, max_tokens=60)
    args = _args(tmp_path, max_steps=2, max_completion_length=60, **kw)
    return EntrolabGRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=[env.reward, length_reward],  # the random model never succeeds: a reward that varies
        args=args,
        train_dataset=env.dataset(),
        methods=methods,
        rollout_func=env,
    ), env


@pytest.mark.parametrize(("methods", "key"), [("gigpo", "gigpo/step_group_size_mean"), ("empg", "empg/scale_max")])
def test_entrolab_environments_train_in_trl_through_rollout_func(tiny_dir, tmp_path, methods, key):
    tr, env = _env_trainer(tiny_dir, tmp_path, methods)
    seen = {}
    prepare = tr.entrolab_prepare

    def spy(out):
        seen["out"] = out
        return prepare(out)

    tr.entrolab_prepare = spy
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))
    logged = [row for row in tr.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(key in row for row in logged)
    out = seen["out"]
    # observations are attended but never trained on: TRL's loss mask is completion_mask * env_mask
    assert out["tool_mask"] is not None and bool((out["tool_mask"] == 0).any())
    batch = tr._generation["train"].batch
    obs = (batch.attention_mask > 0) & (out["tool_mask"][:, : batch.attention_mask.shape[1]] == 0)
    assert torch.all(batch.loss_mask[obs] == 0) and env.calls == 2


def test_agent_methods_without_an_environment_are_refused_in_trl(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"only a multi-turn environment supplies: pass rollout_func="):
        _trainer(tiny_dir, tmp_path, methods="gigpo")
