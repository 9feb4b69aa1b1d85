"""PRIME's online update of the implicit process reward model from the policy's own rollouts.

PRIME (arXiv:2502.01456) keeps training the implicit PRM pi_phi on each step's rollouts with the verifier's
outcome labels, after it scored them (``update="after"``): one AdamW step on

    L = BCE( sigmoid(beta sum_t log pi_phi(y_t) / pi_ref(y_t)), 1[right] )

(``entrolab.methods.prime.implicit_prm_loss``), its gradient clipped at norm 10 as PRIME's scripts. A non-finite
loss or gradient norm skips the step. The trainer checkpoints the PRM and its optimizer with the policy, so a
resumed run continues the same PRM, and writes the final PRM to ``RUN_DIR/final_prm``.
"""

from __future__ import annotations

import math

import torch

from entrolab.batch import TokenBatch
from entrolab.methods.prime import implicit_prm_loss
from entrolab.rollout import teacher_forced

MAX_GRAD_NORM = 10.0


def prm_step(
    prm_model,
    optimizer: torch.optim.Optimizer,
    batch: TokenBatch,
    ref_logp: torch.Tensor,  # [B, T] the frozen reference's log-probs of the responses
    labels: torch.Tensor,  # [B] the verifier's outcome, 1 right / 0 not
    *,
    beta: float,
    temperature: float = 1.0,
    backend: str = "auto",
) -> dict[str, float]:
    """One PRM update on ``batch``; -> ``prime/prm_loss``, ``prime/prm_acc``, ``prime/prm_score_mean``,
    ``prime/prm_grad_norm`` and ``prime/prm_skipped`` (1 when the step was not taken)."""
    prm_model.train()
    logp, _, _ = teacher_forced(
        prm_model,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.attention_mask,
        temperature=temperature,
        backend=backend,
    )
    loss, metrics = implicit_prm_loss(logp, ref_logp, batch.loss_mask, labels.float(), beta)
    optimizer.zero_grad(set_to_none=True)
    out = {k: float(v) for k, v in metrics.items()}
    skipped = not math.isfinite(float(loss.detach()))
    norm = float("nan")
    if not skipped:
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(prm_model.parameters(), MAX_GRAD_NORM))
        skipped = not math.isfinite(norm)
        if not skipped:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    prm_model.eval()
    out.update({"prime/prm_grad_norm": norm, "prime/prm_skipped": float(skipped)})
    return out


__all__ = ["MAX_GRAD_NORM", "prm_step"]
