"""Every entrolab policy loss as verl's ``entrolab.<name>`` (``register_policy_loss``): the plain path.

verl's ``ppo_loss`` calls a registered policy loss once per micro-batch with the current and old log-probs, the
advantages and the response mask, and adds its own entropy bonus and KL loss afterwards. The wrapper calls the
entrolab function on those tensors, multiplies by ``rollout_is_weights`` when verl passes them, and reduces with
verl's ``agg_loss(..., **config.global_batch_info)``, so data parallelism and gradient accumulation normalise
exactly as verl's own losses do. The aggregation is the methods' (verl's ``loss_agg_mode`` unless a preset or
``entrolab.aggregation`` names another; the names are verl's).

That signature receives no entropy, no logits and no batch-wide statistics: a choice that needs them raises here,
naming the entrolab trainer (``trainer.v1.trainer_mode=entrolab``), instead of computing something else.
``clip_cov`` / ``kl_cov`` select their tokens per micro-batch from the current log-probs (``scope="micro_batch"``,
their default), which is what verl's ``clip_cov`` / ``kl_cov`` do; ``scope="batch"`` needs the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from verl.trainer.ppo.core_algos import agg_loss

from entrolab import catalogue
from entrolab.integrations.choice import MethodSpec
from entrolab.integrations.verl.config import PREFIX, policy_spec
from entrolab.update import Methods, scope

TRAINER_HINT = "use the entrolab verl trainer: trainer.use_v1=True trainer.v1.trainer_mode=entrolab"
# what the plain path can give a policy loss besides its four tensors
PLAIN_NEEDS = ("generator",)  # None: torch's global RNG, as verl's clip_cov draws


@lru_cache(maxsize=64)
def methods_of(spec: MethodSpec) -> Methods:
    """The looked-up entries and configs of ``spec`` (one per distinct choice)."""
    return Methods(spec)


def plain_problems(spec: MethodSpec, methods: Methods) -> list[str]:
    """Why ``spec`` cannot run through verl's policy-loss signature (empty: it can)."""
    out = []
    for axis, names in (("token filter", spec.token_filters), ("regulariser", spec.regularizers)):
        out += [f"{axis} {n!r} needs the entropy / batch statistics of the update" for n in names]
    out += [f"schedule {n!r} sets options between steps" for n in spec.schedules]
    out += [f"sampler {n!r} needs the rollouts (verl: algorithm.filter_groups)" for n in spec.samplers]
    entry, cfg = methods.policy_loss
    missing = [n for n in entry.needs if n not in PLAIN_NEEDS]
    if missing:
        out.append(f"policy loss {entry.name!r} needs {missing}, which verl's policy-loss signature does not pass")
    if entry.stats is not None and scope(cfg) == "batch":
        out.append(f"policy loss {entry.name!r} with scope='batch' needs statistics over the whole minibatch")
    return out


def plain_methods(config: Any, name: str) -> Methods:
    """The methods of ``config`` (verl's ActorConfig) for ``loss_mode=entrolab.<name>``; raises when a chosen
    method needs what the plain path cannot give."""
    spec, _ = policy_spec(config, name)
    methods = methods_of(spec)
    problems = plain_problems(spec, methods)
    if problems:
        raise ValueError(f"loss_mode={PREFIX}{name}: " + "; ".join(problems) + f". {TRAINER_HINT}")
    return methods


def make_policy_loss(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    """verl's policy-loss function for entrolab's policy loss ``name``."""

    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if config is None:
            raise ValueError(f"{PREFIX}{name} needs verl's actor config (config=None)")
        methods = plain_methods(config, name)
        entry, cfg = methods.policy_loss
        mask = response_mask.to(log_prob.dtype)  # [b, T] verl passes a bool mask
        loss, metrics = entry.fn(log_prob, old_log_prob, advantages, mask, cfg=cfg, entropy=None)
        if rollout_is_weights is not None:
            loss = loss * rollout_is_weights
        info = dict(config.get("global_batch_info", None) or {})
        total = agg_loss(loss_mat=loss, loss_mask=response_mask, loss_agg_mode=methods.aggregation.name, **info)
        return total, {f"actor/entrolab/{k}": float(v) for k, v in metrics.items()}

    policy_loss.__name__ = policy_loss.__qualname__ = f"entrolab_{name}"
    policy_loss.__doc__ = f"entrolab's policy loss {name!r} for verl (entrolab.integrations.verl.losses)."
    policy_loss.__entrolab__ = name  # type: ignore[attr-defined]
    return policy_loss


def register_all() -> list[str]:
    """Register ``entrolab.<name>`` for every policy loss of the catalogue (idempotent) -> the names."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss

    out = []
    for name in catalogue.names("policy_loss"):
        key = PREFIX + name
        if getattr(POLICY_LOSS_REGISTRY.get(key), "__entrolab__", None) != name:
            register_policy_loss(key)(make_policy_loss(name))
        out.append(key)
    return out


__all__ = ["TRAINER_HINT", "make_policy_loss", "methods_of", "plain_methods", "plain_problems", "register_all"]
