"""DPO (cDPO, IPO) and POWER-DL: closed forms on hand numbers, gradient signs, the dynamic-label numbers of the
research note, the reduction of POWER-DL to DPO, invariances and config errors."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab.methods.preference import DPOConfig, PowerDLConfig, dpo, dynamic_labels, power_dl, power_margin


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def call(fn, chosen, rejected, ref_chosen=None, ref_rejected=None, lengths=None, rejected_lengths=None, **kw):
    """The loss of pairs given as lists; returns (loss [N], metrics, chosen tensor, rejected tensor)."""
    c = torch.tensor(chosen, dtype=torch.float64, requires_grad=True)
    r = torch.tensor(rejected, dtype=torch.float64, requires_grad=True)
    rc = torch.zeros_like(c) if ref_chosen is None else torch.tensor(ref_chosen, dtype=torch.float64)
    rr = torch.zeros_like(r) if ref_rejected is None else torch.tensor(ref_rejected, dtype=torch.float64)
    lc = torch.ones(len(chosen), dtype=torch.long) if lengths is None else torch.tensor(lengths)
    lr = lc if rejected_lengths is None else torch.tensor(rejected_lengths)
    loss, metrics = fn(c, r, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
    return loss, metrics, c, r


# ------------------------------------------------------------------------------------------------------ DPO


def test_dpo_is_minus_log_sigmoid_of_the_beta_scaled_log_ratio_margin():
    # u_w = -1 - (-2) = 1, u_l = -3 - (-2) = -1: margin 0.1 * 2 = 0.2; second pair: u_w = -1, u_l = 0.5, margin -0.15
    loss, m, _, _ = call(dpo, [-1.0, -5.0], [-3.0, -2.5], [-2.0, -4.0], [-2.0, -3.0], cfg=DPOConfig())
    assert loss.tolist() == pytest.approx([-math.log(sigmoid(0.2)), -math.log(sigmoid(-0.15))], abs=1e-12)
    assert loss[0].item() == pytest.approx(0.598139, abs=1e-6)
    assert m["pref/margin_mean"].item() == pytest.approx(0.025)
    assert m["pref/accuracy"].item() == 0.5
    assert m["pref/chosen_reward"].item() == pytest.approx((0.1 - 0.1) / 2)  # beta u_w = 0.1, -0.1
    assert m["pref/rejected_reward"].item() == pytest.approx((-0.1 + 0.05) / 2)  # beta u_l = -0.1, 0.05


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected():
    loss, _, c, r = call(dpo, [-1.0], [-3.0], [-2.0], [-2.0], cfg=DPOConfig(beta=0.5))  # margin 1.0
    loss.sum().backward()
    assert c.grad.item() == pytest.approx(-0.5 * sigmoid(-1.0)) and c.grad.item() < 0  # -beta sigma(-m)
    assert r.grad.item() == pytest.approx(0.5 * sigmoid(-1.0)) and r.grad.item() > 0


def test_ties_count_as_wrong_in_the_accuracy():
    _, m, _, _ = call(dpo, [-1.0, -1.0], [-1.0, -2.0], cfg=DPOConfig())  # margins 0 and 0.1
    assert m["pref/accuracy"].item() == 0.5


def test_label_smoothing_is_cdpo():
    eps = 0.1
    loss, _, c, _ = call(dpo, [0.0, 2.0], [0.0, 0.0], cfg=DPOConfig(beta=1.0, label_smoothing=eps))
    expected = [-(1 - eps) * math.log(sigmoid(m)) - eps * math.log(sigmoid(-m)) for m in (0.0, 2.0)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-12)
    assert loss[0].item() == pytest.approx(math.log(2))  # m = 0: log 2 for every eps
    # dL/dm = sigma(m) - (1 - eps): zero at m* = log((1 - eps) / eps) = log 9, where plain DPO still pushes
    loss, _, c, _ = call(dpo, [math.log(9)], [0.0], cfg=DPOConfig(beta=1.0, label_smoothing=eps))
    loss.sum().backward()
    assert c.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_ipo_is_squared_distance_to_one_over_two_beta():
    # beta 0.1: target h = 5; h = 2 - 0 = 2 gives (2 - 5)^2 = 9; h = 5 gives 0 (and zero gradient)
    loss, _, c, _ = call(dpo, [2.0, 5.0], [0.0, 0.0], cfg=DPOConfig(loss_type="ipo"))
    assert loss.tolist() == pytest.approx([9.0, 0.0])
    loss.sum().backward()
    assert c.grad.tolist() == pytest.approx([-6.0, 0.0])
    # TRL's variant: log-ratios averaged over tokens, h = 8/4 - (-6)/2 = 5
    cfg = DPOConfig(loss_type="ipo", ipo_length_norm=True)
    loss, _, _, _ = call(dpo, [8.0], [-6.0], lengths=[4], rejected_lengths=[2], cfg=cfg)
    assert loss.item() == pytest.approx(0.0)


def test_dpo_per_pair_loss_follows_a_permutation_of_the_pairs():
    g = torch.Generator().manual_seed(0)
    c, r, rc, rr = (-torch.rand(7, generator=g) * 5 for _ in range(4))
    lengths = torch.randint(1, 9, (7,), generator=g)
    perm = torch.randperm(7, generator=g)
    loss, _ = dpo(c, r, rc, rr, cfg=DPOConfig(), chosen_lengths=lengths, rejected_lengths=lengths)
    shuffled, _ = dpo(
        c[perm], r[perm], rc[perm], rr[perm], cfg=DPOConfig(), chosen_lengths=lengths, rejected_lengths=lengths
    )
    assert torch.equal(shuffled, loss[perm])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "dpo beta must be > 0, got 0.0"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\), got 0.5"),
        ({"loss_type": "hinge"}, r"loss_type must be one of \['sigmoid', 'ipo'\], got 'hinge'"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing applies to loss_type='sigmoid' only"),
    ],
)
def test_dpo_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPOConfig(**kwargs)


# ------------------------------------------------------------------------------------------------- POWER-DL

PLAIN = PowerDLConfig(beta=1.0, eta=0.0, length_normalize=False)  # margin = log pi(y_w) - log pi(y_l)


def test_dynamic_label_numbers_of_the_research_note():
    # l = 1, margin -2 (the model disagrees): dL/dm = sigma(-2) - 1 = -0.881
    loss, _, c, _ = call(power_dl, [-2.0], [0.0], cfg=PLAIN, labels=torch.ones(1, dtype=torch.float64))
    loss.sum().backward()
    assert c.grad.item() == pytest.approx(sigmoid(-2) - 1) and round(c.grad.item(), 3) == -0.881
    # one update with gamma 0.5: l = 0.5 + 0.5 sigma(-2) = 0.560, and the factor halves to sigma(-2) - 0.5596 =
    # -0.4404 (the note's -0.441 subtracts the rounded 0.119 and 0.560)
    label = dynamic_labels(torch.ones(1, dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64), 0.5)
    assert round(label.item(), 3) == 0.560
    loss, _, c, _ = call(power_dl, [-2.0], [0.0], cfg=PLAIN, labels=label)
    loss.sum().backward()
    assert c.grad.item() == pytest.approx(sigmoid(-2) - label.item()) and round(c.grad.item(), 4) == -0.4404


def test_a_stationary_label_gives_zero_gradient():
    margins = torch.tensor([-2.0, -0.3, 0.0, 1.7], dtype=torch.float64)
    stationary = torch.sigmoid(margins)
    loss, m, c, r = call(power_dl, margins.tolist(), [0.0] * 4, cfg=PLAIN, labels=stationary)
    loss.sum().backward()
    assert torch.allclose(c.grad, torch.zeros(4, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(r.grad, torch.zeros(4, dtype=torch.float64), atol=1e-15)
    assert m["pref/label_gap"].item() == pytest.approx(0.0, abs=1e-15)
    assert torch.equal(dynamic_labels(stationary, margins, 0.7), stationary)  # and the update leaves it there


def test_repeated_updates_move_the_label_to_the_stationary_label():
    label, margin = torch.ones(1), torch.tensor([-2.0])
    for _ in range(60):
        label = dynamic_labels(label, margin, 0.2)
    assert label.item() == pytest.approx(sigmoid(-2.0), abs=1e-5)
    assert torch.equal(dynamic_labels(torch.tensor([0.3]), margin, 0.0), torch.tensor([0.3]))  # gamma 0: fixed
    assert dynamic_labels(torch.tensor([0.3]), margin, 1.0).item() == pytest.approx(sigmoid(-2.0))
    assert not dynamic_labels(torch.ones(1), margin.requires_grad_(), 0.5).requires_grad
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        dynamic_labels(label, margin, 1.5)


def test_length_normalised_margin_with_the_weighted_entropy_offset():
    # log pi(y_w) = -4 over 2 tokens, log pi(y_l) = -4 over 4: beta (-2 - (-1)) + beta (1/2 - 1/4), beta = 1
    cfg = PowerDLConfig(beta=1.0, eta=0.0)
    loss, m, _, _ = call(power_dl, [-4.0], [-4.0], lengths=[2], rejected_lengths=[4], cfg=cfg)
    assert m["pref/margin_mean"].item() == pytest.approx(-0.75)
    assert loss.item() == pytest.approx(-math.log(sigmoid(-0.75)))
    assert m["pref/chosen_reward"].item() == pytest.approx(0.5 * (-4 + 1))  # beta w (log pi + 1)
    assert m["pref/rejected_reward"].item() == pytest.approx(0.25 * (-4 + 1))
    _, m, _, _ = call(
        power_dl, [-4.0], [-4.0], lengths=[2], rejected_lengths=[4], cfg=PowerDLConfig(beta=1.0, entropy_offset=False)
    )
    assert m["pref/margin_mean"].item() == pytest.approx(-1.0)


def test_the_anchor_adds_minus_eta_beta_mean_token_logp_of_the_chosen():
    base = PowerDLConfig(beta=2.0, eta=0.0)
    anchored = PowerDLConfig(beta=2.0, eta=0.5)
    args = ([-6.0], [-2.0])
    plain, _, c0, _ = call(power_dl, *args, lengths=[3], rejected_lengths=[2], cfg=base)
    loss, m, c1, _ = call(power_dl, *args, lengths=[3], rejected_lengths=[2], cfg=anchored)
    assert m["pref/anchor_mean"].item() == pytest.approx(2.0 * -6.0 / 3)
    assert (loss - plain).item() == pytest.approx(-0.5 * 2.0 * -6.0 / 3)
    plain.sum().backward(), loss.sum().backward()
    assert (c1.grad - c0.grad).item() == pytest.approx(-0.5 * 2.0 / 3)  # the anchor raises the chosen response


def test_length_normalised_margin_depends_on_per_token_log_probs_only():
    cfg = PowerDLConfig(entropy_offset=False)
    _, short, _, _ = call(power_dl, [-3.0], [-2.0], lengths=[3], rejected_lengths=[1], cfg=cfg)
    _, long, _, _ = call(power_dl, [-12.0], [-10.0], lengths=[12], rejected_lengths=[5], cfg=cfg)
    assert long["pref/margin_mean"].item() == pytest.approx(short["pref/margin_mean"].item())


def test_power_is_reference_free_by_default():
    a, _, _, _ = call(
        power_dl, [-3.0, -1.0], [-2.0, -4.0], [-9.0, 0.0], [1.0, -7.0], lengths=[3, 2], cfg=PowerDLConfig()
    )
    b, _, _, _ = call(power_dl, [-3.0, -1.0], [-2.0, -4.0], lengths=[3, 2], cfg=PowerDLConfig())
    assert torch.equal(a, b)


@pytest.mark.parametrize("offset", [True, False])
def test_power_dl_reduces_to_dpo_exactly(offset):
    """Weighted KL (reference=True) with w = 1 (length_normalize=False), no anchor (eta=0) and labels 1 (the
    buffer's start, or gamma = 0): r = beta log(pi/pi_ref) (+ beta, which cancels in the margin), so POWER-DL's
    soft-label BCE is DPO's -log sigma(beta (u_w - u_l)), bit for bit, loss and gradient."""
    g = torch.Generator().manual_seed(3)
    c0, r0, rc, rr = (-torch.rand(9, generator=g) * 6 for _ in range(4))
    lc, lr = torch.randint(1, 20, (9,), generator=g), torch.randint(1, 20, (9,), generator=g)
    cfg = PowerDLConfig(beta=0.1, eta=0.0, length_normalize=False, entropy_offset=offset, reference=True)
    out = []
    for fn, kw in ((dpo, {"cfg": DPOConfig(beta=0.1)}), (power_dl, {"cfg": cfg, "labels": torch.ones(9)})):
        c, r = c0.clone().requires_grad_(), r0.clone().requires_grad_()
        loss, m = fn(c, r, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
        loss.sum().backward()
        out.append((loss, c.grad, r.grad, m))
    (loss_d, gc_d, gr_d, m_d), (loss_p, gc_p, gr_p, m_p) = out
    assert torch.equal(loss_p, loss_d) and torch.equal(gc_p, gc_d) and torch.equal(gr_p, gr_d)
    assert torch.equal(m_p["pref/margin_mean"], m_d["pref/margin_mean"])
    assert torch.equal(m_p["pref/accuracy"], m_d["pref/accuracy"])
    no_labels, _ = power_dl(c0, r0, rc, rr, cfg=cfg, chosen_lengths=lc, rejected_lengths=lr)  # None: labels 1
    assert torch.equal(no_labels, loss_d)


def test_power_margin_is_the_loss_margin():
    g = torch.Generator().manual_seed(1)
    c, r, rc, rr = (-torch.rand(5, generator=g) * 6 for _ in range(4))
    lc, lr = torch.randint(1, 9, (5,), generator=g), torch.randint(1, 9, (5,), generator=g)
    cfg = PowerDLConfig()
    margin, r_w, r_l, _ = power_margin(c, r, rc, rr, lc, lr, cfg)
    _, m = power_dl(c, r, rc, rr, cfg=cfg, chosen_lengths=lc, rejected_lengths=lr)
    assert m["pref/margin_mean"].item() == pytest.approx(margin.mean().item())
    assert torch.allclose(margin, r_w - r_l, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"beta": -1.0}, "power_dl beta must be > 0, got -1.0"), ({"eta": -0.1}, "power_dl eta must be >= 0, got -0.1")],
)
def test_power_dl_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PowerDLConfig(**kwargs)
