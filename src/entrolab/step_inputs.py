"""What a reward shaper, sampler or advantage declares in ``needs=`` beyond the rollout, computed once per round.

- ``answer_ids [B]``: each response's extracted final answer (``task.extract_answer``) as an id; equal ids are
  equal answers within the step, -1 is no answer (a format error). No model pass.
- ``answer_logp [B, A]`` and ``answer_mask [B, A]``: one extra teacher-forced pass of the behaviour policy over
  prompt + the response's reasoning (its tokens before the last answer marker, all of them when there is
  none, EOS dropped) + ``"answer: <reference>"`` + EOS; the log-probs of the reference answer's tokens and the
  EOS (so that a prefix of the answer does not score as the answer). Batched, no gradient.
- ``answer_phase [B, T]``: 1 from the start of the response's last ``phase_marker`` on (PEAR's phases).
- ``step_ids [B, T]``: each response token's reasoning step (0, 1, ...; a step ends at a newline token, which
  belongs to it); -1 on padding. No model pass.
- ``ref_logp [B, T]`` / ``prm_logp [B, T]``: the response tokens' log-probs under the frozen reference (the base
  model) / the implicit process reward model (``--prm-model``), one teacher-forced pass each, before the
  advantage (process-reward advantages read them).
- ``hidden_states [B, T, d]``: one extra forward pass, the last layer's hidden states at the response tokens
  (the state after reading each token), 0 on padding. No gradient.

The trainer and the TRL adapter call :func:`round_inputs`; :func:`cat_rows` / :func:`select_rows` follow the
rows through the samplers' rounds and cuts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from entrolab.rollout import Rollout, teacher_forced
from entrolab.update import Methods


def answer_phase(response_ids: torch.Tensor, mask: torch.Tensor, marker_ids: list[int]) -> torch.Tensor:
    """1 on each response's tokens from the start of its last occurrence of ``marker_ids`` on (all 0 when the
    marker is absent), within ``mask``.  [B, T]"""
    out = torch.zeros_like(mask, dtype=torch.float32)
    n = len(marker_ids)
    if n == 0:
        return out
    for i, (ids, length) in enumerate(zip(response_ids.tolist(), mask.sum(-1).long().tolist(), strict=True)):
        for start in range(length - n, -1, -1):
            if ids[start : start + n] == marker_ids:
                out[i, start:length] = 1.0
                break
    return out


# the needs computed here
MODEL_NEEDS = (
    "rm_heads",
    "reward_parts",
    "answer_ids",
    "answer_logp",
    "answer_mask",
    "answer_phase",
    "hidden_states",
    "step_ids",
    "ref_logp",
    "prm_logp",
)


def step_ids(response_ids: torch.Tensor, mask: torch.Tensor, newline_ids: Sequence[int]) -> torch.Tensor:
    """The reasoning step of each response token: 0 until the first newline token (included), then 1, ...;
    -1 where ``mask`` is 0.  [B, T] long"""
    is_nl = torch.zeros_like(response_ids, dtype=torch.bool)
    for t in newline_ids:
        is_nl |= response_ids == t
    before = torch.cumsum(is_nl.long(), dim=-1) - is_nl.long()  # newlines strictly before each token
    return torch.where(mask > 0, before, torch.full_like(before, -1))


def pre_update_needs(methods: Methods) -> set[str]:
    """The needs of the methods that run before the update: reward shapers, samplers and the advantage."""
    out = set(methods.shaper_needs) | set(methods.advantage[0].needs)
    for entry, _ in methods.samplers:
        out |= set(entry.needs)
    return out


def answer_ids(answers: Sequence[str | None], table: dict[str, int]) -> torch.Tensor:
    """Ids of the extracted ``answers`` (None -> -1), numbered in ``table`` (shared across a step's rounds).  [B]"""
    out = []
    for a in answers:
        if a is None:
            out.append(-1)
        else:
            out.append(table.setdefault(a, len(table)))
    return torch.tensor(out, dtype=torch.long)


def _reasoning(ids: list[int], marker: list[int], eos_id: int | None) -> list[int]:
    """The response's tokens before its last answer marker (all of them, EOS dropped, when there is none)."""
    n = len(marker)
    for start in range(len(ids) - n, -1, -1):
        if n and ids[start : start + n] == marker:
            return ids[:start]
    return ids[:-1] if ids and eos_id is not None and ids[-1] == eos_id else ids


def answer_logp(
    model,
    tokenizer,
    rollout: Rollout,
    references: Sequence[str],
    *,
    marker: str,
    temperature: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs of ``marker + " " + reference`` + EOS after each response's reasoning.

    -> (``answer_logp [B, A]``, ``answer_mask [B, A]``): the reference's tokens and the EOS (the marker's own
    tokens are context, not scored).
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    lead = tokenizer(f"{marker} ", add_special_tokens=False)["input_ids"]
    rows, scored = [], []
    lengths = rollout.response_mask.sum(-1).long().tolist()
    for ids, length, ref in zip(rollout.response_ids.tolist(), lengths, references, strict=True):
        full = tokenizer(f"{marker} {ref}", add_special_tokens=False)["input_ids"]
        head = lead if full[: len(lead)] == lead else marker_ids
        tail = full[len(head) :] + ([eos] if eos is not None else [])
        context = _reasoning(ids[:length], marker_ids, eos) + head
        rows.append(context + tail)
        scored.append((len(context), len(tail)))
    width = max(len(r) for r in rows)
    resp = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1.0
    with torch.no_grad():
        logp, _, _ = teacher_forced(
            model, rollout.prompt_ids, rollout.prompt_mask, resp, mask, temperature=temperature, backend=backend
        )
    a = max(n for _, n in scored)
    out, out_mask = torch.zeros(len(rows), a), torch.zeros(len(rows), a)
    for i, (start, n) in enumerate(scored):
        out[i, :n] = logp[i, start : start + n].float()
        out_mask[i, :n] = 1.0
    return out, out_mask


def response_hidden(model, rollout: Rollout) -> torch.Tensor:
    """The last layer's hidden states at each response token (after reading it), 0 on padding.  [B, T, d]"""
    ids = torch.cat([rollout.prompt_ids, rollout.response_ids], 1)  # [B, Tp + T]
    am = torch.cat([rollout.prompt_mask, rollout.response_mask.to(rollout.prompt_mask.dtype)], 1)
    t = rollout.response_ids.shape[1]
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=am,
            position_ids=(am.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
            use_cache=False,
        )
    hidden = out.hidden_states[-1][:, -t:].float()  # [B, T, d]
    return hidden * rollout.response_mask.unsqueeze(-1)


def round_inputs(
    needs: set[str],
    *,
    model,
    tokenizer,
    rollout: Rollout,
    texts: Sequence[str],
    references: Sequence[str],
    extract: Callable[[str, int], str | None],
    table: dict[str, int],
    marker: str,
    phase_marker: str | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
    ref_model=None,
    prm_model=None,
    micro_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """The declared model-side needs of one rollout round (see the module docstring); {} when none.
    ``marker`` precedes the reference answer; ``phase_marker`` (default: ``marker``) starts the answer phase."""
    out: dict[str, torch.Tensor] = {}
    if "answer_phase" in needs:
        ids = tokenizer(phase_marker or marker, add_special_tokens=False)["input_ids"]
        out["answer_phase"] = answer_phase(rollout.response_ids, rollout.response_mask, ids)
    if "answer_ids" in needs:
        out["answer_ids"] = answer_ids([extract(t, i) for i, t in enumerate(texts)], table)
    if {"answer_logp", "answer_mask"} & needs:
        out["answer_logp"], out["answer_mask"] = answer_logp(
            model, tokenizer, rollout, references, marker=marker, temperature=temperature, backend=backend
        )
    if "hidden_states" in needs:
        out["hidden_states"] = response_hidden(model, rollout)
    if "step_ids" in needs and "step_ids" not in rollout.extras:  # a multi-turn rollout records its turns
        newline = [i for i in tokenizer("\n", add_special_tokens=False)["input_ids"]][-1:]
        out["step_ids"] = step_ids(rollout.response_ids, rollout.response_mask, newline)
    for name, other in (("ref_logp", ref_model), ("prm_logp", prm_model)):
        if name in needs:
            if other is None:
                raise ValueError(f"a chosen method needs {name}, but no {name[:-5]} model was loaded")
            parts = []
            for i in range(0, len(rollout), micro_batch_size or len(rollout)):  # the update's micro-batch size
                r = rollout.select(slice(i, i + (micro_batch_size or len(rollout))))
                with torch.no_grad():
                    lp, _, _ = teacher_forced(
                        other,
                        r.prompt_ids,
                        r.prompt_mask,
                        r.response_ids,
                        r.response_mask,
                        temperature=temperature,
                        backend=backend,
                    )
                parts.append(lp.float() * r.response_mask)
            out[name] = torch.cat(parts)
    return out


def info_inputs(needs: set[str], infos: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
    """``rm_heads [B, K]`` (an ensemble reward model's heads) and ``reward_parts [B, K]`` (a reward's components)
    from the reward function's per-sample info (``heads`` / ``parts``); a need no sample's info holds raises."""
    out = {}
    for need, key, hint in (
        ("rm_heads", "heads", "train with --reward-model DIR (an ensemble: entrolab rm train --heads K)"),
        ("reward_parts", "parts", "use --reward-model DIR (parts: proxy, gold) or a reward returning info['parts']"),
    ):
        if need not in needs:
            continue
        rows = [i.get(key) if i else None for i in infos]
        if any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
            raise ValueError(f"a chosen method needs {need}, which the reward's info does not carry: {hint}")
        out[need] = torch.tensor(rows, dtype=torch.float32)
    return out


def cat_rows(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-round inputs along the rows, padding every other dimension with 0."""
    if not parts or not parts[0]:
        return {}
    out = {}
    for key in parts[0]:
        xs = [p[key] for p in parts]
        shape = [max(x.shape[d] for x in xs) for d in range(1, xs[0].dim())]
        padded = []
        for x in xs:
            y = x.new_full((x.shape[0], *shape), -1 if key == "step_ids" else 0)
            y[(slice(None), *(slice(0, n) for n in x.shape[1:]))] = x
            padded.append(y)
        out[key] = torch.cat(padded)
    return out


def select_rows(inputs: dict[str, torch.Tensor], rows: Any) -> dict[str, torch.Tensor]:
    """The rows ``rows`` of every input."""
    return {k: v[rows] for k, v in inputs.items()}


__all__ = [
    "MODEL_NEEDS",
    "answer_ids",
    "answer_logp",
    "answer_phase",
    "cat_rows",
    "info_inputs",
    "pre_update_needs",
    "response_hidden",
    "round_inputs",
    "select_rows",
    "step_ids",
]


GREEDY_TOP_P = 1e-12  # nucleus sampling that keeps only the top token: greedy decoding with the sampler's code


def greedy_rewards(
    model,
    tokenizer,
    prompts: Sequence[str],
    score: Callable[[list[str]], Any],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    backend: str = "auto",
) -> torch.Tensor:
    """ReMax's baseline: the reward of one greedy completion of each prompt, repeated over its group.  [B]

    ``score(texts)`` returns the ``Scores`` of the P greedy completions (the run's reward pool, so a failing or
    hanging reward is reported as for the sampled ones). Decoding keeps only the top token at every step, with
    a generator of its own so the run's sampling stream is unchanged.
    """
    from entrolab.evaluate import decode_completions
    from entrolab.rollout import generate

    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    rollout = generate(
        model,
        tokenizer,
        list(prompts),
        group_size=1,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=GREEDY_TOP_P,
        generator=gen,
        backend=backend,
    )
    scores = score(decode_completions(tokenizer, rollout))
    if bool(scores.errored.any()):
        first = next(m for m in scores.messages if m).splitlines()[0]
        raise RuntimeError(f"the greedy baseline's reward failed on {int(scores.errored.sum())} prompts: {first}")
    return scores.reward.repeat_interleave(group_size)  # [B]
