"""Numbers for AEPO (arXiv:2510.14545): the stop-gradient clip keeps PPO-clip's values and rescues the clipped
tokens' gradients; the entropy-weighted advantage filter."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.aepo import AEPOConfig, AEPOEntropyAdvantageConfig, aepo, aepo_entropy_advantage
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from tests.methods._helpers import call_filter, gen, ragged_batch


def test_aepo_note_example_value_as_ppo_gradient_kept():
    # r = 1.5, eps_high = 0.2, A = 1: loss -1.2 as PPO, but d loss / d logp = -1.2 (PPO: 0).
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, m = aepo(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), cfg=AEPOConfig(eps_high=0.2))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert loss.item() == pytest.approx(-1.2) and grad.item() == pytest.approx(-1.2)
    assert m["clip/frac_high"].item() == 1.0


def test_aepo_values_equal_ppo_clip_and_gradients_differ_only_on_clipped():
    mask, _, old, _, _ = ragged_batch(16)
    adv = torch.tensor([[2.0], [-1.0], [1.0], [-2.0], [1.5], [-0.5]], dtype=torch.float64)
    logp = (old + 0.6 * torch.randn(old.shape, generator=gen(0), dtype=torch.float64)).requires_grad_()
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
    w, m, s = call_filter(
        aepo_entropy_advantage, torch.tensor([[1.0, 1, 1, 0]]), AEPOEntropyAdvantageConfig(alpha=1.0), entropy=ent
    )
    z = math.sqrt(1.5)  # (H - 1) / std, std = sqrt(2 / 3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 1 + z, 1.0]]))  # 1 - 1.22 clamps at 0; padding 1
    assert s["filter/entropy_weight_max"].item() == pytest.approx(1 + z)
    w, m, _ = call_filter(aepo_entropy_advantage, torch.ones(1, 4), AEPOEntropyAdvantageConfig(alpha=0.0), entropy=ent)
    assert torch.equal(w, torch.ones(1, 4)) and torch.equal(m, torch.ones(1, 4))  # alpha = 0: no filter


# --------------------------------------------------------------------------------------------- registry/config


def test_registered_aepo_reconstructed_flag():
    assert catalogue.get("token_filter", "aepo_entropy_advantage").reconstructed
    assert not catalogue.get("policy_loss", "aepo").reconstructed


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: AEPOConfig(sides="low"), r"'low'"),
        (lambda: AEPOEntropyAdvantageConfig(alpha=-0.1), r"alpha.*-0\.1"),
    ],
)
def test_config_validation_names_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()
