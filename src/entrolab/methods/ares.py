"""ARES / AEPO (Chen et al., arXiv 2510.08457): a difficulty-aware hierarchical entropy reward.

High window-entropy (HWE) tokens are the response positions whose forward window of w token entropies averages at
least a batch threshold tau. A prompt's group pass rate puts it in a bucket (easy / medium / hard); each bucket's
target is the batch's mean HWE count there, and a response's deviation from it is shaped per bucket: fewer HWE
tokens are wanted on easy prompts, about the target on medium ones, more on hard ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Variant = Literal["code", "paper"]
WindowFrom = Literal["self", "next"]
TauOf = Literal["tokens", "windows"]
TauReduce = Literal["mean", "median"]
EASY, MEDIUM, HARD = 0, 1, 2
_EPS = 1e-6  # the epsilon of the paper's lambda_d denominator (not given in the paper)


@dataclass(frozen=True)
class AresConfig:
    """Options of ARES's hierarchical entropy reward (defaults: the released code's reward, the paper's HWE count)."""

    variant: Variant = "code"
    """code: the released examples/reward_function/aepo.py shaping S_d (Huber penalties, sigmoid bonuses; the
    curves of the paper's Appendix I); paper: section 3.2.2's R = R_acc - 1[wrong] lambda_d g_d(Delta), whose
    closed-form lambda_d is identically 0 (see ``paper_lambda``)."""
    window: int = 4
    """w, tokens per window (the code's 4; the paper finds 4-8 best)."""
    window_from: WindowFrom = "self"
    """self: the paper's H_{t:w} = mean of H_t .. H_{t+w-1} (eq. 4); next: the code's H_{t+1} .. H_{t+w}."""
    quantile: float = 0.95
    """The per-response quantile of the threshold (both: 95th percentile)."""
    tau_of: TauOf = "tokens"
    """What the per-response quantile is taken over: tokens, the token entropies (paper 3.2.1, Alg. 1 line 6);
    windows, the window means, incomplete windows filled with the response's mean window (the code)."""
    tau_reduce: TauReduce = "mean"
    """How the per-response quantiles become tau: mean (paper, and the code's start value), median (the code)."""
    right_at: float = 1.0
    """A sample counts as right when its reward is at least this."""
    easy_at: float = 2 / 3
    """Pass rate from which a prompt is easy (code 2/3; the paper's >= 6 of 8)."""
    medium_at: float = 1 / 3
    """Pass rate from which a prompt is medium, below it hard (code 1/3; the paper's >= 3 of 8)."""
    alpha: float = 0.5
    """code: alpha_d, the bonus/penalty cap (the code's initial value, kept fixed)."""
    margin_frac: tuple[float, float, float] = (0.15, 0.25, 0.35)
    """code: tolerance band m = max(1, f_d max(target, 1)) per bucket (easy, medium, hard)."""
    kappa: tuple[float, float, float] = (2.0, 3.0, 4.0)
    """code: Huber knee kappa_d per bucket."""
    temp: tuple[float, float, float] = (2.0, 2.5, 3.0)
    """code: sigmoid temperature per bucket."""
    cap_scale: tuple[float, float, float] = (1.0, 1.0, 1.2)
    """code: cap_d = alpha * cap_scale_d."""
    wrong_gain: tuple[float, float, float] = (0.6, 0.8, 1.0)
    """code: factor of the bonus a wrong answer gets per bucket."""
    paper_lambda: float | None = None
    """paper: a fixed lambda_d instead of the closed form max(0, (E[N|d] - target_d) / (Var[N|d] + eps)), which
    is 0 because the target is that same mean; None keeps the closed form (the reward is then R_acc)."""

    def __post_init__(self) -> None:
        for name, allowed in (
            ("variant", Variant),
            ("window_from", WindowFrom),
            ("tau_of", TauOf),
            ("tau_reduce", TauReduce),
        ):
            if getattr(self, name) not in get_args(allowed):
                raise ValueError(f"ares {name} must be one of {list(get_args(allowed))}, got {getattr(self, name)!r}")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"ares window must be an int >= 1, got {self.window!r}")
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"ares quantile must be in [0, 1], got {self.quantile}")
        if not 0.0 < self.medium_at <= self.easy_at <= 1.0:
            raise ValueError(f"ares needs 0 < medium_at <= easy_at <= 1, got {self.medium_at}, {self.easy_at}")
        if not self.alpha >= 0:
            raise ValueError(f"ares alpha must be >= 0, got {self.alpha}")
        for name in ("margin_frac", "kappa", "temp", "cap_scale", "wrong_gain"):
            value = tuple(getattr(self, name))
            positive = name in ("kappa", "temp")
            if len(value) != 3 or any(not (v > 0 if positive else v >= 0) for v in value):
                need = "> 0" if positive else ">= 0"
                raise ValueError(f"ares {name} must be 3 values (easy, medium, hard) {need}, got {value!r}")
        if self.paper_lambda is not None and not self.paper_lambda >= 0:
            raise ValueError(f"ares paper_lambda must be None or >= 0, got {self.paper_lambda}")


def window_entropy(
    entropy: torch.Tensor, mask: torch.Tensor, window: int, start: WindowFrom = "self"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward window means ``[B, T]`` and where the window lies wholly in the mask ``[B, T]`` bool.

    self: mean of H_t .. H_{t+w-1}; next: mean of H_{t+1} .. H_{t+w} (and t itself a response token).
    """
    keep = mask.bool()
    h = torch.where(keep, entropy, torch.zeros((), dtype=entropy.dtype, device=entropy.device))  # [B, T]
    b, t = h.shape
    pad = h.new_zeros(b, window + 1)
    off = 1 if start == "next" else 0
    sums = torch.cat([h, pad], 1).unfold(1, window, 1)[:, off : off + t].sum(-1)  # [B, T]
    counts = torch.cat([keep.to(h.dtype), pad], 1).unfold(1, window, 1)[:, off : off + t].sum(-1)  # [B, T]
    return sums / window, keep & (counts == window)


def hwe_threshold(
    entropy: torch.Tensor, mask: torch.Tensor, means: torch.Tensor, valid: torch.Tensor, cfg: AresConfig
) -> torch.Tensor:
    """tau: the per-response ``cfg.quantile`` of token entropies or window means, reduced over the batch (0-dim)."""
    keep = mask.bool()
    if cfg.tau_of == "tokens":
        values = entropy  # [B, T]
    else:  # the code: positions without a whole window take the response's mean window (else its first entropy)
        has = valid.any(-1, keepdim=True)  # [B, 1]
        first = entropy.gather(1, keep.to(torch.int8).argmax(-1, keepdim=True))  # [B, 1]
        fill = torch.where(has, ops.masked_mean(means, valid, dim=-1).unsqueeze(-1), first)  # [B, 1]
        values = torch.where(valid, means, fill)  # [B, T]
    per = torch.nanquantile(torch.where(keep, values, torch.nan), cfg.quantile, dim=-1)  # [B]; NaN when empty
    per = per[keep.any(-1)]
    if per.numel() == 0:
        return entropy.new_zeros(())
    return per.mean() if cfg.tau_reduce == "mean" else torch.quantile(per, 0.5)


def code_entropy_score(
    n_he: torch.Tensor, target: torch.Tensor, bucket: torch.Tensor, right: torch.Tensor, cfg: AresConfig
) -> torch.Tensor:
    """The released code's entropy score S_d(N_HE, acc) ``[B]`` from counts, targets, buckets (0/1/2), rightness."""

    def per_bucket(values: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(values, dtype=n_he.dtype, device=n_he.device)[bucket]  # [B]

    def huber(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.where(x <= k, 0.5 * x * x / k, x - 0.5 * k)

    kappa, temp = per_bucket(cfg.kappa), per_bucket(cfg.temp)
    margin = (per_bucket(cfg.margin_frac) * target.clamp(min=1.0)).clamp(min=1.0)  # [B]
    cap = cfg.alpha * per_bucket(cfg.cap_scale)  # [B]
    delta = n_he - target  # [B]
    over = (delta - margin).clamp(min=0.0)  # [B]
    dev = (delta.abs() - margin).clamp(min=0.0)  # [B]
    under = (-delta - margin).clamp(min=0.0)  # [B]
    penalty = torch.where(bucket == EASY, huber(over, kappa), huber(dev, kappa))  # [B]
    right_score = -torch.minimum(cap, penalty / (margin + kappa) * cap)  # [B] easy, medium
    hard_right = torch.where(
        delta >= -margin,
        torch.sigmoid((delta + margin) / temp) * cap,
        -torch.minimum(cap, 0.5 * huber(under, kappa) / (margin + kappa) * cap),
    )  # [B]
    right_score = torch.where(bucket == HARD, hard_right, right_score)
    wrong_score = torch.sigmoid(over / temp) * cap * per_bucket(cfg.wrong_gain)  # [B]
    return torch.where(right, right_score, wrong_score)


@register(
    "reward_shaper",
    "ares",
    config=AresConfig,
    paper="arXiv:2510.08457",
    metrics=(
        "ares/tau",
        "ares/n_he_mean",
        "ares/shaping_mean",
        "ares/frac_easy",
        "ares/frac_hard",
        "ares/target_easy",
        "ares/target_medium",
        "ares/target_hard",
    ),
    needs=("old_entropy",),
)
def ares(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: AresConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    old_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ARES: verifier reward plus a difficulty-aware shaping of each response's count of high window-entropy tokens.

    Paper: ARES / AEPO, arXiv:2510.08457, section 3.2 (window entropy eq. 4, tau in 3.2.1, the hierarchical
    reward in 3.2.2), Algorithm 1, Appendices G-I; code: shawn0728/ARES examples/reward_function/aepo.py.

        H_{t:w} = mean of w entropies from t (self) or t+1 (next);  tau = mean_y Quantile_0.95(y) (or median)
        N_HE(y) = #{t: H_{t:w} >= tau};  d(x) = easy if pass >= 2/3, medium if >= 1/3, else hard
        target_d = E_batch[N_HE | d] (rounded in the code);  Delta = N_HE - target_d
        code:  r = R + S_d(Delta, acc), S_d: Huber penalty past the band m on right easy (Delta > m) and medium
               (|Delta| > m) answers, a sigmoid bonus on hard right ones (Delta >= -m), a sigmoid bonus
               sigma(max(Delta - m, 0) / temp) cap gain_d on wrong ones; every term at most cap = alpha cap_scale
        paper: r = R - 1[wrong] lambda_d g_d(Delta), g = max(0, Delta) | |Delta| | max(0, -Delta)

    Args:
        rewards: ``[B]`` verifier rewards (right when >= ``cfg.right_at``); the shaping is added to them.
        mask: ``[B, T]`` response tokens; windows and quantiles stay inside it.
        cfg: :class:`AresConfig`.
        group_id: ``[B]`` prompt group of each row (the pass rate and bucket are per group).
        lengths, truncated, max_length: unused.
        old_entropy: ``[B, T]`` the behaviour policy's token entropies (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``ares/tau`` (the threshold), ``ares/n_he_mean`` (mean N_HE),
        ``ares/shaping_mean`` (mean shaped - verifier reward), ``ares/frac_easy`` and ``ares/frac_hard`` (share
        of rows per bucket), ``ares/target_easy``, ``ares/target_medium``, ``ares/target_hard`` (targets, 0
        for an empty bucket).

    Differences from the paper / released code:
        The default reward is the code's: the paper's 3.2.2 form is degenerate (its target is the bucket mean, so
        its closed-form lambda_d is 0 and r = R_acc), and its Algorithm 1 adds an unspecified S_d, whose curves
        (Appendix I) the code's function draws; ``variant="paper"`` keeps 3.2.2 literally (``paper_lambda``
        fixes lambda_d). The count follows the paper by default (eq. 4 windows, tau = mean of per-response
        token-entropy quantiles); the code counts next-token windows against tau of window quantiles (median,
        an EMA 0.99 across steps, and the previous step's value while sampling) - set ``window_from="next"``,
        ``tau_of="windows"``, ``tau_reduce="median"``; here tau is this batch's, no EMA. Every response token
        is a trigger candidate: the code counts only tokens whose top-1 string is in a curated reasoning
        vocabulary (Appendix H: V_sem), which a tensor function does not have. Entropies are the full ones
        (the code's come from top-10 log-probs). alpha_d stays at its init 0.5 (the code's update moves it
        only by 0.05 (mean - round(mean)) per step); the code's commented-out soft-cost lambda, Algorithm 1's
        token-level advantage bonus psi (not in the code either), the dynamic per-bucket KL (a regulariser),
        branching rollouts at HWE positions and the online filter are out of scope. Empty responses are left
        out of tau; the code adds the verifier accuracy, here ``rewards``.

    Example:
        >>> h = torch.tensor([[0.1, 2.0, 2.0, 2.0, 0.1], [0.5, 0.5, 0.5, 0.5, 0.5]])  # tau = (2 + 0.5) / 2
        >>> r, m = ares(torch.tensor([1.0, 0.0]), torch.ones(2, 5), cfg=AresConfig(window=2),
        ...             group_id=torch.zeros(2, dtype=torch.long), lengths=None, truncated=None,
        ...             max_length=5, old_entropy=h)
        >>> [round(x, 4) for x in r.tolist()], m["ares/n_he_mean"].item()
        ([1.0, 0.2], 1.0)
    """
    if old_entropy is None:
        raise ValueError("reward shaper 'ares' needs old_entropy (declared in needs)")
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    h = old_entropy.detach().to(dtype)
    keep = mask.bool()
    means, valid = window_entropy(h, keep, cfg.window, cfg.window_from)  # [B, T], [B, T]
    tau = hwe_threshold(h, keep, means, valid, cfg)
    n_he = (valid & (means >= tau)).sum(-1).to(dtype)  # [B]

    right = rewards.detach() >= cfg.right_at  # [B]
    groups = ops.Groups(group_id)
    rate = groups.grid(right.to(torch.float64)).mean(-1, keepdim=True).expand(-1, groups.size)  # [P, G]
    tol = 1e-9  # k / G against 2/3 and 1/3 without float trouble
    bucket_grid = torch.where(rate >= cfg.easy_at - tol, EASY, torch.where(rate >= cfg.medium_at - tol, MEDIUM, HARD))
    bucket = groups.rows(bucket_grid)  # [B] long

    in_bucket = torch.stack([bucket == d for d in (EASY, MEDIUM, HARD)])  # [3, B]
    mean_d = torch.stack([ops.masked_mean(n_he, sel) for sel in in_bucket])  # [3]
    target_d = torch.round(mean_d) if cfg.variant == "code" else mean_d  # [3]; round half to even, as numpy
    target = target_d[bucket]  # [B]
    if cfg.variant == "code":
        score = code_entropy_score(n_he, target, bucket, right, cfg)  # [B]
    else:
        var_d = torch.stack([ops.masked_var(n_he, sel) for sel in in_bucket])  # [3]
        lam_d = ((mean_d - target_d) / (var_d + _EPS)).clamp(min=0.0)  # [3]; 0: the target is the mean
        if cfg.paper_lambda is not None:
            lam_d = torch.full_like(lam_d, cfg.paper_lambda)
        delta = n_he - target  # [B]
        g = torch.where(bucket == EASY, delta.clamp(min=0.0), delta.abs())
        g = torch.where(bucket == HARD, (-delta).clamp(min=0.0), g)  # [B]
        score = -(~right).to(dtype) * lam_d[bucket] * g  # [B]

    shaped = rewards.detach().to(dtype) + score  # [B]
    metrics = {
        "ares/tau": tau.detach(),
        "ares/n_he_mean": n_he.mean(),
        "ares/shaping_mean": score.mean(),
        "ares/frac_easy": in_bucket[EASY].to(dtype).mean(),
        "ares/frac_hard": in_bucket[HARD].to(dtype).mean(),
        "ares/target_easy": target_d[EASY],
        "ares/target_medium": target_d[MEDIUM],
        "ares/target_hard": target_d[HARD],
    }
    return shaped.to(rewards.dtype), metrics


__all__ = ["AresConfig", "ares", "code_entropy_score", "hwe_threshold", "window_entropy"]
