"""``field=value`` option items as a frozen config dataclass (SPEAR's replay, AEPO's rollout)."""

from __future__ import annotations

import ast
from typing import Any


def dataclass_options(cls: type, items: tuple[str, ...], what: str) -> Any:
    """``cls(**parsed items)``; values are Python literals (else strings); an unknown field names the allowed ones."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"{what} option {item!r} must look like 'field=value'")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    allowed = set(cls.__dataclass_fields__)
    bad = sorted(set(out) - allowed)
    if bad:
        raise ValueError(f"unknown {what} option(s) {bad}; allowed: {sorted(allowed)}")
    return cls(**out)


__all__ = ["dataclass_options"]
