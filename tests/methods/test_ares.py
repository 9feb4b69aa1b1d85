"""ARES: the note's code-version numbers, window entropy, tau, buckets, the paper form, padding and shuffles."""

from __future__ import annotations

import pytest
import torch

from entrolab import ops, registry
from entrolab.methods.ares import (
    EASY,
    HARD,
    MEDIUM,
    AresConfig,
    ares,
    code_entropy_score,
    hwe_threshold,
    window_entropy,
)
from tests.methods._helpers import NAN, gen, pad

# With w = 1 and the per-response max (quantile 1) of 0/1 entropies, tau = 1 and N_HE = the number of 1s.
COUNTING = AresConfig(window=1, quantile=1.0)


def call(rewards, mask, h, group_id, cfg=COUNTING):
    return ares(
        rewards, mask, cfg=cfg, group_id=group_id, lengths=None, truncated=None, max_length=mask.shape[1], old_entropy=h
    )


def flat(*groups: list) -> list:
    """The rows of several groups, in order."""
    return [x for group in groups for x in group]


def counted(n_he: list[int], t: int = 32) -> torch.Tensor:
    """0/1 entropies [B, t] whose row i has n_he[i] ones (then zeros)."""
    return (torch.arange(t) < torch.tensor(n_he).unsqueeze(-1)).float()


def score(right, bucket, n_he, target, cfg=None):
    cfg = cfg or AresConfig()
    out = code_entropy_score(
        torch.tensor([float(n_he)]), torch.tensor([float(target)]), torch.tensor([bucket]), torch.tensor([right]), cfg
    )
    return float(right) + out.item()  # the code's overall = accuracy + entropy score


def test_note_code_version_numbers():
    assert score(True, EASY, 20, 10) == pytest.approx(0.5)  # Huber 7.5 / 3.5 * 0.5 > cap: -0.5
    assert score(True, EASY, 11, 10) == pytest.approx(1.0)  # inside the band m = 1.5
    assert score(False, EASY, 10, 10) == pytest.approx(0.15)  # sigmoid(0) * 0.5 * 0.6
    assert score(True, HARD, 10, 10) == pytest.approx(1.4575, abs=1e-4)  # sigmoid(3.5 / 3) * 0.6
    assert score(True, HARD, 2, 10) == pytest.approx(0.9)  # 0.5 * Huber(4.5, 4) / 7.5 * 0.6 = 0.1
    assert score(False, HARD, 30, 10) == pytest.approx(0.5976, abs=1e-4)  # sigmoid(16.5 / 3) * 0.6
    # medium: m = 2.5, kappa 3; a symmetric band, then Huber
    assert score(True, MEDIUM, 10, 10) == pytest.approx(1.0)
    assert score(True, MEDIUM, 2, 10) == pytest.approx(1 - 4.0 / 5.5 * 0.5)
    assert score(True, MEDIUM, 18, 10) == pytest.approx(1 - 4.0 / 5.5 * 0.5)
    assert score(False, MEDIUM, 10, 10) == pytest.approx(0.2)  # sigmoid(0) * 0.5 * 0.8
    assert score(True, EASY, 20, 10, AresConfig(alpha=1.0)) == pytest.approx(0.0)  # cap = alpha


def test_note_numbers_from_entropies_through_the_shaper():
    """Three groups of 5 whose counts give the note's (bucket, N_HE, target) cases; targets are bucket means."""
    n_he = flat([20, 11, 10, 5, 4], [2, 30, 6, 6, 6], [10, 10, 10, 10, 10])
    right = flat([1, 1, 0, 1, 1], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0])  # pass 4/5 easy, 1/5 hard, 1/5 hard
    out, m = call(torch.tensor(right).float(), torch.ones(15, 32), counted(n_he), ops.contiguous_groups(15, 5))
    expected = flat([0.5, 1.0, 0.15, 1.0, 1.0], [0.9, 0.5976, 0.3, 0.3, 0.3], [1.4575, 0.3, 0.3, 0.3, 0.3])
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-4, rtol=0)
    assert m["ares/tau"].item() == 1.0 and m["ares/n_he_mean"].item() == pytest.approx(10.0)
    assert m["ares/target_easy"].item() == 10 and m["ares/target_hard"].item() == 10
    assert m["ares/target_medium"].item() == 0  # empty bucket
    assert m["ares/frac_easy"].item() == pytest.approx(1 / 3) and m["ares/frac_hard"].item() == pytest.approx(2 / 3)
    assert m["ares/shaping_mean"].item() == pytest.approx(sum(expected) / 15 - sum(right) / 15, abs=1e-5)


def test_code_target_is_rounded_half_to_even():
    # medium bucket (pass 1/2) with counts 3 and 2: mean 2.5 -> 2 in the code (numpy / torch round half to even)
    args = (torch.tensor([1.0, 0.0]), torch.ones(2, 8), counted([3, 2], 8), torch.zeros(2, dtype=torch.long))
    assert call(*args)[1]["ares/target_medium"].item() == 2.0
    paper = AresConfig(window=1, quantile=1.0, variant="paper")
    assert call(*args, cfg=paper)[1]["ares/target_medium"].item() == 2.5  # paper: the exact mean


def test_window_entropy_note_example():
    h = torch.tensor([[0.0, 0, 4, 4, 4, 4, 0, 0]])
    nxt, valid_next = window_entropy(h, torch.ones(1, 8), 4, "next")
    assert nxt[0, 1].item() == 4.0  # the next 4 tokens after t = 1
    assert valid_next[0].tolist() == [True] * 4 + [False] * 4  # t + 4 must still be a response token
    own, valid_self = window_entropy(h, torch.ones(1, 8), 4, "self")
    assert own[0, :5].tolist() == [2.0, 3.0, 4.0, 3.0, 2.0] and valid_self[0].tolist() == [True] * 5 + [False] * 3
    # a window must lie wholly inside the mask: with 6 response tokens only t <= 1 (next) is complete
    _, valid = window_entropy(h, torch.tensor([[1.0] * 6 + [0, 0]]), 4, "next")
    assert valid[0].tolist() == [True, True] + [False] * 6


def test_threshold_tokens_windows_mean_median():
    h = torch.tensor([[0.0, 0, 4, 4, 4, 4, 0, 0], [1.0] * 8, [2.0] * 8])
    mask = torch.ones(3, 8)

    def tau(**kw):
        cfg = AresConfig(**kw)
        means, valid = window_entropy(h, mask.bool(), cfg.window, cfg.window_from)
        return hwe_threshold(h, mask.bool(), means, valid, cfg).item()

    # tokens: the 95th percentiles are 4, 1, 2 (linear interpolation, as numpy.percentile)
    assert tau() == pytest.approx(7 / 3) and tau(tau_reduce="median") == pytest.approx(2.0)
    # the code's windows: next-4 means [3, 4, 3, 2], t >= 4 filled with their mean 3 -> 3 + 0.65 * (4 - 3)
    assert tau(window_from="next", tau_of="windows", tau_reduce="median") == pytest.approx(2.0)
    assert tau(window_from="next", tau_of="windows") == pytest.approx((3.65 + 1 + 2) / 3)
    # a response shorter than its window: every position takes its first token's entropy
    short = torch.tensor([[0.7, 3.0, 0.0]])
    cfg = AresConfig(window_from="next", tau_of="windows")
    means, valid = window_entropy(short, torch.ones(1, 3).bool(), 4, "next")
    assert hwe_threshold(short, torch.ones(1, 3).bool(), means, valid, cfg).item() == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("group", "passes", "easy", "hard"),
    [(3, [3, 2, 1, 0], 2 / 4, 1 / 4), (8, [6, 5, 3, 2], 1 / 4, 1 / 4), (8, [8, 0, 2, 3], 1 / 4, 2 / 4)],
)
def test_bucket_thresholds(group, passes, easy, hard):
    """easy at pass >= 2/3, medium at >= 1/3, else hard (for G = 8: the paper's >= 6, 3..5, <= 2 of 8)."""
    right = torch.cat([(torch.arange(group) < k).float() for k in passes])
    b = len(passes) * group
    _, m = call(right, torch.ones(b, 4), torch.rand(b, 4, generator=gen(0)), ops.contiguous_groups(b, group))
    assert m["ares/frac_easy"].item() == pytest.approx(easy) and m["ares/frac_hard"].item() == pytest.approx(hard)


def test_paper_variant_is_the_verifier_reward_unless_lambda_is_fixed():
    n_he = flat([20, 5, 10, 5], [2, 30, 6, 2], [10, 14, 6, 10])  # targets: easy 10, hard 10, medium 10
    right = torch.tensor(flat([1, 1, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0])).float()  # easy, hard, medium
    args = (right, torch.ones(12, 32), counted(n_he), ops.contiguous_groups(12, 4))
    out, m = call(*args, cfg=AresConfig(window=1, quantile=1.0, variant="paper"))
    assert torch.equal(out, right) and m["ares/shaping_mean"].item() == 0.0  # lambda_d = 0 by construction
    out, _ = call(*args, cfg=AresConfig(window=1, quantile=1.0, variant="paper", paper_lambda=0.1))
    # only wrong rows move: easy over-count (5 < 10: 0), hard under-count (2, 30, 6), medium |Delta|
    expected = flat([1, 1, 1, 0], [-0.8, 0.0, -0.4, 1], [1, 1, -0.4, 0])
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=0)


def test_extra_masked_columns_change_nothing():
    g = gen(1)
    lengths = torch.tensor([9, 4, 0, 1, 7, 3, 9, 6])
    mask = (torch.arange(9) < lengths.unsqueeze(-1)).float()
    h = torch.rand(8, 9, generator=g) * 2
    h_garbage = torch.where(mask.bool(), h, torch.full_like(h, NAN))  # masked entries are NaN
    rewards, gid = torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 0]), ops.contiguous_groups(8, 4)
    for cfg in (AresConfig(), AresConfig(window_from="next", tau_of="windows", tau_reduce="median")):
        out, m = call(rewards, mask, h, gid, cfg)
        out_pad, m_pad = call(rewards, pad(mask, 0.0, 3), pad(h_garbage, NAN, 3), gid, cfg)
        assert torch.equal(out, out_pad) and all(torch.equal(m[k], m_pad[k]) for k in m)
        assert all(torch.isfinite(v) for v in m.values())


def test_row_and_group_shuffles_change_nothing():
    g = gen(2)
    mask = (torch.arange(12) < torch.randint(3, 13, (12,), generator=g).unsqueeze(-1)).float()
    h = torch.rand(12, 12, generator=g) * 3
    rewards = torch.randint(0, 2, (12,), generator=g).float()
    gid = ops.contiguous_groups(12, 4)
    for cfg in (AresConfig(), AresConfig(window_from="next", tau_of="windows", tau_reduce="median")):
        out, m = call(rewards, mask, h, gid, cfg)
        perm = torch.randperm(12, generator=g)
        out_p, m_p = call(rewards[perm], mask[perm], h[perm], gid[perm] * 7 + 3, cfg)  # any ids, any order
        torch.testing.assert_close(out_p, out[perm])
        for k in m:
            torch.testing.assert_close(m_p[k], m[k])


def test_empty_responses_are_left_out_and_all_empty_is_finite():
    h = torch.tensor([[0.0, 0, 0, 0], [3.0, 3, 3, 3]])
    out, m = call(torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]), h, torch.zeros(2).long())
    assert m["ares/tau"].item() == 0.0 and torch.isfinite(out).all()
    out, m = call(torch.tensor([1.0, 0.0]), torch.zeros(2, 4), h, torch.zeros(2).long(), AresConfig())
    assert all(torch.isfinite(v) for v in m.values()) and m["ares/n_he_mean"].item() == 0.0


def test_registration_and_missing_entropy():
    entry = registry.lookup("reward_shaper", "ares")
    assert entry.needs == ("old_entropy",) and entry.paper == "arXiv:2510.08457" and not entry.reconstructed
    with pytest.raises(ValueError, match="needs old_entropy"):
        ares(
            torch.ones(2),
            torch.ones(2, 3),
            cfg=AresConfig(),
            group_id=torch.zeros(2).long(),
            lengths=None,
            truncated=None,
            max_length=3,
        )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"variant": "both"}, r"variant must be one of \['code', 'paper'\], got 'both'"),
        ({"window_from": "prev"}, r"window_from must be one of \['self', 'next'\]"),
        ({"tau_of": "logits"}, r"tau_of must be one of \['tokens', 'windows'\]"),
        ({"tau_reduce": "max"}, r"tau_reduce must be one of \['mean', 'median'\]"),
        ({"window": 0}, r"window must be an int >= 1, got 0"),
        ({"quantile": 95}, r"quantile must be in \[0, 1\], got 95"),
        ({"easy_at": 0.2}, r"0 < medium_at <= easy_at <= 1"),
        ({"alpha": -1.0}, r"alpha must be >= 0"),
        ({"kappa": (2.0, 0.0, 4.0)}, r"kappa must be 3 values \(easy, medium, hard\) > 0"),
        ({"margin_frac": (0.1, 0.2)}, r"margin_frac must be 3 values"),
        ({"paper_lambda": -0.1}, r"paper_lambda must be None or >= 0"),
    ],
)
def test_bad_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        AresConfig(**overrides)
