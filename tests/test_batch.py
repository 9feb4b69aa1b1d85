"""``TokenBatch`` slicing (select / trim / micro_batches / from_rollout) and ``ops.Groups``, with exact numbers.

Every per-row field of the hand-built batch holds its row index (times 10, plus the column for ``[B, T]``
fields), so a field sliced with the wrong rows or columns shows up as a wrong number.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from entrolab import ops
from entrolab.batch import TokenBatch
from entrolab.rollout import Rollout

LENGTHS = (7, 3, 0, 1, 5, 2)  # row 2 is empty; the response tensors are 9 wide (2 columns of pure padding)
B, T, TP = len(LENGTHS), 9, 4


def _rows_cols(dtype=torch.float64) -> torch.Tensor:
    """10 * row + column.  [B, T]"""
    return (10 * torch.arange(B).unsqueeze(-1) + torch.arange(T)).to(dtype)


def _batch(advantages: str = "seq", token_weight: bool = True) -> TokenBatch:
    attended = (torch.arange(T) < torch.tensor(LENGTHS).unsqueeze(-1)).double()  # [B, T]
    loss_mask = attended.clone()
    loss_mask[0, 1] = 0.0  # a filter dropped one attended token
    rc = _rows_cols()
    rows = torch.arange(B, dtype=torch.float64)
    return TokenBatch(
        prompt_ids=(10 * torch.arange(B).unsqueeze(-1) + torch.arange(TP)).long(),
        prompt_mask=torch.ones(B, TP, dtype=torch.long),
        response_ids=rc.long() * attended.long(),
        attention_mask=attended,
        loss_mask=loss_mask,
        old_logp=-rc * attended,
        old_entropy=rc * attended / 100,
        group_id=torch.tensor([0, 0, 1, 1, 2, 2]),
        truncated=torch.tensor([True, False, False, False, True, False]),
        advantages=rows.unsqueeze(-1) if advantages == "seq" else rc * attended,  # [B, 1] or [B, T]
        token_weight=(rc + 0.5) * attended if token_weight else None,
        extras={"vocab_baseline": rc + 0.25, "score": rows + 0.75},  # [B, T] and [B]
    )


def _fields(batch: TokenBatch) -> dict:
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}


def _assert_same(a: TokenBatch, b: TokenBatch) -> None:
    fa, fb = _fields(a), _fields(b)
    for name, x in fa.items():
        y = fb[name]
        if name == "extras":
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), k
        elif x is None or y is None:
            assert x is None and y is None, name
        else:
            assert torch.equal(x, y), name


# ---------------------------------------------------------------------------------------------------- select


@pytest.mark.parametrize("idx", [torch.tensor([4, 0, 3]), slice(1, 4), torch.tensor([5, 5, 2])])
def test_select_slices_every_field_with_the_same_rows(idx):
    batch = _batch()
    part = batch.select(idx)
    rows = torch.arange(B)[idx]
    for name, x in _fields(batch).items():
        y = getattr(part, name)
        if name == "extras":
            assert y.keys() == {"vocab_baseline", "score"}
            assert torch.equal(y["vocab_baseline"], x["vocab_baseline"][rows])
            assert torch.equal(y["score"], x["score"][rows])
            assert y["score"].shape == (len(rows),)  # [B] extras stay [b]
        else:
            assert torch.equal(y, x[rows]), name
    assert part.advantages.shape == (len(rows), 1)  # [B, 1] advantages stay [b, 1]
    assert part.response_ids[:, 0].tolist() == [10 * r if LENGTHS[r] else 0 for r in rows.tolist()]
    assert part.extras["score"].tolist() == [r + 0.75 for r in rows.tolist()]
    assert len(part) == len(rows)


def test_select_keeps_none_fields_none_and_leaves_the_batch_alone():
    batch = _batch(token_weight=False).replace(advantages=None)
    before = {k: v.clone() for k, v in _fields(batch).items() if isinstance(v, torch.Tensor)}
    part = batch.select(torch.tensor([1, 2]))
    assert part.advantages is None and part.token_weight is None
    assert torch.equal(part.weight, torch.ones(2, T, dtype=torch.float64))  # None weight reads as ones
    for k, v in before.items():
        assert torch.equal(getattr(batch, k), v)


# ------------------------------------------------------------------------------------------------------ trim


def test_trim_cuts_every_per_token_field_to_the_longest_response():
    batch = _batch()
    assert batch.width == 7 and batch.lengths.tolist() == list(LENGTHS)
    cut = batch.trim()
    for name in ("response_ids", "attention_mask", "loss_mask", "old_logp", "old_entropy", "token_weight"):
        assert torch.equal(getattr(cut, name), getattr(batch, name)[:, :7]), name
    assert torch.equal(cut.extras["vocab_baseline"], batch.extras["vocab_baseline"][:, :7])
    assert torch.equal(cut.extras["score"], batch.extras["score"])  # [B]: no columns to cut
    assert torch.equal(cut.advantages, batch.advantages) and cut.advantages.shape == (B, 1)  # [B, 1] kept
    for name in ("prompt_ids", "prompt_mask", "group_id", "truncated"):
        assert torch.equal(getattr(cut, name), getattr(batch, name)), name
    assert cut.extras["vocab_baseline"][3, 6].item() == 36.25


def test_trim_to_a_given_width_and_token_advantages():
    batch = _batch(advantages="token")
    cut = batch.trim(3)
    assert cut.advantages.shape == (B, 3) and torch.equal(cut.advantages, batch.advantages[:, :3])  # [B, T] cut
    assert cut.response_ids.shape == (B, 3) and cut.extras["vocab_baseline"].shape == (B, 3)
    assert cut.loss_mask.sum().item() == 3 + 3 + 0 + 1 + 3 + 2 - 1  # the dropped token (0, 1) stays dropped
    empty = batch.select(torch.tensor([2]))
    assert empty.width == 1 and empty.trim().response_ids.shape == (1, 1)  # an empty response keeps 1 column


# ------------------------------------------------------------------------------------------------ micro_batches


@pytest.mark.parametrize(
    ("size", "slices", "widths"),
    [
        (2, [(0, 2), (2, 4), (4, 6)], [7, 1, 5]),
        (4, [(0, 4), (4, 6)], [7, 5]),
        (1, [(r, r + 1) for r in range(B)], [7, 3, 1, 1, 5, 2]),
        (None, [(0, 6)], [7]),
        (100, [(0, 6)], [7]),
    ],
)
def test_micro_batches_are_contiguous_rows_each_trimmed_to_its_own_width(size, slices, widths):
    batch = _batch()
    got = list(batch.micro_batches(size))
    # (the last slice's stop may run past B, as Python slicing allows: compare the rows it selects)
    assert [range(B)[rows] for rows, _ in got] == [range(a, b) for a, b in slices]
    assert [micro.width for _, micro in got] == widths
    assert [micro.response_ids.shape[1] for _, micro in got] == widths
    for rows, micro in got:
        _assert_same(micro, batch.select(rows).trim())
    # The micro-batches, padded back to T, are the batch again (nothing lost, nothing moved).
    for name in ("response_ids", "loss_mask", "old_logp", "token_weight"):
        parts = [torch.nn.functional.pad(getattr(m, name), (0, T - m.width)) for _, m in got]
        assert torch.equal(torch.cat(parts) * batch.attention_mask.to(parts[0].dtype), getattr(batch, name)), name
    assert sum(float(m.loss_mask.sum()) for _, m in got) == float(batch.loss_mask.sum()) == 17.0


@pytest.mark.parametrize("size", [0, -2])
def test_micro_batch_size_below_one_raises(size):
    with pytest.raises(ValueError, match=f"micro-batch size must be >= 1 or None, got {size}"):
        list(_batch().micro_batches(size))


# ------------------------------------------------------------------------------------------------- from_rollout


def _rollout(b: int = 6, t: int = 5) -> Rollout:
    mask = (torch.arange(t) < torch.arange(1, b + 1).clamp(max=t).unsqueeze(-1)).float()  # [B, T]
    return Rollout(
        prompt_ids=torch.ones(b, 3, dtype=torch.long),
        prompt_mask=torch.ones(b, 3, dtype=torch.long),
        response_ids=torch.arange(b * t).reshape(b, t) * mask.long(),
        response_mask=mask,
        logp=-mask,
        entropy=0.5 * mask,
        truncated=torch.arange(b) >= t,
        extras={"vocab_baseline": 0.1 * mask},
    )


@pytest.mark.parametrize(
    ("group_size", "group_id"), [(3, [0, 0, 0, 1, 1, 1]), (2, [0, 0, 1, 1, 2, 2]), (6, [0] * 6), (1, list(range(6)))]
)
def test_from_rollout_numbers_contiguous_groups(group_size, group_id):
    rollout = _rollout()
    batch = TokenBatch.from_rollout(rollout, group_size)
    assert batch.group_id.tolist() == group_id and batch.group_id.dtype == torch.int64
    assert torch.equal(batch.group_id, ops.contiguous_groups(6, group_size))
    assert torch.equal(batch.attention_mask, rollout.response_mask)
    assert torch.equal(batch.loss_mask, rollout.response_mask)
    assert torch.equal(batch.old_logp, rollout.logp) and torch.equal(batch.old_entropy, rollout.entropy)
    assert batch.advantages is None and batch.token_weight is None
    assert batch.extras.keys() == {"vocab_baseline"} and batch.extras is not rollout.extras
    assert batch.lengths.tolist() == [1, 2, 3, 4, 5, 5] and batch.truncated.tolist() == [False] * 5 + [True]


@pytest.mark.parametrize("group_size", [4, 0, 7])
def test_from_rollout_rejects_a_partial_group(group_size):
    with pytest.raises(ValueError, match=f"a rollout of 6 sequences is not a whole number of groups of {group_size}"):
        TokenBatch.from_rollout(_rollout(), group_size)


# -------------------------------------------------------------------------------------------------- ops.Groups


def test_groups_grid_and_rows_round_trip_on_a_shuffled_order():
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    group_id = ops.contiguous_groups(12, 3)[perm]  # 4 groups of 3, shuffled
    x = torch.stack([torch.arange(12.0), 100 + torch.arange(12.0)], -1)  # [B, 2], row b holds (b, 100 + b)
    groups = ops.Groups(group_id)
    assert (groups.num_groups, groups.size) == (4, 3)
    grid = groups.grid(x)  # [P, G, 2]
    assert grid.shape == (4, 3, 2)
    for p in range(4):
        rows = (group_id == p).nonzero().squeeze(-1)  # the rows of group p, in batch order
        assert grid[p, :, 0].tolist() == rows.float().tolist()
    assert torch.equal(groups.rows(grid), x)
    assert torch.equal(groups.rows(groups.grid(group_id)), group_id)
    # A per-group statistic scattered back lands on every row of the group.
    means = groups.rows(grid[..., 0].mean(-1, keepdim=True).expand(4, 3))  # [B]
    for b in range(12):
        assert means[b].item() == pytest.approx(x[group_id == group_id[b], 0].mean().item())


def test_groups_of_contiguous_ids_are_a_plain_reshape_and_ids_need_not_be_dense():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    groups = ops.Groups(ops.contiguous_groups(8, 4))
    assert torch.equal(groups.order, torch.arange(8)) and torch.equal(groups.inverse, torch.arange(8))
    assert torch.equal(groups.grid(x), x.reshape(2, 4, 3))
    sparse = ops.Groups(torch.tensor([9, 2, 9, 2, 5, 5]))  # groups in increasing id: 2, 5, 9
    assert sparse.grid(torch.arange(6)).tolist() == [[1, 3], [4, 5], [0, 2]]
    assert sparse.rows(sparse.grid(torch.arange(6))).tolist() == list(range(6))


def test_groups_errors_name_the_shape_and_the_sizes():
    with pytest.raises(ValueError, match=r"group_id must be \[B\], got shape \(2, 3\)"):
        ops.Groups(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"every group must have the same number of samples, got sizes \{0: 2, 1: 3\}"):
        ops.Groups(torch.tensor([1, 0, 1, 1, 0]))
    with pytest.raises(ValueError, match="batch of 7 sequences is not a whole number of groups of 2"):
        ops.contiguous_groups(7, 2)
