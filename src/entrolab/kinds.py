"""Mode names shared by several layers, defined once (imports nothing of entrolab)."""

from __future__ import annotations

from typing import Literal

Backend = Literal["auto", "lean", "hf"]
"""Which forward samples and scores: ``entrolab.lean``'s (``lean``), the model's own (``hf``), or lean where it
applies (``auto``)."""
LRSchedule = Literal["constant", "cosine", "linear"]
"""Learning-rate schedule after warm-up."""

RolloutKind = Literal["plain", "aepo"]
"""A multi-turn rollout: G independent episodes per prompt, or AEPO's entropy-balanced global + branch split."""

__all__ = ["Backend", "LRSchedule", "RolloutKind"]
