"""Entrocraft (Li et al., arXiv 2604.26326): steer the entropy curve along a schedule by rejecting samples.

Each step a target entropy H*(k) is read off a schedule (linear annealing by default); when the batch's
behaviour entropy H is above the target, samples whose update would raise the entropy are rejected (they leave
the loss), and when it is below, samples whose update would lower it. A sample's predicted contribution comes
from the Entropy Mechanism's identity dH ~ -Cov(log pi, A): c_i = -A_i (lbar_i - mean lbar). The advantage
estimator is untouched: a rejected row stays in its group's baseline (``unit="sample"``, no refill).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Schedule = Literal["linear", "cosine"]
Criterion = Literal["covariance", "advantage"]
Control = Literal["proportional", "band"]
Metric = Literal["reward", "shaped"]


def _check(name: str, value: str, kind: object) -> None:
    allowed = list(get_args(kind))
    if value not in allowed:
        raise ValueError(f"entrocraft {name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class EntrocraftConfig:
    """Options of Entrocraft's entropy-guided rejection sampling."""

    h_start: float = 0.65
    """Target entropy at step 0 (nats per token; the released script's band [0.6, 0.7] has centre 0.65)."""
    h_end: float = 0.45
    """Target entropy from step K on (the released script's final band [0.4, 0.5], centre 0.45)."""
    horizon: int = 0
    """K, the step at which the schedule reaches h_end; 0: the run's total_steps."""
    schedule: Schedule = "linear"
    """linear: H* = h_start + (h_end - h_start) min(1, k/K) (the paper's best); cosine: progress
    (1 - cos(pi min(1, k/K))) / 2 (the released code's ``grpo_range_cos``)."""
    criterion: Criterion = "covariance"
    """covariance: c_i = -A_i (lbar_i - mean lbar); advantage: c_i = -A_i (a positive advantage lowers the
    entropy; the released code's rule: too high keeps only positive samples, too low only negative ones)."""
    control: Control = "proportional"
    """proportional: rejection probability min(max_reject, gain |H - H*|); band: max_reject when
    |H - H*| > band, else 0 (the released code's band controller)."""
    gain: float = 10.0
    """Rejection probability per nat of |H - H*| (proportional control; 10: certain at 0.1 nats off)."""
    band: float = 0.05
    """Half-width of the tolerated band around H* (band control; the released script's bands are 0.1 wide)."""
    max_reject: float = 1.0
    """Ceiling of the rejection probability."""
    metric: Metric = "shaped"
    """What the advantage A_i is the group z-score of: the shaped reward (what the estimator sees) or the raw one."""
    eps: float = 1e-6
    """Added to the group std of A_i (as GRPO)."""

    def __post_init__(self) -> None:
        _check("schedule", self.schedule, Schedule)
        _check("criterion", self.criterion, Criterion)
        _check("control", self.control, Control)
        _check("metric", self.metric, Metric)
        if self.horizon < 0:
            raise ValueError(f"entrocraft horizon must be >= 0 (0: total_steps), got {self.horizon}")
        if not self.gain >= 0:
            raise ValueError(f"entrocraft gain must be >= 0, got {self.gain}")
        if not self.band >= 0:
            raise ValueError(f"entrocraft band must be >= 0, got {self.band}")
        if not 0.0 <= self.max_reject <= 1.0:
            raise ValueError(f"entrocraft max_reject must be in [0, 1], got {self.max_reject}")
        if not self.eps >= 0:
            raise ValueError(f"entrocraft eps must be >= 0, got {self.eps}")


def entrocraft_target(cfg: EntrocraftConfig, step: int, total_steps: int) -> float:
    """H*(k): ``h_start`` at k = 0, ``h_end`` from k = K on (K = ``cfg.horizon`` or ``total_steps``)."""
    horizon = cfg.horizon or total_steps
    if horizon < 1:
        raise ValueError(f"entrocraft needs total_steps >= 1 (or horizon >= 1), got {horizon}")
    progress = min(1.0, max(0.0, step / horizon))
    if cfg.schedule == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return cfg.h_start * (1.0 - progress) + cfg.h_end * progress  # bit-exact at both ends


def predicted_contribution(
    values: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor | None,
    cfg: EntrocraftConfig,
    group_id: torch.Tensor,
) -> torch.Tensor:
    """c_i [B]: the sample's first-order share of the entropy change (> 0: its update raises the entropy).

    A_i is the group z-score of ``values [B]`` (unbiased std + eps, as GRPO); with ``criterion="covariance"``
    c_i = -A_i (lbar_i - mean lbar), the mean over the rows with tokens (0 on a row without), else c_i = -A_i.
    """
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"entrocraft needs >= 2 samples per group for its advantage, got {groups.size}")
    v = groups.grid(values.detach().double())  # [P, G]
    adv = groups.rows((v - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + cfg.eps))  # [B]
    if cfg.criterion == "advantage":
        return -adv
    if old_logp is None:
        raise ValueError("sampler 'entrocraft' with criterion='covariance' needs old_logp (declared in needs)")
    has = mask.sum(-1) > 0  # [B] rows with tokens
    lbar = ops.masked_mean(old_logp.detach().double(), mask, dim=-1)  # [B]
    centred = torch.where(has, lbar - ops.masked_mean(lbar, has), torch.zeros_like(lbar))  # [B]
    return -adv * centred


@register(
    "sampler",
    "entrocraft",
    config=EntrocraftConfig,
    paper="arXiv:2604.26326",
    metrics=(
        "entrocraft/target",
        "entrocraft/batch_entropy",
        "entrocraft/reject_prob",
        "entrocraft/reject_frac",
        "sampler/kept_frac",
    ),
    needs=("old_logp", "generator", "step", "total_steps"),
    reconstructed=True,
    unit="sample",
)
def entrocraft(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: EntrocraftConfig,
    group_id: torch.Tensor,
    shaped: torch.Tensor,
    lengths: torch.Tensor,
    entropy: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    step: int | None = None,
    total_steps: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entrocraft: reject the samples that push the entropy away from its scheduled target.

    Paper: Entrocraft, "Addressing Performance Saturation for LLM RL via Precise Entropy Curve Control",
    arXiv:2604.26326 (rejection sampling that biases the advantage distribution to follow a user entropy
    schedule; linear annealing performs best). Reconstructed, with k the 1-based step:

        H*(k) = h_start + (h_end - h_start) min(1, k / K)          (K = horizon, or total_steps)
        H     = token mean of the behaviour entropy under the mask
        A_i   = group z-score of the shaped reward;  lbar_i = mean token old log-prob of sample i
        c_i   = -A_i (lbar_i - mean_batch lbar)                     (dH ~ -Cov(log pi, A))
        p     = min(max_reject, gain |H - H*|)
        reject i with probability p  if  c_i > 0 and H > H*,  or  c_i < 0 and H < H*

    So when H > H* only entropy-raising samples leave, and the kept set's sum of c_i is at most the batch's.

    Args:
        rewards: ``[B]`` verifier rewards.  shaped: ``[B]`` shaped rewards (A_i's source by default).
        mask: ``[B, T]`` response tokens that count.  lengths: ``[B]``, unused.
        entropy: ``[B, T]`` the behaviour policy's token entropies (the controlled H).
        cfg: :class:`EntrocraftConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        old_logp: ``[B, T]`` behaviour log-probs of the sampled tokens (``needs``).
        generator: the run's ``torch.Generator`` for the rejection draws (``needs``; None: torch's global RNG).
        step: the 1-based step (``needs``).  total_steps: the run's steps (``needs``; K when horizon is 0).

    Returns:
        ``(keep [B] bool, metrics)``; ``keep`` may differ within a group (a dropped row leaves the loss, its
        group's advantage still counts it). Metric keys: ``entrocraft/target`` (H*), ``entrocraft/batch_entropy``
        (H), ``entrocraft/reject_prob`` (p, 0 when no sample is on the wrong side), ``entrocraft/reject_frac``
        (fraction of the rows rejected) and ``sampler/kept_frac`` (fraction of the rows kept).

    Differences from the paper / released code:
        Reconstructed from the abstract (the body was not readable) and the released code
        (``lblaoke/entrocraft``, verl ``compute_grpo_range_linear_outcome_advantage``). The code is a band
        controller on the reward sign: above an upper bound (linear from 0.7 to 0.5) it keeps only the
        positive-reward samples with advantage r (RAFT++), below a lower bound (0.6 to 0.4) only the negative
        ones with advantage r (NSR), GRPO in between. ``criterion="advantage"``, ``control="band"``,
        ``band=0.05`` and the default targets select the same samples, but the kept ones keep the run's own
        advantages (the paper calls Entrocraft estimator-agnostic), and a flat group is never rejected. The
        default proportional, per-sample random rejection on c_i is this reconstruction's; no refill.

    Example:
        >>> mask, h = torch.ones(4, 2), torch.full((4, 2), 0.9)  # entropy far above the target
        >>> lp = torch.tensor([[-0.1, -0.1], [-2.0, -2.0], [-0.1, -0.1], [-2.0, -2.0]])
        >>> r, gid = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)
        >>> keep, m = entrocraft(r, mask, cfg=EntrocraftConfig(), group_id=gid, shaped=r, lengths=None, entropy=h,
        ...                      old_logp=lp, generator=torch.Generator().manual_seed(0), step=10, total_steps=10)
        >>> keep.tolist(), round(m["entrocraft/target"].item(), 4)  # rows 1, 2 would raise the entropy
        ([True, False, False, True], 0.45)
    """
    if step is None or total_steps is None:
        raise ValueError("sampler 'entrocraft' needs step and total_steps (declared in needs)")
    target = entrocraft_target(cfg, int(step), int(total_steps))
    h = ops.masked_mean(entropy.detach().double(), mask)  # [] token mean
    values = shaped if cfg.metric == "shaped" else rewards
    c = predicted_contribution(values, mask, old_logp, cfg, group_id)  # [B]
    error = float(h) - target
    wrong = (c > 0) if error > 0 else (c < 0) if error < 0 else torch.zeros_like(c, dtype=torch.bool)  # [B]
    if cfg.control == "band":
        prob = cfg.max_reject if abs(error) > cfg.band else 0.0
    else:
        prob = min(cfg.max_reject, cfg.gain * abs(error))
    device = generator.device if generator is not None else c.device
    draws = torch.rand(c.shape, generator=generator, dtype=torch.float64, device=device).to(c.device)  # [B]
    keep = ~(wrong & (draws < prob))  # [B]
    rejected = (~keep).double().mean()
    metrics = {
        "entrocraft/target": torch.tensor(target, dtype=torch.float32),
        "entrocraft/batch_entropy": h.float(),
        "entrocraft/reject_prob": torch.tensor(prob if bool(wrong.any()) else 0.0, dtype=torch.float32),
        "entrocraft/reject_frac": rejected.float(),
        "sampler/kept_frac": (1.0 - rejected).float(),
    }
    return keep, metrics


__all__ = ["EntrocraftConfig", "entrocraft", "entrocraft_target", "predicted_contribution"]
