"""Entrocraft: the sign of c_i against an exact entropy change, the note's properties (gain 0 rejects nothing,
H > H* lowers the kept sum of c_i, exact schedule endpoints), determinism, padding, and the code's band rule."""

from __future__ import annotations

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.entrocraft import EntrocraftConfig, entrocraft, entrocraft_target, predicted_contribution
from tests.methods._helpers import NAN, gen, pad

G = 4


def batch(seed: int, b: int = 16, t: int = 7):
    g = gen(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t  # at least one full row
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # [B, T]
    old_logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3  # [B, T]
    rewards = torch.randint(0, 2, (b,), generator=g).float()  # [B]
    gid = torch.arange(b // G).repeat_interleave(G)  # [B]
    return mask, old_logp, rewards, gid


def run(cfg, mask, old_logp, rewards, gid, h, step=5, total=10, seed=0, entropy=None):
    entropy = torch.full(mask.shape, h, dtype=torch.float64) if entropy is None else entropy
    return entrocraft(
        rewards,
        mask,
        cfg=cfg,
        group_id=gid,
        shaped=rewards,
        lengths=mask.sum(-1),
        entropy=entropy,
        old_logp=old_logp,
        generator=gen(seed),
        step=step,
        total_steps=total,
    )


def test_c_is_the_first_order_entropy_change_of_a_natural_gradient_step():
    """Tabular softmax over 6 one-token responses; natural PG step theta_a += eta sum_i A_i [y_i = a] / (n pi_a).
    Its entropy change is -(eta/n) sum_i A_i (log pi(y_i) + H) = (eta/n) sum_i c_i when sum_i A_i = 0."""
    for seed in range(4):
        g = gen(seed)
        logits = torch.randn(6, generator=g, dtype=torch.float64)
        pi = logits.softmax(0)
        y = torch.multinomial(pi, 8, replacement=True, generator=g)  # [n] one group of 8
        r = torch.randn(8, generator=g, dtype=torch.float64)
        cfg, gid, mask = EntrocraftConfig(), torch.zeros(8, dtype=torch.long), torch.ones(8, 1)
        c = predicted_contribution(r, mask, pi.log()[y].unsqueeze(1), cfg, gid)  # [n]
        adv = (r - r.mean()) / (r.std() + cfg.eps)
        eta = 1e-5
        step = torch.zeros(6, dtype=torch.float64).index_add(0, y, adv) / (8 * pi)

        def ent(z):
            return -(z.softmax(0) * z.log_softmax(0)).sum()

        exact = float(ent(logits + eta * step) - ent(logits))
        assert exact == pytest.approx(eta / 8 * float(c.sum()), rel=1e-3)


def test_hand_case_of_the_docstring():
    lp = torch.tensor([[-0.1, -0.1], [-2.0, -2.0], [-0.1, -0.1], [-2.0, -2.0]], dtype=torch.float64)
    r, gid, mask = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long), torch.ones(4, 2)
    a = 0.5 / (1 / 3) ** 0.5  # z-score with the unbiased std
    c = predicted_contribution(r, mask, lp, EntrocraftConfig(eps=0.0), gid)
    assert c.tolist() == pytest.approx([-a * 0.95, a * 0.95, a * 0.95, -a * 0.95])  # lbar - mean = +-0.95
    keep, m = run(EntrocraftConfig(), mask, lp, r, gid, h=0.9, step=10, total=10)  # H - H* = 0.45: p = 1
    assert keep.tolist() == [True, False, False, True]
    assert m["entrocraft/reject_prob"].item() == 1.0 and m["entrocraft/reject_frac"].item() == 0.5
    assert m["entrocraft/batch_entropy"].item() == pytest.approx(0.9) and m["sampler/kept_frac"].item() == 0.5
    keep, _ = run(EntrocraftConfig(), mask, lp, r, gid, h=0.1, step=10, total=10)  # below: the others go
    assert keep.tolist() == [False, True, True, False]
    keep, m = run(EntrocraftConfig(), mask, lp, r, gid, h=0.45, step=10, total=10)  # on target: none
    assert keep.all() and m["entrocraft/reject_prob"].item() == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_gain_zero_or_no_ceiling_rejects_nothing(seed):
    mask, lp, r, gid = batch(seed)
    for cfg in (EntrocraftConfig(gain=0.0), EntrocraftConfig(max_reject=0.0), EntrocraftConfig(control="band", band=9)):
        keep, m = run(cfg, mask, lp, r, gid, h=3.0)
        assert keep.all() and m["sampler/kept_frac"].item() == 1.0 and m["entrocraft/reject_frac"].item() == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_above_target_only_entropy_raising_rows_leave_and_the_kept_sum_falls(seed):
    mask, lp, r, gid = batch(seed)
    c = predicted_contribution(r, mask, lp, EntrocraftConfig(), gid)
    for cfg in (EntrocraftConfig(gain=1.0), EntrocraftConfig()):  # p = 0.1 * ... and p = 1
        keep, _ = run(cfg, mask, lp, r, gid, h=1.2, seed=seed)  # H* = 0.55 at step 5 of 10
        assert bool((c[~keep] > 0).all()) and float(c[keep].sum()) <= float(c.sum())
        keep, _ = run(cfg, mask, lp, r, gid, h=0.1, seed=seed)  # below the target: the mirror image
        assert bool((c[~keep] < 0).all()) and float(c[keep].sum()) >= float(c.sum())
    keep, _ = run(EntrocraftConfig(), mask, lp, r, gid, h=1.2)  # p = 1: every raising row leaves
    assert torch.equal(~keep, c > 0)


def test_rejection_rate_is_the_proportional_probability():
    mask, lp, r, gid = batch(0, b=4000, t=3)
    c = predicted_contribution(r, mask, lp, EntrocraftConfig(), gid)
    keep, m = run(EntrocraftConfig(gain=1.0), mask, lp, r, gid, h=0.85)  # |H - H*| = 0.3: p = 0.3
    assert m["entrocraft/reject_prob"].item() == pytest.approx(0.3)
    assert float((~keep).sum()) / float((c > 0).sum()) == pytest.approx(0.3, abs=0.03)


def test_schedule_endpoints_are_exact():
    cfg = EntrocraftConfig(h_start=0.8, h_end=0.3)
    assert entrocraft_target(cfg, 0, 40) == 0.8 and entrocraft_target(cfg, 40, 40) == 0.3
    assert entrocraft_target(cfg, 55, 40) == 0.3 and entrocraft_target(cfg, 10, 40) == pytest.approx(0.675)
    short = EntrocraftConfig(h_start=0.8, h_end=0.3, horizon=20)  # K = 20 overrides total_steps
    assert entrocraft_target(short, 20, 40) == 0.3 and entrocraft_target(short, 10, 40) == pytest.approx(0.55)
    cos = EntrocraftConfig(h_start=0.8, h_end=0.3, schedule="cosine")
    assert entrocraft_target(cos, 0, 40) == 0.8 and entrocraft_target(cos, 40, 40) == 0.3
    assert entrocraft_target(cos, 20, 40) == pytest.approx(0.55) and entrocraft_target(cos, 10, 40) > 0.675
    mask, lp, r, gid = batch(0)
    _, m = run(cfg, mask, lp, r, gid, h=0.5, step=40, total=40)
    assert m["entrocraft/target"].item() == pytest.approx(0.3)


def test_determinism_given_the_generator_seed():
    mask, lp, r, gid = batch(1, b=64)
    cfg = EntrocraftConfig(gain=1.0)  # p = 0.5 at h = 1.05
    first, m1 = run(cfg, mask, lp, r, gid, h=1.05, seed=7)
    again, m2 = run(cfg, mask, lp, r, gid, h=1.05, seed=7)
    other, _ = run(cfg, mask, lp, r, gid, h=1.05, seed=8)
    assert torch.equal(first, again) and m1.keys() == m2.keys() and not torch.equal(first, other)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


def test_masked_columns_change_nothing():
    mask, lp, r, gid = batch(2)
    h = torch.rand(mask.shape, generator=gen(3), dtype=torch.float64) * 2
    cfg = EntrocraftConfig(gain=2.0)
    narrow = run(cfg, mask, lp, r, gid, h=None, entropy=h, seed=4)
    wide = run(cfg, pad(mask, 0.0), pad(lp, NAN), r, gid, h=None, entropy=pad(h, NAN), seed=4)
    assert torch.equal(narrow[0], wide[0])
    assert all(torch.equal(narrow[1][k], wide[1][k]) for k in narrow[1])


def test_row_order_does_not_matter_when_the_rejection_is_certain():
    mask, lp, r, gid = batch(5)
    keep, _ = run(EntrocraftConfig(), mask, lp, r, gid, h=1.5)
    perm = torch.randperm(len(r), generator=gen(0))
    shuffled, _ = run(EntrocraftConfig(), mask[perm], lp[perm], r[perm], gid[perm], h=1.5)
    assert torch.equal(shuffled, keep[perm])


def test_the_released_codes_band_rule_on_the_advantage_sign():
    """criterion='advantage', control='band': above H* + band keep only A > 0 (RAFT++), below H* - band only
    A < 0 (NSR), inside the band everything (GRPO); flat groups (A = 0) are never dropped."""
    r = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # group 1 all right
    gid, mask = torch.arange(2).repeat_interleave(G), torch.ones(8, 3)
    cfg = EntrocraftConfig(criterion="advantage", control="band")  # H* = 0.55 at step 5/10, band 0.05
    up, _ = run(cfg, mask, None, r, gid, h=0.61)
    down, _ = run(cfg, mask, None, r, gid, h=0.49)
    inside, _ = run(cfg, mask, None, r, gid, h=0.59)
    assert up.tolist() == [True, False, False, True, True, True, True, True]
    assert down.tolist() == [False, True, True, False, True, True, True, True]
    assert inside.all()


def test_registration_and_bad_inputs():
    entry = catalogue.get("sampler", "entrocraft")
    assert entry.unit == "sample" and entry.reconstructed and entry.paper == "arXiv:2604.26326"
    assert entry.needs == ("old_logp", "generator", "step", "total_steps")
    with pytest.raises(ValueError, match=r"criterion must be one of \['covariance', 'advantage'\], got 'cov'"):
        EntrocraftConfig(criterion="cov")
    with pytest.raises(ValueError, match="horizon must be >= 0"):
        EntrocraftConfig(horizon=-1)
    with pytest.raises(ValueError, match=r"max_reject must be in \[0, 1\]"):
        EntrocraftConfig(max_reject=1.5)
    mask, lp, r, gid = batch(0)
    with pytest.raises(ValueError, match="needs old_logp"):
        run(EntrocraftConfig(), mask, None, r, gid, h=1.0)
    with pytest.raises(ValueError, match="needs step and total_steps"):
        run(EntrocraftConfig(), mask, lp, r, gid, h=1.0, step=None)
