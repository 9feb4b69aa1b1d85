"""best_of_n: hand cases, keep >= G keeps every row, deterministic ties (index or entropy), group order by id."""

from __future__ import annotations

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.best_of_n import BestOfNConfig, best_of_n
from tests.methods._helpers import NAN, pad


def select(r, cfg=None, gid=None, shaped=None, entropy=None, mask=None):
    r = torch.tensor(r)
    gid = torch.arange(len(r) // 4).repeat_interleave(4) if gid is None else gid
    mask = torch.ones(len(r), 2) if mask is None else mask
    return best_of_n(
        r,
        mask,
        cfg=cfg or BestOfNConfig(),
        group_id=gid,
        shaped=r if shaped is None else torch.tensor(shaped),
        lengths=mask.sum(-1),
        entropy=entropy,
    )


def test_hand_cases():
    keep, m = select([0.2, 0.9, 0.1, 0.5, 0.0, 0.0, 1.0, 0.3])
    assert keep.tolist() == [False, True, False, False, False, False, True, False]
    assert m["sampler/kept_frac"].item() == 0.25 and m["best_of_n/best_reward_mean"].item() == pytest.approx(0.95)
    keep, m = select([0.2, 0.9, 0.1, 0.5, 0.0, 0.0, 1.0, 0.3], BestOfNConfig(keep=2))
    assert keep.tolist() == [False, True, False, True, False, False, True, True]
    assert m["sampler/kept_frac"].item() == 0.5 and m["best_of_n/best_reward_mean"].item() == pytest.approx(0.675)


def test_shaped_metric_ranks_by_the_shaped_reward_and_reports_the_verifier_reward():
    keep, m = select([1.0, 1.0, 0.0, 0.0], BestOfNConfig(metric="shaped"), shaped=[0.7, 0.9, 0.0, 0.0])
    assert keep.tolist() == [False, True, False, False] and m["best_of_n/best_reward_mean"].item() == 1.0


@pytest.mark.parametrize("k", [4, 5, 100])
def test_keep_at_least_g_keeps_every_row(k):
    keep, m = select([0.2, 0.9, 0.1, 0.5, 0.0, 0.0, 1.0, 0.3], BestOfNConfig(keep=k))
    assert keep.all() and m["sampler/kept_frac"].item() == 1.0
    assert m["best_of_n/best_reward_mean"].item() == pytest.approx(3.0 / 8)


def test_ties_go_to_the_lower_index_or_the_lower_entropy():
    r = [1.0, 0.0, 1.0, 1.0]  # rows 0, 2, 3 tie
    assert select(r)[0].tolist() == [True, False, False, False]
    assert select(r, BestOfNConfig(keep=2))[0].tolist() == [True, False, True, False]
    assert select([0.0] * 4)[0].tolist() == [True, False, False, False]  # an all-equal group: the first row
    h = torch.tensor([[0.9, 0.9], [0.0, 0.0], [0.5, 0.1], [0.3, 0.3]])  # means 0.9, 0.0, 0.3, 0.3
    by_entropy = BestOfNConfig(tie_break="entropy")
    assert select(r, by_entropy, entropy=h)[0].tolist() == [False, False, True, False]  # 0.3 = 0.3: lower index
    assert select(r, BestOfNConfig(keep=2, tie_break="entropy"), entropy=h)[0].tolist() == [False, False, True, True]
    # the entropy mean is over the mask only: garbage in padded columns changes nothing
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # row 0's mean becomes 0.9
    wide = select(r, by_entropy, entropy=pad(h, NAN), mask=pad(mask, 0.0))[0]
    assert torch.equal(wide, select(r, by_entropy, entropy=h, mask=mask)[0])


def test_groups_are_found_by_id_and_rows_in_batch_order():
    r = [0.0, 1.0, 1.0, 0.5, 1.0, 0.2, 0.3, 0.9]
    gid = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0])  # group 0: rows 1, 3, 4, 7; group 1: rows 0, 2, 5, 6
    keep, _ = select(r, gid=gid)
    assert keep.tolist() == [False, True, True, False, False, False, False, False]  # row 1 beats tied row 4
    perm = torch.tensor([4, 0, 6, 2, 7, 1, 5, 3])
    shuffled, _ = select([r[i] for i in perm.tolist()], gid=gid[perm])
    # old row 4 (now 0) comes before old row 1 (now 5): the tie is now its; old row 2 is now row 3
    assert shuffled.nonzero().flatten().tolist() == [0, 3]


def test_registration_and_bad_config():
    entry = catalogue.get("sampler", "best_of_n")
    assert entry.unit == "sample" and entry.paper == "arXiv:2404.01730" and not entry.reconstructed
    with pytest.raises(ValueError, match="keep must be >= 1"):
        BestOfNConfig(keep=0)
    with pytest.raises(ValueError, match=r"tie_break must be one of \['index', 'entropy'\], got 'random'"):
        BestOfNConfig(tie_break="random")
    with pytest.raises(ValueError, match=r"metric must be one of \['reward', 'shaped'\]"):
        BestOfNConfig(metric="acc")
    with pytest.raises(ValueError, match="needs entropy"):
        select([1.0, 0.0, 1.0, 0.0], BestOfNConfig(tie_break="entropy"))
