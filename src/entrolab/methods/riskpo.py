"""RiskPO (Ren, Jiang et al., arXiv 2510.00911): a Mixed Value-at-Risk advantage over bundles of questions.

GRPO maximises the mean reward. RiskPO maximises a risk measure of the reward distribution instead: MVaR, a mix
of a range-VaR over the quantile levels [alpha, beta] and the lower-tail CVaR below alpha. This moves gradient
weight onto the hard, low-reward instances. Binary rewards on one question take few values, so consecutive
questions are *bundled*. Paper j of a bundle takes the j-th response of every question in it. Its score is the
sum of their rewards, and the risk measure is computed over the bundle's paper scores. The paper's advantage
is then credited back to each response in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

CreditMode = Literal["uniform", "std", "sum-mean", "score"]
RiskMeasure = Literal["mvar", "rvar", "upper_mvar"]
QUESTION_STD_FLOOR = 1e-3
"""A question whose reward std is at most this is given std 1 under credit "std" (as the released code)."""
SUM_MEAN_FLOOR = 1e-6
"""Under credit "sum-mean", a paper whose summed deviations are at most this in size is split equally."""


@dataclass(frozen=True)
class RiskPOConfig:
    """Options of RiskPO's bundled MVaR advantage (defaults: the released math script)."""

    alpha: float = 0.2
    """Lower quantile level: the CVaR tail lies below q_alpha, and the range-VaR starts there (quantile_down)."""
    beta: float = 0.9
    """Upper quantile level: the range-VaR ends at q_beta (quantile_up; 0.8 in the DAPO-Math script)."""
    omega: float = 1.5
    """Weight of the tail term against the range-VaR (w_mix; upper_weight in the upper-tail ablation)."""
    bundle_size: int = 5
    """Questions per bundle: consecutive prompts, in increasing group id (the last bundle may hold fewer)."""
    credit: CreditMode = "std"
    """How a paper's advantage reaches its responses: "uniform" (the same value), "std" (divided by the question's
    reward std; the math script), "sum-mean" (shared out by r_i - mean_q; the DAPO-Math script), "score"
    (x0.5 for a rewarded response, x1.5 otherwise)."""
    natural_baseline: bool = True
    """Range-VaR advantage clip(X, a, b) - b, which is <= 0 (True, the math script); False gives
    clip(X, a, b) - a, which is >= 0 (the DAPO-Math script)."""
    norm_by_std: bool = True
    """Divide a paper's advantage by the unbiased std of its bundle's paper scores (1 for a single paper)."""
    risk: RiskMeasure = "mvar"
    """"mvar": (omega CVaR + RVaR) / (omega + 1), the paper's risk-averse objective; "rvar": the range-VaR
    alone; "upper_mvar": the risk-seeking ablation (omega upper-tail CVaR above beta + RVaR) / (omega + 1)."""
    eps: float = 1e-6
    """Added to every denominator: the quantile-level widths and the stds."""

    def __post_init__(self) -> None:
        if self.credit not in get_args(CreditMode):
            raise ValueError(f"riskpo credit must be one of {list(get_args(CreditMode))}, got {self.credit!r}")
        if self.risk not in get_args(RiskMeasure):
            raise ValueError(f"riskpo risk must be one of {list(get_args(RiskMeasure))}, got {self.risk!r}")
        if not 0.0 < self.alpha < self.beta < 1.0:
            raise ValueError(f"riskpo needs 0 < alpha < beta < 1, got alpha={self.alpha}, beta={self.beta}")
        if not self.omega >= 0.0:
            raise ValueError(f"riskpo omega must be >= 0, got {self.omega}")
        if isinstance(self.bundle_size, bool) or not isinstance(self.bundle_size, int) or self.bundle_size < 1:
            raise ValueError(f"riskpo bundle_size must be an int >= 1, got {self.bundle_size!r}")
        if not self.eps > 0.0:
            raise ValueError(f"riskpo eps must be > 0, got {self.eps}")


def _tail_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row, the mean of ``x`` where ``keep``; the row's plain mean where nothing is kept.  [N, G] -> [N]"""
    count = keep.sum(1)  # [N]
    kept = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1) / count.clamp(min=1)  # [N]
    return torch.where(count > 0, kept, x.mean(1))


@register(
    "advantage",
    "riskpo",
    config=RiskPOConfig,
    paper="arXiv:2510.00911",
    metrics=(
        "adv/mean",
        "adv/std",
        "riskpo/objective",
        "riskpo/rvar",
        "riskpo/cvar",
        "riskpo/q_alpha",
        "riskpo/q_beta",
        "riskpo/paper_score_mean",
        "riskpo/frac_constant_bundles",
    ),
)
def riskpo(
    rewards: torch.Tensor, mask: torch.Tensor, *, cfg: RiskPOConfig, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RiskPO: a bundle-level Mixed Value-at-Risk advantage, credited back to each response.

    Paper: RiskPO, arXiv:2510.00911, objective MVaR = (omega CVaR_alpha + RVaR_[alpha,beta]) / (omega + 1).
    Bundle b holds ``bundle_size`` consecutive prompts, each with G responses. Paper j of the bundle takes
    the j-th response of every question, so the bundle has G papers. Its score is X_j = sum_q r_{q,j}.
    Then a = q_alpha(X) and b = q_beta(X), both linear-interpolation quantiles of the bundle's G scores, and

        A_RVaR = (clip(X, a, b) - b) / (beta - alpha + eps)     natural baseline (else - a in place of - b)
        A_CVaR = -(a - X)^+ / (alpha + eps)
        A_MVaR = (omega A_CVaR + A_RVaR) / (omega + 1)           [upper_mvar: omega (X - b)^+ / (1 - beta + eps)]
        A_MVaR <- A_MVaR / (std_unbiased(X) + eps)               (norm_by_std; a single paper has std 1)

    Response i of paper j gets ``A_i = A_MVaR(X_j)`` under the "uniform" credit. Under "std" it gets
    ``A_MVaR / (std_q(i) + eps)``, where a question std <= 1e-3 becomes 1. Under "sum-mean" it gets
    ``A_MVaR (r_i - m_q(i)) / sum_{i' in P_j} (r_i' - m_q(i'))``, or ``A_MVaR / |P_j|`` when that sum is within
    1e-6 of 0. Under "score" it gets ``(0.5 if r_i > 0 else 1.5) A_MVaR``.

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`RiskPOConfig`.
        group_id: ``[B]`` int, the prompt group of each row. Rows may come in any order, and all groups must
            have the same size. A bundle is the groups of ranks ``k * bundle_size .. (k + 1) * bundle_size - 1``
            in increasing id. Paper j takes the j-th row of each group, in batch order.

    Returns:
        ``(adv [B, 1], metrics)``. Everything is detached. ``adv/mean`` and ``adv/std`` are the mean and the
        population std over the B advantages. The other metrics are means over the bundles.
        ``riskpo/objective`` is the chosen risk measure estimated from the papers (for "mvar",
        ``(omega cvar + rvar) / (omega + 1)``). ``riskpo/rvar`` is the mean of the scores in [a, b], and
        ``riskpo/cvar`` the mean of the scores <= a; each is the bundle's plain mean when no score qualifies.
        ``riskpo/q_alpha`` and ``riskpo/q_beta`` are the bundles' quantiles a and b.
        ``riskpo/paper_score_mean`` is the mean of X. ``riskpo/frac_constant_bundles`` is the fraction of
        bundles whose scores are all equal, where every advantage is 0.

    Differences from the paper / released code:
        This follows the released ``compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking``
        (RTkenny/RiskPO @ 65ec40c); the paper's method section could not be read here. Its stochastic-
        approximation quantile tracker is left out. The trainer writes the tracked quantiles into the batch only
        *after* the advantage has been computed, and it builds a fresh batch every step. So the released run
        always falls back to the per-bundle empirical quantiles used here. Also left out: its unused
        ``use_mean_as_baseline`` (no script sets it) and the deprecated non-bundled estimators. The code forms
        bundles from every ``bundle_size`` consecutive prompts of the dataloader batch; here they follow the
        rank of the group id. The released run logs RVaR, CVaR and MVaR over all of the batch's papers with
        the tracked quantiles; here each is computed per bundle with that bundle's own quantiles, then
        averaged. A group of one sample is allowed: its bundle has one paper, and the advantage is 0.

    Example:
        >>> r = torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 0])  # two questions, four responses each
        >>> cfg = RiskPOConfig(alpha=0.2, beta=0.8, bundle_size=2, credit="uniform")
        >>> adv, m = riskpo(r, torch.ones(8, 3), cfg=cfg, group_id=ops.contiguous_groups(8, 4))
        >>> [round(a, 4) for a in adv.squeeze(-1).tolist()[:4]]  # paper scores X = [2, 1, 1, 0]
        [0.0, -0.3266, -0.3266, -2.8577]
        >>> round(m["riskpo/q_alpha"].item(), 4), round(m["riskpo/q_beta"].item(), 4)
        (0.6, 1.4)
    """
    groups = ops.Groups(group_id)
    raw = rewards.detach()
    r = groups.grid(raw.to(torch.promote_types(raw.dtype, torch.float32)))  # [P, G] groups in increasing id
    num_q, size = r.shape
    bundle = torch.arange(num_q, device=r.device) // cfg.bundle_size  # [P] bundle of each question
    num_b = -(-num_q // cfg.bundle_size)  # N bundles
    count = torch.zeros(num_b, dtype=r.dtype, device=r.device).index_add_(0, bundle, torch.ones_like(r[:, 0]))  # [N]
    x = torch.zeros(num_b, size, dtype=r.dtype, device=r.device).index_add_(0, bundle, r)  # [N, G] paper scores
    levels = torch.tensor([cfg.alpha, cfg.beta], dtype=r.dtype, device=r.device)
    lo, hi = torch.quantile(x, levels, dim=1, keepdim=True)  # [N, 1] each: a and b per bundle

    rvar_adv = (x.clamp(lo, hi) - (hi if cfg.natural_baseline else lo)) / (cfg.beta - cfg.alpha + cfg.eps)  # [N, G]
    if cfg.risk == "mvar":
        tail_adv = -(lo - x).clamp(min=0) / (cfg.alpha + cfg.eps)  # [N, G]
        paper_adv = (cfg.omega * tail_adv + rvar_adv) / (cfg.omega + 1)  # [N, G]
    elif cfg.risk == "upper_mvar":
        tail_adv = (x - hi).clamp(min=0) / (1 - cfg.beta + cfg.eps)  # [N, G]
        paper_adv = (cfg.omega * tail_adv + rvar_adv) / (cfg.omega + 1)  # [N, G]
    else:
        paper_adv = rvar_adv  # [N, G]
    if cfg.norm_by_std:
        std = x.std(1, keepdim=True) if size > 1 else torch.ones_like(lo)  # [N, 1]
        paper_adv = paper_adv / (std + cfg.eps)  # [N, G]

    adv = paper_adv[bundle]  # [P, G] each response gets its paper's advantage
    if cfg.credit == "std":
        q_std = r.std(1, keepdim=True) if size > 1 else torch.ones_like(r[:, :1])  # [P, 1]
        q_std = torch.where(q_std > QUESTION_STD_FLOOR, q_std, torch.ones_like(q_std))  # [P, 1]
        adv = adv / (q_std + cfg.eps)  # [P, G]
    elif cfg.credit == "sum-mean":
        dev = r - r.mean(1, keepdim=True)  # [P, G]
        total = torch.zeros_like(x).index_add_(0, bundle, dev)[bundle]  # [P, G] the paper's summed deviations
        split = total.abs() > SUM_MEAN_FLOOR  # [P, G]
        shared = adv * dev / torch.where(split, total, torch.ones_like(total))  # [P, G]
        adv = torch.where(split, shared, adv / count[bundle, None])  # [P, G] an equal split when the sum is ~0
    elif cfg.credit == "score":
        adv = torch.where(r > 0, 0.5, 1.5).to(r.dtype) * adv  # [P, G]
    adv = groups.rows(adv).unsqueeze(-1)  # [B, 1]

    rvar = _tail_mean(x, (x >= lo) & (x <= hi))  # [N]
    cvar = _tail_mean(x, x <= lo)  # [N]
    if cfg.risk == "mvar":
        objective = (cfg.omega * cvar + rvar) / (cfg.omega + 1)  # [N]
    elif cfg.risk == "upper_mvar":
        objective = (cfg.omega * _tail_mean(x, x >= hi) + rvar) / (cfg.omega + 1)  # [N]
    else:
        objective = rvar  # [N]
    flat = adv.flatten()  # [B]
    metrics = {
        "adv/mean": flat.mean(),
        "adv/std": flat.std(correction=0),
        "riskpo/objective": objective.mean(),
        "riskpo/rvar": rvar.mean(),
        "riskpo/cvar": cvar.mean(),
        "riskpo/q_alpha": lo.mean(),
        "riskpo/q_beta": hi.mean(),
        "riskpo/paper_score_mean": x.mean(),
        "riskpo/frac_constant_bundles": (x.amax(1) == x.amin(1)).to(r.dtype).mean(),
    }
    return adv, metrics


__all__ = ["CreditMode", "RiskMeasure", "RiskPOConfig", "riskpo"]
