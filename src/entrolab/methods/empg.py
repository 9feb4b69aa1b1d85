"""EMPG (Wang et al., arXiv 2509.09265): entropy-modulated policy gradients for long-horizon agents.

The policy-gradient norm grows with the policy's entropy, so confident steps learn slowly and uncertain steps
loudly. EMPG rescales each step's share of the trajectory advantage by its confidence (a batch-normalised
exp(-k H) of the step's mean token entropy) and adds a "future clarity" bonus for steps whose *next* step is
confident. A step is a turn of a multi-turn episode (``step_ids`` = the turn index on its model tokens); in a
single-turn run the caller's ``step_ids`` are newline-delimited reasoning steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.registry import register

METRICS = (
    "adv/mean",
    "adv/std",
    "empg/step_entropy_mean",
    "empg/scale_min",
    "empg/scale_max",
    "empg/bonus_mean",
    "empg/steps_mean",
)


@dataclass(frozen=True)
class EMPGConfig:
    """Options of EMPG's modulated step advantage (defaults: the authors' project-page pseudocode)."""

    k: float = 1.0
    """Steepness of the self-calibrating scale g = exp(-k H_hat) / mean exp(-k H_hat) (0: g = 1)."""
    k_future: float = 1.0
    """k' of the future-clarity bonus f = exp(-k' H_hat) of the next step (the pseudocode's k_f)."""
    zeta: float = 0.1
    """Weight of the future-clarity bonus (0: no bonus)."""
    eps_h: float = 1e-8
    """Added to max - min H in the min-max normalisation and to the batch mean of exp(-k H_hat), as the code."""
    final_std: bool = False
    """Also divide the final, zero-mean step advantages by their batch std (+ eps); the pseudocode only
    subtracts the mean."""
    eps: float = 1e-6
    """Added to the group std of the GRPO advantage (and to the batch std when ``final_std``)."""
    norm_by_std: bool = True
    """Divide the trajectory advantage by the group std (GRPO); False leaves r - mean_g r (Dr.GRPO)."""

    def __post_init__(self) -> None:
        for name in ("k", "k_future", "zeta", "eps_h", "eps"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ValueError(f"empg {name} must be finite and >= 0, got {value}")


def step_sums(
    values: torch.Tensor, mask: torch.Tensor, step_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-(row, step) sums of ``values`` and token counts: (sums [B, K], counts [B, K], ids [B, T], keep [B, T]).

    Step k of row b is its model tokens (mask 1) with ``step_ids == k``; K = 1 + the largest such id; a step
    exists where its count is > 0. ``ids`` is each kept token's step (0 elsewhere), for gathering a step value
    back onto its tokens. Entries off ``keep`` never enter (garbage there changes nothing). A mask token with a
    negative step id raises.

    >>> s, n, _, _ = step_sums(torch.tensor([[1.0, 3.0, 9.0, 5.0]]), torch.tensor([[1, 1, 0, 1]]),
    ...                        torch.tensor([[0, 0, -1, 2]]))
    >>> s.tolist(), n.tolist()
    ([[4.0, 0.0, 5.0]], [[2.0, 0.0, 1.0]])
    """
    keep = mask.bool()
    if bool((keep & (step_ids < 0)).any()):
        raise ValueError("step_ids must be >= 0 on every mask token (-1 only on environment tokens and padding)")
    ids = torch.where(keep, step_ids, torch.zeros_like(step_ids)).long()  # [B, T]
    k = int(ids.max()) + 1 if bool(keep.any()) else 1
    w = keep.to(values.dtype)
    counts = torch.zeros(values.shape[0], k, dtype=values.dtype, device=values.device).scatter_add(1, ids, w)
    x = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return torch.zeros_like(counts).scatter_add(1, ids, x), counts, ids, keep


def next_step_values(x: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """Each step's value of ``x`` at the next existing step of the same row, 0 at a row's last step.  [B, K]

    >>> next_step_values(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, False, True]]))
    tensor([[3., 0., 0.]])
    """
    k = x.shape[1]
    col = torch.arange(k, device=x.device).expand_as(x)
    idx = torch.where(exists, col, torch.full_like(col, k))  # [B, K] own column, K where no step
    later = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], k)], 1)  # [B, K] columns strictly after
    nxt = later.flip(1).cummin(1).values.flip(1)  # [B, K] first existing column after k (K: none)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(exists & (nxt < k), x.gather(1, nxt.clamp(max=k - 1)), zero)


@register(
    "advantage",
    "empg",
    config=EMPGConfig,
    paper="arXiv:2509.09265",
    metrics=METRICS,
    needs=("old_entropy", "step_ids"),
)
def empg(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: EMPGConfig,
    group_id: torch.Tensor,
    old_entropy: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EMPG: A_mod(i, t) = A_i g(H_t) + zeta f(H_{t+1}), zero-mean over the batch's steps, on the step's tokens.

    Paper: Harnessing Uncertainty: Entropy-Modulated Policy Gradients, arXiv:2509.09265, eqs. 10-12 as the
    authors' project-page pseudocode numbers them (eqs. 8 and 7 as a copy of it does). Over all S steps of the
    batch:

        H_t = mean of the behaviour policy's token entropies over step t's model tokens
        H_hat_t = (H_t - min_S H) / (max_S H - min_S H + eps_h)                      (eq. 12)
        g_t = exp(-k H_hat_t) / (mean_S exp(-k H_hat) + eps_h)                       (eq. 10, mean_S g = 1)
        f_t = exp(-k' H_hat_t)                                                       (eq. 11)
        A_mod(i, t) = A_i g_t + zeta f_{t+1}   (f_{t+1} = 0 at the trajectory's last step)    (eq. 8)
        A(i, t) = A_mod(i, t) - mean_S A_mod                                         (eq. 7)

    A_i is the GRPO advantage (r_i - mean_g r) / (std_g r + eps) of trajectory i; every model token of step t
    gets A(i, t). Low-entropy steps get g > 1 (a confident right step is reinforced, a confident wrong step
    punished harder), high-entropy steps g < 1.

    Args:
        rewards: ``[B]`` one outcome reward per episode (rows in any order; groups by ``group_id``).
        mask: ``[B, T]`` 1 on the model's tokens only (environment tokens and padding 0).
        cfg: :class:`EMPGConfig`.
        group_id: ``[B]`` the prompt group of each row (equal sizes >= 2).
        old_entropy: ``[B, T]`` the behaviour policy's token entropies (required; read on mask tokens only).
        step_ids: ``[B, T]`` long, the step (turn) of each model token, 0..K_i - 1; -1 on environment tokens and
            padding (required; read on mask tokens only).

    Returns:
        ``(adv [B, T], metrics)``, 0 off the mask, detached. Metric keys: ``adv/mean``, ``adv/std`` (over the
        mask tokens), ``empg/step_entropy_mean`` (mean H_t over the batch's steps), ``empg/scale_min`` and
        ``empg/scale_max`` (the range of g_t; both 1 when every step is equally confident),
        ``empg/bonus_mean`` (mean zeta f_{t+1} over steps, last steps' 0 included), ``empg/steps_mean`` (steps
        per non-empty row).

    Differences from the paper / released code:
        No code is released; the defaults (k = k' = 1, zeta = 0.1, eps 1e-8) and the two-pass structure are
        the authors' project-page pseudocode (empgseed-seed.github.io). Its second half (the bonus only when
        the same sample has a next step, i.e. f = 0 at the last step, and the final subtraction of the mean
        step advantage with no std division) was read in a third-party copy of that pseudocode (ARLArena
        ships the same with zeta = 0.05), not on the page itself. The pseudocode finds steps as the
        ``<|im_start|>assistant`` ... ``<|im_end|>`` segments of the response; here they are the caller's
        ``step_ids`` and H_t is the mean over the step's mask tokens. The base advantage is GRPO's
        (``norm_by_std=False``: Dr.GRPO's; the paper also runs on DAPO's). ``final_std`` (also divide by the
        batch std over steps) is not in the pseudocode. Statistics span the batch given (the code: the
        training batch). A group of one raises.

    Example:
        >>> h = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.9, 0.9, 0.3, 0.3]])  # two 2-step episodes
        >>> ids = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
        >>> adv, m = empg(torch.tensor([1.0, 0.0]), torch.ones(2, 4), cfg=EMPGConfig(zeta=0.0),
        ...               group_id=torch.zeros(2, dtype=torch.long), old_entropy=h, step_ids=ids)
        >>> [round(v, 4) for v in adv[:, ::2].flatten().tolist()]  # A = +-0.7071 times g, then centred
        [0.9092, 0.505, -0.496, -0.9182]
        >>> round(m["empg/scale_max"].item(), 4)
        1.4528
    """
    if old_entropy is None or step_ids is None:
        raise ValueError("empg needs old_entropy (the behaviour policy's token entropies) and step_ids")
    h = ops.upcast(old_entropy.detach())
    h = h if h.is_floating_point() else h.float()
    base, _ = grpo(rewards, mask, cfg=GRPOConfig(eps=cfg.eps, norm_by_std=cfg.norm_by_std), group_id=group_id)
    a = base.to(h.dtype)  # [B, 1] trajectory advantages
    sums, counts, ids, keep = step_sums(h, mask, step_ids)  # [B, K]
    step_h, exists = sums / counts.clamp(min=1), counts > 0  # [B, K] step entropies H_t
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    n_steps = exists.sum().to(h.dtype)
    if not bool(exists.any()):
        adv = torch.zeros_like(h)
        metrics = {key: zero.clone() for key in METRICS}
        return adv, metrics
    valid = step_h[exists]  # [S]
    lo, hi = valid.min(), valid.max()
    h_hat = torch.where(exists, (step_h - lo) / (hi - lo + cfg.eps_h), zero)  # [B, K]
    raw = torch.exp(-cfg.k * h_hat)  # [B, K]
    g = raw / (raw[exists].mean() + cfg.eps_h)  # [B, K] batch mean 1 (to eps_h)
    bonus = cfg.zeta * next_step_values(torch.exp(-cfg.k_future * h_hat), exists)  # [B, K]
    mod = torch.where(exists, a * g + bonus, zero)  # [B, K]
    mod = torch.where(exists, mod - mod.sum() / n_steps, zero)  # [B, K] zero mean over the batch's steps
    if cfg.final_std:
        std = (mod.pow(2).sum() / n_steps).sqrt()
        mod = mod / (std + cfg.eps)
    adv = torch.where(keep, mod.gather(1, ids), zero)  # [B, T]
    rows = exists.any(1)  # [B]
    metrics = {
        "adv/mean": ops.masked_mean(adv, keep),
        "adv/std": ops.masked_var(adv, keep).sqrt(),
        "empg/step_entropy_mean": valid.mean(),
        "empg/scale_min": g[exists].min(),
        "empg/scale_max": g[exists].max(),
        "empg/bonus_mean": bonus[exists].mean(),
        "empg/steps_mean": n_steps / rows.sum().clamp(min=1),
    }
    return adv, metrics


__all__ = ["EMPGConfig", "empg", "next_step_values", "step_sums"]
