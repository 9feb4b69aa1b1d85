"""Numbers for the entropy discriminator's Clip_B / Clip_V (arXiv:2602.03392).

hand-computed worked examples as closed forms, the one-sided drop, the
Clip_V cap, the identities behind S = p (H + log p), and micro-batch == batch once ``stats`` come from the whole
minibatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import ops
from entrolab.methods.discriminator import DiscriminatorClipConfig, discriminator_clip, discriminator_stats
from tests.methods._helpers import call_filter, gen, ragged_batch


def _disc_inputs(s_values, adv_signs):
    """old_logp and entropy giving S = p (H + log p) = s_values exactly, with p = 1/2: H = 2 S + ln 2."""
    s = torch.tensor([s_values], dtype=torch.float64)
    return torch.full_like(s, -math.log(2.0)), 2 * s + math.log(2.0), torch.tensor([adv_signs], dtype=torch.float64)


def test_clip_b_note_example():
    # S = [.30, .10, -.05, -.40, .05, 0], A = [+, -, -, -, +, -], mu = 1: mean 0, std 0.2102 -> only token 3.
    logp, entropy, adv = _disc_inputs([0.30, 0.10, -0.05, -0.40, 0.05, 0.00], [1.0, -1, -1, -1, 1, -1])
    w, m, s = call_filter(
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
    _, m, _ = call_filter(
        discriminator_clip,
        torch.ones(1, 6),
        DiscriminatorClipConfig(mu=0.1),
        entropy=entropy,
        old_logp=logp,
        advantages=adv,
    )
    assert torch.all(m == 1)
    logp, entropy, adv = _disc_inputs([0.2] * 6, [-1.0] * 6)
    _, m, s = call_filter(
        discriminator_clip,
        torch.ones(1, 6),
        DiscriminatorClipConfig(mu=0.1),
        entropy=entropy,
        old_logp=logp,
        advantages=adv,
    )
    assert torch.all(m == 1) and s["disc/std"].item() < 1e-12


def test_clip_v_note_cap_example_10000_tokens_drop_exactly_the_largest():
    g = gen(14)
    mask = torch.ones(100, 100, dtype=torch.float64)
    old_logp = -torch.rand(100, 100, generator=g, dtype=torch.float64) * 3
    entropy = torch.rand(100, 100, generator=g, dtype=torch.float64) * 2
    d = torch.randn(100, 100, generator=g, dtype=torch.float64) * 0.01  # D, small everywhere ...
    big = torch.tensor([[3, 7], [10, 2], [55, 55], [70, 1], [99, 98]])
    d[big[:, 0], big[:, 1]] = torch.tensor([0.5, 0.9, 0.7, 0.6, 0.8], dtype=torch.float64)  # ... but 5 tokens
    adv = -torch.ones(100, 1, dtype=torch.float64)
    s = old_logp.exp() * (entropy + old_logp)
    cfg = DiscriminatorClipConfig(variant="V", mu=8.5, max_frac=1e-4)
    _, m, metrics = call_filter(
        discriminator_clip, mask, cfg, entropy=entropy, old_logp=old_logp, advantages=adv, vocab_baseline=d + s
    )
    assert int((m == 0).sum()) == 1 and m[10, 2] == 0  # 5 candidates, cap max(1, 1e-4 * 10000) = 1: largest D
    assert metrics["disc/std"].item() == pytest.approx(d.std(unbiased=False).item())
    _, m, _ = call_filter(
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
    _, kept, _ = call_filter(discriminator_clip, torch.ones(1, 8), DiscriminatorClipConfig(**cfg), **kw)
    _, code, _ = call_filter(
        discriminator_clip, torch.ones(1, 8), DiscriminatorClipConfig(**cfg, drop_zero_advantage=True), **kw
    )
    assert kept[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]  # one-sided: only A < 0
    assert code[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # the released Clip_V also drops the A = 0 token
    with pytest.raises(ValueError, match="vocab_baseline"):
        call_filter(
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
    mask, _, old, adv, entropy = ragged_batch(15)
    cfg = DiscriminatorClipConfig(mu=0.5)
    whole = call_filter(discriminator_clip, mask, cfg, entropy=entropy, old_logp=old, advantages=adv)
    stats = discriminator_stats(mask=mask, old_logp=old, advantages=adv, entropy=entropy, cfg=cfg)
    parts = [
        call_filter(
            discriminator_clip, mask[sl], cfg, entropy=entropy[sl], old_logp=old[sl], advantages=adv[sl], stats=stats
        )
        for sl in (slice(0, 4), slice(4, 6))
    ]
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1]) and int((whole[1] != mask).sum()) > 0
    pad = torch.full((6, 2), float("nan"), dtype=torch.float64)
    wide = call_filter(
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


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DiscriminatorClipConfig(variant="C"), r"'C'"),
        (lambda: DiscriminatorClipConfig(mu=-2.5), r"mu.*-2\.5"),
    ],
)
def test_config_validation_names_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()
