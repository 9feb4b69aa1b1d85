"""Token log-probs and full-distribution entropies straight from hidden states, never holding [N, V] logits.

With z = (h W^T + b) / temperature and p = softmax(z), ``chunked_logprob_entropy`` returns, per token,

    logp = log p[target] = z[target] - logsumexp(z)        H = -sum_v p_v log p_v

computed over chunks of ``chunk_size`` tokens. A custom ``torch.autograd.Function`` saves only the inputs and
two numbers per token (logsumexp and H) and recomputes each chunk's logits in backward, so neither the forward
nor the backward ever holds more than a few ``[chunk_size, V]`` buffers. The gradients it applies, with
upstream gradients g (for logp) and e (for H), are

    d logp / dz = onehot(target) - p        dH / dz = -p * (log p + H)
    dL / d(hW^T + b) = (g * (onehot - p) - e * p * (log p + H)) / temperature

followed by the two matmuls of the linear layer (grad h = G W, grad W += G^T h, grad b += sum G). Gradients
w.r.t. hidden, weight and bias all flow, so a weight tied to the input embedding accumulates both uses.
Without an entropy gradient (e = 0) the backward builds G = g * (onehot - p) directly.

With ``sampled=(lse, entropy)`` from a sampling pass at the same weights, the forward computes only the
targets' logits (no [N, V] product: at the real shape of ``benchmarks/real_shape_parts.py`` the update's
forward drops from ~12 s to ~1 s of a ~30 s update) and the backward is the one above.

Precision: the matmuls run in the inputs' dtype, as the model's own ``lm_head`` does (bf16 GEMMs accumulate in
fp32 on GPU); logsumexp, softmax and entropy run in fp32 for bf16/fp16 inputs and in the inputs' dtype
otherwise (fp64 stays fp64, so ``gradcheck`` works); the weight gradient is accumulated in that same fp32/fp64
dtype across chunks (on CUDA each chunk's bf16 product comes out in fp32 too, so it is never rounded to bf16
before the end). On the Qwen vocabulary (V = 151,936) one fp32 chunk of 1,024 tokens is 0.58 GiB, and the
peak beyond the inputs and a weight-sized gradient is about two such buffers, whatever N: 1.17 GiB at
1,024-token chunks and 0.29 GiB at 256 on CPU, where full logits need 2.4 GiB at N = 1,024 and 111 GiB at
N = 32,768 (``benchmarks/logprob_memory.py``, ``benchmarks/results/logprob_memory*.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from entrolab.ops import upcast


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float):
    """Tempered logits of one chunk in the softmax dtype (fp32 or wider).  [C, D] -> [C, V]"""
    z = upcast(F.linear(h, weight, bias))
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedLogprobEntropy(torch.autograd.Function):
    """hidden [N, D], weight [V, D], bias [V] | None, targets [N] -> logp [N], entropy [N] (see the module)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, sampled_lse=None, sampled_entropy=None):
        acc = upcast(hidden.new_empty(())).dtype
        if sampled_lse is not None:  # the sampling pass's lse and entropy: only the targets' logits are needed
            z = (upcast(hidden) * upcast(weight[targets])).sum(-1)  # [N]
            if bias is not None:
                z = z + upcast(bias[targets])
            lse, entropy = sampled_lse.to(acc), sampled_entropy.to(acc)  # [N] each
            logp = z / temperature - lse
            ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
            ctx.temperature, ctx.chunk_size = temperature, chunk_size
            return logp, entropy.clone()
        logp = hidden.new_empty(hidden.shape[0], dtype=acc)  # [N]
        entropy = torch.empty_like(logp)  # [N]
        lse = torch.empty_like(logp)  # [N]
        for h, y, lp, ent, ls in zip(
            hidden.split(chunk_size),
            targets.split(chunk_size),
            logp.split(chunk_size),
            entropy.split(chunk_size),
            lse.split(chunk_size),
            strict=True,
        ):
            logq = _chunk_logits(h, weight, bias, temperature)  # [C, V]
            torch.logsumexp(logq, -1, out=ls)
            logq.sub_(ls.unsqueeze(-1))  # log p
            lp.copy_(logq.gather(-1, y.unsqueeze(-1)).squeeze(-1))
            torch.sum(logq.exp().mul_(logq), -1, out=ent)  # sum p log p
            ent.neg_()
            del logq
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = lse.dtype
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.to(acc)  # [N]
        # without an entropy gradient (the usual policy loss) dz is -g p + g onehot: three [C, V] passes fewer
        with_entropy = grad_entropy is not None and bool(grad_entropy.any())
        grad_entropy = torch.zeros_like(lse) if grad_entropy is None else grad_entropy.to(acc)  # [N]
        grad_h = hidden.new_empty(hidden.shape) if need_h else None  # [N, D], contiguous
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # [V, D]
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None  # [V]
        n_chunks = -(-hidden.shape[0] // ctx.chunk_size)
        for h, y, ls, ent, g, e, gh in zip(
            hidden.split(ctx.chunk_size),
            targets.split(ctx.chunk_size),
            lse.split(ctx.chunk_size),
            entropy.split(ctx.chunk_size),
            grad_logp.split(ctx.chunk_size),
            grad_entropy.split(ctx.chunk_size),
            grad_h.split(ctx.chunk_size) if need_h else [None] * n_chunks,
            strict=True,
        ):
            logq = _chunk_logits(h, weight, bias, ctx.temperature)  # [C, V]
            logq.sub_(ls.unsqueeze(-1))  # log p
            if with_entropy:
                p = logq.exp()  # [C, V]
                # dL/dz = -p * (g + e * (log p + H)) + g * onehot, built in place in the log p buffer
                dz = logq.add_(ent.unsqueeze(-1)).mul_(e.unsqueeze(-1)).add_(g.unsqueeze(-1)).mul_(p).neg_()
                del p
            else:  # the same numbers (e = 0 adds exactly 0), in place: p, then -g p
                dz = logq.exp_().mul_(g.neg().unsqueeze(-1))
            dz.scatter_add_(-1, y.unsqueeze(-1), g.unsqueeze(-1))
            if ctx.temperature != 1.0:
                dz.div_(ctx.temperature)  # dL/d(h W^T + b)
            if need_b:
                grad_b.add_(dz.sum(0))
            dz = dz.to(hidden.dtype)
            if need_h:
                torch.mm(dz, weight.to(hidden.dtype), out=gh)
            if need_w and acc == hidden.dtype:
                grad_w.addmm_(dz.t(), h)
            elif need_w and h.is_cuda:  # bf16/fp16 GEMM with an fp32 result, summed over chunks in fp32
                grad_w.add_(torch.mm(dz.t(), h, out_dtype=acc))
            elif need_w:  # (CPU has no mixed-dtype mm: the chunk's product is rounded to the input dtype first)
                grad_w.add_(torch.mm(dz.t(), h))
            del dz
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_logprob_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    sampled: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target and full entropy of softmax((hidden @ weight^T + bias) / temperature).

    ``sampled``: (lse, entropy) ``[...]`` each, the logsumexp of the tempered logits and the entropy of each
    position's distribution as the sampling pass computed them at these same weights (``generate(keep_lse=
    True)``, ``Rollout.entropy``). The forward then skips the LM head over the vocabulary, which is one of the
    op's four [N, V] products: logp = z[target] - lse, with z[target] = h . W[target] (+ b[target]) / T, and
    the entropies are those given. The backward is unchanged: it recomputes each chunk's logits from
    ``hidden`` and uses the given lse and entropy, so the gradient is the same function of the weights; the
    values differ from a full forward only by how the sampling pass (KV cache) and this forward round fp32.

    Args:
        hidden: ``[..., D]`` final hidden states (after the model's last norm), any float dtype.
        weight: ``[V, D]`` the LM head (tied or not).
        targets: ``[...]`` int64 token ids in [0, V).
        temperature: > 0; the distribution is softmax(logits / temperature).
        bias: optional ``[V]`` LM-head bias.
        chunk_size: tokens per chunk; memory grows as ``chunk_size * V``, never as ``N * V``.
    Returns:
        logp ``[...]`` and entropy ``[...]`` in fp32 (fp64 for fp64 inputs); differentiable w.r.t. hidden,
        weight and bias through both outputs.

    >>> h, w = torch.randn(5, 4), torch.randn(7, 4)
    >>> y = torch.tensor([0, 6, 3, 3, 1])
    >>> lp, ent = chunked_logprob_entropy(h, w, y, temperature=0.7, chunk_size=2)
    >>> ref = torch.log_softmax(h @ w.T / 0.7, -1)
    >>> bool(torch.allclose(lp, ref.gather(-1, y[:, None])[:, 0], atol=1e-6))
    True
    >>> bool(torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-6))
    True
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree on [..., D]")
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
    y = targets.reshape(-1).long()  # [N]
    if sampled is not None:
        if any(x.shape != lead for x in sampled):
            raise ValueError(
                f"sampled (lse, entropy) {[tuple(x.shape) for x in sampled]} must each match targets {tuple(lead)}"
            )
        lse, ent = (x.reshape(-1).detach() for x in sampled)
    else:
        lse = ent = None
    logp, entropy = _ChunkedLogprobEntropy.apply(h, weight, bias, y, float(temperature), int(chunk_size), lse, ent)
    return logp.view(lead), entropy.view(lead)


__all__ = ["chunked_logprob_entropy"]
