"""User policy losses for tests through the trainer and the CLI: one that declares ``needs=("ref_logp",)`` (the
trainer must hand it the reference log-probs) and two that return NaN on purpose."""

from __future__ import annotations

import torch

from entrolab import ops
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.registry import register

_CALLS = {"n": 0}


@register("policy_loss", "test_ref_aware", needs=("ref_logp",), metrics=("test/ref_gap",))
def ref_aware(logp, old_logp, advantages, mask, *, cfg, entropy=None, ref_logp=None):
    """PPO-clip that also logs the mean |log pi - log pi_ref| (fails loudly without ref_logp)."""
    if not isinstance(ref_logp, torch.Tensor) or ref_logp.shape != logp.shape:
        raise AssertionError(f"ref_logp was not supplied: {type(ref_logp).__name__}")
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=PPOClipConfig(), entropy=entropy)
    gap = ops.masked_mean((logp.detach() - ref_logp).abs(), mask)
    return loss, {**metrics, "test/ref_gap": gap}


def nan_once(logp, old_logp, advantages, mask, *, cfg, entropy=None):
    """PPO-clip whose loss is NaN on exactly one call (the second), then normal again."""
    _CALLS["n"] += 1
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=PPOClipConfig(), entropy=entropy)
    if _CALLS["n"] == 2:
        loss = loss * torch.tensor(float("nan"))
    return loss, metrics


def nan_always(logp, old_logp, advantages, mask, *, cfg, entropy=None):
    """PPO-clip whose loss is always NaN."""
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=PPOClipConfig(), entropy=entropy)
    return loss * torch.tensor(float("nan")), metrics
