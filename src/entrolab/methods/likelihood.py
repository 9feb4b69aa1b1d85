"""Likelihood-based rewards (Kwiatkowski et al., arXiv 2602.03979): the policy's likelihood of the reference answer.

A chain of thought z is rewarded by how likely the behaviour policy is to emit the reference answer a* after it:
R = log pi(a* | p, z) (the paper's recommended reward, "the only option that performs well in all setups"), or
the probability variants it compares against (VeriFree's pi(a* | p, z), RLPR's mean token probability). The
trainer scores a* by one teacher-forced pass over prompt + the response's reasoning + ``answer:`` (see
``entrolab.step_inputs.answer_logp``); this shaper only reduces those log-probs to one reward per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Variant = Literal["log_prob", "mean_log_prob", "prob", "avg_prob"]
Combine = Literal["replace", "add"]
VARIANTS: tuple[str, ...] = get_args(Variant)
COMBINES: tuple[str, ...] = get_args(Combine)
_LOG_VARIANTS = ("log_prob", "mean_log_prob")


@dataclass(frozen=True)
class LikelihoodConfig:
    """Options of the likelihood-based reward."""

    variant: Variant = "log_prob"
    """log_prob: sum_t log p_t (the paper's recommended reward); mean_log_prob: its mean over the answer's tokens
    (length-normalised); prob: exp(sum_t log p_t) (VeriFree); avg_prob: mean_t p_t (RLPR, without debiasing)."""
    combine: Combine = "replace"
    """replace: r' = coef R, the verifier's reward is dropped (the paper: verifier-free); add: r' = r + coef R."""
    coef: float = 1.0
    """Scale of the likelihood reward R (>= 0); combine="add" with coef 0 gives back the verifier's reward."""
    floor: float | None = None
    """Log-prob variants only: R = max(R, floor), a finite value <= 0; None: no floor (the paper's reward)."""
    empty: float = 0.0
    """R of a row with no answer token in ``answer_mask`` (nothing scored). 0 by default: the empty product's
    log-prob, but the *top* of the log-prob scale; the trainer always scores the answer's EOS, so rows are
    never empty there."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"likelihood variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"likelihood combine must be one of {list(COMBINES)}, got {self.combine!r}")
        if not (math.isfinite(self.coef) and self.coef >= 0):
            raise ValueError(f"likelihood coef must be a finite number >= 0, got {self.coef}")
        if self.floor is not None:
            if self.variant not in _LOG_VARIANTS:
                raise ValueError(
                    f"likelihood floor applies to the variants {list(_LOG_VARIANTS)}, got variant {self.variant!r}"
                )
            if not (math.isfinite(self.floor) and self.floor <= 0):
                raise ValueError(f"likelihood floor must be None or a finite number <= 0, got {self.floor}")
        if not math.isfinite(self.empty):
            raise ValueError(f"likelihood empty must be finite, got {self.empty}")


@register(
    "reward_shaper",
    "likelihood",
    config=LikelihoodConfig,
    paper="arXiv:2602.03979",
    metrics=(
        "likelihood/reward_mean",
        "likelihood/answer_logp_mean",
        "likelihood/token_prob_mean",
        "likelihood/frac_floored",
        "likelihood/frac_empty",
    ),
    needs=("answer_logp", "answer_mask"),
    reconstructed=True,
)
def likelihood(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: LikelihoodConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    answer_logp: torch.Tensor | None = None,
    answer_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Likelihood reward: R = log pi(a* | p, z) of the reference answer a* after the response's reasoning z.

    Paper: Likelihood-Based Reward Designs for General LLM Reasoning, arXiv:2602.03979 (the reward
    R(z, a) = log pi_theta(a* | p, z); equation numbers not recovered). With l_t = log pi(a*_t | p, z, a*_<t) on
    the n answer tokens of a row (``answer_mask``), all detached (sg(R)):

        log_prob:       R = sum_t l_t                   (recommended)
        mean_log_prob:  R = (1/n) sum_t l_t
        prob:           R = exp(sum_t l_t)              (VeriFree)
        avg_prob:       R = (1/n) sum_t exp(l_t)        (RLPR's reward before its debiasing)
        floor (log variants): R = max(R, floor);  n = 0: R = cfg.empty
        replace: r' = coef R;   add: r' = r + coef R

    The group baseline of the advantage (GRPO / RLOO) does the rest; exp(sum) vanishes for long answers
    (T tokens of p = 0.5: R_log = -T ln 2, R_prob = 2^-T), the failure the paper reports for probability rewards.

    Args:
        rewards: ``[B]`` verifier rewards (kept by ``combine="add"``, dropped by ``"replace"``).
        mask: ``[B, T]`` response tokens (unused).  group_id, lengths, truncated, max_length: unused.
        cfg: :class:`LikelihoodConfig`.
        answer_logp: ``[B, A]`` teacher-forced log-probs of the reference answer's tokens under the behaviour
            policy after prompt + reasoning + answer marker (``needs``); values off ``answer_mask`` are ignored
            (may be anything, nan included); values on it must be finite.
        answer_mask: ``[B, A]`` 1 on each row's answer tokens (rows may differ in length; ``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``likelihood/reward_mean`` (mean R over B, before coef and
        combine), ``likelihood/answer_logp_mean`` (mean sum_t l_t over the rows with answer tokens, whatever the
        variant), ``likelihood/token_prob_mean`` (mean exp(l_t) over all answer tokens),
        ``likelihood/frac_floored`` (fraction of rows the floor raised; 0 without one) and
        ``likelihood/frac_empty`` (fraction of rows with no answer token).

    Differences from the paper / released code:
        Reconstructed from the abstract and summaries (the paper's body and any code could not be read; the
        variants follow the cited VeriFree and RLPR definitions). The reward is sg(R): the direct gradient term
        through the answer likelihood, E[grad log pi(a* | p, z)] (VeriFree's / JEPO's SFT-like term on a*), is
        not included, nor JEPO's multi-sample bound. RLPR's debiasing, clip(R_avg(z) - R_avg(no CoT), 0, 1),
        and its std-based prompt filtering are not included. a* is scored under the behaviour policy at rollout
        time, after entrolab's ``answer:`` marker, with its EOS (see ``entrolab.step_inputs``). The floor,
        ``empty`` and ``combine="add"`` are entrolab options; the paper's reward replaces the verifier's.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 1.0, 0.0]]))  # row 2: two answer tokens
        >>> amask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
        >>> r, m = likelihood(torch.ones(2), torch.ones(2, 4), cfg=LikelihoodConfig(), group_id=None,
        ...                   lengths=None, truncated=None, max_length=4, answer_logp=logp, answer_mask=amask)
        >>> [round(x, 4) for x in r.tolist()]  # -3 ln 2, -ln 2
        [-2.0794, -0.6931]
    """
    if answer_logp is None or answer_mask is None:
        raise ValueError("reward shaper 'likelihood' needs answer_logp and answer_mask (declared in needs)")
    if answer_logp.shape != answer_mask.shape:
        raise ValueError(
            f"likelihood: answer_logp {tuple(answer_logp.shape)} != answer_mask {tuple(answer_mask.shape)}"
        )
    on = answer_mask.bool()  # [B, A]
    logp = ops.upcast(answer_logp.detach())  # [B, A]
    bad = int((on & ~torch.isfinite(logp)).sum())
    if bad:
        raise ValueError(f"likelihood: answer_logp has {bad} non-finite value(s) on answer tokens")
    n = on.sum(-1).to(logp.dtype)  # [B] answer tokens per row
    has = n > 0  # [B]
    total = ops.masked_sum(logp, on, dim=-1)  # [B] log pi(a* | p, z); 0 when empty
    token_prob = torch.where(on, logp.exp(), torch.zeros((), dtype=logp.dtype, device=logp.device))  # [B, A]
    if cfg.variant == "log_prob":
        value = total  # [B]
    elif cfg.variant == "mean_log_prob":
        value = total / n.clamp(min=1)  # [B]
    elif cfg.variant == "prob":
        value = total.exp()  # [B]
    else:  # avg_prob
        value = token_prob.sum(-1) / n.clamp(min=1)  # [B]
    floored = torch.zeros_like(has)  # [B]
    if cfg.floor is not None:
        floored = has & (value < cfg.floor)
        value = value.clamp(min=cfg.floor)
    value = torch.where(has, value, torch.full_like(value, cfg.empty))  # [B]
    r = rewards.detach().to(value.dtype)  # [B]
    shaped = cfg.coef * value if cfg.combine == "replace" else r + cfg.coef * value  # [B]
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    metrics = {
        "likelihood/reward_mean": value.mean().float(),
        "likelihood/answer_logp_mean": ops.masked_mean(total, has).float(),
        "likelihood/token_prob_mean": ops.masked_mean(token_prob, on).float(),
        "likelihood/frac_floored": floored.float().mean(),
        "likelihood/frac_empty": (~has).float().mean(),
    }
    return shaped.to(out_dtype), metrics


__all__ = ["COMBINES", "VARIANTS", "LikelihoodConfig", "likelihood"]
