"""AEPO's dynamic entropy-balanced rollout and entropy-aware advantage (Dong et al., arXiv:2510.14545).

The rollout half of AEPO, as pure functions a multi-turn rollout calls (it samples; these decide):

1. Entropy pre-monitoring splits the budget k of a prompt into m global samples and k - m branches,
   m = k sigma(beta (H_root - H_tool_mean))  (:func:`global_budget`).
2. After each tool result a partial trajectory forks with the ARPO probability P = alpha + gamma dH,
   damped by AEPO's penalty on l consecutive high-entropy branchings: P^ = P (1 - Pen(l))
   (:func:`branch_probability`, :func:`branch_decisions`, :func:`choose_branches` within the remaining budget).
3. The update's entropy-aware advantage A~ = A (1 + alpha_H z(H))  (:func:`entropy_aware_advantage`,
   registered as the advantage ``aepo_adv``). AEPO's stop-gradient clip is ``aepo`` in ``methods/aepo.py``.

Sources: the paper's equations via third-party summaries (only its abstract was readable here) and the
released code (``RUC-NLPIR/ARPO`` ``AEPO/verl_aepo_entropy``, read in two public copies, ``mowenruan/ARPO``
and ``zzfoutofspace/ATPO``): beta = 0.5, Pen(l) = 0.05 l, alpha_H = 0.2 are the code's hard-coded constants.
Pen(l)'s linear form is the code's (the paper's form was not recovered). Left to the caller, as the code does
it: l counts per *prompt* the consecutive rounds that forked anything (reset by a round that forked nothing);
H_init of dH is the path's first-turn step entropy (the code never clears it between batches, a bug); budget
no fork used goes to fresh global samples, one per prompt per round, until k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Rounding = Literal["nearest", "code"]
BranchRule = Literal["paper", "code"]
WindowReduce = Literal["sum", "mean"]
CandidateOrder = Literal["given", "entropy"]
ToolTurns = Literal["after_tool", "all"]
Candidate = tuple[int, int, float, int]
"""(trajectory index, turn, delta_h, consecutive) of a partial trajectory that may fork after a tool result."""


def _check(name: str, value: object, allowed: type) -> None:
    if value not in get_args(allowed):
        raise ValueError(f"aepo_rollout {name} must be one of {list(get_args(allowed))}, got {value!r}")


@dataclass(frozen=True)
class AEPORolloutConfig:
    """Options of the entropy-balanced rollout; the budget k per prompt comes from the caller."""

    beta: float = 0.5
    """Sensitivity of m = k sigma(beta (H_root - H_tool_mean)); 0.5 is hard-coded in the released code."""
    rounding: Rounding = "nearest"
    """m from k sigma(.): nearest (floor(x + 0.5); the paper gives no rule) or code (int(x) + 1, the released
    code's "round up", which gives k/2 + 1 at a zero gap); both clamped to [1, k]."""
    alpha: float = 0.5
    """ARPO's base branch probability (``branch_probability``)."""
    gamma: float = 0.5
    """ARPO's entropy weight on dH (``entropy_weight``: 0.5 the code's default; the ARPO/AEPO scripts set 0.2)."""
    rule: BranchRule = "paper"
    """paper: branch iff u < clip((alpha + gamma dH)(1 - Pen(l)), 0, 1); code: the released AEPO code,
    branch iff clip((u + gamma dH)(1 - Pen(l)), 0, 1) >= alpha, i.e. with probability clip(1 - alpha / (1 -
    Pen(l)) + gamma dH, 0, 1) (the same as paper at l = 0 only when alpha = 0.5)."""
    penalty_coef: float = 0.05
    """lambda of Pen(l) = min(1, lambda l), l the consecutive high-entropy branchings (code: 0.05)."""
    branch_width: int = 1
    """New samples tried per forking candidate, each with its own draw (code: beam_size - 1 = 1)."""
    max_branches: int | None = None
    """At most this many branches from one trajectory index per :func:`choose_branches` call (None: no cap)."""
    order: CandidateOrder = "given"
    """given: candidates take the budget in the caller's order (code: trajectory order); entropy: largest dH first."""
    entropy_window: int = 20
    """Generated tokens of a turn whose entropies make its step entropy (code: the first 20, top-10 logprobs)."""
    window_reduce: WindowReduce = "sum"
    """sum (code: the window's entropies summed, then divided by log V) or mean over the window."""
    tool_turns: ToolTurns = "after_tool"
    """Turns averaged into H_tool_mean: after_tool (turns >= 1, the paper's tool-call steps) or all (code: every
    turn of the pre-monitoring trajectory, its first included)."""

    def __post_init__(self) -> None:
        _check("rounding", self.rounding, Rounding)
        _check("rule", self.rule, BranchRule)
        _check("order", self.order, CandidateOrder)
        _check("window_reduce", self.window_reduce, WindowReduce)
        _check("tool_turns", self.tool_turns, ToolTurns)
        if not self.beta >= 0:
            raise ValueError(f"aepo_rollout beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"aepo_rollout alpha must be in [0, 1], got {self.alpha}")
        if not self.gamma >= 0:
            raise ValueError(f"aepo_rollout gamma must be >= 0, got {self.gamma}")
        if not self.penalty_coef >= 0:
            raise ValueError(f"aepo_rollout penalty_coef must be >= 0, got {self.penalty_coef}")
        if self.branch_width < 1:
            raise ValueError(f"aepo_rollout branch_width must be >= 1, got {self.branch_width}")
        if self.max_branches is not None and self.max_branches < 1:
            raise ValueError(f"aepo_rollout max_branches must be >= 1 or None, got {self.max_branches}")
        if self.entropy_window < 1:
            raise ValueError(f"aepo_rollout entropy_window must be >= 1, got {self.entropy_window}")


def topk_partial_entropy(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the K returned log-probs of each position, as ARPO/AEPO compute from vLLM's top-10.

    ``[..., K] -> [...]``. A lower bound of the full entropy (the tail mass is left out).

    >>> round(topk_partial_entropy(torch.log(torch.full((4,), 0.25))).item(), 4)  # log 4
    1.3863
    """
    lp = ops.upcast(topk_logprobs)
    return -(lp.exp() * lp).sum(-1)


def step_entropy(
    token_entropy: torch.Tensor, mask: torch.Tensor, cfg: AEPORolloutConfig, vocab_size: int | None = None
) -> torch.Tensor:
    """The entropy of a turn: its first ``cfg.entropy_window`` generated tokens, summed (or averaged).

    ``token_entropy [N, L]``, ``mask [N, L]`` (1 on the turn's generated tokens, in order; holes allowed)
    -> ``[N]``; divided by log(vocab_size) when given (the code's normalisation). 0 for an empty row.

    >>> step_entropy(torch.tensor([[1.0, 9.0, 2.0, 3.0]]), torch.tensor([[1, 0, 1, 1]]),
    ...              AEPORolloutConfig(entropy_window=2)).tolist()
    [3.0]
    """
    keep = mask.bool()
    window = keep & (keep.long().cumsum(-1) <= cfg.entropy_window)  # [N, L]
    h = ops.masked_sum(ops.upcast(token_entropy), window, dim=-1)  # [N]
    if cfg.window_reduce == "mean":
        h = h / window.sum(-1).clamp(min=1)
    if vocab_size is not None:
        h = h / torch.log(torch.tensor(float(vocab_size), dtype=h.dtype))
    return h


def tool_entropy_mean(turn_entropy: torch.Tensor, turn_valid: torch.Tensor, cfg: AEPORolloutConfig) -> torch.Tensor:
    """H_tool_mean = (1/N) sum_i H_i^tool of each prompt's pre-monitoring trajectory; NaN if it has no such turn.

    ``turn_entropy [P, K]`` step entropies of turns 0..K-1, ``turn_valid [P, K]`` -> ``[P]``.

    >>> tool_entropy_mean(torch.tensor([[5.0, 1.0, 2.0]]), torch.ones(1, 3), AEPORolloutConfig()).tolist()
    [1.5]
    """
    valid = turn_valid.bool().clone()
    if cfg.tool_turns == "after_tool":
        valid[:, 0] = False
    h = ops.masked_sum(ops.upcast(turn_entropy), valid, dim=-1) / valid.sum(-1)  # [P]; 0/0 = NaN
    return h


def global_budgets(k: int, h_root: torch.Tensor, h_tool_mean: torch.Tensor, cfg: AEPORolloutConfig) -> torch.Tensor:
    """m = k sigma(beta (H_root - H_tool_mean)) global samples per prompt, ``[P] -> [P]`` long in [1, k].

    A NaN H_tool_mean (no tool turn) counts as a zero gap (the code falls back to H_tool_mean = H_root).

    >>> global_budgets(16, torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), AEPORolloutConfig()).tolist()
    [8, 12]
    """
    if k < 1:
        raise ValueError(f"aepo_rollout budget k must be >= 1, got {k}")
    root = torch.as_tensor(h_root, dtype=torch.float64)
    tool = torch.as_tensor(h_tool_mean, dtype=torch.float64)
    gap = torch.where(torch.isnan(tool), 0.0, root - tool)  # [P]
    share = k * torch.sigmoid(cfg.beta * gap)  # [P]
    m = torch.floor(share + 0.5) if cfg.rounding == "nearest" else torch.floor(share) + 1
    return m.clamp(1, k).long()


def global_budget(k: int, h_root: float, h_tool_mean: float | None, cfg: AEPORolloutConfig) -> int:
    """:func:`global_budgets` for one prompt; ``h_tool_mean=None`` (no tool turn) gives a zero gap.

    >>> cfg = AEPORolloutConfig()
    >>> global_budget(12, 2.0, 2.0, cfg), global_budget(12, 2.0, None, AEPORolloutConfig(rounding="code"))
    (6, 7)
    """
    tool = float("nan") if h_tool_mean is None else float(h_tool_mean)
    return int(global_budgets(k, torch.tensor([float(h_root)]), torch.tensor([tool]), cfg)[0])


def _penalty_keep(consecutive: torch.Tensor, cfg: AEPORolloutConfig) -> torch.Tensor:
    """1 - Pen(l) = max(0, 1 - lambda l)."""
    return (1.0 - cfg.penalty_coef * consecutive.to(torch.float64)).clamp(min=0.0)


def branch_probability(delta_h: torch.Tensor, consecutive: torch.Tensor, cfg: AEPORolloutConfig) -> torch.Tensor:
    """The probability that a candidate forks: ``delta_h [N]``, ``consecutive [N]`` long -> ``[N]`` float64.

    paper: clip((alpha + gamma dH)(1 - Pen(l)), 0, 1); code: clip(1 - alpha / (1 - Pen(l)) + gamma dH, 0, 1)
    (0 once Pen(l) = 1, unless alpha = 0).

    >>> p = branch_probability(torch.tensor([0.4, 0.4]), torch.tensor([0, 2]), AEPORolloutConfig())
    >>> [round(x, 4) for x in p.tolist()]  # 0.5 + 0.5 * 0.4, times 1 - 0.05 * 2
    [0.7, 0.63]
    """
    dh = torch.as_tensor(delta_h, dtype=torch.float64)
    keep = _penalty_keep(torch.as_tensor(consecutive), cfg)  # [N]
    if cfg.rule == "paper":
        return ((cfg.alpha + cfg.gamma * dh) * keep).clamp(0.0, 1.0)
    if cfg.alpha == 0.0:
        return torch.ones_like(dh)
    p = 1.0 - cfg.alpha / keep.clamp(min=1e-300) + cfg.gamma * dh
    return torch.where(keep > 0, p, 0.0).clamp(0.0, 1.0)


def branch_decisions(
    delta_h: torch.Tensor, consecutive: torch.Tensor, uniform: torch.Tensor, cfg: AEPORolloutConfig
) -> torch.Tensor:
    """Fork or not, given one uniform draw u in [0, 1) per candidate: ``[N]`` each -> ``bool [N]``.

    delta_h is dH_t = H_t - H_init (the turn's step entropy after the tool result minus the path's first-turn
    one, both from :func:`step_entropy`); consecutive is l.

    >>> branch_decisions(torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.tensor([0.1, 0.49, 0.5]),
    ...                  AEPORolloutConfig()).tolist()
    [True, True, False]
    """
    dh = torch.as_tensor(delta_h, dtype=torch.float64)
    u = torch.as_tensor(uniform, dtype=torch.float64)
    if cfg.rule == "paper":
        return u < branch_probability(dh, consecutive, cfg)
    keep = _penalty_keep(torch.as_tensor(consecutive), cfg)  # [N]
    return ((u + cfg.gamma * dh) * keep).clamp(0.0, 1.0) >= cfg.alpha


def next_consecutive(consecutive: torch.Tensor, branched: torch.Tensor) -> torch.Tensor:
    """l after a round: l + 1 where a branch was made, 0 elsewhere (the code's rule, kept per prompt there).

    >>> next_consecutive(torch.tensor([0, 2, 3]), torch.tensor([True, True, False])).tolist()
    [1, 3, 0]
    """
    return torch.where(branched.bool(), consecutive + 1, torch.zeros_like(consecutive))


def choose_branches(
    candidates: Sequence[Candidate], remaining: int, generator: torch.Generator | None, cfg: AEPORolloutConfig
) -> list[tuple[int, int]]:
    """The forks one prompt makes this round: ``(index, turn)`` per new sample, never more than ``remaining``.

    Each candidate (index, turn, delta_h, consecutive) gets ``cfg.branch_width`` draws
    (``torch.rand(n, branch_width, generator=)``, always exactly n * branch_width, whatever the budget), decided by
    :func:`branch_decisions`; the passes fill the budget in ``cfg.order``, at most ``cfg.max_branches`` per index.
    A candidate appears once per sample forked from it (twice when two of its draws pass).

    >>> cands = [(0, 1, 0.0, 0), (1, 1, 0.0, 0), (2, 1, 0.0, 0)]
    >>> choose_branches(cands, 2, torch.Generator().manual_seed(0), AEPORolloutConfig(alpha=1.0))
    [(0, 1), (1, 1)]
    """
    if remaining < 0:
        raise ValueError(f"aepo_rollout remaining budget must be >= 0, got {remaining}")
    n, width = len(candidates), cfg.branch_width
    if n == 0:
        return []
    delta = torch.tensor([float(c[2]) for c in candidates], dtype=torch.float64)  # [n]
    consec = torch.tensor([int(c[3]) for c in candidates], dtype=torch.long)  # [n]
    u = torch.rand(n, width, generator=generator, dtype=torch.float64)  # [n, W]
    passed = branch_decisions(delta.repeat_interleave(width), consec.repeat_interleave(width), u.flatten(), cfg)
    passed = passed.view(n, width).sum(-1).tolist()  # [n] passing draws per candidate
    order = range(n)
    if cfg.order == "entropy":
        order = sorted(range(n), key=lambda i: -float(delta[i]))  # stable: ties keep the given order
    chosen: list[tuple[int, int]] = []
    per_index: dict[int, int] = {}
    for i in order:
        index, turn = int(candidates[i][0]), int(candidates[i][1])
        for _ in range(passed[i]):
            if len(chosen) >= remaining:
                return chosen
            if cfg.max_branches is not None and per_index.get(index, 0) >= cfg.max_branches:
                break
            chosen.append((index, turn))
            per_index[index] = per_index.get(index, 0) + 1
    return chosen


@dataclass(frozen=True)
class AEPOAdvantageConfig:
    """Options of AEPO's entropy-aware advantage on top of the GRPO z-score."""

    alpha: float = 0.2
    """alpha_H of A~ = A (1 + alpha_H z), z the standardised token entropy (0.2 hard-coded in the code)."""
    eps: float = 1e-6
    """Added to the group std of the GRPO z-score (verl: 1e-6)."""
    norm_by_std: bool = True
    """Divide by the group std (GRPO, AEPO's base); False leaves r - mean_g (Dr.GRPO)."""
    clamp: bool = False
    """Clamp the factor 1 + alpha_H z at 0 (never flips a sign; the paper and the code do not clamp)."""

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"aepo_adv alpha must be >= 0, got {self.alpha}")
        if not self.eps >= 0:
            raise ValueError(f"aepo_adv eps must be >= 0, got {self.eps}")


def _entropy_factor(entropy: torch.Tensor, keep: torch.Tensor, cfg: AEPOAdvantageConfig) -> torch.Tensor:
    """1 + alpha_H (H - mean H) / std H over the kept tokens (unbiased std; a zero std counts as 1). [B, T]"""
    h = torch.where(keep, ops.upcast(entropy.detach()), 0.0)  # [B, T]
    std = ops.masked_var(h, keep, unbiased=True).sqrt()
    z = (h - ops.masked_mean(h, keep)) / torch.where(std > 0, std, torch.ones_like(std))  # [B, T]
    factor = 1.0 + cfg.alpha * z  # [B, T]
    return factor.clamp(min=0.0) if cfg.clamp else factor


def entropy_aware_advantage(
    adv: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, cfg: AEPOAdvantageConfig
) -> torch.Tensor:
    """A~_t = A_t (1 + alpha_H z_t), z_t the token entropy standardised over the mask: ``[B, T]``, 0 off the mask.

    ``adv [B, T]`` or ``[B, 1]``, ``entropy [B, T]``, ``mask [B, T]``; all detached.

    >>> a = entropy_aware_advantage(torch.ones(1, 1), torch.tensor([[0.0, 1.0, 2.0, 5.0]]),
    ...                             torch.tensor([[1, 1, 1, 0]]), AEPOAdvantageConfig(alpha=0.5))
    >>> [round(x, 4) for x in a[0].tolist()]
    [0.5, 1.0, 1.5, 0.0]
    """
    keep = mask.bool()
    out = adv.detach() * _entropy_factor(entropy, keep, cfg)  # [B, T]
    return torch.where(keep, out, 0.0)


ADV_METRICS = ("adv/mean", "adv/std", "adv/entropy_factor_mean", "adv/entropy_factor_min")


@register(
    "advantage",
    "aepo_adv",
    config=AEPOAdvantageConfig,
    paper="arXiv:2510.14545",
    metrics=ADV_METRICS,
    needs=("old_entropy",),
)
def aepo_adv(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: AEPOAdvantageConfig,
    group_id: torch.Tensor,
    old_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AEPO's entropy-aware advantage: the GRPO z-score times 1 + alpha_H (standardised token entropy).

    Paper: Agentic Entropy-Balanced Policy Optimization, arXiv:2510.14545 (Entropy-aware Advantage Estimation):

        A_acc_i = (r_i - mean_g r) / (std_g r + eps),   A_dH_t = (H_t - mean H) / std H,
        A~_t = A_acc_i (1 + alpha_H A_dH_t)

    mean / std H over every model token of the batch (mask 1; environment tokens and padding never count).

    Args:
        rewards: ``[B]`` episode rewards (groups by ``group_id``, >= 2 per group).
        mask: ``[B, T]`` model tokens (0 on environment tokens and padding).
        cfg: :class:`AEPOAdvantageConfig`.
        group_id: ``[B]`` the prompt group of each row.
        old_entropy: ``[B, T]`` the behaviour policy's token entropies (``needs=("old_entropy",)``).

    Returns:
        ``(adv [B, T], metrics)``, 0 where mask is 0. Metric keys: ``adv/mean`` and ``adv/std`` (population) of
        A~ over the model tokens, ``adv/entropy_factor_mean`` and ``adv/entropy_factor_min`` of 1 + alpha_H z
        there (a minimum below 0 means some advantages changed sign).

    Differences from the paper / released code:
        The form and alpha_H = 0.2 are the released code's (``compute_policy_loss_entropy_balanced_clipping``,
        ``enable_entropy_balanced_advantage``), which agrees with the paper's equation as summarised; the paper
        body itself was not available. The code standardises the *current* policy's entropy per micro-batch
        inside the policy loss; here the behaviour policy's entropy over the batch given (identical on the first
        epoch of an on-policy update, before any micro-batching). std is unbiased with 0 -> 1, as the code.
        ``clamp`` (off) is not in the code. With alpha_H = 0 or equal entropies this is GRPO, every turn alike.

    Example:
        >>> adv, m = aepo_adv(torch.tensor([1.0, 0.0]), torch.ones(2, 2), cfg=AEPOAdvantageConfig(),
        ...                   group_id=torch.zeros(2, dtype=torch.long), old_entropy=torch.tensor([[0.0, 1], [1, 2]]))
        >>> [[round(x, 4) for x in row] for row in adv.tolist()]  # A = +-0.7071, z = [[-1.2247, 0], [0, 1.2247]]
        [[0.5339, 0.7071], [-0.7071, -0.8803]]
    """
    if old_entropy is None:
        raise ValueError("aepo_adv needs old_entropy (the behaviour policy's token entropies)")
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"aepo_adv needs >= 2 samples per group, got {groups.size}")
    r = groups.grid(rewards.detach().float())  # [P, G]
    base = r - r.mean(-1, keepdim=True)  # [P, G]
    if cfg.norm_by_std:
        base = base / (r.std(-1, keepdim=True) + cfg.eps)
    base = groups.rows(base).unsqueeze(-1)  # [B, 1]
    keep = mask.bool()
    factor = _entropy_factor(old_entropy, keep, cfg)  # [B, T]
    adv = torch.where(keep, base * factor, 0.0)  # [B, T]
    mean = ops.masked_mean(adv, keep)
    any_token = bool(keep.any())
    metrics = {
        "adv/mean": mean,
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "adv/entropy_factor_mean": ops.masked_mean(factor, keep) if any_token else torch.ones(()),
        "adv/entropy_factor_min": torch.where(keep, factor, torch.inf).amin() if any_token else torch.ones(()),
    }
    return adv, {k: v.detach() for k, v in metrics.items()}


__all__ = [
    "AEPOAdvantageConfig",
    "AEPORolloutConfig",
    "Candidate",
    "aepo_adv",
    "branch_decisions",
    "branch_probability",
    "choose_branches",
    "entropy_aware_advantage",
    "global_budget",
    "global_budgets",
    "next_consecutive",
    "step_entropy",
    "tool_entropy_mean",
    "topk_partial_entropy",
]
