"""Numbers for the PPL / position advantage shaping of arXiv:2508.02260 (token filter ``epe``): closed forms, the
authors' code's formulas, identity at alpha = gamma = 0, sign, ordering, padding and shuffle invariance."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import catalogue, ops
from entrolab.methods.epe import EpeConfig, epe, group_log_ppl_z
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from tests.methods._helpers import NAN, gen, pad

B, G, T = 8, 4, 7
F64 = torch.float64


def batch(seed: int = 0):
    """Two groups of four ragged responses (one empty): mask, old_logp, advantages [B, 1], entropy, group_id."""
    g = gen(seed)
    lengths = torch.tensor([7, 3, 5, 1, 6, 2, 0, 4])
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).to(F64)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    adv = torch.randn(B, 1, generator=g, dtype=F64)
    entropy = torch.rand(B, T, generator=g, dtype=F64) * 2
    return mask, old, adv, entropy, ops.contiguous_groups(B, G)


def run(cfg, mask, old, adv, entropy, group_id):
    return epe(mask, cfg=cfg, entropy=entropy, old_logp=old, advantages=adv, truncated=None, group_id=group_id)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ closed forms


def test_ppl_weight_hand_computed_with_iqr_outlier():
    # One group, log PPL = [1, 1.1, 1.2, 5]: Q1 = 1.075, Q3 = 2.15 (linear), upper fence 3.7625, so 5 is an
    # outlier; mean 1.1 and population std sqrt(0.02 / 3) over the other three; z of the outlier = 3.9 / std.
    log_ppl = torch.tensor([1.0, 1.1, 1.2, 5.0], dtype=F64)
    old = -log_ppl.unsqueeze(-1).expand(4, 3)  # every token has old_logp = -log PPL
    std = math.sqrt(0.02 / 3)
    z = torch.tensor([-0.1 / std, 0.0, 0.1 / std, 3.9 / std], dtype=F64)
    gid = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(group_log_ppl_z(log_ppl, torch.ones(4, dtype=torch.bool), gid), z)
    w, m, s = run(EpeConfig(alpha=0.01), torch.ones(4, 3, dtype=F64), old, None, None, gid)
    assert torch.equal(m, torch.ones(4, 3, dtype=F64))
    torch.testing.assert_close(w, (1 - 0.01 * z).unsqueeze(-1).expand(4, 3))  # [1.0122, 1, 0.9878, 0.5224]
    assert s["epe/log_ppl_mean"].item() == pytest.approx(2.075)
    # the authors' clamp to [0.8, 1.2] catches the outlier: 1 - 0.4776 -> 0.8
    w, _, _ = run(EpeConfig(alpha=0.01, ppl_weight_min=0.8, ppl_weight_max=1.2), torch.ones(4, 3), old, None, None, gid)
    assert w[3, 0].item() == pytest.approx(0.8) and w[0, 0].item() == pytest.approx(1 + 0.001 / std)
    # plain statistics: mean 2.075, std over all four
    zp = group_log_ppl_z(log_ppl, torch.ones(4, dtype=torch.bool), gid, "plain")
    torch.testing.assert_close(zp, (log_ppl - log_ppl.mean()) / log_ppl.std(unbiased=False))


def test_position_weight_hand_computed_and_capped():
    # One row of 4 tokens: r = [0, 1/4, 1/2, 3/4]; b = 0.1 sigmoid(15 (r - 1/2)); w = 1 + min(b, |A| / 2) / |A|.
    mask = torch.ones(2, 4, dtype=F64)
    adv = torch.tensor([[1.0], [-0.1]], dtype=F64)
    w, m, _ = run(EpeConfig(mode="position"), mask, torch.zeros(2, 4, dtype=F64), adv, None, torch.tensor([0, 0]))
    bonus = [0.1 * sig(15 * (r - 0.5)) for r in (0.0, 0.25, 0.5, 0.75)]
    torch.testing.assert_close(w[0], torch.tensor([1 + b for b in bonus], dtype=F64))
    # |A| = 0.1: cap 0.05 binds from r = 1/2 on (b = 0.05, 0.0977), so w = 1.5 there; early tokens 1 + b / 0.1
    torch.testing.assert_close(w[1], torch.tensor([1 + bonus[0] / 0.1, 1 + bonus[1] / 0.1, 1.5, 1.5], dtype=F64))
    assert torch.equal(m, mask)


def test_position_matches_the_authors_formula_and_ppo_clip_of_the_shaped_advantage():
    mask, old, adv, _, gid = batch(1)
    adv = adv * torch.tensor([[1.0], [0.05], [-2.0], [0.0], [0.1], [-0.02], [1.0], [-1.0]], dtype=F64)
    cfg = EpeConfig(mode="position", gamma=0.3)
    w, _, _ = run(cfg, mask, old, adv, None, gid)
    # the released compute_policy_loss: r = (cumsum - 1) / L, A' = A + sign(A) min(gamma sig(15 (r - .5)), .5 |A|)
    rel = (torch.cumsum(mask, 1) * mask - 1) / mask.sum(1, keepdim=True).clamp(min=1)
    bonus = torch.clamp(0.3 * torch.sigmoid(15 * (rel - 0.5)) * mask, max=0.5 * adv.abs())
    shaped = adv + bonus * torch.sign(adv)
    keep = mask.bool()
    torch.testing.assert_close((w * adv)[keep], shaped[keep])
    # a weight on PPO-clip's per-token loss is PPO-clip of the shaped advantage
    logp = old + 0.4 * torch.randn(old.shape, generator=gen(3), dtype=F64)
    pcfg = PPOClipConfig(eps_low=0.2, eps_high=0.28)
    weighted = w * ppo_clip(logp, old, adv, mask, cfg=pcfg)[0]
    torch.testing.assert_close(weighted, ppo_clip(logp, old, shaped, mask, cfg=pcfg)[0])


def test_ppl_matches_the_authors_per_group_loop():
    mask, old, adv, _, gid = batch(2)
    mask[6] = 1.0  # the released code has no empty responses
    old[1, :3] = -9.0  # an outlier response in group 0
    w, _, _ = run(EpeConfig(alpha=0.2), mask, old, adv, None, gid)
    log_ppl = -(old * mask).sum(1) / mask.sum(1)
    expected = torch.empty(B, dtype=F64)
    for g in range(2):  # calculate_ppl: IQR inliers, their mean and population std (1 if <= 1e-6), z for all
        vals = log_ppl[gid == g]
        q1, q3 = torch.quantile(vals, 0.25), torch.quantile(vals, 0.75)
        inl = vals[(vals >= q1 - 1.5 * (q3 - q1)) & (vals <= q3 + 1.5 * (q3 - q1))]
        std = inl.std(unbiased=False).item()
        expected[gid == g] = (vals - inl.mean()) / (std if std > 1e-6 else 1.0)
    assert (w[1, 0] - 1).abs() > 0.5  # the outlier is far from the inliers' mean
    torch.testing.assert_close(w[:, 0], (1 - 0.2 * expected).clamp(min=0))


# ------------------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("mode", ["ppl", "position", "both"])
@pytest.mark.parametrize("rho", [1.0, 0.4])
def test_alpha_gamma_zero_is_exactly_identity(mode, rho):
    mask, old, adv, entropy, gid = batch(4)
    w, m, s = run(EpeConfig(mode=mode, alpha=0.0, gamma=0.0, entropy_rho=rho), mask, old, adv, entropy, gid)
    assert torch.equal(w, torch.ones_like(w)) and torch.equal(m, mask)
    assert s["epe/weight_mean"].item() == 1.0 and s["epe/weight_max"].item() == 1.0


@pytest.mark.parametrize("mode", ["ppl", "position", "both"])
def test_weights_non_negative_and_sign_of_shaped_advantage_kept(mode):
    mask, old, adv, entropy, gid = batch(5)
    w, _, _ = run(EpeConfig(mode=mode, alpha=3.0, gamma=2.0), mask, old, adv, entropy, gid)
    assert torch.all(w >= 0) and torch.isfinite(w).all()
    shaped = (w * adv)[mask.bool()]
    a = adv.expand_as(w)[mask.bool()]
    assert torch.all((shaped == 0) | (torch.sign(shaped) == torch.sign(a)))
    assert bool((w < 1).any()) == (mode != "position")  # large alpha pushes some PPL weights below 1 (to 0)


def test_lowest_ppl_response_gets_the_largest_weight_in_each_group():
    mask, old, adv, _, gid = batch(6)
    w, _, _ = run(EpeConfig(alpha=0.05, ppl_stats="plain"), mask, old, adv, None, gid)
    log_ppl = -ops.masked_sum(old, mask, dim=-1) / mask.sum(-1).clamp(min=1)
    for g in range(2):
        rows = torch.nonzero((gid == g) & (mask.sum(-1) > 0)).squeeze(-1)
        order = torch.argsort(log_ppl[rows])
        per_row = w[rows, 0][order]
        assert torch.all(per_row[1:] < per_row[:-1])  # strictly decreasing in log PPL
    # alpha < 0 is the code's high-PPL ablation: the order flips
    w_high, _, _ = run(EpeConfig(alpha=-0.05, ppl_stats="plain"), mask, old, adv, None, gid)
    torch.testing.assert_close(w_high[:, 0] - 1, -(w[:, 0] - 1))


def test_position_weight_is_monotone_along_each_response():
    mask, old, adv, _, gid = batch(7)
    w, _, _ = run(EpeConfig(mode="position", gamma=0.5), mask, old, adv, None, gid)
    for i in range(B):
        n = int(mask[i].sum())
        if n < 2:
            continue
        assert torch.all(w[i, 1:n] >= w[i, : n - 1])
        if adv[i].item() != 0:
            assert w[i, n - 1] > w[i, 0]


def test_both_is_the_product_and_entropy_rho_leaves_low_entropy_tokens_alone():
    mask, old, adv, entropy, gid = batch(8)
    kw = dict(alpha=0.3, gamma=0.4)
    wp = run(EpeConfig(mode="ppl", **kw), mask, old, adv, entropy, gid)[0]
    wq = run(EpeConfig(mode="position", **kw), mask, old, adv, entropy, gid)[0]
    wb = run(EpeConfig(mode="both", **kw), mask, old, adv, entropy, gid)[0]
    torch.testing.assert_close(wb, wp * wq)
    wr, _, s = run(EpeConfig(mode="both", entropy_rho=0.3, **kw), mask, old, adv, entropy, gid)
    tau = ops.top_fraction_threshold(entropy, mask, 0.3)
    high = mask.bool() & (entropy >= tau)
    assert torch.equal(wr[high], wb[high]) and torch.all(wr[~high] == 1)
    assert s["epe/frac_shaped"].item() == pytest.approx(float(high.sum() / mask.sum()))


@pytest.mark.parametrize("mode", ["ppl", "position", "both"])
def test_padding_columns_and_masked_garbage_change_nothing(mode):
    mask, old, adv, entropy, gid = batch(9)
    cfg = EpeConfig(mode=mode, alpha=0.4, gamma=0.3, entropy_rho=0.5)
    w, m, s = run(cfg, mask, old, adv, entropy, gid)
    assert torch.equal(m, mask)
    junk_logp = torch.where(mask.bool(), old, NAN)  # garbage on masked tokens of the real columns too
    junk_entropy = torch.where(mask.bool(), entropy, 1e9)
    wide = run(cfg, pad(mask, 0.0), pad(junk_logp), pad(adv.expand(B, T), NAN), pad(junk_entropy, 1e9), gid)
    torch.testing.assert_close(w, wide[0][:, :T])  # the PPL sums run over more (zero) columns
    assert torch.all(wide[0][:, T:] == 1)
    assert torch.equal(wide[1], pad(mask, 0.0))
    for k in s:
        torch.testing.assert_close(s[k], wide[2][k])
    assert torch.all(w[~mask.bool()] == 1)


def test_empty_response_is_left_out_of_the_group_statistics():
    log_ppl = torch.tensor([0.5, 1.5, 7.0, 2.0, 4.0, 0.0], dtype=F64)
    present = torch.tensor([True, True, False, True, True, False])
    gid = torch.tensor([0, 0, 0, 1, 1, 1])
    z = group_log_ppl_z(log_ppl, present, gid, "plain")
    torch.testing.assert_close(z, torch.tensor([-1.0, 1.0, 0.0, -1.0, 1.0, 0.0], dtype=F64))


def test_groups_of_unequal_size_are_each_standardised_over_their_rows():
    # a minibatch that split the groups: 3 rows of group 5, 2 of group 9, interleaved
    log_ppl = torch.tensor([1.0, 4.0, 2.0, 6.0, 3.0], dtype=F64)
    gid = torch.tensor([5, 9, 5, 9, 5])
    z = group_log_ppl_z(log_ppl, torch.ones(5, dtype=torch.bool), gid, "plain")
    s3 = math.sqrt(2 / 3)
    torch.testing.assert_close(z, torch.tensor([-1 / s3, -1.0, 0.0, 1.0, 1 / s3], dtype=F64))


@pytest.mark.parametrize("mode", ["ppl", "both"])
def test_row_shuffle_with_group_ids_permutes_the_weights(mode):
    mask, old, adv, entropy, gid = batch(10)
    cfg = EpeConfig(mode=mode, alpha=0.3, gamma=0.2)
    w, _, s = run(cfg, mask, old, adv, entropy, gid)
    perm = torch.randperm(B, generator=gen(11))
    wp, _, sp = run(cfg, mask[perm], old[perm], adv[perm], entropy[perm], gid[perm] * 7 + 3)  # any ids
    torch.testing.assert_close(wp, w[perm])
    for k in s:
        torch.testing.assert_close(s[k], sp[k])


# --------------------------------------------------------------------------------------------- registry/config


def test_registration():
    entry = catalogue.get("token_filter", "epe")
    assert entry.needs == ("group_id",) and not entry.reconstructed and entry.paper == "arXiv:2508.02260"
    assert all(k.startswith("epe/") for k in entry.metrics)


def test_position_modes_need_advantages():
    with pytest.raises(ValueError, match="needs the advantages"):
        run(EpeConfig(mode="position"), torch.ones(2, 2), torch.zeros(2, 2), None, None, torch.tensor([0, 0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "ppl+position"}, r"'ppl', 'position', 'both'.*'ppl\+position'"),
        ({"ppl_stats": "mad"}, r"'iqr', 'plain'.*'mad'"),
        ({"alpha": float("nan")}, r"alpha.*nan"),
        ({"ppl_weight_min": -0.1}, r"ppl_weight_min.*-0\.1"),
        ({"ppl_weight_min": 1.3, "ppl_weight_max": 1.2}, r"1\.3, 1\.2"),
        ({"gamma": -0.1}, r"gamma.*-0\.1"),
        ({"sharpness": 0.0}, r"sharpness.*0\.0"),
        ({"center": 1.5}, r"center.*1\.5"),
        ({"cap": -1.0}, r"cap.*-1\.0"),
        ({"entropy_rho": 0.0}, r"entropy_rho.*0\.0"),
    ],
)
def test_config_validation_names_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpeConfig(**kwargs)
