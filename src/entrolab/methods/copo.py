"""COPO (Han, Chen, Shao et al., arXiv 2508.04138): a prompt-level global loss for groups whose answers agree.

When all G answers to a prompt agree, GRPO's group advantage is 0 and the prompt teaches nothing. COPO gives
each prompt a global reward (its accuracy, optionally scaled down by the answers' entropy), z-scores it across
the batch's prompts, and blends a PPO loss on that global advantage with the usual local (GRPO) one. The blend
weight w = sigmoid(k (H - b)) of the group's answer entropy H (bits) puts diverse groups on the local loss and
consistent ones on the global loss. The advantage returns the local advantage and provides the global advantage
and w (``copo_global_adv``, ``copo_weight``) to the ``copo_loss`` policy loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.registry import register

CopoMode = Literal[
    "only-soft", "soft-with-zero", "soft-with-forced", "only-forced", "only-zero", "only-global", "no-global"
]
MissingAnswers = Literal["one_answer", "distinct"]


@dataclass(frozen=True)
class CopoConfig:
    """Options of COPO's local / global advantages and blend weight (defaults: the release's ``run_copo.sh``)."""

    k: float = 5.0
    """Steepness of the blend weight w = sigmoid(k (H - b)) (``soft_blending_k``; 20 in the 3B script)."""
    b: float = 1.0
    """Entropy (bits) at which w = 1/2 (``soft_blending_b``)."""
    mode: CopoMode = "soft-with-zero"
    """The code's ``global_flg``: only-soft: w; soft-with-zero: w 1[r_i != 0] (a reward-0 response takes only
    the global loss); soft-with-forced: w 1[A_i != 0] (a zero-variance group takes only the global loss);
    only-forced: 1[A_i != 0]; only-zero: 1[r_i != 0]; only-global: 0; no-global: 1 (plain GRPO)."""
    reward_coef: bool = False
    """Scale the global reward by c(q) = 1 - lambda H, lambda = (1 - 1/G) / log2 G (``reward_coef_flg``)."""
    missing_answers: MissingAnswers = "one_answer"
    """How rows with no answer (``answer_ids`` -1) count in H: one_answer: all of a group's missing answers are
    one answer (the code's empty strings compare equal); distinct: each is its own answer."""
    eps: float = 1e-6
    """Added to the group std (local) and to the std across prompts (global) before dividing, as the code."""
    norm_by_std: bool = True
    """Divide both advantages by their std; False leaves r - mean (the code's ``norm_adv_by_std_in_grpo``)."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(CopoMode):
            raise ValueError(f"copo mode must be one of {list(get_args(CopoMode))}, got {self.mode!r}")
        if self.missing_answers not in get_args(MissingAnswers):
            allowed = list(get_args(MissingAnswers))
            raise ValueError(f"copo missing_answers must be one of {allowed}, got {self.missing_answers!r}")
        if not (math.isfinite(self.k) and self.k >= 0):
            raise ValueError(f"copo k must be finite and >= 0, got {self.k}")
        if not math.isfinite(self.b):
            raise ValueError(f"copo b must be finite, got {self.b}")
        if not self.eps >= 0:
            raise ValueError(f"copo eps must be >= 0, got {self.eps}")


def answer_entropy(ids: torch.Tensor, missing_answers: MissingAnswers = "one_answer") -> torch.Tensor:
    """Entropy in bits of each group's empirical answer distribution, H = -(1/G) sum_i log2(n_i / G), where n_i
    is how many of the group's answers equal answer i.  ids [P, G] long (-1: none) -> [P]"""
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # [P, G, G]
    if missing_answers == "distinct":
        missing = ids < 0  # [P, G]
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        same = (same & ~(missing.unsqueeze(2) | missing.unsqueeze(1))) | eye
    share = same.sum(-1).double() / ids.shape[1]  # [P, G] the share of the group giving row i's answer
    return -torch.log2(share).mean(-1)  # [P]


@register(
    "advantage",
    "copo",
    config=CopoConfig,
    paper="arXiv:2508.04138",
    metrics=(
        "adv/mean",
        "adv/std",
        "adv/frac_zero_std_groups",
        "copo/answer_entropy_mean",
        "copo/weight_mean",
        "copo/global_reward_mean",
        "copo/global_adv_std",
    ),
    needs=("answer_ids",),
    provides=("copo_global_adv", "copo_weight"),
)
def copo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: CopoConfig,
    group_id: torch.Tensor,
    answer_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """COPO advantages: the local GRPO advantage, the prompt's global advantage and the local loss's weight.

    Paper: COPO, arXiv:2508.04138 (global reward, global advantage, entropy-based soft blending); formulas as
    the released ``compute_score_global`` / ``compute_grpo_outcome_advantage_with_global``. For prompt q with
    rewards r_i and answers a_i (i = 1..G), p_a the share of answers equal to a, over the batch's P prompts:

        H(q) = -sum_a p_a log2 p_a                          (answer entropy, bits)
        R_g(q) = mean_i r_i * c(q),  c(q) = 1 - lambda H(q) if reward_coef else 1,  lambda = (1 - 1/G) / log2 G
        A_g(q) = (R_g(q) - mean_q' R_g) / (std_q' R_g + eps)       (unbiased std across the P prompts)
        A_i = (r_i - mean_q r) / (std_q r + eps)                    (local, unbiased group std)
        w_i = sigmoid(k (H(q) - b)), then masked by ``mode``        (the local loss's share)

    Args:
        rewards: ``[B]`` float, one outcome reward per sequence (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` response mask (unused; part of the axis convention).
        cfg: :class:`CopoConfig`.
        group_id: ``[B]`` int, the prompt group of each row (equal group sizes >= 2).
        answer_ids: ``[B]`` long, an id per row of its extracted final answer (equal ids: equal answers within
            the batch; -1: no answer). Required (``needs=("answer_ids",)``).

    Returns:
        ``(adv [B, 1], metrics, extras)``; adv is the local advantage; extras holds ``copo_global_adv [B, 1]``
        (A_g of the row's prompt) and ``copo_weight [B, 1]`` (w_i, in [0, 1]) for the ``copo_loss`` policy loss.
        Metric keys: ``adv/mean``, ``adv/std`` (population std of the local advantages),
        ``adv/frac_zero_std_groups`` (groups whose rewards are all equal), ``copo/answer_entropy_mean`` (mean
        H over prompts, bits), ``copo/weight_mean`` (mean w over rows), ``copo/global_reward_mean`` (mean R_g
        over prompts), ``copo/global_adv_std`` (population std of A_g over rows).

    Differences from the paper / released code:
        The paper's method section could not be read here; formulas, modes and defaults are the released code's
        (``core_algos.py`` @ f66883f, ``run_copo.sh``). Answers compare as strings there (the sympy
        canonicalisation is commented out): here by ``answer_ids``; the code's missing answers are either ''
        (all equal: ``missing_answers="one_answer"``) or a fallback tail of the response (nearly always
        distinct: ``"distinct"``). H uses exact log2 (the code's log2(p + 1e-8) differs by < 2e-8). With one
        prompt in the batch A_g = 0 (the code's std of one value is nan). A group of one raises (the code uses
        mean 0, std 1). ``soft-with-forced`` / ``only-forced`` test A_i != 0 (the code reads the first token
        of the masked token-level advantage, 0 for an empty response). The code's ``only-soft-with-coef`` and
        ``only-zero-wrong`` modes are not offered. As in the code, A_g is a per-prompt constant, so under
        ``soft-with-zero`` a wrong answer to a prompt above the batch's mean accuracy gets a positive A_g.

    Example:
        >>> r = torch.tensor([1.0, 1, 1, 1, 0, 0])
        >>> ids = torch.tensor([5, 5, 5, 3, 7, 7])
        >>> adv, m, ex = copo(r, torch.ones(6, 2), cfg=CopoConfig(), group_id=torch.tensor([0, 0, 0, 1, 1, 1]),
        ...                   answer_ids=ids)
        >>> [round(a, 4) for a in ex["copo_global_adv"].squeeze(1).tolist()]
        [0.7071, 0.7071, 0.7071, -0.7071, -0.7071, -0.7071]
        >>> [round(w, 4) for w in ex["copo_weight"].squeeze(1).tolist()]
        [0.0067, 0.0067, 0.0067, 0.3993, 0.0, 0.0]
    """
    if answer_ids is None:
        raise ValueError("copo needs answer_ids (an id per row of its extracted final answer, -1: none)")
    if answer_ids.shape != rewards.shape:
        raise ValueError(
            f"copo answer_ids must be [B] like rewards {tuple(rewards.shape)}, got {tuple(answer_ids.shape)}"
        )
    if bool((answer_ids < -1).any()):
        raise ValueError(f"copo answer_ids must be >= -1 (-1: no answer), got min {int(answer_ids.min())}")
    groups = ops.Groups(group_id)
    g = groups.size
    if g < 2:
        raise ValueError(f"copo needs >= 2 samples per group, got {g}")
    r = rewards.detach()
    r = groups.grid(r if r.is_floating_point() else r.float())  # [P, G]
    entropy = answer_entropy(groups.grid(answer_ids.long()), cfg.missing_answers).to(r.dtype)  # [P]

    local = r - r.mean(-1, keepdim=True)  # [P, G]
    if cfg.norm_by_std:
        local = local / (r.std(-1, keepdim=True) + cfg.eps)  # [P, G]

    coef = 1.0 - (1.0 - 1.0 / g) / math.log2(g) * entropy if cfg.reward_coef else torch.ones_like(entropy)  # [P]
    global_reward = r.mean(-1) * coef  # [P]
    glob = global_reward - global_reward.mean()  # [P]
    if cfg.norm_by_std:
        spread = global_reward.std() if global_reward.numel() > 1 else torch.zeros((), dtype=r.dtype)
        glob = glob / (spread + cfg.eps)  # [P]

    soft = torch.sigmoid(cfg.k * (entropy - cfg.b)).unsqueeze(-1).expand_as(r)  # [P, G]
    weight = {
        "only-soft": lambda: soft,
        "soft-with-zero": lambda: soft * (r != 0),
        "soft-with-forced": lambda: soft * (local != 0),
        "only-forced": lambda: (local != 0).to(r.dtype),
        "only-zero": lambda: (r != 0).to(r.dtype),
        "only-global": lambda: torch.zeros_like(r),
        "no-global": lambda: torch.ones_like(r),
    }[cfg.mode]()  # [P, G]

    adv = groups.rows(local).unsqueeze(-1)  # [B, 1]
    global_adv = groups.rows(glob.unsqueeze(-1).expand_as(r)).unsqueeze(-1)  # [B, 1]
    w = groups.rows(weight).unsqueeze(-1)  # [B, 1]
    metrics = {
        "adv/mean": adv.mean(),
        "adv/std": adv.std(correction=0),
        "adv/frac_zero_std_groups": (r.amax(-1) == r.amin(-1)).to(r.dtype).mean(),
        "copo/answer_entropy_mean": entropy.mean(),
        "copo/weight_mean": w.mean(),
        "copo/global_reward_mean": global_reward.mean(),
        "copo/global_adv_std": global_adv.std(correction=0),
    }
    return adv, metrics, {"copo_global_adv": global_adv, "copo_weight": w}


@dataclass(frozen=True)
class CopoLossConfig:
    """Options of COPO's blended PPO loss (the clipped surrogate of both the local and the global part)."""

    eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - eps_low (``clip_ratio_low``)."""
    eps_high: float = 0.2
    """Upper clip: the ratio is clipped at 1 + eps_high (``clip_ratio_high``)."""
    dual_clip_c: float | None = 3.0
    """Dual-clip bound c > 1 for negative advantages, on both parts (``clip_ratio_c``); None turns it off."""

    def __post_init__(self) -> None:
        if not 0 <= self.eps_low < 1:
            raise ValueError(f"copo eps_low must be in [0, 1), got {self.eps_low}")
        if not self.eps_high >= 0:
            raise ValueError(f"copo eps_high must be >= 0, got {self.eps_high}")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1:
            raise ValueError(f"copo dual_clip_c must be > 1 or None, got {self.dual_clip_c}")


@register(
    "policy_loss",
    "copo_loss",
    config=CopoLossConfig,
    paper="arXiv:2508.04138",
    metrics=(
        "clip/frac_low",
        "clip/frac_high",
        "clip/frac_dual",
        "ratio/mean",
        "kl/approx_old",
        "copo/loss_local",
        "copo/loss_global",
        "copo/weight_token_mean",
        "copo/global_clip_frac",
    ),
    needs=("copo_global_adv", "copo_weight"),
)
def copo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: CopoLossConfig,
    entropy: torch.Tensor | None = None,
    copo_global_adv: torch.Tensor | None = None,
    copo_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """COPO's per-token loss: (1 - w) l(A_g) + w l(A_local), l the dual-clip PPO surrogate.

    Paper: COPO, arXiv:2508.04138 (soft blending of the local and global losses); as the released
    ``compute_policy_loss_with_global``. Both parts share r = exp(logp - old_logp):

        l(A) = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)),  then min(l, -c A) where A < 0
        L = (1 - w) l(A_g) + w l(A)

    Args:
        logp: ``[B, T]`` log-prob of the sampled tokens under the current policy (carries the gradient).
        old_logp: ``[B, T]`` log-prob under the policy that sampled them (detached).
        advantages: ``[B, 1]`` or ``[B, T]`` the local advantage (the ``copo`` advantage's output).
        mask: ``[B, T]`` 1 on response tokens that count.
        cfg: :class:`CopoLossConfig`.
        entropy: ``[B, T]`` or None; unused.
        copo_global_adv: ``[B, 1]`` the global advantage A_g (provided by the ``copo`` advantage).
        copo_weight: ``[B, 1]`` the local loss's share w in [0, 1] (provided by the ``copo`` advantage).

    Returns:
        ``(loss [B, T], metrics)``; loss is 0 where mask is 0 (and so is its gradient). Metric keys (masked
        means over tokens): ``clip/frac_low``, ``clip/frac_high``, ``clip/frac_dual``, ``ratio/mean``,
        ``kl/approx_old`` as ``ppo_clip`` on the local part; ``copo/loss_local`` and ``copo/loss_global`` the
        two unblended surrogates; ``copo/weight_token_mean`` w; ``copo/global_clip_frac`` the global part's
        clip fraction (lower + upper, verl's ``pg_clipfrac``).

    Differences from the paper / released code:
        The two surrogates are ``ppo_clip`` with dual clip (c = 3 as the code's ``clip_ratio_c``); the code's
        mode branches live in the advantage's w (``no-global`` is w = 1, ``only-global`` w = 0), so this loss
        is ``ppo_clip`` on the local advantages when w = 1. The log-ratio is clamped to +-20 as ``ppo_clip``
        (the code does not clamp). Aggregation (the release uses ``seq-mean-token-mean``) is the trainer's.

    Example:
        >>> logp = torch.log(torch.tensor([[1.5, 0.5]]))
        >>> loss, m = copo_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0]]), torch.ones(1, 2),
        ...                     cfg=CopoLossConfig(), copo_global_adv=torch.tensor([[-1.0]]),
        ...                     copo_weight=torch.tensor([[0.25]]))
        >>> [round(x, 4) for x in loss[0].tolist()]
        [0.825, 0.475]
    """
    if copo_global_adv is None or copo_weight is None:
        raise ValueError("copo_loss policy loss needs copo_global_adv and copo_weight (provided by the copo advantage)")
    pcfg = PPOClipConfig(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip_c=cfg.dual_clip_c)
    local, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=pcfg)  # [B, T]
    glob, gm = ppo_clip(logp, old_logp, copo_global_adv.detach(), mask, cfg=pcfg)  # [B, T]
    w = copo_weight.detach().to(local.dtype)  # [B, 1]
    loss = (1.0 - w) * glob + w * local  # [B, T]
    with torch.no_grad():
        metrics = dict(metrics)
        metrics["copo/loss_local"] = ops.masked_mean(local, mask)
        metrics["copo/loss_global"] = ops.masked_mean(glob, mask)
        metrics["copo/weight_token_mean"] = ops.masked_mean(w.expand_as(local), mask)
        metrics["copo/global_clip_frac"] = gm["clip/frac_low"] + gm["clip/frac_high"]
        metrics = {k: v.detach() for k, v in metrics.items()}
    return loss, metrics


__all__ = ["CopoConfig", "CopoLossConfig", "answer_entropy", "copo", "copo_loss"]
