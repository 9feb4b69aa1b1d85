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
- **A preallocated KV cache** written in place during sampling, with fused q/k/v and gate/up projections
  (weights concatenated once per rollout, under ``no_grad``), and rows that finished compacted out.

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

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: normalise in (at least) fp32, scale by the weight in the input dtype."""
    dt = x.dtype
    if not torch.is_grad_enabled() and dt in (torch.float32, torch.float64):
        return F.rms_norm(x, x.shape[-1:], weight, eps)  # fused kernel, same arithmetic (its backward is slower)
    h = x.to(torch.promote_types(dt, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dt)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with the rotate-half convention; cos/sin broadcast against x  [..., d]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def _linear(x: torch.Tensor, mod: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, mod.weight, mod.bias)


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
                ly.attn is m.self_attn and ly.mlp is m.mlp and ly.norm1 is m.input_layernorm
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
        modifiers = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
        for name in (*modifiers, "attn_logit_softcapping"):
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

    def _qkv(self, x: torch.Tensor, ly: _Layer, fused: dict | None) -> tuple[torch.Tensor, ...]:
        """q [N, h, d], k [N, kv, d], v [N, kv, d] of packed tokens x [N, D]."""
        n = x.shape[0]
        a = ly.attn
        if fused is not None:
            w, b = fused["qkv"][id(ly)]
            q, k, v = F.linear(x, w, b).split([self.heads * self.head_dim, *[self.kv_heads * self.head_dim] * 2], -1)
        else:
            q, k, v = _linear(x, a.q_proj), _linear(x, a.k_proj), _linear(x, a.v_proj)
        return (
            q.view(n, self.heads, self.head_dim),
            k.view(n, self.kv_heads, self.head_dim),
            v.view(n, self.kv_heads, self.head_dim),
        )

    def _mlp(self, x: torch.Tensor, ly: _Layer, fused: dict | None) -> torch.Tensor:
        m = ly.mlp
        if fused is not None:
            gate, up = F.linear(x, fused["gu"][id(ly)]).chunk(2, -1)
        else:
            gate, up = _linear(x, m.gate_proj), _linear(x, m.up_proj)
        return _linear(F.silu(gate) * up, m.down_proj)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax attention; q [b, h, tq, d], k/v [b, kv, tk, d], mask bool [b, 1, tq, tk] -> [b, h, tq, d]."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads
        )

    def fused_weights(self) -> dict:
        """q/k/v and gate/up weights concatenated, for sampling (no gradient)."""
        with torch.no_grad():
            qkv, gu = {}, {}
            for ly in self.layers:
                a, m = ly.attn, ly.mlp
                w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                b = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                qkv[id(ly)] = (w, b)
                gu[id(ly)] = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        return {"qkv": qkv, "gu": gu}

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head over final hidden states (after the final norm).  [..., D] -> [..., V]"""
        return _linear(hidden, self.head)

    # ------------------------------------------------------------------------------------------------ prompts

    def prompt_pass(
        self,
        ids: torch.Tensor,  # [U, Tp] left-padded
        mask: torch.Tensor,  # [U, Tp]
        fused: dict | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run prompts: final-normed hidden state of each prompt's last token [U, D], and per layer k, v
        [U, kv, Tp, d] (positions already rotated; padding positions hold finite junk that masks hide)."""
        tp = ids.shape[1]
        valid = mask.bool()
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [U, Tp]
        x = self.embed(ids[valid])  # [Np, D] packed real prompt tokens
        cos, sin = self.tables(int(pos.max()) + 1, x)
        cos, sin = cos[pos[valid]][:, None], sin[pos[valid]][:, None]  # [Np, 1, d]
        causal = torch.ones(tp, tp, dtype=torch.bool, device=ids.device).tril()
        amask = (causal[None] & valid[:, None, :]) | torch.eye(tp, dtype=torch.bool, device=ids.device)[None]
        amask = amask[:, None]  # [U, 1, Tp, Tp]; pad queries see themselves only (finite, unused)
        kvs = []
        for ly in self.layers:
            h = _rms(x, ly.norm1.weight, self.eps)
            q, k, v = self._qkv(h, ly, fused)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            qp, kp, vp = (self._scatter(t, valid) for t in (q, k, v))  # [U, heads, Tp, d]
            kvs.append((kp, vp))
            o = self._attend(qp, kp, vp, amask).transpose(1, 2)[valid].reshape(x.shape[0], -1)  # [Np, h*d]
            x = x + _linear(o, ly.attn.o_proj)
            x = x + self._mlp(_rms(x, ly.norm2.weight, self.eps), ly, fused)
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
        uniq, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask.long()], 1), dim=0, return_inverse=True)
        tp = prompt_ids.shape[1]
        uids, umask = uniq[:, :tp], uniq[:, tp:]
        last, kvs = self.prompt_pass(uids, umask)
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
        pos = (plen[:, None] + torch.arange(t, device=plen.device)[None])[run]  # [Nr]
        cos, sin = self.tables(int(pos.max()) + 1, x)
        cos, sin = cos[pos][:, None], sin[pos][:, None]
        tr = int(run.sum(-1).max())  # longest run per row; run rows are prefixes, so trim to it
        runp = run[:, :tr]
        causal = torch.ones(tr, tr, dtype=torch.bool, device=plen.device).tril()
        key_ok = torch.cat([pvalid[:, None, :].expand(b, tr, tp), causal[None].expand(b, tr, tr)], -1)
        key_ok = key_ok[:, None]  # [B, 1, tr, Tp + tr]
        for ly, (kp, vp) in zip(self.layers, kvs, strict=True):
            h = _rms(x, ly.norm1.weight, self.eps)
            q, k, v = self._qkv(h, ly, None)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            qr, kr, vr = (self._scatter(z, runp) for z in (q, k, v))  # [B, h, tr, d]
            kk = torch.cat([kp[inverse], kr], 2)
            vv = torch.cat([vp[inverse], vr], 2)
            o = self._attend(qr, kk, vv, key_ok).transpose(1, 2)[runp].reshape(x.shape[0], -1)
            x = x + _linear(o, ly.attn.o_proj)
            x = x + self._mlp(_rms(x, ly.norm2.weight, self.eps), ly, None)
        hr = _rms(x, self.norm.weight, self.eps)  # [Nr, D], row-major over run positions
        # predictors of real tokens: position 0 <- prompt's last state; position i+1 <- run output at i
        out = x.new_zeros(b, t, x.shape[-1])
        out[:, 0] = last[inverse]
        shifted = torch.zeros_like(run)
        shifted[:, 1:] = run[:, :-1]
        out = out.index_put((shifted.nonzero(as_tuple=True)), hr) if n_run else out
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
        fused = self.fused_weights()
        last, kvs = self.prompt_pass(prompt_ids, prompt_mask, fused)
        cache = KVCache(kvs, rows, prompt_mask.bool()[rows], max_new_tokens, fused)
        return self.logits(last)[rows], cache

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed one token per cache row ([n] ids), append to the cache.  -> logits [n, V]"""
        n = tokens.shape[0]
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        g = h // kv
        x = self.embed(tokens)  # [n, D]
        pos = cache.positions()  # [n]
        cos, sin = self.tables(int(pos.max()) + 1, x)
        cos, sin = cos[pos][:, None], sin[pos][:, None]  # [n, 1, d]
        slot = cache.length
        bias = cache.bias[:, None, None, : slot + 1]  # [n, 1, 1, L] 0 or -inf
        for i, ly in enumerate(self.layers):
            w, b = cache.fused["qkv"][id(ly)]
            qkv = F.linear(_rms(x, ly.norm1.weight, self.eps), w, b).view(n, h + 2 * kv, d)
            qk = _rotate(qkv[:, : h + kv], cos, sin)  # [n, h + kv, d]
            kc, vc = cache.k[i], cache.v[i]  # [n, kv, total, d]
            kc[:, :, slot] = qk[:, h:]
            vc[:, :, slot] = qkv[:, h + kv :]
            keys = kc[:, :, : slot + 1].reshape(n * kv, slot + 1, d)  # a view: (n, kv) merge
            vals = vc[:, :, : slot + 1].reshape(n * kv, slot + 1, d)
            q = qk[:, :h].reshape(n * kv, g, d)  # the g query heads that share a kv head, together
            scores = torch.bmm(q, keys.transpose(1, 2)).view(n, kv, g, slot + 1) * self.scale + bias
            o = torch.bmm(scores.softmax(-1).view(n * kv, g, slot + 1), vals)  # [n * kv, g, d]
            x = x + _linear(o.reshape(n, h * d), ly.attn.o_proj)
            x = x + self._mlp(_rms(x, ly.norm2.weight, self.eps), ly, cache.fused)
        cache.length += 1
        return self.logits(_rms(x, self.norm.weight, self.eps))


class KVCache:
    """Preallocated keys/values of the live rows: per layer [n, kv, Tp + max_new, d], written in place."""

    def __init__(
        self,
        prompt_kv: list[tuple[torch.Tensor, torch.Tensor]],  # per layer [P, kv, Tp, d]
        rows: torch.Tensor,  # [n] prompt index of each live row
        prompt_valid: torch.Tensor,  # [n, Tp] bool
        max_new_tokens: int,
        fused: dict,
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
        self.fused = fused

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
