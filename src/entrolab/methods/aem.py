"""AEM (Zhao et al., arXiv 2605.00425): adaptive entropy modulation of response-level advantages for agents.

To first order, a natural-gradient step on response logits changes the policy's response-level entropy by
eta E[A(y) delta(y)], delta the response's surprisal -log pi(y) relative to its group: reinforcing a rare
success or penalising a common failure raises entropy, the other two cases lower it. AEM rescales each
response's advantage by a positive factor of its relative surprisal, so that training first leans on the
entropy-raising responses (exploration) and later on the entropy-lowering ones (exploitation). RECONSTRUCTED
from the abstract and secondary summaries (the paper's equations and code were not available): the modulation
form below is entrolab's design; the drift diagnostic is exact to first order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.empg import step_sums
from entrolab.registry import register

Phase = Literal["balance", "linear", "constant"]
Unit = Literal["turn", "episode"]
Surprisal = Literal["mean", "sum"]
Relative = Literal["zscore", "center"]
METRICS = (
    "adv/mean",
    "adv/std",
    "aem/predicted_drift",
    "aem/shaped_drift",
    "aem/surprisal_mean",
    "aem/scale_mean",
    "aem/direction",
)


@dataclass(frozen=True)
class AEMConfig:
    """Options of AEM's surprisal-modulated advantage (reconstructed; defaults not from the paper)."""

    beta: float = 0.5
    """Strength of the modulation phi = exp(lambda beta sign(A) z) (0: the GRPO advantage)."""
    max_scale: float = 2.0
    """phi is clipped to [1 / max_scale, max_scale] (1: no modulation)."""
    phase: Phase = "balance"
    """How lambda (+1 exploration .. -1 exploitation) is set: balance, (N_neg - N_pos) / (N_neg + N_pos) over the
    batch's episodes with a non-zero advantage (moves to exploitation as successes become the majority, the
    abstract's "evolving balance between positive and negative samples"); linear, 1 - 2 (step - 1) /
    (total_steps - 1); constant, ``direction``."""
    direction: float = 1.0
    """lambda under ``phase="constant"``, in [-1, 1] (0: no modulation)."""
    unit: Unit = "turn"
    """The response whose surprisal is measured: each turn (its model tokens, by ``step_ids``; the agent's
    action, as the paper's response) or the whole episode (every model token of the row)."""
    surprisal: Surprisal = "mean"
    """s = the mean over the unit's model tokens of -log pi_old (length-free) or their sum (-log pi_old(y),
    for which the drift identity is exact)."""
    relative: Relative = "zscore"
    """z = (s - mean of the group's units) / (their std + eps) ("group-normalised"), or s - mean alone."""
    eps: float = 1e-6
    """Added to the group std of the GRPO advantage and of the surprisal."""
    norm_by_std: bool = True
    """Divide the episode advantage by the group std (GRPO); False leaves r - mean_g r (Dr.GRPO)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("phase", self.phase, Phase),
            ("unit", self.unit, Unit),
            ("surprisal", self.surprisal, Surprisal),
            ("relative", self.relative, Relative),
        ):
            if value not in get_args(allowed):
                raise ValueError(f"aem {name} must be one of {list(get_args(allowed))}, got {value!r}")
        if not 0 <= self.beta < float("inf"):
            raise ValueError(f"aem beta must be finite and >= 0, got {self.beta}")
        if not 1 <= self.max_scale < float("inf"):
            raise ValueError(f"aem max_scale must be finite and >= 1, got {self.max_scale}")
        if not -1 <= self.direction <= 1:
            raise ValueError(f"aem direction must be in [-1, 1], got {self.direction}")
        if not 0 <= self.eps < float("inf"):
            raise ValueError(f"aem eps must be finite and >= 0, got {self.eps}")


def _direction(cfg: AEMConfig, a: torch.Tensor, rows: torch.Tensor, step: int | None, total: int | None) -> float:
    """lambda of this batch: +1 exploration .. -1 exploitation (see ``AEMConfig.phase``)."""
    if cfg.phase == "constant":
        return float(cfg.direction)
    if cfg.phase == "linear":
        if step is None or total is None:
            raise ValueError("aem phase='linear' needs step and total_steps")
        return 1.0 - 2.0 * min(max((step - 1) / max(total - 1, 1), 0.0), 1.0)
    pos, neg = int(((a > 0) & rows).sum()), int(((a < 0) & rows).sum())
    return (neg - pos) / max(neg + pos, 1)


@register(
    "advantage",
    "aem",
    config=AEMConfig,
    paper="arXiv:2605.00425",
    metrics=METRICS,
    needs=("old_logp", "step_ids", "step", "total_steps"),
    reconstructed=True,
)
def aem(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: AEMConfig,
    group_id: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
    step: int | None = None,
    total_steps: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AEM: A' = A_i phi_u, phi_u = exp(lambda beta sign(A_i) z_u) > 0 of unit u's relative response surprisal.

    Paper: AEM, arXiv:2605.00425 (abstract: entropy drift under natural gradients is governed by the product of
    the advantage and the relative response surprisal; a practical proxy rescales the advantages). Units u are
    the episode's turns (``unit="turn"``) or the whole episode; A_i is the episode's GRPO advantage:

        s_u = mean (or sum) over u's model tokens of -log pi_old
        delta_u = s_u - mean_{units of the group} s,   z_u = delta_u / (std_{units of the group} s + eps)
        lambda = (N_- - N_+) / (N_- + N_+)  over the batch's episodes with A < 0 / A > 0   (phase="balance")
        phi_u = clip(exp(lambda beta sign(A_i) z_u), 1 / max_scale, max_scale),   A'_u = A_i phi_u
        drift = mean_u A_i delta_u   (dH ~ eta drift for a natural-gradient step dz_y = eta A(y) on response
                                      logits, exact to first order with surprisal="sum")

    sign(A) z has the sign of the unit's entropy contribution A delta, so lambda > 0 amplifies the
    entropy-raising units (rare successes, common failures) and damps the entropy-lowering ones, and every
    unit's shaped contribution A' delta is >= its own A delta; lambda < 0 the reverse. phi > 0: the sign of
    every advantage is kept, and a zero advantage stays 0. Every model token of unit u gets A'_u.

    Args:
        rewards: ``[B]`` one outcome reward per episode (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` 1 on the model's tokens only (environment tokens and padding 0).
        cfg: :class:`AEMConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        old_logp: ``[B, T]`` the behaviour policy's log-probs of the sampled tokens (required; read on mask
            tokens only).
        step_ids: ``[B, T]`` long, the turn of each model token (-1 on environment tokens and padding);
            required for ``unit="turn"``, unused for ``"episode"``.
        step: the current step, 1-based (``phase="linear"``).
        total_steps: the run's number of steps (``phase="linear"``).

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, detached. Metric keys: ``adv/mean``, ``adv/std`` (over the
        mask tokens), ``aem/predicted_drift`` (mean over units of A delta, the first-order entropy drift of
        the unshaped update), ``aem/shaped_drift`` (the same with A'), ``aem/surprisal_mean`` (mean s over
        units), ``aem/scale_mean`` (mean phi over units), ``aem/direction`` (lambda).

    Differences from the paper / released code:
        Reconstructed: only the abstract and secondary summaries were available (no equations, no code), so
        the proxy (z-scored surprisal inside an exponential), the per-sign direction, lambda's three phases,
        beta and max_scale are entrolab's design, built to match what the abstract states: response-level
        surprisal, reshaping by the product of advantage and relative surprisal, a transition from exploration
        to exploitation driven by the balance of positive and negative samples, sign-preserving rescaling of
        the base advantages. The drift diagnostic is the first-order identity for a softmax over whole
        responses (with ``surprisal="mean"`` it is its length-normalised proxy).

    Example:
        >>> lp = torch.tensor([[-0.1], [-2.0], [-0.1], [-2.0]])  # one-token responses: two common, two rare
        >>> adv, m = aem(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.ones(4, 1), cfg=AEMConfig(phase="constant"),
        ...              group_id=torch.zeros(4, dtype=torch.long), old_logp=lp, step_ids=torch.zeros(4, 1).long())
        >>> [round(v, 4) for v in adv.squeeze(1).tolist()]  # rare success and common failure amplified
        [0.5253, 1.4278, -1.4278, -0.5253]
        >>> round(m["aem/shaped_drift"].item(), 4), m["aem/direction"].item()  # unshaped drift: 0 here
        (0.4287, 1.0)
    """
    if old_logp is None:
        raise ValueError("aem needs old_logp (the behaviour policy's log-probs of the sampled tokens)")
    nll = -ops.upcast(old_logp.detach())
    nll = nll if nll.is_floating_point() else nll.float()
    base, _ = grpo(rewards, mask, cfg=GRPOConfig(eps=cfg.eps, norm_by_std=cfg.norm_by_std), group_id=group_id)
    a = base.to(nll.dtype)  # [B, 1] episode advantages
    zero = torch.zeros((), dtype=nll.dtype, device=nll.device)
    if cfg.unit == "turn":
        if step_ids is None:
            raise ValueError("aem with unit='turn' needs step_ids (the turn of each model token)")
        sums, counts, ids, keep = step_sums(nll, mask, step_ids)  # [B, K]
    else:
        keep = mask.bool()
        ids = torch.zeros(keep.shape, dtype=torch.long, device=keep.device)  # [B, T] one unit per row
        sums = ops.masked_sum(nll, keep, dim=-1).unsqueeze(1)  # [B, 1]
        counts = keep.to(nll.dtype).sum(-1, keepdim=True)  # [B, 1]
    exists = counts > 0  # [B, K]
    s = torch.where(exists, sums / counts.clamp(min=1) if cfg.surprisal == "mean" else sums, zero)  # [B, K]
    groups = ops.Groups(group_id)
    sg, eg = groups.grid(s), groups.grid(exists)  # [P, G, K]
    w = eg.to(s.dtype)
    n = w.sum((1, 2), keepdim=True).clamp(min=1)  # [P, 1, 1]
    delta_g = torch.where(eg, sg - (sg * w).sum((1, 2), keepdim=True) / n, zero)  # [P, G, K]
    if cfg.relative == "zscore":
        den = (delta_g.pow(2).sum((1, 2), keepdim=True) / n).sqrt() + cfg.eps  # [P, 1, 1]
        z_g = torch.where(eg & (den > 0), delta_g / torch.where(den > 0, den, 1.0), zero)
    else:
        z_g = delta_g
    delta, z = groups.rows(delta_g), groups.rows(z_g)  # [B, K]
    rows = exists.any(1, keepdim=True)  # [B, 1]
    lam = _direction(cfg, a, rows, step, total_steps)
    cap = math.log(cfg.max_scale)
    phi = torch.where(exists, torch.exp((lam * cfg.beta * a.sign() * z).clamp(-cap, cap)), zero)  # [B, K]
    shaped = a * phi  # [B, K]
    adv = torch.where(keep, shaped.gather(1, ids), zero)  # [B, T]
    units = exists.sum().to(s.dtype).clamp(min=1)
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "aem/predicted_drift": torch.where(exists, a * delta, zero).sum() / units,
        "aem/shaped_drift": torch.where(exists, shaped * delta, zero).sum() / units,
        "aem/surprisal_mean": s.sum() / units,
        "aem/scale_mean": phi.sum() / units,
        "aem/direction": torch.tensor(lam, dtype=s.dtype, device=s.device),
    }
    return adv, metrics


__all__ = ["AEMConfig", "aem"]
