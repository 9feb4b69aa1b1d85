"""Multi-reward advantages: MARBLE's min-norm balance (arXiv 2605.06507) and GDPO's decoupled normalisation.

Both take the K reward components of each sample (``reward_parts [B, K]``) instead of one mixed reward, and
normalise each component within its prompt group first (the GRPO z-score per component), so that a component
with a small spread is not drowned by one with a large spread. GDPO (arXiv 2601.05242) then sums the K
advantages and normalises the sum over the batch; MARBLE solves a min-norm quadratic programme (MGDA) for convex
weights of the K per-reward policy gradients. With one component both are GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

MarbleAlpha = Literal["mgda", "equal"]
MarbleCombine = Literal["normalised", "amortised"]
GdpoReduce = Literal["sum", "mean"]
GdpoBatchStats = Literal["sequences", "tokens"]
MARBLE_METRICS = ("adv/mean", "adv/std", "adv/frac_zero_std_groups")
MARBLE_METRICS += ("marble/alpha_min", "marble/alpha_max", "marble/valid_frac", "marble/min_cos")


def _check_common(name: str, eps: float, weights: tuple[float, ...]) -> None:
    if not eps >= 0:
        raise ValueError(f"{name} eps must be >= 0, got {eps}")
    if any(not w >= 0 for w in weights) or (weights and not sum(weights) > 0):
        raise ValueError(f"{name} weights must be >= 0 with a positive sum, got {weights}")


@dataclass(frozen=True)
class MarbleConfig:
    """Options of MARBLE's multi-reward balance."""

    alpha: MarbleAlpha = "mgda"
    """mgda: alpha* = argmin_{alpha in simplex, alpha_k >= alpha_floor} ||sum_k alpha_k g_k||^2, solved on every
    batch; equal: with ``combine="amortised"`` alpha_k = 1 / K on every reward (the paper's equal-alpha ablation),
    with ``"normalised"`` the mean of the valid normalised directions (the code's solver-failure fallback)."""
    combine: MarbleCombine = "normalised"
    """normalised: the full solve's g = (sum_k alpha_k g_k / ||g_k||) * mean_k ||g_k||; amortised: the code's
    cached-alpha step A = sum_k alpha_k A_k, without the norms (the note: only an approximation)."""
    alpha_floor: float = 0.0
    """Lower bound of every alpha_k in the QP (code default 0; alpha_floor * K must be <= 1)."""
    weights: tuple[float, ...] = ()
    """Per-reward weights multiplying the normalised directions before the QP (the code's reward_weights;
    empty: all 1)."""
    eps: float = 1e-6
    """Added to each component's group std (GRPO's 1e-6; the code's PerPromptStatTracker uses 1e-4)."""
    unbiased: bool = True
    """Bessel-corrected group std, as GRPO here (the code's np.std is the population std: False)."""
    grad_eps: float = 1e-12
    """A component whose advantage norm is <= grad_eps takes no part (the code's pareto.grad_eps)."""
    max_iter: int = 2000
    """Iterations of the projected-gradient QP solver for K >= 3 (K = 2 is solved in closed form)."""

    def __post_init__(self) -> None:
        if self.alpha not in get_args(MarbleAlpha):
            raise ValueError(f"marble alpha must be one of {list(get_args(MarbleAlpha))}, got {self.alpha!r}")
        if self.combine not in get_args(MarbleCombine):
            raise ValueError(f"marble combine must be one of {list(get_args(MarbleCombine))}, got {self.combine!r}")
        if not 0.0 <= self.alpha_floor <= 1.0:
            raise ValueError(f"marble alpha_floor must be in [0, 1], got {self.alpha_floor}")
        _check_common("marble", self.eps, self.weights)
        if any(not w > 0 for w in self.weights):
            raise ValueError(
                f"marble weights must be > 0 (a zero direction makes the min-norm point 0), got {self.weights}"
            )
        if not self.grad_eps >= 0:
            raise ValueError(f"marble grad_eps must be >= 0, got {self.grad_eps}")
        if self.max_iter < 1:
            raise ValueError(f"marble max_iter must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class GdpoConfig:
    """Options of GDPO's group reward-decoupled normalisation."""

    weights: tuple[float, ...] = ()
    """Per-reward weights w_k of the sum (empty: all 1)."""
    reduce: GdpoReduce = "sum"
    """sum: sum_k w_k A_k (the paper); mean: divided by sum_k w_k (the same after the batch normalisation)."""
    batch_norm: bool = True
    """Normalise the combined advantage over the batch (the paper); False leaves the per-group sum."""
    batch_stats: GdpoBatchStats = "sequences"
    """Over what the batch step takes its mean and std: one value per sequence (the paper, the released TRL code),
    or every response token (verl's ``masked_whiten``: each sequence weighted by its length, Bessel over the
    token count, (S - mean) * rsqrt(var + 1e-8))."""
    eps: float = 1e-6
    """Added to every std (GRPO's 1e-6; the released TRL code uses 1e-4)."""
    unbiased: bool = True
    """Bessel-corrected stds (as GRPO here and the released TRL code)."""

    def __post_init__(self) -> None:
        if self.reduce not in get_args(GdpoReduce):
            raise ValueError(f"gdpo reduce must be one of {list(get_args(GdpoReduce))}, got {self.reduce!r}")
        if self.batch_stats not in get_args(GdpoBatchStats):
            allowed = list(get_args(GdpoBatchStats))
            raise ValueError(f"gdpo batch_stats must be one of {allowed}, got {self.batch_stats!r}")
        _check_common("gdpo", self.eps, self.weights)


def _parts(reward_parts: torch.Tensor | None, rewards: torch.Tensor, name: str, weights: tuple[float, ...]):
    if reward_parts is None:
        raise ValueError(f"advantage {name!r} needs reward_parts [B, K] (declared in needs)")
    parts = reward_parts.detach()
    parts = parts if parts.is_floating_point() else parts.float()
    if parts.dim() != 2 or parts.shape[0] != rewards.shape[0] or parts.shape[1] < 1:
        raise ValueError(f"{name} reward_parts must be [B, K] with B = {rewards.shape[0]}, got {tuple(parts.shape)}")
    if weights and len(weights) != parts.shape[1]:
        raise ValueError(f"{name} weights has {len(weights)} entries for K = {parts.shape[1]} reward components")
    if bool(torch.isinf(parts).any()):
        raise ValueError(f"{name} reward_parts must be finite or NaN (not applicable), got inf")
    return parts


def group_zscore(r: torch.Tensor, eps: float, unbiased: bool) -> torch.Tensor:
    """(r - mean) / (std + eps) within each row of ``r [P, G]``, over the non-NaN entries (NaN stays NaN).

    Without NaN it is GRPO's arithmetic exactly. A group with one applicable sample gets 0.
    """
    if not bool(torch.isnan(r).any()):
        std = r.std(-1, keepdim=True) if unbiased else r.std(-1, keepdim=True, correction=0)  # [P, 1]
        return (r - r.mean(-1, keepdim=True)) / (std + eps)
    valid = ~torch.isnan(r)  # [P, G]
    n = valid.sum(-1, keepdim=True).to(r.dtype)  # [P, 1]
    mean = torch.where(valid, r, 0.0).sum(-1, keepdim=True) / n.clamp(min=1)  # [P, 1]
    sq = torch.where(valid, (r - mean) ** 2, 0.0).sum(-1, keepdim=True)  # [P, 1]
    std = (sq / ((n - 1) if unbiased else n).clamp(min=1)).sqrt()  # [P, 1]
    return torch.where(valid, (r - mean) / (std + eps), torch.nan)  # [P, G]


def _per_reward(parts: torch.Tensor, group_id: torch.Tensor, eps: float, unbiased: bool):
    """Per-component group z-scores [B, K] (NaN where a component does not apply) and the zero-spread fraction."""
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"a group baseline needs >= 2 samples per group, got {groups.size}")
    grid = groups.grid(parts)  # [P, G, K]
    cols, flat = [], []
    for k in range(parts.shape[1]):
        r = grid[..., k].contiguous()  # [P, G]
        cols.append(groups.rows(group_zscore(r, eps, unbiased)))  # [B]
        hi = torch.where(torch.isnan(r), -torch.inf, r).amax(-1)  # [P]
        lo = torch.where(torch.isnan(r), torch.inf, r).amin(-1)  # [P]
        flat.append(~(hi > lo))  # [P] constant (or not applicable) in this group
    zero_std = torch.stack(flat, -1).all(-1).to(parts.dtype).mean()
    return torch.stack(cols, -1), zero_std  # [B, K], []


def min_norm_weights(gram: torch.Tensor, floor: float = 0.0, max_iter: int = 2000) -> torch.Tensor:
    """MGDA: alpha* = argmin_{sum alpha = 1, alpha >= floor} 1/2 alpha^T M alpha for a Gram matrix M [K, K].

    K = 1: [1]; K = 2 in closed form, alpha_1 = clip((M22 - M12) / (M11 - 2 M12 + M22), floor, 1 - floor)
    (1/2 when the two are equal); K >= 3 by accelerated projected gradient from the uniform start, in float64.

    >>> min_norm_weights(torch.eye(2)).tolist()
    [0.5, 0.5]
    """
    m = gram.to(torch.float64)
    k = m.shape[0]
    if k * floor > 1.0 + 1e-12:
        raise ValueError(f"marble alpha_floor * K must be <= 1, got {floor} * {k}")
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    if k == 2:
        den = float(m[0, 0] - 2 * m[0, 1] + m[1, 1])
        a1 = 0.5 if den <= 1e-12 * float(m.diagonal().abs().max()) else float(m[1, 1] - m[0, 1]) / den
        a1 = min(max(a1, floor), 1.0 - floor)
        return torch.tensor([a1, 1.0 - a1], dtype=torch.float64)
    room = 1.0 - k * floor

    def project(v: torch.Tensor) -> torch.Tensor:  # onto {alpha >= floor, sum alpha = 1}
        if room <= 0:
            return torch.full_like(v, floor)
        w = (v - floor) / room
        u = torch.sort(w, descending=True).values
        css = u.cumsum(0) - 1.0
        idx = torch.arange(1, k + 1, dtype=v.dtype)
        rho = int((u - css / idx > 0).nonzero().max())
        return floor + room * (w - css[rho] / (rho + 1)).clamp(min=0.0)

    step = 1.0 / max(float(torch.linalg.eigvalsh(m).max()), 1e-12)
    x = y = torch.full((k,), 1.0 / k, dtype=torch.float64)
    t = 1.0
    for _ in range(max_iter):
        x_new = project(y - step * (m @ y))
        if float((x_new - x).abs().max()) < 1e-15:
            x = x_new
            break
        t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        restart = float((y - x_new) @ (x_new - x)) > 0  # gradient restart
        y = x_new if restart else x_new + ((t - 1.0) / t_new) * (x_new - x)
        t = 1.0 if restart else t_new
        x = x_new
    return x


@register(
    "advantage",
    "marble",
    config=MarbleConfig,
    paper="arXiv:2605.06507",
    metrics=MARBLE_METRICS,
    needs=("reward_parts",),
)
def marble(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: MarbleConfig,
    group_id: torch.Tensor,
    reward_parts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MARBLE: per-reward group z-scores A_k, balanced by MGDA weights of the per-reward gradients.

    Paper: MARBLE, arXiv:2605.06507 (§3: independent advantage estimators, per-reward policy gradients, the QP;
    the amortised form; EMA of the coefficients); released code ``aim-uofa/MARBLE`` ``balance_reward_gradients``
    and ``mgda_solve``. For a policy-gradient surrogate the gradient is linear in the advantage,
    g_k = sum_i A_ki psi_i (psi_i the gradient of sample i's log-likelihood term). A pure advantage has no psi,
    so the Gram matrix g_k . g_l is taken with orthogonal, equal-norm psi_i (psi_i . psi_j = c [i = j]), where it
    is exactly A_k . A_l * c and c cancels:

        A_k = z-score of reward k in its group (NaN: k does not apply to the sample; 0 in the sums)
        valid: ||A_k|| > grad_eps;   A_k scaled by B / n_k (the code averages reward k's loss over its n_k rows)
        M_kl = w_k w_l cos(A_k, A_l);   alpha* = argmin_{alpha in simplex, alpha >= floor} alpha^T M alpha
        normalised:  A = (sum_k alpha_k w_k A_k / ||A_k||) * mean_k ||A_k||;    amortised: A = sum_k alpha_k A_k

    Args:
        rewards: ``[B]`` the mixed scalar reward (unused: the components are what is balanced).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`MarbleConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        reward_parts: ``[B, K]`` each reward component per sample, NaN where it does not apply (``needs``).

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups`` (groups where
        every component is constant), ``marble/alpha_min`` and ``marble/alpha_max`` (over the valid components;
        0 if none), ``marble/valid_frac`` (valid components / K) and ``marble/min_cos`` (the smallest cosine
        between the combined advantage and a valid component's, the paper's worst-aligned reward in this
        geometry; 0 if none). One valid component is returned unchanged (alpha = 1), none gives 0.

    Differences from the paper / released code:
        Reproduced exactly, given the proxy geometry: the independent per-reward advantage estimators (per-prompt
        z-scores, NaN = not applicable), the validity rule, the normalisation, the per-reward weights (after the
        normalisation), the alpha floor, the min-norm QP and the combined direction rescaled by the mean raw norm,
        the single-valid and all-zero cases, and the amortised step's sum_k alpha_k A_k. Not reproduced: the
        actual parameter-space Gram matrix, which needs K backward passes (or per-sample gradients psi_i) and is
        only approximated here by psi_i . psi_j = c [i = j]; the EMA of alpha (rho = 0.7) and the QP every N = 10
        steps, which need memory across steps (here alpha is solved on every batch: the code with
        alpha_ema_decay = 0 and no amortisation); the KL gradient added after balancing (a regulariser here adds
        its gradient anyway); DiffusionNFT's loss, its advantage clip at +-5 and its A = 0 part (that loss is
        affine in A, a policy-gradient surrogate is linear); reward groups, reward dropout and DDP sync. The
        solver is projected gradient, not SLSQP (the same optimum); an alpha_floor with alpha_floor * K > 1
        raises (the code clamps it to 1/K).

    Example:
        >>> parts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        >>> adv, m = marble(parts.sum(1), torch.ones(4, 2), cfg=MarbleConfig(), group_id=torch.zeros(4).long(),
        ...                 reward_parts=parts)
        >>> [round(a, 4) for a in adv.squeeze(1).tolist()], round(m["marble/alpha_max"].item(), 4)
        ([0.0, 0.0, 0.866, -0.866], 0.5)
    """
    parts = _parts(reward_parts, rewards, "marble", cfg.weights)
    adv_k, zero_std = _per_reward(parts, group_id, cfg.eps, cfg.unbiased)  # [B, K]
    n_rows, n_parts = adv_k.shape
    applies = (~torch.isnan(adv_k)).to(adv_k.dtype)  # [B, K]
    clean = torch.nan_to_num(adv_k, nan=0.0)  # [B, K]
    eff = clean * (n_rows / applies.sum(0).clamp(min=1))  # [B, K] the code's mean over reward k's own rows
    norms = torch.linalg.vector_norm(eff, dim=0)  # [K]
    valid = norms > cfg.grad_eps  # [K]
    alphas = torch.zeros(n_parts, dtype=torch.float64)
    idx = valid.nonzero().flatten()
    if cfg.alpha == "equal" and cfg.combine == "amortised":  # the code's equal-alpha ablation: 1/K on every reward
        alphas[:] = 1.0 / n_parts
        out = (clean.to(torch.float64) @ alphas).to(adv_k.dtype)  # [B]
    elif idx.numel() == 0:
        out = torch.zeros(n_rows, dtype=adv_k.dtype)
    elif idx.numel() == 1:  # a single valid reward is used unchanged (GRPO for K = 1: eff = clean * 1.0)
        alphas[idx] = 1.0
        out = (eff if cfg.combine == "normalised" else clean)[:, idx[0]]  # [B]
    else:
        dirs = (eff[:, idx] / norms[idx]).to(torch.float64)  # [B, Kv] unit directions
        if cfg.weights:
            dirs = dirs * torch.tensor([cfg.weights[i] for i in idx.tolist()], dtype=torch.float64)
        kv = idx.numel()
        a = min_norm_weights(dirs.T @ dirs, cfg.alpha_floor, cfg.max_iter) if cfg.alpha == "mgda" else None
        a = torch.full((kv,), 1.0 / kv, dtype=torch.float64) if a is None else a  # [Kv]
        alphas[idx] = a
        if cfg.combine == "normalised":
            combined = (dirs @ a) * norms[idx].to(torch.float64).mean()  # [B]
        else:
            combined = clean[:, idx].to(torch.float64) @ a  # [B]
        out = combined.to(adv_k.dtype)
    adv = out.unsqueeze(-1)  # [B, 1]
    if idx.numel():
        cols = eff[:, idx].to(torch.float64)  # [B, Kv]
        denom = (torch.linalg.vector_norm(cols, dim=0) * torch.linalg.vector_norm(out.to(torch.float64))).clamp(
            min=1e-30
        )
        min_cos = ((out.to(torch.float64) @ cols) / denom).min()
        chosen = alphas[idx]
    else:
        min_cos, chosen = torch.zeros((), dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    metrics = {
        "adv/mean": adv.mean(),
        "adv/std": adv.std(correction=0),
        "adv/frac_zero_std_groups": zero_std,
        "marble/alpha_min": chosen.min().float(),
        "marble/alpha_max": chosen.max().float(),
        "marble/valid_frac": valid.float().mean(),
        "marble/min_cos": min_cos.float(),
    }
    return adv, metrics


@register(
    "advantage",
    "gdpo",
    config=GdpoConfig,
    paper="arXiv:2601.05242",
    metrics=("adv/mean", "adv/std", "adv/frac_zero_std_groups", "gdpo/pre_norm_std"),
    needs=("reward_parts",),
)
def gdpo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: GdpoConfig,
    group_id: torch.Tensor,
    reward_parts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GDPO: normalise each reward component within its group, sum with weights, then normalise over the batch.

    Paper: GDPO, Liu et al., arXiv:2601.05242 (group-wise normalisation per reward, then batch-wise normalisation
    of the sum); released code ``NVlabs/GDPO`` (TRL ``grpo_trainer.py``, verl ``ray_trainer.py``):

        A_k = (r_k - mean_g r_k) / (std_g r_k + eps);   S = sum_k w_k A_k  (or / sum_k w_k)
        A = (S - mean_batch S) / (std_batch S + eps)     (batch_norm; else A = S)

    Args:
        rewards: ``[B]`` the mixed scalar reward (unused).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`GdpoConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        reward_parts: ``[B, K]`` each reward component per sample (``needs``); NaN counts as 0, as the code's
            ``nan_to_num``.

    Returns:
        ``(adv [B, 1], metrics)`` with keys ``adv/mean``, ``adv/std``, ``adv/frac_zero_std_groups`` (groups where
        every component is constant) and ``gdpo/pre_norm_std`` (population std of S before the batch step).

    Differences from the paper / released code:
        As the released TRL code (sequence-level batch statistics, Bessel stds, NaN -> 0), with GRPO's eps 1e-6
        instead of its 1e-4 (``eps`` sets it). verl 0.9.1 whitens over tokens (``masked_whiten``, each sequence
        weighted by its length, rsqrt(var + 1e-8)): ``batch_stats="tokens"``. With one component and
        ``batch_norm=False`` this is GRPO exactly; with ``batch_norm=True`` it is GRPO's advantages re-standardised
        over the batch.

    Example:
        >>> parts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        >>> adv, _ = gdpo(parts.sum(1), torch.ones(4, 2), cfg=GdpoConfig(batch_norm=False),
        ...               group_id=torch.zeros(4).long(), reward_parts=parts)
        >>> [round(a, 4) for a in adv.squeeze(1).tolist()]
        [0.0, 0.0, 1.732, -1.732]
    """
    parts = torch.nan_to_num(_parts(reward_parts, rewards, "gdpo", cfg.weights), nan=0.0)
    adv_k, zero_std = _per_reward(parts, group_id, cfg.eps, cfg.unbiased)  # [B, K]
    w = torch.tensor(cfg.weights or (1.0,) * parts.shape[1], dtype=adv_k.dtype)  # [K]
    total = (adv_k * w).sum(-1)  # [B]
    if cfg.reduce == "mean":
        total = total / w.sum()
    pre_std = total.std(correction=0)
    if cfg.batch_norm and cfg.batch_stats == "tokens":  # verl: masked_whiten of S broadcast over the tokens
        n_i = mask.to(total.dtype).sum(-1)  # [B] each sequence's weight: its token count
        n = n_i.sum()
        mean = (total * n_i).sum() / n
        var = ((total - mean).square() * n_i).sum() / n
        var = var * n / (n - 1) if cfg.unbiased else var
        total = (total - mean) * torch.rsqrt(var + 1e-8)
    elif cfg.batch_norm:
        std = total.std() if cfg.unbiased else total.std(correction=0)
        total = (total - total.mean()) / (std + cfg.eps)
    adv = total.unsqueeze(-1)  # [B, 1]
    metrics = {
        "adv/mean": adv.mean(),
        "adv/std": adv.std(correction=0),
        "adv/frac_zero_std_groups": zero_std,
        "gdpo/pre_norm_std": pre_std,
    }
    return adv, metrics


__all__ = ["GdpoConfig", "MarbleConfig", "gdpo", "group_zscore", "marble", "min_norm_weights"]
