"""The method catalogue: pure functions over tensors, one file per family, registered by name per axis.

Call conventions, one per axis (B sequences in contiguous groups of G, T response tokens). Every function
returns an *unreduced* quantity plus ``metrics: dict[str, Tensor]`` of scalar tensors (masked means over the
tokens/sequences it was given; the trainer averages them weighted by token count). Every option lives in the
method's frozen config dataclass, passed as ``cfg``.

- advantage:     ``fn(rewards [B], mask [B, T], *, cfg, group_size) -> (adv [B, 1] | [B, T], metrics)``
- reward_shaper: ``fn(rewards [B], mask [B, T], *, cfg, group_size, lengths [B], truncated [B] bool,
                  max_length) -> (rewards [B], metrics)``
- token_filter:  ``fn(mask [B, T], *, cfg, entropy [B, T], old_logp [B, T], advantages [B, 1] | [B, T],
                  truncated [B] bool) -> (weight [B, T], mask [B, T], metrics)``
                  A *mask-out* drop returns a mask with 0 there (the token leaves the denominator); a
                  *zero-weight* drop (or a soft weight) returns weight 0 (or w) and leaves the mask alone.
                  Filters run once per optimisation minibatch on rollout-time quantities.
- policy_loss:   ``fn(logp [B, T], old_logp [B, T], advantages [B, 1] | [B, T], mask [B, T], *, cfg,
                  entropy [B, T] | None = None) -> (loss [B, T], metrics)``  (a loss: lower is better)
- regularizer:   ``fn(logp [B, T], mask [B, T], *, cfg, entropy [B, T], old_logp [B, T],
                  ref_logp [B, T] | None) -> (term [B, T], metrics)``  (added to the per-token loss,
                  coefficient included; ``needs=("ref_logp",)`` makes the trainer run a frozen reference)
- aggregation:   ``fn(loss [B, T], mask [B, T], *, num_tokens, num_seqs, norm_len) -> scalar``
                  ``num_tokens`` / ``num_seqs`` are counts over the whole optimisation minibatch, so that
                  gradient accumulation over micro-batches never changes the normalisation.
- schedule:      ``fn(state: dict[str, float], observed: dict[str, float], *, cfg, step, total_steps)
                  -> (state: dict[str, float], values: dict[str, float])``  A controller across steps (target-
                  entropy coefficient, PID thresholds, phases). ``state`` starts as ``{}`` and holds plain floats
                  (it is checkpointed); ``observed`` is the previous step's logged metrics (e.g.
                  ``entropy/token_mean``); ``values`` maps ``"method.field"`` to the value that field of another
                  selected method takes for this step (e.g. ``{"entropy_bonus.coef": 0.003}``).

Batch-wide statistics (``scope="batch"``: a quantile, a covariance centring, a top-k budget over the whole
minibatch rather than one micro-batch) are computed by the caller: a method registered with
``stats=fn`` gets ``stats=fn(mask=..., old_logp=..., advantages=..., entropy=..., cfg=...)`` (computed once per
minibatch on rollout-time tensors) as an extra keyword argument ``stats: dict[str, Tensor] | None``. With
``stats=None`` (``scope="micro_batch"``) the method computes them from the tensors it is given.
"""

from __future__ import annotations

from entrolab.methods import (
    advantages,
    aepo,
    aggregation,
    covariance,
    discriminator,
    epo,
    filters,
    forking,
    light_if,
    policy_loss,
    regularizers,
    safe,
    schedules,
    shapers,
    siren,
    spear,
    steer,
)

__all__ = [
    "advantages",
    "aepo",
    "aggregation",
    "covariance",
    "discriminator",
    "epo",
    "filters",
    "forking",
    "light_if",
    "policy_loss",
    "regularizers",
    "safe",
    "schedules",
    "shapers",
    "siren",
    "spear",
    "steer",
]
