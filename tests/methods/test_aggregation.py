"""Numbers for the aggregation modes: closed forms on a ragged 2 x 3 batch, verl ``agg_loss`` parity, exact
zero gradients on masked inf/nan, micro-batch and padding invariance with minibatch-wide counts."""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.aggregation import ADDITIVE_MODES, AGG_MODES, aggregate
from tests.methods._helpers import RAGGED

LOSS = torch.tensor([[1.0, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("token-sum", 7.0),
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2
        ("seq-mean-token-sum-norm", 7 / 8),  # 7 / (2 seqs * norm_len 4)
    ],
)
def test_aggregation_closed_form(mode, expected):
    assert aggregate(LOSS, RAGGED, mode, norm_len=4).item() == pytest.approx(expected)


def test_aggregation_empty_sequence_left_out_of_seq_mean():
    # As verl agg_loss: the fully masked row counts neither in the seq-mean numerator nor in num_seqs.
    mask = torch.tensor([[1.0, 1, 0], [0, 0, 0]])
    assert aggregate(LOSS, mask, "seq-mean-token-mean").item() == 1.5
    assert aggregate(LOSS, mask, "seq-mean-token-sum").item() == 3.0
    assert aggregate(LOSS, mask, "seq-mean-token-sum-norm").item() == 1.0  # default norm_len = T = 3
    assert aggregate(LOSS, torch.zeros(2, 3), "token-mean").item() == 0.0  # empty minibatch: 0, not nan


def _verl_agg_loss(loss_mat, loss_mask, mode):
    """verl core_algos.agg_loss, single rank, default counts (written out for parity)."""
    if mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    if mode == "token-sum":
        return (loss_mat * loss_mask).sum()
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        loss = (seq_losses * seq_mask).sum() / seq_mask.sum()
        return loss / loss_mask.shape[-1] if mode.endswith("norm") else loss
    seq_mask = torch.sum(loss_mask, dim=-1)
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
    seq_mask = (seq_mask > 0).float()
    return (seq_losses * seq_mask).sum() / seq_mask.sum()


@pytest.mark.parametrize("mode", ADDITIVE_MODES)  # verl has no bnpo (TRL's; tested in test_update.py)
def test_aggregation_matches_verl(mode):
    g = torch.Generator().manual_seed(4)
    loss = torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = (torch.arange(9) < torch.tensor([9, 4, 0, 1, 7, 3]).unsqueeze(-1)).double()
    torch.testing.assert_close(aggregate(loss, mask, mode), _verl_agg_loss(loss, mask, mode))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_masked_inf_nan_exact_zero_grad(mode):
    loss = torch.tensor([[1.0, float("inf"), 2.0], [float("nan"), 3.0, -float("inf")]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    out = aggregate(loss, mask, mode)
    out.backward()
    assert torch.isfinite(out)
    assert torch.all(loss.grad[~mask] == 0) and torch.all(loss.grad[mask] != 0)


@pytest.mark.parametrize("mode", ADDITIVE_MODES)
def test_aggregation_micro_batch_invariance(mode):
    g = torch.Generator().manual_seed(5)
    loss = torch.randn(8, 10, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(10) < torch.tensor([10, 3, 0, 7, 1, 10, 5, 2]).unsqueeze(-1)).double()
    counts = {"num_tokens": mask.sum(), "num_seqs": (mask.sum(-1) > 0).sum(), "norm_len": 16}
    full = aggregate(loss, mask, mode, **counts)
    (g_full,) = torch.autograd.grad(full, loss)
    parts = sum(aggregate(lo, ma, mode, **counts) for lo, ma in zip(loss.split(2), mask.split(2), strict=True))
    (g_parts,) = torch.autograd.grad(parts, loss)
    torch.testing.assert_close(parts, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_parts, g_full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_padding_invariance(mode):
    pad = torch.tensor([[float("nan"), 7.0], [float("inf"), -3.0]])
    wide_loss, wide_mask = torch.cat([LOSS, pad], 1), torch.cat([RAGGED, torch.zeros(2, 2)], 1)
    assert aggregate(wide_loss, wide_mask, mode, norm_len=4) == aggregate(LOSS, RAGGED, mode, norm_len=4)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOSS, RAGGED, "mean")  # type: ignore[arg-type]
    from entrolab.methods.aggregation import seq_mean_token_sum_norm

    with pytest.raises(ValueError, match="norm_len"):
        seq_mean_token_sum_norm(LOSS, RAGGED, num_tokens=3, num_seqs=2, norm_len=None)
