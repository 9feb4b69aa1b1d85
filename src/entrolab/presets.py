"""Presets: each a paper's method plus the recipe it was trained with, kept apart. Pure data (imports nothing of
entrolab); ``entrolab.config.base_config`` applies a preset under the TOML file and the flags.

- The **method part** is what the paper changes relative to its baseline: axis choices and their options
  (Dr.GRPO: its advantage and aggregation; DAPO: clip-higher, token-mean and overlong filtering; Clip-Cov: its
  policy loss and options; 80/20: its token filter).
- The **recipe** is everything else: epochs, minibatches, micro-batch size, learning rate and schedule, warm-up,
  group size, prompts per step, temperature, length budget, and the aggregation and clip range unless the method
  declares them. A recipe option of ``ppo_clip`` (the clip range) applies to whichever policy loss a run uses,
  where that loss has the same field.
- **Needs**: a recipe setting without which the method cannot act at all (KL-Cov's term is exactly 0 on a purely
  on-policy pass, so it needs minibatches > 1). ``entrolab compare`` applies a method's needs to every run of
  the grid, and says so.

``entrolab train --preset X`` applies both parts (``PRESETS[X]``, the recipe with the method on top), as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The choice field of each axis (a single name, or a tuple of names for the axes that take several).
AXIS_FIELDS = {
    "advantage": "advantage",
    "policy_loss": "policy_loss",
    "aggregation": "aggregation",
    "reward_shaper": "reward_shapers",
    "token_filter": "token_filters",
    "regularizer": "regularizers",
    "schedule": "schedules",
    "sampler": "samplers",
}
# The fields an engine's methods= mapping names (the catalogue's axes); METHOD_FIELDS adds the built-in
# trainer's own method mechanisms (SPEAR's replay, AEPO's branching rollout). Every other field is recipe.
AXIS_CHOICE_FIELDS = (*AXIS_FIELDS.values(), "options")
METHOD_FIELDS = (*AXIS_CHOICE_FIELDS, "self_imitation", "self_imitation_options", "rollout", "rollout_options")
# What a preset leaves unset is the baseline's: these values, so presets never inherit each other's choices.
BASELINE = dict(
    advantage="grpo",
    policy_loss="ppo_clip",
    aggregation="token-mean",
    reward_shapers=(),
    token_filters=(),
    regularizers=(),
    schedules=(),
    samplers=(),
    options=(),
    self_imitation=False,
    self_imitation_options=(),
    rollout="plain",
    rollout_options=(),
)


@dataclass(frozen=True)
class Need:
    """A recipe setting a method needs to act at all: ``field`` must satisfy ``ok``, else the grid uses ``value``."""

    field: str
    ok: Callable[[Any], bool]
    value: Any
    why: str


@dataclass(frozen=True)
class Preset:
    """A paper's method part and the recipe it was trained with (TrainConfig fields; options as 'method.field=v')."""

    method: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)
    needs: tuple[Need, ...] = ()

    def full(self) -> dict[str, Any]:
        """The TrainConfig fields ``--preset`` sets: the baseline, the recipe, then the method on top."""
        out = {**BASELINE, **{k: v for k, v in self.recipe.items() if k != "options"}}
        out.update({k: v for k, v in self.method.items() if k != "options"})
        out["options"] = (*self.recipe.get("options", ()), *self.method.get("options", ()))
        return out

    def recipe_fields(self) -> dict[str, Any]:
        """The recipe alone (the baseline's aggregation unless the recipe names one), for a grid's shared recipe."""
        return {"aggregation": BASELINE["aggregation"], **self.recipe}


DAPO_CLIP = ("ppo_clip.eps_low=0.2", "ppo_clip.eps_high=0.28")
DAPO_RECIPE = dict(options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0"))  # DAPO's clip range and a dual clip
ON_POLICY_NEED = Need(
    "minibatches", lambda v: v > 1, 4, "its term acts through log pi - log pi_old, exactly 0 on a purely on-policy pass"
)
PRESET_PARTS: dict[str, Preset] = {
    # DeepSeekMath (arXiv:2402.03300) eq. 3, without the KL term (beta = 0, as TRL's default)
    "grpo": Preset(method=dict(advantage="grpo"), recipe=dict(aggregation="seq-mean-token-mean")),
    # Understanding R1-Zero-Like Training (arXiv:2503.20783): no std, no length normalisation
    "dr_grpo": Preset(method=dict(advantage="dr_grpo", aggregation="seq-mean-token-sum-norm")),
    # DAPO (arXiv:2503.14476): clip-higher, token-level mean, overlong filtering, dynamic sampling
    "dapo": Preset(
        method=dict(
            aggregation="token-mean",
            token_filters=("overlong_filter",),
            samplers=("dynamic_sampling",),
            options=DAPO_CLIP,
        )
    ),
    # Back to Basics (arXiv:2402.14740): leave-one-out baseline
    "rloo": Preset(method=dict(advantage="rloo"), recipe=dict(aggregation="seq-mean-token-mean")),
    # CANON (arXiv:2509.23962): CANON-Inter by the behaviour entropy (the paper's best for math), on Dr.GRPO's
    # aggregation (the code divides by the maximum length under seq-mean-token-sum)
    "canon": Preset(method=dict(advantage="canon", aggregation="seq-mean-token-sum-norm")),
    # PEAR (arXiv:2510.08026): phase-entropy-aware reward on GRPO (alpha = 1, the paper's best)
    "pear": Preset(method=dict(reward_shapers=("pear",))),
    # RiskPO (arXiv:2510.00911): Mixed VaR over bundles of 5 questions, the math script's settings
    "riskpo": Preset(method=dict(advantage="riskpo")),
    # COPO (arXiv:2508.04138): global consistency advantage blended by the answer entropy (run_copo.sh)
    "copo": Preset(
        method=dict(advantage="copo", policy_loss="copo_loss"), recipe=dict(aggregation="seq-mean-token-mean")
    ),
    # ARES (arXiv:2510.08457): difficulty-aware high-window-entropy reward (the released reward function)
    "ares": Preset(method=dict(reward_shapers=("ares",))),
    # Entrocraft (arXiv:2604.26326, reconstructed): rejection sampling along a linear entropy schedule
    "entrocraft": Preset(method=dict(samplers=("entrocraft",))),
    # Likelihood-based rewards (arXiv:2602.03979): log pi(reference answer | prompt, reasoning) as the reward
    "likelihood": Preset(method=dict(reward_shapers=("likelihood",))),
    # VERL (arXiv:2509.23808): effective-rank bonus on the GRPO advantage, baselines as an EMA (train.sh)
    "erank": Preset(method=dict(advantage="erank", schedules=("erank_ema",))),
    # Entropy-performance exchange (arXiv:2508.02260): perplexity-weighted advantages, on the authors' clip range
    "epe": Preset(method=dict(token_filters=("epe",)), recipe=dict(options=DAPO_CLIP)),
    # Spurious rewards (arXiv:2512.16912): Bernoulli(1/2) rewards, independent of the response
    "spurious_reward": Preset(method=dict(reward_shapers=("random_reward",))),
    # PAR (arXiv:2502.18770): sigmoid of the reward-model score centred on the base policy's responses
    "par": Preset(method=dict(reward_shapers=("par",))),
    # PRL (arXiv:2601.10201): outcome advantage minus the suffix log-ratio to the reference, per 256-token step
    "prl": Preset(method=dict(advantage="prl")),
    # PRIME (arXiv:2502.01456): implicit process rewards of a PRM (--prm-model) plus the outcome, RLOO each
    "prime": Preset(method=dict(advantage="implicit_prm")),
    # Clip / Delta (arXiv:2410.15115): PRIME's implicit step rewards, clipped at 0 then differenced
    "clip_delta": Preset(
        method=dict(
            advantage="implicit_prm", options=("implicit_prm.granularity='step'", "implicit_prm.refine='clip_delta'")
        )
    ),
    # TP-GRPO (arXiv:2602.06422): incremental step rewards of an implicit PRM (--prm-model) with turning points
    "tp_grpo": Preset(method=dict(advantage="tp_grpo")),
    # Ctrl-U: the ensemble reward model's mean, down-weighted by its heads' disagreement (--reward-model, --heads K)
    "ctrl_u": Preset(method=dict(reward_shapers=("ctrl_u",))),
    # MARBLE (arXiv:2605.06507): per-reward group advantages balanced by min-norm weights (reward_parts)
    "marble": Preset(method=dict(advantage="marble")),
    # Best-of-N (arXiv:2404.01730): only each group's best sample enters the loss
    "best_of_n": Preset(method=dict(samplers=("best_of_n",))),
    # --- the anchor engines' losses and estimators (verl 0.9.1, TRL 1.16), named as the engines name them ------
    # GSPO (arXiv:2507.18071): one clipped ratio per sequence (the paper's eps 3e-4 / 4e-4), sequence-mean
    "gspo": Preset(method=dict(policy_loss="gspo", aggregation="seq-mean-token-mean")),
    # GMPO (arXiv:2507.20673): the geometric mean of the clipped token ratios (verl geo_mean), eps 0.4 in log space
    "gmpo": Preset(method=dict(policy_loss="gmpo", aggregation="seq-mean-token-mean")),
    # LUSPO (arXiv:2602.05261): GSPO's ratio, each sequence weighted by its length (TRL loss_type="luspo")
    "luspo": Preset(method=dict(policy_loss="luspo", aggregation="seq-mean-token-sum")),
    # VESPO (arXiv:2602.10693): a smooth sequence-level weight instead of clipping (TRL loss_type="vespo")
    "vespo": Preset(method=dict(policy_loss="vespo", aggregation="token-mean")),
    # TRL's bnpo: PPO-clip, each micro-batch's token mean
    "bnpo": Preset(method=dict(aggregation="bnpo")),
    # KL to the reference as a reward penalty before the advantage (verl use_kl_in_reward, fixed controller)
    "kl_in_reward": Preset(method=dict(reward_shapers=("kl_in_reward",))),
    # CISPO (arXiv:2506.13585, MiniMax-M1): REINFORCE with the clipped, detached IS weight; token-level mean
    "cispo": Preset(method=dict(policy_loss="cispo", aggregation="token-mean")),
    # SAPO (arXiv:2511.20347): a soft sigmoid gate on the ratio, temperatures by the advantage's sign
    "sapo": Preset(method=dict(policy_loss="sapo", aggregation="seq-mean-token-mean")),
    # DPPO (arXiv:2602.04879): a trust region on the total-variation / KL divergence of the sampled token
    "dppo_tv": Preset(method=dict(policy_loss="dppo_tv")),
    "dppo_kl": Preset(method=dict(policy_loss="dppo_kl")),
    # DRO (arXiv:2405.19107): the advantage-weighted log-ratio with a quadratic log-ratio penalty (verl dro)
    "dro": Preset(method=dict(policy_loss="dro")),
    # GPG (arXiv:2504.02546): plain policy gradient on the group-mean advantage, rescaled by the valid fraction
    "gpg": Preset(method=dict(policy_loss="gpg", advantage="gpg")),
    # REINFORCE++ (arXiv:2501.03262): discounted returns whitened over the batch, no critic, no group baseline
    "reinforce_pp": Preset(method=dict(advantage="reinforce_pp")),
    # REINFORCE++-baseline: the group mean subtracted, then whitened over the batch
    "reinforce_pp_baseline": Preset(method=dict(advantage="reinforce_pp_baseline")),
    # OPO (arXiv:2505.23585): the length-weighted group baseline (the optimal baseline for on-policy updates)
    "opo": Preset(method=dict(advantage="opo")),
    # ReMax (arXiv:2310.10505): the reward of a greedy rollout of the prompt as the baseline
    "remax": Preset(method=dict(advantage="remax")),
    # GDPO (arXiv:2601.05242): each reward component normalised in its group, then summed (needs reward parts)
    "gdpo": Preset(method=dict(advantage="gdpo")),
    # verl's pass@k advantage: the leave-one-out gain of each sample to its group's best reward
    "grpo_passk": Preset(method=dict(advantage="grpo_passk")),
    # verl's optimal token baseline: per-token baselines weighted by the variance proxy (1 - 2 pi + sum pi^2)
    "optimal_token_baseline": Preset(method=dict(advantage="optimal_token_baseline")),
    # truncated importance sampling (TIS) of the sampler/trainer mismatch, on the recomputed old log-probs
    "rollout_is": Preset(method=dict(token_filters=("rollout_is",))),
    # DeepSeek-V3.2 (arXiv:2512.02556) off-policy sequence masking on PPO-clip (TRL off_policy_mask_threshold)
    "opsm": Preset(method=dict(policy_loss="ppo_clip_opmask")),
    # --- entropy control ------------------------------------------------------------------------------------
    # a static entropy bonus (the standard baseline of every entropy paper)
    "entropy_bonus": Preset(method=dict(regularizers=("entropy_bonus",), options=("entropy_bonus.coef=0.001",))),
    # Skywork-OR1 (arXiv:2505.22312): entropy bonus whose coefficient tracks a target entropy
    "skywork_or1": Preset(
        method=dict(
            regularizers=("entropy_bonus",), schedules=("adaptive_entropy",), options=("entropy_bonus.coef=0.0",)
        )
    ),
    # The Entropy Mechanism (arXiv:2505.22617): Clip-Cov / KL-Cov, trained with 4 minibatches per rollout (the
    # recipe); KL-Cov needs more than one to act at all.
    "clip_cov": Preset(
        method=dict(
            policy_loss="clip_cov", options=("clip_cov.ratio=0.0002", "clip_cov.cov_lb=1.0", "clip_cov.cov_ub=5.0")
        ),
        recipe=dict(minibatches=4),
    ),
    "kl_cov": Preset(
        method=dict(policy_loss="kl_cov", options=("kl_cov.ratio=0.002", "kl_cov.coef=1.0")),
        recipe=dict(minibatches=4),
        needs=(ON_POLICY_NEED,),
    ),
    # Beyond the 80/20 Rule (arXiv:2506.01939): on DAPO's recipe, gradients through the top-20 % entropy tokens
    "forking_tokens": Preset(
        method=dict(token_filters=("forking_tokens",), options=("forking_tokens.rho=0.2",)), recipe=DAPO_RECIPE
    ),
    "low_entropy_tokens": Preset(
        method=dict(token_filters=("low_entropy_tokens",), options=("low_entropy_tokens.rho=0.8",)), recipe=DAPO_RECIPE
    ),
    # On the Entropy Dynamics in RFT (arXiv:2602.03392): GRPO + discriminator clipping, Clip_B and Clip_V
    "clip_b": Preset(method=dict(token_filters=("discriminator_clip",), options=("discriminator_clip.variant='B'",))),
    "clip_v": Preset(method=dict(token_filters=("discriminator_clip",), options=("discriminator_clip.variant='V'",))),
    # Rethinking Entropy Interventions (arXiv:2510.10150): STEER token reweighting
    "steer": Preset(method=dict(policy_loss="steer")),
    # Rethinking Entropy Regularization (arXiv:2509.25133): SIREN on a Dr.GRPO base, self-anchored top-p entropy
    "siren": Preset(
        method=dict(
            advantage="dr_grpo",
            aggregation="seq-mean-token-sum-norm",
            regularizers=("siren",),
            schedules=("siren_anchor",),
            options=("siren.coef=0.005", "siren.top_p=0.8", "siren.quantile=0.8"),
        ),
        recipe=dict(options=("ppo_clip.eps_low=0.28", "ppo_clip.eps_high=0.28")),
    ),
    # EPO (arXiv:2509.22576): entropy bonus + smoothing corridor with phase-based weighting
    # EPO with its multi-turn gate (epo_turns.from_turn; 0: every turn, single-turn EPO exactly)
    "epo": Preset(
        method=dict(
            regularizers=("epo_turns",),
            schedules=("epo_phase",),
            options=(
                "epo_turns.coef=0.001",
                "epo_turns.low_ratio=0.0",
                "epo_turns.high_ratio=2.0",
                "epo_phase.target='epo_turns'",
            ),
        )
    ),
    # AEPO (arXiv:2510.14545): entropy-balanced clipping with stop-gradient + entropy-aware advantage weight
    # the full recipe (needs --env): the entropy-balanced rollout (probe, global samples, branches at
    # high-entropy tool turns with the consecutive-branch penalty), the stop-gradient clip and the released
    # code's entropy-aware advantage; aepo_clip is the update alone (single-turn tasks too)
    "aepo": Preset(method=dict(policy_loss="aepo", advantage="aepo_adv", rollout="aepo")),
    "aepo_clip": Preset(method=dict(policy_loss="aepo", token_filters=("aepo_entropy_advantage",))),
    # Light-IF (arXiv:2508.03178): TEA-RL entropy-weighted bonus with a k3 KL to the reference
    "tea_rl": Preset(method=dict(regularizers=("tea_rl", "kl"), options=("kl.coef=0.001", "kl.estimator='k3'"))),
    # SAFE: entropy-gated KL with PID-controlled thresholds (code ryyzn9/SAFE)
    "safe": Preset(
        method=dict(
            regularizers=("safe", "entropy_bonus"), schedules=("safe_pid",), options=("entropy_bonus.coef=0.01",)
        )
    ),
    # SPEAR (arXiv:2509.22601): Dr.BoT update (on DAPO's clip) with covariance-based token clipping
    # --- multi-turn agents (--env calc|lookup|grid) ------------------------------------------------------------
    # EMPG (arXiv:2509.09265): step-level entropy-modulated advantage (the authors' pseudocode: k = k' = 1, zeta 0.1)
    "empg": Preset(method=dict(advantage="empg")),
    # AEM (arXiv:2605.00425, reconstructed): advantages rescaled by relative response surprisal
    "aem": Preset(method=dict(advantage="aem")),
    # GiGPO (arXiv:2505.10978): episode groups plus step groups of identical environment states
    "gigpo": Preset(method=dict(advantage="gigpo")),
    # SPA-RL (arXiv:2505.20732): a progress estimator's step contributions + grounding as dense step rewards
    "spa": Preset(method=dict(advantage="spa")),
    # SPEAR (arXiv:2509.22601), the full recipe (needs --env): Dr.BoT + the tool-call reward curriculum +
    # self-imitation of replayed episodes + Clip-Cov. The buffer is scaled to the batch: the scripts' 2048 rows
    # are two of their batches; entrolab's default batch is 128 rows, so 256.
    "spear": Preset(
        method=dict(
            advantage="dr_grpo",
            aggregation="seq-mean-token-sum-norm",
            token_filters=("overlong_filter", "spear_cov_clip"),
            reward_shapers=("spear_tool_reward",),
            self_imitation=True,
            self_imitation_options=("capacity=256",),
        ),
        recipe=DAPO_RECIPE,
    ),
}
PRESETS: dict[str, dict[str, Any]] = {name: p.full() for name, p in PRESET_PARTS.items()}

__all__ = [
    "AXIS_CHOICE_FIELDS",
    "AXIS_FIELDS",
    "BASELINE",
    "DAPO_CLIP",
    "METHOD_FIELDS",
    "PRESETS",
    "PRESET_PARTS",
    "Need",
    "Preset",
]
