"""Helpers shared by the catalogue's tests (``tests/methods/test_<family>.py``).

Random ragged minibatches, calls with an axis's keywords, garbage padding columns, and the padding-invariance
checks: small enough to read, written once.
"""

from __future__ import annotations

import torch

NAN, INF = float("nan"), float("inf")

RAGGED = torch.tensor([[1.0, 1, 0], [1, 0, 0]])  # [2, 3] mask: a row of 2 tokens and a row of 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ragged_batch(seed: int, b: int = 6, t: int = 9, dtype=torch.float64):
    """Random ragged minibatch: mask, logp (requires grad), old_logp, advantages [b, 1], entropy."""
    g = gen(seed)
    lengths = torch.tensor([9, 4, 0, 1, 7, 3][:b])
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 4
    logp = (old + 0.3 * torch.randn(b, t, generator=g, dtype=dtype)).requires_grad_()
    adv = torch.randn(b, 1, generator=g, dtype=dtype) * 3
    entropy = torch.rand(b, t, generator=g, dtype=dtype) * 2
    return mask, logp, old, adv, entropy


def call_filter(fn, mask, cfg, entropy=None, old_logp=None, advantages=None, **kw):
    """Call a token filter with the axis's keywords (``truncated=None``)."""
    return fn(mask, cfg=cfg, entropy=entropy, old_logp=old_logp, advantages=advantages, truncated=None, **kw)


def call_regularizer(fn, cfg, mask, entropy=None, logp=None, ref_logp=None, **extra):
    """Call a regulariser with the axis's keywords."""
    return fn(logp, mask, cfg=cfg, entropy=entropy, old_logp=None, ref_logp=ref_logp, **extra)


def pad(x: torch.Tensor, garbage: float = NAN, n: int = 2) -> torch.Tensor:
    """x with n extra columns of garbage along dim 1 (any trailing dims kept)."""
    return torch.cat([x, torch.full((x.shape[0], n, *x.shape[2:]), garbage, dtype=x.dtype)], 1)


def assert_padding_invariant(narrow, wide, t: int) -> None:
    """``(out, metrics)`` on t columns equals the padded call's first t columns (close); its padding is 0."""
    (a, ma), (b, mb) = narrow, wide
    torch.testing.assert_close(a, b[:, :t])
    assert torch.all(b[:, t:] == 0)
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-6, atol=1e-7)


def same_on_real_columns(narrow, padded) -> None:
    """As :func:`assert_padding_invariant`, but the outputs on the real columns are bit-identical."""
    (a, ma), (b, mb) = narrow, padded
    assert torch.equal(a, b[:, : a.shape[1]]) and torch.all(b[:, a.shape[1] :] == 0)
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-6, atol=1e-7)
