"""Parity of ``preference_loss`` dpo with TRL's ``DPOTrainer._compute_loss`` (skipped where trl is not installed).

TRL's loss is computed inside the trainer, so it is called on a minimal stand-in for ``self`` and a stand-in
model that returns given per-token log-probs (zero off the completion, as TRL's fused LM head returns them);
``precompute_ref_logps`` hands it the reference's sequence log-probs. The loss (and its gradient with respect to
the per-token log-probs) equals ours for ``loss_type="sigmoid"`` (dpo) and ``"ipo"`` (dpo with
``ipo_length_norm=True``), and TRL's ``rewards/*`` metrics equal ours. Run in the reference venv:

    .venv-ref/bin/python -m pytest tests/test_parity_dpo.py
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from entrolab.methods.preference import DPOConfig, dpo

TOL = dict(atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def trl_loss():
    pytest.importorskip("trl")
    from accelerate import Accelerator
    from trl import DPOTrainer

    accelerator = Accelerator(cpu=True)

    def run(per_token: torch.Tensor, completion_mask: torch.Tensor, ref: torch.Tensor, loss_type: str, beta: float):
        """TRL's loss and metrics for per-token log-probs [2n, L-1] (chosen rows, then rejected rows)."""
        trainer = SimpleNamespace(  # the attributes _compute_loss reads on this path
            model=SimpleNamespace(training=True),
            accelerator=accelerator,
            aux_loss_enabled=False,
            ld_alpha=None,
            precompute_ref_logps=True,
            f_divergence_type="reverse_kl",
            loss_types=[loss_type],
            loss_weights=[1.0],
            beta=beta,
            label_smoothing=0.0,
            use_weighting=False,
            _metrics={"train": defaultdict(list)},
            _total_train_tokens=0,
            _tp_size=1,
        )
        shape = per_token.shape

        def model(**kwargs):
            return SimpleNamespace(
                log_probs=per_token,
                entropy=torch.zeros(shape),
                mean_logits=torch.zeros(shape),
                is_top1=torch.zeros(shape, dtype=torch.bool),
            )

        n2, width = completion_mask.shape
        inputs = {
            "input_ids": torch.ones(n2, width, dtype=torch.long),
            "attention_mask": torch.ones(n2, width, dtype=torch.long),
            "completion_mask": completion_mask,
            "ref_chosen_logps": ref[: n2 // 2],
            "ref_rejected_logps": ref[n2 // 2 :],
        }
        loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
        return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}

    return run


def _pairs(seed: int, n: int = 6, width: int = 12):
    """Ragged completions: per-token log-probs [2n, L-1] with zeros off the completion, its mask [2n, L]."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 4, (2 * n, 1), generator=g)
    length = torch.randint(1, width - 4, (2 * n, 1), generator=g)
    pos = torch.arange(width)
    completion_mask = ((pos >= prompt) & (pos < prompt + length)).long()  # [2n, L]
    shift = completion_mask[:, 1:].float()  # [2n, L-1]
    per_token = (-torch.rand(2 * n, width - 1, generator=g) * 3 * shift).requires_grad_()
    ref = (per_token.detach().sum(1) + torch.randn(2 * n, generator=g)).detach()  # [2n]
    return per_token, completion_mask, shift, ref


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(trl_loss, seed, loss_type, beta):
    per_token, completion_mask, shift, ref = _pairs(seed)
    trl_value, trl_metrics = trl_loss(per_token, completion_mask, ref, loss_type, beta)
    (trl_grad,) = torch.autograd.grad(trl_value, per_token)

    seq, lengths = per_token.sum(1), shift.sum(1).long()  # [2n]
    chosen, rejected = seq.chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2)
    len_chosen, len_rejected = lengths.chunk(2)
    cfg = DPOConfig(beta=beta, loss_type=loss_type, ipo_length_norm=loss_type == "ipo")
    loss, metrics = dpo(
        chosen, rejected, ref_chosen, ref_rejected, cfg=cfg, chosen_lengths=len_chosen, rejected_lengths=len_rejected
    )
    ours = loss.mean()
    (our_grad,) = torch.autograd.grad(ours, per_token)
    torch.testing.assert_close(ours, trl_value, **TOL)
    torch.testing.assert_close(our_grad, trl_grad, **TOL)
    for ours_key, trl_key in [
        ("pref/margin_mean", "rewards/margins"),
        ("pref/accuracy", "rewards/accuracies"),
        ("pref/chosen_reward", "rewards/chosen"),
        ("pref/rejected_reward", "rewards/rejected"),
    ]:
        assert metrics[ours_key].item() == pytest.approx(trl_metrics[trl_key], abs=1e-6), ours_key


def test_sigmoid_is_bitwise_trl_at_zero_smoothing(trl_loss):
    """Same operations in the same order: not just close, equal."""
    per_token, completion_mask, _, ref = _pairs(7)
    trl_value, _ = trl_loss(per_token, completion_mask, ref, "sigmoid", 0.1)
    chosen, rejected = per_token.sum(1).chunk(2)
    loss, _ = dpo(chosen, rejected, *ref.chunk(2), cfg=DPOConfig(), chosen_lengths=None, rejected_lengths=None)
    assert torch.equal(loss.mean(), trl_value)
