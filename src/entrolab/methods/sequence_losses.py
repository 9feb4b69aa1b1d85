"""Sequence-level policy losses: GSPO, its length-unbiased LUSPO, GMPO's geometric mean, VESPO's gamma kernel.

GSPO, LUSPO and GMPO have one term per sequence. Each is written per token: entry (i, t) holds the value of
sequence i's term and carries the gradient of that term w.r.t. logp_it times n_i (n_i = valid tokens of row i),
the stop-gradient construction of GSPO-token (arXiv:2507.18071). So ``seq-mean-token-mean`` reduces the loss to
the mean of the sequence terms, value and gradient; any aggregation with one weight per sequence reduces it
exactly (``seq-mean-token-sum`` weights term i by n_i: LUSPO; ``token-mean`` by n_i / num_tokens). VESPO is a
REINFORCE-style loss per token, reduced by ``token-mean``. Entries where ``mask`` is 0 are exactly 0 and their
inputs are never read, so padding may hold any value (inf/nan included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register

SEQ_METRICS = (
    "clip/frac_low",
    "clip/frac_high",
    "clip/seq_frac_low",
    "clip/seq_frac_high",
    "ratio/seq_mean",
    "kl/approx_old",
)
VESPO_LOG_W_MIN = math.log(1e-8)
"""log w of VESPO is clamped to [log 1e-8, 20] before the kernel, as TRL ``get_gamma_weights`` does."""


def _row_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, T]`` over each row's valid tokens: ``[B]`` (0 on a row with none)."""
    return torch.where(keep, x, 0.0).sum(-1) / keep.sum(-1).clamp(min=1)


def _check_clip(name: str, eps_low: float, eps_high: float, log_ratio_max: float | None = None) -> None:
    if not 0 <= eps_low < 1:
        raise ValueError(f"{name} eps_low must be in [0, 1), got {eps_low}")
    if not eps_high >= 0:
        raise ValueError(f"{name} eps_high must be >= 0, got {eps_high}")
    if log_ratio_max is not None and not log_ratio_max > 0:
        raise ValueError(f"{name} log_ratio_max must be > 0 or None, got {log_ratio_max}")


@dataclass(frozen=True)
class GSPOConfig:
    """Options of GSPO's sequence-level clipped surrogate (defaults: the GSPO paper, §5.1)."""

    eps_low: float = 3e-4
    """Lower clip of the sequence ratio s_i at 1 - eps_low (acts when A < 0). verl ``clip_ratio_low``."""
    eps_high: float = 4e-4
    """Upper clip of s_i at 1 + eps_high (acts when A > 0). verl ``clip_ratio_high``, TRL ``epsilon_high``."""
    log_ratio_max: float | None = 10.0
    """Upper clamp on log s_i before exp, as verl (gradient 0 above it); None: no clamp, as TRL."""

    def __post_init__(self) -> None:
        _check_clip("gspo", self.eps_low, self.eps_high, self.log_ratio_max)


def _gspo(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cfg: GSPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's per-token loss and metrics, shared by :func:`gspo` and :func:`luspo`."""
    keep = mask.bool()  # [B, T]
    logp = torch.where(keep, logp, 0.0)  # [B, T]
    log_ratio = logp - torch.where(keep, old_logp, 0.0)  # [B, T]
    log_seq = _row_mean(log_ratio, keep).detach()  # [B] log s_i
    log_tok = (logp - logp.detach()) + log_seq.unsqueeze(-1)  # [B, T] value log s_i, gradient of log pi_t
    if cfg.log_ratio_max is not None:
        log_tok = log_tok.clamp(max=cfg.log_ratio_max)
    ratio = torch.exp(log_tok)  # [B, T] s_i on every token of row i
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high))  # [B, T]
    with torch.no_grad():
        low = ((adv < 0) & (ratio < 1.0 - cfg.eps_low)).to(ratio.dtype)  # [B, T]
        high = ((adv > 0) & (ratio > 1.0 + cfg.eps_high)).to(ratio.dtype)  # [B, T]
        rows = keep.any(-1)  # [B] sequences with a valid token
        metrics = {
            "clip/frac_low": ops.masked_mean(low, mask),
            "clip/frac_high": ops.masked_mean(high, mask),
            "clip/seq_frac_low": ops.masked_mean(_row_mean(low, keep), rows),
            "clip/seq_frac_high": ops.masked_mean(_row_mean(high, keep), rows),
            "ratio/seq_mean": ops.masked_mean(torch.exp(log_seq.clamp(max=cfg.log_ratio_max or math.inf)), rows),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@register("policy_loss", "gspo", config=GSPOConfig, paper="arXiv:2507.18071", metrics=SEQ_METRICS)
def gspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: GSPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO: PPO's clipped surrogate on the length-normalised sequence ratio s_i, per token (GSPO-token form).

    Paper: GSPO, arXiv:2507.18071, eq. 5 and its GSPO-token variant. With s_i = exp(mean_t log(pi / pi_old)) over
    row i's valid tokens and s_it = sg(s_i) pi_t / sg(pi_t) (value s_i, gradient s_i grad log pi_t):

        L_it = max(-A_it s_it, -A_it clip(s_it, 1 - eps_low, 1 + eps_high))

    reduced with ``seq-mean-token-mean`` this is eq. 5, -1/G sum_i min(s_i A_i, clip(s_i) A_i), value and gradient.

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]`` (GSPO) or ``[B, T]`` (GSPO-token: each token its own advantage).
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`GSPOConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys: ``clip/frac_low`` / ``clip/frac_high``
        fraction of tokens whose gradient the lower (A < 0, s_i < 1 - eps_low) / upper (A > 0, s_i > 1 +
        eps_high) clip removes; ``clip/seq_frac_low`` / ``clip/seq_frac_high`` the same as a mean over sequences
        (each sequence weighted once); ``ratio/seq_mean`` mean of s_i over sequences; ``kl/approx_old`` token mean
        of old_logp - logp (k1).

    Differences from the paper / released code:
        The form and the log s_i <= 10 clamp are verl's ``gspo``; TRL (``importance_sampling_level="sequence"``)
        back-propagates through exp(mean) of a ``[B, 1]`` ratio instead and does not clamp
        (``log_ratio_max=None``): with one advantage per sequence both have the same value and gradient under every
        aggregation. The paper reduces by ``seq-mean-token-mean`` (verl's function default, TRL
        ``loss_type="grpo"``); verl's actor default ``token-mean`` and TRL's bnpo/dapo/dr_grpo weight sequences by
        length. TRL's grpo and dr_grpo divide by all B rows, entrolab's counts skip empty rows. verl's
        ``pg_clipfrac`` is ``clip/frac_low + clip/frac_high``; TRL's ``clip_ratio/low_mean`` / ``high_mean`` are
        the ``clip/seq_frac_*`` keys (TRL also counts empty rows). Garbage padding gives an exact 0.

    Example:
        >>> old = torch.zeros(2, 3)
        >>> logp = torch.tensor([[0.3, 0.0, 0.0], [-0.03, -0.03, 0.0]])  # s = (1.105, 0.970)
        >>> loss, m = gspo(logp, old, torch.tensor([[1.0], [-1.0]]), torch.tensor([[1.0, 1, 1], [1, 1, 0]]),
        ...                cfg=GSPOConfig(eps_low=0.2, eps_high=0.05))
        >>> [round(x, 4) for x in loss.sum(-1).tolist()]
        [-3.15, 1.9409]
        >>> m["clip/seq_frac_high"].item(), round(m["clip/frac_high"].item(), 4)
        (0.5, 0.6)
    """
    return _gspo(logp, old_logp, advantages, mask, cfg)


@register("policy_loss", "luspo", config=GSPOConfig, paper="arXiv:2602.05261", metrics=SEQ_METRICS)
def luspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: GSPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LUSPO: GSPO's sequence term weighted by the response length |y_i|; use with ``seq-mean-token-sum``.

    Paper: LUSPO, arXiv:2602.05261: GSPO (arXiv:2507.18071, eq. 5) with each sequence's term scaled by its length,
    which removes GSPO's bias towards short responses:

        J = 1/G sum_i |y_i| min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)

    The per-token loss is :func:`gspo`'s; the factor |y_i| comes from the aggregation: ``seq-mean-token-sum``
    gives J exactly (TRL ``loss_type="luspo"``: ``(loss * mask).sum(-1).mean()``), ``token-mean`` gives J times
    G / sum_i |y_i| (the same direction), ``seq-mean-token-mean`` gives plain GSPO.

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]`` or ``[B, T]``.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`GSPOConfig` (LUSPO changes only the length weight, so it takes GSPO's options).
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys as :func:`gspo`: ``clip/frac_low``,
        ``clip/frac_high`` (token fractions clipped), ``clip/seq_frac_low``, ``clip/seq_frac_high`` (sequence
        fractions), ``ratio/seq_mean`` (mean s_i), ``kl/approx_old`` (token mean of old_logp - logp).

    Differences from the paper / released code:
        TRL differentiates through the ``[B, 1]`` ratio and does not clamp (``log_ratio_max=None``; same value and
        gradient with one advantage per sequence) and divides by all B rows (entrolab's count skips empty rows).
        LUSPO's own clip range was not available to us: the defaults are GSPO's paper's (3e-4, 4e-4); TRL's
        GRPOConfig default ``epsilon=0.2`` is a token-level range.

    Example:
        >>> mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
        >>> loss, _ = luspo(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1.0], [1.0]]), mask, cfg=GSPOConfig())
        >>> from entrolab.methods.aggregation import aggregate
        >>> aggregate(loss, mask, "seq-mean-token-sum").item()  # -(3 * 1 + 1 * 1) / 2
        -2.0
    """
    return _gspo(logp, old_logp, advantages, mask, cfg)


@dataclass(frozen=True)
class GMPOConfig:
    """Options of GMPO's geometric mean of clipped token ratios (defaults: the GMPO paper, range (e^-0.4, e^0.4))."""

    eps_low: float = 0.4
    """Lower clip of each token's log-ratio at -eps_low, i.e. the ratio at exp(-eps_low) (acts when A < 0)."""
    eps_high: float = 0.4
    """Upper clip of each token's log-ratio at eps_high, i.e. the ratio at exp(eps_high) (acts when A > 0)."""

    def __post_init__(self) -> None:
        if not self.eps_low >= 0:
            raise ValueError(f"gmpo eps_low must be >= 0 (a log-space range), got {self.eps_low}")
        if not self.eps_high >= 0:
            raise ValueError(f"gmpo eps_high must be >= 0 (a log-space range), got {self.eps_high}")


@register(
    "policy_loss",
    "gmpo",
    config=GMPOConfig,
    paper="arXiv:2507.20673",
    metrics=("clip/frac_low", "clip/frac_high", "ratio/seq_mean", "kl/approx_old"),
)
def gmpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: GMPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO: the advantage times the geometric mean of the token ratios, each clipped in log space, per sequence.

    Paper: GMPO, arXiv:2507.20673 (its objective, code github.com/callsys/GMPO). With x_t = log(pi_t / pi_old,t)
    clipped one-sided by the sign of A (PPO's trust region, in log space)

        c_t = min(x_t, eps_high) if A > 0 else max(x_t, -eps_low),    rho_i = exp(mean_t c_t)
        J = 1/G sum_i A_i rho_i

    Entry (i, t) holds -A_i rho_i with n_i times the gradient of rho_i's token t, so ``seq-mean-token-mean``
    reduces to -J (verl ``geo_mean`` and TRL ``GMPOTrainer``: a plain mean over sequences).

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]``; ``[B, T]`` as verl: A_i is the row's token mean, the clip side each token's sign.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`GMPOConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (token means unless said):
        ``clip/frac_low`` fraction with A < 0 and x < -eps_low (clipped, no gradient); ``clip/frac_high``
        fraction with A > 0 and x > eps_high; ``ratio/seq_mean`` mean of rho_i over sequences;
        ``kl/approx_old`` mean of old_logp - logp (k1).

    Differences from the paper / released code:
        The log-ratio is clamped to +-20 before clipping (neither engine clamps; it changes nothing below e^20).
        The clip fractions are TRL GMPO's ``clip_ratio/low_mean`` / ``high_mean``; verl's ``pg_clipfrac`` /
        ``pg_clipfrac_lower`` count every token outside [-eps_low, eps_high] with A > 0 / A < 0, on either side.
        verl ignores ``loss_agg_mode`` and divides by all B rows (TRL likewise; TRL also adds -A_i for a row with
        no valid token), so parity is ``seq-mean-token-mean`` with ``num_seqs=B``. verl's defaults
        (``clip_ratio=0.2``) are not the paper's 0.4; TRL's GMPOConfig uses 0.4. A token with A = 0 takes the
        lower branch here and in TRL; verl gives it c = 0 (matters only for token-level advantages).

    Example:
        >>> logp = torch.tensor([[0.6, 0.0], [-0.6, 0.2]])  # A > 0 row: c = (0.4, 0); A < 0 row: c = (-0.4, 0.2)
        >>> loss, m = gmpo(logp, torch.zeros(2, 2), torch.tensor([[1.0], [-1.0]]), torch.ones(2, 2),
        ...                cfg=GMPOConfig())
        >>> [round(x, 4) for x in loss[:, 0].tolist()]  # -A exp(mean c)
        [-1.2214, 0.9048]
        >>> m["clip/frac_high"].item(), m["clip/frac_low"].item()
        (0.25, 0.25)
    """
    keep = mask.bool()  # [B, T]
    log_ratio = torch.where(keep, logp - old_logp, 0.0).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    adv = torch.where(keep, advantages, 0.0).expand_as(log_ratio)  # [B, T]
    bounded = log_ratio.clamp(-cfg.eps_low, cfg.eps_high)  # [B, T]
    clipped = torch.where(adv > 0, torch.minimum(log_ratio, bounded), torch.maximum(log_ratio, bounded))  # [B, T]
    seq_ratio = torch.exp(_row_mean(clipped, keep)).detach()  # [B] rho_i
    seq_adv = _row_mean(adv, keep)  # [B] A_i
    loss = -(seq_adv * seq_ratio).unsqueeze(-1) * torch.exp(clipped - clipped.detach())  # [B, T] value -A_i rho_i
    loss = torch.where(keep, loss, 0.0)  # [B, T]
    with torch.no_grad():
        low = ((adv < 0) & (log_ratio < -cfg.eps_low)).to(log_ratio.dtype)  # [B, T]
        high = ((adv > 0) & (log_ratio > cfg.eps_high)).to(log_ratio.dtype)  # [B, T]
        metrics = {
            "clip/frac_low": ops.masked_mean(low, mask),
            "clip/frac_high": ops.masked_mean(high, mask),
            "ratio/seq_mean": ops.masked_mean(seq_ratio, keep.any(-1)),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@dataclass(frozen=True)
class VESPOConfig:
    """Options of VESPO's gamma kernel phi(w) = w^k e^(lambda (1 - w)) (defaults: TRL GRPOConfig = released code)."""

    k_pos: float = 2.0
    """Power k for A >= 0: how strongly sequences with w < 1 are down-weighted. TRL ``vespo_k_pos``."""
    lambda_pos: float = 3.0
    """Decay lambda for A >= 0: how strongly sequences with w > 1 are down-weighted. TRL ``vespo_lambda_pos``."""
    k_neg: float = 3.0
    """Power k for A < 0. TRL ``vespo_k_neg``."""
    lambda_neg: float = 2.0
    """Decay lambda for A < 0. TRL ``vespo_lambda_neg``."""

    def __post_init__(self) -> None:
        for name in ("k_pos", "k_neg"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"vespo {name} must be >= 0, got {getattr(self, name)}")
        for name in ("lambda_pos", "lambda_neg"):
            if not getattr(self, name) > 0:
                raise ValueError(f"vespo {name} must be > 0, got {getattr(self, name)}")


@register(
    "policy_loss",
    "vespo",
    config=VESPOConfig,
    paper="arXiv:2602.10693",
    metrics=("vespo/phi_mean", "vespo/log_w_mean", "kl/approx_old"),
)
def vespo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: VESPOConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VESPO: REINFORCE weighted by a gamma kernel of the whole sequence's importance weight (no clipping).

    Paper: VESPO, arXiv:2602.10693 (code github.com/FloyedShen/VESPO). With the unnormalised sequence weight
    w_i = prod_t pi_t / pi_old,t = exp(sum_t log r_t) and (k, lambda) chosen by the sign of A:

        phi(w) = w^k exp(lambda (1 - w))   (phi(1) = 1, detached),     L_it = -phi(w_i) A_it log pi_t

    so the gradient is phi(w_i) A grad log pi; reduced with ``token-mean`` (the released code's verl default,
    TRL's normalisation by the batch's token count).

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the behaviour policy that sampled them (detached).
        advantages: ``[B, 1]`` or ``[B, T]`` (each token's sign picks its k, lambda).
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`VESPOConfig`.
        entropy: ``[B, T]`` or None; unused.

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0. Metric keys (means over sequences unless said):
        ``vespo/phi_mean`` mean of phi(w_i) (TRL ``vespo/phi_seq_mean``, which also counts empty rows as 1);
        ``vespo/log_w_mean`` mean of the clamped log w_i; ``kl/approx_old`` token mean of old_logp - logp (k1).

    Differences from the paper / released code:
        As TRL ``loss_type="vespo"``: each token's log-ratio clamped to +-20, log w to [log 1e-8, 20]. The
        released code clamps log w to +-20 and then w to >= 1e-8 (a difference below 1e-8 in phi's exponent). The
        loss value is -phi A log pi (TRL's and the released code's), not a ratio. w is pi / old_logp's policy
        (the behaviour policy); TRL multiplies in its vLLM per-token correction and the released code its
        ``rollout_is_weights``, neither of which is an option here. The released docstring lists other defaults
        (1.5, 4.0, 2.5) than its code and TRL (k_pos 2, lambda_pos 3, k_neg 3, lambda_neg 2), used here.

    Example:
        >>> logp = torch.tensor([[0.1, 0.1], [0.0, 0.0]])  # w = (e^0.2, 1)
        >>> loss, m = vespo(logp, torch.zeros(2, 2), torch.tensor([[1.0], [-1.0]]), torch.ones(2, 2),
        ...                 cfg=VESPOConfig())
        >>> [round(x, 4) for x in loss[:, 0].tolist()]  # -phi A logp; phi(e^0.2) = e^(0.4 + 3 (1 - e^0.2))
        [-0.0768, 0.0]
        >>> round(m["vespo/phi_mean"].item(), 4)
        0.8839
    """
    keep = mask.bool()  # [B, T]
    logp = torch.where(keep, logp, 0.0)  # [B, T]
    log_ratio = (logp - torch.where(keep, old_logp, 0.0)).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP)  # [B, T]
    log_w = log_ratio.sum(-1).detach().clamp(VESPO_LOG_W_MIN, ops.LOG_RATIO_CLAMP).unsqueeze(-1)  # [B, 1]
    adv = torch.where(keep, advantages, 0.0)  # [B, T]
    nonneg = adv >= 0  # [B, T]
    k = torch.where(nonneg, log_w.new_tensor(cfg.k_pos), cfg.k_neg)  # [B, T]
    lam = torch.where(nonneg, log_w.new_tensor(cfg.lambda_pos), cfg.lambda_neg)  # [B, T]
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))  # [B, T] phi(w_i) by each token's sign
    loss = -phi * adv * logp  # [B, T]
    with torch.no_grad():
        rows = keep.any(-1)  # [B]
        metrics = {
            "vespo/phi_mean": ops.masked_mean(_row_mean(phi, keep), rows),
            "vespo/log_w_mean": ops.masked_mean(log_w.squeeze(-1), rows),
            "kl/approx_old": ops.masked_mean(-log_ratio, mask),
        }
    return loss, metrics
