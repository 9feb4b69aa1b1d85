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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import torch

from entrolab.logprob import chunked_logprob_entropy
from entrolab.ops import entropy_from_logits, logprobs_from_logits, upcast


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


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set with mass >= top_p (the top token is kept)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # mass before this token is still short of p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs * keep


@torch.no_grad()
def _sample_chunk(
    model,
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
) -> Rollout:
    from transformers import DynamicCache

    b = prompt_ids.shape[0]
    kw = cache_kwarg(model)
    cache = DynamicCache(config=model.config)
    am = prompt_mask.clone()
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=prompt_ids,
        attention_mask=am,
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,
        **{kw: cache},
    )
    logits = out.logits[:, -1].float()  # [n, V], n = rows still generating
    pos = pos[:, -1:]
    dev = prompt_ids.device
    rows = torch.arange(b, device=dev)  # [n] the original rows still generating (those in the cache)
    ids, logps, ents = [], [], []
    more: dict[str, list[torch.Tensor]] = {k: [] for k in extras}
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    for _ in range(max_new_tokens):
        z = logits / temperature
        logprobs = torch.log_softmax(z, -1)  # [n, V]
        nxt = torch.multinomial(_top_p_filter(logprobs.exp(), top_p), 1, generator=generator).squeeze(-1)  # [n]
        ids.append(torch.full((b,), pad_id, dtype=nxt.dtype, device=dev).index_copy(0, rows, nxt))
        logps.append(torch.zeros(b, device=dev).index_copy(0, rows, logprobs.gather(-1, nxt[:, None])[:, 0]))
        ents.append(torch.zeros(b, device=dev).index_copy(0, rows, entropy_from_logits(z)))
        for k, fn in extras.items():
            more[k].append(torch.zeros(b, device=dev).index_copy(0, rows, fn(z).float()))
        finished = nxt == eos_id  # [n]
        done[rows[finished]] = True
        if bool(done.all()):
            break
        if bool(finished.any()):  # finished rows leave the batch (and the KV cache): no work on padding
            keep = torch.nonzero(~finished).squeeze(-1)
            cache.batch_select_indices(keep)
            rows, nxt, am, pos = rows[keep], nxt[keep], am[keep], pos[keep]
        am = torch.cat([am, am.new_ones(len(rows), 1)], 1)
        pos = pos + 1
        out = model(input_ids=nxt.unsqueeze(-1), attention_mask=am, position_ids=pos, use_cache=True, **{kw: cache})
        logits = out.logits[:, -1].float()
    response_ids = torch.stack(ids, 1)  # [b, T]
    # a row generates up to and including its EOS: everything after it is padding
    is_eos = (response_ids == eos_id).long()
    live = (is_eos.cumsum(1) - is_eos) == 0  # [b, T] no EOS before this step
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=live.float(),
        logp=torch.stack(logps, 1),
        entropy=torch.stack(ents, 1),
        truncated=~done,
        extras={k: torch.stack(v, 1) for k, v in more.items()},
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
) -> Rollout:
    """Sample ``group_size`` completions for each prompt, ``batch_size`` sequences per forward pass.

    Args:
        prompts: P prompt strings; the result holds B = P * group_size sequences, groups contiguous.
        temperature: > 0; log-probs and entropies are those of softmax(logits / temperature).
        top_p: nucleus sampling mass in (0, 1]; 1 samples from the full distribution.
        generator: a ``torch.Generator`` on the model's device for reproducible sampling.
        extras: more per-step quantities to record from the same pass: name -> fn(tempered logits [b, V]) -> [b]
            (e.g. the vocabulary baseline of discriminator clipping); stored as ``rollout.extras[name]`` [B, T].
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
                    model,
                    ids[sl, -width:],
                    mask[sl, -width:],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    eos_id=tokenizer.eos_token_id,
                    pad_id=tokenizer.pad_token_id,
                    generator=generator,
                    extras=extras or {},
                )
            )
    finally:
        model.train(was_training)
    return parts[0] if len(parts) == 1 else Rollout.cat(parts, tokenizer.pad_token_id)


# Config fields by which some architectures change the logits after the LM head (Gemma's tanh soft-capping,
# Cohere's logit_scale, Granite's and HyperCLOVA X's logits_scaling, Falcon-H1's lm_head_multiplier). A model
# that sets one of them gets full logits from its own forward, which is always right, just not chunked.
LOGIT_MODIFIERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-prob of each response token and full entropy of softmax(z / temperature), in one forward pass.

    Without ``return_logits`` the LM head is applied chunk by chunk to the base model's hidden states
    (``entrolab.logprob.chunked_logprob_entropy``), so the [B, T, V] logits never exist, in forward or backward;
    a model whose head is not a plain linear map (``lm_head_parts`` is None) falls back to full logits.
    ``chunk_size`` (tokens per chunk) defaults to the most that keep one fp32 chunk of logits within 256 MiB,
    at most 1024: 1024 for small vocabularies, 441 for Qwen's 151,936.
    Differentiable; masked positions hold whatever the model predicts there (callers mask them).
    -> logp [B, T], entropy [B, T], tempered logits z [B, T, V] if ``return_logits`` else None
    """
    parts = None if return_logits else lm_head_parts(model)
    if parts is None:
        z = upcast(response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)) / temperature
        return logprobs_from_logits(z, response_ids), entropy_from_logits(z), z if return_logits else None
    base, weight, bias = parts
    chunk_size = chunk_size or max(1, min(1024, 2**26 // weight.shape[0]))
    t = response_ids.shape[1]
    inputs = _forward_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    hidden = base(**inputs, use_cache=False).last_hidden_state[:, -(t + 1) : -1]  # [B, T, D]
    logp, entropy = chunked_logprob_entropy(
        hidden, weight, response_ids, temperature=temperature, bias=bias, chunk_size=chunk_size
    )
    return logp, entropy, None
