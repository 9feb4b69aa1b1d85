"""Numbers for forking tokens / low-entropy tokens (arXiv:2506.01939).

A hand-computed worked example as a closed form, rho = 1 is no filter, parity
with the authors' top-mask code, the complement identity, padding invariance, and micro-batch == batch once
``stats`` come from the whole minibatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.aggregation import aggregate
from entrolab.methods.forking import (
    ForkingTokensConfig,
    LowEntropyTokensConfig,
    forking_stats,
    forking_tokens,
    low_entropy_tokens,
)
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from tests.methods._helpers import call_filter, gen, ragged_batch


def _ragged_entropy(n_valid=1003, t=120):
    rows = math.ceil(n_valid / 100)
    lengths = torch.full((rows,), 100)
    lengths[-1] = n_valid - 100 * (rows - 1)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()
    entropy = torch.rand(rows, t, generator=gen(11)) * 3
    entropy[mask == 0] = 1e6  # huge padded entropy must never be picked
    return mask, entropy


def test_forking_note_example_1003_tokens_keep_201():
    mask, entropy = _ragged_entropy()
    for selection in ("topk", "quantile"):
        w, m, s = call_filter(forking_tokens, mask, ForkingTokensConfig(rho=0.2, selection=selection), entropy=entropy)
        assert int(m.sum()) == 201 and torch.all(m[mask == 0] == 0) and torch.all(w == 1)
        assert s["filter/frac_kept"].item() == pytest.approx(201 / 1003)


def test_forking_rho_one_is_exactly_no_filter():
    mask, entropy = _ragged_entropy(257)
    for fn, cfg_cls in ((forking_tokens, ForkingTokensConfig), (low_entropy_tokens, LowEntropyTokensConfig)):
        for selection in ("topk", "quantile"):
            for drop in ("mask_out", "zero_weight"):
                w, m, _ = call_filter(fn, mask, cfg_cls(rho=1.0, selection=selection, drop=drop), entropy=entropy)
                assert torch.equal(m, mask) and torch.equal(w, torch.ones_like(w))


def test_forking_tiny_rho_keeps_one_token_and_topk_vs_quantile_counts():
    mask, entropy = _ragged_entropy(300)
    _, m, _ = call_filter(forking_tokens, mask, ForkingTokensConfig(rho=1e-6), entropy=entropy)
    assert int(m.sum()) == 1 and entropy[m.bool()].item() == entropy[mask.bool()].max().item()
    # N = 9, rho = 0.7: the authors' int(6.3 + 0.9999) = 7 tokens; TRL's quantile(0.3) keeps 1 + floor(5.6) = 6.
    ent = torch.arange(9.0).unsqueeze(0)
    counts = []
    for s in ("topk", "quantile"):
        cfg = ForkingTokensConfig(rho=0.7, selection=s)
        counts.append(int(call_filter(forking_tokens, torch.ones(1, 9), cfg, entropy=ent)[1].sum()))
    assert counts == [7, 6]


def test_forking_mask_out_gradient_and_token_mean_over_selected():
    mask, logp, old, adv, entropy = ragged_batch(12)
    w, m, _ = call_filter(forking_tokens, mask, ForkingTokensConfig(rho=0.3), entropy=entropy)
    loss, _ = ppo_clip(logp, old, adv, m, cfg=PPOClipConfig())
    total = aggregate(loss * w, m, "token-mean")
    (grad,) = torch.autograd.grad(total, logp)
    assert torch.all(grad[m == 0] == 0) and int((grad[m == 1] != 0).sum()) > 0
    torch.testing.assert_close(total, loss[m.bool()].mean())  # the mean over the kept tokens only
    w0, m0, _ = call_filter(forking_tokens, mask, ForkingTokensConfig(rho=0.3, drop="zero_weight"), entropy=entropy)
    assert torch.equal(m0, mask) and torch.equal(w0 == 0, (mask - m).bool())  # weight 0 exactly where dropped
    full, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig())
    torch.testing.assert_close(aggregate(full * w0, m0, "token-mean"), (full * w0)[mask.bool()].sum() / mask.sum())


def _authors_top_mask(entropy, response_mask, top_ratio):
    """get_global_entropy_top_mask of Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR @ 6f5dda6 (core_algos.py), transcribed."""
    flat_entropy, flat_mask = entropy.flatten(), response_mask.flatten().bool()
    response_entropy = flat_entropy[flat_mask]
    if response_entropy.numel() == 0:
        return torch.zeros_like(entropy, dtype=torch.long)
    top_k = max(1, int(len(response_entropy) * top_ratio + 0.9999))
    _, topk_idx = torch.topk(response_entropy, k=top_k)
    flat_out = torch.zeros_like(flat_entropy, dtype=torch.long)
    flat_out[flat_mask.nonzero(as_tuple=False).squeeze(1)[topk_idx]] = 1
    return flat_out.view_as(entropy)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rho", [0.2, 0.5, 0.7, 1e-4, 1.0])
def test_forking_default_matches_the_authors_code(seed, rho):
    mask, logp, old, adv, entropy = ragged_batch(seed, t=40)
    _, m, _ = call_filter(forking_tokens, mask, ForkingTokensConfig(rho=rho), entropy=entropy)
    assert torch.equal(m.long(), _authors_top_mask(entropy, mask, rho))
    # their loss: agg_loss(pg_losses, response_mask * entropy_top_mask, "token-mean")
    loss, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig())
    top = mask * _authors_top_mask(entropy, mask, rho)
    torch.testing.assert_close(aggregate(loss, m, "token-mean"), (loss * top).sum() / top.sum())


@pytest.mark.parametrize("n_valid", [5, 9, 16, 101, 1003])
@pytest.mark.parametrize("selection", ["topk", "quantile"])
def test_low_entropy_tokens_is_the_complement(n_valid, selection):
    mask, entropy = _ragged_entropy(n_valid)
    _, top, _ = call_filter(forking_tokens, mask, ForkingTokensConfig(rho=0.2, selection=selection), entropy=entropy)
    _, low, _ = call_filter(
        low_entropy_tokens, mask, LowEntropyTokensConfig(rho=0.8, selection=selection), entropy=entropy
    )
    assert torch.equal(top + low, mask)


def test_forking_padding_invariance_and_batch_stats():
    mask, _, _, _, entropy = ragged_batch(13)
    cfg = ForkingTokensConfig(rho=0.25, scope="batch")
    narrow = call_filter(forking_tokens, mask, cfg, entropy=entropy)
    wide_mask = torch.cat([mask, torch.zeros(6, 3, dtype=mask.dtype)], 1)
    wide = call_filter(forking_tokens, wide_mask, cfg, entropy=torch.cat([entropy, torch.full((6, 3), 9e9)], 1))
    assert torch.equal(narrow[1], wide[1][:, :9]) and torch.all(wide[1][:, 9:] == 0)
    stats = forking_stats(mask=mask, old_logp=None, advantages=None, entropy=entropy, cfg=cfg)
    parts = [
        call_filter(forking_tokens, mask[sl], cfg, entropy=entropy[sl], stats=stats)[1]
        for sl in (slice(0, 3), slice(3, 6))
    ]
    assert torch.equal(torch.cat(parts), narrow[1])
    alone = [call_filter(forking_tokens, mask[sl], cfg, entropy=entropy[sl])[1] for sl in (slice(0, 3), slice(3, 6))]
    assert not torch.equal(torch.cat(alone), narrow[1])  # without the stats each part has its own threshold


# --------------------------------------------------------------------------------------------- registry/config


def test_registered_forking_tokens_has_batch_stats():
    assert catalogue.get("token_filter", "forking_tokens").stats is not None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ForkingTokensConfig(rho=0.0), r"rho.*0\.0"),
        (lambda: ForkingTokensConfig(selection="median"), r"'median'"),
        (lambda: LowEntropyTokensConfig(drop="ignore"), r"'ignore'"),
    ],
)
def test_config_validation_names_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()
