"""``ref_rewards``: the reward of M reference responses per prompt, sampled from the base policy (PAR's need).

PAR (arXiv:2502.18770) centres a policy sample's reward-model score on the scores of M responses of the SFT
policy to the same prompt. They are sampled here from the frozen base model (``--model``) once per prompt, with a
generator seeded by the run's seed and the prompt's id (so a resumed run, and every run of a grid, draws the
same references without touching the run's own random stream), scored by the run's reward function, and kept
for the rest of the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from entrolab.evaluate import decode_completions
from entrolab.rollout import generate


def reference_seed(seed: int, example_id: str) -> int:
    """A 62-bit seed from the run's seed and an example id (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{seed}:{example_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


class ReferenceRewards:
    """Per example id, the rewards of ``m`` responses of the base policy; computed on first sight, then cached."""

    def __init__(
        self,
        model,
        tokenizer,
        pool,
        m: int,
        *,
        seed: int,
        prompt_of,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        backend: str = "auto",
    ) -> None:
        if m < 1:
            raise ValueError(f"reference_responses must be >= 1, got {m}")
        self.model, self.tokenizer, self.pool, self.m, self.seed = model, tokenizer, pool, m, seed
        self.prompt_of, self.max_new_tokens, self.temperature, self.top_p = (
            prompt_of,
            max_new_tokens,
            temperature,
            top_p,
        )
        self.backend = backend
        self.cache: dict[str, torch.Tensor] = {}

    def _score(self, example: Any) -> torch.Tensor:
        gen = torch.Generator().manual_seed(reference_seed(self.seed, example.id))
        rollout = generate(
            self.model,
            self.tokenizer,
            [self.prompt_of(example)],
            group_size=self.m,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            generator=gen,
            backend=self.backend,
        )
        scores = self.pool.score(decode_completions(self.tokenizer, rollout), [example] * self.m)
        r, ok = scores.reward.float(), ~scores.errored
        if not bool(ok.any()):
            raise ValueError(f"every reference response of example {example.id!r} failed to score")
        return torch.where(ok, r, r[ok].mean())  # [M]; a failed one takes the others' mean

    def __call__(self, rows: Sequence[Any]) -> torch.Tensor:
        """The reference rewards of each row's example.  [B, M]"""
        for ex in rows:
            if ex.id not in self.cache:
                with torch.no_grad():
                    self.cache[ex.id] = self._score(ex)
        return torch.stack([self.cache[ex.id] for ex in rows])


__all__ = ["ReferenceRewards", "reference_seed"]
