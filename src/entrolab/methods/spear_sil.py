"""SPEAR's curriculum (Qin et al., arXiv:2509.22601): a fading tool-call reward and a growing self-imitation loss.

Early on a bonus mu(k) R_tool for calling tools drives skill-level exploration; it fades out over K_t steps
while a self-imitation loss gamma(k) J_SIL on replayed successful trajectories fades in over K_r steps. Here:
the reward shaper ``spear_tool_reward``, and the pure pieces of the trainer's replay step: ``replay_coef``
(gamma(k)), ``recalibrate`` (replayed advantages against the P50 baseline), ``replay_due`` / ``replay_size``
(when, and how many rows), with ``SpearReplayConfig``. The buffer is ``entrolab.replay.ReplayBuffer``; the
covariance clipping is ``entrolab.methods.spear``. Code: ``TencentYoutuResearch/SPEAR`` @ 7e84315.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from entrolab.registry import register


@dataclass(frozen=True)
class SpearToolRewardConfig:
    """Options of SPEAR's tool-call reward R + mu(k) min(cap, per_call * count)."""

    mode: Literal["cosine", "constant", "none"] = "cosine"
    """``use_toolcall_reward``: cosine: mu(k) = (cos(pi k / K_t) + 1) / 2 up to K_t, 0 after; constant: mu = 1;
    none: no bonus (README and every script: cosine)."""
    max_steps: int = 200
    """K_t (``max_toolcall_steps``): every released script ran 200; the README and verl-agent's yaml say 100."""
    per_call: float = 0.1
    """Reward per counted call (0.1 in both code paths)."""
    cap: float = 1.0
    """R_tool <= cap: the bonus stops growing at 10 calls."""
    count: Literal["tool_calls", "turns"] = "tool_calls"
    """What is counted: tool_calls (assistant turns with a tool call: verl's ReTool reward); turns (every model
    turn, ``episode_lengths``: verl-agent's ALFWorld/WebShop, where every action is a tool call)."""
    on_success: Literal["count", "any_call"] = "count"
    """count: every sample gets mu R_tool; any_call: a sample with R > 0 gets mu * cap * 1{count > 0} instead
    (the Qwen3 script's ``..._posneg_decay_qwen3``)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mode", self.mode, ("cosine", "constant", "none")),
            ("count", self.count, ("tool_calls", "turns")),
            ("on_success", self.on_success, ("count", "any_call")),
        ):
            if value not in allowed:
                raise ValueError(f"spear_tool_reward {name} must be one of {allowed}, got {value!r}")
        if not self.max_steps >= 1:
            raise ValueError(f"spear_tool_reward max_steps must be >= 1, got {self.max_steps}")
        if not (self.per_call >= 0 and self.cap >= 0):
            raise ValueError(f"spear_tool_reward per_call and cap must be >= 0, got {self.per_call}, {self.cap}")


def tool_weight(step: int, cfg: SpearToolRewardConfig) -> float:
    """mu(k): the tool-call reward's weight at step k (1-based in the trainer, as verl's ``global_steps``)."""
    if cfg.mode == "none":
        return 0.0
    if cfg.mode == "constant":
        return 1.0
    return (math.cos(math.pi * step / cfg.max_steps) + 1.0) / 2.0 if step <= cfg.max_steps else 0.0


@register(
    "reward_shaper",
    "spear_tool_reward",
    config=SpearToolRewardConfig,
    paper="arXiv:2509.22601",
    metrics=("spear/tool_reward_mean", "spear/tool_weight"),
    needs=("tool_calls", "turns", "step"),
)
def spear_tool_reward(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SpearToolRewardConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    tool_calls: torch.Tensor | None = None,
    turns: torch.Tensor | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPEAR's intrinsic reward: R' = R + mu(k) min(cap, per_call * #calls), mu fading out by cosine.

    Paper: SPEAR, arXiv:2509.22601 (intrinsic tool-call reward of the curriculum):

        R_tool = min(1, 0.1 * n),  mu(k) = (cos(pi k / K_t) + 1) / 2 for k <= K_t, 0 after
        R' = R + mu(k) R_tool

    Args:
        rewards: ``[B]`` episode rewards.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: :class:`SpearToolRewardConfig`.
        tool_calls: ``[B]`` long, valid tool calls of each episode (``needs``).
        turns: ``[B]`` long, model turns of each episode (``needs``; counted when ``count="turns"``).
        step: the current step k, 1-based (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``spear/tool_reward_mean`` (mean bonus added per sample) and
        ``spear/tool_weight`` (mu(k)).

    Differences from the paper / released code:
        K_t defaults to 200, what every script ran (``max_toolcall_steps=200``); the README's 100 is
        ``max_steps=100``. ``count="tool_calls"`` is verl's ``default_compute_score_enforce_toolcall_posneg_decay``
        (0.1 per assistant message with tool calls); verl-agent's ``EpisodeRewardManager`` counts
        ``episode_lengths`` (``count="turns"``). The Qwen3 script's variant is ``on_success="any_call"``. Both
        code paths read k as verl's 1-based ``global_steps``, so step 1 already has mu slightly below 1. The
        code's re-labelling of ``is_incomplete`` samples is a filter, not part of this reward.

    Example:
        >>> cfg = SpearToolRewardConfig(max_steps=100)
        >>> r, m = spear_tool_reward(torch.tensor([1.0, 0.0, 0.0]), None, cfg=cfg, group_id=None, lengths=None,
        ...                          truncated=None, max_length=0, tool_calls=torch.tensor([3, 12, 0]),
        ...                          turns=torch.tensor([4, 13, 1]), step=50)
        >>> [round(x, 4) for x in r.tolist()], round(m["spear/tool_weight"].item(), 4)  # mu(50) = 1/2
        ([1.15, 0.5, 0.0], 0.5)
    """
    counts = tool_calls if cfg.count == "tool_calls" else turns
    if counts is None:
        raise ValueError(f"reward shaper 'spear_tool_reward' needs {cfg.count} (declared in needs)")
    weight = tool_weight(step, cfg)
    n = counts.to(torch.float64)  # [B]
    r_tool = (cfg.per_call * n).clamp(max=cfg.cap)  # [B]
    if cfg.on_success == "any_call":
        r_tool = torch.where(rewards > 0, cfg.cap * (n > 0).to(torch.float64), r_tool)  # [B]
    bonus = weight * r_tool  # [B]
    metrics = {
        "spear/tool_reward_mean": bonus.mean().float() if bonus.numel() else torch.tensor(0.0),
        "spear/tool_weight": torch.tensor(weight),
    }
    return (rewards.to(torch.float64) + bonus).to(rewards.dtype), metrics


@dataclass(frozen=True)
class SpearReplayConfig:
    """Options of SPEAR's self-imitation: the buffer, the recalibration and gamma(k) (README values by default)."""

    capacity: int = 2048
    """``trajectory_buffer_size``: the most rows one replay update uses."""
    trigger_ratio: float = 1.5
    """flush mode: replay fires once the eligible rows exceed trigger_ratio * capacity (``is_full_capacity``)."""
    replay_mode: Literal["flush", "sample"] = "flush"
    """flush (the code): when due, replay the largest power of two <= eligible rows (<= capacity), then empty
    the buffer; sample (not in the code): every step, replay ``replay_rows`` random rows, keeping the buffer."""
    replay_rows: int = 256
    """sample mode: rows replayed per step (the buffer must hold this many eligible rows)."""
    max_held: int = 0
    """Hard cap on the rows the buffer holds, oldest evicted first; 0: none (the code: tolerate_steps bounds it).
    In flush mode it must exceed trigger_ratio * capacity, or replay never fires."""
    tolerate_steps: int = 10
    """Rows more than this many steps behind the newest held row are dropped (README 10; scripts 5; the code
    caps it at 10)."""
    min_tool_calls: int = 1
    """A row enters only with at least this many tool calls (verl: 1, "must contain a tool call"; verl-agent
    comments the check out: 0)."""
    replay_coef: float = 1.0
    """c_r (``replay_loss_coef``): README and every script 1; the config default is 0.001."""
    max_replay_loss_steps: int = 200
    """K_r: gamma(k) rises by cosine to c_r over K_r steps (README 200; verl's scripts 300)."""
    weight_decay_trajectory_replay: float = -1.0
    """w: in (0, 1] replays w * A (the code's default 0.9, verl-agent's yaml 0.1); otherwise recalibrates
    A = R - P50(D_R) and keeps A > 0 (README and every script: -1)."""
    baseline_capacity: int = 10240
    """``baseline_buffer_size``: per-group mean rewards kept in the FIFO D_R."""
    keep_zero: bool = False
    """P50 mode keeps A >= 0 instead of A > 0 (verl-agent's ``>= 0``; verl's ``> 0``)."""

    def __post_init__(self) -> None:
        if self.replay_mode not in ("flush", "sample"):
            raise ValueError(f"spear replay_mode must be one of ('flush', 'sample'), got {self.replay_mode!r}")
        for name in ("capacity", "replay_rows", "max_replay_loss_steps", "baseline_capacity"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"spear replay {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.tolerate_steps <= 10:
            raise ValueError(f"spear tolerate_steps must be in [0, 10] (the code caps it), got {self.tolerate_steps}")
        if not (self.trigger_ratio > 0 and self.replay_coef >= 0 and self.min_tool_calls >= 0):
            raise ValueError(
                "spear replay needs trigger_ratio > 0, replay_coef >= 0, min_tool_calls >= 0, got "
                f"{self.trigger_ratio}, {self.replay_coef}, {self.min_tool_calls}"
            )
        if not math.isfinite(self.weight_decay_trajectory_replay):
            raise ValueError(
                f"spear weight_decay_trajectory_replay must be finite, got {self.weight_decay_trajectory_replay}"
            )
        if self.max_held < 0 or (
            self.max_held and self.replay_mode == "flush" and self.max_held <= self.trigger_ratio * self.capacity
        ):
            raise ValueError(
                f"spear max_held must be 0 or > trigger_ratio * capacity = {self.trigger_ratio * self.capacity} "
                f"in flush mode, got {self.max_held}"
            )


def replay_coef(step: int, cfg: SpearReplayConfig) -> float:
    """gamma(k) = c_r (1 - cos(pi k / K_r)) / 2 for k <= K_r, c_r after (``dp_actor.py``'s replay-loss factor)."""
    if step > cfg.max_replay_loss_steps:
        return cfg.replay_coef
    return cfg.replay_coef * (1.0 - math.cos(math.pi * step / cfg.max_replay_loss_steps)) / 2.0


def recalibrate(
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    baseline_rewards: torch.Tensor,
    weight: float,
    *,
    mask: torch.Tensor | None = None,
    keep_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The advantages of replayed rows: ``(new_adv, keep [N] bool)`` (``prepare_for_selection``).

    w in (0, 1]: new_adv = w * advantages, every row kept (rows entered the buffer with A > 0). Otherwise
    new_adv = R - P50(D_R), with no std (Dr.BoT's ``norm_adv_by_std_in_grpo=False``), and keep = new_adv > 0
    (>= 0 with ``keep_zero``). P50 is linear interpolation between order statistics (``np.percentile``'s default,
    = ``torch.quantile``'s). ``rewards [N]``; ``advantages [N]``, ``[N, 1]`` or ``[N, T]``: new_adv has its shape
    (times ``mask [N, T]`` when given); ``baseline_rewards [M]``: the per-group means D_R.
    """
    if 0 < weight <= 1:
        return advantages * weight, torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)
    if baseline_rewards.numel() == 0:
        raise ValueError("recalibrate needs at least one baseline reward (add_baseline before replaying)")
    p50 = torch.quantile(baseline_rewards.detach().to(torch.float64), 0.5)
    delta = rewards.detach().to(torch.float64) - p50  # [N]
    keep = delta >= 0 if keep_zero else delta > 0  # [N]
    new = delta.view(-1, *([1] * (advantages.dim() - 1))).expand(advantages.shape).to(advantages.dtype)
    return (new * mask if mask is not None else new.clone()), keep


def replay_due(n_eligible: int, cfg: SpearReplayConfig) -> bool:
    """Whether the replay update runs this step, given the rows that survive :func:`recalibrate`."""
    if cfg.replay_mode == "sample":
        return n_eligible >= cfg.replay_rows
    return n_eligible > cfg.trigger_ratio * cfg.capacity


def replay_size(n_eligible: int, cfg: SpearReplayConfig) -> int:
    """Rows replayed: flush: largest power of two <= n_eligible, at most capacity (0 for <= 1 row, as the code's
    ``nearest_lower_power_of_2``); sample: replay_rows when the buffer holds that many, else 0."""
    if cfg.replay_mode == "sample":
        return cfg.replay_rows if n_eligible >= cfg.replay_rows else 0
    return min(1 << (n_eligible.bit_length() - 1), cfg.capacity) if n_eligible > 1 else 0


__all__ = [
    "SpearReplayConfig",
    "SpearToolRewardConfig",
    "recalibrate",
    "replay_coef",
    "replay_due",
    "replay_size",
    "spear_tool_reward",
    "tool_weight",
]
