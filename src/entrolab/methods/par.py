"""PAR (Fu et al., arXiv 2502.18770): Preference As Reward, and the reward-shaping baselines the paper compares.

The reward is a reward model's score r of a policy sample; the caller supplies ``ref_rewards [B, M]``, the same
model's scores of M reference responses (sampled from the SFT policy) of each row's prompt. PAR replaces r by the
model's implied preference probability against the references, mean_m sigmoid(r - r_ref_m), bounded in (0, 1).

Reference-based shapers: ``par``, ``par_centered``, ``par_relative_tanh``, ``par_lsc``. The paper's other
baselines (pure functions of r, and the running-statistics shapers) are in ``entrolab.methods.reward_transforms``.
Code: PorUna-byte/PAR ``trainers/reward_shaper.py`` (b8caf40) and the rewrite ``src/trainers/reward_shaper.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab.registry import register

PAPER = "arXiv:2502.18770"
RefStd = Literal["population", "sample"]


def _refs(ref_rewards: torch.Tensor | None, rewards: torch.Tensor, max_refs: int | None, name: str) -> torch.Tensor:
    """The first ``max_refs`` reference rewards [B, M] as float, checked against rewards [B]."""
    if ref_rewards is None:
        raise ValueError(f"reward shaper {name!r} needs ref_rewards [B, M] (declared in needs)")
    if ref_rewards.dim() != 2 or ref_rewards.shape[0] != rewards.shape[0] or ref_rewards.shape[1] < 1:
        raise ValueError(
            f"{name} ref_rewards must be [B, M] with B = {rewards.shape[0]}, M >= 1; got {tuple(ref_rewards.shape)}"
        )
    return ref_rewards[:, :max_refs].detach().float()  # [B, M]


def _check_max_refs(name: str, max_refs: int | None) -> None:
    if max_refs is not None and max_refs < 1:
        raise ValueError(f"{name} max_refs must be None (all) or >= 1, got {max_refs}")


@dataclass(frozen=True)
class ParConfig:
    """Options of PAR."""

    k: float = 1.0
    """Slope: sigmoid(k (r - r_ref)); the paper and the rewrite have none (1); the old code's ``sigmoid_k``."""
    shift: float = 0.0
    """Subtracted from r first; 3 gives the old code's SgFc ablation (``reward_sgfc``)."""
    max_refs: int | None = None
    """Use the first max_refs references of each row (the code's ``reward_maxref``, 10); None: all M supplied."""

    def __post_init__(self) -> None:
        if not self.k > 0:
            raise ValueError(f"par k must be > 0, got {self.k}")
        _check_max_refs("par", self.max_refs)


@register(
    "reward_shaper",
    "par",
    config=ParConfig,
    paper=PAPER,
    metrics=("par/mean", "par/win_frac", "par/ref_mean"),
    needs=("ref_rewards",),
)
def par(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: ParConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    ref_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PAR: r_RL = (1/M) sum_m sigmoid(k (r - shift - r_ref_m)), the win probability against the references.

    Paper: PAR, arXiv:2502.18770, the PAR reward (Bradley-Terry preference of the sample over each SFT
    reference under the reward model itself); code ``calculate_relative_sigmoid`` / ``_shape_par``. Bounded in
    (0, 1), monotone in r, invariant to a constant added to r and every r_ref; with M = 1 it is the Bradley-Terry
    probability that the sample beats the reference.

    Args:
        rewards: ``[B]`` reward-model scores of the policy samples.
        mask: ``[B, T]`` response tokens (unused).  group_id, lengths, truncated, max_length: unused.
        cfg: :class:`ParConfig`.
        ref_rewards: ``[B, M]`` the reward model's scores of M reference responses of each row's prompt (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``par/mean`` (mean r_RL), ``par/win_frac`` (fraction of the
        (sample, reference) pairs with r - shift > r_ref), ``par/ref_mean`` (mean reference reward).

    Differences from the paper / released code:
        None in the reward. ``k`` and ``shift`` are the old code's options (default off); the length penalty the
        code applies before shaping (0.01 per token beyond 300) is another shaper's job, and the code places the
        result on the last response token with a per-token KL penalty (the trainer's choice here).

    Example:
        >>> r, m = par(torch.tensor([2.0, 0.0]), torch.ones(2, 1), cfg=ParConfig(), group_id=None, lengths=None,
        ...            truncated=None, max_length=1, ref_rewards=torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
        >>> r.tolist(), m["par/win_frac"].item()
        ([0.5, 0.5], 0.25)
    """
    refs = _refs(ref_rewards, rewards, cfg.max_refs, "par")  # [B, M]
    margin = rewards.detach().float().unsqueeze(-1) - cfg.shift - refs  # [B, M]
    shaped = torch.sigmoid(cfg.k * margin).mean(-1)  # [B]
    metrics = {"par/mean": shaped.mean(), "par/win_frac": (margin > 0).float().mean(), "par/ref_mean": refs.mean()}
    return shaped.to(rewards.dtype), metrics


@dataclass(frozen=True)
class RelativeConfig:
    """Options of a reference-relative baseline."""

    max_refs: int | None = None
    """Use the first max_refs references of each row (the code's ``reward_maxref``, 10); None: all M supplied."""

    def __post_init__(self) -> None:
        _check_max_refs("relative shaper", self.max_refs)


def _relative(name: str, fn, rewards, ref_rewards, max_refs):
    refs = _refs(ref_rewards, rewards, max_refs, name)  # [B, M]
    shaped = fn(rewards.detach().float().unsqueeze(-1) - refs).mean(-1)  # [B]
    return shaped.to(rewards.dtype), {f"{name}/mean": shaped.mean(), f"{name}/ref_mean": refs.mean()}


@register(
    "reward_shaper",
    "par_centered",
    config=RelativeConfig,
    paper=PAPER,
    metrics=("par_centered/mean", "par_centered/ref_mean"),
    needs=("ref_rewards",),
)
def par_centered(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: RelativeConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    ref_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Centered baseline: r_RL = (1/M) sum_m (r - r_ref_m), unbounded.

    Paper: PAR, arXiv:2502.18770, the "Centered" baseline; code ``calculate_centered`` (``reward_centered``).

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: :class:`RelativeConfig`.
        ref_rewards: ``[B, M]`` reference responses' scores (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``par_centered/mean``, ``par_centered/ref_mean``.

    Differences from the paper / released code:
        None.

    Example:
        >>> par_centered(torch.tensor([2.0]), torch.ones(1, 1), cfg=RelativeConfig(), group_id=None, lengths=None,
        ...              truncated=None, max_length=1, ref_rewards=torch.tensor([[1.0, 4.0]]))[0].tolist()
        [-0.5]
    """
    return _relative("par_centered", lambda d: d, rewards, ref_rewards, cfg.max_refs)


@register(
    "reward_shaper",
    "par_relative_tanh",
    config=RelativeConfig,
    paper=PAPER,
    metrics=("par_relative_tanh/mean", "par_relative_tanh/ref_mean"),
    needs=("ref_rewards",),
)
def par_relative_tanh(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: RelativeConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    ref_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Relative tanh baseline: r_RL = (1/M) sum_m tanh(r - r_ref_m), bounded in (-1, 1).

    Paper: PAR, arXiv:2502.18770, the sigmoid-like ablations; code ``calculate_relative_tanh``
    (``reward_tanh`` with ``reward_relative``).

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: :class:`RelativeConfig`.
        ref_rewards: ``[B, M]`` reference responses' scores (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``par_relative_tanh/mean``, ``par_relative_tanh/ref_mean``.

    Differences from the paper / released code:
        None. The code's fitted-polynomial and arctan variants are not here.

    Example:
        >>> r, _ = par_relative_tanh(torch.tensor([2.0]), torch.ones(1, 1), cfg=RelativeConfig(), group_id=None,
        ...                          lengths=None, truncated=None, max_length=1, ref_rewards=torch.tensor([[1.0, 3.0]]))
        >>> r.tolist()
        [0.0]
    """
    return _relative("par_relative_tanh", torch.tanh, rewards, ref_rewards, cfg.max_refs)


@dataclass(frozen=True)
class LscConfig:
    """Options of the log-sigmoid-centred baseline."""

    percentile: float = 0.85
    """Centre: this quantile of a normal fitted to each row's reference rewards (the code's 0.85)."""
    ref_std: RefStd = "population"
    """Std of the normal fit: population (the rewrite, ``std(unbiased=False)``) or sample (the old code's
    ``utils.std``, Bessel-corrected; 0 when M = 1)."""
    max_refs: int | None = None
    """Use the first max_refs references of each row; None: all M supplied (the old code uses all)."""

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 1:
            raise ValueError(f"par_lsc percentile must be in (0, 1), got {self.percentile}")
        if self.ref_std not in get_args(RefStd):
            raise ValueError(f"par_lsc ref_std must be one of {list(get_args(RefStd))}, got {self.ref_std!r}")
        _check_max_refs("par_lsc", self.max_refs)


@register(
    "reward_shaper",
    "par_lsc",
    config=LscConfig,
    paper=PAPER,
    metrics=("par_lsc/mean", "par_lsc/centre_mean"),
    needs=("ref_rewards",),
)
def par_lsc(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: LscConfig,
    group_id: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
    max_length: int,
    ref_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LSC baseline: r_RL = log sigmoid(r - r_85), r_85 = mean_ref + Phi^-1(0.85) std_ref of each row's references.

    Paper: PAR, arXiv:2502.18770, the "LSC" (log-sigmoid-centred) baseline of Wang et al. (arXiv:2402.00742);
    code ``reward_lsc``: the percentile of a normal fitted to the row's reference rewards,
    Phi^-1(0.85) = 1.03643. Bounded above by 0.

    Args:
        rewards: ``[B]`` reward-model scores.  mask, group_id, lengths, truncated, max_length: unused.
        cfg: :class:`LscConfig`.
        ref_rewards: ``[B, M]`` reference responses' scores (``needs``).

    Returns:
        ``(rewards [B], metrics)``. Metric keys: ``par_lsc/mean`` (mean r_RL), ``par_lsc/centre_mean`` (mean r_85).

    Differences from the paper / released code:
        The std estimator is not in the paper: population by default (the rewrite), ``ref_std="sample"`` for
        the old code's Bessel-corrected std (whose ``norm.ppf`` also adds 1e-5 to the scale, not here). The
        old code fits all stored references, not the first ``reward_maxref``.

    Example:
        >>> r, _ = par_lsc(torch.tensor([2.0]), torch.ones(1, 1), cfg=LscConfig(), group_id=None, lengths=None,
        ...                truncated=None, max_length=1, ref_rewards=torch.tensor([[1.0, 3.0]]))
        >>> round(r.item(), 4)  # r_85 = 2 + 1.03643 * 1
        -1.34
    """
    refs = _refs(ref_rewards, rewards, cfg.max_refs, "par_lsc")  # [B, M]
    m = refs.shape[-1]
    dev2 = (refs - refs.mean(-1, keepdim=True)).square().sum(-1)  # [B]
    std = (dev2 / (max(m - 1, 1) if cfg.ref_std == "sample" else m)).sqrt()  # [B]
    z = float(torch.special.ndtri(torch.tensor(cfg.percentile, dtype=torch.float64)))
    centre = refs.mean(-1) + z * std  # [B]
    shaped = torch.nn.functional.logsigmoid(rewards.detach().float() - centre)  # [B]
    return shaped.to(rewards.dtype), {"par_lsc/mean": shaped.mean(), "par_lsc/centre_mean": centre.mean()}


__all__ = ["LscConfig", "ParConfig", "RelativeConfig", "par", "par_centered", "par_lsc", "par_relative_tanh"]
