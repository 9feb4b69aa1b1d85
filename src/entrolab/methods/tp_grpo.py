"""TP-GRPO (Tong et al., arXiv 2602.06422): incremental step rewards and turning points, on text reasoning steps.

In flow-matching GRPO each denoising step is an action; TP-GRPO scores step t by how much the deterministically
completed outcome moves because of it (d_t = v_t - v_{t-1}), and gives the *turning points* (steps that flip the
local trend to agree with the trajectory's overall trend) the reward still to come, v_T - v_{t-1}. Here a step is
a newline-delimited reasoning step, and the probe v_k after k steps is the implicit PRM's value of the prefix,
sigma(q_k) with q_k = beta sum_{s <= end of step k} log pi_prm / pi_ref (``entrolab.methods.prime``); the final
probe is the verifier's outcome. Each step's reward is z-scored per group and step index, as the per-timestep
``PerPromptStatTracker`` of the code, and every token of a step gets its step's advantage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from entrolab import ops
from entrolab.methods.prime import BETA, implicit_rewards
from entrolab.methods.process import returns_to_go, step_ends
from entrolab.registry import register

Main = Literal["increment", "delta_global"]
Probe = Literal["sigmoid", "logit"]
Terminal = Literal["outcome", "prm"]
Norm = Literal["step", "group"]
METRICS = (
    "adv/mean",
    "adv/std",
    "tp_grpo/steps_mean",
    "tp_grpo/turning_frac",
    "tp_grpo/balance_drop_frac",
    "tp_grpo/increment_absmean",
    "tp_grpo/delta_mean",
    "tp_grpo/bonus_mean",
)


def turning_points(
    v: torch.Tensor, n: torch.Tensor, first_step: bool = True, consistent: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(incremental rewards d [B, K], turning points bool [B, K]) of probes ``v [B, K + 1]`` (v_0 .. v_{n_b},
    anything after) for ``n [B]`` steps; step k (1-based) sits in column k - 1, 0 / False beyond n.

    d_k = v_k - v_{k-1}, s_k = sign(d_k) sign(v_n - v_0). A turning point: k = 1 with sign(d_1) sign(v_n - v_1) > 0
    (``consistent``; else s_1 > 0), only if ``first_step``; k >= 2 with s_{k-1} < 0 < s_k and, if ``consistent``,
    sign(d_k) sign(v_n - v_k) > 0 (so the last step never is one).

    >>> d, tp = turning_points(torch.tensor([[0.5, 0.4, 0.7, 0.8]]), torch.tensor([3]))
    >>> [round(x, 4) for x in d[0].tolist()], tp[0].tolist()
    ([-0.1, 0.3, 0.1], [False, True, False])
    """
    k = v.shape[1] - 1
    col = torch.arange(k, device=v.device)
    valid = col < n.unsqueeze(1)  # [B, K]
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    d = torch.where(valid, v[:, 1:] - v[:, :-1], zero)  # [B, K]
    v_end = v.gather(1, n.unsqueeze(1))  # [B, 1]
    s = d.sign() * (v_end - v[:, :1]).sign()  # [B, K]
    agrees = d.sign() * (v_end - v[:, 1:]).sign() > 0  # [B, K] the rest of the trajectory keeps d_k's direction
    s_prev = torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], 1)
    first = (agrees if consistent else s > 0) & (col == 0) & first_step
    inter = (s_prev < 0) & (s > 0) & (agrees | (not consistent)) & (col > 0)
    return d, (first | inter) & valid


def balance_turning_points(tp: torch.Tensor, cand: torch.Tensor, *ties: torch.Tensor) -> torch.Tensor:
    """The code's balanced bonus: when the batch has turning points of both signs of ``cand``, keep the
    m = min(#positive, #negative) largest |cand| of each sign (ties: the larger |ties[0]|, then |ties[1]|, ..., then
    batch order) and drop the rest (zero-``cand`` ones too); otherwise keep all.  bool [B, K], [B, K]... -> bool [B, K]

    >>> tp = torch.tensor([[True, True], [True, False]])
    >>> balance_turning_points(tp, torch.tensor([[0.3, 0.3], [-0.1, 0.0]]), torch.tensor([[0.1, 0.2], [0.0, 0.0]]))
    tensor([[False,  True],
            [ True, False]])
    """
    pos, neg = tp & (cand > 0), tp & (cand < 0)
    m = min(int(pos.sum()), int(neg.sum()))
    if m == 0:
        return tp
    kept = torch.zeros(tp.numel(), dtype=torch.bool, device=tp.device)
    for side in (pos, neg):
        idx = side.flatten().nonzero().squeeze(-1)  # [M] candidates, batch order
        order = torch.arange(idx.numel(), device=tp.device)
        for key in (*reversed(ties), cand):  # stable sorts, least significant key first: lexicographic
            order = order[torch.sort(key.abs().flatten()[idx][order], descending=True, stable=True).indices]
        kept[idx[order[:m]]] = True
    return kept.view(tp.shape)


@dataclass(frozen=True)
class TPGRPOConfig:
    """Options of TP-GRPO's turning-point advantage."""

    beta: float = BETA
    """beta of the implicit PRM's token rewards beta log pi_prm / pi_ref (PRIME's)."""
    probe: Probe = "sigmoid"
    """The process score after k steps: sigmoid(q_k) (the implicit PRM's outcome probability, v_0 = 1/2) or the
    raw q-value q_k (v_0 = 0)."""
    terminal: Terminal = "outcome"
    """The final probe v_K: the verifier's outcome reward (the paper's R_final; on the probe's scale, [0, 1] for
    sigmoid) or the PRM's own score of the whole response."""
    main: Main = "increment"
    """increment: r_k = d_k, a turning point's replaced by eta (v_K - v_{k-1}) (the release script);
    delta_global: r_k = (v_K - v_0) + eta 1[tp] d_k (the config file's default)."""
    eta: float = 1.0
    """Scale of the turning-point reward (0: plain incremental rewards / the global trend)."""
    first_step: bool = True
    """Step 1 may be a turning point (the code's apply_first_step_bonus)."""
    consistent: bool = True
    """Turning points only where the rest of the trajectory keeps their direction (both of the code's
    select_*_only_from_consistent_trajectory, on in the script)."""
    balanced: bool = True
    """Keep equally many positive and negative turning points over the batch (use_balanced_bonus)."""
    norm: Norm = "step"
    """step: z-score per group and step index (the code's per-timestep trackers); group: over all steps of a
    group's responses (text steps are not aligned across responses as denoising steps are)."""
    eps: float = 1e-4
    """Added to the std (PerPromptStatTracker's 1e-4)."""
    unbiased: bool = False
    """Bessel-corrected std (the code's np.std is the population std)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("probe", self.probe, Probe),
            ("terminal", self.terminal, Terminal),
            ("main", self.main, Main),
            ("norm", self.norm, Norm),
        ):
            if value not in get_args(allowed):
                raise ValueError(f"tp_grpo {name} must be one of {list(get_args(allowed))}, got {value!r}")
        if not 0 < self.beta < float("inf"):
            raise ValueError(f"tp_grpo beta must be finite and > 0, got {self.beta}")
        if not 0 <= self.eta < float("inf"):
            raise ValueError(f"tp_grpo eta must be finite and >= 0, got {self.eta}")
        if not 0 <= self.eps < float("inf"):
            raise ValueError(f"tp_grpo eps must be finite and >= 0, got {self.eps}")


def _zscore(r: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...], eps: float, unbiased: bool) -> torch.Tensor:
    """(r - mean) / (std + eps) over the valid entries along ``dims`` (0 where the std and eps are both 0)."""
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    w = valid.to(r.dtype)
    cnt = w.sum(dims, keepdim=True)
    mean = (r * w).sum(dims, keepdim=True) / cnt.clamp(min=1)
    var = ((r - mean) ** 2 * w).sum(dims, keepdim=True) / (cnt - 1 if unbiased else cnt).clamp(min=1)
    den = var.sqrt() + eps
    return torch.where(valid & (den > 0), (r - mean) / torch.where(den > 0, den, 1.0), zero)


@register(
    "advantage",
    "tp_grpo",
    config=TPGRPOConfig,
    paper="arXiv:2602.06422",
    metrics=METRICS,
    needs=("prm_logp", "ref_logp", "step_ids"),
)
def tp_grpo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: TPGRPOConfig,
    group_id: torch.Tensor,
    prm_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TP-GRPO: incremental step rewards of a process score, turning points given the reward to come, z-scored.

    Paper: TurningPoint-GRPO, arXiv:2602.06422 (equations as its release script ``common_op3.sh`` runs them).
    Probes v_0 .. v_K of a response with K steps (v_k = sigmoid(q_k), q_k the implicit PRM's q-value at the end
    of step k; v_0 = sigmoid(0); v_K = the outcome reward):

        d_k = v_k - v_{k-1}, Delta = v_K - v_0,  s_k = sign(d_k) sign(Delta)
        tp_1: sign(d_1) sign(v_K - v_1) > 0;  tp_k (k >= 2): s_{k-1} < 0 < s_k and sign(d_k) sign(v_K - v_k) > 0
        r_k = eta B_k = eta sum_{j >= k} d_j = eta (v_K - v_{k-1}) at a (balanced) turning point, else d_k
        A_k = (r_k - mean) / (std + eps) over the group's k-th steps;  A_t = A_{k(t)} on every token of step k

    ``main="delta_global"``: r_k = Delta + eta 1[tp_k] d_k. Balancing (over the batch): if turning points of both
    signs of Delta (delta_global: of d_k) occur, keep the min(#pos, #neg) largest |.| of each sign.

    Args:
        rewards: ``[B]`` outcome (verifier) rewards; the final probe under ``terminal="outcome"``.
        mask: ``[B, T]`` response tokens that count.
        cfg: :class:`TPGRPOConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2, any order).
        prm_logp: ``[B, T]`` log-probs under the implicit PRM (required).
        ref_logp: ``[B, T]`` log-probs under its frozen reference (required).
        step_ids: ``[B, T]`` long, each token's reasoning step (-1 on padding; required); the last masked token
            of a row always ends a step.

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, detached. Metric keys: ``adv/mean``, ``adv/std`` (masked
        tokens), ``tp_grpo/steps_mean`` (steps per non-empty row), ``tp_grpo/turning_frac`` (kept turning points
        per step), ``tp_grpo/balance_drop_frac`` (turning points dropped by balancing), ``tp_grpo/increment_absmean``
        (mean |d_k|), ``tp_grpo/delta_mean`` (mean Delta over non-empty rows), ``tp_grpo/bonus_mean`` (mean
        turning-point reward eta B_k, delta_global: eta d_k, over kept turning points).

    Differences from the paper / released code:
        The paper's probe v_t is the reward of an ODE completion after t stochastic denoising steps (T extra
        reward evaluations); text has no deterministic completion, so the implicit PRM's value of the prefix
        stands in (no extra rollouts; optimistic, a soft-max over reference completions), v_0 = 1/2 for every
        response where R_ODE is per sample. Denoising steps are aligned across a group (same timesteps); text
        steps are not, so ``norm="step"`` compares the k-th steps of different responses literally and
        ``norm="group"`` pools a group's steps. A step's advantage goes to each of its tokens (the step's
        log-prob is their sum). Balancing spans the batch given (the code: one sampling batch of 3-9 images per
        process) and breaks the code's ties of |Delta| (all of them with binary outcomes) by |B_k|, then |d_k|, then
        batch order (the code's topk order is arbitrary). Not offered:
        propagate_bonus_to_future_steps, select_only_positive_intermediate_step,
        indicator_wo_delta_global_constraint, the bonus Delta in place of v_K - v_{k-1} (use_sde_minus_rt=False),
        global_std, a delayed start (turn_on_bonus_global_step), separate consistency flags for step 1 and the
        rest. A group of one raises.

    Example:
        >>> lp = torch.tensor([[-0.1, 0.3, 0.1], [0.2, -0.1, -0.3]])  # token rewards (beta 1, ref 0), 1-token steps
        >>> cfg = TPGRPOConfig(beta=1.0, probe="logit", terminal="prm")  # v = [0, -.1, .2, .3], [0, .2, .1, -.2]
        >>> adv, m = tp_grpo(torch.zeros(2), torch.ones(2, 3), cfg=cfg, group_id=torch.zeros(2, dtype=torch.long),
        ...                  prm_logp=lp, ref_logp=torch.zeros(2, 3), step_ids=torch.tensor([[0, 1, 2], [0, 1, 2]]))
        >>> [[round(v, 2) for v in row] for row in adv.tolist()]  # r = [-0.1, 0.4, 0.1], [0.2, -0.4, -0.3]
        [[-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]]
        >>> round(m["tp_grpo/turning_frac"].item(), 4)  # step 2 of each row
        0.3333
    """
    if prm_logp is None or ref_logp is None or step_ids is None:
        raise ValueError("tp_grpo needs prm_logp, ref_logp (implicit-PRM and reference log-probs) and step_ids")
    groups = ops.Groups(group_id)
    if groups.size < 2:
        raise ValueError(f"tp_grpo needs >= 2 samples per group, got {groups.size}")
    keep = mask.bool()
    _, q, _ = implicit_rewards(ops.upcast(prm_logp.detach()), ops.upcast(ref_logp.detach()), keep, cfg.beta)
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    b, t = keep.shape
    ends = step_ends(step_ids, keep)  # [B, T]
    n = ends.sum(1)  # [B] steps per row
    slot = torch.where(ends, ends.long().cumsum(1) - 1, t)  # [B, T] compact index of each end (t: none)
    q_k = torch.zeros(b, t + 1, dtype=q.dtype, device=q.device).scatter(1, slot, torch.where(ends, q, zero))[:, :t]
    col = torch.arange(t, device=q.device)
    valid = col < n.unsqueeze(1)  # [B, K = T] step k + 1 exists
    v = q_k.sigmoid() if cfg.probe == "sigmoid" else q_k  # [B, K]
    if cfg.terminal == "outcome":
        v = torch.where(col == (n - 1).unsqueeze(1), rewards.detach().to(q.dtype).unsqueeze(1), v)
    v0 = torch.full((b, 1), 0.5 if cfg.probe == "sigmoid" else 0.0, dtype=q.dtype, device=q.device)
    probes = torch.cat([v0, v], 1)  # [B, K + 1]
    d, tp_raw = turning_points(probes, n, cfg.first_step, cfg.consistent)  # [B, K]
    delta = probes.gather(1, n.unsqueeze(1)) - v0  # [B, 1]
    to_go = returns_to_go(d, valid)  # [B, K] B_k = v_K - v_{k-1}
    cand = delta.expand(-1, t) if cfg.main == "increment" else d
    tp_kept = balance_turning_points(tp_raw, cand, to_go, d) if cfg.balanced else tp_raw
    tp = tp_kept
    if cfg.main == "increment":
        bonus = cfg.eta * to_go
        tp = tp & (bonus != 0)  # the code keeps d_k where the bonus is exactly 0 (eta = 0)
        r = torch.where(tp, bonus, d)
    else:
        bonus = cfg.eta * d
        r = torch.where(valid, delta + torch.where(tp, bonus, zero), zero)
    dims = (1,) if cfg.norm == "step" else (1, 2)
    a = groups.rows(_zscore(groups.grid(r), groups.grid(valid), dims, cfg.eps, cfg.unbiased))  # [B, K]
    step_of = (ends.long().cumsum(1) - ends.long()).clamp(max=max(t - 1, 0))  # [B, T] step index of each token
    adv = torch.where(keep, a.gather(1, step_of), zero)  # [B, T]
    rows = (n > 0).to(q.dtype)
    n_steps, n_tp, n_raw = (x.sum().to(q.dtype) for x in (valid, tp, tp_raw))  # 0-dim counts
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "tp_grpo/steps_mean": ops.masked_mean(n.to(q.dtype), rows),
        "tp_grpo/turning_frac": n_tp / n_steps.clamp(min=1),
        "tp_grpo/balance_drop_frac": (n_raw - tp_kept.sum().to(q.dtype)) / n_raw.clamp(min=1),
        "tp_grpo/increment_absmean": d.abs().sum() / n_steps.clamp(min=1),
        "tp_grpo/delta_mean": ops.masked_mean(delta.squeeze(1), rows),
        "tp_grpo/bonus_mean": torch.where(tp, bonus, zero).sum() / n_tp.clamp(min=1),
    }
    return adv, metrics


__all__ = ["TPGRPOConfig", "balance_turning_points", "tp_grpo", "turning_points"]
