"""EPO's multi-turn form: the entropy bonus on every model token, the smoothing penalty only on late turns.

The ``epo`` regulariser (``entrolab.methods.epo``) is the single-turn EPO; its released code for agents gates the
smoothing term by the turn a token belongs to. ``epo_turns`` is that: ``epo``'s term where a token's turn is at
least ``from_turn``, its bonus alone before. ``epo_phase`` with ``target="epo_turns"`` supplies H_ref and beta(k).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

import torch

from entrolab import ops
from entrolab.methods.epo import EPOConfig, epo
from entrolab.registry import register


@dataclass(frozen=True)
class EPOTurnsConfig:
    """EPO's options (:class:`entrolab.methods.epo.EPOConfig`) plus the turn gate."""

    coef: float = 0.001
    """c_H, weight of the whole entropy term (``entropy_coeff``)."""
    smooth_coef: float = 1.0
    """c_s, weight of the smoothing penalty inside it."""
    low_ratio: float = 0.0
    """kappa_l: corridor floor = kappa_l * H_ref (reported runs 0; code default 0.8)."""
    high_ratio: float = 2.0
    """kappa_r: corridor ceiling = kappa_r * H_ref (reported runs 2.0; code default 1.2)."""
    mask_mode: Literal["token", "seq"] = "token"
    """token: each token's entropy is compared with the corridor; seq: the response's mean entropy."""
    code_faithful: bool = False
    """True: the released code's constant out_range_penalty outside the corridor (no gradient)."""
    out_range_penalty: float = 0.05
    """code_faithful only: penalty value outside the corridor."""
    from_turn: int = 0
    """The smoothing penalty applies to tokens of turns >= from_turn (0: every turn, which is ``epo``). The
    released code gates at max_step // 2 (25 of its 50-step episodes): set it to half the run's max_turns."""

    def __post_init__(self) -> None:
        if self.from_turn < 0:
            raise ValueError(f"epo_turns from_turn must be >= 0, got {self.from_turn}")
        self.epo_config()  # EPO's own checks

    def epo_config(self) -> EPOConfig:
        return EPOConfig(**{f.name: getattr(self, f.name) for f in fields(EPOConfig)})


@register(
    "regularizer",
    "epo_turns",
    config=EPOTurnsConfig,
    paper="arXiv:2509.22576",
    metrics=("epo/bonus_mean", "epo/smooth_mean", "epo/out_of_corridor_frac", "epo/gated_frac"),
    state=("ref_entropy", "smooth_weight"),
    needs=("step_ids",),
)
def epo_turns(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: EPOTurnsConfig,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    step_ids: torch.Tensor,
    state: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EPO per token with the multi-turn gate: -c_H H_t + 1[turn(t) >= from_turn] c_H c_s beta(k) L_smooth.

    Paper: EPO, arXiv:2509.22576 (entropy smoothing against the history of past steps, phase weight beta(k));
    the gate is the released agent code's (``WujiangXu/EPO``: smoothing on samples whose step index is at
    least ``max_step // 2``). Term of ``epo`` where the gate is open, its bonus alone where it is shut.

    Args:
        logp: unused.  old_logp: unused.  ref_logp: unused.
        mask: ``[B, T]`` 1 on the model tokens trained on (observations 0).
        cfg: :class:`EPOTurnsConfig`.
        entropy: ``[B, T]`` current entropies (carry the gradient).
        step_ids: ``[B, T]`` the turn of each model token (single-turn: the newline step), -1 elsewhere.
        state: ``ref_entropy`` and ``smooth_weight`` from ``epo_phase`` (``target="epo_turns"``).

    Returns:
        ``(term [B, T], metrics)``, 0 where mask is 0. Metric keys: ``epo/bonus_mean``, ``epo/smooth_mean``,
        ``epo/out_of_corridor_frac`` (as ``epo``, over all tokens), ``epo/gated_frac`` (share of the tokens
        whose turn opens the gate).

    Differences from the paper / released code:
        The code trains one sample per agent step, so its gate is per sample; here an episode is one row and
        the gate is per token, by its turn (the same tokens are penalised). The code reads the key
        ``max_step`` (default 50) while its launcher sets ``max_steps``, so it always gates at 25; here
        ``from_turn`` is explicit and defaults to 0 (``epo`` exactly). Otherwise as ``epo``.

    Example:
        >>> h = torch.tensor([[0.5, 1.0, 2.5, 2.5]], requires_grad=True)
        >>> turns = torch.tensor([[0, 0, 1, 1]])
        >>> cfg = EPOTurnsConfig(coef=1.0, from_turn=1)
        >>> term, m = epo_turns(None, torch.ones(1, 4), cfg=cfg, entropy=h, old_logp=None, ref_logp=None,
        ...                     step_ids=turns, state={"ref_entropy": 1.0})
        >>> [round(x, 2) for x in term[0].tolist()], m["epo/gated_frac"].item()
        ([-0.5, -1.0, -2.0, -2.0], 0.5)
    """
    base = cfg.epo_config()
    full, metrics = epo(logp, mask, cfg=base, entropy=entropy, old_logp=old_logp, ref_logp=ref_logp, state=state)
    if cfg.from_turn == 0:
        gate = mask > 0
    else:
        gate = (step_ids >= cfg.from_turn) & (mask > 0)  # [B, T]
        bonus_only = torch.where(mask > 0, -cfg.coef * entropy, 0.0)  # [B, T]
        full = torch.where(gate, full, bonus_only)
    metrics["epo/gated_frac"] = ops.masked_mean(gate.float(), mask)
    return full, metrics


__all__ = ["EPOTurnsConfig", "epo_turns"]
