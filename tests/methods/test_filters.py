"""Numbers for the generic token filters: DAPO's overlong filter (mask-out of truncated sequences)."""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.filters import overlong_filter


def test_overlong_filter_masks_out_truncated():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    truncated = torch.tensor([False, True, False])
    weight, kept, m = overlong_filter(mask, cfg=None, entropy=None, old_logp=None, advantages=None, truncated=truncated)
    assert torch.equal(kept, torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]))
    assert torch.equal(weight, torch.ones(3, 4))
    assert m["filter/frac_masked_tokens"].item() == pytest.approx(4 / 8)
    assert m["filter/frac_truncated"].item() == pytest.approx(1 / 3)
    # Mask-out, not zero-weight: the truncated row leaves the token-mean denominator (4 tokens, not 8).
    loss = torch.arange(12.0).reshape(3, 4)
    assert aggregate(loss * weight, kept, "token-mean").item() == pytest.approx((0 + 1 + 2 + 8) / 4)
    _, kept_bool, _ = overlong_filter(
        mask.bool(), cfg=None, entropy=None, old_logp=None, advantages=None, truncated=truncated
    )
    assert kept_bool.dtype == torch.bool and torch.equal(kept_bool, kept.bool())
