"""``TokenBatch``: every per-token and per-sequence field of a training batch, sliced as one.

The update never sees loose tensors: the trainer (and the TRL / verl adapters) build one ``TokenBatch``, split it
into minibatches with ``select`` and into micro-batches with ``micro_batches``, and hand it to
``entrolab.update``. Two masks are kept apart:

- ``attention_mask [B, T]``: response tokens that exist (attended by the forward pass, EOS included);
- ``loss_mask [B, T]``: tokens the policy is trained on (a subset: a sample whose reward errored, a token a
  filter masked out, an environment token of a multi-turn episode are attended but never trained on).

Groups are found by ``group_id [B]``, never by position, so a shuffled batch gives the same advantages per row (up
to the rounding of a group's sums taken in another order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class TokenBatch:
    """B sequences of a training batch (any order), T response tokens each (right-padded)."""

    prompt_ids: torch.Tensor  # [B, Tp] left-padded
    prompt_mask: torch.Tensor  # [B, Tp] 1 on real prompt tokens
    response_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] float, 1 on response tokens that exist (attended)
    loss_mask: torch.Tensor  # [B, T] float, 1 on tokens the policy is trained on
    old_logp: torch.Tensor  # [B, T] behaviour-policy log-probs (0 on padding)
    old_entropy: torch.Tensor  # [B, T] behaviour-policy entropies (0 on padding)
    group_id: torch.Tensor  # [B] int64, the prompt group of each row
    truncated: torch.Tensor  # [B] bool, no EOS within the length budget
    advantages: torch.Tensor | None = None  # [B, 1] or [B, T]
    token_weight: torch.Tensor | None = None  # [B, T] soft weights from filters (None: all ones)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, T] or [B]

    @classmethod
    def from_rollout(cls, rollout, group_size: int) -> TokenBatch:
        """The batch of a ``Rollout`` whose B = P * G rows come in contiguous groups of ``group_size``."""
        b = len(rollout)
        if group_size < 1 or b % group_size:
            raise ValueError(f"a rollout of {b} sequences is not a whole number of groups of {group_size}")
        return cls(
            prompt_ids=rollout.prompt_ids,
            prompt_mask=rollout.prompt_mask,
            response_ids=rollout.response_ids,
            attention_mask=rollout.response_mask,
            loss_mask=rollout.response_mask * rollout.extras.get("model_mask", 1.0),  # observations: never trained
            old_logp=rollout.logp,
            old_entropy=rollout.entropy,
            group_id=torch.arange(b // group_size).repeat_interleave(group_size),
            truncated=rollout.truncated,
            extras=dict(rollout.extras),
        )

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Response tokens per sequence (attended), EOS included.  [B]"""
        return self.attention_mask.sum(-1).long()

    @property
    def model_tokens(self) -> torch.Tensor:
        """1 on the tokens the policy generated: the attended ones, less a multi-turn episode's observations
        (``extras["model_mask"]``).  [B, T]"""
        model = self.extras.get("model_mask")
        return self.attention_mask if model is None else self.attention_mask * model

    @property
    def width(self) -> int:
        """The longest attended response (>= 1): the columns a forward pass needs."""
        return max(int(self.attention_mask.sum(-1).max()), 1) if len(self) else 1

    @property
    def weight(self) -> torch.Tensor:
        """``token_weight``, or ones.  [B, T]"""
        return torch.ones_like(self.loss_mask) if self.token_weight is None else self.token_weight

    def replace(self, **changes) -> TokenBatch:
        return dataclasses.replace(self, **changes)

    def select(self, idx: torch.Tensor | slice) -> TokenBatch:
        """The rows ``idx`` (a slice or an index tensor) of every field."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "extras":
                out[f.name] = {k: x[idx] for k, x in v.items()}
            else:
                out[f.name] = None if v is None else v[idx]
        return TokenBatch(**out)

    def trim(self, width: int | None = None) -> TokenBatch:
        """The batch cut to its first ``width`` response columns (default: the longest attended response).

        Right padding carries no information, so every method's result is unchanged by the cut.
        """
        w = self.width if width is None else width

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None or x.dim() < 2 or x.shape[1] == 1:
                return x
            return x[:, :w]

        return TokenBatch(
            prompt_ids=self.prompt_ids,
            prompt_mask=self.prompt_mask,
            response_ids=self.response_ids[:, :w],
            attention_mask=self.attention_mask[:, :w],
            loss_mask=self.loss_mask[:, :w],
            old_logp=self.old_logp[:, :w],
            old_entropy=self.old_entropy[:, :w],
            group_id=self.group_id,
            truncated=self.truncated,
            advantages=cut(self.advantages),
            token_weight=cut(self.token_weight),
            extras={k: cut(v) for k, v in self.extras.items()},  # type: ignore[misc]
        )

    def micro_batches(self, size: int | None) -> Iterator[tuple[slice, TokenBatch]]:
        """Contiguous micro-batches of ``size`` rows (None: the whole batch), each trimmed to its own width.

        Yields ``(rows, micro_batch)``; ``rows`` is the slice of this batch it came from.
        """
        if size is not None and size < 1:
            raise ValueError(f"micro-batch size must be >= 1 or None, got {size}")
        b = len(self)
        step = size or b
        for start in range(0, b, step):
            rows = slice(start, min(start + step, b))
            yield rows, self.select(rows).trim()


__all__ = ["TokenBatch"]
