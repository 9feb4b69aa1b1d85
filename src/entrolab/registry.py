"""One registry per axis: policy_loss, advantage, reward_shaper, token_filter, regularizer, aggregation, schedule.

A method is a pure function over tensors plus its own frozen config dataclass. Register it with

    @register("policy_loss", "ppo_clip", config=PPOClipConfig, paper="arXiv:1707.06347")
    def ppo_clip(...): ...

This module is the mechanism only and imports nothing of entrolab; ``entrolab.catalogue`` sits above it,
loads the built-in methods and resolves names (``catalogue.get("policy_loss", "ppo_clip")``, or a
``"package.module:function"`` string for a user's own function).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_args

Axis = Literal[
    "policy_loss",
    "advantage",
    "reward_shaper",
    "token_filter",
    "regularizer",
    "aggregation",
    "schedule",
    "sft_loss",
    "sampler",
    "preference_loss",
]
AXES: tuple[str, ...] = get_args(Axis)


@dataclass(frozen=True)
class Entry:
    """A registered method: the function, its config class, and what `entrolab methods` prints."""

    axis: str
    name: str
    fn: Callable[..., Any]
    config: type | None
    paper: str
    summary: str
    reconstructed: bool = False  # True when built from an abstract only (no equations or code available)
    metrics: tuple[str, ...] = field(default_factory=tuple)  # the exact metric keys the function returns
    needs: tuple[str, ...] = field(default_factory=tuple)  # extra inputs the caller must supply, e.g. "ref_logp"
    stats: Callable[..., Any] | None = None  # batch-wide statistics the caller computes once per minibatch
    # per-step controller values the caller passes as ``state={name: float}`` (set by a schedule as
    # "method.name", kept in the checkpointed schedule state, never in the frozen config)
    state: tuple[str, ...] = field(default_factory=tuple)
    # schedules only: cfg -> the "method.field" keys it sets, and cfg -> the logged metric keys it reads;
    # both are checked at start-up against the run's methods and metrics
    sets: Callable[[Any], tuple[str, ...]] | None = None
    reads: Callable[[Any], tuple[str, ...]] | None = None
    # (cfg, n) -> a warning when the method's selection is degenerate among n tokens (a budget of one token,
    # a fraction that keeps everything or nothing), else None; the trainer checks it every minibatch
    scale: Callable[[Any, int], str | None] | None = None
    # a metric key the method logs that is 0 when it acted on no token (e.g. "clip/frac_cov"); the trainer warns
    # when it stays 0 over the first steps (a threshold no token crosses at this scale)
    active: str | None = None
    # advantages only: names of extra per-sample tensors the function returns as a third element
    # ``(adv, metrics, extras)``; the caller puts them in ``batch.extras`` for the methods that need them
    provides: tuple[str, ...] = field(default_factory=tuple)
    # samplers only: "group" (the keep mask is the same on every row of a group; dropped groups may be
    # refilled) or "sample" (single rows leave the loss; the group stays for the advantage)
    unit: str = "group"

    def make_config(self, overrides: dict[str, Any] | None = None) -> Any:
        """The method's frozen config with ``overrides`` applied; unknown keys raise, naming the allowed ones."""
        overrides = dict(overrides or {})
        if self.config is None:
            if overrides:
                raise ValueError(f"{self.axis} {self.name!r} takes no options, got {sorted(overrides)}")
            return None
        allowed = {f.name for f in fields(self.config)}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise ValueError(f"unknown option(s) {bad} for {self.axis} {self.name!r}; allowed: {sorted(allowed)}")
        return self.config(**overrides)


_REGISTRY: dict[str, dict[str, Entry]] = {axis: {} for axis in AXES}


def _check_axis(axis: str) -> None:
    if axis not in _REGISTRY:
        raise ValueError(f"unknown axis {axis!r}; allowed: {list(AXES)}")


def register(
    axis: Axis,
    name: str,
    *,
    config: type | None = None,
    paper: str = "",
    summary: str = "",
    reconstructed: bool = False,
    metrics: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
    stats: Callable[..., Any] | None = None,
    state: tuple[str, ...] = (),
    sets: Callable[[Any], tuple[str, ...]] | None = None,
    reads: Callable[[Any], tuple[str, ...]] | None = None,
    scale: Callable[[Any, int], str | None] | None = None,
    active: str | None = None,
    provides: tuple[str, ...] = (),
    unit: Literal["group", "sample"] = "group",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` under ``axis``/``name``. The summary defaults to the docstring's first line."""
    _check_axis(axis)
    if axis == "schedule" and (sets is None or reads is None):
        raise TypeError(f"schedule {name!r} must declare sets=cfg -> keys and reads=cfg -> metric keys")
    if provides and axis != "advantage":
        raise TypeError(f"only advantages may declare provides=, got {axis} {name!r}")
    if unit not in ("group", "sample") or (unit != "group" and axis != "sampler"):
        raise TypeError(f"unit={unit!r} of {axis} {name!r}: only samplers take unit='sample'")
    if config is not None and not (is_dataclass(config) and config.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"config of {axis} {name!r} must be a frozen dataclass, got {config!r}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY[axis]:
            raise ValueError(f"{axis} {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[axis][name] = Entry(
            axis=axis,
            name=name,
            fn=fn,
            config=config,
            paper=paper,
            summary=summary or (doc[0] if doc else ""),
            reconstructed=reconstructed,
            metrics=tuple(metrics),
            needs=tuple(needs),
            stats=stats,
            state=tuple(state),
            sets=sets,
            reads=reads,
            scale=scale,
            active=active,
            provides=tuple(provides),
            unit=unit,
        )
        return fn

    return wrap


def lookup(axis: Axis | str, name: str) -> Entry:
    """The registered entry for ``name`` on ``axis``; an unknown name raises and lists the known ones.

    Only what has been registered so far: ``entrolab.catalogue.get`` loads the built-in catalogue first and
    also resolves ``"package.module:function"`` strings.
    """
    _check_axis(axis)
    try:
        return _REGISTRY[axis][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY[axis])) or "(none)"
        raise ValueError(
            f"unknown {axis} {name!r}; known: {known} (or 'package.module:function' for your own)"
        ) from None


def registered(axis: Axis | str) -> dict[str, Entry]:
    """A copy of what is registered on ``axis`` so far, by name."""
    _check_axis(axis)
    return dict(_REGISTRY[axis])


def user_entry(axis: Axis | str, spec: str, fn: Callable[..., Any]) -> Entry:
    """The entry of a user's function loaded from ``spec``: the one it registered itself under, if any."""
    _check_axis(axis)
    for entry in _REGISTRY[axis].values():
        if entry.fn is fn:
            return entry
    doc = (fn.__doc__ or "").strip().splitlines()
    return Entry(axis, spec, fn, getattr(fn, "config", None), "user", doc[0] if doc else "")
