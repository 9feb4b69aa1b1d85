"""Every entrolab advantage estimator as verl's ``entrolab.<name>`` (``register_adv_est``), the reward shapers
before it.

verl's ``compute_advantage`` calls it with ``token_level_rewards [B, T]``, ``response_mask [B, T]``, ``config``
(the ``AlgoConfig``; None in some callers) and ``index`` (the uid of each row's prompt, rows in any order: verl
reorders the batch to balance data-parallel ranks). The reward of a row is the sum over T; groups are the uids,
never row positions; the advantage is broadcast over the response and 0 on padding, as verl's ``grpo``
returns it, and is also returned as the returns.

verl pads a batch to a multiple of its data-parallel size with no-op rows that share one uid and have no response
token; a group none of whose rows has a response token gets advantage 0 and is left out of the estimator (it would
otherwise be a group of another size). The estimator's and shapers' metrics are not returned (verl's signature has
no place for them); the last call's are kept for the entrolab trainer's schedules (:func:`last_metrics`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from entrolab import catalogue
from entrolab.integrations.verl.config import PREFIX, advantage_spec
from entrolab.integrations.verl.losses import methods_of

_LAST: dict[str, float] = {}


def last_metrics() -> dict[str, float]:
    """The reward, shaper and advantage metrics of the last call in this process (the driver's, in verl)."""
    return dict(_LAST)


def group_ids(index: Any) -> torch.Tensor:
    """verl's uids (any hashable per row) -> int64 group ids, in order of first appearance.  [B]"""
    if index is None:
        raise ValueError("entrolab advantages group rows by verl's uid: compute_advantage passed no index")
    seen: dict[Any, int] = {}
    return torch.tensor([seen.setdefault(u, len(seen)) for u in np.asarray(index, dtype=object).tolist()])


def unserved(methods: Any) -> list[str]:
    """Why verl's advantage signature cannot run ``methods``' estimator and shapers (empty: it can): it passes
    rewards, the response mask and uids, so a need without a default (answers, hidden states, the generator,
    the step) cannot be met, and an estimator that returns extra tensors for the loss has nowhere to put them."""
    out = []
    for entry, _ in [methods.advantage, *methods.shapers]:
        params = inspect.signature(entry.fn).parameters
        missing = [n for n in entry.needs if n in params and params[n].default is inspect.Parameter.empty]
        if missing:
            out.append(f"{entry.axis} {entry.name!r} needs {missing}, which verl's advantage signature does not pass")
    for entry, _ in [methods.advantage, *methods.shapers]:
        if entry.state:  # a schedule's running state, which the driver's estimator call never receives
            out.append(
                f"{entry.axis} {entry.name!r} reads state across steps {list(entry.state)}, which verl's "
                "advantage signature does not carry"
            )
    if methods.advantage[0].provides:
        out.append(
            f"advantage {methods.advantage[0].name!r} returns {list(methods.advantage[0].provides)} for its policy "
            "loss, which verl's advantage signature cannot carry"
        )
    return out


def make_advantage(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """verl's advantage-estimator function for entrolab's estimator ``name``."""

    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        config: Any = None,
        index: Any = None,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spec, _notes = advantage_spec(config, name)
        methods = methods_of(spec)
        problems = unserved(methods)
        if problems:
            raise ValueError("entrolab in verl: " + "; ".join(problems) + " (use `entrolab train` or TRL)")
        mask = response_mask.to(torch.float32)  # [B, T]
        gid = group_ids(index)  # [B]
        if gid.numel() != mask.shape[0]:
            raise ValueError(f"index has {gid.numel()} uids for {mask.shape[0]} rows")
        has_tokens = mask.sum(-1) > 0  # [B]
        live_groups = torch.zeros(int(gid.max()) + 1 if gid.numel() else 0, dtype=torch.bool)
        live_groups[gid[has_tokens]] = True
        rows = live_groups[gid].nonzero().squeeze(-1)  # [b] rows of groups with a response token
        r, m, g = token_level_rewards.sum(-1)[rows].float(), mask[rows], gid[rows]
        metrics = {"reward/mean": r.mean(), "reward/std": r.std(correction=0)} if len(r) else {}
        lengths = m.sum(-1).long()  # [b]
        if methods.shapers:
            max_length = config.get("max_response_length", None) if config is not None else None
            if not max_length:
                shapers = [e.name for e, _ in methods.shapers]
                raise ValueError(
                    f"reward shapers {shapers} need the response-length budget: set "
                    "algorithm._target_=entrolab.integrations.verl.config.AlgoConfig and "
                    "+algorithm.max_response_length=${data.max_response_length}"
                )
            truncated = lengths >= int(max_length)  # [b] no EOS within the budget
            for entry, scfg in methods.shapers:
                r, sm = entry.fn(
                    r, m, cfg=scfg, group_id=g, lengths=lengths, truncated=truncated, max_length=int(max_length)
                )
                metrics.update(sm)
            metrics["reward/shaped_mean"] = r.mean()
        adv_entry, adv_cfg = methods.advantage
        adv, am = adv_entry.fn(r, m, cfg=adv_cfg, group_id=g)  # [b, 1] | [b, T]
        _LAST.clear()
        _LAST.update({k: float(v) for k, v in {**metrics, **am}.items()})
        out = torch.zeros_like(mask, dtype=token_level_rewards.dtype)  # [B, T]
        out[rows] = (adv * m).to(out.dtype)
        return out, out.clone()

    estimator.__name__ = estimator.__qualname__ = f"entrolab_{name}"
    estimator.__doc__ = f"entrolab's advantage {name!r} for verl (entrolab.integrations.verl.advantages)."
    estimator.__entrolab__ = name  # type: ignore[attr-defined]
    return estimator


def register_all() -> list[str]:
    """Register ``entrolab.<name>`` for every advantage estimator of the catalogue (idempotent) -> the names."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

    out = []
    for name in catalogue.names("advantage"):
        key = PREFIX + name
        current = ADV_ESTIMATOR_REGISTRY.get(key)
        if getattr(current, "__entrolab__", None) != name:
            if hasattr(current, "__entrolab__"):  # a stale wrapper of an earlier import of this module
                del ADV_ESTIMATOR_REGISTRY[key]
            register_adv_est(key)(make_advantage(name))
        out.append(key)
    return out


__all__ = ["group_ids", "last_metrics", "make_advantage", "register_all"]
