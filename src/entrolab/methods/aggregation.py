"""Loss aggregation: how the per-token loss ``[B, T]`` becomes the scalar that is back-propagated.

Every mode is a sum over sequences divided by constants that describe the whole optimisation minibatch
(``num_tokens`` valid tokens, ``num_seqs`` sequences, ``norm_len``), passed in by the caller. So summing the
outputs over micro-batches equals the output on the whole minibatch, value and gradient. ``aggregate``
defaults the counts to those of the tensors it is given (the one-micro-batch case). Masked entries add an
exact 0 to the value and the gradient, even where the loss is inf/nan. With m the mask, L the loss and
n_i = sum_t m_it the valid tokens of sequence i:

    token-mean                sum_it m L / num_tokens                  (verl's default; DAPO)
    token-sum                 sum_it m L
    seq-mean-token-mean       sum_i (sum_t m L / n_i) / num_seqs       (original GRPO)
    seq-mean-token-sum        sum_it m L / num_seqs
    seq-mean-token-sum-norm   sum_it m L / (num_seqs * norm_len)      (Dr.GRPO; norm_len a constant)
    bnpo                      (sum_it m L / sum_it m) * b / num_seqs   (TRL; b, sum m: this micro-batch's)

``bnpo`` is the one exception to the adding-up: it normalises by the micro-batch's own token count, as TRL's
``loss_type="bnpo"`` does per device and accumulation step, so its value depends on the micro-batching.

Counts are whole numbers, clamped to >= 1, so an empty minibatch gives 0 (verl gives nan).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.registry import register, registered

AggMode = Literal[
    "token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "bnpo"
]
AGG_MODES: tuple[str, ...] = get_args(AggMode)
# the modes whose micro-batch values add up to the minibatch's (every mode but bnpo)
ADDITIVE_MODES: tuple[str, ...] = tuple(m for m in AGG_MODES if m != "bnpo")
Count = int | float | torch.Tensor


def _per(x: torch.Tensor, n: Count) -> torch.Tensor:
    """x / max(n, 1): a count of 0 (nothing valid, so x is 0) gives 0, not nan."""
    return x / torch.as_tensor(n, dtype=x.dtype, device=x.device).clamp(min=1)


@register("aggregation", "token-mean", paper="arXiv:2503.14476")
def token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, norm_len: Count | None
) -> torch.Tensor:
    """Masked loss summed over all tokens, divided by the minibatch's valid-token count.

    Paper: DAPO, arXiv:2503.14476, §3.3 (token-level policy gradient loss): 1 / sum_i |o_i| sum_i sum_t L.

    Args:
        loss: ``[B, T]`` per-token loss.  mask: ``[B, T]`` 1 on tokens that count.
        num_tokens: valid tokens in the whole minibatch.  num_seqs, norm_len: unused.

    Returns:
        A scalar tensor (no metrics on this axis).

    Differences from the paper / released code:
        As verl ``agg_loss`` with ``batch_num_tokens`` (TRL ``loss_type="dapo"`` likewise uses the global
        token count). verl's default denominator is the micro-batch's own count; here the caller passes it.

    Example:
        >>> loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
        >>> round(token_mean(loss, mask, num_tokens=3, num_seqs=2, norm_len=3).item(), 4)
        2.3333
    """
    return _per(ops.masked_sum(loss, mask), num_tokens)


@register("aggregation", "token-sum")
def token_sum(
    loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, norm_len: Count | None
) -> torch.Tensor:
    """Plain sum of the masked loss (its scale grows with the number of tokens).

    Paper: none, a verl mode: sum_i sum_t L.

    Args:
        loss: ``[B, T]`` per-token loss.  mask: ``[B, T]`` 1 on tokens that count.
        num_tokens, num_seqs, norm_len: unused.

    Returns:
        A scalar tensor (no metrics on this axis).

    Differences from the paper / released code:
        As verl ``agg_loss`` on one rank (verl multiplies by dp_size to undo DDP's gradient averaging; here
        the trainer owns that).

    Example:
        >>> loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
        >>> token_sum(loss, mask, num_tokens=3, num_seqs=2, norm_len=3).item()
        7.0
    """
    return ops.masked_sum(loss, mask)


@register("aggregation", "seq-mean-token-mean", paper="arXiv:2402.03300")
def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, norm_len: Count | None
) -> torch.Tensor:
    """Mean over sequences of each sequence's token-mean loss (GRPO's original normalisation).

    Paper: DeepSeekMath, arXiv:2402.03300, §4.1.1 (GRPO objective): 1/G sum_i 1/|o_i| sum_t L.

    Args:
        loss: ``[B, T]`` per-token loss.  mask: ``[B, T]`` 1 on tokens that count.
        num_seqs: sequences in the whole minibatch that have >= 1 valid token.  num_tokens, norm_len: unused.

    Returns:
        A scalar tensor (no metrics on this axis).

    Differences from the paper / released code:
        As verl ``agg_loss``, except that verl divides a sequence's sum by n_i + 1e-8 and here by max(n_i, 1)
        (exact; a fully masked sequence adds 0 either way). verl's default count skips fully masked
        sequences, its trainer passes the mini-batch size (all sequences); ``aggregate`` does the former.

    Example:
        >>> loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
        >>> seq_mean_token_mean(loss, mask, num_tokens=3, num_seqs=2, norm_len=3).item()
        2.75
    """
    n_i = mask.to(loss.dtype).sum(-1).clamp(min=1)  # [B]
    return _per((ops.masked_sum(loss, mask, dim=-1) / n_i).sum(), num_seqs)


@register("aggregation", "seq-mean-token-sum")
def seq_mean_token_sum(
    loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, norm_len: Count | None
) -> torch.Tensor:
    """Mean over sequences of each sequence's summed loss.

    Paper: none, a verl mode: 1/B sum_i sum_t L.

    Args:
        loss: ``[B, T]`` per-token loss.  mask: ``[B, T]`` 1 on tokens that count.
        num_seqs: sequences in the whole minibatch that have >= 1 valid token.  num_tokens, norm_len: unused.

    Returns:
        A scalar tensor (no metrics on this axis).

    Differences from the paper / released code:
        As verl ``agg_loss`` with ``global_batch_size``.

    Example:
        >>> loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
        >>> seq_mean_token_sum(loss, mask, num_tokens=3, num_seqs=2, norm_len=3).item()
        3.5
    """
    return _per(ops.masked_sum(loss, mask), num_seqs)


@register("aggregation", "seq-mean-token-sum-norm", paper="arXiv:2503.20783")
def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, norm_len: Count | None
) -> torch.Tensor:
    """Summed loss over sequences times a constant length (Dr.GRPO's length-unbiased normalisation).

    Paper: Dr.GRPO, arXiv:2503.20783, §3.2: GRPO's 1/|o_i| is replaced by one constant (the max generation
    length), so the objective is 1/(B * norm_len) sum_i sum_t L.

    Args:
        loss: ``[B, T]`` per-token loss.  mask: ``[B, T]`` 1 on tokens that count.
        num_seqs: sequences in the whole minibatch that have >= 1 valid token.
        norm_len: the constant, > 0, e.g. the max response length.  num_tokens: unused.

    Returns:
        A scalar tensor (no metrics on this axis).

    Differences from the paper / released code:
        As verl ``agg_loss`` with ``loss_scale_factor=norm_len`` (verl's default is the padded width T, which
        ``aggregate`` copies); TRL ``loss_type="dr_grpo"`` divides by batch size * max_completion_length.

    Example:
        >>> loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
        >>> round(seq_mean_token_sum_norm(loss, mask, num_tokens=3, num_seqs=2, norm_len=4).item(), 4)
        0.875
    """
    if norm_len is None or not float(norm_len) > 0:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_len > 0 (the max response length), got {norm_len}")
    return _per(ops.masked_sum(loss, mask), num_seqs) / float(norm_len)


@register("aggregation", "bnpo")
def bnpo(
    loss: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, norm_len: Count | None
) -> torch.Tensor:
    """Token-mean over the micro-batch's own valid tokens, weighted by its share of the sequences (TRL's bnpo).

    Paper: none, TRL ``loss_type="bnpo"`` ("batch-normalised policy optimisation"): per device and gradient
    accumulation step, sum_it m L / sum_it m, divided by the number of accumulation steps.

    Args:
        loss: ``[B, T]`` per-token loss.  mask: ``[B, T]`` 1 on tokens that count.
        num_seqs: sequences in the whole minibatch that have >= 1 valid token (this micro-batch's share of them
            replaces TRL's 1 / gradient_accumulation_steps).  num_tokens, norm_len: unused.

    Returns:
        A scalar tensor (no metrics on this axis).

    Differences from the paper / released code:
        TRL divides each micro-batch's mean by the number of accumulation steps; here by its share of the
        minibatch's sequences, the same for equal micro-batches. With one micro-batch this is ``token-mean``;
        with several it is not (a micro-batch's tokens count by their own count), which is the point of the
        mode and why it is not micro-batch invariant. TRL's normalisation is per device; here per process.

    Example:
        >>> loss, mask = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]])
        >>> round(bnpo(loss, mask, num_tokens=3, num_seqs=4, norm_len=3).item(), 4)
        1.1667
    """
    per_seq = mask.to(loss.dtype).sum(-1)  # [B]
    share = _per((per_seq > 0).sum().to(loss.dtype), num_seqs)
    return _per(ops.masked_sum(loss, mask), per_seq.sum()) * share


# name -> function, from the registrations above (each mode's name is written once, in its decorator)
_MODES = {e.name: e.fn for e in registered("aggregation").values() if e.fn.__module__ == __name__}
if set(_MODES) != set(AGG_MODES):  # the Literal type and the registered names must agree
    raise RuntimeError(f"AggMode {sorted(AGG_MODES)} != registered aggregations {sorted(_MODES)}")


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: AggMode,
    *,
    num_tokens: Count | None = None,
    num_seqs: Count | None = None,
    norm_len: Count | None = None,
) -> torch.Tensor:
    """Reduce ``loss [B, T]`` to a scalar with ``mode``; counts left None come from ``mask [B, T]``.

    Defaults (verl ``agg_loss`` on one rank): num_tokens = sum(mask); num_seqs = sequences with >= 1 valid
    token; norm_len = T, the padded width (pass the constant max response length, or the value depends on
    padding). Pass minibatch-wide counts when calling once per micro-batch, so the results add up.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; allowed: {list(AGG_MODES)}")
    per_seq = mask.to(loss.dtype).sum(-1)  # [B]
    return _MODES[mode](
        loss,
        mask,
        num_tokens=per_seq.sum() if num_tokens is None else num_tokens,
        num_seqs=(per_seq > 0).sum() if num_seqs is None else num_seqs,
        norm_len=mask.shape[-1] if norm_len is None else norm_len,
    )
