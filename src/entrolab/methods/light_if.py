"""Light-IF: TEA-RL's covariance-weighted token entropy bonus, and the entropy-preserving SFT loss.

``tea_rl`` is a regulariser (it needs the advantages, ``needs=("advantages",)``). ``entropy_sft`` is on the
``sft_loss`` axis: the loss of a cold-start / warm-start stage on demonstration tokens (``entrolab pretrain
--loss entropy_sft``), not a term of the RL loss on the policy's own samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register


@dataclass(frozen=True)
class TeaRLConfig:
    """Options of TEA-RL's token-wise entropy bonus."""

    alpha: float = 10.0
    """alpha_c: the softmax weights of a response sum to alpha before clamping (``cov_alpha``)."""
    weight_max: float = 5.0
    """Upper clamp of a token's weight (``clip_cov_ub``)."""
    weights_grad: bool = False
    """True: as the released code, the weights are differentiable through logp (the paper's bonus is not)."""

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"tea_rl alpha must be >= 0, got {self.alpha}")
        if not self.weight_max > 0:
            raise ValueError(f"tea_rl weight_max must be > 0, got {self.weight_max}")


@register(
    "regularizer",
    "tea_rl",
    config=TeaRLConfig,
    paper="arXiv:2508.03178",
    metrics=("tea_rl/weight_mean", "tea_rl/bonus_mean"),
    needs=("advantages",),
)
def tea_rl(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: TeaRLConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TEA-RL entropy bonus: -w_t H_t, w = clamp(alpha softmax_t(Cov_t), 0, ub) within each response.

    Paper: Light-IF, arXiv:2508.03178 (token-wise entropy-adaptive RL, TEA-RL); equations as the released
    ``compute_entropy_with_cov`` (``Qihoo360/Light-IF`` rl/verl core_algos.py). Means over the valid tokens:

        Cov_t = (A_t - mean A) (logp_t - mean logp)
        w_t   = clamp(alpha * softmax over t of response i (Cov, -inf on padding), 0, weight_max)
        term_t = -w_t H_t

    Args:
        logp: ``[B, T]`` current log-prob of the sampled tokens (enters the weights, detached by default).
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`TeaRLConfig`.
        entropy: ``[B, T]`` full-distribution entropy of the current forward pass (carries the gradient).
        old_logp: unused.  ref_logp: unused.
        advantages: ``[B, 1]`` or ``[B, T]`` (``needs=("advantages",)``).

    Returns:
        ``(term [B, T], metrics)``; 0 where mask is 0. Metric keys: ``tea_rl/weight_mean`` (masked mean of
        w) and ``tea_rl/bonus_mean`` (masked mean of w H).

    Differences from the paper / released code:
        In the released actor this branch is dead: it hangs off ``if loss_mode == "vanilla"`` as
        ``elif entropy_mode == "token-level-cov"`` with ``entropy_mode`` never defined, so the shipped RL
        scripts train plain GRPO. Here the paper's bonus runs. The code's weights carry gradient through logp
        (``weights_grad=True``); by default they are detached, as a weight of the bonus should be. The means
        are over the tokens of the call (one micro-batch, as the code).

    Example:
        >>> adv, logp = torch.tensor([[1.0], [-1.0]]), torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
        >>> term, m = tea_rl(logp, torch.ones(2, 2), cfg=TeaRLConfig(alpha=2.0), entropy=torch.ones(2, 2),
        ...                  old_logp=None, ref_logp=None, advantages=adv)
        >>> [[round(x, 4) for x in row] for row in term.tolist()]
        [[-1.8, -0.2], [-0.2, -1.8]]
    """
    if advantages is None:
        raise ValueError("regularizer 'tea_rl' needs advantages (registered with needs=('advantages',))")
    keep = mask.bool()  # [B, T]
    adv = torch.where(keep, advantages.expand_as(logp), 0.0)  # [B, T]
    lp = torch.where(keep, logp, 0.0)  # [B, T]
    lp_w = lp if cfg.weights_grad else lp.detach()
    cov = (adv - ops.masked_mean(adv, mask)) * (lp_w - ops.masked_mean(lp.detach(), mask))  # [B, T]
    fill = torch.where(keep.any(-1, keepdim=True), -torch.inf, 0.0)  # [B, 1]; an empty row stays finite
    soft = torch.softmax(torch.where(keep, cov, fill), dim=-1)  # [B, T]
    w = torch.where(keep, (cfg.alpha * soft).clamp(0.0, cfg.weight_max), 0.0)  # [B, T]
    bonus = w * torch.where(keep, entropy, 0.0)  # [B, T]
    metrics = {
        "tea_rl/weight_mean": ops.masked_mean(w.detach(), mask),
        "tea_rl/bonus_mean": ops.masked_mean(bonus.detach(), mask),
    }
    return -bonus, metrics


@dataclass(frozen=True)
class EntropySFTConfig:
    """Options of the entropy-preserving SFT loss."""

    token_ratio: float = 0.8
    """rho: fraction of the supervised tokens trained on (the authors' main cold-start run; their function's
    default is 0.2)."""
    entropy_coef: float = 0.8
    """lambda in delta = CE - lambda H (the authors' main cold-start run; their function's default is 1.0)."""

    def __post_init__(self) -> None:
        if not 0 < self.token_ratio <= 1:
            raise ValueError(f"entropy_sft token_ratio must be in (0, 1], got {self.token_ratio}")
        if not self.entropy_coef >= 0:
            raise ValueError(f"entropy_sft entropy_coef must be >= 0, got {self.entropy_coef}")


@register(
    "sft_loss",
    "entropy_sft",
    config=EntropySFTConfig,
    paper="arXiv:2508.03178",
    metrics=("sft/ce_mean", "sft/ce_selected_mean", "sft/entropy_selected_mean", "sft/frac_selected"),
)
def entropy_sft(
    logp: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, *, cfg: EntropySFTConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy-SFT: cross-entropy on the top rho of supervised tokens by CE - lambda H (mask-out selection).

    Paper: Light-IF, arXiv:2508.03178 (entropy-preserving SFT); code ``EntropyLossTrainer`` /
    ``build_entropy_loss_func``. Over the N supervised tokens given (flattened):

        delta_t = CE_t - lambda H_t,   S = top-k of delta with k = max(1, floor(rho N)),   loss = mean_{t in S} CE_t

    Args:
        logp: ``[B, T]`` log-prob of the label tokens (carries the gradient); CE = -logp.
        entropy: ``[B, T]`` full-distribution entropy at those positions (only ranks; no gradient used).
        mask: ``[B, T]`` 1 on supervised tokens.
        cfg: :class:`EntropySFTConfig`.

    Returns:
        ``(loss [B, T], selected [B, T] bool, metrics)``; loss = CE on selected tokens, 0 elsewhere. Reduce with
        ``aggregate(loss, selected, "token-mean")`` to get the mean over S. Metric keys: ``sft/ce_mean`` (all
        supervised tokens), ``sft/ce_selected_mean``, ``sft/entropy_selected_mean``, ``sft/frac_selected``.

    Differences from the paper / released code:
        Defaults are the authors' main cold-start run (rho = lambda = 0.8), not their function's defaults
        (0.2 / 1.0). The selection is over the tokens of the call (one micro-batch, as the code); the
        code's ``num_items_in_batch`` variant, sum_S CE / floor(rho num_items), is
        ``aggregate(loss, selected, "token-mean", num_tokens=floor(rho * num_items))``.

    Example:
        >>> ce, h = torch.tensor([[2.0, 0.5, 1.0, 3.0]]), torch.tensor([[0.1, 0.2, 2.5, 2.0]])
        >>> loss, sel, m = entropy_sft(-ce, h, torch.ones(1, 4), cfg=EntropySFTConfig(token_ratio=0.5))
        >>> sel.tolist(), m["sft/ce_selected_mean"].item()
        ([[True, False, False, True]], 2.5)
    """
    keep = mask.bool()  # [B, T]
    ce = -torch.where(keep, logp, 0.0)  # [B, T]
    delta = ce.detach() - cfg.entropy_coef * torch.where(keep, entropy.detach(), 0.0)  # [B, T]
    n = int(keep.sum())
    selected = torch.zeros_like(keep).flatten()  # [B * T]
    if n:
        k = max(1, int(cfg.token_ratio * n))
        selected[delta.masked_fill(~keep, -torch.inf).flatten().topk(k).indices] = True
    selected = selected.view_as(keep)  # [B, T]
    metrics = {
        "sft/ce_mean": ops.masked_mean(ce.detach(), mask),
        "sft/ce_selected_mean": ops.masked_mean(ce.detach(), selected),
        "sft/entropy_selected_mean": ops.masked_mean(entropy.detach(), selected),
        "sft/frac_selected": ops.masked_mean(selected.float(), mask),
    }
    return torch.where(selected, ce, 0.0), selected, metrics
