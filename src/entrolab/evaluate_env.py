"""``entrolab eval --env NAME``: N episodes per test problem of a multi-turn environment.

The same keys as a task's evaluation (``accuracy`` is the success rate, pass@k and maj@N over the episodes'
final answers, ``entropy`` over the model's tokens only) plus ``turns_mean``, ``tool_calls_mean`` and
``parse_errors_mean``.
"""

from __future__ import annotations

import torch

from entrolab.agent_rollout import multi_turn_rollout
from entrolab.envs import EnvTask
from entrolab.ops import majority_at_k, masked_mean, passk_from_counts


@torch.no_grad()
def evaluate_env(
    model,
    tokenizer,
    task: EnvTask,
    *,
    split: str = "test",
    samples: int = 16,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 256,
    return_detail: bool = False,
    backend="auto",
    turn_tokens: int = 24,
    max_turns: int | None = None,
):
    """Episodes of ``task``'s environment (``max_new_tokens``: an episode's response budget, observations
    included); returns what ``entrolab.evaluate.evaluate`` returns, with the env's counts."""
    examples = list(task.test if split == "test" else task.train)[:limit]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ar = multi_turn_rollout(
        model,
        tokenizer,
        task,
        examples,
        group_size=samples,
        max_turns=max_turns,
        turn_tokens=turn_tokens,
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        generator=gen,
        backend=backend,
        seed=seed,
        batch_size=batch_size,
    )
    if bool(ar.scores.errored.any()):
        raise RuntimeError(next(m for m in ar.scores.messages if m))
    r, scores = ar.rollout, ar.scores
    texts = tokenizer.batch_decode(r.response_ids.masked_fill(r.response_mask == 0, tokenizer.pad_token_id), True)
    right = scores.right.view(len(examples), samples)
    answers = [[task.extract_answer(texts[i * samples + j]) for j in range(samples)] for i in range(len(examples))]
    out = {
        "accuracy": float(scores.right.float().mean()),
        "mean_length": float(r.lengths.float().mean()),
        "format_error_rate": float(scores.format_error.float().mean()),
        "truncated_rate": float(r.truncated.float().mean()),
        "entropy": float(masked_mean(r.entropy, r.response_mask * r.extras["model_mask"])),
        **passk_from_counts(right.sum(1).tolist(), samples),
        f"maj@{samples}": majority_at_k(answers, right.tolist()),
        "n_prompts": float(len(examples)),
        "samples": float(samples),
        "turns_mean": float(ar.turns.float().mean()),
        "tool_calls_mean": float(ar.tool_calls.float().mean()),
        "parse_errors_mean": float(ar.parse_errors.float().mean()),
    }
    if return_detail:
        detail = {"ids": [e.id for e in examples], "right": right.sum(1).tolist(), "answers": answers}
        return out, {**detail, "samples": samples}
    return out


__all__ = ["evaluate_env"]
