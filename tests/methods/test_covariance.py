"""Clip-Cov and KL-Cov (arXiv:2505.22617): hand-computed worked examples as closed forms.

Then the parent method at the degenerate setting (ratio 0 is PPO-clip / the plain surrogate), gradient signs
and exact zeros, padding invariance, micro-batch == batch once ``stats`` come from the whole minibatch, and the
random subset drawn from the generator passed in (``needs=("generator",)``), never from the config.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from entrolab import catalogue, ops
from entrolab.methods.aggregation import aggregate
from entrolab.methods.covariance import (
    ClipCovConfig,
    KLCovConfig,
    clip_cov,
    clip_cov_filter,
    clip_cov_stats,
    kl_cov,
    kl_cov_stats,
)
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from tests.methods._helpers import call_filter, gen, ragged_batch

# A hand-computed example: A = [1, 1, 1, -1, -1, -1], p = [.9, .5, .05, .9, .5, .05].
NOTE_LOGP = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]], dtype=torch.float64))
NOTE_ADV = torch.tensor([[1.0, 1, 1, -1, -1, -1]], dtype=torch.float64)
NOTE_COV = [1.1594, 0.5716, -1.7310, -1.1594, -0.5716, 1.7310]


def test_note_covariance_example_and_kl_cov_top2():
    cov = ops.centred_product(NOTE_ADV, NOTE_LOGP, torch.ones(1, 6))
    torch.testing.assert_close(cov[0], torch.tensor(NOTE_COV, dtype=torch.float64), atol=1e-4, rtol=0)
    # KL-Cov with k = 2 selects {5, 0}: the top one is a *penalised rare* token (both factors negative).
    assert ops.topk_mask(cov, torch.ones(1, 6), 2)[0].nonzero().flatten().tolist() == [0, 5]
    loss, m = kl_cov(NOTE_LOGP, NOTE_LOGP - 0.1, NOTE_ADV, torch.ones(1, 6), cfg=KLCovConfig(ratio=2 / 6))
    extra = loss + NOTE_ADV * math.exp(0.1)  # the beta |log r| part
    torch.testing.assert_close(extra[0], torch.tensor([0.1, 0, 0, 0, 0, 0.1], dtype=torch.float64))
    assert m["kl/frac_cov"].item() == pytest.approx(2 / 6)
    assert m["cov/logp_adv"].item() == pytest.approx(0.0, abs=1e-12)  # symmetric example: Cov(A, logp) = 0


def _thousand_tokens():
    """10 rows of 100 valid tokens padded to 120 with garbage; r = 2 everywhere; A = +1 / -1 by row."""
    mask = (torch.arange(120) < 100).expand(10, 120).to(torch.float64)
    g = gen(1)
    old = -torch.rand(10, 120, generator=g, dtype=torch.float64) * 3
    logp = old + math.log(2.0)
    logp[:, 100:], old[:, 100:] = float("nan"), float("inf")
    adv = torch.tensor([1.0, -1.0] * 5, dtype=torch.float64).unsqueeze(-1)
    return mask, logp.requires_grad_(), old, adv


def test_kl_cov_count_on_1000_tokens_and_no_clipping():
    mask, logp, old, adv = _thousand_tokens()
    loss, m = kl_cov(logp, old, adv, mask, cfg=KLCovConfig(ratio=0.002, coef=1.0))
    extra = torch.where(mask.bool(), loss + adv * 2.0, 0.0)
    assert int((extra.abs() > 1e-9).sum()) == 2  # exactly 2 = 0.002 * 1000 tokens carry the term
    torch.testing.assert_close(extra[extra.abs() > 1e-9], torch.full((2,), math.log(2.0), dtype=torch.float64))
    assert torch.all(loss[:, 100:] == 0) and torch.isfinite(loss).all()
    assert torch.all(loss[0, :100][extra[0, :100] == 0] == -2.0)  # A = 1, r = 2: -2, no PPO clip
    assert m["kl/abs_log_ratio"].item() == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("log_ratio", [0.1, -0.1])
def test_kl_cov_gradient_is_beta_sign_of_log_ratio(log_ratio):
    # Token 0 has A = 0 and the largest Cov (-0.75 times a very negative centred logp): it is the one selected.
    logp = torch.tensor([[-6.0, -1.0, -1.2, -0.8]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    loss, _ = kl_cov(logp, logp.detach() - log_ratio, adv, torch.ones(1, 4), cfg=KLCovConfig(ratio=0.25, coef=1.0))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert grad[0, 0].item() == pytest.approx(math.copysign(1.0, log_ratio))  # d beta|l - l_old| / dl
    torch.testing.assert_close(grad[0, 1:], -adv[0, 1:] * math.exp(log_ratio))  # plain -A r elsewhere


@pytest.mark.parametrize("cfg", [KLCovConfig(coef=0.0), KLCovConfig(ratio=0.0)])
def test_kl_cov_off_is_the_unclipped_surrogate_and_ppo_clip_inside_the_range(cfg):
    mask, logp, old, adv, _ = ragged_batch(2)
    loss, m = kl_cov(logp, old, adv, mask, cfg=cfg)
    plain = torch.where(mask.bool(), -adv * torch.exp(logp - old), 0.0)
    torch.testing.assert_close(loss, plain, atol=0, rtol=0)
    # The paper's KL-Cov never clips: its parent is ppo_clip with a range no ratio reaches.
    ref, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_low=0.999, eps_high=1e6))
    torch.testing.assert_close(loss, ref)
    assert m["kl/frac_cov"].item() == (0.0 if cfg.ratio == 0 else pytest.approx(1 / mask.sum().item()))


def test_clip_cov_ratio_zero_is_ppo_clip_exactly():
    mask, logp, old, adv, _ = ragged_batch(3)
    for eps in ((0.2, 0.28), (1.0, 1.0)):
        a, ma = clip_cov(logp, old, adv, mask, cfg=ClipCovConfig(ratio=0.0, eps_low=eps[0], eps_high=eps[1]))
        b, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_low=min(eps[0], 0.999), eps_high=eps[1]))
        if eps[0] == 1.0:  # clamp(r, 0, 2) == clamp(r, 0.001, 2) for these ratios (none below 0.001)
            assert float(torch.exp(logp.detach() - old)[mask.bool()].min()) > 0.001
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        ga, gb = (torch.autograd.grad(x.sum(), logp)[0] for x in (a, b))
        torch.testing.assert_close(ga, gb, atol=0, rtol=0)
        assert ma["clip/frac_cov"].item() == 0.0
    paper, _ = clip_cov(logp, old, adv, mask, cfg=ClipCovConfig(ratio=0.0))
    torch.testing.assert_close(paper, torch.where(mask.bool(), -adv * torch.exp(logp - old), 0.0))


def test_clip_cov_selection_band_budget_zero_grad_and_denominator():
    g = gen(4)
    mask = (torch.arange(50) < torch.tensor([50, 30, 45, 0, 50, 25]).unsqueeze(-1)).double()
    old = -torch.rand(6, 50, generator=g, dtype=torch.float64) * 5
    logp = (old + 0.4 * torch.randn(6, 50, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(6, 1, generator=g, dtype=torch.float64) * 3
    cfg = ClipCovConfig(ratio=0.02, cov_lb=1.0, cov_ub=5.0, eps_low=0.2, eps_high=0.2)
    loss, m = clip_cov(logp, old, adv, mask, cfg=cfg, generator=gen(0))
    keep, ratio = mask.bool(), torch.exp(logp.detach() - old)
    cov = ops.centred_product(adv, logp.detach(), mask)
    ppo_clipped = keep & (-adv * ratio.clamp(0.8, 1.2) > -adv * ratio)
    cand = keep & (cov > 1) & (cov < 5) & ~ppo_clipped
    n_valid = int(mask.sum())
    selected = keep & (loss == 0) & (torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)) != 0)
    assert int(selected.sum()) == min(int(0.02 * n_valid), int(cand.sum())) > 0
    assert torch.all(cand[selected]) and not torch.any(selected & ppo_clipped)  # only band, never PPO-clipped
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "token-mean"), logp)
    assert torch.all(grad[selected] == 0) and torch.all(grad[~keep] == 0)
    ppo, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.2))
    expected = ops.masked_sum(ppo, keep & ~selected) / n_valid  # the detached tokens stay in the denominator
    torch.testing.assert_close(aggregate(loss, mask, "token-mean"), expected)
    assert m["clip/frac_cov"].item() == pytest.approx(int(selected.sum()) / n_valid)
    assert m["clip/frac_ppo"].item() == pytest.approx(int(ppo_clipped.sum()) / n_valid)


def test_clip_cov_reproducible_with_generator_or_global_seed():
    mask, logp, old, adv, _ = ragged_batch(5, t=40)
    mask = torch.ones_like(mask)
    cfg = ClipCovConfig(ratio=0.2, cov_lb=0.0, cov_ub=1e9)
    runs = [clip_cov(logp, old, adv, mask, cfg=cfg, generator=gen(7))[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(7)
    global_rng = clip_cov(logp, old, adv, mask, cfg=cfg)[0]  # generator=None: torch's global RNG, as verl
    assert torch.equal(global_rng, runs[0])  # a generator seeded s draws what the global RNG seeded s draws
    other = clip_cov(logp, old, adv, mask, cfg=cfg, generator=gen(8))[0]
    assert not torch.equal(other, runs[0])
    # The generator passed in advances (the run's stream), so two calls with one generator differ.
    g = gen(7)
    first, second = (clip_cov(logp, old, adv, mask, cfg=cfg, generator=g)[0] for _ in range(2))
    assert torch.equal(first, runs[0]) and not torch.equal(second, first)


def test_clip_cov_gradient_sign_on_policy():
    mask, logp, _, adv, _ = ragged_batch(6)
    loss, _ = clip_cov(logp, logp.detach(), adv, mask, cfg=ClipCovConfig(ratio=0.0))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.where(mask.bool(), -adv.expand_as(grad), 0.0))  # r = 1: -A


def _same_real_columns(narrow, wide, t):
    (a, ma), (b, mb) = narrow, wide
    assert torch.equal(a, b[:, :t]) and torch.all(b[:, t:] == 0)
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-9, atol=1e-12)


def test_cov_losses_padding_invariance():
    mask, logp, old, adv, _ = ragged_batch(8)
    logp = logp.detach()
    pad = torch.tensor([[float("nan"), float("inf")]], dtype=torch.float64).expand(6, 2)

    def wide(x):
        return torch.cat([x, pad], 1)

    wmask = torch.cat([mask, torch.zeros(6, 2, dtype=torch.float64)], 1)
    ccfg = dict(ratio=0.3, cov_lb=0.0, cov_ub=1e9, eps_low=0.2, eps_high=0.28)
    _same_real_columns(
        clip_cov(logp, old, adv, mask, cfg=ClipCovConfig(**ccfg), generator=gen(0)),
        clip_cov(wide(logp), wide(old), adv, wmask, cfg=ClipCovConfig(**ccfg), generator=gen(0)),
        9,
    )
    for scope in ("micro_batch", "batch"):
        kcfg = KLCovConfig(ratio=0.1, scope=scope)
        _same_real_columns(
            kl_cov(logp + 0.1, old, adv, mask, cfg=kcfg), kl_cov(wide(logp + 0.1), wide(old), adv, wmask, cfg=kcfg), 9
        )


@pytest.mark.parametrize(
    ("fn", "stats_fn", "cfg"),
    [
        (clip_cov, clip_cov_stats, ClipCovConfig(ratio=0.1, cov_lb=0.0, cov_ub=1e9, scope="batch")),
        (kl_cov, kl_cov_stats, KLCovConfig(ratio=0.1, scope="batch")),
    ],
)
def test_batch_scope_micro_batches_equal_the_whole_minibatch(fn, stats_fn, cfg):
    mask, logp, old, adv, entropy = ragged_batch(9)
    logp = logp.detach() + 0.05  # off-policy: the selection still comes from the stats
    rng = {"generator": gen(3)} if fn is clip_cov else {}  # the caller passes the generator to what draws
    stats = stats_fn(mask=mask, old_logp=old, advantages=adv, entropy=entropy, cfg=cfg, **rng)
    whole, _ = fn(logp, old, adv, mask, cfg=cfg, stats=stats)
    parts = []
    for sl in (slice(0, 2), slice(2, 5), slice(5, 6)):
        width = max(int(mask[sl].sum(-1).max()), 1)  # the trainer trims right padding per micro-batch
        st = {k: v[sl, :width] for k, v in stats.items()}
        part, _ = fn(logp[sl, :width], old[sl, :width], adv[sl], mask[sl, :width], cfg=cfg, stats=st)
        parts.append(torch.nn.functional.pad(part, (0, 9 - width)))
    torch.testing.assert_close(torch.cat(parts), whole, atol=0, rtol=0)
    # scope="batch" without stats computes them from the tensors given (and generator): the same selection.
    rng = {"generator": gen(3)} if fn is clip_cov else {}
    alone, _ = fn(logp, old, adv, mask, cfg=cfg, **rng)
    torch.testing.assert_close(alone, whole, atol=0, rtol=0)
    assert 0 < int(stats["selected"].sum()) == max(int(0.1 * mask.sum().item()), 1)


def test_clip_cov_filter_is_zero_weight_and_matches_the_stats():
    mask, _, old, adv, _ = ragged_batch(10)
    cfg = ClipCovConfig(ratio=0.2, cov_lb=-1e9, cov_ub=1e9)
    w, m, metrics = call_filter(clip_cov_filter, mask, cfg, old_logp=old, advantages=adv, generator=gen(2))
    assert torch.equal(m, mask)  # zero-weight: the mask (and so the denominator) is unchanged
    chosen = clip_cov_stats(mask=mask, old_logp=old, advantages=adv, entropy=None, cfg=cfg, generator=gen(2))
    chosen = chosen["selected"]
    assert torch.equal(w == 0, chosen) and int(chosen.sum()) == int(0.2 * mask.sum().item())
    assert metrics["filter/frac_cov_detached"].item() == pytest.approx(int(chosen.sum()) / mask.sum().item())


def test_clip_cov_generator_is_an_input_not_an_option():
    # (b) of the composer's conventions: no torch.Generator in a frozen config; the run's generator is passed in.
    assert "generator" not in {f.name for f in dataclasses.fields(ClipCovConfig)}
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['generator'\]"):
        catalogue.get("policy_loss", "clip_cov").make_config({"generator": gen(0)})
    for axis in ("policy_loss", "token_filter"):
        entry = catalogue.get(axis, "clip_cov")
        assert entry.needs == ("generator",) and entry.stats is clip_cov_stats
    assert catalogue.get("policy_loss", "kl_cov").needs == ()  # deterministic top-k: no generator


@pytest.mark.parametrize("scope", ["micro_batch", "batch"])
def test_clip_cov_draws_from_the_generator_of_whichever_function_draws(scope):
    # micro_batch: the loss draws; batch: clip_cov_stats draws (the loss only reads stats["selected"]).
    mask, logp, old, adv, entropy = ragged_batch(21, t=30)
    mask = torch.ones_like(mask)
    logp = old.clone().requires_grad_()  # on-policy: loss and stats see the same covariance, no PPO clip
    cfg = ClipCovConfig(ratio=0.1, cov_lb=-1e9, cov_ub=1e9, scope=scope)
    loss, m = clip_cov(logp, old, adv, mask, cfg=cfg, generator=gen(4))
    assert m["clip/frac_cov"].item() == pytest.approx(int(0.1 * mask.sum().item()) / mask.sum().item())
    selected = clip_cov_stats(mask=mask, old_logp=old, advantages=adv, entropy=entropy, cfg=cfg, generator=gen(4))
    assert torch.equal(loss == 0, selected["selected"])  # the same subset from the same seed, either way
    assert int(selected["selected"].sum()) == int(0.1 * mask.sum().item())
    if scope == "batch":  # given stats, the loss draws nothing: any generator (or none) gives the same loss
        with_stats = [clip_cov(logp, old, adv, mask, cfg=cfg, stats=selected, generator=g)[0] for g in (gen(9), None)]
        assert all(torch.equal(x, loss) for x in with_stats)
    filt, _, _ = call_filter(clip_cov_filter, mask, cfg, old_logp=old, advantages=adv, generator=gen(4))
    assert torch.equal(filt == 0, selected["selected"])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ClipCovConfig(ratio=1.5), r"ratio.*1\.5"),
        (lambda: ClipCovConfig(cov_lb=5.0, cov_ub=1.0), r"cov_lb=5\.0"),
        (lambda: ClipCovConfig(eps_low=0.2), r"together"),
        (lambda: ClipCovConfig(scope="global"), r"'global'"),
        (lambda: KLCovConfig(coef=-1.0), r"coef.*-1\.0"),
    ],
)
def test_config_validation_names_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_registered_clip_cov_shares_its_config_and_has_batch_stats():
    assert catalogue.get("policy_loss", "clip_cov").config is catalogue.get("token_filter", "clip_cov").config
    for axis, name in [("policy_loss", "clip_cov"), ("policy_loss", "kl_cov")]:
        assert catalogue.get(axis, name).stats is not None
