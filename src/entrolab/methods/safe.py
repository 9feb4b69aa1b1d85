"""SAFE: a KL-to-reference penalty that acts only above a PID-controlled threshold, amplified at low entropy.

Two pieces: the ``safe`` regulariser (the entropy-gated penalty on the smoothed KL) and the ``safe_pid``
schedule (the KL moving average, the reward-velocity PID and the training-phase detector that set the
threshold). From the released code ``ryyzn9/SAFE`` (the paper text was not available). The threshold and
the previous KL average are controller state (``state=("threshold", "kl_prev")``): the composer passes what
``safe_pid`` set as ``state={"threshold": tau, "kl_prev": kl_short}``, never in the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register

PHASES = ("WARMUP", "CLIMBING", "PLATEAU", "CONVERGED")


@dataclass(frozen=True)
class SafeConfig:
    """Options of the SAFE penalty."""

    coef: float = 0.1
    """Scale of the squared excess: penalty = coef (kl_short - threshold)^2 * entropy factor."""
    entropy_floor: float = 2.0
    """Entropy factor = max(factor_min, entropy_floor / (H_bar + 0.1)) (``entropy_floor``)."""
    factor_min: float = 0.5
    """Lower bound of the entropy factor."""
    kl_decay: float = 0.9
    """kl_short = kl_decay * kl_prev + (1 - kl_decay) * KL of this micro-batch (kl_prev: ``safe_pid``'s state)."""
    code_faithful: bool = False
    """True: the released trainer's penalty, computed from ``kl.item()``: a constant with no gradient."""

    def __post_init__(self) -> None:
        for name in ("coef", "entropy_floor", "factor_min"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"safe {name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.kl_decay < 1:
            raise ValueError(f"safe kl_decay must be in [0, 1), got {self.kl_decay}")


@register(
    "regularizer",
    "safe",
    config=SafeConfig,
    paper="github:ryyzn9/SAFE",
    metrics=("kl/ref_k1_mean", "safe/kl_short", "safe/penalty", "safe/active", "safe/entropy_factor"),
    needs=("ref_logp",),
    state=("threshold", "kl_prev"),
)
def safe(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SafeConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAFE entropy-gated KL penalty: coef [kl_short - tau]_+^2 max(0.5, floor / (H_bar + 0.1)), spread over tokens.

    Paper: SAFE (Stable Alignment Finetuning with Entropy-Aware Predictive Control), code ``ryyzn9/SAFE``
    ``EntropyAwarePredictiveController.compute_penalty``. With KL the masked mean of logp - ref_logp (k1):

        kl_short = kl_decay kl_prev + (1 - kl_decay) KL
        penalty  = coef (kl_short - tau)^2 max(factor_min, entropy_floor / (H_bar + 0.1))   if kl_short > tau
        term_t   = penalty for every valid token

    Args:
        logp: ``[B, T]`` current log-prob of the sampled tokens (carries the gradient).
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`SafeConfig`.
        entropy: ``[B, T]`` entropy of the current pass; its masked mean (detached) is H_bar.
        old_logp: unused.  ref_logp: ``[B, T]`` log-prob under the frozen reference; required.
        state: controller values set by ``safe_pid``: ``threshold`` (tau) and ``kl_prev`` (kl_short before
            this step). A missing key takes the controller's starting value: tau = 0.45 (``safe_pid``'s first
            value, base 0.3 x WARMUP 1.5) and kl_prev = 0 (the code's fresh ``kl_short``).

    Returns:
        ``(term [B, T], metrics)``; term = penalty on valid tokens, 0 where mask is 0. Metric keys:
        ``kl/ref_k1_mean`` (KL, what ``safe_pid`` reads), ``safe/kl_short``, ``safe/penalty``, ``safe/active``
        (1 when kl_short > tau), ``safe/entropy_factor``.

    Differences from the paper / released code:
        The released trainer computes the penalty from ``kl.item()`` and Python floats, so it adds a constant
        to the loss and no gradient (``code_faithful=True``); by default the KL keeps its gradient (the
        intent). The code adds one scalar per PPO epoch; here every valid token carries it (with a mean-type
        aggregation the aggregate is that scalar times the micro-batch's share). KL and H_bar are over the
        micro-batch (the code: the whole batch); H_bar is the current pass's entropy, the code's the
        rollout's. The PPO-RLHF critic, the entropy bonus (use ``entropy_bonus``, coef 0.01) and the unused
        ``max_preview_kl`` helpers are not here. tau and kl_prev are controller state, not options: without
        ``safe_pid`` they stay at the controller's starting values 0.45 and 0.

    Example:
        >>> logp, ref = torch.full((1, 2), -1.0), torch.full((1, 2), -6.0)  # KL = 5
        >>> term, m = safe(logp, torch.ones(1, 2), cfg=SafeConfig(), entropy=torch.full((1, 2), 1.9),
        ...                old_logp=None, ref_logp=ref, state={"threshold": 0.45, "kl_prev": 0.0})
        >>> round(m["safe/kl_short"].item(), 4), round(term[0, 0].item(), 6), m["safe/entropy_factor"].item()
        (0.5, 0.00025, 1.0)
        >>> term, m = safe(logp, torch.ones(1, 2), cfg=SafeConfig(), entropy=torch.full((1, 2), 1.9),
        ...                old_logp=None, ref_logp=ref, state={"threshold": 0.2, "kl_prev": 1.0})
        >>> round(m["safe/kl_short"].item(), 4), round(term[0, 0].item(), 6)  # 0.9 + 0.5 - 0.2 = 1.2 above tau
        (1.4, 0.144)
    """
    if ref_logp is None:
        raise ValueError("regularizer 'safe' needs ref_logp (log-probs under the frozen reference policy)")
    state = state or {}
    tau = float(state.get("threshold", _FIRST_THRESHOLD))
    kl_prev = float(state.get("kl_prev", 0.0))
    keep = mask.bool()  # [B, T]
    kl = ops.masked_mean(torch.where(keep, logp - ref_logp, 0.0), mask)
    kl_short = cfg.kl_decay * kl_prev + (1 - cfg.kl_decay) * (kl.detach() if cfg.code_faithful else kl)
    h_bar = ops.masked_mean(entropy.detach(), mask)
    factor = torch.clamp(cfg.entropy_floor / (h_bar + 0.1), min=cfg.factor_min)
    penalty = cfg.coef * torch.relu(kl_short - tau).square() * factor
    term = torch.where(keep, penalty, 0.0)  # [B, T]
    metrics = {
        "kl/ref_k1_mean": kl.detach(),
        "safe/kl_short": kl_short.detach(),
        "safe/penalty": penalty.detach(),
        "safe/active": (kl_short.detach() > tau).float(),
        "safe/entropy_factor": factor,
    }
    return term, metrics


@dataclass(frozen=True)
class SafePIDConfig:
    """Options of SAFE's threshold controller (``configs/base.yaml`` and the controller's constants)."""

    base_threshold: float = 0.3
    """tau before PID and phase adjustment (``kl_base_threshold``)."""
    gains: tuple[float, float, float] = (0.3, 0.01, 0.05)
    """PID gains (kp, ki, kd) (``pid_kp``, ``pid_ki``, ``pid_kd``)."""
    target_velocity: float = 0.001
    """Target per-update change of the reward EMA; error = velocity - target."""
    reward_decay: float = 0.95
    """Reward EMA: ema = reward_decay * ema + (1 - reward_decay) * reward (the first reward initialises it)."""
    integral_limit: float = 1.0
    """Anti-windup clamp of the integral."""
    kl_decay: float = 0.9
    """KL moving average carried to the regulariser as ``safe.kl_prev``."""
    phase_window: int = 50
    """W: the phase compares the mean of the last W rewards with the W before (WARMUP until W are seen)."""
    climb_margin: float = 0.01
    """CLIMBING when recent mean > older mean + climb_margin."""
    converged: tuple[float, float] = (0.02, 0.7)
    """(std, mean): CONVERGED when the recent std < std and the recent mean > mean (else PLATEAU)."""
    multipliers: tuple[float, float, float, float] = (1.5, 1.2, 0.8, 1.0)
    """Threshold multiplier of WARMUP, CLIMBING, PLATEAU, CONVERGED."""
    clamp: tuple[float, float] = (0.1, 0.6)
    """(min, max) of tau."""
    updates_per_step: int = 1
    """Controller updates per training step with the same observation (the code: once per PPO epoch, 2)."""
    observe_reward: str = "reward/mean"
    """The logged mean reward."""
    observe_kl: str = "kl/ref_k1_mean"
    """The logged KL (the ``safe`` regulariser's)."""

    def __post_init__(self) -> None:
        if len(self.gains) != 3 or len(self.converged) != 2 or not 0 <= self.clamp[0] <= self.clamp[1]:
            raise ValueError(
                f"safe_pid needs 3 gains, 2 converged values, 0 <= clamp[0] <= clamp[1]; got "
                f"{self.gains}, {self.converged}, {self.clamp}"
            )
        for name in ("reward_decay", "kl_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"safe_pid {name} must be in [0, 1), got {getattr(self, name)}")
        if self.phase_window < 1 or self.updates_per_step < 1:
            raise ValueError(
                f"safe_pid phase_window and updates_per_step must be >= 1, got {self.phase_window}, "
                f"{self.updates_per_step}"
            )
        if len(self.multipliers) != 4 or min(self.multipliers) < 0:
            raise ValueError(f"safe_pid multipliers must be 4 values >= 0, got {self.multipliers}")


# tau before safe_pid has set one: its first value with its defaults (base 0.3 x WARMUP multiplier 1.5 = 0.45)
_FIRST_THRESHOLD = SafePIDConfig().base_threshold * SafePIDConfig().multipliers[0]


def _phase(rewards: list[float], cfg: SafePIDConfig) -> int:
    """Index into PHASES from the reward history (oldest first)."""
    w = cfg.phase_window
    if len(rewards) < w:
        return 0
    recent = rewards[-w:]
    old = rewards[-2 * w : -w] if len(rewards) >= 2 * w else recent
    mean, old_mean = sum(recent) / w, sum(old) / len(old)
    std = (sum((r - mean) ** 2 for r in recent) / w) ** 0.5
    if mean > old_mean + cfg.climb_margin:
        return 1
    return 3 if std < cfg.converged[0] and mean > cfg.converged[1] else 2


@register(
    "schedule",
    "safe_pid",
    config=SafePIDConfig,
    paper="github:ryyzn9/SAFE",
    sets=lambda cfg: ("safe.threshold", "safe.kl_prev"),
    reads=lambda cfg: (cfg.observe_reward, cfg.observe_kl),
)
def safe_pid(
    state: dict[str, float],
    observed: dict[str, float],
    *,
    cfg: SafePIDConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """SAFE's threshold: tau = clip((base + PID(reward velocity)) * phase multiplier, 0.1, 0.6), plus kl_short.

    Paper: SAFE, code ``ryyzn9/SAFE`` ``PIDController``, ``PhaseDetector``, ``EntropyAwarePredictiveController``.
    Per update with the observed mean reward R and KL:

        kl_short <- 0.9 kl_short + 0.1 KL;   ema <- 0.95 ema + 0.05 R  (ema = R on the first update, u = 0)
        e = (ema - ema_prev) - 0.001;   I = clip(I + e, -1, 1);   u = 0.3 e + 0.01 I + 0.05 (e - e_prev)
        tau = clip((0.3 + u) * mult[phase], 0.1, 0.6)     mult: WARMUP 1.5, CLIMBING 1.2, PLATEAU 0.8, CONVERGED 1.0

    Args:
        state: ``{}`` at first; then ``kl_short``, ``ema``, ``error``, ``integral``, ``u``, ``phase`` (index into
            WARMUP, CLIMBING, PLATEAU, CONVERGED), ``n`` and the reward ring ``r0`` ... ``r{2W-1}``.
        observed: the previous step's logged metrics; reads ``reward/mean`` and ``kl/ref_k1_mean``.
        cfg: :class:`SafePIDConfig`.
        step: unused.  total_steps: unused.

    Returns:
        ``(state, values)``; values is ``{"safe.threshold": tau, "safe.kl_prev": kl_short}``, both declared
        state names of ``safe``: the composer passes them as ``state={"threshold": tau, "kl_prev": kl_short}``
        (this schedule's ``state`` dict is what the checkpoint keeps).

    Differences from the paper / released code:
        A schedule sees the previous step's reward, so tau lags the code's by one step (the code updates
        with the current batch's reward just before its loss). The code updates once per PPO epoch (2 per
        batch in ``configs/base.yaml``, so its phase window of 50 rewards is 25 batches): ``updates_per_step``.

    Example:
        >>> state, values = safe_pid({}, {}, cfg=SafePIDConfig(), step=1, total_steps=10)
        >>> {k: round(v, 6) for k, v in values.items()}
        {'safe.threshold': 0.45, 'safe.kl_prev': 0.0}
        >>> state, values = safe_pid(state, {"reward/mean": 0.5, "kl/ref_k1_mean": 5.0}, cfg=SafePIDConfig(),
        ...                          step=2, total_steps=10)
        >>> {k: round(v, 6) for k, v in values.items()}
        {'safe.threshold': 0.45, 'safe.kl_prev': 0.5}
    """
    state, w2 = dict(state), 2 * cfg.phase_window
    if cfg.observe_reward in observed and cfg.observe_kl in observed:
        reward, kl = float(observed[cfg.observe_reward]), float(observed[cfg.observe_kl])
        for _ in range(cfg.updates_per_step):
            state["kl_short"] = cfg.kl_decay * state.get("kl_short", 0.0) + (1 - cfg.kl_decay) * kl
            n = int(state.get("n", 0))
            state[f"r{n % w2}"], state["n"] = reward, float(n + 1)
            history = [state[f"r{i % w2}"] for i in range(max(0, n + 1 - w2), n + 1)]
            state["phase"] = float(_phase(history, cfg))
            if "ema" not in state:
                state["ema"], state["u"] = reward, 0.0
                continue
            ema = cfg.reward_decay * state["ema"] + (1 - cfg.reward_decay) * reward
            error = (ema - state["ema"]) - cfg.target_velocity
            integral = max(-cfg.integral_limit, min(cfg.integral_limit, state.get("integral", 0.0) + error))
            kp, ki, kd = cfg.gains
            state["u"] = kp * error + ki * integral + kd * (error - state.get("error", 0.0))
            state["ema"], state["error"], state["integral"] = ema, error, integral
    elif state:
        raise ValueError(
            f"safe_pid reads {cfg.observe_reward!r} and {cfg.observe_kl!r}; logged metrics: {sorted(observed)}"
        )
    tau = (cfg.base_threshold + state.get("u", 0.0)) * cfg.multipliers[int(state.get("phase", 0))]
    tau = min(max(tau, cfg.clamp[0]), cfg.clamp[1])
    return state, {"safe.threshold": tau, "safe.kl_prev": state.get("kl_short", 0.0)}
