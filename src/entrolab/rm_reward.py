"""A trained reward model as the reward of ``entrolab train --reward-model DIR``, with the verifier as gold.

:class:`RewardModelReward` is a batched reward function (one call scores a worker's share of the step): each
completion's score is ``mix * r_phi(prompt, completion) + (1 - mix) * verifier score``, and its info carries the
gold verdict of the task's verifier (``right`` / ``format_error`` / ``gold``: so ``reward/accuracy`` stays the
verifier's and ``reward/gold_mean`` is logged), the proxy score (``proxy``), every head's score (``heads``, for
an ensemble: Ctrl-U's ``rm_heads``), the two components (``parts``: proxy, gold; a multi-reward method's
``reward_parts``) and whether the completion carries the reward model's spurious feature (``spurious``). The model is
loaded once per worker process, on its first call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from entrolab.reward_model import has_feature, load_rm, scores


class RewardModelReward:
    """``mix * reward model + (1 - mix) * verifier``, the verifier's verdict kept as gold (picklable)."""

    batched = True

    def __init__(self, path: str, verifier: Any, mix: float = 1.0, batch_size: int = 64) -> None:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"reward_mix must be in [0, 1], got {mix}")
        self.path, self.verifier, self.mix, self.batch_size = str(path), verifier, float(mix), batch_size
        self._loaded: tuple[Any, Any, dict] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}  # workers load the model themselves

    def model(self) -> tuple[Any, Any, dict]:
        if self._loaded is None:
            torch.set_num_threads(1)
            self._loaded = load_rm(self.path)
        return self._loaded

    def __call__(self, completions: Sequence[str], examples: Sequence[Any]) -> list[tuple[float, dict[str, Any]]]:
        model, tok, meta = self.model()
        spurious = (meta.get("config") or {}).get("spurious", "none")
        marker = (meta.get("config") or {}).get("marker", " ok")
        with torch.no_grad():
            heads = scores(model, tok, [e.prompt for e in examples], list(completions), self.batch_size)  # [N, K]
        out = []
        for text, ex, h in zip(completions, examples, heads.tolist(), strict=True):
            gold = self.verifier(text, ex)
            proxy = sum(h) / len(h)
            info = {
                "right": gold.reason == "right",
                "format_error": gold.reason == "format_error",
                "gold": float(gold.score),
                "proxy": proxy,
                "heads": h,
                "parts": [proxy, float(gold.score)],
                "spurious": has_feature(text, spurious, marker),
            }
            out.append((self.mix * proxy + (1.0 - self.mix) * float(gold.score), info))
        return out


def gold_metrics(infos: Sequence[dict[str, Any] | None], group_id: torch.Tensor | None = None) -> dict[str, float]:
    """``reward/gold_mean``, ``reward/proxy_mean``, ``reward/spurious_rate`` of a step's reward-model infos, and
    with ``group_id`` [B] ``reward/starc_proxy_gold``: the STARC distance (arXiv:2309.15257, bandit form) between
    the proxy and the gold reward over the step's rollouts (0: the same policy order, 1: the opposite)."""
    rows = [i for i in infos if i and "gold" in i]
    if not rows:
        return {}
    n = len(rows)
    out = {
        "reward/gold_mean": sum(r["gold"] for r in rows) / n,
        "reward/proxy_mean": sum(r["proxy"] for r in rows) / n,
        "reward/spurious_rate": sum(bool(r["spurious"]) for r in rows) / n,
    }
    if group_id is not None and n == len(infos):
        from entrolab.rm_diagnostics import starc_distance

        proxy = torch.tensor([r["proxy"] for r in rows])
        gold = torch.tensor([r["gold"] for r in rows])
        out["reward/starc_proxy_gold"] = starc_distance(proxy, gold, group_id)
    return out


__all__ = ["RewardModelReward", "gold_metrics"]
