"""Tensor plumbing of the TRL adapter (no TRL import): what one generation batch keeps for the loss, the
behaviour policy's pass, a forward with logits, truncation from TRL's completion tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from entrolab.batch import TokenBatch
from entrolab.ops import discriminator_baseline_from_logits, entropy_from_logits, logprobs_from_logits

# Keys the adapter logs besides its methods' own (what a schedule may read).
ADAPTER_METRICS = (
    *("reward/mean", "reward/std", "reward/shaped_mean", "reward/errors", "entropy/token_mean"),
    *("len/mean", "len/truncated_frac"),
)


@dataclass
class Generation:
    """This process's rows of one generation batch, as the loss needs them."""

    batch: TokenBatch  # filters applied (loss_mask, token_weight), advantages, behaviour tensors  [b, T]
    stats: dict[str, dict[str, torch.Tensor] | None]  # minibatch statistics per trained method, these rows
    window_tokens: float  # loss tokens of the generation batch over all processes, after filters
    rollout_pass: bool  # old_logp / old_entropy come from a no-grad pass (else from the update's forward)


def truncated_rows(ids: torch.Tensor, mask: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """Completions whose last kept token is not an end-of-sequence token (TRL's own test), or with no token.  [B]"""
    lengths = mask.sum(-1).long()  # [B]
    last = ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # [B]
    eos = torch.tensor(list(eos_ids), device=ids.device, dtype=ids.dtype)
    return (lengths == 0) | ~torch.isin(last, eos)


def rows_of(stats: dict[str, torch.Tensor] | None, rows: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The rows ``rows`` of ``[B, T]`` statistics (scalars pass through)."""
    if stats is None:
        return None
    return {k: v[rows] if v.dim() == 2 else v for k, v in stats.items()}


def forward_with_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, entropies and tempered logits of the last ``keep`` tokens through the model's plain forward
    (TRL's fused LM head is not used without ``fused_lm_head=True``).  [B, T], [B, T], [B, T, V]"""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -keep - 1 : -1, :]
    logits = logits.float() / temperature  # [B, T, V]
    logp = logprobs_from_logits(logits, input_ids[:, -keep:])  # [B, T]
    return logp, entropy_from_logits(logits), logits


@torch.no_grad()
def behaviour_pass(
    trainer, out: dict[str, Any], vocab_baseline: bool, mm: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The behaviour policy's log-probs and entropies of a generation batch (one no-grad pass, chunked as TRL
    chunks its own), and ``vocab_baseline`` (sum_j p_j^2 (H + log p_j)) when asked.  [b, T] each"""
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    keep = out["completion_ids"].size(1)
    args = trainer.args
    chunk = args.per_device_train_batch_size if trainer.model.training else args.per_device_eval_batch_size
    if vocab_baseline:  # the model's mode is left as TRL has it, as for TRL's own old log-probs
        parts = []
        for s in range(0, ids.shape[0], chunk):
            logp, ent, logits = forward_with_logits(
                trainer.model, ids[s : s + chunk], mask[s : s + chunk], keep, trainer.temperature
            )
            parts.append((logp, ent, discriminator_baseline_from_logits(logits)))
        logp, entropy, base = (torch.cat(x) for x in zip(*parts, strict=True))
        return logp, entropy, {"vocab_baseline": base}
    logp, entropy, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, mask, keep, batch_size=chunk, compute_entropy=True, **mm
    )
    return logp.float(), entropy.float(), {}


__all__ = ["ADAPTER_METRICS", "Generation", "behaviour_pass", "forward_with_logits", "rows_of", "truncated_rows"]
