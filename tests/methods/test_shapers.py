"""Numbers for the reward shapers: DAPO's soft overlong punishment (below, inside and beyond the buffer),
verl parity, validation."""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.shapers import OverlongPenaltyConfig, overlong_penalty
from entrolab.ops import contiguous_groups


def _penalty(lengths, **cfg):
    return overlong_penalty(
        torch.ones(len(lengths)),
        torch.ones(len(lengths), 1),
        cfg=OverlongPenaltyConfig(**cfg),
        group_id=contiguous_groups(len(lengths), 1),
        lengths=torch.tensor(lengths),
        truncated=torch.zeros(len(lengths), dtype=torch.bool),
        max_length=16,
    )


def test_overlong_penalty_below_in_beyond_buffer():
    # L_max 16, L_cache 4: free up to 12, then (12 - |y|) / 4, -1 at 16 and beyond.
    out, m = _penalty([10, 12, 13, 14, 16, 17], buffer_len=4)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.75, 0.5, 0.0, 0.0]))
    assert m["reward/frac_overlong"].item() == pytest.approx(4 / 6)
    assert m["reward/overlong_penalty_mean"].item() == pytest.approx(-(0.25 + 0.5 + 1 + 1) / 6)
    half, _ = _penalty([14, 20], buffer_len=4, penalty=0.5)
    torch.testing.assert_close(half, torch.tensor([0.75, 0.5]))


def test_overlong_penalty_matches_verl_within_budget():
    lengths = list(range(0, 17))
    out, _ = _penalty(lengths, buffer_len=5, penalty=0.7)
    verl = [1 + min(-(n - (16 - 5)) / 5 * 0.7, 0) for n in lengths]  # verl DAPO reward manager
    torch.testing.assert_close(out, torch.tensor(verl))


def test_overlong_penalty_validation():
    with pytest.raises(ValueError, match="buffer_len=32 exceeds max_length=16"):
        _penalty([1], buffer_len=32)
    with pytest.raises(ValueError, match="buffer_len must be >= 1, got 0"):
        OverlongPenaltyConfig(buffer_len=0)
