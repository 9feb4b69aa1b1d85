"""SIREN: an anchored entropy regulariser on the top-p entropy of each response's peak-entropy tokens.

Two pieces: the ``siren`` regulariser (needs the full tempered logits) and the ``siren_anchor`` schedule,
which records the regularised statistic once, after the first step, and holds it as the anchor. The anchor is
controller state (``state=("anchor",)``): the composer passes it as ``state={"anchor": H_0}``, never in the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from entrolab import ops
from entrolab.registry import register

Nucleus = Literal["exclusive", "inclusive"]
Penalty = Literal["batch_scalar", "per_token"]
Average = Literal["all_responses", "responses_with_peak"]


@dataclass(frozen=True)
class SirenConfig:
    """Options of the SIREN regulariser."""

    coef: float = 0.005
    """lambda, weight of the squared deviation (``entropy_coeff`` in ``exp_scripts/siren.sh``)."""
    top_p: float = 0.8
    """Nucleus mass of the vocabulary mask (``entropy_topp``)."""
    top_k: int = 10000
    """The nucleus is taken among the top-k logits (``entropy_topk``); min(top_k, V) is used."""
    quantile: float = 0.8
    """Per-response quantile of the top-p entropy above which a position is a peak (``mask_ratio``)."""
    nucleus: Nucleus = "exclusive"
    """exclusive: the token whose cumulative mass crosses top_p is left out (as the code); inclusive: kept."""
    penalty: Penalty = "batch_scalar"
    """batch_scalar (the code): lambda (H_hat - H_0)^2 is one 0-dim term per micro-batch; per_token: every valid
    token carries it and the aggregation reduces it with the policy loss (entrolab before this option)."""
    average: Average = "all_responses"
    """all_responses (the code): H_hat is the mean over every response with a valid token, one without a peak
    counting 0; responses_with_peak: the mean over the responses that have a peak only."""

    def __post_init__(self) -> None:
        if not self.coef >= 0:
            raise ValueError(f"siren coef must be >= 0, got {self.coef}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"siren top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise ValueError(f"siren top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.quantile < 1:
            raise ValueError(f"siren quantile must be in [0, 1), got {self.quantile}")
        for name, allowed in (
            ("nucleus", ("exclusive", "inclusive")),
            ("penalty", ("batch_scalar", "per_token")),
            ("average", ("all_responses", "responses_with_peak")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"siren {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")


def topp_entropy(logits: torch.Tensor, top_p: float, top_k: int, nucleus: Nucleus = "exclusive") -> torch.Tensor:
    """Entropy of softmax(logits) restricted to its top-p nucleus (among the top-k) and renormalised.  [..., V] -> [...]

    0 (with zero gradient) when the nucleus holds one token, e.g. when the top-1 probability reaches top_p
    in exclusive mode.
    """
    logits = logits.float()
    top, _ = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [..., k], sorted descending
    probs = torch.exp(top - torch.logsumexp(logits, dim=-1, keepdim=True))  # [..., k] full-vocabulary probs
    cum = probs.detach().cumsum(-1)  # [..., k]
    keep = cum < top_p if nucleus == "exclusive" else cum - probs.detach() < top_p  # [..., k]
    keep[..., 0] = True  # an empty nucleus is scored as the top-1 alone: entropy 0, gradient 0
    lse = torch.logsumexp(top.masked_fill(~keep, -torch.inf), dim=-1, keepdim=True)  # [..., 1]
    logq = torch.where(keep, top - lse, 0.0)  # [..., k] log of the renormalised nucleus probabilities
    return -(torch.where(keep, logq.exp(), 0.0) * logq).sum(-1)


@register(
    "regularizer",
    "siren",
    config=SirenConfig,
    paper="arXiv:2509.25133",
    metrics=("entropy/topp_peak_mean", "siren/peak_frac", "siren/penalty"),
    needs=("logits",),
    state=("anchor",),
)
def siren(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SirenConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    logits: torch.Tensor | None = None,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SIREN: lambda (H_hat - H_0)^2 on the top-p entropy of the peak-entropy positions, one scalar per micro-batch.

    Paper: SIREN, arXiv:2509.25133 (top-p mask, peak-entropy mask, self-anchored regularisation); equations as
    the released code, ``Linn3a/siren`` @ fa59a8d: ``verl/verl/workers/actor/dp_actor.py``
    (``efficient_top_p_sampling``, ``mask_by_quantile``, ``DataParallelPPOActor.update_policy``, branch
    ``experiment_type == "siren"``) and ``verl/verl/trainer/ppo/core_algos.py`` (``agg_loss``,
    ``seq-mean-token-mean``):

        H^top_t = entropy of p restricted to {j : cum_j < top_p} among the top-k, renormalised
        M_it    = 1[H^top_it > tau_i],  tau_i = quantile_q({H^top_it : m_it = 1})   (per response, linear)
        H_hat   = (1 / |R|) sum_{i in R} ( sum_t M H^top / sum_t M ),  a response without a peak giving 0
                  (R: the responses with a valid token; ``average="responses_with_peak"``: those with a peak)
        term    = lambda (H_hat - H_0)^2, a 0-dim batch scalar  (``penalty="per_token"``: on every valid token)

    Args:
        logp: ``[B, T]``, unused.  entropy: ``[B, T]``, unused.  old_logp, ref_logp: unused.
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`SirenConfig`.
        logits: ``[B, T, V]`` tempered logits of the current forward pass, with gradient (the composer passes
            them because of ``needs=("logits",)``); positions where mask is 0 are never read.
        state: controller values, ``{"anchor": H_0}`` once ``siren_anchor`` has recorded it; a missing
            anchor (the first step, or ``{}``/None) means no penalty.

    Returns:
        ``(term, metrics)``; term is 0-dim (``penalty="batch_scalar"``: the composer adds it once per
        micro-batch, weighted by the micro-batch's share of the minibatch's sequences) or ``[B, T]``
        (``"per_token"``: the penalty on valid tokens, 0 where mask is 0). Metric keys:
        ``entropy/topp_peak_mean`` (H_hat, what the anchor records), ``siren/peak_frac`` (fraction of valid
        tokens in the peak mask), ``siren/penalty`` (lambda (H_hat - H_0)^2).

    Differences from the paper / released code:
        Defaults follow the code. (1) ``penalty="batch_scalar"``: ``update_policy`` adds
        ``entropy_loss_mse * entropy_coeff`` (a scalar) to each micro-batch's ``pg_loss`` and scales the sum by
        ``len(data) / ppo_mini_batch_size`` (``siren.sh`` runs ``use_dynamic_bsz=True``; else
        ``1 / gradient_accumulation``): the composer's share weighting. ``"per_token"`` spreads it over the
        valid tokens and re-aggregates it: equal under token-mean (up to token vs sequence share) and
        seq-mean-token-mean, but under seq-mean-token-sum-norm (SIREN's PG mode) lambda shrinks by
        tokens / (seqs * norm_len). (2) ``average="all_responses"``: the code's ``agg_loss`` gives 0 to a row
        with no token in the peak mask and means over all rows (commit fa59a8d; before it 0/0 gave nan);
        ``"responses_with_peak"`` leaves such responses out. A response whose mask is all 0 is no response
        of the loss here (as the seq-mean aggregations); the code's rows always hold tokens. With no peak at
        all, ``all_responses`` gives H_hat = 0 and a constant lambda H_0^2 (no gradient), as the code;
        ``responses_with_peak`` gives 0. The anchor is the logged H_hat of step 1 (``siren_anchor``, on the
        current pass); the code's ``ray_trainer.py`` computes it at global step 1 from the old-policy
        recompute of the whole batch. The code applies ``mask_by_quantile`` twice (``use_siren`` replaces the
        entropy by its masked copy, then the siren branch masks that): the second quantile lies below every
        kept value, so the positions are the same, and one mask is applied here. The code's mask is not
        intersected with the response mask; here only valid tokens are peaks. The code falls back to the
        full entropy when V < top_k (try/except); here min(top_k, V) is used. ``mask_ratio_upper`` is read
        but unused by ``mask_by_quantile`` and is not offered.

    Example:
        >>> logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
        >>> round(topp_entropy(logits, 0.8, 5).item(), 5), round(topp_entropy(logits, 0.8, 5, "inclusive").item(), 5)
        (0.59827, 0.95869)
        >>> z = torch.zeros(2, 5, 3)
        >>> z[:, :, 0] = torch.tensor([9.0, 2.0, 1.0, 0.0, -1.0])  # only t = 3 is uniform (entropy ln 3)
        >>> cfg = SirenConfig(coef=1.0, top_p=1.0, nucleus="inclusive")  # full entropy
        >>> mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])  # response 1: one token, no peak
        >>> term, m = siren(None, mask, cfg=cfg, entropy=None, old_logp=None, ref_logp=None, logits=z,
        ...                 state={"anchor": 0.0})
        >>> term.shape, round(m["entropy/topp_peak_mean"].item(), 4), round(term.item(), 4)  # (ln 3 + 0) / 2
        (torch.Size([]), 0.5493, 0.3017)
    """
    if logits is None:
        raise ValueError("regularizer 'siren' needs logits [B, T, V] (registered with needs=('logits',))")
    anchor = (state or {}).get("anchor")
    if anchor is not None and not anchor >= 0:
        raise ValueError(f"siren state anchor must be >= 0, got {anchor}")
    keep = mask.bool()  # [B, T]
    logits = torch.where(keep.unsqueeze(-1), logits, 0.0)  # [B, T, V] padding never read
    h = topp_entropy(logits, cfg.top_p, cfg.top_k, cfg.nucleus)  # [B, T], with gradient
    tau = torch.nanquantile(h.detach().masked_fill(~keep, torch.nan), cfg.quantile, dim=-1, keepdim=True)  # [B, 1]
    peak = keep & (h.detach() > tau)  # [B, T]; a response with no valid token has tau = nan: no peak
    row_mean = ops.masked_mean(h, peak, dim=-1)  # [B], 0 for a response without a peak
    rows = keep.any(-1) if cfg.average == "all_responses" else peak.any(-1)  # [B] responses H_hat averages
    h_hat = ops.masked_mean(row_mean, rows)
    target = h_hat.detach() if anchor is None else torch.tensor(anchor, dtype=h_hat.dtype, device=h_hat.device)
    penalty = cfg.coef * (h_hat - target).square() * rows.any()
    term = penalty if cfg.penalty == "batch_scalar" else torch.where(keep, penalty, 0.0)  # [] or [B, T]
    metrics = {
        "entropy/topp_peak_mean": h_hat.detach(),
        "siren/peak_frac": ops.masked_mean(peak.float(), mask),
        "siren/penalty": penalty.detach(),
    }
    return term, metrics


@dataclass(frozen=True)
class SirenAnchorConfig:
    """Options of the SIREN anchor recorder."""

    observe: str = "entropy/topp_peak_mean"
    """The logged metric recorded as H_0 (the ``siren`` regulariser's H_hat)."""

    def __post_init__(self) -> None:
        if not self.observe:
            raise ValueError("siren_anchor observe must name a logged metric, got ''")


@register(
    "schedule",
    "siren_anchor",
    config=SirenAnchorConfig,
    paper="arXiv:2509.25133",
    sets=lambda cfg: ("siren.anchor",),
    reads=lambda cfg: (cfg.observe,),
)
def siren_anchor(
    state: dict[str, float],
    observed: dict[str, float],
    *,
    cfg: SirenAnchorConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """SIREN's anchor: record H_hat after the first step that logs it and hold it for the rest of training.

    Paper: SIREN, arXiv:2509.25133 (self-anchored regularisation); code: ``ray_trainer.py`` computes the
    anchor once at global step 1 and passes it back unchanged every step.

    Args:
        state: ``{}`` until the anchor is recorded, then ``{"anchor": H_0}``.
        observed: the previous step's logged metrics; reads ``cfg.observe``.
        cfg: :class:`SirenAnchorConfig`.
        step: unused.  total_steps: unused.

    Returns:
        ``(state, values)``; values is ``{"siren.anchor": H_0}`` once recorded, ``{}`` before. ``anchor`` is a
        declared state name of ``siren``, so the composer passes it as ``state={"anchor": H_0}``; this
        ``state`` dict is what the checkpoint keeps.

    Differences from the paper / released code:
        The recorded value is step 1's logged H_hat, averaged over step 1's micro-batches on the current
        forward pass; the code uses step 1's old-policy recompute of the whole batch.

    Example:
        >>> state, values = siren_anchor({}, {}, cfg=SirenAnchorConfig(), step=1, total_steps=9)
        >>> values
        {}
        >>> state, values = siren_anchor(state, {"entropy/topp_peak_mean": 0.7}, cfg=SirenAnchorConfig(), step=2,
        ...                              total_steps=9)
        >>> siren_anchor(state, {"entropy/topp_peak_mean": 0.1}, cfg=SirenAnchorConfig(), step=3, total_steps=9)[1]
        {'siren.anchor': 0.7}
    """
    if "anchor" not in state and cfg.observe in observed:
        state = {"anchor": float(observed[cfg.observe])}
    return dict(state), ({"siren.anchor": state["anchor"]} if "anchor" in state else {})
