"""Ctrl-U (Zhang, Gao, Jiang, Zhao & Zheng, ICLR 2025, arXiv:2410.11236): an uncertainty-aware reward.

Ctrl-U scores two generations from the same noise with the reward model and reads their disagreement u as the
reward model's uncertainty; the reward loss is down-weighted where u is large and u itself is penalised, the
Kendall-Gal form L = e^{-u} l + lambda_u u. As a reward shaper over the K heads of an ensemble reward model (or K
MC-dropout passes of one) this is r = e^{-u} * score - lambda_u * u, with score the heads' mean and u their
disagreement (|O1 - O2| for two heads, as the released code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

CtrlUScore = Literal["mean", "first"]
Disagreement = Literal["pairwise_abs", "std"]
CtrlUBase = Literal["heads", "rewards"]
Anchor = Literal["zero", "group_mean"]


@dataclass(frozen=True)
class CtrlUConfig:
    """Options of the Ctrl-U uncertainty-aware reward."""

    score: CtrlUScore = "mean"
    """The score that is down-weighted: the heads' mean (the paper rectifies the loss of both predictions) or
    the first head (the released code uses only the primary prediction O1)."""
    disagreement: Disagreement = "pairwise_abs"
    """d: the mean |O_j - O_k| over the K(K-1)/2 pairs of heads (|O1 - O2| for K = 2, the code's regression
    tasks) or the heads' population std (|O1 - O2| / 2 for K = 2)."""
    scale: float = 1.0
    """s in u = s * d (the code's u_scale inside u for segmentation; 1 for depth, HED, lineart)."""
    coef: float = 0.1
    """lambda_u of the penalty -lambda_u * u (the code's u_scale on mean(u) for depth: 0.1; segmentation: 1)."""
    base: CtrlUBase = "heads"
    """What is weighted: the heads' score (the reward is the ensemble's), or the caller's ``rewards`` (the heads
    give only the uncertainty, e.g. when the reward was already computed from them or by a verifier)."""
    anchor: Anchor = "zero"
    """b in r = b + e^{-u} (score - b): 0 (the paper's weight on a loss >= 0, literal) or the group mean of the
    score, so that an uncertain sample moves toward its group's mean whatever the score's sign or offset."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("score", self.score, CtrlUScore),
            ("disagreement", self.disagreement, Disagreement),
            ("base", self.base, CtrlUBase),
            ("anchor", self.anchor, Anchor),
        ):
            if value not in get_args(allowed):
                raise ValueError(f"ctrl_u {name} must be one of {list(get_args(allowed))}, got {value!r}")
        if not self.scale >= 0:
            raise ValueError(f"ctrl_u scale must be >= 0, got {self.scale}")
        if not self.coef >= 0:
            raise ValueError(f"ctrl_u coef must be >= 0, got {self.coef}")


def disagreement(heads: torch.Tensor, mode: Disagreement = "pairwise_abs") -> torch.Tensor:
    """The heads' disagreement per sample: mean pairwise |O_j - O_k| or population std.  [B, K] -> [B]

    One head disagrees with nobody: 0.

    >>> disagreement(torch.tensor([[1.0, 3.0], [0.0, 0.0]])).tolist()
    [2.0, 0.0]
    """
    k = heads.shape[-1]
    if k < 2:
        return torch.zeros(heads.shape[:-1], dtype=heads.dtype, device=heads.device)
    if mode == "std":
        return heads.std(-1, correction=0)
    diff = (heads.unsqueeze(-1) - heads.unsqueeze(-2)).abs()  # [B, K, K]
    return diff.sum((-1, -2)) / (k * (k - 1))  # each pair counted twice over K(K-1) ordered pairs


@register(
    "reward_shaper",
    "ctrl_u",
    config=CtrlUConfig,
    paper="arXiv:2410.11236",
    metrics=("ctrl_u/uncertainty_mean", "ctrl_u/weight_mean", "ctrl_u/penalty_mean", "ctrl_u/score_mean"),
    needs=("rm_heads",),
)
def ctrl_u(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: CtrlUConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    rm_heads: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ctrl-U: r = b + e^{-u} (score - b) - lambda_u u, with u = s * disagreement of the reward-model heads.

    Paper: Ctrl-U, arXiv:2410.11236, §3 (uncertainty estimation, eq. 2; uncertainty-aware reward loss, eq. 3);
    released code ``grenoble-zhang/Ctrl-U`` ``train/ctrlu-depth.py``: u = |O1 - O2|, loss = l(O1) e^{-u} +
    u_scale mean(u). Read as a reward to maximise (r = -l), the per-sample objective is e^{-u} r - lambda_u u:

        d_i = mean_{j<k} |O_ij - O_ik|  (or std_k O_ik);   u_i = s d_i;   w_i = exp(-u_i) in (0, 1]
        score_i = mean_k O_ik  (or O_i1);   r_i = b_i + w_i (score_i - b_i) - lambda_u u_i,   b = 0 or group mean

    Args:
        rewards: ``[B]`` the caller's rewards (used only with ``base="rewards"``).
        mask: ``[B, T]`` response tokens (unused).  lengths, truncated, max_length: unused.
        cfg: :class:`CtrlUConfig`.
        group_id: ``[B]`` prompt groups (used with ``anchor="group_mean"``; equal sizes).
        rm_heads: ``[B, K]`` the scores of K ensemble heads (or K MC-dropout passes) per sample (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys (means over the batch): ``ctrl_u/uncertainty_mean`` (u),
        ``ctrl_u/weight_mean`` (e^{-u}), ``ctrl_u/penalty_mean`` (lambda_u u), ``ctrl_u/score_mean`` (the
        weighted score before shaping).

    Differences from the paper / released code:
        Ctrl-U trains a diffusion model through a frozen reward model on two one-step-denoised images; its
        uncertainty carries gradient into the generator. Here the heads are given per sample and everything is
        detached: the reward is what a policy gradient maximises, so -lambda_u u pushes the policy toward outputs
        the heads agree on, the REINFORCE analogue of the code's + u_scale mean(u). With ``anchor="zero"`` and a
        negative score, down-weighting raises the reward toward 0 (as the paper's weight lowers a loss), so the
        penalty is what keeps uncertainty from paying; ``anchor="group_mean"`` avoids that dependence on the
        score's sign and offset (not in the paper). Out of scope: the segmentation uncertainty (a KL between two
        class distributions per pixel; a scalar head has none), the reward-loss warm-up lambda(step) =
        min(1, step / 5000) * grad_scale and the timestep window t <= 400 (diffusion-specific), and the
        *loss-weight* variant (weighting each sample's policy-gradient loss by e^{-u} after the advantage is
        formed), which no reward shaper can express: it is a per-sample weight on the loss (a token weighter
        with ``needs=("rm_heads",)``).

    Example:
        >>> heads = torch.tensor([[0.5 + 0.3466, 0.5 - 0.3466], [0.5, 0.5]])  # u = 0.6931 = ln 2, and 0
        >>> r, m = ctrl_u(torch.zeros(2), torch.ones(2, 3), cfg=CtrlUConfig(coef=0.0), group_id=None,
        ...               lengths=None, truncated=None, max_length=3, rm_heads=heads)
        >>> [round(x, 4) for x in r.tolist()]
        [0.25, 0.5]
    """
    if rm_heads is None:
        raise ValueError("reward shaper 'ctrl_u' needs rm_heads [B, K] (declared in needs)")
    heads = rm_heads.detach()
    heads = heads if heads.is_floating_point() else heads.float()
    if heads.dim() != 2 or heads.shape[0] != rewards.shape[0] or heads.shape[1] < 1:
        raise ValueError(f"ctrl_u rm_heads must be [B, K] with B = {rewards.shape[0]}, got {tuple(heads.shape)}")
    if not bool(torch.isfinite(heads).all()):
        raise ValueError("ctrl_u rm_heads must be finite")
    u = cfg.scale * disagreement(heads, cfg.disagreement)  # [B]
    weight = torch.exp(-u)  # [B]
    if cfg.base == "rewards":
        score = rewards.detach().to(heads.dtype)  # [B]
    else:
        score = heads.mean(-1) if cfg.score == "mean" else heads[:, 0]  # [B]
    if cfg.anchor == "group_mean":
        groups = ops.Groups(group_id)
        grid = groups.grid(score)  # [P, G]
        anchor = groups.rows(grid.mean(-1, keepdim=True).expand_as(grid))  # [B]
    else:
        anchor = torch.zeros_like(score)  # [B]
    penalty = cfg.coef * u  # [B]
    shaped = anchor + weight * (score - anchor) - penalty  # [B]
    metrics = {
        "ctrl_u/uncertainty_mean": u.mean(),
        "ctrl_u/weight_mean": weight.mean(),
        "ctrl_u/penalty_mean": penalty.mean(),
        "ctrl_u/score_mean": score.mean(),
    }
    return shaped.to(rewards.dtype if rewards.is_floating_point() else shaped.dtype), metrics


__all__ = ["CtrlUConfig", "ctrl_u", "disagreement"]
