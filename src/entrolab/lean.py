"""A lean forward for Llama-family decoders over the Hugging Face model's own parameters.

Hugging Face's modules are general: each decode step goes through dozens of Python modules, mask builders and
a cache that grows by concatenation, and a teacher-forced pass runs every prompt once per sample and every
padding position. On a small model those costs, not the matrix multiplies, set the step time. This module
computes the same function with less work:

- **Prompts once per group.** The G samples of a prompt share it: the prompt is run once and its keys and
  values are broadcast to the G rows, in sampling (prefill) and in the teacher-forced pass (where the gradient
  of the shared keys/values sums over the group, exactly as if each row had run its own copy).
- **No padding in the dense layers.** Every projection and MLP runs on the packed real tokens only; only the
  attention sees a padded ``[B, heads, T, d]`` layout. The last token of each response predicts nothing and
  is not run at all.
- **Fewer, larger operations.** For models up to ``FUSE_MAX_PARAMS`` the q/k/v and gate/up projections are
  one matrix each, with the RMSNorm weights folded in, and RoPE rotates q and k in one operation.
- **A preallocated KV cache** written in place during sampling, and rows that finished compacted out.

It reads the weights from the model at every call (nothing is copied between calls), so gradients reach the
model's parameters and an optimizer step is seen by the next call. ``LeanDecoder.of(model)`` returns None for
anything it does not cover (then callers use the model's own forward): model types ``llama``, ``qwen2``
(attention bias) and ``mistral`` without an active sliding window, SiLU MLP without bias, RoPE types whose
tables do not depend on sequence length. The tests check its logits against the model's own forward to 1e-5.

Numerics follow transformers' implementation: RMSNorm in at least fp32, RoPE tables from the model's own
rotary module, softmax attention with scale ``head_dim ** -0.5``. One difference: transformers' RMSNorm
normalises fp64 inputs in fp32; this module keeps fp64 in fp64 (so fp64 runs agree with the model's forward
to about 1e-6, and to 1e-10 with an fp64-preserving norm, as the tests check).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("llama", "qwen2", "mistral")
UNSUPPORTED_ROPE = ("dynamic", "longrope")

# Config fields by which some architectures change the logits after the LM head (Gemma's tanh soft-capping,
# Cohere's logit_scale, Granite's and HyperCLOVA X's logits_scaling, Falcon-H1's lm_head_multiplier). A model
# that sets one of them gets full logits from its own forward, which is always right, just not chunked.
LOGIT_MODIFIERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: normalise in (at least) fp32, scale by the weight in the input dtype."""
    dt = x.dtype
    if not torch.is_grad_enabled() and dt in (torch.float32, torch.float64):
        return F.rms_norm(x, x.shape[-1:], weight, eps)  # fused kernel, same arithmetic (its backward is slower)
    h = x.to(torch.promote_types(dt, torch.float32))
    h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(dt)
    return h if weight is None else weight * h


def distinct_prompts(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (ids, mask) rows of left-padded prompts [B, Tp] (the G samples of a prompt share one).

    -> ids [U, Tp], mask [U, Tp], and inverse [B]: the distinct row each input row is.
    """
    tp = ids.shape[1]
    uniq, inverse = torch.unique(torch.cat([ids, mask.to(ids.dtype)], 1), dim=0, return_inverse=True)
    return uniq[:, :tp], uniq[:, tp:], inverse


def _linear(x: torch.Tensor, mod: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


DECODE_MM_MAX_ROWS = 16
"""``LeanDecoder.decode_logits`` computes W x^T for up to this many rows (see there) ..."""
DECODE_MM_MIN_HEAD = 2**20
"""... and LM heads of at least this many entries."""

FUSE_MAX_PARAMS = 50_000_000
"""Models up to this size get concatenated, norm-folded projection weights (see ``LeanDecoder.plan``)."""


@dataclass
class _Weights:
    """One layer's weights for one call (see ``LeanDecoder.plan``)."""

    qkv: list[torch.Tensor]  # [q | k | v] concatenated (one [3D', D]) or separate
    qkv_bias: torch.Tensor | None  # [(h + 2 kv) d]
    o: torch.nn.Linear
    gu: list[torch.Tensor]  # [gate | up] concatenated or separate
    down: torch.nn.Linear
    norm1: torch.Tensor | None  # None when folded into qkv
    norm2: torch.Tensor | None  # None when folded into gu


@dataclass
class _Layer:
    attn: torch.nn.Module
    mlp: torch.nn.Module
    norm1: torch.nn.Module
    norm2: torch.nn.Module


class LeanDecoder:
    """Functional forward of a supported causal LM, sharing its parameters (see the module docstring)."""

    def __init__(self, model) -> None:
        cfg = model.config
        base = model.model
        self.embed = base.embed_tokens
        self.layers = [
            _Layer(ly.self_attn, ly.mlp, ly.input_layernorm, ly.post_attention_layernorm) for ly in base.layers
        ]
        self.norm = base.norm
        self.head = model.lm_head
        self.rotary = base.rotary_emb
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.n_params = sum(p.numel() for p in model.parameters())
        self._tables: tuple[int, torch.dtype, torch.device, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def of(model) -> LeanDecoder | None:
        """The lean decoder for ``model``, or None when the model is outside what it covers (checked at every
        call: a config edited in place is seen)."""
        if not LeanDecoder.supports(model):
            return None
        lean = _CACHE.get(model)
        if lean is None or not lean._current(model):  # e.g. after resize_token_embeddings or a new head
            lean = _CACHE[model] = LeanDecoder(model)
        return lean

    def _current(self, model) -> bool:
        """Whether the modules this decoder holds are still the model's (none was replaced)."""
        base = model.model
        return (
            self.embed is base.embed_tokens
            and self.head is model.lm_head
            and self.norm is base.norm
            and self.rotary is base.rotary_emb
            and len(self.layers) == len(base.layers)
            and all(
                ly.attn is m.self_attn
                and ly.mlp is m.mlp
                and ly.norm1 is m.input_layernorm
                and ly.norm2 is m.post_attention_layernorm
                for ly, m in zip(self.layers, base.layers, strict=True)
            )
        )

    @staticmethod
    def supports(model) -> bool:
        """True for the architectures and settings this module reproduces exactly."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
            return False
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) in UNSUPPORTED_ROPE:
            return False
        if getattr(cfg, "use_sliding_window", False) or (
            cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None) is not None
        ):
            return False
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
            return False
        if getattr(cfg, "pretraining_tp", 1) != 1:
            return False
        for name in (*LOGIT_MODIFIERS, "attn_logit_softcapping"):
            if getattr(cfg, name, None) not in (None, 1, 1.0):
                return False
        base = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, n) for n in needed):
            return False
        return isinstance(getattr(model, "lm_head", None), torch.nn.Linear)

    # ----------------------------------------------------------------------------------------- shared parts

    def tables(self, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for positions 0..length-1 from the model's rotary module.  -> [L, d], [L, d]"""
        t = self._tables
        if t is None or t[0] < length or t[1] != like.dtype or t[2] != like.device:
            n = max(length, 64)
            pos = torch.arange(n, device=like.device)[None]
            with torch.no_grad():
                cos, sin = self.rotary(like, pos)
            t = self._tables = (n, like.dtype, like.device, cos[0], sin[0])
        return t[3][:length], t[4][:length]

    def plan(self) -> list[_Weights]:
        """Per layer, the weights of this call: q/k/v and gate/up concatenated and the RMSNorm weights folded
        into them (``(x_hat * w) @ W^T = x_hat @ (W * w)^T``) for models of at most ``FUSE_MAX_PARAMS``
        parameters, where per-op costs dominate; separate, unfolded weights above, where the copies would cost
        memory. Differentiable when grad is enabled (gradients reach the model's parameters)."""
        fuse = self.n_params <= FUSE_MAX_PARAMS
        out = []
        for ly in self.layers:
            a, m = ly.attn, ly.mlp
            bias = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            if fuse:
                n1, n2 = ly.norm1.weight, ly.norm2.weight
                qkv = [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) * n1]
                gu = [torch.cat([m.gate_proj.weight, m.up_proj.weight]) * n2]
                out.append(_Weights(qkv, bias, a.o_proj, gu, m.down_proj, None, None))
            else:
                qkv = [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
                gu = [m.gate_proj.weight, m.up_proj.weight]
                out.append(_Weights(qkv, bias, a.o_proj, gu, m.down_proj, ly.norm1.weight, ly.norm2.weight))
        return out

    def _qkv(self, x: torch.Tensor, w: _Weights, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Normed, projected and rotated q|k|v of packed tokens x [N, D].  -> [N, h + 2 kv, d]

        cos/sin are ``rope_rows`` tables [N, h + 2 kv, d] (identity on the v heads)."""
        h = _rms(x, w.norm1, self.eps)
        out = torch.cat([F.linear(h, wi) for wi in w.qkv], -1) if len(w.qkv) > 1 else F.linear(h, w.qkv[0])
        if w.qkv_bias is not None:
            out = out + w.qkv_bias
        out = out.view(x.shape[0], self.heads + 2 * self.kv_heads, self.head_dim)
        half = self.head_dim // 2
        return out * cos + torch.cat([out[..., half:], out[..., :half]], -1) * sin

    def rope_rows(self, pos: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for tokens at positions pos [N], laid out for ``_qkv``: cos [N, h + 2 kv, d] (1 on the v
        heads) and sin with the rotate-half sign folded in (0 on the v heads)."""
        cos, sin = self.tables(int(pos.max()) + 1, like)
        cos, sin = cos[pos], sin[pos]  # [N, d]
        half = self.head_dim // 2
        sin = torch.cat([-sin[:, :half], sin[:, half:]], -1)
        n, qk, kv = pos.shape[0], self.heads + self.kv_heads, self.kv_heads
        cos = torch.cat([cos[:, None].expand(n, qk, -1), cos.new_ones(n, kv, self.head_dim)], 1)
        sin = torch.cat([sin[:, None].expand(n, qk, -1), sin.new_zeros(n, kv, self.head_dim)], 1)
        return cos, sin

    def _mlp(self, x: torch.Tensor, w: _Weights) -> torch.Tensor:
        h = _rms(x, w.norm2, self.eps)
        if len(w.gu) == 1:
            gate, up = F.linear(h, w.gu[0]).chunk(2, -1)
        else:
            gate, up = F.linear(h, w.gu[0]), F.linear(h, w.gu[1])
        return _linear(F.silu(gate) * up, w.down)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax attention; q [b, h, tq, d], k/v [b, kv, tk, d], mask bool [b, 1, tq, tk] -> [b, h, tq, d]."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads
        )

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[b, h + 2 kv, T, d] -> q [b, h, T, d], k [b, kv, T, d], v [b, kv, T, d] (views)."""
        h, kv = self.heads, self.kv_heads
        return t[:, :h], t[:, h : h + kv], t[:, h + kv :]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head over final hidden states (after the final norm).  [..., D] -> [..., V]"""
        return _linear(hidden, self.head)

    def decode_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head for sampling (no grad): ``logits``, computed as (W x^T)^T for a few rows on CPU.

        A decode step's last rows (the longest completions, the tail of every rollout) are few against a
        large vocabulary. On CPU, x W^T (``F.linear``) then costs 33-65 ms a call at V = 151,936, D = 320 and
        n = 1..16 rows on 2 AVX2 cores, as if it re-packed all of W each time, while W x^T streams W once
        (11-43 ms; 1.1-5x faster); from 32 rows on ``F.linear`` is as fast or faster
        (``benchmarks/results/real_shape_parts.md``). One row is doubled: the 2-column product is ~2.5x faster
        than the matrix-vector kernel. The same values up to fp32 summation order. Heads under 2**20 entries,
        which stay in cache, and other devices keep ``F.linear``.  [n, D] -> [n, V]
        """
        w, b = self.head.weight, self.head.bias
        n = hidden.shape[0] if hidden.dim() == 2 else 0
        if (
            hidden.device.type != "cpu"
            or not 0 < n <= DECODE_MM_MAX_ROWS
            or torch.is_grad_enabled()
            or w.numel() < DECODE_MM_MIN_HEAD
        ):
            return self.logits(hidden)  # (a head under 2**20 entries stays in cache: nothing to gain)
        x = hidden.repeat(2, 1) if n == 1 else hidden
        z = torch.mm(w, x.t()).t()[:n].contiguous()  # [n, V]
        return z if b is None else z.add_(b)

    # ------------------------------------------------------------------------------------------------ prompts

    def prompt_pass(
        self,
        ids: torch.Tensor,  # [U, Tp] left-padded
        mask: torch.Tensor,  # [U, Tp]
        plan: list[_Weights],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run prompts: final-normed hidden state of each prompt's last token [U, D], and per layer k, v
        [U, kv, Tp, d] (positions already rotated; padding positions hold finite junk that masks hide)."""
        tp = ids.shape[1]
        valid = mask.bool()
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [U, Tp]
        x = self.embed(ids[valid])  # [Np, D] packed real prompt tokens
        cos, sin = self.rope_rows(pos[valid], x)
        causal = torch.ones(tp, tp, dtype=torch.bool, device=ids.device).tril()
        amask = (causal[None] & valid[:, None, :]) | torch.eye(tp, dtype=torch.bool, device=ids.device)[None]
        amask = amask[:, None]  # [U, 1, Tp, Tp]; pad queries see themselves only (finite, unused)
        kvs = []
        for w in plan:
            qp, kp, vp = self._split(self._scatter(self._qkv(x, w, cos, sin), valid))  # [U, heads, Tp, d]
            kvs.append((kp, vp))
            o = self._attend(qp, kp, vp, amask).transpose(1, 2)[valid].reshape(x.shape[0], -1)  # [Np, h*d]
            x = x + _linear(o, w.o)
            x = x + self._mlp(x, w)
        last = _rms(x, self.norm.weight, self.eps)[valid.long().cumsum(-1)[:, -1].cumsum(0) - 1]  # [U, D]
        return last, kvs

    @staticmethod
    def _scatter(t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Packed [N, h, d] into a zero-padded [b, h, T, d] at the True positions of valid [b, T]."""
        b, tlen = valid.shape
        out = t.new_zeros(b, tlen, *t.shape[1:])
        out[valid] = t
        return out.transpose(1, 2)

    # ------------------------------------------------------------------------------------ teacher forcing

    def response_hidden(
        self,
        prompt_ids: torch.Tensor,  # [B, Tp]
        prompt_mask: torch.Tensor,  # [B, Tp]
        response_ids: torch.Tensor,  # [B, T]
        response_mask: torch.Tensor,  # [B, T]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-normed hidden states that predict each real response token, packed, and where they go.

        -> hidden [N, D] (N = number of real response tokens), and the bool [B, T] mask of their positions
        (``response_mask > 0``). Differentiable w.r.t. the model's parameters.
        """
        b, t = response_ids.shape
        rmask = response_mask > 0  # [B, T]
        uids, umask, inverse = distinct_prompts(prompt_ids, prompt_mask)
        tp = prompt_ids.shape[1]
        plan = self.plan()
        last, kvs = self.prompt_pass(uids, umask, plan)
        # response inputs: token i is run when token i+1 is real (it predicts it); the last real one is not run
        run = torch.zeros_like(rmask)
        run[:, :-1] = rmask[:, 1:]  # [B, T]
        n_run = int(run.sum())
        plen = prompt_mask.sum(-1).long()  # [B]
        pvalid = umask.bool()[inverse]  # [B, Tp]
        if n_run == 0:
            h = last[inverse][:, None].expand(b, t, -1)
            return h[rmask], rmask
        x = self.embed(response_ids[run])  # [Nr, D]
        cos, sin = self.rope_rows((plen[:, None] + torch.arange(t, device=plen.device)[None])[run], x)
        tr = int(run.sum(-1).max())  # longest run per row; run rows are prefixes, so trim to it
        runp = run[:, :tr]
        causal = torch.ones(tr, tr, dtype=torch.bool, device=plen.device).tril()
        key_ok = torch.cat([pvalid[:, None, :].expand(b, tr, tp), causal[None].expand(b, tr, tr)], -1)
        key_ok = key_ok[:, None]  # [B, 1, tr, Tp + tr]
        for w, (kp, vp) in zip(plan, kvs, strict=True):
            qr, kr, vr = self._split(self._scatter(self._qkv(x, w, cos, sin), runp))  # [B, heads, tr, d]
            kk = torch.cat([kp[inverse], kr], 2)
            vv = torch.cat([vp[inverse], vr], 2)
            o = self._attend(qr, kk, vv, key_ok).transpose(1, 2)[runp].reshape(x.shape[0], -1)
            x = x + _linear(o, w.o)
            x = x + self._mlp(x, w)
        hr = _rms(x, self.norm.weight, self.eps)  # [Nr, D], row-major over run positions
        # predictors of real tokens: position 0 <- prompt's last state; position i+1 <- run output at i
        out = x.new_zeros(b, t, x.shape[-1])
        out[:, 0] = last[inverse]
        shifted = torch.zeros_like(run)
        shifted[:, 1:] = run[:, :-1]
        out = out.index_put((shifted.nonzero(as_tuple=True)), hr)
        return out[rmask], rmask

    # ------------------------------------------------------------------------------------------- sampling

    def start(
        self,
        prompt_ids: torch.Tensor,  # [P, Tp] left-padded, one row per distinct prompt
        prompt_mask: torch.Tensor,  # [P, Tp]
        rows: torch.Tensor,  # [n] which prompt each sampled row continues
        max_new_tokens: int,
    ) -> tuple[torch.Tensor, KVCache]:
        """Prefill each distinct prompt once and lay out a cache for the n rows that continue them.

        -> last-token logits [n, V] and the cache, sized for ``max_new_tokens`` more tokens.
        """
        with torch.no_grad():
            plan = self.plan()
            last, kvs = self.prompt_pass(prompt_ids, prompt_mask, plan)
            logits = self.decode_logits(last)[rows]
        return logits, KVCache(kvs, rows, prompt_mask.bool()[rows], max_new_tokens, plan)

    def step(self, tokens: torch.Tensor, cache: KVCache, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per cache row ([n] ids), append to the cache.  -> logits [n, V], or [len(rows), V] of
        the cache rows ``rows`` only (the LM head runs on those alone)."""
        n = tokens.shape[0]
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        g = h // kv
        x = self.embed(tokens)  # [n, D]
        cos, sin = self.rope_rows(cache.positions(), x)
        slot = cache.length
        bias = cache.bias[:, None, None, : slot + 1]  # [n, 1, 1, L] 0 or -inf
        for i, w in enumerate(cache.plan):
            qkv = self._qkv(x, w, cos, sin)  # [n, h + 2 kv, d]
            kc, vc = cache.k[i], cache.v[i]  # [n, kv, total, d]
            kc[:, :, slot] = qkv[:, h : h + kv]
            vc[:, :, slot] = qkv[:, h + kv :]
            keys = kc[:, :, : slot + 1].reshape(n * kv, slot + 1, d)  # a view: (n, kv) merge
            vals = vc[:, :, : slot + 1].reshape(n * kv, slot + 1, d)
            q = qkv[:, :h].reshape(n * kv, g, d)  # the g query heads that share a kv head, together
            scores = torch.bmm(q, keys.transpose(1, 2)).view(n, kv, g, slot + 1) * self.scale + bias
            o = torch.bmm(scores.softmax(-1).view(n * kv, g, slot + 1), vals)  # [n * kv, g, d]
            x = x + _linear(o.reshape(n, h * d), w.o)
            x = x + self._mlp(x, w)
        cache.length += 1
        return self.decode_logits(_rms(x if rows is None else x[rows], self.norm.weight, self.eps))


class KVCache:
    """Preallocated keys/values of the live rows: per layer [n, kv, Tp + max_new, d], written in place."""

    def __init__(
        self,
        prompt_kv: list[tuple[torch.Tensor, torch.Tensor]],  # per layer [P, kv, Tp, d]
        rows: torch.Tensor,  # [n] prompt index of each live row
        prompt_valid: torch.Tensor,  # [n, Tp] bool
        max_new_tokens: int,
        plan: list[_Weights],
    ) -> None:
        n, tp = prompt_valid.shape
        total = tp + max_new_tokens
        self.k, self.v = [], []
        for kp, vp in prompt_kv:
            kv, d = kp.shape[1], kp.shape[3]
            k = kp.new_empty(n, kv, total, d)
            v = vp.new_empty(n, kv, total, d)
            k[:, :, :tp] = kp[rows]
            v[:, :, :tp] = vp[rows]
            self.k.append(k)
            self.v.append(v)
        self.bias = torch.zeros(n, total, dtype=prompt_kv[0][0].dtype, device=rows.device)  # additive mask
        self.bias[:, :tp].masked_fill_(~prompt_valid, float("-inf"))
        self.plen = prompt_valid.sum(-1)  # [n]
        self.tp = tp
        self.length = tp  # filled slots
        self.plan = plan

    def positions(self) -> torch.Tensor:
        """Position id of the token about to be written, per live row.  [n]"""
        return self.plen + (self.length - self.tp)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only rows ``idx`` (finished rows leave the cache); copies only the filled slots."""
        filled = self.length

        def pick(buf: torch.Tensor) -> torch.Tensor:
            out = buf.new_empty(len(idx), *buf.shape[1:])
            out[:, :, :filled] = buf[:, :, :filled].index_select(0, idx)
            return out

        self.k = [pick(k) for k in self.k]
        self.v = [pick(v) for v in self.v]
        self.bias, self.plen = self.bias[idx], self.plen[idx]

    @property
    def rows(self) -> int:
        return self.plen.shape[0]
