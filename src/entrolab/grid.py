"""A comparison grid's configs: one shared recipe, each run's own method part, and nothing else different.

``plan_grid`` builds every run's TrainConfig fields from the recipe part of one preset (``--recipe``, default: the
first method's), each method's own part, the needs of every method (applied to all runs, and said), and the
user's ``--set`` overrides. ``differences`` is the table of every field whose value differs between runs;
``check_fair`` refuses a difference outside the methods' own parts unless the user allows that field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from entrolab import catalogue
from entrolab.presets import BASELINE, METHOD_FIELDS, PRESET_PARTS, Preset

# Fields that differ between runs by design of the grid, never compared.
PER_RUN = ("out", "seed", "preset")


@dataclass(frozen=True)
class GridPlan:
    """The grid's run fields (per method), the recipe it shares, and what was applied to every run and why."""

    recipe: str
    fields: dict[str, dict[str, Any]]  # method -> TrainConfig fields (without model, task, out, seed, steps)
    notes: tuple[str, ...]


def _options(items: Sequence[str]) -> dict[str, str]:
    """'method.field=value' strings -> {'method.field': 'value'} (last one wins, as TrainConfig does)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def recipe_options(items: Sequence[str], policy_loss: str, notes: list[str], method: str) -> list[str]:
    """The recipe's policy-loss options (the clip range) for a run whose policy loss is ``policy_loss``: kept for
    ppo_clip, carried to a loss whose config has the same field with a value by default, else left out (said)."""
    out = []
    for key, value in _options(items).items():
        name, _, fld = key.rpartition(".")
        if name != "ppo_clip" or policy_loss == "ppo_clip":
            out.append(f"{key}={value}")
            continue
        config = catalogue.get("policy_loss", policy_loss).config
        defaults = {f.name: f.default for f in dataclasses.fields(config)} if config else {}
        if defaults.get(fld, None) is not None:
            out.append(f"{policy_loss}.{fld}={value}")
        else:
            notes.append(f"{method}: the recipe's {key}={value} does not apply to {policy_loss} (no such clip)")
    return out


def preset_of(name: str) -> Preset:
    """The preset ``name``, or a variant ``PRESET@method.field=value[@...]``: the preset with those options added
    to its method part (e.g. ``clip_cov@clip_cov.ratio=0.002`` for a ratio sweep)."""
    base, *extra = name.split("@")
    if base not in PRESET_PARTS:
        raise ValueError(f"unknown preset {base!r} in {name!r}; known: {', '.join(sorted(PRESET_PARTS))}")
    bad = [e for e in extra if "=" not in e or "." not in e.partition("=")[0]]
    if bad:
        raise ValueError(f"variant {name!r}: {bad} must look like 'method.field=value'")
    p = PRESET_PARTS[base]
    if not extra:
        return p
    method = {**p.method, "options": (*p.method.get("options", ()), *extra)}
    return Preset(method=method, recipe=p.recipe, needs=p.needs)


def plan_grid(methods: Sequence[str], recipe: str | None = None) -> GridPlan:
    """Every method's run fields under one recipe (default: the first method's), with every method's needs."""
    for m in [*methods, *([recipe] if recipe else [])]:
        preset_of(m)  # an unknown preset or a malformed variant fails here
    recipe = recipe or methods[0]
    shared = preset_of(recipe).recipe_fields()
    notes: list[str] = []
    needed: dict[str, Any] = {}
    for method in methods:
        for need in preset_of(method).needs:
            value = needed.get(need.field, shared.get(need.field, _default(need.field)))
            if not need.ok(value):
                needed[need.field] = need.value
                notes.append(
                    f"{method} needs {need.field} changed from {value!r} ({need.why}): every run uses "
                    f"{need.field}={need.value!r}"
                )
    fields: dict[str, dict[str, Any]] = {}
    for method in methods:
        part = preset_of(method).method
        run = {**BASELINE, **{k: v for k, v in shared.items() if k != "options"}, **needed}
        run.update({k: v for k, v in part.items() if k != "options"})
        own = list(part.get("options", ()))
        run["options"] = (*recipe_options(shared.get("options", ()), run["policy_loss"], notes, method), *own)
        fields[method] = run
    return GridPlan(recipe, fields, tuple(notes))


def _default(name: str) -> Any:
    from entrolab.config import TrainConfig

    return TrainConfig.__dataclass_fields__[name].default


def _comparable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config with its options spread out as 'options:method.field' keys, the policy loss's own named
    'options:policy_loss.field' (so a clip range carried to another loss compares equal)."""
    out = {k: v for k, v in cfg.items() if k not in ("options", *PER_RUN)}
    for key, value in _options(cfg.get("options", ())).items():
        name, _, fld = key.rpartition(".")
        out[f"options:{'policy_loss' if name == cfg.get('policy_loss') else name}.{fld}"] = value
    return out


def differences(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{field: {run: value}}`` for every config field (and option) whose value is not the same in all runs."""
    flat = {run: _comparable(c) for run, c in configs.items()}
    keys = sorted({k for c in flat.values() for k in c})
    out = {}
    for key in keys:
        values = {run: c.get(key) for run, c in flat.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[key] = values
    return out


def own_keys(method: str, policy_loss: str) -> set[str]:
    """The comparable keys a method's own part sets (its axis choices and option keys)."""
    part = preset_of(method).method
    keys = {k for k in part if k != "options" and k in METHOD_FIELDS}
    for key in _options(part.get("options", ())):
        name, _, fld = key.rpartition(".")
        keys.add(f"options:{'policy_loss' if name == policy_loss else name}.{fld}")
    if "policy_loss" in keys:  # a method that chooses its loss owns that loss's options
        keys.add("options:policy_loss.*")
    return keys


def check_fair(diff: Mapping[str, Mapping[str, Any]], run_methods: Mapping[str, str], allow: Sequence[str] = ()):
    """Raise (one line) on a difference outside every differing run's method part, unless ``allow`` names it.

    ``run_methods`` maps a run name to its method (preset); a key is the method's own when that method's part
    sets it (``options:policy_loss.*`` for a method that chooses its own policy loss).
    """
    for key, values in diff.items():
        field = key.removeprefix("options:")
        if key in allow or field in allow:
            continue
        owners = set()
        for run, method in run_methods.items():
            pl = preset_of(method).method.get("policy_loss", BASELINE["policy_loss"])
            mine = own_keys(method, pl)
            if key in mine or (key.startswith("options:policy_loss.") and "options:policy_loss.*" in mine):
                owners.add(run)
        if not owners:
            shown = ", ".join(f"{run}={v!r}" for run, v in values.items())
            raise ValueError(
                f"the runs differ in {field} outside their methods' own parts ({shown}); pass --allow-unequal "
                f"{field} to compare them anyway"
            )


__all__ = ["GridPlan", "check_fair", "differences", "own_keys", "plan_grid", "preset_of"]
