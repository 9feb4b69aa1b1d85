"""KL to a frozen reference: verl's and TRL's per-token estimators, the KL penalty in the reward, its controller.

- :func:`kl_estimate`: every estimator of verl's ``core_algos.kl_penalty`` (k1, abs, k2, k3 and the
  straight-through ``+`` variants) and TRL's importance-weighted k3, elementwise ``[B, T] -> [B, T]``.
- ``kl_in_reward`` (reward shaper): verl's ``algorithm.use_kl_in_reward``, r - beta sum_t kl_t.
- ``adaptive_kl`` (schedule): verl's ``AdaptiveKLController`` (Ziegler et al. 2019), setting beta.

Signs: with d = log pi - log pi_ref on a token sampled from pi, every estimator estimates KL(pi || pi_ref).
verl's k1 is ``logprob - ref_logprob`` (= d); verl's ``low_var_kl`` and TRL's ``per_token_kl`` both write k3
from the reversed log-ratio ``ref - logp`` (= -d). Both add beta KL to the loss; verl's in-reward penalty
subtracts it from the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

KLEstimator = Literal[
    "kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3",
    "kl+", "k1+", "abs+", "mse+", "k2+", "low_var_kl+", "k3+",
    "k1_is", "k2_is", "k3_is",
]  # fmt: skip
"""verl ``kl_penalty`` names (``kl|k1``, ``abs``, ``mse|k2``, ``low_var_kl|k3``; ``+``: that value, k2's
gradient) and ``_is``: the estimate times the importance ratio pi / pi_old (``k3_is`` is TRL's)."""
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)
VERL_K3_CLAMP = 10.0
"""verl clamps ``low_var_kl`` to [-10, 10] (and log(pi_ref / pi) to [-20, 20] before exp)."""
_BASE = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


def kl_estimate(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    estimator: KLEstimator = "k1",
    *,
    mask: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    clamp: float | None = VERL_K3_CLAMP,
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs.  [B, T] -> [B, T]

    J. Schulman, "Approximating KL divergence" (2020); verl ``core_algos.kl_penalty``; the ``_is`` forms are
    DeepSeek-V3.2's unbiased KL estimate (arXiv:2512.02556), TRL ``use_bias_correction_kl``. With d = logp -
    ref_logp and rho = exp(logp - old_logp):

        k1 = d     abs = |d|     k2 = d^2 / 2     k3 = exp(-d) + d - 1 (clamped to [-clamp, clamp])
        k+ = k (value) with the gradient of k2 (straight through: k2 - sg(k2) + sg(k))
        k_is = rho k (rho carries the gradient; ``old_logp`` required)

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under pi (may carry the gradient).
        ref_logp: ``[B, T]`` under the frozen reference.
        estimator: a :data:`KLEstimator` name; ``kl``/``mse``/``low_var_kl`` are aliases of k1/k2/k3.
        mask: ``[B, T]`` or None; where 0 the result is exactly 0 and no input is read (no NaN gradient).
        old_logp: ``[B, T]`` behaviour log-probs, for the ``_is`` estimators.
        clamp: the k3 value bound (verl: 10, with log(pi_ref / pi) clamped to +-20 before exp, and log rho to
            +-20 in ``_is``); None: no clamp at all (Schulman, TRL).

    Returns:
        ``[B, T]`` the estimate; its gradient w.r.t. ``logp`` is 1, sign(d), d, 1 - exp(-d) (0 where clamped),
        d for every ``+`` form.

    Differences from the paper / released code:
        The clamp defaults to verl's (the engine spec these names come from; the ``kl`` regulariser's
        ``k3_max`` default too); Schulman's k3 and TRL's ``per_token_kl`` have none (``clamp=None``, which
        TRL's parity test uses). TRL's ``importance_sampling_level="sequence"`` weight is not offered.

    Example:
        >>> logp, ref = torch.log(torch.tensor([[0.5, 0.25]])), torch.log(torch.tensor([[0.25, 0.5]]))
        >>> [round(x, 4) for x in kl_estimate(logp, ref, "k3")[0].tolist()]
        [0.1931, 0.3069]
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {list(KL_ESTIMATORS)}")
    if clamp is not None and not clamp > 0:
        raise ValueError(f"KL clamp must be > 0 or None, got {clamp}")
    keep = None if mask is None else mask.bool()  # [B, T]

    def valid(x: torch.Tensor) -> torch.Tensor:
        return x if keep is None else torch.where(keep, x, 0.0)

    logp, ref_logp = valid(logp), valid(ref_logp)  # [B, T]
    base = _BASE[estimator.removesuffix("+").removesuffix("_is")]
    if base == "k1":
        k = logp - ref_logp  # [B, T]
    elif base == "abs":
        k = (logp - ref_logp).abs()  # [B, T]
    elif base == "k2":
        k = 0.5 * (logp - ref_logp).square()  # [B, T]
    else:
        neg = ref_logp - logp  # [B, T] log(pi_ref / pi)
        if clamp is not None:
            neg = neg.clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)
        k = torch.exp(neg) - neg - 1  # [B, T]
        if clamp is not None:
            k = k.clamp(-clamp, clamp)
    if estimator.endswith("+"):
        k2 = 0.5 * (logp - ref_logp).square()  # [B, T]
        k = k2 - k2.detach() + k.detach()  # [B, T]
    if estimator.endswith("_is"):
        if old_logp is None:
            raise ValueError(f"KL estimator {estimator!r} needs old_logp (the importance ratio pi / pi_old)")
        log_rho = logp - valid(old_logp)  # [B, T]
        if clamp is not None:
            log_rho = log_rho.clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)
        k = k * torch.exp(log_rho)  # [B, T]
    return valid(k)


@dataclass(frozen=True)
class KLInRewardConfig:
    """Options of the KL penalty in the reward."""

    coef: float = 0.001
    """beta (verl ``algorithm.kl_ctrl.kl_coef`` 0.001); the ``coef`` state a schedule sets takes precedence."""
    estimator: KLEstimator = "k1"
    """Per-token estimator (verl ``algorithm.kl_penalty``, default ``kl`` = k1); no ``_is`` form (pi = pi_old)."""
    clamp: float | None = VERL_K3_CLAMP
    """k3 value bound (verl 10); None: unclamped."""

    def __post_init__(self) -> None:
        allowed = [e for e in KL_ESTIMATORS if not e.endswith("_is")]
        if self.estimator not in allowed:
            raise ValueError(f"kl_in_reward estimator must be one of {allowed}, got {self.estimator!r}")
        if not self.coef >= 0:
            raise ValueError(f"kl_in_reward coef must be >= 0, got {self.coef}")
        if self.clamp is not None and not self.clamp > 0:
            raise ValueError(f"kl_in_reward clamp must be > 0 or None, got {self.clamp}")


@register(
    "reward_shaper",
    "kl_in_reward",
    config=KLInRewardConfig,
    paper="arXiv:1909.08593",
    metrics=("kl_reward/kl", "kl_reward/coef", "kl_reward/penalty"),
    needs=("ref_logp", "old_logp"),
    state=("coef",),
)
def kl_in_reward(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: KLInRewardConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    ref_logp: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    state: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL penalty in the reward: r - beta * sum_t kl_t, the behaviour policy's KL to the reference.

    Paper: Ziegler et al., arXiv:1909.08593, §2.2 (R(x, y) = r(x, y) - beta log(pi(y|x) / rho(y|x))); code:
    verl ``ray_trainer.apply_kl_penalty`` (``algorithm.use_kl_in_reward``). With kl_t = ``kl_estimate(old_logp,
    ref_logp, estimator)`` on the response tokens (detached):

        r'_i = r_i - beta sum_t m_it kl_it

    Args:
        rewards: ``[B]`` rewards so far.  mask: ``[B, T]`` response tokens.
        cfg: :class:`KLInRewardConfig`.
        group_id, lengths, truncated, max_length: unused.
        ref_logp: ``[B, T]`` the frozen reference's log-probs (``needs``).
        old_logp: ``[B, T]`` the behaviour policy's log-probs (``needs``; verl's ``old_log_probs``).
        state: ``{"coef": beta}`` set by a schedule (``adaptive_kl``); ``cfg.coef`` when absent.

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``kl_reward/kl`` (the mean over sequences of each sequence's
        token-mean KL: verl's ``actor/reward_kl_penalty``, what its controller reads), ``kl_reward/coef``
        (beta, verl's ``actor/reward_kl_penalty_coeff``), ``kl_reward/penalty`` (mean of beta sum_t kl_t).

    Differences from the paper / released code:
        verl puts the penalty on every token (token_level_rewards = scores - beta kl_t); here the sequence
        reward gets the sum. The two agree for advantages that sum the token rewards (verl's GRPO, RLOO,
        OPO, GPG, REINFORCE++-baseline); they differ for return-to-go ones (GAE, REINFORCE++, ReMax, more
        so with gamma < 1), where verl's token t sees only the KL from t on. The paper's KL is the sequence
        log-ratio (k1 summed), the default here; verl's estimators and k3 clamp are options.

    Example:
        >>> old, ref = torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 9.0]])
        >>> r, m = kl_in_reward(torch.ones(1), torch.tensor([[1.0, 1, 0]]), cfg=KLInRewardConfig(coef=0.1),
        ...     group_id=None, lengths=None, truncated=None, max_length=3, ref_logp=ref, old_logp=old)
        >>> round(r.item(), 4), round(m["kl_reward/kl"].item(), 4)  # sum kl = 0.5 - 1.0
        (1.05, -0.25)
    """
    if ref_logp is None or old_logp is None:
        raise ValueError("reward shaper 'kl_in_reward' needs ref_logp and old_logp (declared in needs)")
    coef = float((state or {}).get("coef", cfg.coef))
    kl = kl_estimate(old_logp.detach(), ref_logp.detach(), cfg.estimator, mask=mask, clamp=cfg.clamp)  # [B, T]
    penalty = coef * kl.sum(-1)  # [B]
    metrics = {
        "kl_reward/kl": ops.masked_mean(kl, mask, dim=-1).mean(),
        "kl_reward/coef": torch.tensor(coef, dtype=kl.dtype),
        "kl_reward/penalty": penalty.mean(),
    }
    return rewards - penalty.to(rewards.dtype), metrics


@dataclass(frozen=True)
class AdaptiveKLConfig:
    """Options of the adaptive KL coefficient (verl ``algorithm.kl_ctrl`` with ``type: adaptive``)."""

    target: float = 0.1
    """KL the controller steers to (verl ``target_kl`` 0.1), in the units of ``observe``."""
    horizon: float = 10000.0
    """Samples over which a 20% error changes beta by 20% (verl ``horizon`` 10000)."""
    coef_init: float = 0.001
    """beta before any observation (verl ``kl_coef`` 0.001)."""
    samples_per_step: int = 128
    """verl's ``n_steps``: the sequences per step (verl passes the batch size; entrolab's default 16 x 8)."""
    observe: str = "kl_reward/kl"
    """Logged metric the controller reads (``kl_in_reward``'s KL, verl's ``current_kl``)."""
    field: str = "kl_in_reward.coef"
    """The ``method.field`` the controller sets."""

    def __post_init__(self) -> None:
        for name in ("target", "horizon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"adaptive_kl {name} must be > 0, got {getattr(self, name)}")
        if not self.coef_init >= 0:
            raise ValueError(f"adaptive_kl coef_init must be >= 0, got {self.coef_init}")
        if not 1 <= self.samples_per_step < 5 * self.horizon:
            raise ValueError(
                f"adaptive_kl samples_per_step must be in [1, 5 * horizon) = [1, {5 * self.horizon}) (else beta "
                f"can turn negative), got {self.samples_per_step}"
            )
        method, _, fld = self.field.partition(".")
        if not method or not fld:
            raise ValueError(f"adaptive_kl field must look like 'method.field', got {self.field!r}")


@register(
    "schedule",
    "adaptive_kl",
    config=AdaptiveKLConfig,
    paper="arXiv:1909.08593",
    sets=lambda cfg: (cfg.field,),
    reads=lambda cfg: (cfg.observe,),
)
def adaptive_kl(
    state: dict[str, float],
    observed: dict[str, float],
    *,
    cfg: AdaptiveKLConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Adaptive KL coefficient: raise beta while the KL is above target, lower it below (proportional control).

    Paper: Ziegler et al., arXiv:1909.08593, §2.2; code: verl ``core_algos.AdaptiveKLController.update``,
    called by ``apply_kl_penalty`` with ``n_steps`` = the batch size. With KL_k observed on step k:

        e_k = clip(KL_k / target - 1, -0.2, 0.2)
        beta_{k+1} = beta_k (1 + e_k * samples_per_step / horizon)

    Args:
        state: ``{}`` on the first step, then this function's previous ``state``: key ``coef`` (beta_k).
        observed: the previous step's logged metrics; reads ``cfg.observe`` (default ``kl_reward/kl``). Empty
            on the first step, when beta = ``coef_init``.
        cfg: :class:`AdaptiveKLConfig`.
        step: unused.  total_steps: unused.

    Returns:
        ``(state, values)``; values is ``{cfg.field: beta}``, by default ``{"kl_in_reward.coef": beta}``.

    Differences from the paper / released code:
        The paper writes the gain as K_beta; its code and verl use samples_per_step / horizon. verl updates the
        controller right after using beta on the step's batch; this schedule updates it before the next step
        from the logged KL: the same sequence of coefficients. verl reads the batch size itself; here it is
        ``samples_per_step`` (set it to prompts x group size). verl's ``FixedKLController`` is the constant
        ``kl_in_reward.coef`` with no schedule.

    Example:
        >>> cfg = AdaptiveKLConfig(coef_init=0.1, samples_per_step=1000)
        >>> state, values = adaptive_kl({}, {}, cfg=cfg, step=1, total_steps=3)
        >>> adaptive_kl(state, {"kl_reward/kl": 0.5}, cfg=cfg, step=2, total_steps=3)[1]  # e = 0.2: x 1.02
        {'kl_in_reward.coef': 0.10200000000000001}
    """
    coef = float(state.get("coef", cfg.coef_init))
    if cfg.observe in observed:
        error = min(max(float(observed[cfg.observe]) / cfg.target - 1, -0.2), 0.2)
        coef *= 1 + error * cfg.samples_per_step / cfg.horizon
    elif state:
        raise ValueError(f"adaptive_kl reads {cfg.observe!r}, absent from the logged metrics {sorted(observed)}")
    return {"coef": coef}, {cfg.field: coef}


__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLConfig",
    "KLEstimator",
    "KLInRewardConfig",
    "adaptive_kl",
    "kl_estimate",
    "kl_in_reward",
]
