"""Trust regions without ratio clipping: DPPO masks tokens whose probability moved too far (binary TV or KL), DRO
pays a quadratic log-ratio penalty, GPG is the plain policy gradient with no trust region at all.

Every loss is the *unreduced* per-token ``[B, T]`` (lower is better); the trainer reduces it with ``aggregate``.
Entries where ``mask`` is 0 are exactly 0 and their inputs are never read, so padding may hold any value.
``old_logp`` is the behaviour policy's log-probs (the sampler's, unless the run asks for ``rollout_logp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

DPPO_METRICS = (
    "clip/frac_low",
    "clip/frac_high",
    "dppo/frac_truncated",
    "dppo/divergence",
    "ratio/mean",
    "kl/approx_old",
)


def _check_dppo(name: str, delta_low: float, delta_high: float, is_cap: float | None, top: float) -> None:
    for field, value in (("delta_low", delta_low), ("delta_high", delta_high)):
        if not 0 < value <= top:
            raise ValueError(f"{name} {field} must be in (0, {top}], got {value}")
    if is_cap is not None and not is_cap > 0:
        raise ValueError(f"{name} is_cap must be > 0 or None, got {is_cap}")


@dataclass(frozen=True)
class DPPOTVConfig:
    """Options of DPPO-Binary-TV (defaults: the authors' verl script, examples/dppo_trainer)."""

    delta_low: float = 0.15
    """TV bound where A <= 0: the token is masked when its probability fell by more. verl ``clip_ratio_low``."""
    delta_high: float = 0.15
    """TV bound where A > 0: the token is masked when its probability rose by more. verl ``clip_ratio_high``."""
    is_cap: float | None = None
    """Truncation of the importance weight at is_cap (TIS); None: none (the authors set 1e4). verl
    ``clip_ratio_c``, whose ActorConfig default 3.0 applies unless the run sets it."""

    def __post_init__(self) -> None:
        _check_dppo("dppo_tv", self.delta_low, self.delta_high, self.is_cap, top=1.0)


@dataclass(frozen=True)
class DPPOKLConfig:
    """Options of DPPO-Binary-KL (defaults: the authors' verl script, examples/dppo_trainer)."""

    delta_low: float = 0.05
    """Binary-KL bound where A <= 0 and the probability fell. verl ``clip_ratio_low``."""
    delta_high: float = 0.05
    """Binary-KL bound where A > 0 and the probability rose. verl ``clip_ratio_high``."""
    is_cap: float | None = None
    """Truncation of the importance weight at is_cap (TIS); None: none (the authors set 1e4). verl
    ``clip_ratio_c``, whose ActorConfig default 3.0 applies unless the run sets it."""

    def __post_init__(self) -> None:
        _check_dppo("dppo_kl", self.delta_low, self.delta_high, self.is_cap, top=float("inf"))


def _dppo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: DPPOTVConfig | DPPOKLConfig,
    divergence: Literal["tv", "kl"],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and metrics of DPPO with the binary TV or binary KL trust region."""
    keep = mask.bool()  # [B, T]
    logp = torch.where(keep, logp, 0.0)  # [B, T]
    old_logp = torch.where(keep, old_logp, 0.0)  # [B, T]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    with torch.no_grad():
        log_ratio = (logp - old_logp).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
        ratio = torch.exp(log_ratio)  # [B, T]
        prob, old_prob = torch.exp(logp), torch.exp(old_logp)  # [B, T]
        if divergence == "tv":  # TV between Bernoulli(old_prob) and Bernoulli(prob)
            div = (prob - old_prob).abs()  # [B, T]
            ok_pos = (prob - old_prob) <= cfg.delta_high  # [B, T]
            ok_neg = (prob - old_prob) >= -cfg.delta_low  # [B, T]
        else:  # KL(Bernoulli(old_prob) || Bernoulli(prob)), with verl's 1e-8 guard
            div = old_prob * (old_logp - logp) + (1 - old_prob) * torch.log((1 - old_prob + 1e-8) / (1 - prob + 1e-8))
            ok_pos = (div <= cfg.delta_high) | (prob <= old_prob)  # [B, T]
            ok_neg = (div <= cfg.delta_low) | (prob >= old_prob)  # [B, T]
        valid = torch.where(adv > 0, ok_pos, ok_neg)  # [B, T]
        weight = ratio if cfg.is_cap is None else ratio.clamp(max=cfg.is_cap)  # [B, T]
    loss = torch.where(valid, -adv * weight * logp, 0.0)  # [B, T]

    with torch.no_grad():
        dtype = ratio.dtype
        truncated = torch.zeros_like(keep) if cfg.is_cap is None else (ratio > cfg.is_cap) & valid  # [B, T]
        metrics = {
            "clip/frac_low": ops.masked_mean(((adv < 0) & ~valid).to(dtype), mask),
            "clip/frac_high": ops.masked_mean(((adv > 0) & ~valid).to(dtype), mask),
            "dppo/frac_truncated": ops.masked_mean(truncated.to(dtype), mask),
            "dppo/divergence": ops.masked_mean(div, mask),
            "ratio/mean": ops.masked_mean(ratio, mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


_DPPO_DOC = """

    Paper: Rethinking the Trust Region in LLM RL (DPPO), arXiv:2602.04879 (the masked objective with the binary
    approximation of the divergence; §5.2 anchoring at the behaviour policy, §5.4 TIS, as cited by verl).
    With p = exp(logp), p_old = exp(old_logp), r = p / p_old:

        M = 1 - [A > 0 and D_high] - [A <= 0 and D_low]       (the trust region left in the advantage's direction)
        L = -M sg(min(r, is_cap)) A logp                      (gradient -M min(r, is_cap) A dlogp)

    {divergence}

    The gradient is PPO's r A dlogp on the tokens inside the trust region and 0 outside; there is no ratio clip.
    The authors' recipe aggregates with ``seq-mean-token-sum-norm`` (Dr.GRPO); verl's default is
    ``token-mean``; the loss is per token, so any mode applies.

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached): the trust region's anchor.
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`{config}`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (masked means over tokens):
        ``clip/frac_low`` fraction with A < 0 masked (probability fell out of the region);
        ``clip/frac_high`` fraction with A > 0 masked (probability rose out of it); their sum is verl's
        ``actor/pg_clipfrac`` (which also counts A = 0 tokens the A <= 0 test rejects);
        ``dppo/frac_truncated`` fraction inside the region whose weight was truncated (verl
        ``actor/pg_clipfrac_lower``; 0 when is_cap is None); ``dppo/divergence`` mean {name_div};
        ``ratio/mean`` mean of r; ``kl/approx_old`` mean of old_logp - logp (verl ``actor/ppo_kl``).

    Differences from the paper / released code:
        The loss is written sg(w) A logp as in verl and the authors' code: the gradient is the paper's masked
        PPO surrogate's, the value is not -M r A. The paper anchors the region (and r) at the behaviour policy
        that sampled (the authors run verl with ``bypass_mode=True``), which ``old_logp`` is here; verl's
        default anchors at its recomputed ``old_log_prob``. The authors disable TIS (``clip_ratio_c=1e4``),
        is_cap=None; verl reads ``clip_ratio_c``, whose default 3.0 truncates unless the run raises it (the
        code's fallback of 20.0 only applies to configs without the key). Masking is decided with ``A > 0``
        (A = 0 takes the A <= 0 test), as in verl. The Top-K approximations of the paper are not implemented.

    Example:
{example}"""


def _doc(fn, **fields: str):
    fn.__doc__ = (fn.__doc__ or "") + _DPPO_DOC.format(**fields)
    return fn


@register("policy_loss", "dppo_tv", config=DPPOTVConfig, paper="arXiv:2602.04879", metrics=DPPO_METRICS)
def dppo_tv(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: DPPOTVConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPPO-Binary-TV: policy gradient masked where the sampled token's probability moved by more than delta."""
    return _dppo(logp, old_logp, advantages, mask, cfg, "tv")


_doc(
    dppo_tv,
    config="DPPOTVConfig",
    name_div="|p - p_old|, the binary TV",
    divergence="D_high = p - p_old > delta_high, D_low = p - p_old < -delta_low (binary TV |p - p_old|).",
    example="""        >>> logp = torch.log(torch.tensor([[0.7, 0.3, 0.3]]))
        >>> old = torch.log(torch.tensor([[0.5, 0.5, 0.4]]))
        >>> loss, m = dppo_tv(logp, old, torch.tensor([[1.0, -1.0, 1.0]]), torch.ones(1, 3), cfg=DPPOTVConfig())
        >>> [round(x, 4) for x in loss[0].tolist()]  # +0.2 with A > 0 and -0.2 with A < 0 leave the region
        [0.0, 0.0, 0.903]
        >>> round(m["clip/frac_high"].item(), 4), round(m["clip/frac_low"].item(), 4)
        (0.3333, 0.3333)""",
)


@register("policy_loss", "dppo_kl", config=DPPOKLConfig, paper="arXiv:2602.04879", metrics=DPPO_METRICS)
def dppo_kl(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: DPPOKLConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPPO-Binary-KL: policy gradient masked where the token's binary KL left delta in the advantage's direction."""
    return _dppo(logp, old_logp, advantages, mask, cfg, "kl")


_doc(
    dppo_kl,
    config="DPPOKLConfig",
    name_div="binary KL",
    divergence="D_high = KL > delta_high and p > p_old, D_low = KL > delta_low and p < p_old, with the binary KL\n"
    "    KL = p_old log(p_old / p) + (1 - p_old) log((1 - p_old) / (1 - p)) of the sampled token against the rest.",
    example="""        >>> logp = torch.log(torch.tensor([[0.7, 0.3, 0.3]]))
        >>> old = torch.log(torch.tensor([[0.5, 0.5, 0.4]]))
        >>> cfg = DPPOKLConfig(delta_low=0.1)  # both moves have binary KL 0.0872: only the rise is masked
        >>> loss, m = dppo_kl(logp, old, torch.tensor([[1.0, -1.0, 1.0]]), torch.ones(1, 3), cfg=cfg)
        >>> [round(x, 4) for x in loss[0].tolist()]
        [0.0, -0.7224, 0.903]
        >>> round(m["dppo/divergence"].item(), 4)
        0.0656""",
)


@dataclass(frozen=True)
class DROConfig:
    """Options of DRO's quadratic penalty."""

    beta: float = 0.05
    """Penalty coefficient on (log pi - log pi_old)^2 / 2, > 0. verl ``policy_loss.dro_beta`` (no default there:
    a run must set it; 0.05 is the value of verl's DRO pull request example and Tinker's DRO docs)."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"dro beta must be > 0, got {self.beta}")


@register(
    "policy_loss",
    "dro",
    config=DROConfig,
    paper="arXiv:2405.19107",
    metrics=("dro/penalty", "ratio/mean", "kl/approx_old"),
)
def dro(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: DROConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DRO: policy gradient with a quadratic log-ratio penalty as the soft trust region, per token.

    Paper: Direct Reward Optimisation, Richemond et al., arXiv:2405.19107 (the squared loss
    (r - V - beta log pi/pi_ref)^2 / 2, whose policy gradient is the one below with pi_ref the anchor); its
    on-policy mirror-descent form in Kimi k1.5, arXiv:2501.12599, §2.3.2:

        L = -(A logp - beta / 2 (logp - old_logp)^2)      (gradient -(A - beta (logp - old_logp)) dlogp)

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached): the penalty's anchor.
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`DROConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (masked means over tokens):
        ``dro/penalty`` mean of beta / 2 (logp - old_logp)^2; ``ratio/mean`` mean of exp(logp - old_logp);
        ``kl/approx_old`` mean of old_logp - logp, unclamped (verl ``actor/ppo_kl``).

    Differences from the paper / released code:
        As verl's ``dro`` loss, which cites no paper (its docstring: "Direct Reward Optimization with a
        quadratic log-ratio penalty"); Richemond et al. and Kimi k1.5 write it per sequence (sequence
        log-probs), verl and this function per token. The advantage is whatever the run's estimator gives,
        not DRO's learned value baseline. The penalty acts on every valid token, A = 0 included. The
        log-ratio is not clamped (the penalty is quadratic, not exponential), as in verl.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.25]]))
        >>> old = torch.log(torch.tensor([[0.25, 0.25]]))
        >>> loss, m = dro(logp, old, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), cfg=DROConfig(beta=0.5))
        >>> [round(x, 4) for x in loss[0].tolist()]
        [0.8133, 0.0]
        >>> round(m["dro/penalty"].item(), 4), round(m["kl/approx_old"].item(), 4)
        (0.0601, -0.3466)
    """
    keep = mask.bool()  # [B, T]
    logp = torch.where(keep, logp, 0.0)  # [B, T]
    log_ratio = torch.where(keep, logp - old_logp, 0.0)  # [B, T]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    penalty = 0.5 * cfg.beta * log_ratio.square()  # [B, T]
    loss = -(logp * adv - penalty)  # [B, T]

    with torch.no_grad():
        metrics = {
            "dro/penalty": ops.masked_mean(penalty, mask),
            "ratio/mean": ops.masked_mean(log_ratio.clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP).exp(), mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@register("policy_loss", "gpg", paper="arXiv:2504.02546", metrics=("ratio/mean", "kl/approx_old"))
def gpg(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG's policy loss: the plain policy gradient -A logp, no ratio, no clip, no trust region.

    Paper: GPG, arXiv:2504.02546 (the GPG objective J_GPG): the REINFORCE loss -A logp averaged over all tokens of
    the batch (``token-mean``, verl's default for ``gpg``). GPG's advantage (group mean baseline scaled by
    the share of valid groups, alpha) is an advantage estimator of its own; this is only the loss.

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them; only read for the metrics.
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: None (no options).
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (masked means over tokens):
        ``ratio/mean`` mean of exp(logp - old_logp); ``kl/approx_old`` mean of old_logp - logp (verl's ``gpg``
        returns no metrics, so neither has a counterpart there).

    Differences from the paper / released code:
        As verl's ``gpg`` (adapted from the authors' ``grpo_trainer.py``). Off-policy data (several epochs per
        batch) get no importance correction, as in the paper and verl.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.25]]))
        >>> loss, m = gpg(logp, logp.detach(), torch.tensor([[1.0, -2.0]]), torch.ones(1, 2), cfg=None)
        >>> [round(x, 4) for x in loss[0].tolist()]
        [0.6931, -2.7726]
    """
    keep = mask.bool()  # [B, T]
    logp = torch.where(keep, logp, 0.0)  # [B, T]
    loss = -logp * torch.where(keep, advantages, 0.0)  # [B, T]
    with torch.no_grad():
        log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
        metrics = {
            "ratio/mean": ops.masked_mean(log_ratio.exp(), mask),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics
