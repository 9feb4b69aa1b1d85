"""Implicit process rewards (Yuan et al., arXiv 2412.01981) as PRIME uses them (Cui et al., arXiv 2502.01456).

An outcome reward model parameterised as r_phi(y) = beta log pi_phi(y) / pi_ref(y) and trained on response labels
gives token rewards for free: r_t = beta log pi_phi(y_t) / pi_ref(y_t), with q-values q_t = sum_{s <= t} r_s.
PRIME trains pi_phi online on the policy's rollouts (:func:`implicit_prm_loss`, called by the trainer) and uses
the token (or step) rewards, with a leave-one-out baseline per reward source, beside the verifier's reward
(:func:`implicit_prm`). The Clip / Delta refinements of Gao et al. (arXiv 2410.15115) bound the process return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from entrolab import ops
from entrolab.methods.process import (
    clip_step_rewards,
    delta_step_rewards,
    returns_to_go,
    step_ends,
    step_rewards_from_tokens,
)
from entrolab.registry import register

Granularity = Literal["token", "step"]
Refine = Literal["none", "clip", "delta", "clip_delta"]
Baseline = Literal["paper", "code"]
BETA = 0.05
"""beta of the implicit reward (PRIME's ``beta_train``; the implicit-PRM training scripts' too)."""
METRICS = (
    "adv/mean",
    "adv/std",
    "prime/orm_mean",
    "prime/process_return_absmax",
    "prime/process_return_std",
    "prime/outcome_return_std",
)


def implicit_rewards(
    prm_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float = BETA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token rewards beta log pi_phi / pi_ref [B, T], q-values = their prefix sums [B, T], ORM = their sum [B]),
    0 off the mask; gradients flow through both inputs (detach ``ref_logp`` for a frozen reference).

    >>> r, q, orm = implicit_rewards(torch.tensor([[-1.0, -2.0, -0.5, -0.1]]),
    ...                              torch.tensor([[-1.2, -1.5, -0.7, -0.1]]), torch.ones(1, 4))
    >>> [round(v, 4) for v in r[0].tolist()], [round(v, 4) for v in q[0].tolist()], round(orm.item(), 4)
    ([0.01, -0.025, 0.01, 0.0], [0.01, -0.015, -0.005, -0.005], -0.005)
    """
    keep = mask.bool()
    zero = torch.zeros((), dtype=prm_logp.dtype, device=prm_logp.device)
    token_r = torch.where(keep, beta * (prm_logp - ref_logp), zero)  # [B, T]
    return token_r, torch.where(keep, token_r.cumsum(1), zero), token_r.sum(1)


def implicit_prm_loss(
    prm_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, beta: float = BETA
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PRIME's online PRM loss: BCE(sigmoid(beta sum_t log pi_phi / pi_ref), label), mean over non-empty rows.

    ``prm_logp [B, T]`` with grad (the PRM's forward), ``ref_logp [B, T]`` (detached here), ``mask [B, T]``,
    ``labels [B]`` in [0, 1] (the verifier's accuracy). Returns ``(loss 0-dim, metrics)`` with keys
    ``prime/prm_loss``, ``prime/prm_acc`` (sign of the ORM logit agrees with label > 0.5) and
    ``prime/prm_score_mean`` (mean sigmoid(ORM)). As the code's ``compute_ce_dpo_loss_rm``, computed from logits
    (exact where the code's sigmoid-then-BCE saturates); rows without tokens are left out.

    >>> loss, m = implicit_prm_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1.0, 0.0]))
    >>> round(loss.item(), 4), m["prime/prm_score_mean"].item()
    (0.6931, 0.5)
    """
    if labels.numel() and not bool(((labels >= 0) & (labels <= 1)).all()):
        raise ValueError(f"implicit_prm_loss labels must be in [0, 1], got {labels.tolist()}")
    _, _, orm = implicit_rewards(ops.upcast(prm_logp), ops.upcast(ref_logp.detach()), mask, beta)  # [B]
    rows = mask.bool().any(1).to(orm.dtype)  # [B]
    y = labels.to(orm.dtype)
    loss = ops.masked_mean(F.binary_cross_entropy_with_logits(orm, y, reduction="none"), rows)
    with torch.no_grad():
        right = ((orm > 0) == (y > 0.5)).to(orm.dtype)
        metrics = {
            "prime/prm_loss": loss.detach(),
            "prime/prm_acc": ops.masked_mean(right, rows),
            "prime/prm_score_mean": ops.masked_mean(orm.sigmoid(), rows),
        }
    return loss, metrics


@dataclass(frozen=True)
class ImplicitPRMConfig:
    """Options of PRIME's implicit-PRM advantage."""

    beta: float = BETA
    """beta of r_t = beta log pi_phi / pi_ref (the paper's; the code uses 1, beta only in the PRM loss: the same
    advantage under batch_norm, up to its 1e-6)."""
    granularity: Granularity = "token"
    """token: a reward on every token (PRIME's default); step: each step's summed reward at its last token."""
    refine: Refine = "none"
    """Clip / Delta of arXiv 2410.15115 on the token or step rewards (clip_delta: Delta of the clipped ones)."""
    eta_clip: float = 0.0
    """Clip's threshold eta in min(r - eta, 0). The paper's value (for a PRM scoring in [0, 1]) was not
    recoverable; an implicit reward is a log-ratio whose neutral point is 0 (pi_phi = pi_ref), so 0 keeps exactly
    the steps the PRM rates below the reference, as penalties, and is the one threshold that does not depend on
    beta or batch_norm. -inf zeroes every process reward."""
    batch_norm: bool = True
    """The code's ``prime_norm=batch_norm``: divide the rewards by (max |return-to-go| over the batch + 1e-6)."""
    process_baseline: Baseline = "paper"
    """paper: r_t - mean_{j != i} mean_t r^j; code: r_t K/(K-1) - sum_j mean_t r^j / (K-1) (adds
    (r_t - mean_t r^i) / (K-1))."""
    process_coef: float = 1.0
    """Weight of the process return (the code sums both returns with weight 1; rm_coef 5 reaches only an unused
    tensor)."""
    outcome_coef: float = 1.0
    """Weight of the outcome return (likewise; the code's reward_coef 5 is unused by its RLOO)."""
    whiten: bool = True
    """The code's masked_whiten of the summed return over the batch's tokens (unbiased var, + 1e-8)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("granularity", self.granularity, Granularity),
            ("refine", self.refine, Refine),
            ("process_baseline", self.process_baseline, Baseline),
        ):
            if value not in get_args(allowed):
                raise ValueError(f"implicit_prm {name} must be one of {list(get_args(allowed))}, got {value!r}")
        if not 0 < self.beta < float("inf"):
            raise ValueError(f"implicit_prm beta must be finite and > 0, got {self.beta}")
        if not self.eta_clip < float("inf"):  # also rejects nan
            raise ValueError(f"implicit_prm eta_clip must be < +inf (-inf allowed), got {self.eta_clip}")
        for name, value in (("process_coef", self.process_coef), ("outcome_coef", self.outcome_coef)):
            if not 0 <= value < float("inf"):
                raise ValueError(f"implicit_prm {name} must be finite and >= 0, got {value}")


@register(
    "advantage",
    "implicit_prm",
    config=ImplicitPRMConfig,
    paper="arXiv:2502.01456",
    metrics=METRICS,
    needs=("prm_logp", "ref_logp", "step_ids"),
)
def implicit_prm(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: ImplicitPRMConfig,
    group_id: torch.Tensor,
    prm_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PRIME: RLOO on the implicit process rewards and on the outcome, returns summed (gamma = 1), whitened.

    Papers: PRIME, arXiv:2502.01456 (the implicit PRM of arXiv:2412.01981: r_phi(y_t) = beta log
    pi_phi(y_t|y_<t) / pi_ref(y_t|y_<t)). For K samples of a prompt, |y^j| their lengths:

        A^i_t = sum_{s >= t} [r_phi(y^i_s) - 1/(K-1) sum_{j != i} r_phi(y^j) / |y^j|]
                + r_o(y^i) - 1/(K-1) sum_{j != i} r_o(y^j)

    then, as the code: optional batch_norm before the baselines, whitening after. ``granularity="step"`` puts each
    step's summed reward at its last token; ``refine`` applies Clip min(r - eta_clip, 0) and / or Delta
    r_k - r_{k+1} (arXiv 2410.15115) to those rewards first.

    Args:
        rewards: ``[B]`` outcome (verifier) rewards.  mask: ``[B, T]`` response tokens that count.
        cfg: :class:`ImplicitPRMConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes K >= 2).
        prm_logp: ``[B, T]`` log-probs under the implicit PRM pi_phi (required).
        ref_logp: ``[B, T]`` log-probs under the frozen reference (required).
        step_ids: ``[B, T]`` long, each token's step (-1 on padding); used only with ``granularity="step"``.

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, detached. Metric keys: ``adv/mean``, ``adv/std`` (masked
        tokens), ``prime/orm_mean`` (mean over non-empty rows of beta sum_t log pi_phi / pi_ref),
        ``prime/process_return_absmax`` (batch_norm's denominator, before it), ``prime/process_return_std`` and
        ``prime/outcome_return_std`` (masked std of each weighted source's return, before whitening).

    Differences from the paper / released code:
        The code (``compute_rloo_returns``, ``dp_prime.compute_implicit_reward``) drops beta from r_t, uses the
        ``code`` baseline (``process_baseline``) and offers ``whole`` (one reward at the last token: here one step
        per row) where this offers steps; the paper's advantage (as the research note gives it) has no batch_norm
        or whitening, on here as in the code. Clip / Delta are
        not in PRIME: reconstructed from the note on arXiv 2410.15115 (no code), applied to r_t as that paper's
        per-step PRM reward. A row without tokens has process mean 0 (the code: nan). A group of one raises.

    Example:
        >>> lp = torch.zeros(2, 2)
        >>> adv, _ = implicit_prm(torch.tensor([1.0, 0.0]), torch.ones(2, 2), cfg=ImplicitPRMConfig(whiten=False),
        ...                       group_id=torch.zeros(2, dtype=torch.long), prm_logp=lp, ref_logp=lp)
        >>> adv.tolist()
        [[1.0, 1.0], [-1.0, -1.0]]
    """
    if prm_logp is None or ref_logp is None:
        raise ValueError("implicit_prm needs prm_logp and ref_logp (implicit-PRM and frozen-reference log-probs)")
    groups = ops.Groups(group_id)
    k = groups.size
    if k < 2:
        raise ValueError(f"implicit_prm needs >= 2 samples per group, got {k}")
    keep = mask.bool()
    prm, ref = ops.upcast(prm_logp.detach()), ops.upcast(ref_logp.detach())
    token_r, _, orm = implicit_rewards(prm, ref, keep, cfg.beta)  # [B, T], [B]
    zero = torch.zeros((), dtype=token_r.dtype, device=token_r.device)
    if cfg.granularity == "token":
        ends, proc = keep, token_r
    else:
        if step_ids is None:
            raise ValueError("implicit_prm with granularity='step' needs step_ids (each token's reasoning step)")
        ends = step_ends(step_ids) & keep
        proc = torch.where(ends, step_rewards_from_tokens(token_r, step_ids), zero)  # [B, T]
    if cfg.refine in ("clip", "clip_delta"):
        proc = clip_step_rewards(proc, cfg.eta_clip, ends)
    if cfg.refine in ("delta", "clip_delta"):
        proc = delta_step_rewards(proc, ends)
    absmax = returns_to_go(proc, keep).abs().amax() if proc.numel() else zero
    if cfg.batch_norm:
        proc = proc / (absmax + 1e-6)
    mean = groups.grid(ops.masked_mean(proc, keep, dim=-1))  # [P, K] each sample's mean token reward
    total = mean.sum(-1, keepdim=True)  # [P, 1]
    if cfg.process_baseline == "paper":
        x = proc - groups.rows((total - mean) / (k - 1)).unsqueeze(-1)  # [B, T]
    else:
        x = proc * (k / (k - 1)) - groups.rows((total / (k - 1)).expand(-1, k)).unsqueeze(-1)
    proc_ret = cfg.process_coef * returns_to_go(x, keep)  # [B, T]
    r = groups.grid(rewards.detach().to(token_r.dtype))  # [P, K]
    r_loo = groups.rows(r - (r.sum(-1, keepdim=True) - r) / (k - 1)).unsqueeze(-1)  # [B, 1]
    out_ret = torch.where(keep, cfg.outcome_coef * r_loo, zero)  # [B, T] gamma = 1: the same on every token
    ret = proc_ret + out_ret
    if cfg.whiten:
        ret = (ret - ops.masked_mean(ret, keep)) * torch.rsqrt(ops.masked_var(ret, keep, unbiased=True) + 1e-8)
    adv = torch.where(keep, ret, zero)  # [B, T]
    rows = keep.any(1).to(orm.dtype)
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "prime/orm_mean": ops.masked_mean(orm, rows),
        "prime/process_return_absmax": absmax,
        "prime/process_return_std": ops.masked_var(proc_ret, keep).sqrt(),
        "prime/outcome_return_std": ops.masked_var(out_ret, keep).sqrt(),
    }
    return adv, metrics


__all__ = [
    "BETA",
    "ImplicitPRMConfig",
    "clip_step_rewards",
    "delta_step_rewards",
    "implicit_prm",
    "implicit_prm_loss",
    "implicit_rewards",
    "step_rewards_from_tokens",
]
