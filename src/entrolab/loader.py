"""One loader for ``"package.module:attribute"`` strings (user methods, reward functions), with clear errors.

Imports nothing of entrolab, so the registry and the reward protocol can both use it.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_object(spec: str, what: str = "object") -> Any:
    """The attribute named by ``"package.module:attribute"``; a ``ValueError`` naming ``spec`` when it is not there.

    ``what`` names the kind of thing in the message (e.g. ``"reward function"``, ``"policy_loss"``).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for {what} {spec!r}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no callable or attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_callable(spec: str, what: str = "function") -> Any:
    """Like :func:`load_object`, and the result must be callable."""
    obj = load_object(spec, what)
    if not callable(obj):
        raise ValueError(f"{what} {spec!r} is not callable (got {type(obj).__name__})")
    return obj


__all__ = ["load_callable", "load_object"]
