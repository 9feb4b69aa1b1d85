"""EPO: entropy bonus plus a smoothing penalty that keeps entropy in a corridor around its history.

Two pieces: the ``epo`` regulariser (bonus + corridor penalty) and the ``epo_phase`` schedule, which supplies
the corridor's reference entropy (mean of past steps' entropy) and the phase weight beta(k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

MaskMode = Literal["token", "seq"]


@dataclass(frozen=True)
class EPOConfig:
    """Options of the EPO regulariser."""

    coef: float = 0.001
    """c_H, weight of the whole entropy term (``entropy_coeff``)."""
    smooth_coef: float = 1.0
    """c_s, weight of the smoothing penalty inside it (``entropy_smooth_coeff``)."""
    low_ratio: float = 0.0
    """kappa_l: corridor floor = kappa_l * H_ref (reported runs 0, which disables the floor; code default 0.8)."""
    high_ratio: float = 2.0
    """kappa_r: corridor ceiling = kappa_r * H_ref (reported runs 2.0; code default 1.2)."""
    mask_mode: MaskMode = "token"
    """token: each token's entropy is compared with the corridor; seq: the response's mean entropy."""
    code_faithful: bool = False
    """True: the released code's penalty, a constant out_range_penalty outside the corridor (no gradient)."""
    out_range_penalty: float = 0.05
    """code_faithful only: penalty value outside the corridor (0.05 ScienceWorld, 0.1 ALFWorld)."""

    def __post_init__(self) -> None:
        for name in ("coef", "smooth_coef", "low_ratio", "out_range_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"epo {name} must be >= 0, got {getattr(self, name)}")
        if not self.high_ratio > self.low_ratio:
            raise ValueError(f"epo needs high_ratio > low_ratio, got {self.high_ratio} <= {self.low_ratio}")
        if self.mask_mode not in ("token", "seq"):
            raise ValueError(f"epo mask_mode must be one of ['token', 'seq'], got {self.mask_mode!r}")


@register(
    "regularizer",
    "epo",
    config=EPOConfig,
    paper="arXiv:2509.22576",
    metrics=("epo/bonus_mean", "epo/smooth_mean", "epo/out_of_corridor_frac"),
    state=("ref_entropy", "smooth_weight"),
)
def epo(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: EPOConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EPO entropy regularisation: -c_H (H - c_s beta(k) L_smooth), L_smooth a hinge corridor around H_ref.

    Paper: EPO, arXiv:2509.22576 (entropy smoothing regulariser and phase weighting; the terms L^H,
    L^smooth, kappa_l, kappa_r, beta as quoted in the authors' rebuttal). Per token, with x = H_t (token mode)
    or the response's mean entropy (seq mode):

        L_smooth = [kappa_l H_ref - x]_+ + [x - kappa_r H_ref]_+                (paper: a hinge, with gradient)
        L_smooth = out_range_penalty * 1[not kappa_l H_ref < x < kappa_r H_ref]  (code_faithful: a constant)
        term_t   = -c_H H_t + c_H c_s beta(k) L_smooth

    Args:
        logp: ``[B, T]``, unused.  old_logp: unused.  ref_logp: unused.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`EPOConfig`.
        state: controller values set each step by ``epo_phase``: ``ref_entropy`` (H_ref; missing before any
            history: no smoothing penalty) and ``smooth_weight`` (beta(k); missing: 1).
        entropy: ``[B, T]`` full-distribution entropy of the current forward pass (carries the gradient).

    Returns:
        ``(term [B, T], metrics)``; 0 where mask is 0. Metric keys: ``epo/bonus_mean`` (masked mean of c_H H),
        ``epo/smooth_mean`` (masked mean of L_smooth, before c_H c_s beta), ``epo/out_of_corridor_frac``.

    Differences from the paper / released code:
        The code builds its penalty from constants (``torch.where(within, 0, out_range_penalty)``), so the
        smoothing term has no gradient: ``code_faithful=True`` reproduces it (the gradient is the plain bonus);
        the default is the paper's hinge. The code applies smoothing only to multi-turn samples whose turn
        index is at least 25 (it reads the key ``max_step``, default 50, while the launcher sets ``max_steps``;
        never in single-turn RLVR); here every response is eligible.
        In seq mode the code's response mean runs over padding too; here it is the masked mean.

    Example:
        >>> h = torch.tensor([[0.5, 1.0, 1.9, 2.5]], requires_grad=True)
        >>> cfg = EPOConfig(coef=1.0, low_ratio=0.8, high_ratio=2.0)
        >>> term, m = epo(None, torch.ones(1, 4), cfg=cfg, entropy=h, old_logp=None, ref_logp=None,
        ...               state={"ref_entropy": 1.0})
        >>> [round(x, 2) for x in term[0].tolist()], m["epo/out_of_corridor_frac"].item()
        ([-0.2, -1.0, -1.9, -2.0], 0.5)
    """
    keep = mask.bool()  # [B, T]
    h = torch.where(keep, entropy, 0.0)  # [B, T]
    x = h if cfg.mask_mode == "token" else ops.masked_mean(h, mask, dim=-1).unsqueeze(-1).expand_as(h)  # [B, T]
    state = state or {}
    ref_entropy, smooth_weight = state.get("ref_entropy"), float(state.get("smooth_weight", 1.0))
    if ref_entropy is not None and not ref_entropy >= 0:
        raise ValueError(f"epo ref_entropy must be >= 0, got {ref_entropy}")
    if not smooth_weight >= 0:
        raise ValueError(f"epo smooth_weight must be >= 0, got {smooth_weight}")
    if ref_entropy is None:
        smooth, outside = torch.zeros_like(h), torch.zeros_like(keep)  # [B, T]
    else:
        lo, hi = cfg.low_ratio * ref_entropy, cfg.high_ratio * ref_entropy
        outside = keep & ~((x > lo) & (x < hi))  # [B, T]
        if cfg.code_faithful:
            smooth = outside.to(h.dtype) * cfg.out_range_penalty  # [B, T] constant: no gradient
        else:
            smooth = torch.relu(lo - x) + torch.relu(x - hi)  # [B, T]
    bonus = cfg.coef * h  # [B, T]
    term = torch.where(keep, -bonus + cfg.coef * cfg.smooth_coef * smooth_weight * smooth, 0.0)  # [B, T]
    metrics = {
        "epo/bonus_mean": ops.masked_mean(bonus.detach(), mask),
        "epo/smooth_mean": ops.masked_mean(smooth.detach(), mask),
        "epo/out_of_corridor_frac": ops.masked_mean(outside.float(), mask),
    }
    return term, metrics


@dataclass(frozen=True)
class EPOPhaseConfig:
    """Options of EPO's phase weight and entropy history."""

    horizon: int | None = None
    """K, the schedule's length in steps. None (the paper): the run's total steps; 150 reproduces the released
    code, which hardcodes ``max_epochs = 150`` whatever the run's length (later ``entropy_smooth_max_epochs``)."""
    slow_rate: float = 2.0
    """Decay rate of the first half, 1 -> 0.8 (the code's ``lambda_slow``)."""
    fast_rate: float = 3.0
    """Decay rate of the second half, 0.8 -> 0 (``entropy_smooth_gamma``, the paper's gamma)."""
    start_step: int = 0
    """Smoothing is off (beta = 0) before this k (``entropy_smooth_start_epoch``)."""
    window: int | None = None
    """H_ref over the last ``window`` steps; None: over all past steps (code default, no sliding window)."""
    observe: str = "entropy/token_mean"
    """The logged per-step entropy whose history defines H_ref."""
    target: Literal["epo", "epo_turns"] = "epo"
    """The regulariser whose state it sets: ``epo``, or ``epo_turns`` (EPO with the multi-turn gate)."""

    def __post_init__(self) -> None:
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"epo_phase horizon must be >= 1 or None, got {self.horizon}")
        if not (self.slow_rate >= 0 and self.fast_rate >= 0):
            raise ValueError(f"epo_phase rates must be >= 0, got {self.slow_rate}, {self.fast_rate}")
        if self.start_step < 0:
            raise ValueError(f"epo_phase start_step must be >= 0, got {self.start_step}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"epo_phase window must be >= 1 or None, got {self.window}")
        if self.target not in ("epo", "epo_turns"):
            raise ValueError(f"epo_phase target must be one of ['epo', 'epo_turns'], got {self.target!r}")


def epo_phase_weight(k: int, horizon: int, slow_rate: float = 2.0, fast_rate: float = 3.0) -> float:
    """beta(k): 1 - 0.2 (1 - e^{-slow k / (K//2)}) up to K//2, then 0.8 e^{-fast (k - K//2) / (K - K//2)}."""
    k, half = max(0, min(k, horizon)), horizon // 2
    if k <= half:
        return 1.0 if half == 0 else 1.0 - 0.2 * (1.0 - math.exp(-slow_rate * k / half))
    return 0.8 * math.exp(-fast_rate * (k - half) / (horizon - half))


@register(
    "schedule",
    "epo_phase",
    config=EPOPhaseConfig,
    paper="arXiv:2509.22576",
    sets=lambda cfg: (f"{cfg.target}.smooth_weight", f"{cfg.target}.ref_entropy"),
    reads=lambda cfg: (cfg.observe,),
)
def epo_phase(
    state: dict[str, float],
    observed: dict[str, float],
    *,
    cfg: EPOPhaseConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """EPO's schedule: the phase weight beta(k) and the reference entropy H_ref (mean of past steps' entropy).

    Paper: EPO, arXiv:2509.22576 (scheduled smoothing weight beta(k); historical entropy reference); code:
    ``WujiangXu/EPO`` ``_calculate_epoch_based_entropy_weight`` and the per-turn entropy history. With
    k = step - 1 and K = horizon:

        beta(k) = 1 - 0.2 (1 - exp(-slow_rate k / (K // 2)))               k <= K // 2
        beta(k) = 0.8 exp(-fast_rate (k - K // 2) / (K - K // 2))           k >  K // 2
        H_ref   = mean of the observed entropy over the past steps (or the last ``window`` of them)

    Args:
        state: ``{}`` at first; then ``n`` (observations so far) and ``sum`` (window None) or the ring
            ``h0`` ... ``h{window-1}``.
        observed: the previous step's logged metrics; reads ``cfg.observe``.
        cfg: :class:`EPOPhaseConfig`.
        step: 1-based index of the step about to run.  total_steps: K when ``horizon`` is None (the default).

    Returns:
        ``(state, values)``; values has ``epo.smooth_weight`` (beta(k), 0 before ``start_step``) and, once
        one step has been observed, ``epo.ref_entropy`` (H_ref); ``epo_turns.*`` with ``target="epo_turns"``.

    Differences from the paper / released code:
        K is the run's total steps by default, as the paper's beta(k) over the K training epochs (the authors'
        rebuttal notes, ``rebuttal/EXPERIMENTS.md``: "ScienceWorld runs K=125"); the released
        ``verl/workers/actor/dp_actor.py`` ``update_policy`` calls ``_calculate_epoch_based_entropy_weight(
        trainer_epoch, max_epochs)`` with ``max_epochs = 150`` hardcoded, which the same notes list as a known
        issue; ``horizon=150`` reproduces it (the last of 125 steps, k = 124, then gets beta 0.113, not 0.042).
        The code's k is the trainer epoch (one step per epoch in its scripts). Single-turn: one history, not
        one per turn. H_ref averages the previous steps' rollout entropy (a schedule never sees the current
        step). beta is continuous up to K // 2 and jumps there, as the code.

    Example:
        >>> [round(epo_phase_weight(k, 150), 4) for k in (0, 75, 76, 150)]
        [1.0, 0.8271, 0.7686, 0.0398]
        >>> state = {}
        >>> for step, h in enumerate([None, 1.0, 2.0, 3.0, 4.0], start=1):
        ...     state, values = epo_phase(state, {} if h is None else {"entropy/token_mean": h},
        ...                               cfg=EPOPhaseConfig(window=2), step=step, total_steps=150)
        >>> values["epo.ref_entropy"], round(values["epo.smooth_weight"], 4)
        (3.5, 0.9798)
    """
    state = dict(state)
    if cfg.observe in observed:
        value, n = float(observed[cfg.observe]), int(state.get("n", 0))
        if cfg.window is None:
            state["sum"] = state.get("sum", 0.0) + value
        else:
            state[f"h{n % cfg.window}"] = value
        state["n"] = float(n + 1)
    elif state:
        raise ValueError(f"epo_phase reads {cfg.observe!r}, absent from the logged metrics {sorted(observed)}")
    k = step - 1
    weight = epo_phase_weight(k, cfg.horizon or total_steps, cfg.slow_rate, cfg.fast_rate)
    values = {f"{cfg.target}.smooth_weight": weight if k >= cfg.start_step else 0.0}
    n = int(state.get("n", 0))
    if n:
        ring = [state[f"h{i}"] for i in range(min(n, cfg.window))] if cfg.window else None
        values[f"{cfg.target}.ref_entropy"] = state["sum"] / n if ring is None else sum(ring) / len(ring)
    return state, values
