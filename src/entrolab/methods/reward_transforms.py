"""The reward transforms PAR's paper (Fu et al., arXiv 2502.18770) compares against, as reward shapers.

Pure functions of the reward r: ``reward_ceil``, ``reward_sigmoid``, ``reward_tanh``. Running-statistics shapers
(``reward_meanstd``, ``reward_clip``, ``reward_minmax``) normalise with the exact count / mean / M2 / min / max of
every reward seen: the ``reward_running_stats`` schedule accumulates them across steps from the batch statistics
the shaper logs (``<shaper>/batch_n`` ...) and passes them back as its ``state``; the shaper adds the current
batch (as the code). Code: PorUna-byte/PAR ``trainers/reward_shaper.py`` (b8caf40) and its rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab.registry import register

PAPER = "arXiv:2502.18770"
STATS = ("n", "mean", "m2", "min", "max")  # running-statistics state: count, mean, sum of squared deviations, range
LOGGED = ("n", "mean", "var", "min", "max")  # per-batch statistics each running shaper logs as <name>/batch_<k>
RunningShaper = Literal["reward_meanstd", "reward_clip", "reward_minmax"]


@dataclass(frozen=True)
class CeilConfig:
    """Options of the reward ceiling."""

    ceil: float = 5.0
    """The cap (the code's ``reward_ceil``; its scripts use 3, 4 and 5 on their reward model's scale)."""

    def __post_init__(self) -> None:
        if not abs(self.ceil) < float("inf"):
            raise ValueError(f"reward_ceil ceil must be finite, got {self.ceil}")


@register("reward_shaper", "reward_ceil", config=CeilConfig, paper=PAPER, metrics=("reward_ceil/capped_frac",))
def reward_ceil(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: CeilConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ceil baseline: r_RL = min(r, ceil), the ablation of the paper's first principle (a bounded reward).

    Paper: PAR, arXiv:2502.18770, the "Ceil" ablation; code ``reward_ceil``.

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: :class:`CeilConfig`.

    Returns:
        ``(rewards [B], metrics)``. Metric key: ``reward_ceil/capped_frac`` (fraction of rewards above the cap).

    Differences from the paper / released code:
        The old code caps twice, before its length penalty and again after its running normalisation; here once,
        where this shaper sits in the chain.

    Example:
        >>> reward_ceil(torch.tensor([3.0, 6.0]), torch.ones(2, 1), cfg=CeilConfig(ceil=5.0), group_id=None,
        ...             lengths=None, truncated=None, max_length=1)[0].tolist()
        [3.0, 5.0]
    """
    r = rewards.detach()
    return r.clamp(max=cfg.ceil), {"reward_ceil/capped_frac": (r > cfg.ceil).float().mean()}


@dataclass(frozen=True)
class SigmoidConfig:
    """Options of the non-relative sigmoid."""

    k: float = 1.0
    """Slope: sigmoid(k r) (the code's ``sigmoid_k``; its scripts also run 2 and 3)."""

    def __post_init__(self) -> None:
        if not self.k > 0:
            raise ValueError(f"reward_sigmoid k must be > 0, got {self.k}")


@register("reward_shaper", "reward_sigmoid", config=SigmoidConfig, paper=PAPER, metrics=("reward_sigmoid/mean",))
def reward_sigmoid(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: SigmoidConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Non-relative sigmoid baseline: r_RL = sigmoid(k r), no reference (PAR without centring).

    Paper: PAR, arXiv:2502.18770, the sigmoid ablation; code ``calculate_sigmoid`` (``reward_sigmoid`` without
    ``reward_relative``).

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: :class:`SigmoidConfig`.

    Returns:
        ``(rewards [B], metrics)``. Metric key: ``reward_sigmoid/mean``.

    Differences from the paper / released code:
        None.

    Example:
        >>> reward_sigmoid(torch.tensor([0.0]), torch.ones(1, 1), cfg=SigmoidConfig(), group_id=None,
        ...                lengths=None, truncated=None, max_length=1)[0].tolist()
        [0.5]
    """
    shaped = torch.sigmoid(cfg.k * rewards.detach().float())  # [B]
    return shaped.to(rewards.dtype), {"reward_sigmoid/mean": shaped.mean()}


@register("reward_shaper", "reward_tanh", paper=PAPER, metrics=("reward_tanh/mean",))
def reward_tanh(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: None,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Non-relative tanh baseline: r_RL = tanh(r).

    Paper: PAR, arXiv:2502.18770, the tanh ablation; code ``calculate_tanh`` (``reward_tanh`` alone).

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: None (no options).

    Returns:
        ``(rewards [B], metrics)``. Metric key: ``reward_tanh/mean``.

    Differences from the paper / released code:
        None.

    Example:
        >>> reward_tanh(torch.tensor([0.0]), torch.ones(1, 1), cfg=None, group_id=None, lengths=None,
        ...             truncated=None, max_length=1)[0].tolist()
        [0.0]
    """
    shaped = torch.tanh(rewards.detach().float())  # [B]
    return shaped.to(rewards.dtype), {"reward_tanh/mean": shaped.mean()}


# --- running statistics (Meanstd, Clip, Minmax) -----------------------------------------------------------------


def welford_combine(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """Exact n, mean, M2 (sum of squared deviations), min, max of the union of two sets from theirs.

    The parallel form of Welford's update (Chan, Golub & LeVeque): with delta = mean_b - mean_a, n = n_a + n_b,
    mean = mean_a + delta n_b / n and M2 = M2_a + M2_b + delta^2 n_a n_b / n. An empty side (n = 0 or {}) is
    the identity."""
    if not a or not a.get("n"):
        return {k: float(b[k]) for k in STATS} if b and b.get("n") else {}
    if not b or not b.get("n"):
        return {k: float(a[k]) for k in STATS}
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    return {
        "n": float(n),
        "mean": float(a["mean"] + delta * b["n"] / n),
        "m2": float(a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n),
        "min": float(min(a["min"], b["min"])),
        "max": float(max(a["max"], b["max"])),
    }


def _running(name: str, rewards: torch.Tensor, state: Mapping[str, float] | None):
    """-> (rewards as float64 [B], the running statistics including this batch, the batch-statistics metrics)."""
    r = rewards.detach().double()  # [B]
    if r.numel() == 0:
        raise ValueError(f"reward shaper {name!r} got an empty batch")
    prev = dict(state or {})
    missing = [k for k in STATS if k not in prev]
    if prev and missing:
        raise ValueError(f"{name} state must hold {list(STATS)} (set by reward_running_stats), missing {missing}")
    mean = r.mean()
    batch = {"n": float(r.numel()), "mean": float(mean), "m2": float((r - mean).square().sum())}
    batch.update(min=float(r.min()), max=float(r.max()))
    run = welford_combine(prev, batch)
    logged = {**batch, "var": batch["m2"] / batch["n"]}
    metrics = {f"{name}/batch_{k}": torch.tensor(logged[k], dtype=torch.float64) for k in LOGGED}
    return r, run, metrics


def _std(run: Mapping[str, float]) -> float:
    """Population std of the running statistics (the code's M2 / n, 0 for a single reward)."""
    return (run["m2"] / run["n"]) ** 0.5 if run["n"] > 1 else 0.0


def _batch_keys(name: str) -> tuple[str, ...]:
    return tuple(f"{name}/batch_{k}" for k in LOGGED)


@register(
    "reward_shaper",
    "reward_meanstd",
    paper=PAPER,
    metrics=(*_batch_keys("reward_meanstd"), "reward_meanstd/run_mean", "reward_meanstd/run_std"),
    state=STATS,
)
def reward_meanstd(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: None,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Meanstd baseline: r_RL = (r - mu_run) / sigma_run over every reward seen so far, this batch included.

    Paper: PAR, arXiv:2502.18770, the "Meanstd" baseline; code ``RunningStats.normalize`` (``reward_meanstd``):
    sigma_run the population std (M2 / n), replaced by 1 when 0.

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: None (no options).
        state: the statistics of the steps before, set by the ``reward_running_stats`` schedule: ``n``,
            ``mean``, ``m2`` (sum of squared deviations), ``min``, ``max``; empty at the first step (or without
            the schedule), when only this batch counts.

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``reward_meanstd/batch_n``, ``reward_meanstd/batch_mean``,
        ``reward_meanstd/batch_var`` (population), ``reward_meanstd/batch_min``, ``reward_meanstd/batch_max`` (this
        batch's raw rewards, what the schedule accumulates), ``reward_meanstd/run_mean``, ``reward_meanstd/run_std``.

    Differences from the paper / released code:
        The code keeps the statistics in the shaper object, per process; here the schedule keeps them (checkpointed)
        and the shaper adds the current batch, as the code's update-then-normalise. The rewrite floors the
        variance at 1e-8 instead of replacing a zero std by 1.

    Example:
        >>> r, m = reward_meanstd(torch.tensor([1.0, 3.0]), torch.ones(2, 1), cfg=None, group_id=None,
        ...                       lengths=None, truncated=None, max_length=1, state={})
        >>> r.tolist(), m["reward_meanstd/batch_var"].item()
        ([-1.0, 1.0], 1.0)
    """
    r, run, metrics = _running("reward_meanstd", rewards, state)
    std = _std(run)
    shaped = (r - run["mean"]) / (std if std > 0 else 1.0)  # [B]
    metrics.update({"reward_meanstd/run_mean": torch.tensor(run["mean"]), "reward_meanstd/run_std": torch.tensor(std)})
    return shaped.to(rewards.dtype), metrics


@register(
    "reward_shaper",
    "reward_clip",
    paper=PAPER,
    metrics=(*_batch_keys("reward_clip"), "reward_clip/run_mean", "reward_clip/run_std", "reward_clip/clipped_frac"),
    state=STATS,
)
def reward_clip(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: None,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip baseline: r_RL = clip(r, mu_run - sigma_run, mu_run + sigma_run) over every reward seen so far.

    Paper: PAR, arXiv:2502.18770, the "Clip" baseline; code ``RunningStats.clip`` (``reward_clipping``),
    sigma_run the population std (M2 / n).

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: None (no options).
        state: the statistics of the steps before, set by the ``reward_running_stats`` schedule: ``n``,
            ``mean``, ``m2`` (sum of squared deviations), ``min``, ``max``; empty at the first step (or without
            the schedule), when only this batch counts.

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``reward_clip/batch_n``, ``reward_clip/batch_mean``,
        ``reward_clip/batch_var``, ``reward_clip/batch_min``, ``reward_clip/batch_max`` (this batch's raw rewards),
        ``reward_clip/run_mean``, ``reward_clip/run_std``, ``reward_clip/clipped_frac`` (fraction moved).

    Differences from the paper / released code:
        As ``reward_meanstd``: the schedule holds the statistics of the steps before and the shaper adds this
        batch (the code's update-then-clip), over the whole batch rather than per process.

    Example:
        >>> past = {"n": 1.0, "mean": 2.0, "m2": 0.0, "min": 2.0, "max": 2.0}  # one reward 2 seen before
        >>> r, m = reward_clip(torch.tensor([0.0, 1.0, 5.0]), torch.ones(3, 1), cfg=None, group_id=None,
        ...                    lengths=None, truncated=None, max_length=1, state=past)
        >>> [round(x, 4) for x in r.tolist()], round(m["reward_clip/run_std"].item() ** 2, 4)  # mean 2, var 3.5
        ([0.1292, 1.0, 3.8708], 3.5)
    """
    r, run, metrics = _running("reward_clip", rewards, state)
    std = _std(run)
    shaped = r.clamp(run["mean"] - std, run["mean"] + std)  # [B]
    metrics.update(
        {
            "reward_clip/run_mean": torch.tensor(run["mean"]),
            "reward_clip/run_std": torch.tensor(std),
            "reward_clip/clipped_frac": (shaped != r).float().mean(),
        }
    )
    return shaped.to(rewards.dtype), metrics


@register(
    "reward_shaper",
    "reward_minmax",
    paper=PAPER,
    metrics=(*_batch_keys("reward_minmax"), "reward_minmax/run_min", "reward_minmax/run_max"),
    state=STATS,
)
def reward_minmax(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: None,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Minmax baseline: r_RL = (r - min_run) / (max_run - min_run) over every reward seen so far.

    Paper: PAR, arXiv:2502.18770, the "Minmax" baseline; code ``RunningStats.minmax`` (``reward_minmax``).

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: None (no options).
        state: the statistics of the steps before, set by the ``reward_running_stats`` schedule: ``n``,
            ``mean``, ``m2`` (sum of squared deviations), ``min``, ``max``; empty at the first step (or without
            the schedule), when only this batch counts.

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``reward_minmax/batch_n``, ``reward_minmax/batch_mean``,
        ``reward_minmax/batch_var``, ``reward_minmax/batch_min``, ``reward_minmax/batch_max`` (this batch's raw
        rewards), ``reward_minmax/run_min``, ``reward_minmax/run_max``.

    Differences from the paper / released code:
        As ``reward_meanstd`` for the statistics. While every reward seen is equal (max = min) the result is 0
        (the old code divides by zero; the rewrite by 1e-8, also 0).

    Example:
        >>> reward_minmax(torch.tensor([1.0, 2.0]), torch.ones(2, 1), cfg=None, group_id=None, lengths=None,
        ...               truncated=None, max_length=1, state={"n": 2.0, "mean": 1.5, "m2": 4.5, "min": 0.0,
        ...               "max": 4.0})[0].tolist()
        [0.25, 0.5]
    """
    r, run, metrics = _running("reward_minmax", rewards, state)
    span = run["max"] - run["min"]
    shaped = (r - run["min"]) / span if span > 0 else torch.zeros_like(r)  # [B]
    metrics.update(
        {"reward_minmax/run_min": torch.tensor(run["min"]), "reward_minmax/run_max": torch.tensor(run["max"])}
    )
    return shaped.to(rewards.dtype), metrics


@dataclass(frozen=True)
class RunningStatsConfig:
    """Options of the running-statistics accumulator."""

    shaper: RunningShaper = "reward_meanstd"
    """The running-statistics shaper whose batch statistics it reads and whose state it sets."""

    def __post_init__(self) -> None:
        if self.shaper not in get_args(RunningShaper):
            raise ValueError(
                f"reward_running_stats shaper must be one of {list(get_args(RunningShaper))}, got {self.shaper!r}"
            )


@register(
    "schedule",
    "reward_running_stats",
    config=RunningStatsConfig,
    paper=PAPER,
    sets=lambda cfg: tuple(f"{cfg.shaper}.{k}" for k in STATS),
    reads=lambda cfg: _batch_keys(cfg.shaper),
)
def reward_running_stats(
    state: dict[str, float],
    observed: Mapping[str, float],
    *,
    cfg: RunningStatsConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Exact running count, mean, M2, min and max of every reward the target shaper has seen, step by step.

    Paper: PAR, arXiv:2502.18770, the running statistics of its Meanstd / Clip / Minmax baselines; code
    ``RunningStats.update`` (the parallel Welford update, population variance). Each step folds the previous
    step's batch statistics (n_b, mean_b, var_b, min_b, max_b, logged by the shaper) into the state with
    :func:`welford_combine` (M2_b = n_b var_b), exact for any batch sizes.

    Args:
        state: ``{}`` at first; then ``n``, ``mean``, ``m2``, ``min``, ``max`` of all the batches observed.
        observed: the previous step's logged metrics; reads ``<shaper>/batch_n``, ``<shaper>/batch_mean``,
            ``<shaper>/batch_var``, ``<shaper>/batch_min``, ``<shaper>/batch_max`` (default shaper
            ``reward_meanstd``). Empty on the first step.
        cfg: :class:`RunningStatsConfig`.
        step: unused.  total_steps: unused.

    Returns:
        ``(state, values)``; values is empty until a batch is observed, then the state under the shaper's
        declared state names: ``reward_meanstd.n``, ``reward_meanstd.mean``, ``reward_meanstd.m2``,
        ``reward_meanstd.min``, ``reward_meanstd.max`` (``reward_clip.*`` / ``reward_minmax.*`` with
        ``shaper=``).

    Differences from the paper / released code:
        The state holds the steps before this one; the shaper adds the current batch itself, so the normalised
        rewards equal the code's update-then-normalise. The code keeps one accumulator per process and updates it
        whenever its shaper runs; here one per run, from the logged batch of each training step.

    Example:
        >>> cfg = RunningStatsConfig()
        >>> state, values = reward_running_stats({}, {}, cfg=cfg, step=1, total_steps=3)
        >>> batch = dict(n=2.0, mean=2.0, var=1.0, min=1.0, max=3.0)  # rewards [1, 3]
        >>> batch = {"reward_meanstd/batch_" + k: v for k, v in batch.items()}
        >>> state, values = reward_running_stats(state, batch, cfg=cfg, step=2, total_steps=3)
        >>> state, values = reward_running_stats(state, batch, cfg=cfg, step=3, total_steps=3)
        >>> values["reward_meanstd.n"], values["reward_meanstd.mean"], values["reward_meanstd.m2"]  # [1, 3, 1, 3]
        (4.0, 2.0, 4.0)
        >>> values["reward_meanstd.min"], values["reward_meanstd.max"]
        (1.0, 3.0)
    """
    keys = _batch_keys(cfg.shaper)
    state = {k: float(v) for k, v in state.items()}
    if all(k in observed for k in keys):
        b = {k: float(observed[key]) for k, key in zip(LOGGED, keys, strict=True)}
        batch = {"n": b["n"], "mean": b["mean"], "m2": b["var"] * b["n"], "min": b["min"], "max": b["max"]}
        state = welford_combine(state, batch)
    elif observed:
        missing = [k for k in keys if k not in observed]
        raise ValueError(f"reward_running_stats reads {missing}, absent from the logged metrics {sorted(observed)}")
    values = {f"{cfg.shaper}.{k}": state[k] for k in STATS} if state else {}
    return state, values


__all__ = [
    "CeilConfig",
    "RunningStatsConfig",
    "SigmoidConfig",
    "reward_ceil",
    "reward_clip",
    "reward_meanstd",
    "reward_minmax",
    "reward_running_stats",
    "reward_sigmoid",
    "reward_tanh",
    "welford_combine",
]
