"""The sft_loss axis: cross-entropy and Entropy-SFT, and ``entrolab pretrain --loss``."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import catalogue
from entrolab.methods.light_if import EntropySFTConfig, entropy_sft
from entrolab.methods.sft import cross_entropy
from entrolab.pretrain import PretrainConfig, sft_step_loss


def test_cross_entropy_is_the_token_mean_of_minus_logp_and_zero_on_masked_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.8, 0.2, 0.9]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, used, m = cross_entropy(logp, None, mask)
    assert torch.equal(used, mask.bool())
    expected = (math.log(2) + math.log(4) + -math.log(0.8)) / 3
    assert loss.sum().item() / 3 == pytest.approx(expected, abs=1e-6)
    assert m["sft/ce_mean"].item() == pytest.approx(expected, abs=1e-6)
    (loss.sum() / 3).backward()
    assert torch.all(logp.grad[mask == 0] == 0) and torch.all(logp.grad[mask == 1] < 0)  # raises the label's logp


def test_entropy_sft_defaults_are_the_authors_cold_start_run():
    cfg = catalogue.get("sft_loss", "entropy_sft").make_config()
    assert (cfg.token_ratio, cfg.entropy_coef) == (0.8, 0.8)


def test_entropy_sft_reduces_to_cross_entropy_at_ratio_one():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g) * 3
    entropy = torch.rand(3, 5, generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.3).float()
    a, used_a, _ = entropy_sft(logp, entropy, mask, cfg=EntropySFTConfig(token_ratio=1.0, entropy_coef=0.8))
    b, used_b, _ = cross_entropy(logp, entropy, mask)
    assert torch.equal(used_a, used_b) and torch.allclose(a, b)


def test_pretrain_loss_choice_changes_the_loss_and_bad_names_fail(tiny):
    model, _ = tiny
    ids = torch.tensor([[1, 10, 11, 12, 13, 2], [1, 20, 21, 22, 2, 0]])
    labels = torch.tensor([[-100, -100, 11, 12, 13, 2], [-100, -100, 21, 22, 2, -100]])
    from entrolab.pretrain import sft_loss

    ce, _ = sft_step_loss(model, ids, labels, 0, sft_loss(PretrainConfig()))
    hf = model(input_ids=ids, attention_mask=(ids != 0).long(), labels=labels).loss
    assert ce.item() == pytest.approx(hf.item(), rel=1e-5)  # the plain loss is HF's loss
    cfg = PretrainConfig(loss="entropy_sft", loss_options=("entropy_sft.token_ratio=0.5",))
    esft, metrics = sft_step_loss(model, ids, labels, 0, sft_loss(cfg))
    assert metrics["sft/frac_selected"].item() == pytest.approx(3 / 7, abs=1e-6)  # int(0.5 * 7) of 7 tokens
    assert esft.item() != pytest.approx(ce.item())
    with pytest.raises(ValueError, match="unknown sft_loss 'dpo'"):
        PretrainConfig(loss="dpo")
    with pytest.raises(ValueError, match="unknown option"):
        PretrainConfig(loss="entropy_sft", loss_options=("entropy_sft.rho=0.5",))
