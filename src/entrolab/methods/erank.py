"""VERL (Huang et al., arXiv 2509.23808): GRPO plus a bonus from the effective rank of the response's hidden states.

Effective Rank (ER) of a response's hidden-state matrix measures exploration; its velocity (ERV) and
acceleration (ERA) along the response measure exploitation. Each response's (ERA, ERV, ER) is compared with
running baselines m_k (the ``erank_ema`` schedule keeps them, an EMA of past steps' batch means); ERA's
deviation gates between an exploration weight profile (on ER) and an exploitation one (on ERV), and the
positive part of the resulting bonus, capped at |A| / kappa, is added to the GRPO advantage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.registry import register

Placement = Literal["all_tokens", "last_token"]
Gate = Literal["era_sigmoid", "half", "sum"]
EmaInit = Literal["first", "zero"]
STATE = ("m_era", "m_erv", "m_er")  # the order of w_explore / w_exploit (the code's indicator_names)
OBSERVE = ("erank/era_mean", "erank/erv_mean", "erank/er_mean")
REL_EPS = 1e-8  # |m_k| + 1e-8 in the relative deviation (the code's epsilon)


@dataclass(frozen=True)
class ErankConfig:
    """Options of VERL's effective-rank advantage shaping (defaults: ``train.sh`` "GRPO_VERL")."""

    stride: int = 40
    """s: ER_j is taken on the first j s + 1 tokens (``--diff_stride 40``; the YAML default is 20)."""
    max_seq_len: int = 512
    """ERV and ERA use the last this many response tokens (``RepresentationMetricsCalculator`` default)."""
    gain: float = 2.0
    """g in tau = sigmoid(g delta_ERA) (``--modulation_gain 2.0``; YAML 1.5)."""
    kappa: float = 2.0
    """The bonus is capped at |A| / kappa (``adv_shaping_kappa``)."""
    scale: float = 1.0
    """S, the bonus's global weight (``aux_reward_global_weight`` with ``aux_fix True``)."""
    w_explore: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """Exploration profile on (ERA, ERV, ER) (``--reward_weights``): ER."""
    w_exploit: tuple[float, float, float] = (0.0, 1.0, 0.0)
    """Exploitation profile on (ERA, ERV, ER) (``--reward_weights_exploit``): ERV."""
    gate: Gate = "era_sigmoid"
    """era_sigmoid: w = tau w_explore + (1 - tau) w_exploit (the code's "PlanB"); half: tau = 0.5 ("FixTwo");
    sum: w = w_explore + w_exploit ("FixOne")."""
    clamp: float = 5.0
    """Relative deviations delta_k are clamped to [-clamp, clamp] (the code's 5)."""
    placement: Placement = "all_tokens"
    """all_tokens: the response's bonus is added to the advantage of every token, as a response-level shaping
    of the GRPO advantage; last_token: only to its last token (the released code)."""
    eps: float = 1e-6
    """Added to the GRPO group std (verl 1e-6)."""

    def __post_init__(self) -> None:
        if self.placement not in get_args(Placement):
            raise ValueError(f"erank placement must be one of {list(get_args(Placement))}, got {self.placement!r}")
        if self.gate not in get_args(Gate):
            raise ValueError(f"erank gate must be one of {list(get_args(Gate))}, got {self.gate!r}")
        if self.stride < 1 or self.max_seq_len < 1:
            raise ValueError(f"erank stride and max_seq_len must be >= 1, got {self.stride}, {self.max_seq_len}")
        if not (self.kappa > 0 and self.clamp > 0 and self.scale >= 0 and self.eps >= 0):
            raise ValueError(
                f"erank needs kappa > 0, clamp > 0, scale >= 0, eps >= 0; got kappa={self.kappa}, "
                f"clamp={self.clamp}, scale={self.scale}, eps={self.eps}"
            )
        for name in ("w_explore", "w_exploit"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"erank {name} must be 3 weights on (ERA, ERV, ER), got {getattr(self, name)}")


def effective_rank(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """ER = exp(-sum_i p_i log p_i), p = sigma / sum sigma, sigma the singular values of each ``x [N, k, d]``
    over its rows where ``rows [N, k]`` is True, centred over those rows.  -> ``[N]``; 0 with fewer than 2
    rows (as the code); 1 when the centred rows are all 0 (entropy 0). Other rows' values never matter."""
    keep = rows.bool()
    count = keep.sum(-1)  # [N]
    if x.shape[1] == 0 or x.shape[0] == 0:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x = torch.where(keep.unsqueeze(-1), x, 0.0)  # [N, k, d]
    mean = x.sum(1, keepdim=True) / count.clamp(min=1).to(x.dtype).view(-1, 1, 1)  # [N, 1, d]
    sigma = torch.linalg.svdvals(torch.where(keep.unsqueeze(-1), x - mean, 0.0))  # [N, min(k, d)]
    p = sigma / sigma.sum(-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)  # [N, r]
    er = torch.exp(-torch.special.xlogy(p, p).sum(-1))  # [N]
    return torch.where(count >= 2, er, torch.zeros_like(er))


def rank_indicators(
    hidden: torch.Tensor, mask: torch.Tensor, *, stride: int, max_seq_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ER, ERV, ERA) of each response, each ``[B]``, from ``hidden [B, T, d]`` on the tokens where ``mask``.

    ER on all the response's tokens. ERV/ERA on its last ``max_seq_len`` tokens H: ER_j = ER(H[: j s + 1]) for
    j s < len(H); ERV_j = ER_j - mean_{i<j} ER_i (j >= 2); ERA_j = ERV_j - ERV_{j-1} (j >= 3); the response's
    ERV and ERA are the means over j, 0 where there is none (ERV needs > 2 s tokens, ERA > 3 s)."""
    keep = mask.bool()  # [B, T]
    b, t = keep.shape
    h = torch.where(keep.unsqueeze(-1), hidden.detach().to(torch.promote_types(hidden.dtype, torch.float32)), 0.0)
    er = effective_rank(h, keep)  # [B]
    length = keep.sum(-1)  # [B]
    kept = length.clamp(max=max_seq_len)  # [B]
    width = int(kept.max()) if b else 0
    col = torch.arange(width, device=keep.device)  # [W]
    valid = col < kept.unsqueeze(1)  # [B, W]
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # [B, T] valid positions first
    pos = order.gather(1, ((length - kept).unsqueeze(1) + col).clamp(max=max(t - 1, 0)))  # [B, W]
    tail = torch.where(valid.unsqueeze(-1), h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1])), 0.0)
    checkpoints = (kept - 1).clamp(min=0) // stride  # [B] j = 1 .. n with j s < len(H)
    n = int(checkpoints.max()) if b else 0
    grid = torch.zeros(b, n, dtype=h.dtype, device=h.device)  # [B, J] ER_j
    for j in range(1, n + 1):
        rows = (checkpoints >= j).nonzero().squeeze(1)  # responses that reach checkpoint j
        window = tail[rows, : j * stride + 1]  # [R, j s + 1, d]
        grid[rows, j - 1] = effective_rank(window, torch.ones(window.shape[:2], dtype=torch.bool, device=h.device))
    erv, era = velocity_acceleration(grid, checkpoints)
    return er, erv, era


def velocity_acceleration(grid: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ERV and ERA ``[B]`` of ``grid [B, J]`` = ER_1 .. ER_J, of which the first ``count [B]`` are real:
    ERV_j = ER_j - mean_{i<j} ER_i (j >= 2), ERA_j = ERV_j - ERV_{j-1} (j >= 3); 0 where there is none."""
    b, n = grid.shape
    step = torch.arange(n, device=grid.device)  # [J] 0-based j - 1
    active = step < count.unsqueeze(1)  # [B, J]
    grid = torch.where(active, grid, torch.zeros_like(grid))  # [B, J]
    history = torch.cat([grid.new_zeros(b, 1), grid.cumsum(1)[:, :-1]], 1) / step.clamp(min=1)  # [B, J]
    velocity = grid - history  # [B, J] ERV_j (j >= 2)
    accel = velocity - torch.cat([velocity.new_zeros(b, 1), velocity[:, :-1]], 1)  # [B, J] ERA_j (j >= 3)
    erv = ops.masked_mean(velocity, active & (step >= 1), dim=-1)  # [B]
    era = ops.masked_mean(accel, active & (step >= 2), dim=-1)  # [B]
    return erv, era


def auxiliary(x: torch.Tensor, baseline: torch.Tensor, cfg: ErankConfig) -> torch.Tensor:
    """aux ``[B]`` from the indicators ``x [B, 3]`` = (ERA, ERV, ER) and their baselines ``baseline [3]``."""
    delta = ((x - baseline) / (baseline.abs() + REL_EPS)).clamp(-cfg.clamp, cfg.clamp)  # [B, 3]
    explore, exploit = x.new_tensor(cfg.w_explore), x.new_tensor(cfg.w_exploit)  # [3]
    if cfg.gate == "sum":
        w = (explore + exploit).expand_as(x)  # [B, 3]
    else:
        tau = torch.sigmoid(cfg.gain * delta[:, :1]) if cfg.gate == "era_sigmoid" else x.new_full((1, 1), 0.5)
        w = tau * explore + (1.0 - tau) * exploit  # [B, 3]
    return cfg.scale * (w * torch.tanh(delta)).sum(-1)  # [B]


def capped_bonus(aux: torch.Tensor, adv: torch.Tensor, kappa: float) -> torch.Tensor:
    """min(relu(aux), |A| / kappa), elementwise: what VERL adds to the advantage A."""
    return torch.minimum(torch.relu(aux).to(adv.dtype), adv.abs() / kappa)


@register(
    "advantage",
    "erank",
    config=ErankConfig,
    paper="arXiv:2509.23808",
    metrics=(
        "adv/mean",
        "adv/std",
        "erank/er_mean",
        "erank/erv_mean",
        "erank/era_mean",
        "erank/aux_mean",
        "erank/frac_bonus",
    ),
    needs=("hidden_states",),
    state=STATE,
)
def erank(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: ErankConfig,
    group_id: torch.Tensor,
    hidden_states: torch.Tensor,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VERL: A' = A + min(relu(aux), |A| / kappa), aux from the response's ER, ERV, ERA against running baselines.

    Paper: arXiv:2509.23808 (VERL); code: ``hf618/VERL`` ``metrics_utils.calculate_diffs_for_single_sample_
    optimized``, ``reward_manager_versions.RewardManager``, ``ray_trainer.compute_advantage``. A is the GRPO
    group z-score; x = (ERA, ERV, ER) of the response (:func:`rank_indicators`), m the baselines:

        delta_k = clamp((x_k - m_k) / (|m_k| + 1e-8), -5, 5);   tau = sigmoid(g delta_ERA)
        w = tau w_explore + (1 - tau) w_exploit;                 aux = S sum_k w_k tanh(delta_k)
        A' = A + min(relu(aux), |A| / kappa)

    Args:
        rewards: ``[B]`` outcome rewards.  mask: ``[B, T]`` 1 on the response tokens.
        cfg: :class:`ErankConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        hidden_states: ``[B, T, d]`` the behaviour policy's hidden states at the response tokens (detached).
        state: the baselines ``m_era``, ``m_erv``, ``m_er`` set by ``erank_ema``; empty (the first step): no
            bonus, A' = A.

    Returns:
        ``(adv [B, T], metrics)``, 0 where ``mask`` is 0. Metric keys: ``adv/mean``, ``adv/std`` (over the
        valid tokens, population std), ``erank/er_mean``, ``erank/erv_mean``, ``erank/era_mean`` (batch means
        of the indicators over all B responses, what ``erank_ema`` reads), ``erank/aux_mean`` (mean aux, 0
        without baselines), ``erank/frac_bonus`` (fraction of the B responses that have a token and a capped
        bonus > 0).

    Differences from the paper / released code:
        The paper's method section could not be read here (abstract only); the default adds each response's
        bonus to every token's advantage, the response-level reading of A' = A + min(relu(aux), |A|/kappa)
        for GRPO. The released code stores aux at the last response token only, so only that token's
        advantage changes: ``placement="last_token"``. In the released code aux is computed only when
        ``reward_manager.add_reward`` is True, which ``train.sh``'s "GRPO_VERL" sets False (with ``add_adv
        True``), so that recipe's bonus is 0 there. ER_j comes from singular values, as the code's
        ``original`` diff calculator (equal to it); its default ``optimized`` one takes sqrt of float32
        centred-Gram eigenvalues, whose rounding-level ones add small spurious sigma and raise ER_j slightly.
        ER is kept in float32 (the code stores it in bfloat16), without the code's 1e-8 inside the log. The
        code's dynamic S (an EMA of accuracy, ``aux_fix False``) and its ``add_reward`` route are not here.

    Example:
        >>> h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]])
        >>> cfg, gid = ErankConfig(stride=1), torch.zeros(2, dtype=torch.long)
        >>> adv, m = erank(torch.tensor([1.0, 0.0]), torch.ones(2, 3), cfg=cfg, group_id=gid, hidden_states=h,
        ...                state={"m_er": 1.5, "m_erv": 0.5, "m_era": 0.1})
        >>> [round(v, 4) for v in adv[:, 0].tolist()], round(m["erank/er_mean"].item(), 4)
        ([1.0607, -0.7071], 1.4643)
    """
    state = dict(state or {})
    missing = [k for k in STATE if k not in state]
    if state and missing:
        raise ValueError(f"erank state needs all of {list(STATE)} or none, missing {missing}")
    base, _ = grpo(rewards, mask, cfg=GRPOConfig(eps=cfg.eps), group_id=group_id)  # [B, 1]
    er, erv, era = rank_indicators(hidden_states, mask, stride=cfg.stride, max_seq_len=cfg.max_seq_len)  # [B]
    keep = mask.bool()  # [B, T]
    if state:
        x = torch.stack([era, erv, er], -1)  # [B, 3]
        aux = auxiliary(x, x.new_tensor([float(state[k]) for k in STATE]), cfg)  # [B]
    else:
        aux = er.new_zeros(er.shape)  # [B]
    a = base.squeeze(1)  # [B]
    bonus = capped_bonus(aux, a, cfg.kappa)  # [B]
    if cfg.placement == "all_tokens":
        at = keep  # [B, T]
    else:
        last = (torch.arange(keep.shape[1], device=keep.device) * keep).amax(-1, keepdim=True)  # [B, 1]
        at = keep & (torch.arange(keep.shape[1], device=keep.device) == last)  # [B, T] the last valid token
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    adv = torch.where(keep, base, zero) + torch.where(at, bonus.unsqueeze(1), zero)  # [B, T]
    std = ops.masked_var(adv, keep).sqrt()
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": std,
        "erank/er_mean": er.mean() if er.numel() else er.new_zeros(()),
        "erank/erv_mean": erv.mean() if erv.numel() else erv.new_zeros(()),
        "erank/era_mean": era.mean() if era.numel() else era.new_zeros(()),
        "erank/aux_mean": aux.mean() if aux.numel() else aux.new_zeros(()),
        "erank/frac_bonus": ((bonus > 0) & keep.any(-1)).to(a.dtype).mean() if bonus.numel() else a.new_zeros(()),
    }
    return adv, metrics


@dataclass(frozen=True)
class ErankEmaConfig:
    """Options of the running baselines of ``erank``."""

    alpha: float = 0.3
    """a in m <- (1 - a) m + a v, v the previous step's batch mean (``--reward_ema_alpha 0.3``; YAML 0.7)."""
    init: EmaInit = "first"
    """first: m starts at the first observation and step k's bonus uses m including step k - 1's means;
    zero: the released code, m starts at 0 and step k's bonus uses m before folding in step k - 1's means."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"erank_ema alpha must be in (0, 1], got {self.alpha}")
        if self.init not in get_args(EmaInit):
            raise ValueError(f"erank_ema init must be one of {list(get_args(EmaInit))}, got {self.init!r}")


@register(
    "schedule",
    "erank_ema",
    config=ErankEmaConfig,
    paper="arXiv:2509.23808",
    sets=lambda cfg: tuple(f"erank.{k}" for k in STATE),
    reads=lambda cfg: OBSERVE,
    metrics=(),
)
def erank_ema(
    state: dict[str, float],
    observed: Mapping[str, float],
    *,
    cfg: ErankEmaConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """VERL's baselines: an EMA of the previous steps' batch means of ER, ERV and ERA, the state of ``erank``.

    Paper: arXiv:2509.23808; code: ``RewardManager.mids`` (``reward_manager_versions.py``), updated from
    ``cal/overall/layer_1/<indicator>/mean`` of the previous step. With v_k the observed batch mean:

        m_k <- v_k on the first observation;   m_k <- (1 - a) m_k + a v_k afterwards

    Args:
        state: ``{}`` until the first observation, then ``m_era``, ``m_erv``, ``m_er``.
        observed: the previous step's logged metrics; reads ``erank/era_mean``, ``erank/erv_mean``,
            ``erank/er_mean`` (logged by ``erank``).
        cfg: :class:`ErankEmaConfig`.
        step: unused.  total_steps: unused.

    Returns:
        ``(state, values)``; values is ``{"erank.m_era": m, "erank.m_erv": m, "erank.m_er": m}`` once a step has
        been observed, ``{}`` before (step 1: no bonus).

    Differences from the paper / released code:
        The code starts the baselines at 0 and shapes step k with them before folding in step k - 1's means,
        so they trail one step more and step 2's deviations are clamped to +-5 (``init="zero"``); the default
        starts at the first observation and uses it at once. The code freezes the baselines while its aux is
        off (``add_reward False``); here they always update.

    Example:
        >>> cfg, obs = ErankEmaConfig(alpha=0.3), {"erank/era_mean": 1.0, "erank/erv_mean": 2.0, "erank/er_mean": 10.0}
        >>> erank_ema({}, {}, cfg=cfg, step=1, total_steps=9)
        ({}, {})
        >>> state, values = erank_ema({}, obs, cfg=cfg, step=2, total_steps=9)
        >>> state, values = erank_ema(state, {**obs, "erank/er_mean": 20.0}, cfg=cfg, step=3, total_steps=9)
        >>> values["erank.m_er"]
        13.0
    """
    if not all(k in observed for k in OBSERVE):
        if state:
            raise ValueError(f"erank_ema reads {list(OBSERVE)}, absent from the logged metrics {sorted(observed)}")
        return {}, {}
    seen = {s: float(observed[o]) for s, o in zip(STATE, OBSERVE, strict=True)}
    if cfg.init == "first":
        new = {k: v if not state else (1 - cfg.alpha) * state[k] + cfg.alpha * v for k, v in seen.items()}
        return new, {f"erank.{k}": v for k, v in new.items()}
    old = {k: float(state.get(k, 0.0)) for k in STATE}
    new = {k: (1 - cfg.alpha) * old[k] + cfg.alpha * v for k, v in seen.items()}
    return new, {f"erank.{k}": v for k, v in old.items()}


__all__ = [
    "ErankConfig",
    "ErankEmaConfig",
    "auxiliary",
    "capped_bonus",
    "effective_rank",
    "erank",
    "erank_ema",
    "rank_indicators",
    "velocity_acceleration",
]
