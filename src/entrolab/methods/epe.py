"""Perplexity- and position-based advantage shaping (Deng et al., arXiv:2508.02260), as a soft token weight.

"Decomposing the Entropy-Performance Exchange" finds that in the plateau stage of RLVR learning concentrates on
high-entropy tokens in low-perplexity responses and near the end of responses, and proposes two shapings
trained as separate methods (GRPO+PPL, GRPO+POSITION):

    PPL:      A~_it = A_it (1 - alpha z_i),   z_i the group-standardised log-perplexity of response i
    position: A~_it = A_it + sign(A_it) b_it, b_it = min(gamma sigmoid(k (r_it - 1/2)), 1/2 |A_it|)

with r_it the relative position of token t in response i. Both are a non-negative factor on A, so they are a
token weight here: for PPO-clip, L(w A) = w L(A) for w >= 0. Sources: the authors' released code
(``RUCAIBox/Slow_Thinking_with_LLMs``, ``entropy2performance/verl/verl/trainer/ppo/core_algos.py``:
``calculate_ppl`` and ``compute_policy_loss``, scripts ``low_ppl.sh`` / ``location.sh``) and the equations of
the extended report (arXiv:2508.07534) as summarised; the body of 2508.02260 itself was not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

Mode = Literal["ppl", "position", "both"]
PplStats = Literal["iqr", "plain"]
STD_FLOOR = 1e-6
"""A group whose log-PPL spread is at most this is standardised with std 1 (the authors' code)."""
_INF = float("inf")


@dataclass(frozen=True)
class EpeConfig:
    """Options of the PPL / position advantage shaping."""

    mode: Mode = "ppl"
    """ppl (GRPO+PPL) or position (GRPO+POSITION), the paper's two methods; both: the product of the two
    weights (the order the authors' loss would apply them: position bonus first, then the PPL factor)."""
    alpha: float = 0.01
    """PPL strength: w_ppl = 1 - alpha z_i (low_ppl.sh: ppl_delta 0.01). A negative alpha is the code's
    ``use_ppl_high`` ablation (1 + |alpha| z: high-PPL responses weighted up)."""
    ppl_stats: PplStats = "iqr"
    """How z_i is standardised within the group. iqr (the authors' code): mean and population std over the
    responses inside [Q1 - 1.5 IQR, Q3 + 1.5 IQR], applied to every response; plain: over the whole group."""
    ppl_weight_min: float = 0.0
    """Lower clamp of w_ppl. 0 (default) only keeps w A on the side of A; the authors' code clamps to 0.8."""
    ppl_weight_max: float = _INF
    """Upper clamp of w_ppl; the authors' code clamps to 1.2."""
    gamma: float = 0.1
    """Position bonus scale: b = min(gamma sigmoid(k (r - center)), cap |A|) (location.sh: 0.1)."""
    sharpness: float = 15.0
    """k of the sigmoid (the authors' code: 15): the bonus steps from ~0 to ~gamma around ``center``."""
    center: float = 0.5
    """Relative position r in [0, 1) where the bonus is gamma / 2 (the authors' code: 0.5)."""
    cap: float = 0.5
    """The bonus is at most cap |A| (the authors' code: 0.5), so w_pos = 1 + b / |A| lies in [1, 1 + cap]."""
    entropy_rho: float = 1.0
    """Shape only the top-rho fraction of the valid tokens by behaviour entropy (the rest keep weight 1);
    1 (default, the authors' code) shapes every token."""

    def __post_init__(self) -> None:
        if self.mode not in ("ppl", "position", "both"):
            raise ValueError(f"epe mode must be one of ['ppl', 'position', 'both'], got {self.mode!r}")
        if self.ppl_stats not in ("iqr", "plain"):
            raise ValueError(f"epe ppl_stats must be one of ['iqr', 'plain'], got {self.ppl_stats!r}")
        if not -_INF < self.alpha < _INF:
            raise ValueError(f"epe alpha must be a finite number, got {self.alpha}")
        if not 0 <= self.ppl_weight_min <= self.ppl_weight_max:
            raise ValueError(
                f"epe needs 0 <= ppl_weight_min <= ppl_weight_max, got {self.ppl_weight_min}, {self.ppl_weight_max}"
            )
        if not 0 <= self.gamma < _INF:
            raise ValueError(f"epe gamma must be >= 0 and finite, got {self.gamma}")
        if not 0 < self.sharpness < _INF:
            raise ValueError(f"epe sharpness must be > 0 and finite, got {self.sharpness}")
        if not 0 <= self.center <= 1:
            raise ValueError(f"epe center must be in [0, 1], got {self.center}")
        if not 0 <= self.cap < _INF:
            raise ValueError(f"epe cap must be >= 0 and finite, got {self.cap}")
        if not 0 < self.entropy_rho <= 1:
            raise ValueError(f"epe entropy_rho must be in (0, 1], got {self.entropy_rho}")


def group_log_ppl_z(
    log_ppl: torch.Tensor, present: torch.Tensor, group_id: torch.Tensor, stats: PplStats = "iqr"
) -> torch.Tensor:
    """z_i = (log PPL_i - mean) / std within each group; rows with ``present`` False are left out and get 0.

    ``stats="iqr"`` (the authors' ``calculate_ppl``): mean and population std over the group's responses
    inside [Q1 - 1.5 IQR, Q3 + 1.5 IQR] (linear-interpolated quartiles; all responses if none is inside);
    ``"plain"``: over all of them. A std <= 1e-6 is replaced by 1. Groups may differ in size (a minibatch
    that split them): each is standardised over the rows it has here.
    log_ppl ``[B]``, present ``[B]`` bool, group_id ``[B]`` -> ``[B]``.
    """
    _, inverse, counts = torch.unique(group_id, return_inverse=True, return_counts=True)  # [B], [P]
    order = torch.sort(inverse, stable=True).indices  # [B] rows grouped, batch order inside a group
    start = torch.cumsum(counts, 0) - counts  # [P] grouped index of each group's first row
    slot = torch.empty_like(inverse)
    slot[order] = torch.arange(inverse.numel(), device=inverse.device) - start[inverse[order]]  # [B] column
    x = torch.full((counts.numel(), int(counts.max())), torch.nan, dtype=log_ppl.dtype, device=log_ppl.device)
    x[inverse, slot] = torch.where(present, log_ppl, torch.nan)  # [P, G_max], NaN where absent or no row
    valid = ~torch.isnan(x)  # [P, G_max]
    used = valid
    if stats == "iqr":
        q1 = torch.nanquantile(x, 0.25, dim=1, keepdim=True)  # [P, 1]
        q3 = torch.nanquantile(x, 0.75, dim=1, keepdim=True)  # [P, 1]
        spread = 1.5 * (q3 - q1)
        used = valid & (x >= q1 - spread) & (x <= q3 + spread)  # NaN compares False
        used = torch.where(used.any(1, keepdim=True), used, valid)  # the code's fallback: all responses
    count = used.sum(1, keepdim=True).clamp(min=1)  # [P, 1]
    mean = torch.where(used, x, 0.0).sum(1, keepdim=True) / count  # [P, 1]
    std = (torch.where(used, (x - mean) ** 2, 0.0).sum(1, keepdim=True) / count).sqrt()  # [P, 1]
    std = torch.where(std > STD_FLOOR, std, torch.ones_like(std))
    return torch.where(valid, (x - mean) / std, 0.0)[inverse, slot]  # [B]


def position_weight(keep: torch.Tensor, advantages: torch.Tensor, cfg: EpeConfig) -> torch.Tensor:
    """w_pos = (A + sign(A) b) / A = 1 + min(gamma sigmoid(k (r - center)) / |A|, cap); 1 where A = 0.

    r_t = (index of t among the row's valid tokens) / (number of valid tokens), in [0, 1), as the authors' code.
    keep ``[B, T]`` bool, advantages ``[B, T]`` (0 off ``keep``) -> ``[B, T]``.
    """
    dtype = advantages.dtype
    length = keep.sum(-1, keepdim=True).clamp(min=1).to(dtype)  # [B, 1]
    rel = (torch.cumsum(keep.to(dtype), dim=-1) - 1.0) / length  # [B, T]
    bonus = cfg.gamma * torch.sigmoid(cfg.sharpness * (rel - cfg.center))  # [B, T]
    size = advantages.abs()  # [B, T]
    nonzero = size > 0
    ratio = torch.minimum(bonus / torch.where(nonzero, size, 1.0), torch.full_like(size, cfg.cap))  # [B, T]
    return 1.0 + torch.where(nonzero, ratio, 0.0)


@register(
    "token_filter",
    "epe",
    config=EpeConfig,
    paper="arXiv:2508.02260",
    metrics=("epe/weight_mean", "epe/weight_min", "epe/weight_max", "epe/log_ppl_mean", "epe/frac_shaped"),
    needs=("group_id",),
)
def epe(
    mask: torch.Tensor,
    *,
    cfg: EpeConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor | None,
    truncated: torch.Tensor | None,
    group_id: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Weight each token by the PPL factor of its response and/or its position bonus (w A = shaped advantage).

    Paper: Decomposing the Entropy-Performance Exchange, arXiv:2508.02260 (PPL- and position-based advantage
    shaping; equations as in arXiv:2508.07534 and the authors' code). With log PPL_i = -(1/|o_i|) sum_t
    old_logp_it and z_i its group-standardised value:

        w_ppl_i  = clamp(1 - alpha z_i, ppl_weight_min, ppl_weight_max)     (low-PPL responses weighted up)
        w_pos_it = 1 + min(gamma sigmoid(k (r_it - center)), cap |A_it|) / |A_it|   (= (A + sign(A) b) / A)

    ``mode`` picks w_ppl, w_pos or their product; tokens outside the top ``entropy_rho`` fraction by behaviour
    entropy keep weight 1. Every weight is >= 0, so w A never changes the sign of A.

    Args:
        mask: ``[B, T]`` valid response tokens (put this filter first: PPL is taken over these tokens).
        cfg: :class:`EpeConfig`.
        entropy: ``[B, T]`` behaviour-policy entropy (read only when ``entropy_rho < 1``).
        old_logp: ``[B, T]`` behaviour log-probs of the sampled tokens (the perplexity).
        advantages: ``[B, 1]`` or ``[B, T]`` (required for modes position and both; sign and |A| of the bonus).
        truncated: unused.
        group_id: ``[B]`` prompt group of each row (whole groups give the paper's statistics).

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: weight as above on valid tokens and 1 elsewhere, mask
        unchanged. alpha = 0 (ppl) or gamma = 0 (position) gives weight 1 exactly. Metric keys, over valid
        tokens: ``epe/weight_mean``, ``epe/weight_min``, ``epe/weight_max`` (0 if none), ``epe/frac_shaped``
        (the entropy-selected share); ``epe/log_ppl_mean`` over non-empty responses.

    Differences from the paper / released code:
        The released ``low_ppl.sh`` path (use_ppl, not use_ppl_high) computes 1 - alpha z clamped to
        [0.8, 1.2] but never multiplies it into A (the weight is only printed); this applies it, as the
        paper states. The code's clamp is ``ppl_weight_min=0.8, ppl_weight_max=1.2`` (the default clamps at 0
        only; with alpha = 0.01 the code's clamp binds only for |z| > 20). The code applies the position
        bonus only for 200 < step < 300 (the plateau stage, hard-coded); here it is always on: set ``gamma``
        by a schedule for a window. Its unused ``ppl_iqr_mask`` (outliers out of the loss) and the commented
        ``* entropy`` factor are not reproduced; ``entropy_rho`` (the paper's "high-entropy tokens") is our
        option, off by default, with its threshold over the tokens given. The code standardises over the whole
        rollout group; here over the group's rows in the minibatch given (the same with one minibatch, or
        minibatches of whole groups). Empty responses are left out of the statistics. For a loss that is not
        positively homogeneous in A, w L(A) is not L(w A).

    Example:
        >>> w, m, s = epe(torch.ones(2, 2), cfg=EpeConfig(alpha=0.5, ppl_stats="plain"), entropy=torch.ones(2, 2),
        ...               old_logp=torch.tensor([[-0.5, -0.5], [-1.5, -1.5]]), advantages=torch.ones(2, 1),
        ...               truncated=None, group_id=torch.tensor([0, 0]))
        >>> w.tolist(), s["epe/log_ppl_mean"].item()  # log PPL = [0.5, 1.5] -> z = [-1, 1]
        ([[1.5, 1.5], [0.5, 0.5]], 1.0)
    """
    keep = mask.bool()  # [B, T]
    logp = ops.upcast(old_logp.detach())
    count = keep.sum(-1)  # [B]
    present = count > 0  # [B]
    log_ppl = -ops.masked_sum(logp, keep, dim=-1) / count.clamp(min=1).to(logp.dtype)  # [B]
    weight = torch.ones(keep.shape, dtype=logp.dtype, device=keep.device)  # [B, T]
    if cfg.mode in ("ppl", "both"):
        z = group_log_ppl_z(log_ppl, present, group_id, cfg.ppl_stats)  # [B]
        w_ppl = (1.0 - cfg.alpha * z).clamp(cfg.ppl_weight_min, cfg.ppl_weight_max)  # [B]
        weight = weight * w_ppl.unsqueeze(-1)
    if cfg.mode in ("position", "both"):
        if advantages is None:
            raise ValueError(f"token_filter 'epe' with mode {cfg.mode!r} needs the advantages (got None)")
        adv = torch.where(keep, ops.upcast(advantages.detach()).to(logp.dtype), 0.0)  # [B, T]
        weight = weight * position_weight(keep, adv, cfg)
    shaped = keep
    if cfg.entropy_rho < 1:
        tau = ops.top_fraction_threshold(entropy.detach(), keep, cfg.entropy_rho)
        shaped = keep & (ops.upcast(entropy.detach()) >= tau)  # [B, T]
    weight = torch.where(shaped, weight, 1.0)  # [B, T]
    metrics = {
        "epe/weight_mean": ops.masked_mean(weight, keep),
        "epe/weight_min": torch.where(keep, weight, torch.inf).amin().nan_to_num(posinf=0.0),
        "epe/weight_max": torch.where(keep, weight, 0.0).amax(),
        "epe/log_ppl_mean": ops.masked_mean(log_ppl, present),
        "epe/frac_shaped": ops.masked_mean(shaped.to(logp.dtype), keep),
    }
    return weight, mask, metrics
