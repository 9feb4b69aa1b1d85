"""A user policy loss that declares ``needs=("ref_logp",)``: the trainer must hand it the reference log-probs."""

from __future__ import annotations

import torch

from entrolab import ops
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.registry import register


@register("policy_loss", "test_ref_aware", needs=("ref_logp",), metrics=("test/ref_gap",))
def ref_aware(logp, old_logp, advantages, mask, *, cfg, entropy=None, ref_logp=None):
    """PPO-clip that also logs the mean |log pi - log pi_ref| (fails loudly without ref_logp)."""
    if not isinstance(ref_logp, torch.Tensor) or ref_logp.shape != logp.shape:
        raise AssertionError(f"ref_logp was not supplied: {type(ref_logp).__name__}")
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, cfg=PPOClipConfig(), entropy=entropy)
    gap = ops.masked_mean((logp.detach() - ref_logp).abs(), mask)
    return loss, {**metrics, "test/ref_gap": gap}
