"""An engine user's method choice: a preset name or a mapping with ``entrolab train``'s axis names and options,
laid over what the engine's own settings mean (TRL's ``loss_type`` and ``epsilon``, verl's ``loss_agg_mode`` and
``clip_ratio_*``).

Precedence, lowest to highest: the engine's settings (``engine_fields`` such as the aggregation its loss type
implies, ``engine_options`` such as its clip range as ``ppo_clip.eps_low=...``) < the preset's method part <
the mapping's axis names < the mapping's ``options``. A preset brings its *method* part only: the recipe
(learning rate, epochs, batch sizes) is the engine's. The engine's ``ppo_clip`` options follow the chosen
policy loss where its config has the same field (Clip-Cov's clip range), as a grid's recipe does; options of
methods the run does not use are dropped; filters and regularisers the engine's settings imply (TRL's
``beta`` is a ``kl`` term) are kept next to the chosen ones (set them to 0 in the engine to drop them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from entrolab.config import parse_method_options, selected_methods
from entrolab.grid import preset_of, recipe_options
from entrolab.presets import BASELINE, METHOD_FIELDS

KEYS = ("preset", *METHOD_FIELDS)
LISTS = ("reward_shapers", "token_filters", "regularizers", "schedules", "samplers", "options")


@dataclass(frozen=True)
class MethodSpec:
    """The methods one engine run uses, one registered name per axis (an ``entrolab.update.MethodChoice``)."""

    advantage: str = BASELINE["advantage"]
    policy_loss: str = BASELINE["policy_loss"]
    aggregation: str = BASELINE["aggregation"]
    reward_shapers: tuple[str, ...] = ()
    token_filters: tuple[str, ...] = ()
    regularizers: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ()
    samplers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.method_options()  # unknown names, fields and values fail here, before any work

    def selected(self) -> list[tuple[str, str]]:
        """(axis, name) of every method chosen."""
        return selected_methods(self)

    def method_options(self) -> dict[str, dict[str, Any]]:
        return parse_method_options(self.selected(), self.options)

    def describe(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _as_tuple(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(str(v) for v in value)
    raise ValueError(f"methods[{key!r}] must be a name or a list of names, got {value!r}")


def resolve_methods(
    methods: str | Mapping[str, Any] | MethodSpec | None,
    engine_fields: Mapping[str, Any] | None = None,
    engine_options: Sequence[str] = (),
) -> tuple[MethodSpec, list[str]]:
    """The :class:`MethodSpec` of ``methods`` over the engine's settings -> (spec, notes about engine settings
    that do not apply to the chosen policy loss).

    ``methods``: ``"clip_cov"`` (a preset, or a variant ``clip_cov@clip_cov.ratio=0.002``), a mapping such as
    ``{"policy_loss": "steer", "token_filters": ["forking_tokens"], "options": ["steer.w_max=1.2"]}`` (it may
    name a ``"preset"`` too, applied first), a ready ``MethodSpec``, or None (the engine's own settings).
    """
    if isinstance(methods, MethodSpec):
        return methods, []
    if methods is None:
        mapping: Mapping[str, Any] = {}
    elif isinstance(methods, str):
        mapping = {"preset": methods}
    elif isinstance(methods, Mapping):
        mapping = methods
    else:
        raise ValueError(f"methods= must be a preset name or a mapping of axis names, got {type(methods).__name__}")
    unknown = sorted(set(mapping) - set(KEYS))
    if unknown:
        raise ValueError(f"methods= has unknown key(s) {unknown}; allowed: {list(KEYS)}")
    engine = dict(engine_fields or {})
    run: dict[str, Any] = {**BASELINE, **engine}
    own: list[str] = []
    if mapping.get("preset") is not None:
        part = preset_of(str(mapping["preset"])).method
        run.update({k: v for k, v in part.items() if k != "options"})
        own += list(part.get("options", ()))
    for key, value in mapping.items():
        if key in ("preset", "options"):
            continue
        run[key] = _as_tuple(key, value) if key in LISTS else str(value)
    for key in LISTS:  # a filter or term the engine's settings imply is kept next to the chosen ones
        if key != "options" and engine.get(key):
            run[key] = (*run[key], *(n for n in engine[key] if n not in run[key]))
    own += list(_as_tuple("options", mapping.get("options", ())))
    notes: list[str] = []
    carried = recipe_options(tuple(engine_options), run["policy_loss"], notes, "engine")
    chosen = {run["advantage"], run["policy_loss"], run["aggregation"]}
    chosen |= {n for key in LISTS if key != "options" for n in run[key]}
    carried = [o for o in carried if o.partition("=")[0].rpartition(".")[0] in chosen]  # options of unused methods
    run["options"] = (*carried, *own)
    run = {k: tuple(v) if k in LISTS else v for k, v in run.items()}
    trainer_only = {"self_imitation": False, "self_imitation_options": (), "rollout": "plain", "rollout_options": ()}
    used = sorted(k for k, default in trainer_only.items() if run.pop(k, default) != default)
    if used:  # the built-in trainer's own mechanisms: an engine owns its rollout and its optimizer steps
        raise ValueError(
            f"methods= sets {used}, which only `entrolab train` runs (SPEAR's replay steps, AEPO's branching "
            "rollout); choose the method's catalogue parts by name instead"
        )
    return MethodSpec(**run), notes


__all__ = ["KEYS", "MethodSpec", "resolve_methods"]
