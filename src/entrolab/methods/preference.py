"""Offline preference losses over (chosen, rejected) pairs: DPO (with cDPO and IPO) and POWER-DL.

Both take sequence log-probs (sums over each response's tokens) of N pairs under the policy and the frozen
reference, and return a per-pair loss ``[N]`` that the caller averages (``entrolab.prefs`` trains with them).
POWER-DL's dynamic labels are a per-pair buffer the caller keeps: it passes the current soft labels as the
``labels`` need and moves them with :func:`dynamic_labels` after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from entrolab.registry import register

DpoLossType = Literal["sigmoid", "ipo"]


def _reward_metrics(margin: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    margin, chosen, rejected = margin.detach().float(), chosen.detach().float(), rejected.detach().float()
    return {
        "pref/margin_mean": margin.mean(),
        "pref/accuracy": (margin > 0).float().mean(),
        "pref/chosen_reward": chosen.mean(),
        "pref/rejected_reward": rejected.mean(),
    }


@dataclass(frozen=True)
class DPOConfig:
    """Options of DPO (and of its cDPO and IPO variants)."""

    beta: float = 0.1
    """beta: the KL strength of the implicit reward beta log(pi / pi_ref) (IPO's tau)."""
    label_smoothing: float = 0.0
    """cDPO's epsilon in [0, 0.5): the probability that a label is flipped (0: plain DPO)."""
    loss_type: DpoLossType = "sigmoid"
    """sigmoid: DPO's -log sigma(margin); ipo: IPO's squared loss (h - 1 / (2 beta))^2."""
    ipo_length_norm: bool = False
    """IPO only: average the log-ratios over each response's tokens, as TRL's ``loss_type="ipo"`` does
    (False: the paper's summed log-ratios)."""

    def __post_init__(self) -> None:
        if self.loss_type not in get_args(DpoLossType):
            raise ValueError(f"dpo loss_type must be one of {list(get_args(DpoLossType))}, got {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"dpo beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("dpo label_smoothing applies to loss_type='sigmoid' only, not to 'ipo'")


@register(
    "preference_loss",
    "dpo",
    config=DPOConfig,
    paper="arXiv:2305.18290",
    metrics=("pref/margin_mean", "pref/accuracy", "pref/chosen_reward", "pref/rejected_reward"),
)
def dpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    cfg: DPOConfig,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO: -log sigma(beta [(log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)]) per pair.

    Paper: Direct Preference Optimization, Rafailov et al., arXiv:2305.18290, eq. 7. With the log-ratios
    u_w = log pi(y_w|x) - log pi_ref(y_w|x), u_l likewise, and the margin m = beta (u_w - u_l):

        sigmoid:  L = -(1 - eps) log sigma(m) - eps log sigma(-m)        (cDPO for eps > 0)
        ipo:      L = (u_w - u_l - 1 / (2 beta))^2                       (IPO, arXiv:2310.12036, eq. 17)

    Args:
        chosen_logp: ``[N]`` log pi(y_w|x) summed over the chosen response's tokens (with grad).
        rejected_logp: ``[N]`` log pi(y_l|x) of the rejected response.
        ref_chosen_logp: ``[N]`` the same under the frozen reference.  ref_rejected_logp: ``[N]`` likewise.
        cfg: :class:`DPOConfig`.
        chosen_lengths: ``[N]`` token counts of the chosen responses (used by ``ipo_length_norm`` only).
        rejected_lengths: ``[N]`` token counts of the rejected responses.

    Returns:
        ``(loss [N], metrics)``. Metric keys, with the implicit rewards r = beta (log pi - log pi_ref) summed
        over the response: ``pref/margin_mean`` (mean r_w - r_l), ``pref/accuracy`` (fraction of pairs with
        r_w > r_l; ties count as wrong), ``pref/chosen_reward`` and ``pref/rejected_reward`` (mean r_w, r_l).

    Differences from the paper / released code:
        The sigmoid loss equals TRL 1.16's ``loss_type="sigmoid"`` (``-logsigmoid(beta * delta)``) exactly at
        eps = 0. cDPO's label smoothing is the form of the DPO authors' code and of TRL before 1.0; TRL 1.16 no
        longer smooths its sigmoid loss. IPO defaults to the paper's summed log-ratios; ``ipo_length_norm=True``
        gives TRL's per-token average. The metrics are TRL's ``rewards/*`` for every loss type.

    Example:
        >>> loss, m = dpo(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        ...               cfg=DPOConfig(beta=1.0), chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([2]))
        >>> round(loss.item(), 4), m["pref/margin_mean"].item(), m["pref/accuracy"].item()
        (0.1269, 2.0, 1.0)
    """
    chosen_ratio = chosen_logp - ref_chosen_logp  # [N]
    rejected_ratio = rejected_logp - ref_rejected_logp  # [N]
    margin = cfg.beta * (chosen_ratio - rejected_ratio)  # [N]
    if cfg.loss_type == "ipo":
        if cfg.ipo_length_norm:
            h = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)  # [N]
        else:
            h = chosen_ratio - rejected_ratio  # [N]
        loss = (h - 1 / (2 * cfg.beta)) ** 2
    else:
        loss = -F.logsigmoid(margin) * (1 - cfg.label_smoothing)  # [N]
        if cfg.label_smoothing:
            loss = loss - F.logsigmoid(-margin) * cfg.label_smoothing
    return loss, _reward_metrics(margin, cfg.beta * chosen_ratio, cfg.beta * rejected_ratio)


@dataclass(frozen=True)
class PowerDLConfig:
    """Options of POWER-DL (reconstructed; see the function's docstring)."""

    beta: float = 2.0
    """beta: the weighted-entropy strength, the scale of the implicit reward (not recovered from the paper;
    2.0 is SimPO's range for length-normalised rewards)."""
    eta: float = 1.0
    """Weight of the robust term -E_data[r(y_w)] that anchors the chosen responses (0 removes it; not recovered
    from the paper: 1 is the max-min objective with equal weights)."""
    length_normalize: bool = True
    """Guiasu weight w(y) = 1 / |y| (length-normalised rewards); False: w(y) = 1."""
    entropy_offset: bool = True
    """Keep the + beta w(y) of the weighted-entropy optimum r = beta w(y) (log pi(y|x) + 1) in the margin
    (a length-dependent margin beta (1/|y_w| - 1/|y_l|); 0 when w = 1)."""
    reference: bool = False
    """Score log pi - log pi_ref (a weighted KL to the reference) instead of log pi (Guiasu's weighted entropy,
    reference-free, the paper's)."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"power_dl beta must be > 0, got {self.beta}")
        if not self.eta >= 0:
            raise ValueError(f"power_dl eta must be >= 0, got {self.eta}")


def power_margin(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    cfg: PowerDLConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """POWER's margin and rewards: ``(margin [N], r_w [N], r_l [N], anchor score beta w s_w [N])``.

    s = log pi (or log pi - log pi_ref with ``reference``), w = 1 / |y| (or 1); r = beta w (s + 1) with
    ``entropy_offset`` (else beta w s); margin = beta (w_w s_w - w_l s_l) + beta (w_w - w_l).
    """
    s_w, s_l = chosen_logp, rejected_logp  # [N]
    if cfg.reference:
        s_w, s_l = chosen_logp - ref_chosen_logp, rejected_logp - ref_rejected_logp
    one = torch.ones_like(s_w)
    w_w = 1.0 / chosen_lengths.clamp(min=1).to(s_w.dtype) if cfg.length_normalize else one  # [N]
    w_l = 1.0 / rejected_lengths.clamp(min=1).to(s_w.dtype) if cfg.length_normalize else one  # [N]
    margin = cfg.beta * (w_w * s_w - w_l * s_l)  # [N]
    r_w, r_l = cfg.beta * w_w * s_w, cfg.beta * w_l * s_l  # [N]
    anchor = r_w
    if cfg.entropy_offset:
        margin = margin + cfg.beta * (w_w - w_l)  # exactly 0 when w = 1
        r_w, r_l = r_w + cfg.beta * w_w, r_l + cfg.beta * w_l
    return margin, r_w, r_l, anchor


def dynamic_labels(labels: torch.Tensor, margin: torch.Tensor, gamma: float) -> torch.Tensor:
    """The dynamic-label update l <- (1 - gamma) l + gamma sigma(sg(margin)), toward the stationary label.

    ``labels [N]`` the pairs' current soft labels (1: chosen preferred), ``margin [N]`` their implicit-reward
    margins, ``gamma`` in [0, 1] (0 keeps the labels; 1 jumps to the model's own preference). A pure function
    that returns the new labels ``[N]`` (detached); the caller keeps the buffer. Reconstructed (see power_dl).

    >>> round(dynamic_labels(torch.tensor([1.0]), torch.tensor([-2.0]), 0.5).item(), 3)
    0.56
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"dynamic-label gamma must be in [0, 1], got {gamma}")
    return ((1.0 - gamma) * labels + gamma * torch.sigmoid(margin.detach().to(labels.dtype))).detach()


@register(
    "preference_loss",
    "power_dl",
    config=PowerDLConfig,
    paper="arXiv:2412.09544",
    reconstructed=True,
    metrics=(
        "pref/margin_mean",
        "pref/accuracy",
        "pref/chosen_reward",
        "pref/rejected_reward",
        "pref/label_mean",
        "pref/label_gap",
        "pref/anchor_mean",
    ),
    needs=("labels",),
)
def power_dl(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    cfg: PowerDLConfig,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """POWER-DL: soft-label Bradley-Terry on weighted-entropy (length-normalised) rewards, plus a chosen anchor.

    Paper: Rashidinejad & Tian, "Sail into the Headwind", arXiv:2412.09544 (POWER and dynamic labels). With
    Guiasu's weighted entropy H_w(pi) = -sum_y w(y) pi(y|x) log pi(y|x) and w(y) = 1/|y|, the optimum of
    max_pi E_pi[r] + beta H_w(pi) gives r(x, y) = beta w(y) (log pi(y|x) + 1) + const(x); the max-min robust
    objective min_r max_pi E_pi[r] - E_data[r] + L_BT(r) + beta H_w(pi) leaves (dropping terms without a gradient
    offline) a Bradley-Terry loss on r plus -E_data[r] on the chosen responses:

        m = beta (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) + beta (1/|y_w| - 1/|y_l|)
        L = -[l log sigma(m) + (1 - l) log sigma(-m)] - eta beta log pi(y_w)/|y_w|

    with the pair's soft label l (1 at the start); the caller moves it with :func:`dynamic_labels`,
    l <- (1 - gamma) l + gamma sigma(sg(m)), so dL/dm = sigma(m) - l shrinks where data and model disagree.

    Args:
        chosen_logp: ``[N]`` log pi(y_w|x) summed over the chosen response's tokens (with grad).
        rejected_logp: ``[N]`` log pi(y_l|x) of the rejected response.
        ref_chosen_logp: ``[N]`` the reference's; used only with ``reference=True``.
        ref_rejected_logp: ``[N]`` likewise.
        cfg: :class:`PowerDLConfig`.
        chosen_lengths: ``[N]`` token counts |y_w|.  rejected_lengths: ``[N]`` token counts |y_l|.
        labels: ``[N]`` soft labels in [0, 1] (``needs``; None: all 1, POWER without dynamic labels).

    Returns:
        ``(loss [N], metrics)``. Metric keys: ``pref/margin_mean`` (mean m), ``pref/accuracy`` (fraction m > 0),
        ``pref/chosen_reward`` and ``pref/rejected_reward`` (mean r of each side), ``pref/label_mean`` (mean l),
        ``pref/label_gap`` (mean |sigma(m) - l|, the size of the BT gradient), ``pref/anchor_mean`` (mean
        beta log pi(y_w)/|y_w|, the anchored reward).

    Differences from the paper / released code:
        Reconstructed from the abstract and our derivation: the paper's equations and code could not be read.
        The entropy offset beta (1/|y_w| - 1/|y_l|) comes from the derivation (``entropy_offset=False`` drops it),
        as does the anchor's weight eta; the on-policy term beta E_pi[w] of the max-min value is dropped (no
        offline estimate). beta and eta defaults were not recovered. ``reference=True`` swaps the weighted entropy
        for a weighted KL: with it, ``length_normalize=False``, ``eta=0`` and labels 1 the loss is DPO's exactly.

    Example:
        >>> loss, m = power_dl(torch.tensor([-4.0]), torch.tensor([-4.0]), torch.zeros(1), torch.zeros(1),
        ...                    cfg=PowerDLConfig(beta=1.0, eta=0.0), chosen_lengths=torch.tensor([2]),
        ...                    rejected_lengths=torch.tensor([4]), labels=torch.ones(1))
        >>> round(m["pref/margin_mean"].item(), 4), round(loss.item(), 4)
        (-0.75, 1.1369)
    """
    margin, r_w, r_l, anchor = power_margin(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, chosen_lengths, rejected_lengths, cfg
    )
    if labels is None:
        labels = torch.ones_like(margin)
    labels = labels.detach().to(margin.dtype)  # [N]
    loss = -(labels * F.logsigmoid(margin)) - (1 - labels) * F.logsigmoid(-margin)  # [N]
    if cfg.eta:
        loss = loss - cfg.eta * anchor
    metrics = _reward_metrics(margin, r_w, r_l)
    metrics["pref/label_mean"] = labels.float().mean()
    metrics["pref/label_gap"] = (torch.sigmoid(margin.detach()) - labels).abs().float().mean()
    metrics["pref/anchor_mean"] = anchor.detach().float().mean()
    return loss, metrics


__all__ = ["DPOConfig", "PowerDLConfig", "dpo", "dynamic_labels", "power_dl", "power_margin"]
