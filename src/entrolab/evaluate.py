"""``entrolab eval``: N samples per test prompt, accuracy, length, format errors, unbiased pass@k and maj@k."""

from __future__ import annotations

import torch

from entrolab.envs import EnvTask
from entrolab.kinds import Backend
from entrolab.ops import majority_at_k, masked_mean, passk_from_counts
from entrolab.rewards import RewardPool, score_completions
from entrolab.rollout import Rollout, generate
from entrolab.tasks import Example, Task


def decode_completions(tokenizer, rollout: Rollout) -> list[str]:
    """Completion text of every sequence: generated tokens up to (not including) EOS."""
    ids = rollout.response_ids.masked_fill(rollout.response_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    task: Task,
    *,
    split: str = "test",
    samples: int = 16,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 256,
    return_detail: bool = False,
    backend: Backend = "auto",
    verify_timeout: float = 60.0,
    verify_workers: int | None = None,
    turn_tokens: int = 24,
    max_turns: int | None = None,
) -> dict[str, float] | tuple[dict[str, float], dict[str, list]]:
    """Sample ``samples`` completions per prompt of ``split`` and report:

    ``accuracy`` (mean over all samples), ``mean_length`` (generated tokens, EOS included),
    ``format_error_rate``, ``truncated_rate``, ``entropy`` (mean full-distribution token entropy),
    ``pass@k`` for k in {1, 2, 4, 8, 16} with k <= samples (unbiased estimator), ``maj@N``, ``n_prompts``.

    A task whose verifier may hang on a pathological answer (``pooled_verifier = True``: math-verify,
    reasoning-gym) is scored in worker processes with ``verify_timeout`` seconds per sample; a sample whose
    verification timed out or raised counts as not right, has no answer for majority vote, and is counted in
    ``verify_errors`` (never scored in silence).

    With ``return_detail`` also per-problem detail, for support and answer-level diagnostics:
    ``{"ids": [P], "right": [P] right counts, "answers": [P][N] (None on a format error), "samples": N}``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if isinstance(task, EnvTask):  # multi-turn episodes (max_new_tokens: the episode's budget)
        from entrolab.evaluate_env import evaluate_env

        kw = dict(split=split, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        kw.update(seed=seed, limit=limit, batch_size=batch_size, return_detail=return_detail, backend=backend)
        return evaluate_env(model, tokenizer, task, turn_tokens=turn_tokens, max_turns=max_turns, **kw)
    examples: list[Example] = list(task.test if split == "test" else task.train)
    if limit is not None:
        examples = examples[:limit]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    rollout = generate(
        model,
        tokenizer,
        [task.prompt(e) for e in examples],
        group_size=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        generator=gen,
        batch_size=batch_size,
        backend=backend,
    )
    texts = decode_completions(tokenizer, rollout)
    flat_examples = [e for e in examples for _ in range(samples)]
    pooled = bool(getattr(task, "pooled_verifier", False))
    if pooled:
        with RewardPool(task.verify, workers=verify_workers, timeout=verify_timeout, on_error="skip") as pool:
            scores = pool.score(texts, flat_examples)
    else:
        scores = score_completions(texts, flat_examples, task.verify, on_error="raise")
    right = scores.right.view(len(examples), samples)
    errored = scores.errored.tolist()
    answers = [
        [
            None if errored[i * samples + j] else task.extract_answer(t, e)
            for j, t in enumerate(texts[i * samples : (i + 1) * samples])
        ]
        for i, e in enumerate(examples)
    ]
    mask = rollout.response_mask
    out = {
        "accuracy": float(scores.right.float().mean()),
        "mean_length": float(rollout.lengths.float().mean()),
        "format_error_rate": float(scores.format_error.float().mean()),
        "truncated_rate": float(rollout.truncated.float().mean()),
        "entropy": float(masked_mean(rollout.entropy, mask)),
        **passk_from_counts(right.sum(1).tolist(), samples),
        f"maj@{samples}": majority_at_k(answers, right.tolist()),
        "n_prompts": float(len(examples)),
        "samples": float(samples),
    }
    if pooled:
        out["verify_errors"] = float(scores.errored.sum())
    if return_detail:
        detail = {
            "ids": [e.id for e in examples],
            "right": right.sum(1).tolist(),
            "answers": answers,
            "samples": samples,
        }
        return out, detail
    return out
