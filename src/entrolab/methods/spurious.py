"""Spurious (random) rewards (Chen et al., arXiv 2512.16912): every reward an independent coin flip.

The control of "Exploration v.s. Exploitation: Rethinking RLVR through Clipping, Entropy, and Spurious Reward":
R_i ~ Bernoulli(1/2), independent of the response, so the unclipped expected policy gradient is zero and what
training does comes from the clipping bias (which lowers the entropy) and the model's prior. The coins come
from the run's ``torch.Generator``, which the checkpoint saves, so a resumed run draws the same rewards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entrolab.registry import register


@dataclass(frozen=True)
class RandomRewardConfig:
    """Options of the random reward."""

    rate: float = 0.5
    """P(R = high): the Bernoulli rate (the paper's and Shao et al.'s ``random0.5``: 0.5)."""
    high: float = 1.0
    """The reward of a winning draw."""
    low: float = 0.0
    """The reward of a losing draw (< high)."""
    right_at: float = 1.0
    """For the agreement metric only: a verifier reward counts as right when it is at least this."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0.0 <= self.rate <= 1.0):
            raise ValueError(f"random_reward rate must be in [0, 1], got {self.rate}")
        if not (math.isfinite(self.high) and math.isfinite(self.low)):
            raise ValueError(f"random_reward high and low must be finite, got high={self.high}, low={self.low}")
        if not self.low < self.high:
            raise ValueError(f"random_reward needs low < high, got low={self.low}, high={self.high}")


@register(
    "reward_shaper",
    "random_reward",
    config=RandomRewardConfig,
    paper="arXiv:2512.16912",
    metrics=("random_reward/mean", "random_reward/frac_high", "random_reward/agreement"),
    needs=("generator",),
    reconstructed=True,
)
def random_reward(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: RandomRewardConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random reward: r'_i = high if u_i < rate else low, u_i ~ U[0, 1) i.i.d., whatever the response.

    Paper: arXiv:2512.16912, the spurious-reward setting (R_i ~ Bernoulli(1/2), independent of the response),
    after Shao et al.'s "Spurious Rewards" (arXiv:2506.10947, reward ``random0.5``). One uniform per row is
    drawn from ``generator`` (B draws per call, whatever the rewards are):

        u = rand(B; generator);   r'_i = high if u_i < rate else low

    so rate 0 gives low everywhere and rate 1 high everywhere (u < 1 always).

    Args:
        rewards: ``[B]`` verifier rewards: not used for the draw (only by the agreement metric).
        mask: ``[B, T]`` response tokens (unused).  group_id, lengths, truncated, max_length: unused.
        cfg: :class:`RandomRewardConfig`.
        generator: the run's ``torch.Generator`` (``needs``; checkpointed with the run); None draws from torch's
            global RNG (also checkpointed by the trainer, but shared with everything else).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``random_reward/mean`` (mean drawn reward),
        ``random_reward/frac_high`` (fraction of rows that drew high) and ``random_reward/agreement`` (fraction
        of rows where the draw agrees with the verifier: high on a right answer, low on a wrong one; about 1/2
        at rate 1/2).

    Differences from the paper / released code:
        Rebuilt from the paper's abstract and summaries and Shao et al.'s README (``random0.5``: 1 with
        probability 1/2); neither's code was read. The paper studies the clipping bias under these rewards;
        that diagnostic is not a reward and is not here (see the clipping policy losses). ``rate``, ``high``
        and ``low`` are entrolab options (1/2, 1, 0 in both papers).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> r, m = random_reward(torch.ones(4), torch.ones(4, 2), cfg=RandomRewardConfig(rate=1.0), group_id=None,
        ...                      lengths=None, truncated=None, max_length=2, generator=g)
        >>> r.tolist(), m["random_reward/agreement"].item()
        ([1.0, 1.0, 1.0, 1.0], 1.0)
    """
    b = rewards.shape[0]
    device = generator.device if generator is not None else rewards.device
    u = torch.rand(b, generator=generator, device=device).to(rewards.device)  # [B]
    high = u < cfg.rate  # [B]
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    shaped = torch.where(
        high, torch.full((b,), cfg.high, dtype=dtype, device=rewards.device), torch.full_like(u, cfg.low, dtype=dtype)
    )  # [B]
    right = rewards.detach() >= cfg.right_at  # [B]
    metrics = {
        "random_reward/mean": shaped.float().mean(),
        "random_reward/frac_high": high.float().mean(),
        "random_reward/agreement": (high == right).float().mean(),
    }
    return shaped, metrics


__all__ = ["RandomRewardConfig", "random_reward"]
