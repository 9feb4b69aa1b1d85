"""SPEAR's covariance clipping (arXiv:2509.22601): the band and budget as closed forms, and the defaults.

The defaults are what the released scripts ran on the on-policy loss (``TencentYoutuResearch/SPEAR``: no script
sets ``clip_cov_ratio`` / ``_lb`` / ``_ub``, so verl's 2e-4 / 1 / 5 ran); the README's 0.02 / 1 / 40 and the
verl-agent replay branch's 0.02 / 2 / 60 are options. The subset comes from the generator passed in.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from entrolab import catalogue, ops
from entrolab.methods.covariance import ClipCovConfig, clip_cov_filter
from entrolab.methods.spear import SpearCovClipConfig, spear_cov_clip
from tests.methods._helpers import gen


def _filter(fn, mask, cfg, old_logp, advantages, **kw):
    return fn(mask, cfg=cfg, entropy=None, old_logp=old_logp, advantages=advantages, truncated=None, **kw)


def _thousand_tokens(seed: int = 17, logp_scale: float = 6.0, adv_scale: float = 4.0):
    """10 rows of 100 valid tokens padded to 120; random old log-probs and per-row advantages."""
    mask = (torch.arange(120) < 100).expand(10, 120).to(torch.float64)
    g = gen(seed)
    old = -torch.rand(10, 120, generator=g, dtype=torch.float64) * logp_scale
    adv = torch.randn(10, 1, generator=g, dtype=torch.float64) * adv_scale
    return mask, old, adv


def test_defaults_are_what_the_released_scripts_ran():
    cfg = SpearCovClipConfig()
    assert (cfg.ratio, cfg.cov_lb, cfg.cov_ub) == (2e-4, 1.0, 5.0)  # verl's PolicyLossConfig / actor.yaml
    clip = ClipCovConfig()
    assert (cfg.ratio, cfg.cov_lb, cfg.cov_ub) == (clip.ratio, clip.cov_lb, clip.cov_ub)  # = the clip_cov filter's
    assert "generator" not in {f.name for f in dataclasses.fields(SpearCovClipConfig)}
    assert catalogue.get("token_filter", "spear_cov_clip").needs == ("generator",)


def test_default_detaches_one_token_of_a_thousand_inside_the_1_5_band():
    mask, old, adv = _thousand_tokens()
    w, m, s = _filter(spear_cov_clip, mask, SpearCovClipConfig(), old, adv, generator=gen(5))
    cov = ops.centred_product(adv, old, mask)
    band = mask.bool() & (cov > 1.0) & (cov < 5.0)
    assert int((w == 0).sum()) == 1 == max(int(2e-4 * 1000), 1) < int(band.sum())  # floor(0.2) -> at least 1
    assert torch.all(band[w == 0]) and torch.equal(m, mask)
    assert s["filter/frac_cov_detached"].item() == pytest.approx(1 / 1000)
    same = _filter(clip_cov_filter, mask, ClipCovConfig(), old, adv, generator=gen(5))[0]
    assert torch.equal(same, w)  # the defaults are the clip_cov filter's


@pytest.mark.parametrize(("ratio", "lb", "ub"), [(0.02, 1.0, 40.0), (0.02, 2.0, 60.0)])  # README; replay branch
def test_readme_and_replay_values_budget_band_and_equal_clip_cov_filter(ratio, lb, ub):
    mask, old, adv = _thousand_tokens()
    cfg = SpearCovClipConfig(ratio=ratio, cov_lb=lb, cov_ub=ub)
    w, m, s = _filter(spear_cov_clip, mask, cfg, old, adv, generator=gen(5))
    cov = ops.centred_product(adv, old, mask)
    band = mask.bool() & (cov > lb) & (cov < ub)
    assert int((w == 0).sum()) == 20 == int(0.02 * 1000) < int(band.sum())  # 2 % of 1000 tokens
    assert torch.all(band[w == 0]) and torch.equal(m, mask) and torch.all(w[:, 100:] == 1)
    assert s["filter/frac_cov_detached"].item() == pytest.approx(0.02)
    same = ClipCovConfig(ratio=ratio, cov_lb=lb, cov_ub=ub)
    assert torch.equal(_filter(clip_cov_filter, mask, same, old, adv, generator=gen(5))[0], w)


def test_ratio_zero_is_no_filter_and_the_generator_decides_the_subset():
    mask, old, adv = _thousand_tokens()
    w0, _, _ = _filter(spear_cov_clip, mask, SpearCovClipConfig(ratio=0.0), old, adv)
    assert torch.equal(w0, torch.ones_like(w0))  # ratio 0: no filter (and no draw)
    cfg = SpearCovClipConfig(ratio=0.02, cov_ub=40.0)
    a, b, c = (_filter(spear_cov_clip, mask, cfg, old, adv, generator=gen(s))[0] for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    assert torch.equal(_filter(spear_cov_clip, mask, cfg, old, adv)[0], a)  # None: the global RNG, seeded alike


def test_candidates_are_the_open_band_of_the_centred_product():
    # Cov = 4 x [1.16, .57, -1.73, -1.16, -.57, 1.73]: the default band (1, 5) holds tokens 0 (4.64) and 1 (2.29).
    old = torch.log(torch.tensor([[0.9, 0.5, 0.05, 0.9, 0.5, 0.05]]))
    adv = torch.tensor([[4.0, 4, 4, -4, -4, -4]])
    w, _, _ = _filter(spear_cov_clip, torch.ones(1, 6), SpearCovClipConfig(ratio=0.5), old, adv, generator=gen(0))
    assert (w == 0).nonzero()[:, 1].tolist() == [0, 1]  # budget 3, two candidates: both
    token5 = -4 * (math.log(0.05) - math.log(0.9 * 0.5 * 0.05) / 3)  # A_5 = -4, centred logp_5 = -1.73
    assert token5 == pytest.approx(6.92, abs=0.01) and token5 > 5.0  # above the default ub: not a candidate
    w, _, _ = _filter(spear_cov_clip, torch.ones(1, 6), SpearCovClipConfig(ratio=0.5, cov_ub=40.0), old, adv)
    assert (w == 0).nonzero()[:, 1].tolist() == [0, 1, 5]  # the README's ub 40 takes it too


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"50\.0"):
        SpearCovClipConfig(cov_lb=50.0)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\], got 2"):
        SpearCovClipConfig(ratio=2)
