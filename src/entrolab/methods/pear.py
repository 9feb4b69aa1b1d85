"""PEAR (Huang, Lu & Zhang, arXiv 2510.08026): phase-entropy-aware reward for shorter reasoning.

A right answer is rewarded less when the thinking phase's mean entropy exceeds alpha times the answer phase's,
under the behaviour policy: r = min(1, s - max(0, H_think - alpha H_answer)). The phases come from the
trainer's ``answer_phase`` mask (1 from the response's last answer marker on; entrolab's tasks end with
``answer: X``, so the marker is ``answer:``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.registry import register


@dataclass(frozen=True)
class PearConfig:
    """Options of PEAR's reward."""

    alpha: float = 1.0
    """Weight of the answer phase's entropy (the paper's ablation: 1 best)."""
    base: float = 1.0
    """s: the score of a right answer before the penalty (not recovered from the paper; 1)."""
    incorrect: float = 0.0
    """r_fmt: the reward of a wrong or badly formatted answer (not recovered from the paper; 0)."""
    right_at: float = 1.0
    """A sample counts as right when its reward is at least this."""
    marker: str = "answer:"
    """The text that starts the answer phase (the caller marks the phases from its last occurrence):
    entrolab's tasks end with ``answer: X``; ``</think>`` for a thinking model's template, as in the paper."""

    def __post_init__(self) -> None:
        if not 0 < self.base <= 1:
            raise ValueError(f"pear base must be in (0, 1], got {self.base}")
        if not 0 <= self.incorrect < 1:
            raise ValueError(f"pear incorrect must be in [0, 1), got {self.incorrect}")
        if not self.marker:
            raise ValueError("pear marker must be a non-empty string (the text that starts the answer phase)")


@register(
    "reward_shaper",
    "pear",
    config=PearConfig,
    paper="arXiv:2510.08026",
    metrics=("pear/penalty_mean", "pear/think_entropy", "pear/answer_entropy"),
    needs=("old_entropy", "answer_phase"),
    reconstructed=True,
)
def pear(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: PearConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    old_entropy: torch.Tensor | None = None,
    answer_phase: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PEAR: r = min(1, s - max(0, H_think - alpha H_answer)) for right answers, r_fmt otherwise.

    Paper: PEAR, arXiv:2510.08026, eq. 7 (the max operation), entropies under the rollout policy, detached.
    With k the first token of the answer phase (the response length when there is none):

        H_think = mean_{t < k} H_t,   H_answer = mean_{t >= k} H_t (0 when empty)
        P = max(0, H_think - alpha H_answer);   r = min(1, s - P) if right, else r_fmt

    Args:
        rewards: ``[B]`` verifier rewards (right when >= ``cfg.right_at``).
        mask: ``[B, T]`` response tokens.  group_id, lengths, truncated, max_length: unused.
        cfg: :class:`PearConfig`.
        old_entropy: ``[B, T]`` the behaviour policy's token entropies (``needs``).
        answer_phase: ``[B, T]`` 1 on the answer phase's tokens (``needs``; the trainer marks them from the
            last answer marker).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``pear/penalty_mean`` (mean P over the right samples, 0 if
        none), ``pear/think_entropy`` and ``pear/answer_entropy`` (means over the batch).

    Differences from the paper / released code:
        Reconstructed from the paper's equations (the authors' repository could not be read). The phase
        boundary is entrolab's ``answer:`` marker by default (``marker="</think>"`` gives the paper's), and the
        marker's own tokens count to the answer phase (the paper excludes ``</think>``). s and r_fmt were not
        recovered: 1 and 0 here.

    Example:
        >>> h = torch.tensor([[0.8, 0.8, 0.3, 0.3], [0.2, 0.2, 0.3, 0.3]])
        >>> phase = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        >>> r, m = pear(torch.ones(2), torch.ones(2, 4), cfg=PearConfig(), group_id=None, lengths=None,
        ...             truncated=None, max_length=4, old_entropy=h, answer_phase=phase)
        >>> [round(x, 4) for x in r.tolist()]
        [0.5, 1.0]
    """
    if old_entropy is None or answer_phase is None:
        raise ValueError("reward shaper 'pear' needs old_entropy and answer_phase (declared in needs)")
    h = old_entropy.detach().float()
    answer = mask * answer_phase  # [B, T]
    think = mask * (1.0 - answer_phase)  # [B, T]
    h_think = ops.masked_mean(h, think, dim=-1)  # [B]
    h_answer = ops.masked_mean(h, answer, dim=-1)  # [B]; 0 when the phase is empty
    penalty = (h_think - cfg.alpha * h_answer).clamp(min=0.0)  # [B]
    right = rewards >= cfg.right_at  # [B]
    shaped = torch.where(right, (cfg.base - penalty).clamp(max=1.0), torch.full_like(penalty, cfg.incorrect))
    metrics = {
        "pear/penalty_mean": ops.masked_mean(penalty, right.float()),
        "pear/think_entropy": h_think.mean(),
        "pear/answer_entropy": h_answer.mean(),
    }
    return shaped.to(rewards.dtype), metrics


__all__ = ["PearConfig", "pear"]
