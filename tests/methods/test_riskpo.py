"""RiskPO: the research note's worked numbers, properties (i)-(iii), each credit mode by hand, the bundle_size=1
case, row-order invariance, parity with a per-paper loop written after the released code, bad configs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from entrolab import ops
from entrolab.methods.riskpo import RiskPOConfig, riskpo

EPS = 1e-6
# The note's worked test: q1 = [1, 0, 1, 0], q2 = [1, 1, 0, 0] in one bundle -> paper scores X = [2, 1, 1, 0].
NOTE_R = torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 0], dtype=torch.float64)
NOTE_GID = ops.contiguous_groups(8, 4)
NOTE = dict(alpha=0.2, beta=0.8, bundle_size=2)


def adv_of(r, gid, **kw) -> list[float]:
    mask = torch.ones(len(r), 3)
    return riskpo(torch.as_tensor(r), mask, cfg=RiskPOConfig(**kw), group_id=gid)[0].squeeze(-1).tolist()


def test_the_notes_worked_numbers():
    plain = dict(NOTE, credit="uniform", norm_by_std=False)
    rvar = adv_of(NOTE_R, NOTE_GID, **plain, risk="rvar")[:4]
    mvar = adv_of(NOTE_R, NOTE_GID, **plain)[:4]
    cvar = [(2.5 * m - v) / 1.5 for m, v in zip(mvar, rvar, strict=True)]  # A_MVaR = (1.5 A_CVaR + A_RVaR) / 2.5
    assert rvar == pytest.approx([0, -0.6667, -0.6667, -1.3333], abs=1e-4)
    assert cvar == pytest.approx([0, 0, 0, -3.0], abs=1e-4)
    assert mvar == pytest.approx([0, -0.2667, -0.2667, -2.3333], abs=1e-4)
    normed = adv_of(NOTE_R, NOTE_GID, **NOTE, credit="uniform")
    assert normed == pytest.approx([0, -0.3266, -0.3266, -2.8577] * 2, abs=1e-4)  # / std(X) = 0.8165
    # credit "std": both questions have unbiased std 0.5774, so both responses of paper j get the same value
    assert adv_of(NOTE_R, NOTE_GID, **NOTE) == pytest.approx([0, -0.5657, -0.5657, -4.9497] * 2, abs=1e-4)


def test_the_notes_metrics_and_the_upper_tail_ablation():
    cfg = RiskPOConfig(**NOTE, credit="uniform")
    _, m = riskpo(NOTE_R, torch.ones(8, 2), cfg=cfg, group_id=NOTE_GID)
    got = {k: round(v.item(), 6) for k, v in m.items()}
    # a = 0.6, b = 1.4; X in [a, b] = {1, 1}; X <= a = {0}; MVaR = (1.5 * 0 + 1) / 2.5
    assert got["riskpo/q_alpha"] == 0.6 and got["riskpo/q_beta"] == 1.4
    assert got["riskpo/rvar"] == 1.0 and got["riskpo/cvar"] == 0.0 and got["riskpo/objective"] == 0.4
    assert got["riskpo/paper_score_mean"] == 1.0 and got["riskpo/frac_constant_bundles"] == 0.0
    # risk-seeking: omega (X - b)^+ / (1 - beta) = [3, 0, 0, 0] mixed with A_RVaR, then / std(X)
    up = adv_of(NOTE_R, NOTE_GID, **NOTE, credit="uniform", risk="upper_mvar")[:4]
    std = math.sqrt(2 / 3)
    assert up == pytest.approx([1.8 / std, -0.2667 / std, -0.2667 / std, -0.5333 / std], abs=1e-4)
    _, m = riskpo(NOTE_R, torch.ones(8, 2), cfg=RiskPOConfig(**NOTE, risk="upper_mvar"), group_id=NOTE_GID)
    assert m["riskpo/objective"].item() == pytest.approx((1.5 * 2 + 1) / 2.5)  # X >= b = {2}


@pytest.mark.parametrize("seed", range(4))
def test_properties_i_and_ii_rvar_sign_zeros_and_the_clip_identity(seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (30,), generator=g).double()  # 6 questions of 5, bundles of 3 -> 2 bundles
    gid = ops.contiguous_groups(30, 5)
    plain = dict(alpha=0.2, beta=0.9, bundle_size=3, credit="uniform", norm_by_std=False, risk="rvar")
    nat = torch.tensor(adv_of(r, gid, **plain), dtype=torch.float64)
    off = torch.tensor(adv_of(r, gid, **plain, natural_baseline=False), dtype=torch.float64)
    x = r.view(2, 3, 5).sum(1)  # [N, G] paper scores
    a, b = torch.quantile(x, torch.tensor([0.2, 0.9], dtype=x.dtype), dim=1, keepdim=True)
    xs = x[torch.arange(6) // 3].flatten()  # [B] each row's paper score
    a_row, b_row = a[torch.arange(6) // 3].repeat_interleave(5), b[torch.arange(6) // 3].repeat_interleave(5)
    assert bool((nat <= 0).all()) and bool((nat[xs >= b_row] == 0).all())  # (i)
    assert bool((off >= 0).all()) and bool((off[xs <= a_row] == 0).all())
    kinked = (xs - a_row).clamp(min=0) - (xs - b_row).clamp(min=0) + a_row - b_row  # (ii): the code's form
    torch.testing.assert_close(nat * (0.9 - 0.2 + EPS), kinked)
    torch.testing.assert_close(off - nat, ((b_row - a_row) / (0.9 - 0.2 + EPS)))


@pytest.mark.parametrize(
    ("credit", "risk"), itertools.product(["uniform", "std", "sum-mean", "score"], ["mvar", "upper_mvar"])
)
def test_property_iii_a_constant_bundle_gives_zero(credit, risk):
    r = torch.tensor([1.0, 0, 1, 0, 0, 1, 0, 1])  # X = [1, 1, 1, 1]
    adv, m = riskpo(r, torch.ones(8, 2), cfg=RiskPOConfig(credit=credit, risk=risk), group_id=NOTE_GID)
    assert adv.abs().max().item() == 0.0 and m["riskpo/q_alpha"] == m["riskpo/q_beta"] == 1.0
    assert m["riskpo/frac_constant_bundles"].item() == 1.0


# Hand case for the credit modes, two bundles of two questions:
#   bundle 0: q0 = [1, 0, 0, 0] (std 1/2), q1 = [1, 1, 0, 0] (std sqrt(1/3)) -> X = [2, 1, 0, 0]
#   bundle 1: q2 = [1, 0, 1, 0], q3 = [0, 1, 1, 0] (both std sqrt(1/3))     -> X = [1, 1, 2, 0]
CREDIT_R = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0])
CREDIT_GID = ops.contiguous_groups(16, 4)
# bundle 0: a = 0, b = 1.4, no CVaR; A_RVaR = (clip(X, 0, 1.4) - 1.4) / 0.6; / 2.5; / std(X) = sqrt(11/12)
S0 = math.sqrt(11 / 12)
P0 = [0.0, -(0.4 / 0.6) / 2.5 / S0, -(1.4 / 0.6) / 2.5 / S0, -(1.4 / 0.6) / 2.5 / S0]
# bundle 1: a = 0.6, b = 1.4, the note's numbers in another paper order
P1 = [-(0.4 / 0.6) / 2.5 / math.sqrt(2 / 3), -(0.4 / 0.6) / 2.5 / math.sqrt(2 / 3), 0.0, -2.8577]


def credit_adv(credit: str) -> list[float]:
    return adv_of(CREDIT_R, CREDIT_GID, alpha=0.2, beta=0.8, bundle_size=2, credit=credit)


def test_credit_uniform_and_std_by_hand():
    assert credit_adv("uniform") == pytest.approx(P0 + P0 + P1 + P1, abs=1e-4)
    s3 = math.sqrt(1 / 3)
    want = [p / 0.5 for p in P0] + [p / s3 for p in P0] + [p / s3 for p in P1] * 2
    assert credit_adv("std") == pytest.approx(want, abs=1e-4)


def test_credit_sum_mean_by_hand_with_the_equal_split():
    # bundle 0 deviations: q0 [.75, -.25, -.25, -.25], q1 [.5, .5, -.5, -.5]; per paper sums [1.25, .25, -.75, -.75]
    q0 = [0.0, P0[1] * (-0.25 / 0.25), P0[2] * (-0.25 / -0.75), P0[3] * (-0.25 / -0.75)]
    q1 = [0.0, P0[1] * (0.5 / 0.25), P0[2] * (-0.5 / -0.75), P0[3] * (-0.5 / -0.75)]
    # bundle 1 deviations: q2 [.5, -.5, .5, -.5], q3 [-.5, .5, .5, -.5]; papers 0 and 1 sum to 0 -> split A / 2
    q2 = [P1[0] / 2, P1[1] / 2, 0.0, P1[3] * (-0.5 / -1.0)]
    q3 = [P1[0] / 2, P1[1] / 2, 0.0, P1[3] * (-0.5 / -1.0)]
    got = credit_adv("sum-mean")
    assert got == pytest.approx(q0 + q1 + q2 + q3, abs=1e-4)
    for bundle, paper in ((got[:8], P0), (got[8:], P1)):  # the shares of each paper add back to its advantage
        assert [bundle[j] + bundle[4 + j] for j in range(4)] == pytest.approx(paper, abs=1e-4)


def test_credit_score_by_hand():
    scale = [0.5 if r > 0 else 1.5 for r in CREDIT_R.tolist()]
    want = [s * p for s, p in zip(scale, P0 + P0 + P1 + P1, strict=True)]
    assert credit_adv("score") == pytest.approx(want, abs=1e-4)


def test_bundle_size_one_is_the_per_question_risk_advantage():
    # each bundle is one question and each paper one response: X = r, quantiles per group
    g = torch.Generator().manual_seed(3)
    r = torch.rand(15, generator=g, dtype=torch.float64)
    gid = ops.contiguous_groups(15, 5)
    cfg = dict(bundle_size=1, credit="uniform")
    whole = adv_of(r, gid, **cfg)
    one = torch.zeros(5, dtype=torch.long)
    alone = [a for k in range(3) for a in adv_of(r[5 * k : 5 * k + 5], one, **cfg)]
    assert whole == pytest.approx(alone, abs=1e-12)
    x = r[:5]
    a, b = torch.quantile(x, torch.tensor([0.2, 0.9], dtype=x.dtype))
    want = ((1.5 * -(a - x).clamp(min=0) / (0.2 + EPS) + (x.clamp(a, b) - b) / (0.7 + EPS)) / 2.5) / (x.std() + EPS)
    assert whole[:5] == pytest.approx(want.tolist(), abs=1e-12)
    # a group of one sample: one paper, std 1, advantage 0
    adv, m = riskpo(torch.tensor([1.0, 0.0]), torch.ones(2, 1), cfg=RiskPOConfig(), group_id=torch.tensor([0, 1]))
    assert adv.tolist() == [[0.0], [0.0]] and all(torch.isfinite(v) for v in m.values())


def released_reference(r: torch.Tensor, gid: torch.Tensor, cfg: RiskPOConfig) -> torch.Tensor:
    """A per-paper loop in the released code's shape: questions by id, bundles of consecutive ids, paper j = the
    j-th row of each question in batch order."""
    ids = sorted(set(gid.tolist()))
    rows = {q: [i for i in range(len(r)) if gid[i] == q] for q in ids}
    out = torch.zeros(len(r), dtype=r.dtype)
    for start in range(0, len(ids), cfg.bundle_size):
        qs = ids[start : start + cfg.bundle_size]
        papers = [[rows[q][j] for q in qs] for j in range(min(len(rows[q]) for q in qs))]
        x = torch.stack([r[p].sum() for p in papers])
        if len(x) == 1:
            lo, hi, std = x[0], x[0], torch.tensor(1.0, dtype=r.dtype)
        else:
            lo, hi, std = torch.quantile(x, cfg.alpha), torch.quantile(x, cfg.beta), x.std()
        for p, xj in zip(papers, x, strict=True):
            base = lo if not cfg.natural_baseline else hi
            a = (min(max(xj, lo), hi) - base) / (cfg.beta - cfg.alpha + cfg.eps)
            if cfg.risk == "mvar":
                a = (cfg.omega * -max(lo - xj, 0) / (cfg.alpha + cfg.eps) + a) / (cfg.omega + 1)
            elif cfg.risk == "upper_mvar":
                a = (cfg.omega * max(xj - hi, 0) / (1 - cfg.beta + cfg.eps) + a) / (cfg.omega + 1)
            a = a / (std + cfg.eps) if cfg.norm_by_std else a
            dev = {i: r[i] - r[rows[gid[i].item()]].mean() for i in p}
            total = sum(dev.values())
            for i in p:
                q_std = r[rows[gid[i].item()]].std()
                if cfg.credit == "uniform":
                    out[i] = a
                elif cfg.credit == "std":
                    out[i] = a / ((q_std if q_std > 1e-3 else 1.0) + cfg.eps)
                elif cfg.credit == "score":
                    out[i] = (0.5 if r[i] > 0 else 1.5) * a
                else:
                    out[i] = a * dev[i] / total if abs(total) > 1e-6 else a / len(p)
    return out


def interleave(gid: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A row order that mixes the groups but keeps each group's rows in their original relative order."""
    slots = torch.randperm(len(gid), generator=torch.Generator().manual_seed(seed))  # [B] new position of each row
    order = torch.empty_like(slots)
    for q in gid.unique():
        rows = (gid == q).nonzero().squeeze(-1)  # [G] in batch order
        order[slots[rows].sort().values] = rows  # the group's rows fill its slots in their own order
    return order


@pytest.mark.parametrize(
    ("credit", "risk", "natural"),
    [("std", "mvar", True), ("sum-mean", "mvar", False), ("score", "upper_mvar", True), ("uniform", "rvar", False)],
)
def test_parity_with_the_loop_and_row_order_invariance(credit, risk, natural):
    g = torch.Generator().manual_seed(7)
    r = torch.randint(0, 3, (28,), generator=g).double() / 2  # 7 questions of 4; bundles of 3 -> sizes 3, 3, 1
    gid = ops.contiguous_groups(28, 4) * 10 + 3  # ids 3, 13, ..., 63
    cfg = RiskPOConfig(alpha=0.25, beta=0.8, bundle_size=3, credit=credit, risk=risk, natural_baseline=natural)
    adv, _ = riskpo(r, torch.ones(28, 5), cfg=cfg, group_id=gid)
    torch.testing.assert_close(adv.squeeze(-1), released_reference(r, gid, cfg))
    order = interleave(gid)
    assert not torch.equal(gid[order], gid) and all(order[gid[order] == q].diff().gt(0).all() for q in gid.unique())
    shuffled, _ = riskpo(r[order], torch.ones(28, 5), cfg=cfg, group_id=gid[order])
    assert torch.equal(shuffled, adv[order])
    padded = torch.cat([torch.ones(28, 5), torch.zeros(28, 4)], 1)  # extra masked columns change nothing
    assert torch.equal(riskpo(r, padded, cfg=cfg, group_id=gid)[0], adv)


def test_the_default_is_the_math_script():
    cfg = RiskPOConfig()
    assert (cfg.alpha, cfg.beta, cfg.omega, cfg.bundle_size, cfg.credit) == (0.2, 0.9, 1.5, 5, "std")
    assert cfg.natural_baseline and cfg.norm_by_std and cfg.risk == "mvar" and cfg.eps == 1e-6


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"credit": "mean"}, r"credit must be one of \['uniform', 'std', 'sum-mean', 'score'\], got 'mean'"),
        ({"risk": "cvar"}, r"risk must be one of \['mvar', 'rvar', 'upper_mvar'\], got 'cvar'"),
        ({"alpha": 0.9, "beta": 0.2}, r"0 < alpha < beta < 1, got alpha=0.9, beta=0.2"),
        ({"alpha": 0.0}, r"0 < alpha < beta < 1, got alpha=0.0"),
        ({"beta": 1.0}, r"0 < alpha < beta < 1"),
        ({"omega": -1.0}, r"omega must be >= 0, got -1.0"),
        ({"bundle_size": 0}, r"bundle_size must be an int >= 1, got 0"),
        ({"bundle_size": 2.0}, r"bundle_size must be an int >= 1, got 2.0"),
        ({"eps": 0.0}, r"eps must be > 0, got 0.0"),
    ],
)
def test_bad_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        RiskPOConfig(**kw)


def test_unequal_groups_raise():
    with pytest.raises(ValueError, match="same number of samples"):
        riskpo(torch.ones(5), torch.ones(5, 2), cfg=RiskPOConfig(), group_id=torch.tensor([0, 0, 0, 1, 1]))
