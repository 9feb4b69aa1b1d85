from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from entrolab.logprob import chunked_logprob_entropy
from entrolab.rollout import generate, teacher_forced


def naive(hidden, weight, targets, temperature=1.0, bias=None):
    """The definition: full logits, log_softmax, gather, -(p log p).sum(-1)."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    z = (z.float() if z.dtype in (torch.bfloat16, torch.float16) else z) / temperature
    lp = torch.log_softmax(z, -1)
    return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(lp.exp() * lp).sum(-1)


def inputs(n=13, v=11, d=5, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (2 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    w = torch.randn(v, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    up = torch.randn(2, n, generator=g, dtype=torch.float64)  # random upstream grads for logp and entropy
    return h, w, b, y, up


def value_and_grads(fn, h, w, b, y, up, temperature):
    params = [h, w] + ([b] if b is not None else [])
    for p in params:
        p.grad = None
    lp, ent = fn(h, w, y, temperature, b)
    ((lp * up[0].to(lp.dtype)).sum() + (ent * up[1].to(ent.dtype)).sum()).backward()
    return [lp.detach(), ent.detach()] + [p.grad.clone() for p in params]


def chunked(chunk_size):
    return lambda h, w, y, t, b: chunked_logprob_entropy(h, w, y, temperature=t, bias=b, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 1024])  # 13 tokens: 4 and 5 leave a short last chunk
@pytest.mark.parametrize(("temperature", "bias"), [(1.0, False), (0.6, True), (1.7, False)])
def test_values_and_gradients_equal_the_naive_computation(dtype, chunk_size, temperature, bias):
    h, w, b, y, up = inputs(dtype=dtype, bias=bias)
    expected = value_and_grads(naive, h, w, b, y, up, temperature)
    got = value_and_grads(chunked(chunk_size), h, w, b, y, up, temperature)
    names = ["logp", "entropy", "grad hidden", "grad weight", "grad bias"]
    for name, e, g in zip(names, expected, got, strict=False):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        assert (g - e).abs().max() < 1e-5, (name, (g - e).abs().max())


def test_gradcheck_in_float64():
    h, w, b, y, _ = inputs(n=7, v=6, d=3, dtype=torch.float64, bias=True)

    def fn(h, w, b):
        return chunked_logprob_entropy(h, w, y, temperature=0.8, bias=b, chunk_size=3)

    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_one_output_alone_has_the_gradient_of_that_output():
    """d logp/dz = onehot - p and dH/dz = -p (log p + H), each on its own (the other output unused)."""
    h, w, _, y, _ = inputs(dtype=torch.float64)
    for k in (0, 1):
        for fn in (naive, chunked(4)):
            h.grad = w.grad = None
            fn(h, w, y, 1.3, None)[k].sum().backward()
            grads = (h.grad.clone(), w.grad.clone())
            if fn is naive:
                expected = grads
        assert all(torch.allclose(a, e, atol=1e-10) for a, e in zip(grads, expected, strict=True))


def test_leading_dimensions_are_kept():
    h, w, _, y, _ = inputs(n=12)
    lp, ent = chunked_logprob_entropy(h.view(3, 4, -1), w, y.view(3, 4), chunk_size=5)
    assert lp.shape == ent.shape == (3, 4)
    ref_lp, ref_ent = naive(h, w, y)
    assert torch.allclose(lp.flatten(), ref_lp, atol=1e-6) and torch.allclose(ent.flatten(), ref_ent, atol=1e-6)


def test_bf16_inputs_use_fp32_softmax_and_give_bf16_gradients():
    h, w, _, y, up = inputs(n=9, v=50, d=8, dtype=torch.bfloat16)
    expected = value_and_grads(naive, h, w, None, y, up, 0.9)
    got = value_and_grads(chunked(4), h, w, None, y, up, 0.9)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == torch.bfloat16
    assert (got[0] - expected[0]).abs().max() < 1e-5  # same bf16 logits, same fp32 maths
    assert (got[1] - expected[1]).abs().max() < 1e-5
    for e, g in zip(expected[2:], got[2:], strict=True):  # bf16 gradients: rounding of the bf16 matmuls
        assert torch.allclose(g.float(), e.float(), rtol=2e-2, atol=2e-2)


def test_tied_embedding_accumulates_both_uses():
    """Weight shared with the input embedding: its gradient is the embedding's plus the head's."""
    torch.manual_seed(0)
    v, d = 17, 6
    ids = torch.randint(0, v, (3, 8))
    targets = torch.randint(0, v, (3, 8))
    up = torch.randn(2, 3, 8)

    def run(fn, head_only=False):
        torch.manual_seed(1)  # the same parameters for both runs
        emb = torch.nn.Embedding(v, d).double()
        mix = torch.nn.Linear(d, d).double()
        hidden = torch.tanh(mix(emb(ids)))  # [3, 8, d]
        hidden = hidden.detach() if head_only else hidden
        lp, ent = fn(hidden, emb.weight, targets, 0.9, None)
        ((lp * up[0]).sum() + (ent * up[1]).sum()).backward()
        return emb.weight.grad, mix.weight.grad if not head_only else None

    expected, got = run(naive), run(chunked(5))
    assert torch.allclose(got[0], expected[0], atol=1e-10)
    assert torch.allclose(got[1], expected[1], atol=1e-10)
    # the input side's share is really in there: the head's share alone is different
    head_only = run(chunked(5), head_only=True)[0]
    assert (got[0] - head_only).abs().max() > 1e-2


class _LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_n_by_v_tensor_is_saved_or_created():
    """Memory is bounded by chunk_size * V: nothing of N * V elements is saved for backward or ever made."""
    n, v, d, chunk = 256, 1000, 8, 16
    h, w, _, y, up = inputs(n=n, v=v, d=d)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _LargestTensor() as mode:
        lp, ent = chunked_logprob_entropy(h, w, y, chunk_size=chunk)
        ((lp * up[0].float()).sum() + (ent * up[1].float()).sum()).backward()
    assert max(saved) <= max(n * d, v * d)  # the inputs and [N] vectors, no logits
    assert mode.largest <= chunk * v < n * v  # not even a temporary of N * V elements
    # the same probe on the naive computation does see [N, V] tensors
    with _LargestTensor() as probe:
        naive(h, w, y)
    assert probe.largest == n * v


def test_errors_name_the_bad_value():
    h, w, _, y, _ = inputs()
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprob_entropy(h, w, y, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprob_entropy(h, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="disagree"):
        chunked_logprob_entropy(h, w, y[:-1])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_forced_chunked_equals_full_logits_in_value_and_gradient(tiny, temperature):
    model, tok = tiny
    model.double()
    r = generate(
        model,
        tok,
        ["3+4=?\n", "12-7+1=?\n"],
        group_size=3,
        max_new_tokens=9,
        generator=torch.Generator().manual_seed(0),
    )
    up = torch.randn(2, *r.response_ids.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = {}
    for full in (False, True):
        model.zero_grad(set_to_none=True)
        lp, ent, z = teacher_forced(
            model,
            r.prompt_ids,
            r.prompt_mask,
            r.response_ids,
            r.response_mask,
            temperature,
            return_logits=full,
            chunk_size=4,
        )
        assert (z is not None) == full
        ((lp * up[0]).sum() + (ent * up[1]).sum()).backward()
        out[full] = (lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()])
    assert torch.allclose(out[False][0], out[True][0], atol=1e-10)
    assert torch.allclose(out[False][1], out[True][1], atol=1e-10)
    for a, b in zip(out[False][2], out[True][2], strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_lm_head_parts_finds_the_tied_head_and_refuses_modified_logits(tiny):
    from entrolab.rollout import lm_head_parts

    model, _ = tiny
    base, weight, bias = lm_head_parts(model)
    assert base is model.model and weight is model.model.embed_tokens.weight and bias is None
    model.config.final_logit_softcapping = 30.0  # e.g. Gemma 2: tanh soft-capping is not a linear head
    assert lm_head_parts(model) is None
    model.config.final_logit_softcapping = None  # absent or None: chunked
    model.config.logit_scale = 1.0  # a multiplier of 1 changes nothing
    assert lm_head_parts(model) is not None


def test_teacher_forced_falls_back_to_full_logits_for_modified_heads(tiny, monkeypatch):
    model, tok = tiny
    r = generate(model, tok, ["3+4=?\n"], group_size=2, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    args = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, 0.8)
    with torch.no_grad():
        chunked_lp, chunked_ent, _ = teacher_forced(model, *args)
        model.config.logits_scaling = 2.0  # this Llama ignores it, so the fallback must give the same numbers

        def not_called(*a, **k):
            raise AssertionError("the chunked op must not run for a head with a logit modifier")

        monkeypatch.setattr("entrolab.rollout.chunked_logprob_entropy", not_called)
        lp, ent, z = teacher_forced(model, *args)
    assert z is None
    assert torch.allclose(lp, chunked_lp, atol=1e-5) and torch.allclose(ent, chunked_ent, atol=1e-5)
