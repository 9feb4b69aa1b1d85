"""Reward shapers: map the verifier's rewards ``[B]`` to the rewards the advantage estimator sees ``[B]``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab.registry import register


@dataclass(frozen=True)
class OverlongPenaltyConfig:
    """Options of DAPO's soft overlong punishment."""

    buffer_len: int = 4096
    """L_cache: the last buffer_len tokens before max_length, where the penalty ramps from 0 to -penalty.
    DAPO used 4096 of a 20480-token budget; must not exceed max_length."""
    penalty: float = 1.0
    """Penalty at (and beyond) max_length; verl ``overlong_buffer.penalty_factor``."""

    def __post_init__(self) -> None:
        if not self.buffer_len >= 1:
            raise ValueError(f"overlong_penalty buffer_len must be >= 1, got {self.buffer_len}")
        if not self.penalty >= 0:
            raise ValueError(f"overlong_penalty penalty must be >= 0, got {self.penalty}")


@register(
    "reward_shaper",
    "overlong_penalty",
    config=OverlongPenaltyConfig,
    paper="arXiv:2503.14476",
    metrics=("reward/overlong_penalty_mean", "reward/frac_overlong"),
)
def overlong_penalty(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: OverlongPenaltyConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Soft overlong punishment (DAPO): a length penalty ramping linearly over the last L_cache tokens.

    Paper: DAPO, arXiv:2503.14476, §3.4, eq. 13. With L_max = max_length, L_cache = buffer_len:

        R_len(y) = 0                                  if |y| <= L_max - L_cache
                 = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                 = -1                                 if |y| > L_max
        r' = r + penalty * R_len(y)

    Args:
        rewards: ``[B]`` float rewards from the verifier.
        mask: ``[B, T]`` response mask (unused; lengths are given).
        cfg: :class:`OverlongPenaltyConfig`.
        group_id: ``[B]`` int, the prompt group of each row (unused).
        lengths: ``[B]`` response lengths in tokens.
        truncated: ``[B]`` bool (unused: the penalty depends on length only).
        max_length: L_max, the response-length budget (>= buffer_len).

    Returns:
        ``(rewards [B], metrics)`` with keys ``reward/overlong_penalty_mean`` (mean of penalty * R_len over B,
        <= 0) and ``reward/frac_overlong`` (fraction of sequences longer than L_max - L_cache).

    Differences from the paper / released code:
        verl's DAPO reward manager computes min(-(|y| - (L_max - L_cache)) / L_cache * penalty, 0) with no
        floor; lengths never exceed L_max there, so the two agree. The penalty is added to every reward
        (not only to correct answers), as in verl.

    Example:
        >>> cfg, lengths = OverlongPenaltyConfig(buffer_len=4), torch.tensor([4, 6, 8, 9])
        >>> out, m = overlong_penalty(torch.ones(4), torch.ones(4, 1), cfg=cfg, group_id=torch.zeros(4),
        ...                           lengths=lengths, truncated=torch.zeros(4, dtype=torch.bool), max_length=8)
        >>> out.tolist()
        [1.0, 0.5, 0.0, 0.0]
    """
    if cfg.buffer_len > max_length:
        raise ValueError(f"overlong_penalty buffer_len={cfg.buffer_len} exceeds max_length={max_length}")
    r = rewards if rewards.is_floating_point() else rewards.float()  # [B]
    expected = max_length - cfg.buffer_len
    r_len = ((expected - lengths.to(r.dtype)) / cfg.buffer_len).clamp(-1.0, 0.0)  # [B]
    shaped = r + cfg.penalty * r_len  # [B]
    metrics = {
        "reward/overlong_penalty_mean": (cfg.penalty * r_len).mean(),
        "reward/frac_overlong": (lengths > expected).to(r.dtype).mean(),
    }
    return shaped, metrics
