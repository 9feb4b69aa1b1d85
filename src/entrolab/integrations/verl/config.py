"""The entrolab methods of a verl run, read from verl's own configs.

Two dataclass subclasses add one field, ``entrolab``, to verl's configs; Hydra builds them when ``_target_`` names
them, so a verl command line sets entrolab's methods::

    actor_rollout_ref.actor.policy_loss._target_=entrolab.integrations.verl.config.PolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=entrolab.clip_cov
    +actor_rollout_ref.actor.policy_loss.entrolab.preset=clip_cov
    algorithm._target_=entrolab.integrations.verl.config.AlgoConfig
    algorithm.adv_estimator=entrolab.grpo

``entrolab`` is the mapping ``entrolab.integrations.choice.resolve_methods`` takes (``preset``, the axis names,
``options``: ``"method.field=value"`` strings). verl's own fields keep their meaning as the engine's settings,
below the preset and the options: ``loss_agg_mode`` is the aggregation; ``clip_ratio_low`` / ``clip_ratio_high``
/ ``clip_ratio_c`` are ``ppo_clip.eps_low`` / ``eps_high`` / ``dual_clip_c`` (and carry to another loss that has
the field); ``clip_cov_ratio`` / ``clip_cov_lb`` / ``clip_cov_ub`` with the clip range are ``clip_cov``'s
``ratio`` / ``cov_lb`` / ``cov_ub`` / ``eps_low`` / ``eps_high`` (verl's variant: PPO-clipped tokens are not
candidates); ``kl_cov_ratio`` / ``ppo_kl_coef`` are ``kl_cov.ratio`` / ``kl_cov.coef``; ``norm_adv_by_std_in_grpo``
is ``grpo.norm_by_std``. Without the subclasses (``loss_mode=entrolab.clip_cov`` on verl's ``PolicyLossConfig``)
the methods are verl's fields mapped so, and nothing else.

The policy side (the actor's ``policy_loss.entrolab``) chooses the policy loss, aggregation, token filters,
regularisers and schedules; the algorithm side (``algorithm.entrolab``) the advantage and the reward shapers. The
name after ``entrolab.`` in ``loss_mode`` / ``adv_estimator`` is that side's policy loss / advantage; a preset or
an axis name that chooses another one raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from verl.trainer.config import AlgoConfig as _VerlAlgoConfig
from verl.workers.config import PolicyLossConfig as _VerlPolicyLossConfig

from entrolab.grid import preset_of
from entrolab.integrations.choice import MethodSpec, resolve_methods
from entrolab.presets import BASELINE

PREFIX = "entrolab."


@dataclass
class PolicyLossConfig(_VerlPolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus ``entrolab``: the policy side's methods (a ``resolve_methods`` mapping)."""

    entrolab: dict = field(default_factory=dict)


@dataclass
class AlgoConfig(_VerlAlgoConfig):
    """verl's ``AlgoConfig`` plus ``entrolab`` (the advantage side's methods) and ``max_response_length`` (the
    response-length budget the reward shapers need: ``${data.max_response_length}``)."""

    entrolab: dict = field(default_factory=dict)
    max_response_length: int | None = None


def strip_prefix(name: str, what: str) -> str:
    """``"entrolab.clip_cov"`` -> ``"clip_cov"``."""
    if not name.startswith(PREFIX):
        raise ValueError(f"{what} {name!r} is not an entrolab name ('{PREFIX}<method>')")
    return name[len(PREFIX) :]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """A field of a verl dataclass, a DictConfig or a dict (None -> ``default``)."""
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _plain(mapping: Any) -> dict[str, Any]:
    """The ``entrolab`` mapping as plain Python (Hydra may hand a DictConfig; lists become lists)."""
    if mapping is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(mapping, DictConfig):
            mapping = OmegaConf.to_container(mapping, resolve=True)
    except ImportError:  # pragma: no cover - verl depends on omegaconf
        pass
    if not isinstance(mapping, Mapping):
        raise ValueError(f"the entrolab setting must be a mapping (preset, axis names, options), got {mapping!r}")
    return {str(k): list(v) if isinstance(v, list | tuple) else v for k, v in mapping.items()}


def _check_named(mapping: dict[str, Any], axis: str, name: str, where: str) -> None:
    """The preset and the axis key of ``mapping`` agree with the ``name`` verl selected on ``axis``."""
    own = mapping.get(axis)
    if own is not None and own != name:
        raise ValueError(f"{where} selects entrolab.{name}, but its entrolab.{axis} is {own!r}: name one of them")
    if mapping.get("preset") is not None:
        chosen = preset_of(str(mapping["preset"])).method.get(axis, BASELINE[axis])
        if chosen != name:
            raise ValueError(
                f"{where} selects entrolab.{name}, but preset {mapping['preset']!r} uses {axis} {chosen!r}: "
                f"select entrolab.{chosen} there"
            )


def policy_engine(actor: Any, spec: MethodSpec) -> tuple[dict[str, Any], list[str]]:
    """verl's actor fields as the engine's settings for ``spec``: (engine_fields, engine_options)."""
    pl = _get(actor, "policy_loss")
    clip = _get(actor, "clip_ratio", 0.2)
    low, high = _get(actor, "clip_ratio_low", clip), _get(actor, "clip_ratio_high", clip)
    options: list[str] = []
    cov = [
        f"clip_cov.ratio={_get(pl, 'clip_cov_ratio', 0.0002)!r}",
        f"clip_cov.cov_lb={_get(pl, 'clip_cov_lb', 1.0)!r}",
        f"clip_cov.cov_ub={_get(pl, 'clip_cov_ub', 5.0)!r}",
    ]
    if spec.policy_loss == "clip_cov":
        options += [*cov, f"clip_cov.eps_low={low!r}", f"clip_cov.eps_high={high!r}"]
    elif spec.policy_loss == "kl_cov":
        options += [
            f"kl_cov.ratio={_get(pl, 'kl_cov_ratio', 0.0002)!r}",
            f"kl_cov.coef={_get(pl, 'ppo_kl_coef', 1.0)!r}",
        ]
    else:
        options += [f"ppo_clip.eps_low={low!r}", f"ppo_clip.eps_high={high!r}"]
        options += [f"ppo_clip.dual_clip_c={_get(actor, 'clip_ratio_c', 3.0)!r}"]
    if "clip_cov" in spec.token_filters and spec.policy_loss != "clip_cov":
        options += cov
    return {"aggregation": _get(actor, "loss_agg_mode", "token-mean")}, options


@lru_cache(maxsize=64)
def _resolve(mapping_json: str, fields_json: str, options: tuple[str, ...]) -> tuple[MethodSpec, tuple[str, ...]]:
    spec, notes = resolve_methods(json.loads(mapping_json), json.loads(fields_json), options)
    return spec, tuple(notes)


def _two_pass(mapping: dict[str, Any], engine) -> tuple[MethodSpec, tuple[str, ...]]:
    """Resolve once to know which methods are chosen, then with the engine options that apply to them."""
    first, _ = _resolve(json.dumps(mapping, sort_keys=True), "{}", ())
    fields, options = engine(first)
    return _resolve(json.dumps(mapping, sort_keys=True), json.dumps(fields, sort_keys=True), tuple(options))


def policy_spec(actor: Any, policy_loss: str) -> tuple[MethodSpec, tuple[str, ...]]:
    """The policy side's :class:`MethodSpec` of a verl ``ActorConfig`` (dataclass or DictConfig) whose
    ``policy_loss.loss_mode`` is ``entrolab.<policy_loss>`` -> (spec, notes on verl settings that do not apply)."""
    mapping = _plain(_get(_get(actor, "policy_loss"), "entrolab"))
    _check_named(mapping, "policy_loss", policy_loss, f"loss_mode=entrolab.{policy_loss}")
    mapping["policy_loss"] = policy_loss
    return _two_pass(mapping, lambda spec: policy_engine(actor, spec))


def advantage_spec(algo: Any, advantage: str) -> tuple[MethodSpec, tuple[str, ...]]:
    """The algorithm side's :class:`MethodSpec` of a verl ``AlgoConfig`` (None: defaults) whose ``adv_estimator``
    is ``entrolab.<advantage>``."""
    mapping = _plain(_get(algo, "entrolab"))
    _check_named(mapping, "advantage", advantage, f"adv_estimator=entrolab.{advantage}")
    mapping["advantage"] = advantage

    def engine(spec: MethodSpec) -> tuple[dict[str, Any], list[str]]:
        if spec.advantage == "grpo" and algo is not None:
            return {}, [f"grpo.norm_by_std={bool(_get(algo, 'norm_adv_by_std_in_grpo', True))!r}"]
        return {}, []

    return _two_pass(mapping, engine)


__all__ = ["PREFIX", "AlgoConfig", "PolicyLossConfig", "advantage_spec", "policy_engine", "policy_spec", "strip_prefix"]
