"""Presets: each a paper's recipe, a named choice per axis plus hyper-parameters, never a special code path.

Pure data (imports nothing of entrolab): ``entrolab.config.base_config`` applies a preset under the TOML file and
the flags.
"""

from __future__ import annotations

from typing import Any


# A preset is a paper's recipe: a named choice per axis plus hyper-parameters, never a special code path.
def _recipe(advantage: str = "grpo", policy_loss: str = "ppo_clip", aggregation: str = "token-mean", **kw: Any) -> dict:
    """A preset sets every axis (unset ones to nothing), so presets never inherit each other's choices."""
    axes = dict(reward_shapers=(), token_filters=(), regularizers=(), schedules=(), options=())
    return dict(advantage=advantage, policy_loss=policy_loss, aggregation=aggregation, **{**axes, **kw})


DAPO_CLIP = ("ppo_clip.eps_low=0.2", "ppo_clip.eps_high=0.28")
PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (arXiv:2402.03300) eq. 3, without the KL term (beta = 0, as TRL's default)
    "grpo": _recipe(aggregation="seq-mean-token-mean"),
    # Understanding R1-Zero-Like Training (arXiv:2503.20783): no std, no length normalisation
    "dr_grpo": _recipe(advantage="dr_grpo", aggregation="seq-mean-token-sum-norm"),
    # DAPO (arXiv:2503.14476): clip-higher, token-level mean, overlong filtering
    "dapo": _recipe(token_filters=("overlong_filter",), options=DAPO_CLIP),
    # Back to Basics (arXiv:2402.14740): leave-one-out baseline
    "rloo": _recipe(advantage="rloo", aggregation="seq-mean-token-mean"),
    # --- entropy control, wave 1 -----------------------------------------------------------------------
    # a static entropy bonus (the standard baseline of every entropy paper)
    "entropy_bonus": _recipe(regularizers=("entropy_bonus",), options=("entropy_bonus.coef=0.001",)),
    # Skywork-OR1 (arXiv:2505.22312): entropy bonus whose coefficient tracks a target entropy
    "skywork_or1": _recipe(
        regularizers=("entropy_bonus",), schedules=("adaptive_entropy",), options=("entropy_bonus.coef=0.0",)
    ),
    # The Entropy Mechanism (arXiv:2505.22617): Clip-Cov / KL-Cov. Both act through log pi - log pi_old, so the
    # update is split into 4 minibatches (KL-Cov's term is exactly 0 on a purely on-policy pass).
    "clip_cov": _recipe(
        policy_loss="clip_cov",
        minibatches=4,
        options=("clip_cov.ratio=0.0002", "clip_cov.cov_lb=1.0", "clip_cov.cov_ub=5.0"),
    ),
    "kl_cov": _recipe(policy_loss="kl_cov", minibatches=4, options=("kl_cov.ratio=0.002", "kl_cov.coef=1.0")),
    # Beyond the 80/20 Rule (arXiv:2506.01939): DAPO clip, gradients through the top-20 % entropy tokens only
    "forking_tokens": _recipe(
        token_filters=("forking_tokens",), options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0", "forking_tokens.rho=0.2")
    ),
    "low_entropy_tokens": _recipe(
        token_filters=("low_entropy_tokens",),
        options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0", "low_entropy_tokens.rho=0.8"),
    ),
    # On the Entropy Dynamics in RFT (arXiv:2602.03392): GRPO + discriminator clipping, Clip_B and Clip_V
    "clip_b": _recipe(token_filters=("discriminator_clip",), options=("discriminator_clip.variant='B'",)),
    "clip_v": _recipe(token_filters=("discriminator_clip",), options=("discriminator_clip.variant='V'",)),
    # Rethinking Entropy Interventions (arXiv:2510.10150): STEER token reweighting
    "steer": _recipe(policy_loss="steer"),
    # Rethinking Entropy Regularization (arXiv:2509.25133): SIREN, self-anchored top-p peak entropy
    "siren": _recipe(
        advantage="dr_grpo",
        aggregation="seq-mean-token-sum-norm",
        regularizers=("siren",),
        schedules=("siren_anchor",),
        options=(
            "ppo_clip.eps_low=0.28",
            "ppo_clip.eps_high=0.28",
            "siren.coef=0.005",
            "siren.top_p=0.8",
            "siren.quantile=0.8",
        ),
    ),
    # EPO (arXiv:2509.22576): entropy bonus + smoothing corridor with phase-based weighting
    "epo": _recipe(
        regularizers=("epo",),
        schedules=("epo_phase",),
        options=("epo.coef=0.001", "epo.low_ratio=0.0", "epo.high_ratio=2.0"),
    ),
    # AEPO (arXiv:2510.14545): entropy-balanced clipping with stop-gradient + entropy-aware advantage weight
    "aepo": _recipe(policy_loss="aepo", token_filters=("aepo_entropy_advantage",)),
    # Light-IF (arXiv:2508.03178): TEA-RL entropy-weighted bonus with a k3 KL to the reference
    "tea_rl": _recipe(regularizers=("tea_rl", "kl"), options=("kl.coef=0.001", "kl.estimator='k3'")),
    # SAFE: entropy-gated KL with PID-controlled thresholds (code ryyzn9/SAFE)
    "safe": _recipe(
        regularizers=("safe", "entropy_bonus"), schedules=("safe_pid",), options=("entropy_bonus.coef=0.01",)
    ),
    # SPEAR (arXiv:2509.22601): Dr.BoT update with covariance-based token clipping
    "spear": _recipe(
        advantage="dr_grpo",
        aggregation="seq-mean-token-sum-norm",
        token_filters=("overlong_filter", "spear_cov_clip"),
        options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0"),
    ),
}

__all__ = ["DAPO_CLIP", "PRESETS"]
