"""Numbers for the token-selection part of the entropy catalogue.

Forking tokens (arXiv:2506.01939), the entropy discriminator's Clip_B / Clip_V (arXiv:2602.03392) and AEPO's
stop-gradient clip (arXiv:2510.14545); Clip-Cov / KL-Cov and SPEAR have their own files in ``tests/methods/``.
Each worked example of the research note (``methods_entropy.md`` §0, §2f, §5f, §13f) is a closed-form test
here; then the parent method at the degenerate setting, gradient signs and exact zeros, padding invariance,
and micro-batch == batch once ``stats`` come from the whole minibatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import catalogue, ops
from entrolab.methods.aepo import AEPOConfig, AEPOEntropyAdvantageConfig, aepo, aepo_entropy_advantage
from entrolab.methods.aggregation import aggregate
from entrolab.methods.discriminator import DiscriminatorClipConfig, discriminator_clip, discriminator_stats
from entrolab.methods.forking import (
    ForkingTokensConfig,
    LowEntropyTokensConfig,
    forking_stats,
    forking_tokens,
    low_entropy_tokens,
)
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int, b: int = 6, t: int = 9, dtype=torch.float64):
    """Random ragged minibatch: mask, logp (requires grad), old_logp, advantages [b, 1], entropy."""
    g = _gen(seed)
    lengths = torch.tensor([9, 4, 0, 1, 7, 3][:b])
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 4
    logp = (old + 0.3 * torch.randn(b, t, generator=g, dtype=dtype)).requires_grad_()
    adv = torch.randn(b, 1, generator=g, dtype=dtype) * 3
    entropy = torch.rand(b, t, generator=g, dtype=dtype) * 2
    return mask, logp, old, adv, entropy


def _filter(fn, mask, cfg, entropy=None, old_logp=None, advantages=None, **kw):
    return fn(mask, cfg=cfg, entropy=entropy, old_logp=old_logp, advantages=advantages, truncated=None, **kw)


# ------------------------------------------------------------------------------------------------- forking


def _ragged_entropy(n_valid=1003, t=120):
    rows = math.ceil(n_valid / 100)
    lengths = torch.full((rows,), 100)
    lengths[-1] = n_valid - 100 * (rows - 1)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()
    entropy = torch.rand(rows, t, generator=_gen(11)) * 3
    entropy[mask == 0] = 1e6  # huge padded entropy must never be picked
    return mask, entropy


def test_forking_note_example_1003_tokens_keep_201():
    mask, entropy = _ragged_entropy()
    for selection in ("topk", "quantile"):
        w, m, s = _filter(forking_tokens, mask, ForkingTokensConfig(rho=0.2, selection=selection), entropy=entropy)
        assert int(m.sum()) == 201 and torch.all(m[mask == 0] == 0) and torch.all(w == 1)
        assert s["filter/frac_kept"].item() == pytest.approx(201 / 1003)


def test_forking_rho_one_is_exactly_no_filter():
    mask, entropy = _ragged_entropy(257)
    for fn, cfg_cls in ((forking_tokens, ForkingTokensConfig), (low_entropy_tokens, LowEntropyTokensConfig)):
        for selection in ("topk", "quantile"):
            for drop in ("mask_out", "zero_weight"):
                w, m, _ = _filter(fn, mask, cfg_cls(rho=1.0, selection=selection, drop=drop), entropy=entropy)
                assert torch.equal(m, mask) and torch.equal(w, torch.ones_like(w))


def test_forking_tiny_rho_keeps_one_token_and_topk_vs_quantile_counts():
    mask, entropy = _ragged_entropy(300)
    _, m, _ = _filter(forking_tokens, mask, ForkingTokensConfig(rho=1e-6), entropy=entropy)
    assert int(m.sum()) == 1 and entropy[m.bool()].item() == entropy[mask.bool()].max().item()
    # N = 9, rho = 0.7: the authors' int(6.3 + 0.9999) = 7 tokens; TRL's quantile(0.3) keeps 1 + floor(5.6) = 6.
    ent = torch.arange(9.0).unsqueeze(0)
    counts = [
        int(_filter(forking_tokens, torch.ones(1, 9), ForkingTokensConfig(rho=0.7, selection=s), entropy=ent)[1].sum())
        for s in ("topk", "quantile")
    ]
    assert counts == [7, 6]


def test_forking_mask_out_gradient_and_token_mean_over_selected():
    mask, logp, old, adv, entropy = _batch(12)
    w, m, _ = _filter(forking_tokens, mask, ForkingTokensConfig(rho=0.3), entropy=entropy)
    loss, _ = ppo_clip(logp, old, adv, m, cfg=PPOClipConfig())
    total = aggregate(loss * w, m, "token-mean")
    (grad,) = torch.autograd.grad(total, logp)
    assert torch.all(grad[m == 0] == 0) and int((grad[m == 1] != 0).sum()) > 0
    torch.testing.assert_close(total, loss[m.bool()].mean())  # the mean over the kept tokens only
    w0, m0, _ = _filter(forking_tokens, mask, ForkingTokensConfig(rho=0.3, drop="zero_weight"), entropy=entropy)
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
    mask, logp, old, adv, entropy = _batch(seed, t=40)
    _, m, _ = _filter(forking_tokens, mask, ForkingTokensConfig(rho=rho), entropy=entropy)
    assert torch.equal(m.long(), _authors_top_mask(entropy, mask, rho))
    # their loss: agg_loss(pg_losses, response_mask * entropy_top_mask, "token-mean")
    loss, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig())
    top = mask * _authors_top_mask(entropy, mask, rho)
    torch.testing.assert_close(aggregate(loss, m, "token-mean"), (loss * top).sum() / top.sum())


@pytest.mark.parametrize("n_valid", [5, 9, 16, 101, 1003])
@pytest.mark.parametrize("selection", ["topk", "quantile"])
def test_low_entropy_tokens_is_the_complement(n_valid, selection):
    mask, entropy = _ragged_entropy(n_valid)
    _, top, _ = _filter(forking_tokens, mask, ForkingTokensConfig(rho=0.2, selection=selection), entropy=entropy)
    _, low, _ = _filter(low_entropy_tokens, mask, LowEntropyTokensConfig(rho=0.8, selection=selection), entropy=entropy)
    assert torch.equal(top + low, mask)


def test_forking_padding_invariance_and_batch_stats():
    mask, _, _, _, entropy = _batch(13)
    cfg = ForkingTokensConfig(rho=0.25, scope="batch")
    narrow = _filter(forking_tokens, mask, cfg, entropy=entropy)
    wide_mask = torch.cat([mask, torch.zeros(6, 3, dtype=mask.dtype)], 1)
    wide = _filter(forking_tokens, wide_mask, cfg, entropy=torch.cat([entropy, torch.full((6, 3), 9e9)], 1))
    assert torch.equal(narrow[1], wide[1][:, :9]) and torch.all(wide[1][:, 9:] == 0)
    stats = forking_stats(mask=mask, old_logp=None, advantages=None, entropy=entropy, cfg=cfg)
    parts = [
        _filter(forking_tokens, mask[sl], cfg, entropy=entropy[sl], stats=stats)[1] for sl in (slice(0, 3), slice(3, 6))
    ]
    assert torch.equal(torch.cat(parts), narrow[1])
    alone = [_filter(forking_tokens, mask[sl], cfg, entropy=entropy[sl])[1] for sl in (slice(0, 3), slice(3, 6))]
    assert not torch.equal(torch.cat(alone), narrow[1])  # without the stats each part has its own threshold


# ------------------------------------------------------------------------------------------- discriminator


def _disc_inputs(s_values, adv_signs):
    """old_logp and entropy giving S = p (H + log p) = s_values exactly, with p = 1/2: H = 2 S + ln 2."""
    s = torch.tensor([s_values], dtype=torch.float64)
    return torch.full_like(s, -math.log(2.0)), 2 * s + math.log(2.0), torch.tensor([adv_signs], dtype=torch.float64)


def test_clip_b_note_example():
    # S = [.30, .10, -.05, -.40, .05, 0], A = [+, -, -, -, +, -], mu = 1: mean 0, std 0.2102 -> only token 3.
    logp, entropy, adv = _disc_inputs([0.30, 0.10, -0.05, -0.40, 0.05, 0.00], [1.0, -1, -1, -1, 1, -1])
    w, m, s = _filter(
        discriminator_clip,
        torch.ones(1, 6),
        DiscriminatorClipConfig(mu=1.0),
        entropy=entropy,
        old_logp=logp,
        advantages=adv,
    )
    assert m.tolist() == [[1.0, 1.0, 1.0, 0.0, 1.0, 1.0]] and torch.all(w == 1)
    assert s["disc/mean"].item() == pytest.approx(0.0, abs=1e-12)
    assert s["disc/std"].item() == pytest.approx(0.2102, abs=1e-4)
    assert s["filter/disc_frac_masked"].item() == pytest.approx(1 / 6)
    assert s["filter/disc_frac_masked_neg"].item() == pytest.approx(1 / 4)


def test_clip_b_never_drops_positive_advantage_and_zero_spread_keeps_all():
    logp, entropy, adv = _disc_inputs([0.3, -0.3, -0.3, 0.3, -0.3, 0.3], [1.0, 1, 1, 1, 1, 1])
    _, m, _ = _filter(
        discriminator_clip,
        torch.ones(1, 6),
        DiscriminatorClipConfig(mu=0.1),
        entropy=entropy,
        old_logp=logp,
        advantages=adv,
    )
    assert torch.all(m == 1)
    logp, entropy, adv = _disc_inputs([0.2] * 6, [-1.0] * 6)
    _, m, s = _filter(
        discriminator_clip,
        torch.ones(1, 6),
        DiscriminatorClipConfig(mu=0.1),
        entropy=entropy,
        old_logp=logp,
        advantages=adv,
    )
    assert torch.all(m == 1) and s["disc/std"].item() < 1e-12


def test_clip_v_note_cap_example_10000_tokens_drop_exactly_the_largest():
    g = _gen(14)
    mask = torch.ones(100, 100, dtype=torch.float64)
    old_logp = -torch.rand(100, 100, generator=g, dtype=torch.float64) * 3
    entropy = torch.rand(100, 100, generator=g, dtype=torch.float64) * 2
    d = torch.randn(100, 100, generator=g, dtype=torch.float64) * 0.01  # D, small everywhere ...
    big = torch.tensor([[3, 7], [10, 2], [55, 55], [70, 1], [99, 98]])
    d[big[:, 0], big[:, 1]] = torch.tensor([0.5, 0.9, 0.7, 0.6, 0.8], dtype=torch.float64)  # ... but 5 tokens
    adv = -torch.ones(100, 1, dtype=torch.float64)
    s = old_logp.exp() * (entropy + old_logp)
    cfg = DiscriminatorClipConfig(variant="V", mu=8.5, max_frac=1e-4)
    _, m, metrics = _filter(
        discriminator_clip, mask, cfg, entropy=entropy, old_logp=old_logp, advantages=adv, vocab_baseline=d + s
    )
    assert int((m == 0).sum()) == 1 and m[10, 2] == 0  # 5 candidates, cap max(1, 1e-4 * 10000) = 1: largest D
    assert metrics["disc/std"].item() == pytest.approx(d.std(unbiased=False).item())
    _, m, _ = _filter(
        discriminator_clip,
        mask,
        DiscriminatorClipConfig(variant="V", mu=8.5, max_frac=1e-3),
        entropy=entropy,
        old_logp=old_logp,
        advantages=adv,
        vocab_baseline=d + s,
    )
    assert int((m == 0).sum()) == 5  # under the cap (5 <= 10): every candidate goes


def test_clip_v_zero_advantage_tokens_and_missing_baseline():
    logp, entropy, _ = _disc_inputs([0.1] * 8, [0.0] * 8)
    s = logp.exp() * (entropy + logp)
    d = torch.tensor([[0.0, 0, 0, 0, 0, 0, 5.0, 5.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1, 1, 1, -1, -1, 0.0, -1.0]], dtype=torch.float64)
    cfg = dict(variant="V", mu=1.0, max_frac=1.0)
    kw = dict(entropy=entropy, old_logp=logp, advantages=adv, vocab_baseline=d + s)
    _, kept, _ = _filter(discriminator_clip, torch.ones(1, 8), DiscriminatorClipConfig(**cfg), **kw)
    _, code, _ = _filter(
        discriminator_clip, torch.ones(1, 8), DiscriminatorClipConfig(**cfg, drop_zero_advantage=True), **kw
    )
    assert kept[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]  # one-sided: only A < 0
    assert code[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # the released Clip_V also drops the A = 0 token
    with pytest.raises(ValueError, match="vocab_baseline"):
        _filter(
            discriminator_clip,
            torch.ones(1, 8),
            DiscriminatorClipConfig(variant="V"),
            entropy=entropy,
            old_logp=logp,
            advantages=adv,
        )


def test_discriminator_identities_of_section_0():
    z = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    p, h = z.softmax(-1), ops.entropy_from_logits(z)
    s = p * (h + p.log())
    torch.testing.assert_close(
        p, torch.tensor([0.6439, 0.2369, 0.0871, 0.0321], dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert h.item() == pytest.approx(0.9475, abs=1e-4)
    torch.testing.assert_close(
        s, torch.tensor([0.3267, -0.1167, -0.1301, -0.0799], dtype=torch.float64), atol=1e-4, rtol=0
    )
    n = ops.discriminator_baseline_from_logits(z)
    assert n.item() == pytest.approx(0.1688, abs=1e-4) and n.item() == pytest.approx((p * s).sum().item())
    eps = 1e-6
    for k in range(4):
        bump = torch.zeros(4, dtype=torch.float64)
        bump[k] = eps
        assert (ops.entropy_from_logits(z + bump) - h).item() / eps == pytest.approx(-s[k].item(), abs=1e-5)
        step = eps * (torch.eye(4, dtype=torch.float64)[k] - p)  # a GRPO-like update of sampled token k
        assert (ops.entropy_from_logits(z + step) - h).item() / eps == pytest.approx(-(s[k] - n).item(), abs=1e-5)


def test_discriminator_batch_stats_split_and_padding():
    mask, _, old, adv, entropy = _batch(15)
    cfg = DiscriminatorClipConfig(mu=0.5)
    whole = _filter(discriminator_clip, mask, cfg, entropy=entropy, old_logp=old, advantages=adv)
    stats = discriminator_stats(mask=mask, old_logp=old, advantages=adv, entropy=entropy, cfg=cfg)
    parts = [
        _filter(
            discriminator_clip, mask[sl], cfg, entropy=entropy[sl], old_logp=old[sl], advantages=adv[sl], stats=stats
        )
        for sl in (slice(0, 4), slice(4, 6))
    ]
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1]) and int((whole[1] != mask).sum()) > 0
    pad = torch.full((6, 2), float("nan"), dtype=torch.float64)
    wide = _filter(
        discriminator_clip,
        torch.cat([mask, torch.zeros_like(pad)], 1),
        cfg,
        entropy=torch.cat([entropy, pad], 1),
        old_logp=torch.cat([old, pad], 1),
        advantages=adv,
    )
    assert torch.equal(wide[1][:, :9], whole[1])
    for k in whole[2]:
        torch.testing.assert_close(wide[2][k], whole[2][k])


# ---------------------------------------------------------------------------------------------------- AEPO


def test_aepo_note_example_value_as_ppo_gradient_kept():
    # r = 1.5, eps_high = 0.2, A = 1: loss -1.2 as PPO, but d loss / d logp = -1.2 (PPO: 0).
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, m = aepo(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), cfg=AEPOConfig(eps_high=0.2))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert loss.item() == pytest.approx(-1.2) and grad.item() == pytest.approx(-1.2)
    assert m["clip/frac_high"].item() == 1.0


def test_aepo_values_equal_ppo_clip_and_gradients_differ_only_on_clipped():
    mask, _, old, _, _ = _batch(16)
    adv = torch.tensor([[2.0], [-1.0], [1.0], [-2.0], [1.5], [-0.5]], dtype=torch.float64)
    logp = (old + 0.6 * torch.randn(old.shape, generator=_gen(0), dtype=torch.float64)).requires_grad_()
    for sides in ("high", "both"):
        cfg = AEPOConfig(eps_low=0.2, eps_high=0.28, sides=sides)
        a, _ = aepo(logp, old, adv, mask, cfg=cfg)
        b, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.28))
        torch.testing.assert_close(a, b)
        ga, gb = (torch.autograd.grad(x.sum(), logp)[0] for x in (a, b))
        r = torch.exp(logp.detach() - old)
        high = mask.bool() & (adv > 0) & (r > 1.28)
        low = mask.bool() & (adv < 0) & (r < 0.8)
        rescued = high | low if sides == "both" else high
        assert int(high.sum()) > 0 and int(low.sum()) > 0
        torch.testing.assert_close(ga[~rescued], gb[~rescued])
        assert torch.all(gb[rescued] == 0)
        torch.testing.assert_close(ga[high], (-adv.expand_as(r) * 1.28)[high])  # -A (1 + eps_high)
        if sides == "both":
            torch.testing.assert_close(ga[low], (-adv.expand_as(r) * 0.8)[low])  # -A (1 - eps_low) > 0
        else:
            assert torch.all(ga[low] == 0)


def test_aepo_masked_garbage_and_entropy_weight():
    mask = torch.tensor([[1.0, 1, 0]])
    logp = torch.tensor([[-1.0, -2.0, float("nan")]], requires_grad=True)
    loss, _ = aepo(
        logp,
        torch.tensor([[-1.5, -1.0, float("inf")]]),
        torch.tensor([[1.0, -1.0, float("nan")]]),
        mask,
        cfg=AEPOConfig(sides="both"),
    )
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert loss[0, 2] == 0 and grad[0, 2] == 0 and torch.isfinite(grad).all()
    ent = torch.tensor([[0.0, 1.0, 2.0, 7.0]])
    w, m, s = _filter(
        aepo_entropy_advantage, torch.tensor([[1.0, 1, 1, 0]]), AEPOEntropyAdvantageConfig(alpha=1.0), entropy=ent
    )
    z = math.sqrt(1.5)  # (H - 1) / std, std = sqrt(2 / 3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 1 + z, 1.0]]))  # 1 - 1.22 clamps at 0; padding 1
    assert s["filter/entropy_weight_max"].item() == pytest.approx(1 + z)
    w, m, _ = _filter(aepo_entropy_advantage, torch.ones(1, 4), AEPOEntropyAdvantageConfig(alpha=0.0), entropy=ent)
    assert torch.equal(w, torch.ones(1, 4)) and torch.equal(m, torch.ones(1, 4))  # alpha = 0: no filter


# --------------------------------------------------------------------------------------------- registry/config


def test_registered_names_axes_and_reconstructed_flag():
    assert catalogue.get("policy_loss", "clip_cov").config is catalogue.get("token_filter", "clip_cov").config
    assert catalogue.get("token_filter", "aepo_entropy_advantage").reconstructed
    assert not catalogue.get("policy_loss", "aepo").reconstructed
    for axis, name in [("policy_loss", "clip_cov"), ("policy_loss", "kl_cov"), ("token_filter", "forking_tokens")]:
        assert catalogue.get(axis, name).stats is not None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ForkingTokensConfig(rho=0.0), r"rho.*0\.0"),
        (lambda: ForkingTokensConfig(selection="median"), r"'median'"),
        (lambda: LowEntropyTokensConfig(drop="ignore"), r"'ignore'"),
        (lambda: DiscriminatorClipConfig(variant="C"), r"'C'"),
        (lambda: DiscriminatorClipConfig(mu=-2.5), r"mu.*-2\.5"),
        (lambda: AEPOConfig(sides="low"), r"'low'"),
        (lambda: AEPOEntropyAdvantageConfig(alpha=-0.1), r"alpha.*-0\.1"),
    ],
)
def test_config_validation_names_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()
