"""What each loss, estimator and option of the anchor engines (verl 0.9.1, TRL 1.16) is in entrolab.

``COUNTERPARTS`` maps every name the engines register or accept to the entrolab method, option or preset that
computes the same thing (checked for parity in the reference venv's ``tests/test_parity_*.py``);
``EXCLUSIONS`` lists the few with no counterpart and why. ``tests/test_engine_registries.py`` reads the engines'
own registries and config choices and fails on a name that is in neither table, so a new engine release that
adds a loss shows up as a failing test. ``entrolab methods --engines`` prints both tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Engine = Literal["verl", "trl"]
# what kind of engine name: verl's policy-loss and advantage-estimator registries, its KL estimators
# (``kl_penalty``), its rollout-correction modes; TRL's ``loss_type``, ``importance_sampling_level``,
# ``scale_rewards``, ``multi_objective_aggregation`` and ``vllm_importance_sampling_mode`` choices
Kind = Literal[
    "policy_loss",
    "advantage",
    "kl_estimator",
    "loss_type",
    "importance_sampling_level",
    "scale_rewards",
    "multi_objective_aggregation",
    "vllm_importance_sampling_mode",
    "option",
]


@dataclass(frozen=True)
class Counterpart:
    """The entrolab side of one engine name: registered methods (``axis:name``) and the options that make them
    compute what the engine computes."""

    methods: tuple[str, ...]
    options: tuple[str, ...] = ()
    note: str = ""


def _c(*methods: str, options: tuple[str, ...] = (), note: str = "") -> Counterpart:
    return Counterpart(tuple(methods), options, note)


COUNTERPARTS: dict[tuple[Engine, Kind, str], Counterpart] = {
    # --- verl policy losses (core_algos.POLICY_LOSS_REGISTRY) ---------------------------------------------
    ("verl", "policy_loss", "vanilla"): _c(
        "policy_loss:ppo_clip", options=("ppo_clip.dual_clip_c=3.0",), note="verl always applies dual-clip"
    ),
    ("verl", "policy_loss", "gspo"): _c("policy_loss:gspo"),
    ("verl", "policy_loss", "geo_mean"): _c("policy_loss:gmpo"),
    ("verl", "policy_loss", "cispo"): _c(
        "policy_loss:cispo", options=("cispo.eps_low=0.2",), note="verl's clip_ratio_low=0.2 also bounds r below"
    ),
    ("verl", "policy_loss", "sapo"): _c(
        "policy_loss:sapo", "aggregation:seq-mean-token-mean", note="verl ignores loss_agg_mode for sapo"
    ),
    ("verl", "policy_loss", "dppo_tv"): _c(
        "policy_loss:dppo_tv", options=("dppo_tv.is_cap=3.0",), note="verl's clip_ratio_c=3.0 truncates the weight"
    ),
    ("verl", "policy_loss", "dppo_kl"): _c(
        "policy_loss:dppo_kl", options=("dppo_kl.is_cap=3.0",), note="verl's clip_ratio_c=3.0 truncates the weight"
    ),
    ("verl", "policy_loss", "dro"): _c("policy_loss:dro"),
    ("verl", "policy_loss", "gpg"): _c("policy_loss:gpg"),
    ("verl", "policy_loss", "clip_cov"): _c("policy_loss:clip_cov"),
    ("verl", "policy_loss", "kl_cov"): _c("policy_loss:kl_cov"),
    ("verl", "policy_loss", "bypass_mode"): _c(
        "policy_loss:reinforce_is",
        "policy_loss:ppo_clip",
        note="entrolab's old_logp is the sampler's by default, which is verl's bypass mode (pi_old = pi_rollout): "
        "its ppo_clip loss is ppo_clip, its reinforce loss reinforce_is",
    ),
    # --- verl advantage estimators (core_algos.ADV_ESTIMATOR_REGISTRY) -------------------------------------
    ("verl", "advantage", "grpo"): _c("advantage:grpo"),
    ("verl", "advantage", "grpo_vectorized"): _c("advantage:grpo", note="the same estimator, vectorised"),
    ("verl", "advantage", "rloo"): _c("advantage:rloo"),
    ("verl", "advantage", "rloo_vectorized"): _c("advantage:rloo", note="the same estimator, vectorised"),
    ("verl", "advantage", "gdpo"): _c("advantage:gdpo", options=("gdpo.batch_stats='tokens'",)),
    ("verl", "advantage", "grpo_passk"): _c("advantage:grpo_passk"),
    ("verl", "advantage", "reinforce_plus_plus"): _c("advantage:reinforce_pp"),
    ("verl", "advantage", "reinforce_plus_plus_baseline"): _c("advantage:reinforce_pp_baseline"),
    ("verl", "advantage", "remax"): _c("advantage:remax"),
    ("verl", "advantage", "opo"): _c("advantage:opo"),
    ("verl", "advantage", "gpg"): _c("advantage:gpg"),
    ("verl", "advantage", "optimal_token_baseline"): _c("advantage:optimal_token_baseline"),
    ("verl", "advantage", "tir_optimal_token_baseline"): _c("advantage:tir_optimal_token_baseline"),
    # --- verl KL estimators (core_algos.kl_penalty) ---------------------------------------------------------
    **{
        ("verl", "kl_estimator", name): _c(
            "regularizer:kl", "reward_shaper:kl_in_reward", options=(f"estimator={name!r}",)
        )
        for name in ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
    },
    # --- TRL GRPOConfig choices ------------------------------------------------------------------------------
    ("trl", "loss_type", "grpo"): _c("policy_loss:ppo_clip", "aggregation:seq-mean-token-mean"),
    ("trl", "loss_type", "bnpo"): _c("policy_loss:ppo_clip", "aggregation:bnpo"),
    ("trl", "loss_type", "dr_grpo"): _c("policy_loss:ppo_clip", "aggregation:seq-mean-token-sum-norm"),
    ("trl", "loss_type", "dapo"): _c("policy_loss:ppo_clip", "aggregation:token-mean"),
    ("trl", "loss_type", "cispo"): _c(
        "policy_loss:cispo",
        "aggregation:token-mean",
        options=("cispo.bounds='trl'",),
        note="TRL's epsilon_high is the cap on r itself: cispo.eps_high = epsilon_high",
    ),
    ("trl", "loss_type", "sapo"): _c("policy_loss:sapo", "aggregation:seq-mean-token-mean"),
    ("trl", "loss_type", "luspo"): _c("policy_loss:luspo"),
    ("trl", "loss_type", "vespo"): _c("policy_loss:vespo"),
    ("trl", "importance_sampling_level", "token"): _c("policy_loss:ppo_clip"),
    ("trl", "importance_sampling_level", "sequence"): _c("policy_loss:gspo"),
    ("trl", "scale_rewards", "group"): _c("advantage:grpo"),
    ("trl", "scale_rewards", "batch"): _c("advantage:grpo", options=("grpo.std_scope='batch'",)),
    ("trl", "scale_rewards", "none"): _c("advantage:dr_grpo"),
    ("trl", "multi_objective_aggregation", "sum_then_normalize"): _c("advantage:grpo"),
    ("trl", "multi_objective_aggregation", "normalize_then_sum"): _c("advantage:gdpo"),
    **{
        ("trl", "vllm_importance_sampling_mode", mode): _c("token_filter:rollout_is")
        for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
    },
    # --- TRL GRPOConfig options that are methods here ---------------------------------------------------------
    ("trl", "option", "delta"): _c(
        "policy_loss:ppo_clip", note="INTELLECT-2's two-sided clip: ppo_clip.dual_clip_c = delta (> 1 + epsilon_high)"
    ),
    ("trl", "option", "off_policy_mask_threshold"): _c(
        "policy_loss:ppo_clip_opmask", note="ppo_clip_opmask.threshold = off_policy_mask_threshold"
    ),
    ("trl", "option", "use_bias_correction_kl"): _c("regularizer:kl", options=("kl.ratio_weighted=True",)),
    ("trl", "option", "top_entropy_quantile"): _c("token_filter:forking_tokens"),
    ("trl", "option", "vllm_importance_sampling_correction"): _c("token_filter:rollout_is"),
    ("trl", "option", "use_adaptive_entropy"): _c("regularizer:entropy_bonus", "schedule:adaptive_entropy"),
}

EXCLUSIONS: dict[tuple[Engine, Kind, str], str] = {
    ("verl", "advantage", "gae"): (
        "needs a learned critic (a value model trained beside the policy); entrolab trains critic-free methods only"
    ),
}


def lookup(engine: Engine, kind: Kind, name: str) -> Counterpart | str:
    """The counterpart of an engine name, or the reason it has none; an unknown name raises."""
    key = (engine, kind, name)
    if key in COUNTERPARTS:
        return COUNTERPARTS[key]
    if key in EXCLUSIONS:
        return EXCLUSIONS[key]
    raise KeyError(f"{engine} {kind} {name!r} has no counterpart and no exclusion in entrolab.anchors")
