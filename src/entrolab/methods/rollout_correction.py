"""Rollout correction: importance weights and rejection when the sampler's log-probs differ from the trainer's.

Three policies (verl's *decoupled* mode): pi_rollout sampled the tokens (``rollout_logp``), pi_old is the
trainer's own recomputation of the same weights before the update (``old_logp`` once a method asks for
``rollout_logp``), pi_theta is the current policy (``logp``). rho = pi_train / pi_rollout measures the
training-inference mismatch (kernels, precision, MoE routing) and the corrections weight or reject tokens by it.

- :func:`rollout_correction`: the pure weights, rejection mask and metrics, for any trainer log-probs.
- ``rollout_is`` (token filter): decoupled mode, rho = pi_old / pi_rollout, on rollout-time tensors.
- ``reinforce_is`` (policy loss): verl's bypass mode with ``loss_type="reinforce"``: no recomputation, rho =
  pi_theta / pi_rollout (detached) and L = -A w log pi_theta. Bypass with ``loss_type="ppo_clip"`` is plain
  ``ppo_clip`` (entrolab's default ``old_logp`` is the sampler's), so it is not registered again.
DeepSeek-V3.2's off-policy sequence mask (``ppo_clip_opmask``) is in ``entrolab.methods.off_policy_mask``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "none"]
RejectMode = Literal[
    "none", "token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
    "seq_mean_k1", "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3",
]  # fmt: skip
IS_MODES: tuple[str, ...] = get_args(ISMode)
REJECT_MODES: tuple[str, ...] = get_args(RejectMode)
STATS = ("is_mean", "is_min", "is_max", "is_frac_high", "is_frac_low", "is_ess")
STATS += ("frac_rejected", "seq_frac_rejected", "kl", "k3_kl", "logp_abs_diff")
PAPERS = "TIS: fengyao.notion.site/off-policy-rl; MIS: arXiv:2510.18855 (IcePop), richardli.xyz/rl-collapse"


@dataclass(frozen=True)
class RolloutISConfig:
    """Options of the rollout-correction weights and rejection (``rollout_is``, ``reinforce_is``)."""

    mode: ISMode = "token_truncate"
    """IS weight: token_* one rho_t per token, sequence_* rho_seq = prod_t rho_t per sequence; *_truncate clamps
    it to [lower, upper] (TIS), *_mask zeroes the weight outside [lower, upper] (MIS, IcePop); none: weight 1."""
    upper: float | None = 2.0
    """Upper bound C_max (TRL ``vllm_importance_sampling_clip_max``, verl ``rollout_is_threshold``); None: none."""
    lower: float | None = None
    """Lower bound C_min (TRL ``vllm_importance_sampling_clip_min``, the lower of verl's ``"lower_upper"``)."""
    reject: RejectMode = "none"
    """verl ``rollout_rs``: reject tokens or sequences whose statistic is out of bounds (``rollout_is``: mask-out,
    they leave the denominator; ``reinforce_is``: loss 0): k1 = log rho (token; seq_sum = log rho_seq; seq_mean =
    log of the geometric-mean ratio) within [reject_low, reject_high] as ratios; k2 = (log rho)^2 / 2 and
    k3 = rho - 1 - log rho at most reject_high; seq_max: the sequence's largest token value."""
    reject_low: float | None = None
    """Lower ratio bound of the k1 options (None: 1 / reject_high, as verl)."""
    reject_high: float | None = None
    """Upper ratio bound (k1) or upper divergence bound (k2, k3); required when ``reject`` is set."""
    batch_normalize: bool = False
    """verl ``rollout_is_batch_normalize``: divide the weights by their mean over the call's tokens (sequence_*
    modes: over its sequences)."""

    def __post_init__(self) -> None:
        if self.mode not in IS_MODES:
            raise ValueError(f"rollout correction mode must be one of {list(IS_MODES)}, got {self.mode!r}")
        if self.reject not in REJECT_MODES:
            raise ValueError(f"rollout correction reject must be one of {list(REJECT_MODES)}, got {self.reject!r}")
        for name in ("upper", "lower", "reject_low", "reject_high"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"rollout correction {name} must be a finite number > 0 or None, got {value}")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"rollout correction needs lower <= upper, got {self.lower} > {self.upper}")
        if self.reject == "none":
            if self.reject_low is not None or self.reject_high is not None:
                raise ValueError("rollout correction reject_low / reject_high are set but reject='none'")
        elif self.reject_high is None:
            raise ValueError(f"rollout correction reject={self.reject!r} needs reject_high")
        elif self.reject.endswith("k1"):
            if self.reject_low is not None and self.reject_low > self.reject_high:
                raise ValueError(f"rollout correction needs reject_low <= reject_high, got {self.reject_low}")
        elif self.reject_low is not None:
            raise ValueError(f"rollout correction reject={self.reject!r} takes reject_high only, got reject_low")


def _reject_keep(log_rho: torch.Tensor, keep: torch.Tensor, cfg: RolloutISConfig) -> torch.Tensor:
    """True where ``cfg.reject`` keeps the token; ``log_rho`` is the clamped per-token log-ratio.  [B, T]"""
    if cfg.reject == "none":
        return torch.ones_like(keep)
    level, kind = cfg.reject.rsplit("_", 1)
    stat = {"k1": log_rho, "k2": 0.5 * log_rho**2, "k3": torch.exp(log_rho) - 1.0 - log_rho}[kind]  # [B, T]
    if level == "seq_sum":
        stat = ops.masked_sum(stat, keep, -1).unsqueeze(-1)  # [B, 1]
    elif level == "seq_mean":
        stat = ops.masked_mean(stat, keep, -1).unsqueeze(-1)  # [B, 1]
    elif level == "seq_max":
        stat = stat.masked_fill(~keep, -math.inf).amax(-1, keepdim=True)  # [B, 1]
        stat = torch.where(torch.isinf(stat), 0.0, stat)
    if kind != "k1":
        return (stat <= cfg.reject_high).expand_as(keep)
    low = cfg.reject_low if cfg.reject_low is not None else 1.0 / cfg.reject_high
    return ((stat >= math.log(low)) & (stat <= math.log(cfg.reject_high))).expand_as(keep)


@torch.no_grad()
def rollout_correction(
    train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cfg: RolloutISConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """IS weights, rejection mask and metrics of rho = pi_train / pi_rollout (verl ``compute_rollout_correction_
    and_rejection_mask``, TRL's ``vllm_importance_sampling_mode`` block).

    ``train_logp`` / ``rollout_logp`` / ``mask`` are ``[B, T]``; -> ``(weight [B, T], keep [B, T] bool,
    metrics)``: the detached weight (0 on padding and where a *_mask mode drops the token; before that, divided by
    its mean if ``batch_normalize``), and False where ``cfg.reject`` rejects. Metric keys (no prefix; means over
    the valid tokens, weights before normalisation): ``is_mean``, ``is_min``, ``is_max``; ``is_frac_high`` /
    ``is_frac_low`` tokens whose raw ratio (token or sequence) is above upper / below lower (1 / upper when
    lower is None); ``is_ess`` verl's 1 / mean((w / mean w)^2); ``frac_rejected`` tokens zero-weighted or
    rejected; ``seq_frac_rejected`` the same per non-empty sequence; ``kl`` mean(rollout - train) and ``k3_kl``
    mean(rho - 1 - log rho) (verl's ``kl``, ``k3_kl``); ``logp_abs_diff`` mean |train - rollout| (TRL's
    ``sampling/sampling_logp_difference/mean``, NaN tokens left out).
    """
    keep = mask.bool()  # [B, T]
    dtype = ops.upcast(train_logp).dtype
    raw = torch.where(keep, train_logp.to(dtype) - rollout_logp.to(dtype), 0.0)  # [B, T]
    scored = keep & ~torch.isnan(raw)  # [B, T] TRL: a token the sampler could not score counts as rho = 1
    diff = torch.where(scored, raw, 0.0)  # [B, T]
    log_tok = diff.clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    if cfg.mode.startswith("sequence"):  # verl clamps the sequence's summed log-ratio
        log_rho = diff.sum(-1, keepdim=True).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP).expand_as(diff)
    else:
        log_rho = log_tok
    rho = torch.where(keep, torch.exp(log_rho), 0.0)  # [B, T]
    lo, hi = cfg.lower, cfg.upper
    inside = torch.ones_like(keep)  # [B, T]
    if lo is not None:
        inside &= rho >= lo
    if hi is not None:
        inside &= rho <= hi
    if cfg.mode == "none":
        weight = keep.to(dtype)  # [B, T]
    elif cfg.mode.endswith("truncate"):
        weight = rho if lo is None and hi is None else torch.where(keep, rho.clamp(min=lo, max=hi), 0.0)
    else:
        weight = torch.where(inside, rho, 0.0)  # [B, T]
    zeroed = keep & ~inside if cfg.mode.endswith("mask") else torch.zeros_like(keep)  # [B, T]
    kept = _reject_keep(log_tok, keep, cfg)  # [B, T]
    dropped = (zeroed | ~kept) & keep  # [B, T]

    n_valid = keep.any()
    lo_m = lo if lo is not None else (1.0 / hi if hi is not None else 0.0)
    mean = ops.masked_mean(weight, keep)
    ess_den = ops.masked_mean((weight / (mean + 1e-8)) ** 2, keep)
    rows = keep.any(-1)  # [B]
    metrics = {
        "is_mean": mean,
        "is_min": weight.masked_fill(~keep, math.inf).min() if n_valid else mean,
        "is_max": weight.masked_fill(~keep, -math.inf).max() if n_valid else mean,
        "is_frac_high": ops.masked_mean((rho > hi).to(dtype), keep) if hi is not None else mean * 0,
        "is_frac_low": ops.masked_mean((rho < lo_m).to(dtype), keep),
        "is_ess": torch.where(ess_den > 0, 1.0 / ess_den.clamp(min=1e-30), 0.0),
        "frac_rejected": ops.masked_mean(dropped.to(dtype), keep),
        "seq_frac_rejected": ops.masked_mean(dropped.any(-1).to(dtype), rows),
        "kl": ops.masked_mean(-diff, keep),
        "k3_kl": ops.masked_mean(torch.exp(log_tok) - 1.0 - log_tok, keep),
        "logp_abs_diff": ops.masked_mean(diff.abs(), scored),
    }
    if cfg.batch_normalize and cfg.mode != "none":
        if cfg.mode.startswith("sequence"):
            norm = ops.masked_mean(ops.masked_mean(weight, keep, -1), rows)
        else:
            norm = mean
        weight = weight / norm if norm > 1e-8 else weight
    return weight, kept, metrics


@register(
    "token_filter",
    "rollout_is",
    config=RolloutISConfig,
    paper=PAPERS,
    metrics=tuple(f"rollout_corr/{k}" for k in STATS),
    needs=("rollout_logp",),
)
def rollout_is(
    mask: torch.Tensor,
    *,
    cfg: RolloutISConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    truncated: torch.Tensor,
    rollout_logp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Rollout correction (decoupled mode): truncated / masked IS weights and rejection of pi_old / pi_rollout.

    Papers: TIS, Yao et al. 2025 (fengyao.notion.site/off-policy-rl): w_t = min(rho_t, C); MIS / IcePop,
    arXiv:2510.18855 (Ring-1T, eq. of M(k) = k on [alpha, beta], else 0) and Liu et al. 2025 (sequence-level,
    richardli.xyz/rl-collapse). With rho_t = pi_old(y_t) / pi_rollout(y_t) and rho_seq = prod_t rho_t:

        token_truncate: w_t = clip(rho_t, lower, upper)        sequence_truncate: w_t = clip(rho_seq, lower, upper)
        token_mask:     w_t = rho_t 1[lower <= rho_t <= upper]  sequence_mask:     w_t = rho_seq 1[...rho_seq...]
        L_t = w_t * L^policy_t (w detached); ``reject`` (verl ``rollout_rs``) also masks out tokens / sequences

    Engine names: TRL ``vllm_importance_sampling_mode`` = ``mode`` with ``clip_max`` / ``clip_min`` = ``upper``
    / ``lower``; verl ``rollout_is="token"|"sequence"`` with a float ``rollout_is_threshold`` = ``*_truncate``
    (``lower=None``), with ``"lower_upper"`` (IcePop) = ``*_mask``; ``rollout_is=None`` = ``none``; verl
    ``rollout_rs`` / ``rollout_rs_threshold`` = ``reject`` / ``reject_high`` (and ``reject_low``), e.g. verl's
    geometric RS (``seq_mean_k1``) and ``decoupled_seq_is_rs`` = sequence_truncate + ``seq_sum_k1``.

    Args:
        mask: ``[B, T]`` response mask, bool or float.
        cfg: :class:`RolloutISConfig`.
        entropy: ``[B, T]``, unused.  advantages: ``[B, 1]`` | ``[B, T]``, unused.  truncated: ``[B]``, unused.
        old_logp: ``[B, T]`` the trainer's recomputed log-probs of the policy before the update (pi_old).
        rollout_logp: ``[B, T]`` the sampler's log-probs (pi_rollout, ``needs=("rollout_logp",)``).

    Returns:
        ``(weight [B, T], mask [B, T], metrics)``: the detached weight (0 on padding), the mask with rejected
        tokens set to 0 (mask's dtype). Metric keys (masked means over the given tokens, see
        :func:`rollout_correction`): ``rollout_corr/is_mean``, ``rollout_corr/is_min``, ``rollout_corr/is_max``,
        ``rollout_corr/is_frac_high``, ``rollout_corr/is_frac_low``, ``rollout_corr/is_ess``,
        ``rollout_corr/frac_rejected``, ``rollout_corr/seq_frac_rejected``, ``rollout_corr/kl``,
        ``rollout_corr/k3_kl``, ``rollout_corr/logp_abs_diff``.

    Differences from the paper / released code:
        Defaults are the TIS paper's (token, C = 2; verl's function default too); verl's config defaults to
        sequence / 2.0 and TRL's to sequence_mask / 3.0. verl and TRL disagree: verl clamps log rho (and the
        sequence sum) to +-20 before exp, TRL does not (same weights unless a bound exceeds e^20); verl's TIS
        has no lower bound, TRL's truncation clamps at ``clip_min`` too (``lower``); a NaN sampler log-prob is
        rho = 1 in TRL (kept here) and NaN in verl; both zero-weight the *_mask drops (the denominator keeps
        them), while verl's ``rollout_rs`` masks out. verl's k1 bounds apply to 1 / rho (its k1 is -log rho);
        here they bound rho, so verl's ``"l_u"`` is ``reject_low=1/u, reject_high=1/l`` (equal when symmetric).
        One ``reject`` option (verl chains several). TRL logs sequence-mode ratio stats per sequence and verl
        its sequence max/min from the raw ratio; here all are token means of the applied weight. The weights
        are computed per call (one minibatch), so ``batch_normalize`` averages over the minibatch (verl: the
        whole step's batch).

    Example:
        >>> cfg = RolloutISConfig(mode="token_truncate", upper=2.0)
        >>> old, roll = torch.log(torch.tensor([[0.9, 0.3, 0.2]])), torch.log(torch.tensor([[0.3, 0.3, 0.4]]))
        >>> w, m, stats = rollout_is(torch.ones(1, 3), cfg=cfg, entropy=None, old_logp=old, advantages=None,
        ...                          truncated=None, rollout_logp=roll)
        >>> [round(x, 4) for x in w[0].tolist()], round(stats["rollout_corr/is_frac_high"].item(), 4)
        ([2.0, 1.0, 0.5], 0.3333)
    """
    weight, kept, metrics = rollout_correction(old_logp, rollout_logp, mask, cfg)
    new_mask = torch.where(kept, mask, torch.zeros_like(mask))  # [B, T]
    return weight, new_mask, {f"rollout_corr/{k}": v for k, v in metrics.items()}


@register(
    "policy_loss",
    "reinforce_is",
    config=RolloutISConfig,
    paper=PAPERS,
    metrics=("kl/approx_old", *(f"reinforce_is/{k}" for k in STATS)),
)
def reinforce_is(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: RolloutISConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE with rollout-correction weights of the current policy (verl's bypass mode, ``reinforce``).

    verl ``compute_policy_loss_bypass_mode`` with ``loss_type="reinforce"`` (presets ``bypass_pg_is``,
    ``bypass_pg_geo_rs``, ...; Liu et al. 2025, richardli.xyz/rl-collapse): old_logp is the sampler's, no
    recomputation; with rho_t = sg(pi_theta(y_t)) / pi_rollout(y_t) and w, keep from :func:`rollout_correction`

        L_t = -A_t * w_t * log pi_theta(y_t)   on kept tokens (0 on rejected ones)

    so the gradient is -A w grad log pi (w detached); ``mode="none"`` is vanilla REINFORCE, -A log pi.

    Args:
        logp: ``[B, T]`` current log-probs (carry the gradient; rho uses them detached).
        old_logp: ``[B, T]`` the sampler's log-probs (pi_rollout; entrolab's default behaviour log-probs).
        advantages: ``[B, 1]`` or ``[B, T]``.  mask: ``[B, T]`` 1 on tokens that count.
        cfg: :class:`RolloutISConfig` (verl ``bypass_pg_is`` = ``mode="sequence_truncate", upper=2.0``).
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0 or the token is rejected. Metric keys:
        ``kl/approx_old`` mean(old_logp - logp) (verl ``actor/ppo_kl``), and :func:`rollout_correction`'s of
        rho under ``reinforce_is/``: ``reinforce_is/is_mean``, ``reinforce_is/is_min``, ``reinforce_is/is_max``,
        ``reinforce_is/is_frac_high``, ``reinforce_is/is_frac_low``, ``reinforce_is/is_ess``,
        ``reinforce_is/frac_rejected``, ``reinforce_is/seq_frac_rejected``, ``reinforce_is/kl``,
        ``reinforce_is/k3_kl``, ``reinforce_is/logp_abs_diff``.

    Differences from the paper / released code:
        As verl. Rejected tokens get loss 0 but stay in the aggregation's counts: verl's trainer also divides by
        the minibatch's token / sequence counts from before this in-loss rejection (``global_batch_info``), so
        the two agree except under seq-mean-token-mean with *token*-level rejection, where verl divides each
        sequence by its kept tokens. ``kl/approx_old`` is over the given mask (verl: the kept tokens). The
        weights are per call (one micro-batch), as verl's; its bypass PPO-clip variant is ``ppo_clip``. Bypass
        means no recomputation: with ``rollout_is`` also chosen, old_logp becomes the trainer's recomputation and
        rho here is pi_theta / pi_old (the decoupled ratio), not pi_theta / pi_rollout.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
        >>> old = torch.log(torch.tensor([[0.25, 0.5]]))
        >>> loss, m = reinforce_is(logp, old, torch.tensor([[1.0]]), torch.ones(1, 2), cfg=RolloutISConfig())
        >>> [round(x, 4) for x in loss[0].tolist()], round(m["reinforce_is/is_mean"].item(), 4)
        ([1.3863, 0.6931], 1.5)
    """
    keep = mask.bool()  # [B, T]
    weight, kept, metrics = rollout_correction(logp.detach(), old_logp, mask, cfg)
    use = keep & kept  # [B, T]
    lp = torch.where(use, logp, 0.0)  # [B, T]
    adv = torch.where(use, advantages, 0.0)  # [B, T]
    loss = -adv * weight.to(lp.dtype) * lp  # [B, T]
    out = {f"reinforce_is/{k}": v for k, v in metrics.items()}
    out["kl/approx_old"] = ops.masked_mean(torch.where(keep, old_logp - logp.detach(), 0.0), keep)
    return loss, out
