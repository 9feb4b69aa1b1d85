"""What a TRL ``GRPOConfig`` means in entrolab's terms, and how TRL normalises each loss type.

Pure functions over the config's attributes (no TRL import), so they are tested without TRL:

- :func:`trl_methods`: the methods a run uses, from ``methods=`` over the meaning of TRL's own fields
  (``loss_type`` -> the aggregation, ``epsilon`` / ``epsilon_high`` -> ``ppo_clip``'s clip range, ``beta`` ->
  a ``kl`` term as TRL computes it, ``entropy_coef`` -> ``entropy_bonus``, ``top_entropy_quantile`` ->
  ``forking_tokens`` as TRL selects, ``scale_rewards`` -> the GRPO advantage's std). A TRL setting entrolab
  cannot honour yet fails here, before any work, naming the setting.
- :func:`loss_counts`: the :class:`~entrolab.update.Counts` that make entrolab's aggregation divide exactly as
  TRL's loss type does under gradient accumulation and several processes.
"""

from __future__ import annotations

from typing import Any, Literal

from entrolab.integrations.choice import MethodSpec, resolve_methods
from entrolab.update import Counts

SUPPORTED = ((1, 16), (1, 17))  # the TRL range whose private hooks the adapter overrides: >= 1.16, < 1.17

# TRL loss_type -> the entrolab aggregation that divides as it does (with :func:`loss_counts`)
AGGREGATION_OF = {
    "grpo": "seq-mean-token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "bnpo": "token-mean",  # per micro-batch token count (count rule "micro_batch")
    "luspo": "seq-mean-token-sum",
    "cispo": "token-mean",
    "sapo": "seq-mean-token-mean",
    "vespo": "token-mean",
}
OWN_LOSSES = ("cispo", "sapo", "vespo")  # TRL's loss types with a policy loss of their own (not the clip)
CountRule = Literal["window", "micro_batch"]


def check_version(version: str) -> None:
    """Raise ImportError unless ``version`` is in the range the adapter's overridden hooks were written for."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        msg = f"cannot read TRL's version {version!r}; entrolab.integrations.trl needs trl>=1.16,<1.17"
        raise ImportError(msg) from None
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED
    if not (lo_major, lo_minor) <= (major, minor) < (hi_major, hi_minor):
        raise ImportError(
            f"entrolab.integrations.trl overrides private GRPOTrainer hooks (_generate_and_score_completions, "
            f"_calculate_rewards, _compute_loss) written against trl>=1.16,<1.17; installed: trl {version}. "
            "Install the tested range: pip install 'entrolab[trl]'"
        )


def _unsupported(args: Any, explicit_policy: bool, explicit_advantage: bool) -> None:
    """TRL settings with no entrolab equivalent yet: refused by name rather than silently ignored."""
    loss_type = getattr(args, "loss_type", "dapo")
    if loss_type not in AGGREGATION_OF:
        raise ValueError(f"unknown TRL loss_type {loss_type!r}; allowed: {sorted(AGGREGATION_OF)}")
    sequence = getattr(args, "importance_sampling_level", "token") == "sequence"
    if not explicit_policy and loss_type in OWN_LOSSES and sequence:
        raise ValueError(
            f"importance_sampling_level='sequence' with loss_type={loss_type!r} (a sequence-level {loss_type}) has "
            "no entrolab policy loss; use the token level, or loss_type in ['dapo', 'grpo', 'luspo'] (GSPO / LUSPO)"
        )
    clip_options = [
        n for n in ("delta", "off_policy_mask_threshold") if getattr(args, n, None) is not None
    ]  # options of the clipped losses only
    if not explicit_policy and clip_options and (loss_type in OWN_LOSSES or sequence):
        raise ValueError(
            f"GRPOConfig {clip_options} apply to TRL's token-level clipped loss, not to loss_type={loss_type!r} with "
            f"importance_sampling_level={getattr(args, 'importance_sampling_level', 'token')!r}"
        )
    checks = [
        ("use_adaptive_entropy", bool(getattr(args, "use_adaptive_entropy", False)), "TRL's entropy controller"),
    ]
    for name, bad, what in checks:
        if bad:
            hint = (
                "methods={'schedules': ['adaptive_entropy'], 'regularizers': ['entropy_bonus']}"
                if name == "use_adaptive_entropy"
                else "a method of entrolab's catalogue through methods="
            )
            raise ValueError(
                f"GRPOConfig.{name}={getattr(args, name)!r} ({what}) has no entrolab equivalent in the TRL adapter "
                f"yet; leave it at TRL's default and use {hint}"
            )


def _policy_settings(args: Any, eps: float, eps_high: float) -> tuple[dict[str, Any], list[str]]:
    """The policy loss TRL's loss_type / importance_sampling_level / delta / off_policy_mask_threshold mean."""
    loss_type = getattr(args, "loss_type", "dapo")
    if loss_type == "cispo":  # TRL's epsilon_high is the cap on the ratio itself
        return {"policy_loss": "cispo"}, ["cispo.bounds='trl'", f"cispo.eps_high={eps_high!r}"]
    if loss_type == "sapo":
        pos, neg = float(getattr(args, "sapo_temperature_pos", 1.0)), float(getattr(args, "sapo_temperature_neg", 1.05))
        return {"policy_loss": "sapo"}, [f"sapo.tau_pos={pos!r}", f"sapo.tau_neg={neg!r}"]
    if loss_type == "vespo":
        names = ("k_pos", "lambda_pos", "k_neg", "lambda_neg")
        return {"policy_loss": "vespo"}, [f"vespo.{n}={float(getattr(args, f'vespo_{n}')):.17g}" for n in names]
    if getattr(args, "importance_sampling_level", "token") == "sequence":  # GSPO's ratio (LUSPO's with luspo)
        name = "luspo" if loss_type == "luspo" else "gspo"
        return {"policy_loss": name}, [
            f"{name}.eps_low={eps!r}",
            f"{name}.eps_high={eps_high!r}",
            f"{name}.log_ratio_max=None",
        ]
    delta = getattr(args, "delta", None)
    threshold = getattr(args, "off_policy_mask_threshold", None)
    name = "ppo_clip" if threshold is None else "ppo_clip_opmask"
    fields = {} if threshold is None else {"policy_loss": name}
    options = [] if threshold is None else [f"{name}.threshold={float(threshold)!r}"]
    options += [f"{name}.eps_low={eps!r}", f"{name}.eps_high={eps_high!r}"]
    if delta is not None:  # INTELLECT-2's two-sided clip: the ratio capped at delta where A < 0, the dual clip
        options.append(f"{name}.dual_clip_c={float(delta)!r}")
    return fields, options


def engine_settings(args: Any) -> tuple[dict[str, Any], list[str]]:
    """The entrolab fields and options TRL's own settings mean (before ``methods=`` is laid over them)."""
    loss_type = getattr(args, "loss_type", "dapo")
    eps = float(getattr(args, "epsilon", 0.2))
    eps_high = getattr(args, "epsilon_high", None)
    fields: dict[str, Any] = {"aggregation": AGGREGATION_OF.get(loss_type, "token-mean")}
    policy, options = _policy_settings(args, eps, float(eps if eps_high is None else eps_high))
    fields.update(policy)
    options.append("grpo.eps=0.0001")  # TRL's std epsilon
    scale = getattr(args, "scale_rewards", "group")
    if scale in ("none", False):
        options.append("grpo.norm_by_std=False")
    elif scale == "batch":  # the group mean over the whole batch's std
        options.append("grpo.std_scope='batch'")
    if getattr(args, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":  # GDPO
        fields["advantage"] = "gdpo"
        options.append("gdpo.eps=0.0001")  # TRL's, in the group and the batch step
        weights = getattr(args, "reward_weights", None)
        if weights:
            options.append(f"gdpo.weights={tuple(float(w) for w in weights)!r}")
    beta = float(getattr(args, "beta", 0.0))
    regularizers: list[str] = []
    if beta != 0.0:
        regularizers.append("kl")
        options += [f"kl.coef={beta!r}", "kl.estimator='k3'", "kl.k3_max=None"]
        options.append(f"kl.ratio_weighted={bool(getattr(args, 'use_bias_correction_kl', True))!r}")
    coef = float(getattr(args, "entropy_coef", 0.0))
    if coef != 0.0:
        regularizers.append("entropy_bonus")
        options.append(f"entropy_bonus.coef={coef!r}")
    if regularizers:
        fields["regularizers"] = tuple(regularizers)
    q = float(getattr(args, "top_entropy_quantile", 1.0))
    if q < 1.0:
        fields["token_filters"] = ("forking_tokens",)
        options += [f"forking_tokens.rho={q!r}", "forking_tokens.selection='quantile'"]
        options.append("forking_tokens.drop='zero_weight'")
    return fields, options


def trl_methods(args: Any, methods: Any) -> tuple[MethodSpec, CountRule, list[str]]:
    """-> (the methods of the run, how the aggregation's counts are taken, notes on TRL settings that do not
    apply to the chosen policy loss). ``methods``: a preset name, an axis mapping, a ``MethodSpec`` or None."""
    mapping = methods if isinstance(methods, dict) else {}
    preset = methods if isinstance(methods, str) else mapping.get("preset")
    explicit_policy = "policy_loss" in mapping or isinstance(methods, MethodSpec)
    explicit_advantage = "advantage" in mapping or isinstance(methods, MethodSpec)
    explicit_aggregation = "aggregation" in mapping or isinstance(methods, MethodSpec)
    if preset is not None:
        from entrolab.grid import preset_of

        part = preset_of(str(preset)).method
        explicit_policy = explicit_policy or "policy_loss" in part
        explicit_advantage = explicit_advantage or "advantage" in part
        explicit_aggregation = explicit_aggregation or "aggregation" in part
    _unsupported(args, explicit_policy, explicit_advantage)
    fields, options = engine_settings(args)
    spec, notes = resolve_methods(methods, fields, options)
    if getattr(args, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":
        if spec.advantage != "gdpo":
            raise ValueError(
                "GRPOConfig.multi_objective_aggregation='normalize_then_sum' is GDPO's advantage, but methods= chose "
                f"advantage {spec.advantage!r}: drop it, or choose 'gdpo'"
            )
    bnpo = getattr(args, "loss_type", "dapo") == "bnpo" and not explicit_aggregation
    rule: CountRule = "micro_batch" if bnpo else "window"
    return spec, rule, notes


def loss_counts(
    aggregation: str,
    rule: CountRule,
    *,
    micro_tokens: float,
    micro_rows: int,
    window_tokens: float,
    grad_accum: int,
    num_processes: int,
    steps_per_generation: int,
    max_completion_length: int,
) -> Counts:
    """The counts under which entrolab's aggregation of one micro-batch divides as TRL's loss type does.

    TRL back-propagates each micro-batch's loss as returned (``loss_is_scaled_for_ga``) and DDP averages the
    gradients over processes, so per process:

    - token-mean (``dapo``): sum / (window_tokens / num_processes * grad_accum / steps_per_generation), with
      ``window_tokens`` the generation batch's loss tokens over all processes (TRL's ``num_items_in_batch``);
      rule ``micro_batch`` (``bnpo``): sum / (micro_tokens * grad_accum);
    - seq-mean-* (``grpo``, ``luspo``, ``dr_grpo``): sequences counted as ``micro_rows * grad_accum`` (TRL takes a
      mean over the micro-batch's rows, empty rows included, then divides by the accumulation steps);
      ``dr_grpo``'s length constant is ``max_completion_length``.
    """
    if rule == "micro_batch":
        tokens = micro_tokens * grad_accum
    else:
        tokens = window_tokens / num_processes * grad_accum / steps_per_generation
    seqs = float(micro_rows * grad_accum)
    return Counts(num_tokens=float(tokens), num_seqs=seqs, norm_len=float(max_completion_length))


__all__ = ["AGGREGATION_OF", "SUPPORTED", "check_version", "engine_settings", "loss_counts", "trl_methods"]
