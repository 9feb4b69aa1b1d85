"""The call convention of each axis, as code: one ``typing.Protocol`` per axis.

B sequences (groups found by ``group_id``, any order), T response tokens, V vocabulary. Every function returns an
*unreduced* quantity plus ``metrics: dict[str, Tensor]`` of scalar tensors (masked means over the tokens /
sequences it was given; callers average them weighted by token count). Every option lives in the method's
frozen config dataclass, passed as ``cfg``. The composer (``entrolab.update``) calls methods exactly like
this, and the contract test checks every registered method's signature against these protocols.

Extra keyword arguments a method receives only when it declares them at registration:

- ``needs=("ref_logp" | "logits" | "advantages" | "old_entropy" | "vocab_baseline" | "generator", ...)``:
  that tensor (``[B, T]``; logits ``[B, T, V]``) or the run's ``torch.Generator``;
- ``stats=fn`` with ``scope="batch"``: ``stats: dict[str, Tensor]``, minibatch-wide statistics computed once
  per optimisation minibatch by ``fn(mask=, old_logp=, advantages=, entropy=, cfg=)``;
- ``state=("name", ...)``: ``state: Mapping[str, float]``, controller values a schedule set for this step
  (kept in the checkpointed schedule state, never in the frozen config; empty before the first value).

A *mask-out* drop of a token filter returns a mask with 0 there (the token leaves the denominator); a
*zero-weight* drop (or a soft weight) returns weight 0 (or w) and leaves the mask alone. A regulariser's term is
``[B, T]`` (added to the per-token loss before aggregation) or a 0-dim batch scalar (added once per micro-batch
after aggregation, weighted by the micro-batch's share of the minibatch's sequences). ``num_tokens`` /
``num_seqs`` of the aggregation count the whole optimisation minibatch, so gradient accumulation never changes
the normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

Metrics = dict[str, torch.Tensor]


class Advantage(Protocol):
    """``(rewards [B], mask [B, T]) -> (advantages [B, 1] | [B, T], metrics)``."""

    def __call__(
        self, rewards: torch.Tensor, mask: torch.Tensor, *, cfg: Any, group_id: torch.Tensor
    ) -> tuple[torch.Tensor, Metrics]: ...


class RewardShaper(Protocol):
    """``(rewards [B], mask [B, T]) -> (rewards [B], metrics)``; ``lengths [B]``, ``truncated [B]`` bool."""

    def __call__(
        self,
        rewards: torch.Tensor,
        mask: torch.Tensor,
        *,
        cfg: Any,
        group_id: torch.Tensor,
        lengths: torch.Tensor,
        truncated: torch.Tensor,
        max_length: int,
    ) -> tuple[torch.Tensor, Metrics]: ...


class TokenFilter(Protocol):
    """``mask [B, T] -> (weight [B, T], mask [B, T], metrics)`` on rollout-time tensors."""

    def __call__(
        self,
        mask: torch.Tensor,
        *,
        cfg: Any,
        entropy: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        truncated: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, Metrics]: ...


class PolicyLoss(Protocol):
    """``(logp, old_logp, advantages, mask) -> (loss [B, T], metrics)``; a loss: lower is better."""

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        *,
        cfg: Any,
        entropy: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Metrics]: ...


class Regularizer(Protocol):
    """``(logp [B, T], mask [B, T]) -> (term [B, T] | [], metrics)``, coefficient included."""

    def __call__(
        self,
        logp: torch.Tensor,
        mask: torch.Tensor,
        *,
        cfg: Any,
        entropy: torch.Tensor,
        old_logp: torch.Tensor,
        ref_logp: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Metrics]: ...


class Aggregation(Protocol):
    """``(loss [B, T], mask [B, T]) -> scalar`` with minibatch-wide counts."""

    def __call__(
        self, loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: float, num_seqs: float, norm_len: float
    ) -> torch.Tensor: ...


class Schedule(Protocol):
    """A controller across steps: ``(state, observed) -> (state, values)``.

    ``state`` starts as ``{}`` and holds plain floats (checkpointed); ``observed`` is the previous step's logged
    metrics; ``values`` maps ``"method.field"`` to the value that option (or declared state value) of another
    selected method takes for this step.
    """

    def __call__(
        self, state: dict[str, float], observed: Mapping[str, float], *, cfg: Any, step: int, total_steps: int
    ) -> tuple[dict[str, float], dict[str, float]]: ...


class Sampler(Protocol):
    """``(rewards [B], mask [B, T]) -> (keep [B] bool, metrics)``: which samples enter the update, decided after
    rewards from rewards, shaped rewards, lengths, behaviour entropies and groups (never the model). ``keep`` is
    the same for every row of a group; a config with ``max_rounds > 1`` lets the trainer draw more rollouts to
    refill the batch."""

    def __call__(
        self,
        rewards: torch.Tensor,
        mask: torch.Tensor,
        *,
        cfg: Any,
        group_id: torch.Tensor,
        shaped: torch.Tensor,
        lengths: torch.Tensor,
        entropy: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics]: ...


class SftLoss(Protocol):
    """``(logp [B, T], entropy [B, T], mask [B, T]) -> (loss [B, T], used [B, T], metrics)`` for the supervised
    warm start on demonstration tokens: ``used`` (a subset of ``mask``) is what the loss is averaged over."""

    def __call__(
        self, logp: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, *, cfg: Any
    ) -> tuple[torch.Tensor, torch.Tensor, Metrics]: ...


class PreferenceLoss(Protocol):
    """``(chosen_logp [N], rejected_logp [N], ref_chosen_logp [N], ref_rejected_logp [N]) -> (loss [N], metrics)``
    for offline preference optimisation (``entrolab prefs``): sequence log-probs (sums over each response's
    tokens) of N (chosen, rejected) pairs under the policy (with grad) and the frozen reference, and the
    responses' token counts; a loss, lower is better, averaged over the pairs by the caller."""

    def __call__(
        self,
        chosen_logp: torch.Tensor,
        rejected_logp: torch.Tensor,
        ref_chosen_logp: torch.Tensor,
        ref_rejected_logp: torch.Tensor,
        *,
        cfg: Any,
        chosen_lengths: torch.Tensor,
        rejected_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics]: ...


PROTOCOLS: dict[str, type] = {
    "advantage": Advantage,
    "reward_shaper": RewardShaper,
    "token_filter": TokenFilter,
    "policy_loss": PolicyLoss,
    "regularizer": Regularizer,
    "aggregation": Aggregation,
    "schedule": Schedule,
    "sft_loss": SftLoss,
    "sampler": Sampler,
    "preference_loss": PreferenceLoss,
}

__all__ = [
    "PROTOCOLS",
    "Advantage",
    "Aggregation",
    "Metrics",
    "PolicyLoss",
    "PreferenceLoss",
    "Regularizer",
    "RewardShaper",
    "Sampler",
    "Schedule",
    "SftLoss",
    "TokenFilter",
]
