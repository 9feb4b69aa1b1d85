"""Process rewards from outcome labels: PRL (Yao, Wang & Zhang, arXiv 2601.10201), plus the step-reward helpers
shared with the implicit PRM (``entrolab.methods.prime``).

A *step* is a maximal run of equal ``step_ids`` (>= 0; -1 on padding) and ends at its last token (the newline,
which belongs to its step). Step rewards use the ``[B, T]`` layout of PRIME's code: a step's reward at its last
token, 0 elsewhere; the Clip / Delta transforms (Gao et al., arXiv 2410.15115) also take a compact ``[B, K]`` of
K step scores (``ends=None``: every entry is a step). All returns-to-go here use gamma = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

StepSplit = Literal["length", "newline"]
PRL_METRICS = ("adv/mean", "adv/std", "prl/kl_seq_mean", "prl/penalty_mean", "prl/steps_mean")


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """True on the last 1 of each row of ``mask`` (none in an empty row).  [B, T] -> bool [B, T]"""
    keep = mask.bool()
    idx = keep.shape[1] - 1 - keep.flip(1).int().argmax(1)  # [B]
    out = torch.zeros_like(keep)
    out[torch.arange(keep.shape[0], device=keep.device), idx] = keep.any(1)
    return out


def step_ends(step_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """True on the last token of each step (the next token's id differs, or the row ends).  bool [B, T]

    With ``mask``: only its tokens, and the last token of each row always ends a step (as PRL's code)."""
    nxt = torch.cat([step_ids[:, 1:], torch.full_like(step_ids[:, :1], -1)], 1)  # [B, T]
    ends = (step_ids >= 0) & (nxt != step_ids)
    if mask is None:
        return ends
    return (ends & mask.bool()) | last_token(mask)


def returns_to_go(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_{s >= t} x_s over the masked tokens (gamma = 1), 0 off the mask.  [B, T] -> [B, T]"""
    keep = mask.bool()
    x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return torch.where(keep, x.flip(1).cumsum(1).flip(1), torch.zeros((), dtype=x.dtype, device=x.device))


def step_rewards_from_tokens(token_r: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """Each step's summed token reward at its last token, 0 elsewhere: r^k = q^{end k} - q^{end k-1}.  [B, T]

    >>> r = torch.tensor([[0.01, -0.025, 0.01, 0.0]]); ids = torch.tensor([[0, 0, 1, 1]])
    >>> [round(v, 4) for v in step_rewards_from_tokens(r, ids)[0].tolist()]
    [0.0, -0.015, 0.0, 0.01]
    """
    valid = step_ids >= 0
    prev = torch.cat([torch.full_like(step_ids[:, :1], -1), step_ids[:, :-1]], 1)  # [B, T]
    run = ((valid & (prev != step_ids)).long().cumsum(1) - 1).clamp(min=0)  # [B, T] step index of each token
    x = torch.where(valid, token_r, torch.zeros((), dtype=token_r.dtype, device=token_r.device))
    sums = torch.zeros_like(x).scatter_add(1, run, x)  # [B, T] per-step sums, compact
    return torch.where(step_ends(step_ids), sums.gather(1, run), torch.zeros((), dtype=x.dtype, device=x.device))


def clip_step_rewards(step_r: torch.Tensor, eta: float, ends: torch.Tensor | None = None) -> torch.Tensor:
    """Clip (arXiv 2410.15115): r_k = min(s_k - eta, 0) on the step ends, 0 elsewhere; so no trajectory's total
    process reward exceeds 0 and an extra step never adds reward.  [B, T] or [B, K] -> same

    >>> clip_step_rewards(torch.tensor([[0.9, 0.6, 0.8]]), 0.7)
    tensor([[ 0.0000, -0.1000,  0.0000]])
    """
    ends = torch.ones_like(step_r, dtype=torch.bool) if ends is None else ends.bool()
    return torch.where(ends, (step_r - eta).clamp(max=0.0), torch.zeros((), dtype=step_r.dtype, device=step_r.device))


def delta_step_rewards(step_r: torch.Tensor, ends: torch.Tensor | None = None) -> torch.Tensor:
    """Delta (arXiv 2410.15115): r_k = s_k - s_{k+1} (k < K), r_K = s_K on the step ends, 0 elsewhere; the
    return-to-go from step k telescopes to s_k.  [B, T] or [B, K] -> same

    >>> [round(v, 4) for v in delta_step_rewards(torch.tensor([[0.9, 0.6, 0.8]]))[0].tolist()]
    [0.3, -0.2, 0.8]
    """
    ends = torch.ones_like(step_r, dtype=torch.bool) if ends is None else ends.bool()
    zero = torch.zeros((), dtype=step_r.dtype, device=step_r.device)
    n = step_r.shape[1]
    k = ends.long().cumsum(1) - 1  # [B, T] compact index of each end
    s = torch.where(ends, step_r, zero)
    compact = torch.zeros(step_r.shape[0], n + 1, dtype=s.dtype, device=s.device)  # [B, T + 1]
    compact = compact.scatter(1, torch.where(ends, k, n), s)  # non-ends all write 0 into column n
    nxt = compact.gather(1, (k + 1).clamp(min=0, max=n))  # [B, T] the next step's score (0 after the last)
    return torch.where(ends, s - nxt, zero)


def prl_token_advantages(
    outcome_adv: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor, eta: float
) -> torch.Tensor:
    """PRL's token advantages: v_t = A - D_t / eta with D_t = sum_{s >= t} d_s, taken at step ends and given to
    every token of the step (the value at the first step end >= t).  A [B, 1], d/mask/ends [B, T] -> [B, T]

    >>> d = torch.tensor([[0.2, -0.1, 0.4, 0.1]]); ends = torch.tensor([[False, True, False, True]])
    >>> adv = prl_token_advantages(torch.ones(1, 1), d, torch.ones(1, 4), ends, eta=2.0)
    >>> [round(v, 4) for v in adv[0].tolist()]
    [0.8, 0.8, 0.95, 0.95]
    """
    keep = mask.bool()
    v = outcome_adv - returns_to_go(log_ratio, keep) / eta  # [B, T]
    n = v.shape[1]
    pos = torch.where(ends.bool() & keep, torch.arange(n, device=v.device), n)  # [B, T]
    first_end = pos.flip(1).cummin(1).values.flip(1)  # [B, T] first step end >= t (n: none)
    v = torch.cat([v, torch.zeros_like(v[:, :1])], 1)  # [B, T + 1]
    return torch.where(keep, v.gather(1, first_end), torch.zeros((), dtype=v.dtype, device=v.device))


@dataclass(frozen=True)
class PRLConfig:
    """Options of PRL's process-reward advantage."""

    eta: float = 200.0
    """eta of the KL-regularised objective E[r] - KL(pi || pi_0) / eta (200 in the Llama-3.2-3B script);
    +inf: GRPO."""
    step_split: StepSplit = "length"
    """How steps are cut: every ``step_len`` tokens (the code's default path; reported best in the paper), or
    at newlines (the caller's ``step_ids``)."""
    step_len: int = 256
    """Tokens per step for ``step_split="length"`` (256 Llama, 128 / 64 in the Qwen2.5-Math scripts); 1: every
    token is a step."""
    eps: float = 1e-6
    """Added to the group std of the outcome (GRPO) advantage."""
    norm_by_std: bool = True
    """Divide the outcome advantage by the group std (the code's norm_adv_by_std_in_grpo); False: Dr.GRPO's."""

    def __post_init__(self) -> None:
        if self.step_split not in get_args(StepSplit):
            raise ValueError(f"prl step_split must be one of {list(get_args(StepSplit))}, got {self.step_split!r}")
        if not self.eta > 0:
            raise ValueError(f"prl eta must be > 0 (+inf: GRPO), got {self.eta}")
        if not self.step_len >= 1:
            raise ValueError(f"prl step_len must be >= 1, got {self.step_len}")
        if not self.eps >= 0:
            raise ValueError(f"prl eps must be >= 0, got {self.eps}")


@register(
    "advantage",
    "prl",
    config=PRLConfig,
    paper="arXiv:2601.10201",
    metrics=PRL_METRICS,
    needs=("old_logp", "ref_logp", "step_ids"),
)
def prl(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: PRLConfig,
    group_id: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PRL: the GRPO outcome advantage minus the KL still to come, per step: A_t = A_i - D_{e(t)} / eta.

    Paper: Process Reward Learning, arXiv:2601.10201. The optimum of E[r] - KL(pi || pi_0) / eta satisfies
    r(x, a) - log(pi*(a|x) / pi_0(a|x)) / eta = const, which splits the outcome into step rewards. As the released
    code (``adv_estimator=prm``, ``prm.adv=orm``):

        A_i = (r_i - mean_g r) / (std_g r + eps)         (unbiased std)
        d_t = log pi_old(y_t) - log pi_ref(y_t),   D_t = sum_{s >= t} d_s,   v_t = A_i - D_t / eta
        A_t = v_{e(t)},  e(t) the first step end >= t (steps of ``step_len`` tokens or newline steps; the last
        token always ends a step)

    Args:
        rewards: ``[B]`` outcome rewards (groups by ``group_id``, any order).
        mask: ``[B, T]`` response tokens that count.
        cfg: :class:`PRLConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        old_logp: ``[B, T]`` behaviour-policy log-probs (required).
        ref_logp: ``[B, T]`` frozen-reference log-probs (required).
        step_ids: ``[B, T]`` long, each token's step (-1 on padding); used only with ``step_split="newline"``.

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, detached. Metric keys: ``adv/mean``, ``adv/std`` (over the
        masked tokens), ``prl/kl_seq_mean`` (mean over non-empty rows of sum_t d_t), ``prl/penalty_mean`` (masked
        mean of A_i - A_t = D_{e(t)} / eta), ``prl/steps_mean`` (steps per non-empty row).

    Differences from the paper / released code:
        The code finds step ends as the non-zero entries of a masked reward tensor (``left_fill_by_next_nonzero``),
        so a step whose value is exactly 0 takes the next step's; here step ends are explicit. Its ``"nn"`` split
        (``\\n\\n`` tokens) is the caller's ``step_ids``. A group of one raises (the code uses mean 0, std 1).

    Example:
        >>> old = torch.tensor([[-1.0, -1.0], [-2.0, -1.0]]); ref = torch.full((2, 2), -1.0)
        >>> adv, _ = prl(torch.tensor([1.0, 0.0]), torch.ones(2, 2), cfg=PRLConfig(eta=2.0, step_len=1),
        ...              group_id=torch.zeros(2, dtype=torch.long), old_logp=old, ref_logp=ref)
        >>> [[round(v, 4) for v in row] for row in adv.tolist()]
        [[0.7071, 0.7071], [-0.2071, -0.7071]]
    """
    if old_logp is None or ref_logp is None:
        raise ValueError("prl needs old_logp and ref_logp (behaviour and frozen-reference log-probs)")
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"prl needs >= 2 samples per group, got {groups.size}")
    keep = mask.bool()
    log_ratio = ops.upcast(old_logp.detach()) - ops.upcast(ref_logp.detach())  # [B, T]
    r = groups.grid(rewards.detach().to(log_ratio.dtype))  # [P, G]
    a = r - r.mean(-1, keepdim=True)
    if cfg.norm_by_std:
        a = a / (r.std(-1, keepdim=True) + cfg.eps)
    a = groups.rows(a).unsqueeze(-1)  # [B, 1]
    if cfg.step_split == "length":
        col = torch.arange(keep.shape[1], device=keep.device)
        ends = (((col + 1) % cfg.step_len == 0) & keep) | last_token(keep)  # [B, T]
    else:
        if step_ids is None:
            raise ValueError("prl with step_split='newline' needs step_ids (each token's reasoning step)")
        ends = step_ends(step_ids, keep)
    adv = prl_token_advantages(a, log_ratio, keep, ends, cfg.eta)  # [B, T]
    rows = keep.any(1)
    kl_seq = ops.masked_sum(log_ratio, keep, dim=-1)  # [B]
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "prl/kl_seq_mean": ops.masked_mean(kl_seq, rows),
        "prl/penalty_mean": ops.masked_mean(a - adv, keep),
        "prl/steps_mean": ops.masked_mean((ends & keep).sum(1).to(adv.dtype), rows),
    }
    return adv, metrics


__all__ = [
    "PRLConfig",
    "clip_step_rewards",
    "delta_step_rewards",
    "last_token",
    "prl",
    "prl_token_advantages",
    "returns_to_go",
    "step_ends",
    "step_rewards_from_tokens",
]
