"""The catalogue: every built-in method registered, and names (or ``"package.module:function"``) resolved.

Sits above the registry mechanism (``entrolab.registry``, which imports nothing of entrolab) and the method
families (``entrolab.methods``, which register themselves on import).
"""

from __future__ import annotations

import entrolab.methods  # noqa: F401  (registers the built-in catalogue)
from entrolab.loader import load_callable
from entrolab.registry import AXES, Axis, Entry, lookup, registered, user_entry


def get(axis: Axis | str, name: str) -> Entry:
    """The entry for ``name`` on ``axis``; ``"pkg.module:fn"`` loads a user's function (its config is the one
    it was registered with, or ``getattr(fn, "config", None)``)."""
    if ":" in name:
        registered(axis)  # an unknown axis raises here
        return user_entry(axis, name, load_callable(name, what=str(axis)))
    return lookup(axis, name)


def names(axis: Axis | str) -> list[str]:
    """Registered names on ``axis``, sorted."""
    return sorted(registered(axis))


def entries() -> dict[str, list[Entry]]:
    """Every registered entry, per axis, sorted by name."""
    return {axis: [e for _, e in sorted(registered(axis).items())] for axis in AXES}


__all__ = ["AXES", "Entry", "entries", "get", "names"]
