"""entrolab.integrations.verl against verl 0.9.1 on CPU (reference venv; skipped where verl is not installed).

Discovery through the entry point, parity of the plain policy-loss path with verl's own losses, invariance to
micro-batching and dp_size through ``global_batch_info``, ``compute_advantage`` on a shuffled ``DataProto``,
Hydra composition of ``ppo_trainer.yaml`` with ``validate_config``, the entrolab trainer's loss function on verl's
nested micro-batches (against the composer, over micro-batches and over two gloo ranks) and its schedule hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

import verl
from tensordict import TensorDict
from verl.trainer.ppo import core_algos
from verl.utils import tensordict_utils as tu
from verl.workers.config.actor import ActorConfig
from verl.workers.config.actor import PolicyLossConfig as VerlPolicyLossConfig

import entrolab.integrations.verl as plugin
from entrolab import catalogue
from entrolab.batch import TokenBatch
from entrolab.integrations.choice import MethodSpec
from entrolab.integrations.verl import advantages, config, loss_fn, losses
from entrolab.update import Counts, Methods, apply_filters, compose

TOL = dict(rtol=1e-6, atol=1e-7)
CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
PL = "entrolab.integrations.verl.config.PolicyLossConfig"
ALGO = "entrolab.integrations.verl.config.AlgoConfig"


def _batch(seed: int, b: int = 12, t: int = 24, spread: float = 1.0):
    """Ragged batch as verl's policy losses see it: advantages broadcast to [B, T], zero on padding; every row has
    at least one token."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # [B, T]
    old = -torch.rand(b, t, generator=g) * 4
    logp = (old + spread * torch.randn(b, t, generator=g)).requires_grad_()
    adv = (torch.randn(b, 1, generator=g) * 2).expand(b, t) * mask
    entropy = torch.rand(b, t, generator=g) * 3
    return mask, logp, old, adv, entropy


def _actor(loss_mode: str, low=0.2, high=0.2, c=3.0, agg="token-mean", policy_loss_cls=VerlPolicyLossConfig, **pl):
    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=1,
        use_torch_compile=False,
        clip_ratio_low=low,
        clip_ratio_high=high,
        clip_ratio_c=c,
        loss_agg_mode=agg,
        policy_loss=policy_loss_cls(loss_mode=loss_mode, **pl),
    )


def _run(loss_mode, cfg, mask, logp, old, adv, weights=None):
    loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(
        old_log_prob=old,
        log_prob=logp,
        advantages=adv,
        response_mask=mask.bool(),
        loss_agg_mode=cfg.loss_agg_mode,
        config=cfg,
        rollout_is_weights=weights,
    )
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, metrics


# ------------------------------------------------------------------------------------------- registration


@pytest.mark.parametrize("policy", ["auto", "modules"])
def test_entry_point_registers_every_method_in_a_fresh_verl_process(policy):
    code = (
        "import json, verl\n"
        "from verl.trainer.ppo import core_algos as c\n"
        "print(json.dumps([sorted(k for k in c.POLICY_LOSS_REGISTRY if k.startswith('entrolab.')),"
        " sorted(k for k in c.ADV_ESTIMATOR_REGISTRY if k.startswith('entrolab.'))]))\n"
    )
    env = dict(os.environ)
    if policy == "modules":  # older verl: no entry points, the module named in VERL_USE_EXTERNAL_MODULES
        env.update(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="entrolab.integrations.verl")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    pl, adv = json.loads(out.stdout.strip().splitlines()[-1])
    assert pl == [f"entrolab.{n}" for n in catalogue.names("policy_loss")]
    assert adv == [f"entrolab.{n}" for n in catalogue.names("advantage")]


def test_every_catalogue_method_is_registered_and_reimport_is_a_no_op():
    for name in catalogue.names("policy_loss"):
        assert core_algos.get_policy_loss_fn(f"entrolab.{name}").__entrolab__ == name
    for name in catalogue.names("advantage"):
        assert core_algos.get_adv_estimator_fn(f"entrolab.{name}").__entrolab__ == name
    before = dict(core_algos.ADV_ESTIMATOR_REGISTRY)
    assert losses.register_all() == plugin.POLICY_LOSSES and advantages.register_all() == plugin.ADVANTAGES
    assert core_algos.ADV_ESTIMATOR_REGISTRY == before
    assert len(plugin.POLICY_LOSSES) == len(catalogue.names("policy_loss")) >= 5


@pytest.mark.parametrize("version", ["0.8.0", "0.10.1", "1.0.0"])
def test_another_verl_version_fails_clearly(monkeypatch, version):
    monkeypatch.setattr(verl, "__version__", version)
    with pytest.raises(ImportError, match=rf"supports verl 0\.9\.x .* installed verl is {version}"):
        plugin._check_version()


# --------------------------------------------------------------------------------- plain path: parity


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("low", "high"), [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "token-sum"])
def test_entrolab_ppo_clip_with_verl_fields_equals_vanilla(seed, low, high, agg):
    mask, logp, old, adv, _ = _batch(seed, spread=1.2)  # wide ratios: every clip branch, dual clip included
    weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)) + 0.5
    ref_loss, ref_grad, ref_m = _run("vanilla", _actor("vanilla", low, high, agg=agg), mask, logp, old, adv, weights)
    loss, grad, m = _run(
        "entrolab.ppo_clip", _actor("entrolab.ppo_clip", low, high, agg=agg), mask, logp, old, adv, weights
    )
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert ref_m["actor/pg_clipfrac_lower"] > 0
    frac = m["actor/entrolab/clip/frac_low"] + m["actor/entrolab/clip/frac_high"]
    assert frac == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)
    assert m["actor/entrolab/clip/frac_dual"] == pytest.approx(ref_m["actor/pg_clipfrac_lower"], abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("ratio", "lb", "low", "high"), [(0.05, 0.5, 0.2, 0.28), (2e-4, 1.0, 0.2, 0.2), (0.02, 1.0, 1.0, 1.0)]
)
def test_entrolab_clip_cov_with_verl_fields_equals_verl_clip_cov(seed, ratio, lb, low, high):
    mask, logp, old, adv, _ = _batch(seed, spread=0.3)
    fields = dict(clip_cov_ratio=ratio, clip_cov_lb=lb, clip_cov_ub=5.0)
    torch.manual_seed(100 + seed)  # both draw the detached subset with torch.randperm on the global RNG
    ref_loss, ref_grad, ref_m = _run("clip_cov", _actor("clip_cov", low, high, **fields), mask, logp, old, adv)
    torch.manual_seed(100 + seed)
    loss, grad, m = _run("entrolab.clip_cov", _actor("entrolab.clip_cov", low, high, **fields), mask, logp, old, adv)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert ref_m["actor/pg_clipfrac"] > 0
    assert m["actor/entrolab/clip/frac_cov"] == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("ratio", "coef"), [(0.05, 1.0), (2e-4, 0.1)])
def test_entrolab_kl_cov_with_verl_fields_equals_verl_kl_cov(seed, ratio, coef):
    mask, logp, old, adv, _ = _batch(seed, spread=0.3)
    fields = dict(kl_cov_ratio=ratio, ppo_kl_coef=coef)
    ref_loss, ref_grad, ref_m = _run("kl_cov", _actor("kl_cov", **fields), mask, logp, old, adv)
    loss, grad, m = _run("entrolab.kl_cov", _actor("entrolab.kl_cov", **fields), mask, logp, old, adv)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert m["actor/entrolab/kl/abs_log_ratio"] == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-6)
    n = mask.sum().item()
    assert m["actor/entrolab/kl/frac_cov"] == pytest.approx(max(int(ratio * n), 1) / n, abs=1e-6)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum"])
@pytest.mark.parametrize("dp", [1, 2])
def test_plain_path_is_invariant_to_micro_batching_and_dp_size(agg, dp):
    """Micro-batches of each of dp ranks with verl's global_batch_info: the rank sums, averaged over ranks as DDP
    averages gradients, equal the whole batch on one rank; and equal verl's vanilla split the same way."""
    mask, logp, old, adv, _ = _batch(7, b=12, spread=1.2)
    whole, whole_grad, _ = _run("entrolab.ppo_clip", _actor("entrolab.ppo_clip", agg=agg), mask, logp, old, adv)
    totals = {}
    for mode in ("entrolab.ppo_clip", "vanilla"):
        cfg = _actor(mode, agg=agg)
        cfg.global_batch_info.update(
            dp_size=dp, batch_num_tokens=int(mask.sum()), global_batch_size=mask.shape[0], loss_scale_factor=None
        )
        total = 0.0
        for rows in torch.arange(12).chunk(dp * 3):  # 3 micro-batches per rank
            part = [x[rows] for x in (old, logp, adv, mask)]
            value = core_algos.get_policy_loss_fn(mode)(
                old_log_prob=part[0],
                log_prob=part[1],
                advantages=part[2],
                response_mask=part[3].bool(),
                loss_agg_mode=agg,
                config=cfg,
            )[0]
            total = total + value / dp  # the data-parallel mean
        totals[mode] = (total.detach(), torch.autograd.grad(total, logp)[0])
    torch.testing.assert_close(totals["entrolab.ppo_clip"][0], whole, **TOL)
    torch.testing.assert_close(totals["entrolab.ppo_clip"][1], whole_grad, **TOL)
    torch.testing.assert_close(totals["entrolab.ppo_clip"][0], totals["vanilla"][0], **TOL)


# ----------------------------------------------------------------------------- plain path: options, errors


def test_verl_fields_map_to_entrolab_options_without_the_subclass():
    spec, _ = config.policy_spec(
        _actor("entrolab.clip_cov", 0.1, 0.3, clip_cov_ratio=0.01, clip_cov_lb=0.5), "clip_cov"
    )
    assert spec.method_options()["clip_cov"] == dict(ratio=0.01, cov_lb=0.5, cov_ub=5.0, eps_low=0.1, eps_high=0.3)
    spec, _ = config.policy_spec(_actor("entrolab.kl_cov", kl_cov_ratio=0.003, ppo_kl_coef=0.5), "kl_cov")
    assert spec.method_options()["kl_cov"] == dict(ratio=0.003, coef=0.5)
    spec, _ = config.policy_spec(_actor("entrolab.ppo_clip", 0.2, 0.28, c=10.0, agg="seq-mean-token-mean"), "ppo_clip")
    assert spec.method_options()["ppo_clip"] == dict(eps_low=0.2, eps_high=0.28, dual_clip_c=10.0)
    assert spec.aggregation == "seq-mean-token-mean"


def test_entrolab_options_override_verl_fields_and_conflicts_raise():
    actor = _actor(
        "entrolab.clip_cov",
        policy_loss_cls=config.PolicyLossConfig,
        clip_cov_ratio=0.01,
        entrolab={"preset": "clip_cov", "options": ["clip_cov.cov_ub=4.0"]},
    )
    opts = config.policy_spec(actor, "clip_cov")[0].method_options()["clip_cov"]
    assert opts == dict(ratio=0.0002, cov_lb=1.0, cov_ub=4.0, eps_low=0.2, eps_high=0.2)  # preset > verl field
    clash = _actor("entrolab.ppo_clip", policy_loss_cls=config.PolicyLossConfig, entrolab={"preset": "clip_cov"})
    with pytest.raises(ValueError, match="preset 'clip_cov' uses policy_loss 'clip_cov'"):
        config.policy_spec(clash, "ppo_clip")
    typo = _actor("entrolab.ppo_clip", policy_loss_cls=config.PolicyLossConfig, entrolab={"token_filter": ["x"]})
    with pytest.raises(ValueError, match="unknown key"):
        config.policy_spec(typo, "ppo_clip")


@pytest.mark.parametrize(
    ("mode", "entrolab", "why"),
    [
        ("entrolab.steer", {}, "needs \\['old_entropy'\\]"),
        ("entrolab.ppo_clip", {"preset": "forking_tokens"}, "token filter 'forking_tokens'"),
        ("entrolab.ppo_clip", {"regularizers": ["entropy_bonus"]}, "regulariser 'entropy_bonus'"),
        ("entrolab.clip_cov", {"options": ["clip_cov.scope=batch"]}, "scope='batch'"),
    ],
)
def test_plain_path_refuses_what_it_cannot_compute_and_names_the_trainer(mode, entrolab, why):
    mask, logp, old, adv, _ = _batch(0)
    actor = _actor(mode, policy_loss_cls=config.PolicyLossConfig, entrolab=entrolab)
    with pytest.raises(ValueError, match=why) as err:
        _run(mode, actor, mask, logp, old, adv)
    assert "trainer.v1.trainer_mode=entrolab" in str(err.value)


# ------------------------------------------------------------------------------------------- advantages


def _proto(rewards, lengths, uids, t=6):
    from verl import DataProto

    b = len(rewards)
    mask = (torch.arange(t) < torch.tensor(lengths).unsqueeze(-1)).float()
    tlr = torch.zeros(b, t)
    tlr[torch.arange(b), (torch.tensor(lengths) - 1).clamp(min=0)] = torch.tensor(rewards) * (torch.tensor(lengths) > 0)
    return DataProto.from_dict(
        tensors={"token_level_rewards": tlr, "response_mask": mask}, non_tensors={"uid": np.array(uids, dtype=object)}
    )


@pytest.mark.parametrize(
    ("ours", "verl_name", "norm"),
    [("grpo", "grpo", True), ("dr_grpo", "grpo", False), ("grpo", "grpo", False), ("rloo", "rloo", True)],
)
def test_compute_advantage_groups_by_uid_in_any_order_and_matches_verl(ours, verl_name, norm):
    from verl.trainer.ppo.ray_trainer import compute_advantage

    g = torch.Generator().manual_seed(3)
    uids = [f"p{i}" for i in range(4) for _ in range(4)] + ["pad"] * 3  # verl's no-op padding rows: one uid
    rewards = torch.randint(0, 2, (16,), generator=g).float().tolist() + [0.0] * 3
    lengths = torch.randint(1, 7, (16,), generator=g).tolist() + [0] * 3
    algo = config.AlgoConfig(adv_estimator=f"entrolab.{ours}", norm_adv_by_std_in_grpo=norm)

    def run(perm, name):
        data = _proto([rewards[i] for i in perm], [lengths[i] for i in perm], [uids[i] for i in perm])
        return compute_advantage(data, adv_estimator=name, norm_adv_by_std_in_grpo=norm, config=algo).batch

    perm = torch.randperm(19, generator=g).tolist()
    base, shuffled = run(list(range(19)), f"entrolab.{ours}"), run(perm, f"entrolab.{ours}")
    torch.testing.assert_close(shuffled["advantages"], base["advantages"][perm], **TOL)
    torch.testing.assert_close(base["returns"], base["advantages"])
    reference = run(list(range(19)), verl_name)["advantages"]  # verl's own, on the unshuffled rows
    torch.testing.assert_close(base["advantages"][:16], reference[:16], rtol=1e-5, atol=1e-6)
    assert torch.equal(base["advantages"][16:], torch.zeros(3, 6))
    assert base["advantages"].abs().sum() > 0
    assert torch.equal(base["advantages"] == 0, (base["advantages"] == 0) | (base["response_mask"] == 0))


def test_reward_shapers_run_before_the_advantage_with_the_length_budget():
    from entrolab.methods.advantages import GRPOConfig, grpo
    from entrolab.methods.shapers import OverlongPenaltyConfig, overlong_penalty

    rewards, lengths = [1.0, 1.0, 0.0, 1.0], [2, 5, 6, 6]
    mask = (torch.arange(6) < torch.tensor(lengths).unsqueeze(-1)).float()
    tlr = torch.zeros(4, 6)
    tlr[torch.arange(4), torch.tensor(lengths) - 1] = torch.tensor(rewards)
    fn = core_algos.get_adv_estimator_fn("entrolab.grpo")
    algo = config.AlgoConfig(
        adv_estimator="entrolab.grpo",
        entrolab={"reward_shapers": ["overlong_penalty"], "options": ["overlong_penalty.buffer_len=4"]},
        max_response_length=6,
    )
    adv, _ = fn(token_level_rewards=tlr, response_mask=mask, config=algo, index=np.array(["a"] * 4, dtype=object))
    shaped, _ = overlong_penalty(
        torch.tensor(rewards),
        mask,
        cfg=OverlongPenaltyConfig(buffer_len=4),
        group_id=torch.zeros(4, dtype=torch.long),
        lengths=torch.tensor(lengths),
        truncated=torch.tensor(lengths) >= 6,
        max_length=6,
    )
    expected, _ = grpo(shaped, mask, cfg=GRPOConfig(), group_id=torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, expected * mask, **TOL)
    assert advantages.last_metrics()["reward/mean"] == pytest.approx(0.75)
    assert shaped.tolist() != rewards  # the penalty acted
    with pytest.raises(ValueError, match="max_response_length"):
        fn(
            token_level_rewards=tlr,
            response_mask=mask,
            index=np.array(["a"] * 4, dtype=object),
            config=config.AlgoConfig(adv_estimator="entrolab.grpo", entrolab={"reward_shapers": ["overlong_penalty"]}),
        )


# ------------------------------------------------------------------------------------------------ Hydra


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    base = [
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.n=4",
        "data.train_batch_size=256",
        "trainer.n_gpus_per_node=8",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=[*base, *overrides])


def _validate(cfg):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


CLIP_COV_CLI = (
    f"actor_rollout_ref.actor.policy_loss._target_={PL}",
    "actor_rollout_ref.actor.policy_loss.loss_mode=entrolab.clip_cov",
    "+actor_rollout_ref.actor.policy_loss.entrolab.preset=clip_cov",
    "+actor_rollout_ref.actor.policy_loss.entrolab.options=['clip_cov.ratio=0.001']",
    f"algorithm._target_={ALGO}",
    "algorithm.adv_estimator=entrolab.grpo",
    "+algorithm.max_response_length=${data.max_response_length}",
)


def test_hydra_composition_with_entrolab_overrides_passes_validate_config():
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose(*CLIP_COV_CLI)
    _validate(cfg)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, config.PolicyLossConfig)
    spec, _ = config.policy_spec(actor, "clip_cov")
    assert (spec.policy_loss, spec.aggregation, spec.token_filters) == ("clip_cov", "token-mean", ())
    assert spec.method_options()["clip_cov"] == dict(ratio=0.001, cov_lb=1.0, cov_ub=5.0, eps_low=0.2, eps_high=0.2)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert isinstance(algo, config.AlgoConfig) and algo.max_response_length == cfg.data.max_response_length
    assert config.advantage_spec(algo, "grpo")[0].method_options()["grpo"] == dict(norm_by_std=True)
    # the composed config runs: verl's policy-loss call on the converted actor config
    mask, logp, old, adv, _ = _batch(1, spread=0.3)
    torch.manual_seed(0)
    loss, _, _ = _run("entrolab.clip_cov", actor, mask, logp, old, adv)
    from entrolab.methods.aggregation import aggregate
    from entrolab.methods.covariance import ClipCovConfig, clip_cov

    torch.manual_seed(0)
    per_token, _ = clip_cov(logp, old, adv, mask, cfg=ClipCovConfig(ratio=0.001, eps_low=0.2, eps_high=0.2))
    torch.testing.assert_close(loss, aggregate(per_token, mask, "token-mean").detach(), **TOL)


def test_hydra_base_config_rejects_the_entrolab_key_without_the_subclass():
    from hydra.errors import InstantiationException

    cfg = _compose("+actor_rollout_ref.actor.policy_loss.entrolab.preset=clip_cov")
    with pytest.raises(InstantiationException, match="entrolab"):
        _validate(cfg)


# ----------------------------------------------------------------------- the trainer's loss function


def _verl_micro_batch(rows, logp, old, adv, mask, entropy, ref=None, dp=1, tokens=None, seqs=None):
    """verl's no-padding micro-batch: nested prompts/responses, log-probs over prompt + response (shifted by one)."""
    nest = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
    lengths = [int(mask[i].sum()) for i in rows]
    prompt_lens = [2 + i % 3 for i in rows]

    def seq_vals(x):
        pieces = zip(rows, prompt_lens, lengths, strict=True)
        return torch.cat([torch.cat([x.new_zeros(p - 1), x[i, :n], x.new_zeros(1)]) for i, p, n in pieces])

    offsets = torch.tensor([0, *np.cumsum([p + n for p, n in zip(prompt_lens, lengths, strict=True)]).tolist()])
    out = {
        k: torch.nested.nested_tensor_from_jagged(seq_vals(x), offsets)
        for k, x in (("log_probs", logp), ("entropy", entropy))
    }
    fields = {
        "prompts": nest([torch.ones(p, dtype=torch.long) for p in prompt_lens]),
        "responses": nest([torch.ones(n, dtype=torch.long) for n in lengths]),
        "response_mask": nest([mask[i, :n] for i, n in zip(rows, lengths, strict=True)]),
        "old_log_probs": nest([old[i, :n] for i, n in zip(rows, lengths, strict=True)]),
        "advantages": nest([adv[i, :n] for i, n in zip(rows, lengths, strict=True)]),
        "entropy": nest([entropy[i, :n].detach() * 0.9 for i, n in zip(rows, lengths, strict=True)]),  # old entropy
    }
    if ref is not None:
        fields["ref_log_prob"] = nest([ref[i, :n] for i, n in zip(rows, lengths, strict=True)])
    data = TensorDict(fields, batch_size=[len(rows)])
    tu.assign_non_tensor(data, dp_size=dp, batch_num_tokens=tokens, global_batch_size=seqs)
    return out, data


def _whole(spec, logp, old, adv, mask, entropy, ref, norm_len, seed=(1, 3)):
    """entrolab's composer on the whole padded batch (the built-in trainer's path, one minibatch), drawing random
    subsets from the generator the loss function seeds from (seed, step) and the batch."""
    b, t = mask.shape
    batch = TokenBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1),
        response_ids=torch.zeros(b, t, dtype=torch.long),
        attention_mask=mask,
        loss_mask=mask.clone(),
        old_logp=old,
        old_entropy=entropy.detach() * 0.9,
        group_id=torch.arange(b),
        truncated=torch.zeros(b, dtype=torch.bool),
        advantages=adv,
        extras={"ref_logp": ref},
    )
    methods = Methods(spec)
    generator = torch.Generator().manual_seed(loss_fn._seed(*seed, batch))
    batch, _ = apply_filters(methods, batch, None, generator)
    counts = Counts(float(mask.sum()), float(b), norm_len)
    loss, _ = compose(methods, batch, logp, entropy, counts=counts, generator=generator)
    return loss.detach(), torch.autograd.grad(loss, logp)[0]


SPECS = {
    "regularisers": MethodSpec(
        regularizers=("entropy_bonus", "kl"), options=("entropy_bonus.coef=0.01", "kl.coef=0.1")
    ),
    "forking": MethodSpec(token_filters=("forking_tokens",), options=("forking_tokens.rho=0.3",)),
    "steer_seq": MethodSpec(policy_loss="steer", aggregation="seq-mean-token-mean"),
    "seq_kl": MethodSpec(aggregation="seq-mean-token-mean", regularizers=("kl",), options=("kl.coef=0.2",)),
    "token_sum": MethodSpec(aggregation="token-sum", regularizers=("entropy_bonus",)),
    "clip_cov_batch": MethodSpec(
        policy_loss="clip_cov", options=("clip_cov.scope=batch", "clip_cov.ratio=0.05", "clip_cov.cov_lb=0.2")
    ),
}


def _loss_parts(spec, split, dp=1, norm_len=24.0):
    mask, logp, old, adv, entropy = _batch(5, b=12, spread=0.5)
    entropy = entropy.requires_grad_()
    ref = old - 0.1 * torch.rand(mask.shape, generator=torch.Generator().manual_seed(9))
    fn = loss_fn.EntrolabLoss(spec, max_response_length=24, seed=1, step=3)
    actor = _actor("entrolab." + spec.policy_loss, agg=spec.aggregation)
    total = 0.0
    for rows in torch.arange(12).chunk(split):
        out, data = _verl_micro_batch(rows.tolist(), logp, old, adv, mask, entropy, ref, dp, int(mask.sum()), 12)
        value, metrics = fn(actor, out, data, dp_group=None)
        assert metrics["actor/pg_loss"].aggregation.value == "sum"
        total = total + value / dp
    return (total.detach(), torch.autograd.grad(total, logp)[0]), _whole(
        spec, logp, old, adv, mask, entropy, ref, norm_len
    )


@pytest.mark.parametrize("name", ["regularisers", "steer_seq", "seq_kl", "token_sum", "forking", "clip_cov_batch"])
def test_trainer_loss_on_verl_micro_batches_equals_the_composer_on_the_whole_batch(name):
    (loss, grad), (ref_loss, ref_grad) = _loss_parts(SPECS[name], split=1)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["regularisers", "seq_kl", "token_sum"])  # steer: per-call weights, by design
@pytest.mark.parametrize(("split", "dp"), [(3, 1), (4, 2)])
def test_trainer_loss_is_invariant_to_micro_batching_and_dp_size(name, split, dp):
    (loss, grad), (ref_loss, ref_grad) = _loss_parts(SPECS[name], split=split, dp=dp)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


def _gloo_rank(rank: int, path: str, result: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    spec = SPECS["forking"]
    mask, logp, old, adv, entropy = _batch(5, b=12, spread=0.5)
    rows = list(range(rank * 5, 5 + rank * 7))  # ranks of 5 and 7 rows
    out, data = _verl_micro_batch(rows, logp, old, adv, mask, entropy, None, 2, int(mask.sum()), 12)
    value, _ = loss_fn.EntrolabLoss(spec, max_response_length=24)(
        _actor("entrolab.ppo_clip"), out, data, dist.group.WORLD
    )
    (grad,) = torch.autograd.grad(value, logp)
    torch.save((value.detach(), grad), f"{result}.{rank}")
    dist.destroy_process_group()


def test_trainer_loss_gathers_filter_statistics_over_the_data_parallel_group(tmp_path):
    """forking_tokens' entropy threshold over both ranks' rows: the ranks' mean is the whole batch's loss."""
    import torch.multiprocessing as mp

    mp.start_processes(_gloo_rank, args=(str(tmp_path / "store"), str(tmp_path / "r")), nprocs=2, start_method="spawn")
    parts = [torch.load(tmp_path / f"r.{r}") for r in range(2)]
    mask, logp, old, adv, entropy = _batch(5, b=12, spread=0.5)
    ref_loss, ref_grad = _whole(SPECS["forking"], logp, old, adv, mask, entropy, old, 24.0, seed=(0, 0))
    torch.testing.assert_close((parts[0][0] + parts[1][0]) / 2, ref_loss, **TOL)
    torch.testing.assert_close((parts[0][1] + parts[1][1]) / 2, ref_grad, **TOL)
    # without the gather each rank thresholds its own rows: a different loss
    (alone, _), _ = _loss_parts(SPECS["forking"], split=2)
    assert not torch.allclose(alone, ref_loss, rtol=1e-4)


def test_trainer_loss_refuses_methods_verl_cannot_feed():
    fn = loss_fn.EntrolabLoss(MethodSpec(regularizers=("siren",)))
    with pytest.raises(ValueError, match="'siren' needs logits"):
        fn.methods()


# ------------------------------------------------------------------------------------ the trainer hooks


@pytest.fixture(scope="module")
def trainer_module():
    """verl's v1 trainer imports TransferQueue (verl's verl-core extra, not in the reference venv): a stand-in
    module lets it import; nothing here calls it."""
    if "transfer_queue" not in sys.modules:
        try:
            import transfer_queue  # noqa: F401
        except ImportError:
            stub = types.ModuleType("transfer_queue")
            stub.__getattr__ = lambda name: type(name, (), {})  # type: ignore[attr-defined]
            sys.modules["transfer_queue"] = stub
    assert plugin.register_trainer() == "entrolab"
    from entrolab.integrations.verl import trainer

    return trainer


class _Workers:
    def __init__(self):
        self.installed = []

    def set_loss_fn(self, fn):
        self.installed.append(fn)


def test_trainer_is_registered_and_its_hooks_run_the_schedules(trainer_module):
    from verl.trainer.ppo.v1 import get_trainer_cls

    assert get_trainer_cls("entrolab") is trainer_module.EntrolabTrainer
    cfg = _compose(
        f"actor_rollout_ref.actor.policy_loss._target_={PL}",
        "actor_rollout_ref.actor.policy_loss.loss_mode=entrolab.ppo_clip",
        "+actor_rollout_ref.actor.policy_loss.entrolab.regularizers=[entropy_bonus]",
        "+actor_rollout_ref.actor.policy_loss.entrolab.schedules=[adaptive_entropy]",
        "+actor_rollout_ref.actor.policy_loss.entrolab.options=['adaptive_entropy.delta=0.001']",
        "trainer.v1.trainer_mode=entrolab",
        "algorithm.adv_estimator=grpo",
    )
    _validate(cfg)
    trainer = object.__new__(trainer_module.EntrolabTrainer)  # no Ray: the hooks on a minimal object
    trainer.entrolab = trainer_module.EntrolabRun(cfg)
    trainer.actor_rollout_wg, trainer.global_steps, trainer.total_training_steps = _Workers(), 0, 10
    trainer.checkpoint_manager = types.SimpleNamespace(update_weights=lambda step: None)
    trainer.timing_raw = {}
    trainer.on_init_end()
    assert trainer.actor_rollout_wg.installed[-1].func.values == {"entropy_bonus.coef": 0.0}
    trainer.global_steps = 1  # fit() counts from 1
    for step, entropy, coef in [(1, 0.1, 0.001), (2, 0.1, 0.002), (3, 0.5, 0.0)]:
        trainer._entrolab_metrics = {"actor/entrolab/entropy/token_mean": entropy, "actor/pg_loss": 0.5}
        trainer.on_step_end()
        installed = trainer.actor_rollout_wg.installed[-1]
        assert installed.func.values == {"entropy_bonus.coef": pytest.approx(coef)}
        assert installed.func.step == step + 1 and isinstance(installed.keywords["config"], ActorConfig)
        assert "schedule/entropy_bonus.coef" in trainer._consume_sync_metrics()
        trainer.global_steps += 1


def test_trainer_init_turns_on_the_entropy_and_checks_before_verl_starts(trainer_module, monkeypatch):
    started = []
    monkeypatch.setattr(trainer_module.PPOTrainerSync, "__init__", lambda self, config: started.append(config))
    cfg = _compose(
        f"actor_rollout_ref.actor.policy_loss._target_={PL}",
        "actor_rollout_ref.actor.policy_loss.loss_mode=entrolab.ppo_clip",
    )
    assert cfg.actor_rollout_ref.actor.calculate_entropy is False
    trainer = trainer_module.EntrolabTrainer(cfg)
    assert started == [cfg] and cfg.actor_rollout_ref.actor.calculate_entropy is True
    assert trainer.entrolab.spec.policy_loss == "ppo_clip"
    cfg.actor_rollout_ref.actor.policy_loss.loss_mode = "vanilla"
    with pytest.raises(ValueError, match="not an entrolab name"):
        trainer_module.EntrolabTrainer(cfg)
    assert len(started) == 1


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (("actor_rollout_ref.actor.entropy_coeff=0.01",), "entropy_bonus"),
        (("actor_rollout_ref.actor.use_kl_loss=True",), "regularizers=\\[kl\\]"),
        (("+actor_rollout_ref.actor.policy_loss.entrolab.regularizers=[kl]",), "use_kl_loss=True"),
        (("+actor_rollout_ref.actor.policy_loss.entrolab.preset=siren",), "needs logits"),
        (
            ("+actor_rollout_ref.actor.policy_loss.entrolab.preset=dr_grpo", "algorithm.adv_estimator=entrolab.grpo"),
            "uses advantage 'dr_grpo': set algorithm.adv_estimator=entrolab.dr_grpo",
        ),
    ],
)
def test_trainer_refuses_conflicting_verl_settings_at_start(trainer_module, overrides, why):
    cfg = _compose(
        f"actor_rollout_ref.actor.policy_loss._target_={PL}",
        "actor_rollout_ref.actor.policy_loss.loss_mode=entrolab.ppo_clip",
        *overrides,
    )
    with pytest.raises(ValueError, match=why):
        trainer_module.EntrolabRun(cfg)


def _doc_command_lines():
    """The verl command lines of docs/verl.md, as Hydra overrides."""
    import re
    import shlex

    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "verl.md")).read()
    blocks = re.findall(r"```bash\n(python3 -m verl\.trainer\.main_ppo.*?)```", text, flags=re.S)
    return [shlex.split(b.replace("\\\n", " "))[3:] for b in blocks]


def test_the_documented_command_lines_compose_validate_and_choose_the_methods(trainer_module):
    clip_cov_cli, forking_cli = _doc_command_lines()
    cfg = _compose(*clip_cov_cli)
    _validate(cfg)
    from verl.utils.config import omega_conf_to_dataclass

    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    spec, _ = config.policy_spec(actor, "clip_cov")
    assert losses.plain_problems(spec, losses.methods_of(spec)) == []  # the plain path serves it
    assert spec.method_options()["clip_cov"]["ratio"] == 0.0002 and cfg.trainer.v1.trainer_mode == "sync"
    cfg = _compose(*forking_cli)
    _validate(cfg)
    run = trainer_module.EntrolabRun(cfg)
    assert run.spec.token_filters == ("forking_tokens",) and cfg.trainer.v1.trainer_mode == "entrolab"
    assert run.spec.method_options()["forking_tokens"] == dict(rho=0.2, drop="zero_weight")
    assert run.spec.method_options()["ppo_clip"] == dict(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    assert losses.plain_problems(run.spec, run.methods)  # and the plain path would refuse it


def test_samplers_are_refused_by_both_verl_paths_with_verls_own_alternative():
    from entrolab.integrations.choice import MethodSpec
    from entrolab.integrations.verl.loss_fn import trainer_problems
    from entrolab.integrations.verl.losses import methods_of, plain_problems

    spec = MethodSpec(samplers=("dynamic_sampling",))
    assert any("filter_groups" in p for p in plain_problems(spec, methods_of(spec)))
    assert any("filter_groups" in p for p in trainer_problems(methods_of(spec)))


def test_riskpo_runs_as_a_verl_estimator_and_equals_the_catalogue_function():
    from entrolab.methods.riskpo import RiskPOConfig, riskpo

    g = torch.Generator().manual_seed(5)
    uids = [f"p{i}" for i in range(6) for _ in range(4)]
    rewards = torch.randint(0, 2, (24,), generator=g).float()
    mask = torch.ones(24, 5)
    tlr = torch.zeros(24, 5)
    tlr[:, -1] = rewards
    fn = core_algos.get_adv_estimator_fn("entrolab.riskpo")
    algo = config.AlgoConfig(adv_estimator="entrolab.riskpo")
    adv, _ = fn(token_level_rewards=tlr, response_mask=mask, config=algo, index=np.array(uids, dtype=object))
    expected, _ = riskpo(rewards, mask, cfg=RiskPOConfig(), group_id=torch.arange(6).repeat_interleave(4))
    torch.testing.assert_close(adv, expected * mask, **TOL)
    assert adv.abs().sum() > 0


@pytest.mark.parametrize(
    ("estimator", "shapers", "match"),
    [
        ("copo", [], "cannot carry"),
        ("erank", [], "hidden_states"),
        ("grpo", ["likelihood"], "answer_logp"),
        ("grpo", ["pear"], "old_entropy"),
        ("grpo", ["ares"], "old_entropy"),
        ("prl", [], "old_logp"),
        ("implicit_prm", [], "prm_logp"),
        ("tp_grpo", [], "prm_logp"),
        ("marble", [], "reward_parts"),
        ("gdpo", [], "reward_parts"),
        ("grpo", ["par"], "ref_rewards"),
        ("grpo", ["ctrl_u"], "rm_heads"),
        ("grpo", ["reward_meanstd"], "state across steps"),
    ],
)
def test_methods_verl_cannot_serve_are_refused_with_the_reason(estimator, shapers, match):
    fn = core_algos.get_adv_estimator_fn(f"entrolab.{estimator}")
    algo = config.AlgoConfig(
        adv_estimator=f"entrolab.{estimator}", entrolab={"reward_shapers": shapers}, max_response_length=4
    )
    with pytest.raises(ValueError, match=match):
        fn(
            token_level_rewards=torch.zeros(4, 4),
            response_mask=torch.ones(4, 4),
            config=algo,
            index=np.array(["a"] * 4, dtype=object),
        )


def test_random_reward_runs_in_verl_on_torch_global_rng():
    """verl's signature has no run generator: the spurious reward draws from torch's global RNG (seeded by verl)."""
    fn = core_algos.get_adv_estimator_fn("entrolab.grpo")
    algo = config.AlgoConfig(
        adv_estimator="entrolab.grpo", entrolab={"reward_shapers": ["random_reward"]}, max_response_length=4
    )
    torch.manual_seed(0)
    adv, _ = fn(
        token_level_rewards=torch.zeros(8, 4),
        response_mask=torch.ones(8, 4),
        config=algo,
        index=np.array(["a"] * 4 + ["b"] * 4, dtype=object),
    )
    assert adv.abs().sum() > 0  # all-zero verifier rewards, yet an advantage: the draws replaced them
    assert 0 <= advantages.last_metrics()["random_reward/frac_high"] <= 1


def test_methods_needing_groups_or_the_advantages_extras_are_refused_in_the_verl_trainer():
    """epe standardises within prompt groups and copo_loss needs copo's global advantage: verl's actor has neither,
    so the trainer refuses them instead of running them on single-row groups / without the blend."""
    from entrolab.integrations.choice import MethodSpec
    from entrolab.integrations.verl.loss_fn import trainer_problems
    from entrolab.integrations.verl.losses import methods_of

    epe = MethodSpec(token_filters=("epe",))
    assert any("group_id" in p and "uids" in p for p in trainer_problems(methods_of(epe)))
    copo = MethodSpec(advantage="copo", policy_loss="copo_loss")
    assert any("copo_global_adv" in p for p in trainer_problems(methods_of(copo)))
