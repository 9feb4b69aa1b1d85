"""Per-token regularisers added to the policy loss: KL to a frozen reference, entropy bonus.

Each returns ``term [B, T]`` with its coefficient already applied (the trainer adds it to the policy loss
before ``aggregate``, so it shares the loss's normalisation, as verl's ``use_kl_loss`` and TRL's ``beta``
do). Entries where ``mask`` is 0 are exactly 0 and their inputs are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.methods.kl import KL_ESTIMATORS, KLEstimator, kl_estimate
from entrolab.registry import register

# the estimators of the loss term: every one of kl_estimate's but the importance-weighted *_is forms, which are
# ratio_weighted=True here
LOSS_ESTIMATORS = tuple(e for e in KL_ESTIMATORS if not e.endswith("_is"))


@dataclass(frozen=True)
class KLConfig:
    """Options of the KL-to-reference penalty."""

    coef: float = 0.001
    """Weight of the KL term (verl ``kl_loss_coef`` default 0.001; TRL ``beta`` default 0)."""
    estimator: KLEstimator = "k3"
    """Per-token estimator of KL(pi || pi_ref) from sampled tokens: k1, k2, k3 (Schulman, 2020), verl's names for
    them (kl, mse, low_var_kl), abs, and the straight-through ``+`` forms (value of one, k2's gradient)."""
    k3_max: float | None = 10.0
    """Upper clamp of the k3 value (verl clamps ``low_var_kl`` to [-10, 10]; k3 >= 0). None: no clamp."""
    ratio_weighted: bool = False
    """Multiply k by the ratio pi / pi_old (with its gradient): TRL's ``use_bias_correction_kl``, an importance-
    sampling correction of the estimate for samples drawn from pi_old."""

    def __post_init__(self) -> None:
        if not self.coef >= 0:
            raise ValueError(f"kl coef must be >= 0, got {self.coef}")
        if self.estimator not in LOSS_ESTIMATORS:
            raise ValueError(f"kl estimator must be one of {list(LOSS_ESTIMATORS)}, got {self.estimator!r}")
        if self.ratio_weighted and self.estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl ratio_weighted takes estimator k1, k2 or k3, got {self.estimator!r}")
        if self.k3_max is not None and not self.k3_max > 0:
            raise ValueError(f"kl k3_max must be > 0 or None, got {self.k3_max}")


@register(
    "regularizer",
    "kl",
    config=KLConfig,
    paper="arXiv:2402.03300",
    metrics=("kl/ref_mean",),
    needs=("ref_logp",),
)
def kl(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: KLConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL penalty to a frozen reference policy, per token: coef * k(logp, ref_logp).

    Paper: GRPO, arXiv:2402.03300, eq. 4 (the k3 estimator in the loss); estimators from J. Schulman,
    "Approximating KL divergence" (2020). With d = logp - ref_logp on the sampled token:

        k1 = d          k2 = d^2 / 2          k3 = exp(-d) - 1 + d   (>= 0; verl "low_var_kl")

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens, current policy (carries the gradient).
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`KLConfig`.
        entropy: ``[B, T]``, unused.  old_logp: ``[B, T]`` behaviour log-probs (used by ``ratio_weighted``).
        ref_logp: ``[B, T]`` log-prob under the frozen reference; required.

    Returns:
        ``(term [B, T], metrics)``; term = coef * k, 0 where mask is 0. Metric key: ``kl/ref_mean``, the
        masked mean of k (the estimate itself, without coef).

    Differences from the paper / released code:
        As verl ``kl_penalty`` for every estimator it names (``kl|k1``, ``abs``, ``mse|k2``, ``low_var_kl|k3`` and
        their ``+`` forms; see :func:`entrolab.methods.kl.kl_estimate`), including its clamps for k3 (log-ratio
        to +-20, value to at most ``k3_max``; the value clamp zeroes the gradient beyond 10). verl's ``full``
        raises NotImplementedError in verl and is not offered. TRL's k3 has no clamp (``k3_max=None`` drops
        every clamp); TRL 1.16's default ``use_bias_correction_kl=True`` is ``ratio_weighted=True``.

    Example:
        >>> logp, ref = torch.log(torch.tensor([[0.5, 0.25]])), torch.log(torch.tensor([[0.25, 0.5]]))
        >>> term, m = kl(logp, torch.ones(1, 2), cfg=KLConfig(coef=1.0), entropy=None, old_logp=None,
        ...              ref_logp=ref)
        >>> [round(x, 4) for x in term[0].tolist()]
        [0.1931, 0.3069]
    """
    if ref_logp is None:
        raise ValueError("regularizer 'kl' needs ref_logp (log-probs under the frozen reference policy)")
    k = kl_estimate(logp, ref_logp, cfg.estimator, mask=mask, clamp=cfg.k3_max)  # [B, T]
    metrics = {"kl/ref_mean": ops.masked_mean(k.detach(), mask)}
    if cfg.ratio_weighted:  # the estimate times pi / pi_old, with its gradient (TRL's bias-corrected KL)
        k = kl_estimate(logp, ref_logp, f"{cfg.estimator}_is", mask=mask, old_logp=old_logp, clamp=cfg.k3_max)
    return cfg.coef * k, metrics


@dataclass(frozen=True)
class EntropyBonusConfig:
    """Options of the entropy bonus."""

    coef: float = 0.001
    """Weight of the bonus: the term is -coef * H (verl ``entropy_coeff``, whose default is 0)."""

    def __post_init__(self) -> None:
        if not self.coef >= 0:
            raise ValueError(f"entropy_bonus coef must be >= 0, got {self.coef}")


@register(
    "regularizer",
    "entropy_bonus",
    config=EntropyBonusConfig,
    paper="arXiv:1602.01783",
    metrics=("entropy/bonus_mean",),
)
def entropy_bonus(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: EntropyBonusConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy bonus, per token: -coef * H, so minimising the loss raises the policy's entropy.

    Paper: A3C, arXiv:1602.01783, §4 (entropy regularisation of the policy); PPO, arXiv:1707.06347, eq. 9
    (the c2 S[pi] term). H is the full-distribution entropy from the current forward pass, with gradient.

    Args:
        logp: ``[B, T]``, unused.  old_logp: ``[B, T]``, unused.  ref_logp: unused.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`EntropyBonusConfig`.
        entropy: ``[B, T]`` full-distribution entropy of the current policy (carries the gradient).

    Returns:
        ``(term [B, T], metrics)``; term = -coef * H, 0 where mask is 0. Metric key: ``entropy/bonus_mean``,
        the masked mean of coef * H (the amount subtracted from the per-token loss).

    Differences from the paper / released code:
        verl subtracts ``entropy_coeff * agg_loss(H)``, TRL ``entropy_coef * mean(H)``; adding the term per
        token before ``aggregate`` is the same for every aggregation mode. The default coef is 0.001 (verl's
        early GRPO examples; later set to 0 after entropy blow-ups, verl PR #781), so choosing this
        regulariser has an effect; TRL's adaptive coefficient is not here.

    Example:
        >>> term, m = entropy_bonus(None, torch.tensor([[1.0, 0.0]]), cfg=EntropyBonusConfig(coef=0.1),
        ...                         entropy=torch.tensor([[2.0, float("nan")]]), old_logp=None, ref_logp=None)
        >>> round(term[0, 0].item(), 4), term[0, 1].item() == 0, round(m["entropy/bonus_mean"].item(), 4)
        (-0.2, True, 0.2)
    """
    bonus = torch.where(mask.bool(), cfg.coef * entropy, 0.0)  # [B, T]
    return -bonus, {"entropy/bonus_mean": ops.masked_mean(bonus.detach(), mask)}
