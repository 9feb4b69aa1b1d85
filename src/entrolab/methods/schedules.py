"""Controllers across steps (the ``schedule`` axis): the target-entropy controller of Skywork-OR1.

A schedule is called once per training step, before the rollout, with the previous step's logged metrics;
it returns the value that a field of another selected method takes for this step. Its state is a dict of
plain floats that the trainer checkpoints. Controllers that belong to one method family (EPO's phase weight,
SAFE's PID threshold, SIREN's anchor) live in that family's module.
"""

from __future__ import annotations

from dataclasses import dataclass

from entrolab.registry import register


@dataclass(frozen=True)
class AdaptiveEntropyConfig:
    """Options of the target-entropy coefficient controller."""

    target: float = 0.2
    """Target entropy in nats (Skywork-OR1 ``target_entropy`` and TRL ``entropy_target``: 0.2)."""
    delta: float = 1e-4
    """Step of the coefficient per training step (Skywork-OR1 scripts 1e-4; TRL ``entropy_coef_delta`` 0.005)."""
    coef_init: float = 0.0
    """Coefficient before any observation (Skywork-OR1 scripts ``ENTROPY_COEFF=0.0``)."""
    coef_min: float = 0.0
    """Lower clamp of the coefficient (Skywork-OR1 ``min_ent_coef`` 0; TRL ``entropy_coef_min`` 0)."""
    coef_max: float = 5e-3
    """Upper clamp of the coefficient (Skywork-OR1 ``max_ent_coef`` 0.005; TRL ``entropy_coef_max`` 1.0)."""
    gate: bool = True
    """Apply the coefficient only while the observed entropy is below target (alpha_k = c_k 1[e_k < target])."""
    observe: str = "entropy/token_mean"
    """Logged metric the controller reads; ``entropy/sampled_nll`` is what Skywork-OR1's code measures."""
    field: str = "entropy_bonus.coef"
    """The ``method.field`` the controller sets."""

    def __post_init__(self) -> None:
        if not self.target >= 0:
            raise ValueError(f"adaptive_entropy target must be >= 0, got {self.target}")
        if not self.delta >= 0:
            raise ValueError(f"adaptive_entropy delta must be >= 0, got {self.delta}")
        if not 0 <= self.coef_min <= self.coef_max:
            raise ValueError(f"adaptive_entropy needs 0 <= coef_min <= coef_max, got {self.coef_min}, {self.coef_max}")
        if not self.coef_min <= self.coef_init <= self.coef_max:
            raise ValueError(
                f"adaptive_entropy coef_init must be in [coef_min, coef_max] = [{self.coef_min}, {self.coef_max}], "
                f"got {self.coef_init}"
            )
        method, _, fld = self.field.partition(".")
        if not method or not fld:
            raise ValueError(f"adaptive_entropy field must look like 'method.field', got {self.field!r}")


@register(
    "schedule",
    "adaptive_entropy",
    config=AdaptiveEntropyConfig,
    paper="arXiv:2505.22312",
    sets=lambda cfg: (cfg.field,),
    reads=lambda cfg: (cfg.observe,),
)
def adaptive_entropy(
    state: dict[str, float],
    observed: dict[str, float],
    *,
    cfg: AdaptiveEntropyConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Target-entropy controller: raise the entropy-bonus coefficient while entropy is below target, else lower it.

    Paper: Skywork-OR1, arXiv:2505.22312, MAGIC loss, paragraph "Adaptive Entropy Control" (equation number
    not checked); code: SkyworkAI/Skywork-OR1 ``EntController``. With e_k the entropy observed on step k's
    rollout, the coefficient of step k + 1 is

        c_{k+1} = clip(c_k + delta * sign(target - e_k), coef_min, coef_max)
        alpha_{k+1} = c_{k+1} * 1[e_k < target]          (gate=True; alpha = c without the gate)

    Args:
        state: ``{}`` on the first step, then this function's previous ``state``: keys ``coef`` (c_k) and
            ``gate`` (1.0 while the last observation was below target).
        observed: the previous step's logged metrics; reads ``cfg.observe`` (default ``entropy/token_mean``).
            Empty on the first step, when c = ``coef_init`` is applied ungated.
        cfg: :class:`AdaptiveEntropyConfig`.
        step: 1-based index of the step about to run (unused).  total_steps: unused.

    Returns:
        ``(state, values)``; values is ``{cfg.field: alpha}``, by default ``{"entropy_bonus.coef": alpha}``.

    Differences from the paper / released code:
        At exactly e = target the coefficient is unchanged (Skywork-OR1's ``EntController`` decrements, TRL
        increments); the gate is strict, as Skywork-OR1 (TRL applies the coefficient while e <= target).
        Skywork-OR1's code observes -mean(old log-prob of the sampled tokens), the sampled-token NLL
        (``observe="entropy/sampled_nll"``); TRL and the default here observe the full-distribution entropy of
        the rollout. Defaults are Skywork-OR1's 7B scripts; TRL's are delta 0.005, coef_max 1.0.

    Example:
        >>> cfg = AdaptiveEntropyConfig(delta=0.001)
        >>> state, values = adaptive_entropy({}, {}, cfg=cfg, step=1, total_steps=10)
        >>> state, values = adaptive_entropy(state, {"entropy/token_mean": 0.1}, cfg=cfg, step=2, total_steps=10)
        >>> values
        {'entropy_bonus.coef': 0.001}
        >>> adaptive_entropy(state, {"entropy/token_mean": 0.3}, cfg=cfg, step=3, total_steps=10)[1]
        {'entropy_bonus.coef': 0.0}
    """
    coef, gate = state.get("coef", cfg.coef_init), state.get("gate", 1.0)
    if cfg.observe in observed:
        error = cfg.target - float(observed[cfg.observe])
        move = cfg.delta if error > 0 else -cfg.delta if error < 0 else 0.0
        coef = min(max(coef + move, cfg.coef_min), cfg.coef_max)
        gate = 1.0 if error > 0 else 0.0
    elif state:
        raise ValueError(f"adaptive_entropy reads {cfg.observe!r}, absent from the logged metrics {sorted(observed)}")
    applied = coef * gate if cfg.gate else coef
    return {"coef": coef, "gate": gate}, {cfg.field: applied}
