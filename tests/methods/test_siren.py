"""SIREN (arXiv:2509.25133): top-p entropy, per-response peak mask, anchored squared deviation.

Closed forms for hand-computed examples, both averages (``all_responses``: the released code, a response
without a peak counting 0; ``responses_with_peak``) and both penalties (``batch_scalar``: the code's 0-dim term
added once per micro-batch; ``per_token``), the gradient toward the anchor, the anchor as controller state
(``state={"anchor": H_0}``, missing -> no penalty), exact zeros and padding invariance on masked positions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.aggregation import aggregate
from entrolab.methods.siren import SirenAnchorConfig, SirenConfig, siren, siren_anchor, topp_entropy
from tests.methods._helpers import INF, NAN, pad


def _siren(cfg, mask, logits, state=None):
    """Call the regulariser with the axis's keywords (logp, entropy, old_logp, ref_logp unused)."""
    return siren(None, mask, cfg=cfg, entropy=None, old_logp=None, ref_logp=None, logits=logits, state=state)


def _bernoulli_logits(p: list[list[float]]) -> torch.Tensor:
    """[B, T, 2] logits of Bernoulli(p): with top_p=1 and the inclusive nucleus H^top is the full entropy."""
    p = torch.tensor(p)
    return torch.stack([p.log(), (1 - p).log()], -1)


def _h2(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


SIREN_FULL = SirenConfig(coef=1.0, top_p=1.0, nucleus="inclusive")
PER_TOKEN = replace(SIREN_FULL, penalty="per_token")
ZERO = {"anchor": 0.0}


# ---------------------------------------------------------------------------------------------- top-p entropy


def test_topp_entropy_note_example_both_conventions():
    # p = [.5, .2, .15, .1, .05], top_p = 0.8: exclusive keeps {.5, .2} (cum .7 < .8; .15 crosses to .85),
    # H = -(5/7 ln 5/7 + 2/7 ln 2/7); inclusive keeps the crossing token too.
    z = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    excl = -(5 / 7 * math.log(5 / 7) + 2 / 7 * math.log(2 / 7))
    q = torch.tensor([0.5, 0.2, 0.15]) / 0.85
    incl = -(q * q.log()).sum().item()
    assert topp_entropy(z, 0.8, 5).item() == pytest.approx(excl, abs=1e-6) == pytest.approx(0.59827, abs=1e-5)
    assert topp_entropy(z, 0.8, 5, "inclusive").item() == pytest.approx(incl, abs=1e-6)
    assert incl == pytest.approx(0.95869, abs=1e-5)
    assert topp_entropy(z, 0.8, 2).item() == pytest.approx(excl, abs=1e-6)  # top-k = 2 holds the nucleus
    assert topp_entropy(z, 0.8, 100).item() == pytest.approx(excl, abs=1e-6)  # k > V: min(k, V)


def test_topp_entropy_top1_above_p_is_zero_with_zero_gradient():
    z = torch.tensor([3.0, 0.0, -1.0], requires_grad=True)  # top-1 prob 0.94 >= 0.8
    h = topp_entropy(z, 0.8, 3)
    (grad,) = torch.autograd.grad(h, z)
    assert h.item() == 0.0 and torch.all(grad == 0)


# ------------------------------------------------------------------------------------------ H_hat, penalty


def test_peak_mask_is_per_response():
    # Row 0 has small entropies rising along t: only t = 4 is above its own 0.8-quantile.
    # Row 1 has large entropies, highest at t = 1 (p = 0.5). A batch-wide quantile would keep row 1 only.
    logits = _bernoulli_logits([[0.99, 0.98, 0.97, 0.96, 0.95], [0.6, 0.5, 0.7, 0.8, 0.9]])
    term, m = _siren(SIREN_FULL, torch.ones(2, 5), logits, ZERO)
    assert m["siren/peak_frac"].item() == pytest.approx(2 / 10)
    h_hat = (_h2(0.95) + math.log(2)) / 2  # seq-mean-token-mean over the two peaks
    assert m["entropy/topp_peak_mean"].item() == pytest.approx(h_hat, rel=1e-5)
    assert m["siren/penalty"].item() == pytest.approx(h_hat**2, rel=1e-5)  # coef (H_hat - 0)^2
    assert term.dim() == 0 and term.item() == pytest.approx(h_hat**2, rel=1e-5)  # one batch scalar
    per_token, _ = _siren(PER_TOKEN, torch.ones(2, 5), logits, ZERO)
    torch.testing.assert_close(per_token, torch.full((2, 5), h_hat**2))
    # Quantile by hand (hand-computed): entropies [0, 1, 2, 3, 4] -> tau = 3.2 -> only 4 kept.
    tau = torch.nanquantile(torch.tensor([[0.0, 1, 2, 3, 4]]), 0.8, dim=-1)
    assert tau.item() == pytest.approx(3.2)


# Three responses: row 0 peaks at t = 2 (p = 0.5, ln 2); row 1 is constant (p = 0.8 everywhere: no position is
# strictly above its quantile, so no peak); row 2 has a single valid token (its own quantile: no peak).
# Row 3 has no valid token at all: no response of the loss under either average.
NO_PEAK_LOGITS = _bernoulli_logits([[0.9, 0.8, 0.5, 0.7], [0.8] * 4, [0.6, 0.9, 0.9, 0.9], [0.7] * 4])
NO_PEAK_MASK = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    ("average", "h_hat"),
    [("all_responses", math.log(2) / 3), ("responses_with_peak", math.log(2))],  # (ln 2 + 0 + 0) / 3 vs ln 2 / 1
)
def test_response_without_a_peak_counts_zero_in_the_code_average(average, h_hat):
    cfg = replace(SIREN_FULL, coef=2.0, average=average)
    term, m = _siren(cfg, NO_PEAK_MASK, NO_PEAK_LOGITS, {"anchor": 0.1})
    assert m["entropy/topp_peak_mean"].item() == pytest.approx(h_hat, rel=1e-5)
    assert m["siren/peak_frac"].item() == pytest.approx(1 / 9)  # one peak among 4 + 4 + 1 valid tokens
    assert term.dim() == 0 and term.item() == pytest.approx(2.0 * (h_hat - 0.1) ** 2, rel=1e-5)
    assert m["siren/penalty"].item() == pytest.approx(term.item())


def test_default_follows_the_released_code():
    cfg = SirenConfig()
    assert (cfg.penalty, cfg.average) == ("batch_scalar", "all_responses")
    assert (cfg.coef, cfg.top_p, cfg.top_k, cfg.quantile, cfg.nucleus) == (0.005, 0.8, 10000, 0.8, "exclusive")


def test_no_peak_anywhere_all_responses_is_constant_code_penalty():
    # Every response constant: H_hat = 0 under all_responses, penalty coef H_0^2 with no gradient (as the code);
    # responses_with_peak has no response to average: no penalty.
    z = _bernoulli_logits([[0.8] * 3, [0.6] * 3]).requires_grad_()
    term, m = _siren(SIREN_FULL, torch.ones(2, 3), z, {"anchor": 0.5})
    assert m["entropy/topp_peak_mean"].item() == 0.0 and m["siren/peak_frac"].item() == 0.0
    assert term.item() == pytest.approx(0.25)
    (grad,) = torch.autograd.grad(term, z)
    assert torch.all(grad == 0)
    term, _ = _siren(replace(SIREN_FULL, average="responses_with_peak"), torch.ones(2, 3), z, {"anchor": 0.5})
    assert term.item() == 0.0


def test_batch_scalar_vs_per_token_under_the_aggregations():
    # per_token re-aggregates the penalty: token-mean and seq-mean-token-mean give it back exactly (one
    # micro-batch), seq-mean-token-sum-norm scales it by tokens / (seqs * norm_len): 6 / (2 * 8) here.
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8], [0.55, 0.99, 0.7, 0.6]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    scalar, m = _siren(SIREN_FULL, mask, logits, {"anchor": 2.0})
    spread, _ = _siren(PER_TOKEN, mask, logits, {"anchor": 2.0})
    assert scalar.dim() == 0 and spread.shape == (2, 4) and torch.all(spread[mask == 0] == 0)
    counts = dict(num_tokens=mask.sum(), num_seqs=torch.tensor(2.0), norm_len=8)
    for mode, scale in (("token-mean", 1.0), ("seq-mean-token-mean", 1.0), ("seq-mean-token-sum-norm", 6 / 16)):
        got = aggregate(spread, mask, mode, **counts)
        assert got.item() == pytest.approx(scale * scalar.item(), rel=1e-6), mode
    assert m["siren/penalty"].item() == pytest.approx(scalar.item())


def test_gradient_vanishes_at_anchor_and_points_to_it():
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8, 0.6]])
    mask = torch.ones(1, 5)
    _, m = _siren(SIREN_FULL, mask, logits)
    h_hat = m["entropy/topp_peak_mean"].item()
    at = logits.clone().requires_grad_()
    term, _ = _siren(SIREN_FULL, mask, at, {"anchor": h_hat})
    (grad,) = torch.autograd.grad(term, at)
    assert grad.abs().max().item() < 1e-6
    for anchor in (h_hat + 0.3, h_hat - 0.3):  # one descent step moves H_hat toward the anchor
        z = logits.clone().requires_grad_()
        term, _ = _siren(SIREN_FULL, mask, z, {"anchor": anchor})
        (grad,) = torch.autograd.grad(term, z)
        _, after = _siren(SIREN_FULL, mask, z.detach() - 0.5 * grad, {"anchor": anchor})
        assert abs(after["entropy/topp_peak_mean"].item() - anchor) < abs(h_hat - anchor)
        zt = logits.clone().requires_grad_()  # per_token with token-mean on one micro-batch: the same gradient
        spread, _ = _siren(PER_TOKEN, mask, zt, {"anchor": anchor})
        (gt,) = torch.autograd.grad(aggregate(spread, mask, "token-mean"), zt)
        torch.testing.assert_close(gt, grad)


# -------------------------------------------------------------------------------------------- anchor state


def test_anchor_is_controller_state_not_an_option():
    assert "anchor" not in {f.name for f in dataclasses.fields(SirenConfig)}
    entry = catalogue.get("regularizer", "siren")
    assert entry.state == ("anchor",) and entry.needs == ("logits",)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['anchor'\]"):
        entry.make_config({"anchor": 0.5})
    sched = catalogue.get("schedule", "siren_anchor")
    assert sched.sets(SirenAnchorConfig()) == ("siren.anchor",)
    assert sched.reads(SirenAnchorConfig()) == ("entropy/topp_peak_mean",)


def test_missing_anchor_means_no_penalty_and_bad_anchor_raises():
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8, 0.6]])
    for state in (None, {}, {"other": 1.0}):  # the first step: no value set yet
        for cfg in (SIREN_FULL, PER_TOKEN):
            term, m = _siren(cfg, torch.ones(1, 5), logits, state)
            assert torch.all(term == 0) and m["siren/penalty"].item() == 0.0
            assert m["entropy/topp_peak_mean"].item() > 0  # H_hat is still measured (the anchor records it)
    with pytest.raises(ValueError, match=r"anchor must be >= 0, got -1.0"):
        _siren(SIREN_FULL, torch.ones(1, 5), logits, {"anchor": -1.0})


def test_anchor_schedule_records_once_and_feeds_the_state():
    state, values = siren_anchor({}, {}, cfg=SirenAnchorConfig(), step=1, total_steps=5)
    assert values == {} and state == {}
    trajectory = [0.9, 0.4, 0.1, 1.5]
    for step, h in enumerate(trajectory, start=2):
        state, values = siren_anchor(
            state, {"entropy/topp_peak_mean": h}, cfg=SirenAnchorConfig(), step=step, total_steps=5
        )
        assert values == {"siren.anchor": 0.9}  # the first observation, never updated
    # The composer routes "siren.anchor" (a declared state name) into state={"anchor": ...}.
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8, 0.6]])
    routed = {k.partition(".")[2]: v for k, v in values.items()}
    term, _ = _siren(SIREN_FULL, torch.ones(1, 5), logits, routed)
    _, m = _siren(SIREN_FULL, torch.ones(1, 5), logits)
    assert term.item() == pytest.approx((m["entropy/topp_peak_mean"].item() - 0.9) ** 2, rel=1e-5)


# ---------------------------------------------------------------------------------- degenerate and padding


def test_degenerate_masked_and_padding():
    logits = _bernoulli_logits([[0.9, 0.7, 0.95, 0.8, 0.6], [0.55, 0.99, 0.7, 0.6, 0.5]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    zero, m = _siren(SirenConfig(coef=0.0, top_p=1.0), mask, logits, {"anchor": 1.0})
    assert torch.all(zero == 0) and m["siren/penalty"].item() == 0
    garbage = logits.clone()
    garbage[1, 3:] = NAN
    for cfg in (SIREN_FULL, PER_TOKEN):
        z = garbage.clone().requires_grad_()
        term, m = _siren(cfg, mask, z, {"anchor": 2.0})
        (term if term.dim() == 0 else aggregate(term, mask, "token-mean")).backward()
        assert torch.isfinite(term).all() and (term.dim() == 0 or torch.all(term[1, 3:] == 0))
        assert torch.all(z.grad[1, 3:] == 0) and torch.isfinite(z.grad).all() and z.grad[mask.bool()].abs().sum() > 0
        narrow = _siren(cfg, mask, logits, {"anchor": 2.0})
        wide = _siren(cfg, pad(mask, 0.0), pad(logits, INF), {"anchor": 2.0})
        if cfg.penalty == "batch_scalar":
            torch.testing.assert_close(narrow[0], wide[0])
        else:
            torch.testing.assert_close(narrow[0], wide[0][:, :5])
            assert torch.all(wide[0][:, 5:] == 0)
        for k in narrow[1]:
            torch.testing.assert_close(narrow[1][k], wide[1][k], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="needs logits"):
        siren(None, mask, cfg=SIREN_FULL, entropy=None, old_logp=None, ref_logp=None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(penalty="mean"), r"penalty must be one of \['batch_scalar', 'per_token'\], got 'mean'"),
        (dict(average="peaks"), r"average must be one of .*'peaks'"),
        (dict(nucleus="both"), r"nucleus must be one of .*'both'"),
        (dict(quantile=1.0), r"quantile must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_validation_names_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SirenConfig(**kwargs)


def _code_h_hat(h: torch.Tensor, mask: torch.Tensor, q: float) -> float:
    """The released code's statistic, written out row by row: per-row nanquantile, strict peak mask, and
    ``agg_loss(seq-mean-token-mean)`` with a 0 for a row whose mask is empty, meaned over the rows."""
    rows = []
    for hi, mi in zip(h.tolist(), mask.tolist(), strict=True):
        valid = [x for x, m in zip(hi, mi, strict=True) if m]
        tau = torch.quantile(torch.tensor(valid), q).item()
        peaks = [x for x in valid if x > tau]
        rows.append(sum(peaks) / len(peaks) if peaks else 0.0)
    return sum(rows) / len(rows)


@pytest.mark.parametrize("seed", range(5))
def test_all_responses_matches_the_codes_statistic_on_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(6, 12, generator=g) * 0.98 + 0.01
    p[1] = 0.3  # a constant response: no peak
    lengths = torch.tensor([12, 12, 1, 7, 3, 9])  # response 2: one token, no peak
    mask = (torch.arange(12) < lengths.unsqueeze(-1)).float()
    logits = torch.stack([p.log(), (1 - p).log()], -1)
    _, m = _siren(SIREN_FULL, mask, logits, ZERO)
    h = -(p * p.log() + (1 - p) * (1 - p).log())
    assert m["entropy/topp_peak_mean"].item() == pytest.approx(_code_h_hat(h, mask, 0.8), rel=1e-5)
