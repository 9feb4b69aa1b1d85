"""A reward with spread on the random tiny model (whose completions are almost never well-formed), used by the
golden-file regression runs so that advantages, clipping and every filter see non-zero signals."""

from __future__ import annotations


def digit_share(completion: str, example) -> float:
    """The share of digits in the completion (0 for an empty one)."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)
