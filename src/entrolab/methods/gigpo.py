"""GiGPO (Feng et al., arXiv 2505.10978): Group-in-Group Policy Optimization for multi-turn agents.

Two nested relative advantages, no critic: an episode-level one (GRPO on the episodes' rewards within a group)
and a step-level one, which compares the discounted returns of the turns that acted from the *same* environment
state (an "anchor state", ``state_ids``) anywhere in the group's episodes. A turn's advantage is
A^E(episode) + omega A^S(turn), on the turn's model tokens. One row per episode (the multi-turn contract):
``step_ids`` number the turns, environment tokens carry mask 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register

GiGPOMode = Literal["mean_norm", "mean_std_norm"]
EpisodeStats = Literal["episode", "turn"]
GIGPO_METRICS = (
    "adv/mean",
    "adv/std",
    "gigpo/step_group_size_mean",
    "gigpo/singleton_frac",
    "gigpo/episode_adv_abs_mean",
    "gigpo/step_adv_abs_mean",
)


@dataclass(frozen=True)
class GiGPOConfig:
    """Options of GiGPO's two-level advantage (defaults: verl-agent's ``algorithm.gigpo`` and its scripts)."""

    step_advantage_w: float = 1.0
    """omega, the weight of the step-level advantage (verl-agent ``algorithm.gigpo.step_advantage_w``)."""
    gamma: float = 0.95
    """Discount of the step returns over turns (the paper's and every released GiGPO script's 0.95)."""
    mode: GiGPOMode = "mean_norm"
    """F_norm of both levels: ``mean_norm`` F_norm = 1 (verl-agent's config default), ``mean_std_norm`` the
    group's unbiased std (GRPO; verl-agent's ALFWorld and search scripts)."""
    eps: float = 1e-6
    """Added to the std before dividing (``mean_std_norm``), as verl-agent's ``epsilon``."""
    episode_stats: EpisodeStats = "episode"
    """Over what the episode-level mean / std run: ``episode`` the group's G episodes (the paper, Eq. 3);
    ``turn`` every turn of the group's episodes, so an episode counts once per turn (verl-agent's
    ``compute_mean_std_cross_steps=True``, its default)."""
    episode_reward_on_last_step: bool = True
    """Add the episode reward to the last turn's reward before discounting (the contract's ``step_rewards`` hold
    only the environment's per-turn rewards); False when ``step_rewards`` already contain the outcome."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(GiGPOMode):
            raise ValueError(f"gigpo mode must be one of {list(get_args(GiGPOMode))}, got {self.mode!r}")
        if self.episode_stats not in get_args(EpisodeStats):
            raise ValueError(
                f"gigpo episode_stats must be one of {list(get_args(EpisodeStats))}, got {self.episode_stats!r}"
            )
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gigpo gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.step_advantage_w < float("inf"):
            raise ValueError(f"gigpo step_advantage_w must be finite and >= 0, got {self.step_advantage_w}")
        if not 0.0 <= self.eps < float("inf"):
            raise ValueError(f"gigpo eps must be finite and >= 0, got {self.eps}")


def _episode_advantage(r: torch.Tensor, turns: torch.Tensor, groups: ops.Groups, cfg: GiGPOConfig) -> torch.Tensor:
    """A^E per episode (Eq. 3); ``turns [B]`` weighs the episodes under ``episode_stats="turn"``.  -> [B]"""
    grid = groups.grid(r)  # [P, G]
    if cfg.episode_stats == "episode":
        mean, std = grid.mean(-1, keepdim=True), grid.std(-1, keepdim=True)  # [P, 1]
    else:
        w = groups.grid(turns.to(r.dtype))  # [P, G] each episode once per turn
        n = w.sum(-1, keepdim=True)  # [P, 1]
        mean = (w * grid).sum(-1, keepdim=True) / n.clamp(min=1)
        std = ((w * (grid - mean) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        lone = n <= 1  # the code's rule for a lone score: mean 0, std 1
        mean, std = torch.where(lone, torch.zeros_like(mean), mean), torch.where(lone, torch.ones_like(std), std)
    adv = grid - mean
    if cfg.mode == "mean_std_norm":
        adv = adv / (std + cfg.eps)
    return groups.rows(adv)  # [B]


def _step_advantage(ret: torch.Tensor, keys: torch.Tensor, cfg: GiGPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A^S per turn (Eq. 7) within the step groups of equal ``keys [N, 2]``; and the groups' sizes."""
    _, inv, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)  # [N], [S]
    n = counts.to(ret.dtype)  # [S]
    mean = torch.zeros_like(n).index_add_(0, inv, ret) / n  # [S]
    dev = ret - mean[inv]  # [N] exactly 0 in a singleton group
    if cfg.mode == "mean_std_norm":
        var = torch.zeros_like(n).index_add_(0, inv, dev**2) / (n - 1).clamp(min=1)  # [S] unbiased
        std = torch.where(counts > 1, var.sqrt(), torch.ones_like(var))  # a singleton's std is 1, as the code
        dev = dev / (std[inv] + cfg.eps)
    return dev, counts


@register(
    "advantage",
    "gigpo",
    config=GiGPOConfig,
    paper="arXiv:2505.10978",
    metrics=GIGPO_METRICS,
    needs=("step_ids", "state_ids", "step_rewards"),
)
def gigpo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: GiGPOConfig,
    group_id: torch.Tensor,
    step_ids: torch.Tensor | None = None,
    state_ids: torch.Tensor | None = None,
    step_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GiGPO: A(turn k of episode i) = A^E(i) + omega A^S(i, k), on the turn's model tokens.

    Paper: Group-in-Group Policy Optimization for LLM Agent Training, arXiv:2505.10978, §3 (the equation
    numbers of verl-agent's ``gigpo/core_gigpo.py``). For the G episodes tau_i of a group (one env instance),
    R(tau_i) their rewards, r^(i)_k the reward of turn k and s^(i)_k the state it acted from:

        A^E(tau_i) = (R(tau_i) - mean_j R(tau_j)) / F_norm(R(tau_1..G))                   (Eq. 3)
        R^(i)_k = sum_{k' >= k} gamma^(k' - k) r^(i)_k'                                  (Eq. 5)
        G^S(s) = {(i, k) : s^(i)_k = s}, over the group's episodes (revisits included)     (Eq. 6)
        A^S(i, k) = (R^(i)_k - mean_{G^S(s^(i)_k)} R) / F_norm(the same returns)           (Eq. 7)
        A = A^E + omega A^S                                                               (Eq. 8)

    F_norm is the unbiased std (``mode="mean_std_norm"``) or 1 (``"mean_norm"``); a singleton step group has
    A^S = 0. r^(i)_k is the turn's ``step_rewards`` plus, on its last turn, R(tau_i)
    (``episode_reward_on_last_step``). The policy loss maximises sum_tokens A log pi on the model tokens.

    Args:
        rewards: ``[B]`` float, the episodes' rewards R(tau) (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` 1 on the model tokens, 0 on environment tokens and padding.
        cfg: :class:`GiGPOConfig`.
        group_id: ``[B]`` int, the group (env instance / prompt) of each row; equal sizes >= 2.
        step_ids: ``[B, T]`` long, the turn index k >= 0 on model tokens (-1 elsewhere; read only on the mask).
        state_ids: ``[B, T]`` long, the id of the state each turn acted from, equal on all of the turn's model
            tokens (equal ids: the same state); a turn with an id < 0 has no anchor (its A^S is 0).
        step_rewards: ``[B, T]`` float, the environment's reward of each turn on its last model token (summed
            over the turn's model tokens; read only on the mask).

    Returns:
        ``(adv [B, T], metrics)``, detached, 0 where ``mask`` is 0. Metric keys: ``adv/mean``, ``adv/std``
        (population, over the model tokens), ``gigpo/step_group_size_mean`` (mean number of turns in a step
        group), ``gigpo/singleton_frac`` (fraction of step groups of one turn), ``gigpo/episode_adv_abs_mean``
        and ``gigpo/step_adv_abs_mean`` (mean |A^E| and |A^S| over the turns).

    Differences from the paper / released code:
        verl-agent (``compute_gigpo_outcome_advantage``) holds one row per turn with the observation in the prompt;
        here one row per episode, the same numbers. Its ``episode_norm_reward`` defaults to mean / std over the
        group's turn rows (``episode_stats="turn"``, each episode counted once per turn; a group with <= 1 turn
        gets mean 0, std 1); the paper's Eq. 3 is over the episodes (the default). Its env rewards carry the
        outcome on the last step (its episode reward is their sum); here the contract's ``rewards`` are added to
        the last turn (``episode_reward_on_last_step``). ``mode`` defaults to verl-agent's config value
        ``mean_norm`` (its ALFWorld and search scripts set ``mean_std_norm``); gamma to 0.95 (verl's generic
        ``algorithm.gamma`` default is 1.0). Similarity-based grouping (``enable_similarity``) is not here: the
        caller may give near-identical observations one state id. A group of fewer than 2 episodes raises (the
        code: mean 0, std 1). Turns are ordered and discounted by their ``step_ids``; when every episode has one
        turn from the group's one initial state, A^S = A^E and A = (1 + omega) x GRPO (Dr.GRPO with
        ``mean_norm``).

    Example:
        >>> m = torch.tensor([[1.0, 0, 1, 0], [1, 0, 1, 0]])  # two turns each: a model token, an observation
        >>> steps = torch.tensor([[0, -1, 1, -1], [0, -1, 1, -1]])
        >>> states = torch.tensor([[7, -1, 8, -1], [7, -1, 9, -1]])  # both start from state 7, then diverge
        >>> adv, _ = gigpo(torch.tensor([1.0, 0.0]), m, cfg=GiGPOConfig(), group_id=torch.zeros(2, dtype=torch.long),
        ...                step_ids=steps, state_ids=states, step_rewards=torch.zeros(2, 4))
        >>> [[round(a, 4) for a in row] for row in adv.tolist()]
        [[0.975, 0.0, 0.5, 0.0], [-0.975, 0.0, -0.5, 0.0]]
    """
    if step_ids is None or state_ids is None or step_rewards is None:
        raise ValueError("gigpo needs step_ids, state_ids and step_rewards (the multi-turn contract's turn tensors)")
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"gigpo needs >= 2 episodes per group, got {groups.size}")
    keep = mask.bool()  # [B, T]
    if bool((keep & (step_ids < 0)).any()):
        raise ValueError("gigpo: every model token (mask 1) needs a turn index step_ids >= 0")
    r = rewards.detach()
    r = ops.upcast(r if r.is_floating_point() else r.float())  # [B]
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    b, dev = mask.shape[0], mask.device
    k = int(step_ids[keep].max()) + 1 if bool(keep.any()) else 0  # turns per row, at most
    rows = torch.arange(b, device=dev)
    slot = torch.where(keep, rows.unsqueeze(1) * k + step_ids, b * k)  # [B, T] the token's turn; b*k: none
    present = torch.zeros(b * k + 1, dtype=torch.bool, device=dev)
    present[slot[keep]] = True
    present = present[:-1].view(b, k)  # [B, K]
    turn_r = torch.zeros(b * k + 1, dtype=r.dtype, device=dev)
    turn_r.index_add_(0, slot.flatten(), torch.where(keep, step_rewards.detach().to(r.dtype), zero).flatten())
    turn_r = turn_r[:-1].view(b, k)  # [B, K] each turn's summed env reward
    turn_s = torch.zeros(b * k + 1, dtype=torch.long, device=dev)
    turn_s[slot[keep]] = state_ids[keep].long()
    if bool((turn_s[slot[keep]] != state_ids[keep]).any()):
        raise ValueError("gigpo: state_ids must be equal on all model tokens of a turn")
    turn_s = turn_s[:-1].view(b, k)  # [B, K]
    if cfg.episode_reward_on_last_step and k:
        last = torch.where(present, torch.arange(k, device=dev), -1).amax(1)  # [B] -1: no turn
        turn_r[rows, last.clamp(min=0)] += torch.where(last >= 0, r, zero)
    ret = torch.zeros_like(turn_r)  # [B, K] discounted returns over the row's turns (Eq. 5)
    running = torch.zeros_like(r)  # [B]
    for step in reversed(range(k)):
        running = torch.where(present[:, step], turn_r[:, step] + cfg.gamma * running, running)
        ret[:, step] = running
    adv_e = _episode_advantage(r, present.sum(1), groups, cfg)  # [B]
    turn_of = present.flatten().nonzero().squeeze(1)  # [N] the present turns, b * k + step
    state = turn_s.flatten()[turn_of]  # [N]
    state = torch.where(state >= 0, state, -1 - turn_of)  # no anchor: a key of its own
    keys = torch.stack([group_id.to(dev).long()[turn_of // max(k, 1)], state], 1)  # [N, 2] (group, state)
    adv_s, sizes = _step_advantage(ret.flatten()[turn_of], keys, cfg)  # [N], [S]
    ep = adv_e[turn_of // max(k, 1)]  # [N]
    total = torch.zeros(b * k + 1, dtype=r.dtype, device=dev)
    total[turn_of] = ep + cfg.step_advantage_w * adv_s
    adv = torch.where(keep, total[slot], zero)  # [B, T]
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "gigpo/step_group_size_mean": sizes.to(r.dtype).mean() if sizes.numel() else zero,
        "gigpo/singleton_frac": (sizes == 1).to(r.dtype).mean() if sizes.numel() else zero,
        "gigpo/episode_adv_abs_mean": ep.abs().mean() if ep.numel() else zero,
        "gigpo/step_adv_abs_mean": adv_s.abs().mean() if adv_s.numel() else zero,
    }
    return adv, metrics


__all__ = ["GiGPOConfig", "gigpo"]
