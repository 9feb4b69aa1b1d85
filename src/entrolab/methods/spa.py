"""SPA-RL (Wang et al., arXiv 2505.20732): stepwise progress attribution for multi-turn agents.

A progress estimator (``entrolab.progress_estimator``) is trained so that its per-step contributions c_t sum to
the episode's final reward, (sum_t c_t - R)^2; the policy is then trained on the fused step reward
r_t = alpha c_t + beta g_t, g_t the grounding signal (did action t parse and execute). A step is a turn of the
multi-turn contract (``step_ids``: the turn index on its model tokens, -1 on environment tokens and padding);
its reward and its advantage live on its last model token / on all of its model tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

Contribution = Literal["estimator", "loo_reward"]
StepWeight = Literal["one", "remaining"]
METRICS = (
    "adv/mean",
    "adv/std",
    "spa/progress_mean",
    "spa/grounded_frac",
    "spa/step_reward_mean",
    "spa/steps_mean",
    "spa/attribution_mse",
)


def step_end_mask(step_ids: torch.Tensor) -> torch.Tensor:
    """True on the last token of each step: the last position of each id >= 0 in its row.  [B, T] long -> bool

    Ids may be separated by -1 tokens (environment observations, padding); the end is where an id occurs last.

    >>> step_end_mask(torch.tensor([[0, 0, -1, 1, -1, 2, 2, -1]])).int().tolist()
    [[0, 1, 0, 1, 0, 0, 1, 0]]
    """
    valid = step_ids >= 0
    n_ids = int(step_ids.max()) + 1 if step_ids.numel() else 0
    if n_ids <= 0:
        return torch.zeros_like(valid)
    pos = torch.arange(step_ids.shape[1], device=step_ids.device).expand_as(step_ids)  # [B, T]
    idx = step_ids.clamp(min=0)
    last = torch.full((step_ids.shape[0], n_ids), -1, dtype=pos.dtype, device=pos.device)
    last = last.scatter_reduce(1, idx, torch.where(valid, pos, -1), reduce="amax")  # [B, n_ids]
    return valid & (last.gather(1, idx) == pos)


def _layout(step_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(ends bool [B, T], rank [B, T] the 0-based step index of each end, cidx [B, T] the step index of every
    token of a step, K the most steps in a row) of already-masked ``step_ids``."""
    ends = step_end_mask(step_ids)  # [B, T]
    rank = ends.long().cumsum(1) - 1  # [B, T] step index at the ends
    k = max(int(ends.sum(1).max()) if ends.numel() else 0, 1)
    n_ids = max(int(step_ids.max()) + 1 if step_ids.numel() else 0, 1)
    table = torch.zeros(step_ids.shape[0], n_ids + 1, dtype=torch.long, device=step_ids.device)
    table = table.scatter(1, torch.where(ends, step_ids, n_ids), torch.where(ends, rank, 0))  # id -> step index
    return ends, rank, table.gather(1, step_ids.clamp(min=0)), k


def _per_step(x: torch.Tensor, ends: torch.Tensor, rank: torch.Tensor, k: int) -> torch.Tensor:
    """The values of ``x [B, T]`` at the step ends as a compact ``[B, K]`` (0 beyond a row's steps)."""
    out = torch.zeros(x.shape[0], k + 1, dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return out.scatter(1, torch.where(ends, rank, k), torch.where(ends, x, zero))[:, :k]


def progress_loss(
    contrib: torch.Tensor, step_ids: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The progress estimator's loss: mean over trajectories of (sum_t c_t - R)^2 (SPA, arXiv:2505.20732).

    ``contrib [B, T]`` holds c_t on the last model token of each step (read only there, so values elsewhere,
    even nan, change nothing and get zero gradient); ``step_ids [B, T]`` the step of each token (-1 off steps),
    taken only where ``mask [B, T]`` is 1; ``rewards [B]`` the final rewards (detached). Rows without a step are
    left out of the mean. Returns ``(loss [] with grad, metrics)`` with ``spa/estimator_loss`` (the loss,
    detached) and ``spa/progress_sum_mean`` (mean of sum_t c_t over the rows with a step).

    >>> c = torch.tensor([[0.2, 0.3, 0.4]], requires_grad=True)
    >>> loss, _ = progress_loss(c, torch.tensor([[0, 1, 2]]), torch.tensor([1.0]), torch.ones(1, 3))
    >>> round(loss.item(), 6)
    0.01
    """
    keep = mask.bool()
    ends = step_end_mask(torch.where(keep, step_ids, -1))  # [B, T]
    total = torch.where(ends, contrib, torch.zeros((), dtype=contrib.dtype, device=contrib.device)).sum(1)  # [B]
    rows = ends.any(1)  # [B]
    err = (total - rewards.detach().to(total.dtype)) ** 2  # [B]
    loss = (err * rows).sum() / rows.sum().clamp(min=1)
    metrics = {"spa/estimator_loss": loss.detach(), "spa/progress_sum_mean": ops.masked_mean(total.detach(), rows)}
    return loss, metrics


@dataclass(frozen=True)
class SPAConfig:
    """Options of SPA's fused step reward and its critic-free advantage."""

    alpha: float = 1.0
    """Weight of the estimator's contribution c_t in r_t = alpha c_t + beta g_t (the released code: 1)."""
    beta: float = 0.5
    """Weight of the grounding signal g_t (the released code adds 0.5 for a grounded step)."""
    last_step_grounded: bool = True
    """The last step of an episode always counts as grounded (the released code: no observation follows it);
    False: its ``step_valid`` decides."""
    contribution: Contribution = "estimator"
    """estimator: c_t is the progress estimator's output (the paper); loo_reward: every step's c_t is the
    episode's leave-one-out-centred final reward R_i - mean_{j != i} R_j over its group (the released
    ``prm/rl_data_org.py``, which overwrites the estimator's values; R_i for a group of one)."""
    step_weight: StepWeight = "one"
    """one: r_t as fused (the paper); remaining: step k of K (0-based) has r_k times (K - k - 1), as the
    released ``step_ppotrainer.compute_rewards`` (so the last step's reward is 0)."""
    gamma: float = 1.0
    """Discount of the reward-to-go over steps, in [0, 1] (1: undiscounted; 0: each step's own reward)."""
    norm_by_std: bool = True
    """Divide the group-centred reward-to-go by the group's std over all its steps (GRPO-style); False: centre
    only (Dr.GRPO-style)."""
    eps: float = 1e-6
    """Added to the group std before dividing."""

    def __post_init__(self) -> None:
        if self.contribution not in get_args(Contribution):
            raise ValueError(
                f"spa contribution must be one of {list(get_args(Contribution))}, got {self.contribution!r}"
            )
        if self.step_weight not in get_args(StepWeight):
            raise ValueError(f"spa step_weight must be one of {list(get_args(StepWeight))}, got {self.step_weight!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"spa {name} must be finite and >= 0, got {value}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"spa gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.eps < float("inf"):
            raise ValueError(f"spa eps must be finite and >= 0, got {self.eps}")


@register(
    "advantage",
    "spa",
    config=SPAConfig,
    paper="arXiv:2505.20732",
    metrics=METRICS,
    needs=("progress", "step_ids", "step_valid"),
)
def spa(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SPAConfig,
    group_id: torch.Tensor,
    progress: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
    step_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPA: the group-normalised reward-to-go of the fused step reward r_t = alpha c_t + beta g_t, per step.

    Paper: SPA-RL, arXiv:2505.20732 (progress estimator trained on (sum_t c_t - R)^2; fused intermediate
    reward). With K_i the steps of episode i, c_k its estimated contribution, g_k its grounding:

        r_k = alpha c_k + beta g_k                      (times (K_i - k - 1) with step_weight="remaining")
        G_k = sum_{s >= k} gamma^(s - k) r_s
        A_k = (G_k - mean_g G) / (std_g G + eps)        (mean, std over every step of every episode of the
                                                         group; unbiased std; no division with norm_by_std=False)

    and every model token of step k gets A_k. One step per episode (``step_ids == 0`` on the mask) gives
    ``grpo`` of alpha c + beta g per episode: alpha = 1, beta = 0 (or any beta with ``last_step_grounded``) is
    GRPO on the estimator's c, which is GRPO on R where the estimator fits (c = R); ``loo_reward`` is GRPO on R
    (up to eps); ``step_weight="remaining"`` gives 0.

    Args:
        rewards: ``[B]`` final episode rewards (used by ``loo_reward`` and the ``spa/attribution_mse`` metric).
        mask: ``[B, T]`` 1 on model tokens (environment tokens and padding 0); the advantage is 0 off it.
        cfg: :class:`SPAConfig`.
        group_id: ``[B]`` the prompt group of each row (any order, equal sizes).
        progress: ``[B, T]`` the estimator's c_t on each step's last model token (read only there; detached).
        step_ids: ``[B, T]`` long, the turn index k of each model token (-1 elsewhere; read only on the mask).
        step_valid: ``[B, T]`` 1 on the model tokens of turns whose action parsed and executed (read at each
            step's last model token).

    Returns:
        ``(adv [B, T], metrics)``, detached, 0 off the mask (and on mask tokens with ``step_ids`` -1). Metric
        keys: ``adv/mean``, ``adv/std`` (over the mask tokens), ``spa/progress_mean`` (mean estimator c over
        steps), ``spa/grounded_frac`` (mean g over steps, after ``last_step_grounded``),
        ``spa/step_reward_mean`` (mean r_k over steps), ``spa/steps_mean`` (steps per episode with a step),
        ``spa/attribution_mse`` (mean over those episodes of (sum_k c_k - R)^2, the estimator's loss here).

    Differences from the paper / released code:
        The paper and the code train the policy with PPO and a value head (trl, GAE over token rewards placed at
        each step's end, per-token KL penalty). entrolab's advantage family is critic-free, so the step rewards
        become an advantage as the reward-to-go over steps (discount ``gamma``, 1 by default), normalised within
        the prompt group across all steps of its episodes (longer episodes weigh more in the group's mean); the
        KL penalty is the regulariser axis's. The code's estimator is trained once, offline, on the SFT agent's
        explored trajectories and then frozen; whether it is refitted during RL is the caller's choice.
        Grounding is ``step_valid`` (the code: 0.5 unless the next observation says "Nothing happens", the last
        step always 0.5, i.e. beta = 0.5 with ``last_step_grounded``). The code's overwrite of every
        contribution by the leave-one-out-centred final reward (``loo_reward``) and its (K - k - 1) multiplier
        (``step_weight="remaining"``) are options, off by default. alpha and beta were not confirmed from the
        paper's text; the defaults are the code's effective values.

    Example:
        >>> ids = torch.tensor([[0, 0, -1, 1], [0, -1, -1, -1]]); m = (ids >= 0).float()
        >>> c = torch.tensor([[0.0, 0.2, 9.0, 0.8], [0.6, 9.0, 9.0, 9.0]]); ok = m.clone()
        >>> adv, _ = spa(torch.tensor([1.0, 0.0]), m, cfg=SPAConfig(beta=0.0, norm_by_std=False),
        ...              group_id=torch.zeros(2, dtype=torch.long), progress=c, step_ids=ids, step_valid=ok)
        >>> [[round(a, 4) for a in row] for row in adv.tolist()]
        [[0.2, 0.2, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]]
    """
    if progress is None or step_ids is None or step_valid is None:
        raise ValueError("spa needs progress (the estimator's c_t at step ends), step_ids and step_valid")
    keep = mask.bool()
    ids = torch.where(keep, step_ids, -1)  # [B, T]
    ends, rank, cidx, k = _layout(ids)
    x = ops.upcast(progress.detach())
    dtype = x.dtype if x.is_floating_point() else torch.float32
    n = ends.sum(1)  # [B] steps per episode
    col = torch.arange(k, device=ids.device).expand(ids.shape[0], k)  # [B, K]
    present = col < n.unsqueeze(1)  # [B, K]
    fp = present.to(dtype)
    groups = ops.Groups(group_id)
    r_final = rewards.detach().to(dtype)  # [B]
    c_est = _per_step(x.to(dtype), ends, rank, k)  # [B, K]
    if cfg.contribution == "estimator":
        c = c_est
    else:
        rg = groups.grid(r_final)  # [P, G]
        loo = rg - (rg.sum(-1, keepdim=True) - rg) / (groups.size - 1) if groups.size > 1 else rg
        c = groups.rows(loo).unsqueeze(1) * fp  # [B, K]
    g = _per_step(step_valid.detach().to(dtype), ends, rank, k)  # [B, K]
    if cfg.last_step_grounded:
        g = torch.where(col == (n - 1).unsqueeze(1), torch.ones((), dtype=dtype, device=g.device), g)
    g = g * fp
    step_r = (cfg.alpha * c + cfg.beta * g) * fp  # [B, K]
    if cfg.step_weight == "remaining":
        step_r = step_r * (n.unsqueeze(1) - col - 1).clamp(min=0).to(dtype)
    ret = step_r.clone()  # [B, K] reward-to-go over steps
    for j in range(k - 2, -1, -1):
        ret[:, j] = ret[:, j] + cfg.gamma * ret[:, j + 1]
    grid, pres = groups.grid(ret), groups.grid(fp)  # [P, G, K]
    count = pres.sum((1, 2), keepdim=True)  # [P, 1, 1]
    mean = (grid * pres).sum((1, 2), keepdim=True) / count.clamp(min=1)
    centred = (grid - mean) * pres
    if cfg.norm_by_std:
        std = ((centred**2).sum((1, 2), keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        centred = centred / (std + cfg.eps)
    adv_steps = groups.rows(centred)  # [B, K]
    zero = torch.zeros((), dtype=dtype, device=ids.device)
    adv = torch.where(ids >= 0, adv_steps.gather(1, cidx.clamp(max=k - 1)), zero)  # [B, T]
    rows = n > 0
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "spa/progress_mean": ops.masked_mean(c_est, present),
        "spa/grounded_frac": ops.masked_mean(g, present),
        "spa/step_reward_mean": ops.masked_mean(step_r, present),
        "spa/steps_mean": ops.masked_mean(n.to(dtype), rows),
        "spa/attribution_mse": ops.masked_mean((c_est.sum(1) - r_final) ** 2, rows),
    }
    return adv, metrics


__all__ = ["SPAConfig", "progress_loss", "spa", "step_end_mask"]
