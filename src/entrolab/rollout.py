"""Batched sampling with a KV cache that also returns each generated token's log-prob and step entropy.

``generate`` samples G completions per prompt (temperature, top-p, max new tokens, stop at EOS, left-padded
prompts). The same forward pass that samples records, for every generated token,

- ``logp``: log pi(y_t | y_<t) under the *tempered, untruncated* distribution softmax(z / temperature), which
  is the distribution the trainer optimises (as in verl and TRL, top-p only shapes sampling);
- ``entropy``: the full-distribution entropy of that same tempered distribution,

so no second forward pass is needed to get them. ``teacher_forced`` recomputes both for given sequences
with one ordinary forward pass (the LM head applied chunk by chunk, so the [B, T, V] logits never exist);
the tests check that the two agree to 1e-5.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import get_args

import torch

from entrolab.kinds import Backend
from entrolab.lean import LOGIT_MODIFIERS, SUPPORTED_TYPES, LeanDecoder, distinct_prompts
from entrolab.logprob import chunked_logprob_entropy
from entrolab.ops import entropy_from_logits, logprobs_from_logits, upcast

BACKENDS: tuple[str, ...] = get_args(Backend)


@dataclass
class Rollout:
    """G samples per prompt, the B = P * G sequences in contiguous groups."""

    prompt_ids: torch.Tensor  # [B, Tp] left-padded
    prompt_mask: torch.Tensor  # [B, Tp] 1 on real prompt tokens
    response_ids: torch.Tensor  # [B, T] right-padded with the pad id
    response_mask: torch.Tensor  # [B, T] float, 1 on generated tokens (EOS included)
    logp: torch.Tensor  # [B, T] log-prob of each generated token (0 on padding)
    entropy: torch.Tensor  # [B, T] full-distribution entropy at each step (0 on padding)
    truncated: torch.Tensor  # [B] bool, True when no EOS came within max_new_tokens
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, T], see ``generate(extras=...)``

    @property
    def lengths(self) -> torch.Tensor:
        """Number of generated tokens per sequence, EOS included.  [B]"""
        return self.response_mask.sum(-1).long()

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> Rollout:
        """The rollout restricted to rows ``idx`` (a slice or an index tensor)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: {n: x[idx] for n, x in v.items()} if k == "extras" else v[idx] for k, v in out.items()}
        return Rollout(**out)

    @staticmethod
    def cat(parts: list[Rollout], pad_id: int) -> Rollout:
        """Concatenate rollouts along B, padding prompts on the left and responses on the right."""
        tp = max(r.prompt_ids.shape[1] for r in parts)
        t = max(r.response_ids.shape[1] for r in parts)

        def pad(x: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
            extra = width - x.shape[1]
            if extra == 0:
                return x
            fill = x.new_full((x.shape[0], extra), value)
            return torch.cat([fill, x] if left else [x, fill], 1)

        return Rollout(
            prompt_ids=torch.cat([pad(r.prompt_ids, tp, pad_id, True) for r in parts]),
            prompt_mask=torch.cat([pad(r.prompt_mask, tp, 0, True) for r in parts]),
            response_ids=torch.cat([pad(r.response_ids, t, pad_id, False) for r in parts]),
            response_mask=torch.cat([pad(r.response_mask, t, 0, False) for r in parts]),
            logp=torch.cat([pad(r.logp, t, 0, False) for r in parts]),
            entropy=torch.cat([pad(r.entropy, t, 0, False) for r in parts]),
            truncated=torch.cat([r.truncated for r in parts]),
            extras={k: torch.cat([pad(r.extras[k], t, 0, False) for r in parts]) for k in parts[0].extras},
        )


def cache_kwarg(model) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; use whichever ``forward`` takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise and left-pad prompts.  -> ids [P, Tp], mask [P, Tp]"""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def sample_categorical(
    probs: torch.Tensor, generator: torch.Generator | None = None, u: torch.Tensor | None = None
) -> torch.Tensor:
    """One draw per row from unnormalised probabilities [n, V] by inverse transform: one uniform per row and a
    binary search in the row's cumulative sum, so a zero-probability token is never drawn.  -> [n] int64

    Exact like ``torch.multinomial`` (which draws V exponentials per row, ~8x slower for V = 100). ``u``: the
    rows' uniforms [n, 1] in [0, 1), drawn by the caller (else from ``generator``).
    """
    cdf = probs.cumsum(-1)  # [n, V]
    if u is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    u = u.to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set with mass >= top_p (the top token is kept)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # mass before this token is still short of p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs * keep


class _HFEngine:
    """Sampling through the model's own forward and a transformers ``DynamicCache``."""

    def __init__(self, model) -> None:
        self.model = model
        self.kw = cache_kwarg(model)

    def start(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.am = prompt_mask.clone()
        pos = (self.am.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=prompt_ids,
            attention_mask=self.am,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self.kw: self.cache},
        )
        self.pos = pos[:, -1:]
        return out.logits[:, -1]

    def keep(self, idx: torch.Tensor) -> None:
        self.cache.batch_select_indices(idx)
        self.am, self.pos = self.am[idx], self.pos[idx]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.am = torch.cat([self.am, self.am.new_ones(len(tokens), 1)], 1)
        self.pos = self.pos + 1
        out = self.model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=self.am,
            position_ids=self.pos,
            use_cache=True,
            **{self.kw: self.cache},
        )
        return out.logits[:, -1]


class _LeanEngine:
    """Sampling through ``entrolab.lean``: each distinct prompt prefilled once, a preallocated KV cache.

    Finished rows leave the cache lazily: they ride along (their outputs unused) until the row-steps spent on
    them since the last compaction add up to half the cache's rows (about what one compaction costs, as it
    copies the cache), then the cache is compacted.
    """

    def __init__(self, lean: LeanDecoder) -> None:
        self.lean = lean

    def start(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        uids, umask, rows = distinct_prompts(prompt_ids, prompt_mask)
        logits, self.cache = self.lean.start(uids, umask, rows, max_new_tokens)
        self.live = torch.arange(len(rows), device=rows.device)  # cache row of each live row
        self.waste = 0  # dead row-steps since the last compaction
        return logits

    def keep(self, idx: torch.Tensor) -> None:
        self.live = self.live[idx]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        dead = self.cache.rows - len(self.live)
        self.waste += dead
        if dead and 2 * self.waste >= self.cache.rows:
            self.cache.keep(self.live)
            self.live = torch.arange(len(self.live), device=self.live.device)
            self.waste = 0
        if len(self.live) == self.cache.rows:
            return self.lean.step(tokens, self.cache)
        full = tokens.new_zeros(self.cache.rows).index_copy(0, self.live, tokens)  # finished rows: any token
        return self.lean.step(full, self.cache, rows=self.live)


def _engine(model, backend: Backend) -> _HFEngine | _LeanEngine:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    lean = None if backend == "hf" else LeanDecoder.of(model)
    if backend == "lean" and lean is None:
        raise ValueError(
            f"backend 'lean' does not cover model type {getattr(model.config, 'model_type', '?')!r} "
            f"(supported: {list(SUPPORTED_TYPES)}, see entrolab.lean); use backend 'auto' or 'hf'"
        )
    return _LeanEngine(lean) if lean is not None else _HFEngine(model)


SAMPLED_LSE = "sampled_lse"
"""``Rollout.extras`` key of the sampling pass's logsumexp [B, T] (``generate(keep_lse=True)``)."""

DRAW_ROWS = 8
"""Rows per block of a decode step's sampling arithmetic on CPU: 8 rows of fp32 logits over V = 151,936 are
4.9 MB, which stay in cache across the softmax, cumsum and entropy passes; 64 rows (39 MB) do not, and the
same passes then take ~3.8x as long as in blocks (``benchmarks/results/real_shape_parts.md``). Per-row results
do not depend on the blocking (the golden runs are bit-identical). A block holds at least ``DRAW_BLOCK_ENTRIES``
logits, so a small vocabulary is one block (blocks of 8 rows of a 100-entry vocabulary would only add calls)."""
DRAW_BLOCK_ENTRIES = 2**20


def _draw(
    logits: torch.Tensor,  # [n, V] (any strides)
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    extras: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One decode step's draws: next token, its log-prob and the step entropy under softmax(logits / T), and
    the logsumexp of z = logits / T, and ``extras`` of z, block by block of rows (``DRAW_ROWS`` on CPU). The
    uniforms of all rows are drawn first, in one call, so the blocking does not change the random stream.
    -> next [n] int64, logp [n], entropy [n], lse [n], {name: [n]}"""
    n = logits.shape[0]
    u = torch.rand(n, 1, generator=generator, device=logits.device, dtype=torch.float32)  # [n, 1]
    block = max(DRAW_ROWS, DRAW_BLOCK_ENTRIES // logits.shape[-1]) if logits.device.type == "cpu" else max(n, 1)
    parts = []
    for i in range(0, n, block):
        z = logits[i : i + block].float()
        z = z / temperature if temperature != 1.0 else z.contiguous()  # [b, V]
        logprobs = torch.log_softmax(z, -1)
        probs = logprobs.exp()
        nxt = sample_categorical(_top_p_filter(probs, top_p), u=u[i : i + block])
        extra = {k: fn(z).float() for k, fn in extras.items()}
        ent = -(probs * logprobs).sum(-1)
        logp = logprobs.gather(-1, nxt[:, None])[:, 0]
        lse = z.gather(-1, nxt[:, None])[:, 0] - logp  # log sum exp z, as log_softmax had it
        parts.append((nxt, logp, ent, lse, extra))
    if len(parts) == 1:
        return parts[0]
    cat = [torch.cat([p[j] for p in parts]) for j in range(4)]
    return cat[0], cat[1], cat[2], cat[3], {k: torch.cat([p[4][k] for p in parts]) for k in extras}


@torch.no_grad()
def _sample_chunk(
    engine: _HFEngine | _LeanEngine,
    prompt_ids: torch.Tensor,  # [b, Tp]
    prompt_mask: torch.Tensor,  # [b, Tp]
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None,
    extras: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    stop_ids: Sequence[int] = (),
    keep_lse: bool = False,
) -> Rollout:
    b = prompt_ids.shape[0]
    logits = engine.start(prompt_ids, prompt_mask, max_new_tokens)  # [n, V], n = rows still generating
    dev = prompt_ids.device
    rows = torch.arange(b, device=dev)  # [n] the original rows still generating (those in the cache)
    ids, logps, ents, lses = [], [], [], []
    more: dict[str, list[torch.Tensor]] = {k: [] for k in extras}
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    stops = torch.tensor(sorted({eos_id, *stop_ids}), device=dev)  # tokens that end a row (kept in it)
    for _ in range(max_new_tokens):
        nxt, logp, ent, lse, extra = _draw(logits, temperature, top_p, generator, extras)  # [n] each
        ids.append(torch.full((b,), pad_id, dtype=nxt.dtype, device=dev).index_copy(0, rows, nxt))
        logps.append(torch.zeros(b, device=dev).index_copy(0, rows, logp))
        ents.append(torch.zeros(b, device=dev).index_copy(0, rows, ent))
        if keep_lse:
            lses.append(torch.zeros(b, device=dev).index_copy(0, rows, lse))
        for k, v in extra.items():
            more[k].append(torch.zeros(b, device=dev).index_copy(0, rows, v))
        finished = torch.isin(nxt, stops)  # [n]
        done[rows[finished]] = True
        if bool(done.all()) or len(ids) == max_new_tokens:  # no forward for a token that will not be sampled
            break
        if bool(finished.any()):  # finished rows leave the batch (and the KV cache): no work on padding
            keep = torch.nonzero(~finished).squeeze(-1)
            engine.keep(keep)
            rows, nxt = rows[keep], nxt[keep]
        logits = engine.step(nxt)
    response_ids = torch.stack(ids, 1)  # [b, T]
    # a row generates up to and including its EOS (or stop token): everything after it is padding
    is_eos = torch.isin(response_ids, stops).long()
    live = (is_eos.cumsum(1) - is_eos) == 0  # [b, T] no EOS before this step
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=live.float(),
        logp=torch.stack(logps, 1),
        entropy=torch.stack(ents, 1),
        truncated=~done,
        extras={k: torch.stack(v, 1) for k, v in more.items()}
        | ({SAMPLED_LSE: torch.stack(lses, 1)} if keep_lse else {}),
    )


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    extras: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    backend: Backend = "auto",
    keep_lse: bool = False,
) -> Rollout:
    """Sample ``group_size`` completions for each prompt, ``batch_size`` sequences per forward pass.

    Args:
        prompts: P prompt strings; the result holds B = P * group_size sequences, groups contiguous.
        temperature: > 0; log-probs and entropies are those of softmax(logits / temperature).
        top_p: nucleus sampling mass in (0, 1]; 1 samples from the full distribution.
        generator: a ``torch.Generator`` on the model's device for reproducible sampling.
        extras: more per-step quantities to record from the same pass: name -> fn(tempered logits [b, V]) -> [b]
            (e.g. the vocabulary baseline of discriminator clipping); stored as ``rollout.extras[name]`` [B, T].
        backend: ``"lean"`` runs ``entrolab.lean`` (each distinct prompt prefilled once, a preallocated KV
            cache; Llama/Qwen2/Mistral only), ``"hf"`` the model's own forward with a ``DynamicCache``,
            ``"auto"`` lean where it applies. Both sample the same distribution.
        keep_lse: also record log sum_v exp z_v of each step's tempered logits z as ``extras["sampled_lse"]``
            [B, T] (0 on padding), which lets the update at these same weights skip its LM head's forward
            (``teacher_forced(sampled=...)``).
    Returns:
        A ``Rollout`` with prompt_ids/prompt_mask ``[B, Tp]`` and response_ids/response_mask/logp/entropy
        ``[B, T]`` (T = the longest completion), truncated ``[B]``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    device = next(model.parameters()).device
    ids, mask = encode_prompts(tokenizer, prompts)
    ids = ids.repeat_interleave(group_size, 0).to(device)  # [B, Tp]
    mask = mask.repeat_interleave(group_size, 0).to(device)  # [B, Tp]
    return generate_ids(
        model,
        ids,
        mask,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        batch_size=batch_size,
        extras=extras,
        backend=backend,
        keep_lse=keep_lse,
    )


def generate_ids(
    model,
    ids: torch.Tensor,  # [B, Tp] left-padded
    mask: torch.Tensor,  # [B, Tp]
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    extras: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    backend: Backend = "auto",
    stop_ids: Sequence[int] = (),
    keep_lse: bool = False,
) -> Rollout:
    """``generate`` from token ids: one completion per row of the left-padded ``ids`` [B, Tp]. A row also ends
    at any of ``stop_ids`` (kept as its last token, like EOS; the row is not ``truncated``): a multi-turn
    rollout ends a model turn there."""
    engine = _engine(model, backend)
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, ids.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            # Each chunk is left-trimmed to its own longest prompt so short prompts don't pay for long ones.
            width = int(mask[sl].sum(-1).max())
            parts.append(
                _sample_chunk(
                    engine,
                    ids[sl, -width:],
                    mask[sl, -width:],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    eos_id=eos_id,
                    pad_id=pad_id,
                    generator=generator,
                    extras=extras or {},
                    stop_ids=stop_ids,
                    keep_lse=keep_lse,
                )
            )
    finally:
        model.train(was_training)
    return parts[0] if len(parts) == 1 else Rollout.cat(parts, pad_id)


def lm_head_parts(model):
    """(base model, LM-head weight [V, D], bias [V] | None) when logits = head(base's last hidden state); else None.

    None for a model without a separate decoder and linear head, or whose config sets one of
    ``LOGIT_MODIFIERS`` to something other than 1 (absent or None is fine).
    """
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in LOGIT_MODIFIERS):
        return None
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or not isinstance(head, torch.nn.Linear):
        return None
    return base, head.weight, head.bias


def _forward_inputs(prompt_ids, prompt_mask, response_ids, response_mask) -> dict[str, torch.Tensor]:
    ids = torch.cat([prompt_ids, response_ids], 1)  # [B, Tp + T]
    am = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], 1)  # [B, Tp + T]
    return {"input_ids": ids, "attention_mask": am, "position_ids": (am.cumsum(-1) - 1).clamp(min=0)}


def response_logits(
    model,
    prompt_ids: torch.Tensor,  # [B, Tp]
    prompt_mask: torch.Tensor,  # [B, Tp]
    response_ids: torch.Tensor,  # [B, T]
    response_mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:
    """Teacher-forced logits that predict each response token.  -> [B, T, V]"""
    t = response_ids.shape[1]
    inputs = _forward_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    logits = model(**inputs, logits_to_keep=t + 1, use_cache=False).logits
    return logits[:, :-1]  # position Tp-1+i predicts response token i


def teacher_forced(
    model,
    prompt_ids: torch.Tensor,  # [B, Tp]
    prompt_mask: torch.Tensor,  # [B, Tp]
    response_ids: torch.Tensor,  # [B, T]
    response_mask: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
    return_logits: bool = False,
    chunk_size: int | None = None,
    backend: Backend = "auto",
    sampled: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-prob of each response token and full entropy of softmax(z / temperature), in one forward pass.

    Without ``return_logits`` the LM head is applied chunk by chunk to the base model's hidden states
    (``entrolab.logprob.chunked_logprob_entropy``), so the [B, T, V] logits never exist, in forward or backward;
    a model whose head is not a plain linear map (``lm_head_parts`` is None) falls back to full logits.
    ``chunk_size`` (tokens per chunk) defaults to the most that keep one fp32 chunk of logits within 256 MiB,
    at most 1024: 1024 for small vocabularies, 441 for Qwen's 151,936.
    ``backend`` as in ``generate``: with ``"lean"`` (the ``"auto"`` choice for Llama/Qwen2/Mistral) each
    distinct prompt runs once, padding and each response's last token not at all, and masked positions
    hold 0 (logp, entropy and logits); with ``"hf"`` they hold whatever the model predicts there. Callers mask them.
    ``sampled``: (lse, entropy) [B, T] of these very responses from the sampling pass at the current weights
    (``generate(keep_lse=True)``'s ``extras["sampled_lse"]`` and ``Rollout.entropy``): the lean engine's
    forward then skips the LM head over the vocabulary (``chunked_logprob_entropy(sampled=...)``); other
    engines, and ``return_logits``, ignore it.
    Differentiable.
    -> logp [B, T], entropy [B, T], tempered logits z [B, T, V] if ``return_logits`` else None
    """
    engine = _engine(model, backend)
    if isinstance(engine, _LeanEngine):  # packed: [N, D] hidden states of the N real response tokens
        hidden, where = engine.lean.response_hidden(prompt_ids, prompt_mask, response_ids, response_mask)
        targets, pos = response_ids[where], where.nonzero(as_tuple=True)

        def unpack(x: torch.Tensor) -> torch.Tensor:  # [N] -> [B, T], 0 on masked positions
            return x.new_zeros(where.shape).index_put(pos, x)

        if return_logits:
            z = upcast(engine.lean.logits(hidden)) / temperature  # [N, V]
            full = z.new_zeros(*where.shape, z.shape[-1]).index_put(pos, z)
            return unpack(logprobs_from_logits(z, targets)), unpack(entropy_from_logits(z)), full
        weight, bias = engine.lean.head.weight, engine.lean.head.bias
        packed = None if sampled is None else (sampled[0][where], sampled[1][where])  # [N] each
    else:
        packed = None  # (hidden holds padded positions, which the sampling pass has no lse for)
        parts = None if return_logits else lm_head_parts(model)
        if parts is None:
            z = upcast(response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)) / temperature
            return logprobs_from_logits(z, response_ids), entropy_from_logits(z), z if return_logits else None
        base, weight, bias = parts
        t = response_ids.shape[1]
        inputs = _forward_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
        hidden = base(**inputs, use_cache=False).last_hidden_state[:, -(t + 1) : -1]  # [B, T, D]
        targets = response_ids

        def unpack(x: torch.Tensor) -> torch.Tensor:
            return x

    chunk_size = chunk_size or max(1, min(1024, 2**26 // weight.shape[0]))
    logp, entropy = chunked_logprob_entropy(
        hidden, weight, targets, temperature=temperature, bias=bias, chunk_size=chunk_size, sampled=packed
    )
    return unpack(logp), unpack(entropy), None
