"""The update as a pure function of tensors: token filters -> policy loss -> regularisers -> aggregation.

No model, no optimizer, no I/O: the built-in trainer, the benchmarks, the tests (and the TRL / verl adapters)
call the same functions on a :class:`~entrolab.batch.TokenBatch` and the log-probs / entropies of their own
forward pass.

- :class:`Methods`: the registry entries and configs a run uses, looked up once; ``configured`` applies a
  step's scheduled values (a config field by ``dataclasses.replace``, a declared controller-state name into
  ``state``).
- :func:`apply_filters`: the token filters of one optimisation minibatch, on rollout-time tensors.
- :func:`minibatch_stats`: minibatch-wide statistics (``scope="batch"``), the one helper every axis uses.
- :func:`compose`: the loss of one micro-batch, normalised by the minibatch's :class:`Counts`.

Regularisers return a ``[B, T]`` term (added to the per-token loss before aggregation) or a 0-dim batch scalar,
added once per micro-batch after aggregation, weighted by the micro-batch's share of the minibatch's
sequences (with k equal micro-batches each adds term / k, as verl's ``loss_scale_factor`` does).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from entrolab import catalogue
from entrolab.axes import Aggregation, PolicyLoss, Regularizer, TokenFilter
from entrolab.batch import TokenBatch
from entrolab.registry import Entry

# Extra inputs a method may ask for with ``needs=(...)``; anything else fails at start-up.
SUPPLIED_NEEDS = {
    "ref_logp": "log-probs of the frozen reference model (a second model is loaded)",
    "logits": "the tempered logits [B, T, V] of the update's forward pass",
    "advantages": "the advantages of the micro-batch",
    "old_entropy": "the rollout's (behaviour policy's) entropy [B, T]",
    "vocab_baseline": "sum_j p_j^2 (H + log p_j) of the behaviour policy, recorded while sampling",
    "generator": "the run's torch.Generator, for methods that draw random subsets",
    "answer_phase": "1 on the response tokens from its last answer marker ('answer:') on [B, T] (reward shapers)",
    "old_logp": "the rollout's (behaviour policy's) log-probs [B, T] (samplers, advantages, reward shapers)",
    "group_id": "the prompt group of each row [B] (token filters; advantages, shapers and samplers always get it)",
    "answer_ids": "an id per row of its extracted final answer [B] long: equal ids, equal answers; -1: none",
    "answer_logp": "teacher-forced log-probs of the reference answer after the response's reasoning [B, A]",
    "answer_mask": "1 on the reference answer's tokens of answer_logp [B, A]",
    "hidden_states": "the behaviour policy's last-layer hidden states at the response tokens [B, T, d]",
    "step": "the current step, 1-based (int)",
    "total_steps": "the run's number of steps (int)",
    "ref_rewards": "reward-model scores of M reference responses (the base policy's) of each row's prompt [B, M]",
    "step_ids": "the step of each response token [B, T] long: the turn of a multi-turn episode's model tokens (-1 on "
    "observations), else newline-separated reasoning steps; -1 on padding",
    "state_ids": "an id of the environment state each turn acted from, on the turn's model tokens [B, T] (-1 else)",
    "step_rewards": "the environment's reward of each turn on the turn's last model token [B, T]",
    "step_valid": "1 on the model tokens of turns whose action parsed and executed [B, T]",
    "progress": "SPA's progress estimates: each step's estimated contribution on its last model token [B, T]",
    "turns": "model turns of each episode [B] long",
    "tool_calls": "valid tool calls of each episode [B] long",
    "prm_logp": "log-probs of the response tokens under the implicit process reward model [B, T]",
    "reward_parts": "the K reward components of each sample before they are mixed into one reward [B, K]",
    "rm_heads": "the scores of each head of an ensemble reward model [B, K]",
    "labels": "soft preference labels of the pairs [N] (1: the chosen response is preferred)",
    "rollout_logp": "the sampler's log-probs [B, T]; asking for them makes old_logp the trainer's own log-probs of "
    "the policy before the update (one more teacher-forced pass), as verl's old_log_prob and TRL's old_per_token_logps",
    "greedy_rewards": "the reward of one greedy rollout of each row's prompt [B] (ReMax's baseline)",
    "sum_pi_sq": "sum_v pi(v | context)^2 of the behaviour policy at each response token [B, T], recorded at rollout",
}


class MethodChoice(Protocol):
    """What :class:`Methods` reads: a ``TrainConfig`` has it; an adapter can build one from a mapping."""

    advantage: str
    policy_loss: str
    aggregation: str
    reward_shapers: tuple[str, ...]
    token_filters: tuple[str, ...]
    regularizers: tuple[str, ...]
    schedules: tuple[str, ...]
    samplers: tuple[str, ...]

    def method_options(self) -> dict[str, dict[str, Any]]: ...


Pair = tuple[Entry, Any]


class Methods:
    """The entries and configs one run uses; ``state`` holds each method's controller values for this step."""

    def __init__(self, choice: MethodChoice) -> None:
        opts = choice.method_options()

        def pick(axis: str, name: str) -> Pair:
            entry = catalogue.get(axis, name)
            return entry, entry.make_config(opts.get(name))

        self.advantage = pick("advantage", choice.advantage)
        self.policy_loss = pick("policy_loss", choice.policy_loss)
        self.aggregation = catalogue.get("aggregation", choice.aggregation)
        self.shapers = [pick("reward_shaper", n) for n in choice.reward_shapers]
        self.filters = [pick("token_filter", n) for n in choice.token_filters]
        self.regularizers = [pick("regularizer", n) for n in choice.regularizers]
        self.schedules = [pick("schedule", n) for n in choice.schedules]
        self.samplers = [pick("sampler", n) for n in getattr(choice, "samplers", ())]
        self.state: dict[str, dict[str, float]] = {}
        needs = {n for e, _ in self.trained() for n in e.needs}
        self.shaper_needs = {n for e, _ in self.shapers for n in e.needs}
        sampler_needs = {n for e, _ in self.samplers for n in e.needs}
        provided = set(self.advantage[0].provides)  # extra per-sample tensors the advantage returns
        wanted = needs | self.shaper_needs | sampler_needs | set(self.advantage[0].needs)
        unknown = sorted(wanted - set(SUPPLIED_NEEDS) - provided)
        if unknown:
            providers = sorted(
                f"{e.name} ({', '.join(e.provides)})" for e in catalogue.entries()["advantage"] if e.provides
            )
            raise ValueError(
                f"a chosen method needs {unknown}, which the caller cannot supply: {sorted(SUPPLIED_NEEDS)}"
                + (f"; an advantage provides them: {providers}" if providers else "")
            )
        self.needs = needs

    def trained(self) -> list[Pair]:
        """The policy loss, filters and regularisers: the methods that see the update's tensors."""
        return [self.policy_loss, *self.filters, *self.regularizers]

    def settable(self) -> list[Pair]:
        """Every method a schedule may set an option of."""
        return [self.advantage, self.policy_loss, *self.shapers, *self.filters, *self.regularizers]

    def configured(self, values: Mapping[str, Any]) -> Methods:
        """A copy for one step: ``"method.field" -> value`` sets a config field, or a declared state value."""
        if not values:
            return self
        by_name: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            name, _, fld = key.rpartition(".")
            by_name.setdefault(name, {})[fld] = value
        pairs = self.settable()
        missing = sorted(set(by_name) - {e.name for e, _ in pairs})
        if missing:
            raise ValueError(f"a schedule sets options of {missing}, which this run does not use")
        new = copy.copy(self)
        new.state = {k: dict(v) for k, v in self.state.items()}

        def upd(pair: Pair) -> Pair:
            entry, c = pair
            fields = by_name.get(entry.name)
            if not fields:
                return pair
            state = {k: v for k, v in fields.items() if k in entry.state}
            if state:
                new.state.setdefault(entry.name, {}).update(state)
            config = {k: v for k, v in fields.items() if k not in entry.state}
            if not config:
                return pair
            try:
                return entry, dataclasses.replace(c, **config)
            except TypeError:
                allowed = sorted({f.name for f in dataclasses.fields(c)} | set(entry.state)) if c is not None else []
                raise ValueError(
                    f"a schedule set {sorted(config)} of {entry.name!r}, which has no such option; allowed: {allowed}"
                ) from None

        new.advantage, new.policy_loss = upd(self.advantage), upd(self.policy_loss)
        new.shapers = [upd(p) for p in self.shapers]
        new.filters = [upd(p) for p in self.filters]
        new.regularizers = [upd(p) for p in self.regularizers]
        return new

    def check_schedules(self, metric_keys: Iterable[str], metric_prefixes: Iterable[str] = ()) -> None:
        """Each schedule's set keys name a field or state value of a selected method, and each metric it reads
        is one the run logs; raises one line naming the schedule and the bad key otherwise."""
        settable = {e.name: (e, c) for e, c in self.settable()}
        known = set(metric_keys)
        for e, _ in [*self.settable(), *self.schedules]:
            known.update(e.metrics)
        unverifiable = any(not e.metrics for e, _ in self.settable())  # a user method that declares none
        prefixes = tuple(metric_prefixes)
        for entry, scfg in self.schedules:
            for key in entry.sets(scfg) if entry.sets else ():
                name, _, fld = key.rpartition(".")
                if name not in settable:
                    raise ValueError(
                        f"schedule {entry.name!r} sets {key!r}, but this run does not use {name!r} "
                        f"(selected: {sorted(settable)})"
                    )
                e, c = settable[name]
                allowed = {f.name for f in dataclasses.fields(c)} if dataclasses.is_dataclass(c) else set()
                allowed |= set(e.state)
                if fld not in allowed:
                    raise ValueError(
                        f"schedule {entry.name!r} sets {key!r}, but {name!r} has no option or state {fld!r}; "
                        f"allowed: {sorted(allowed)}"
                    )
            for key in entry.reads(scfg) if entry.reads else ():
                if key not in known and not key.startswith(prefixes) and not unverifiable:
                    raise ValueError(
                        f"schedule {entry.name!r} reads metric {key!r}, which this run never logs; "
                        f"logged: {sorted(known)}"
                    )


@dataclass(frozen=True)
class Counts:
    """Normalisation constants of one optimisation minibatch, so micro-batching never changes the loss."""

    num_tokens: float
    num_seqs: float
    norm_len: float

    @classmethod
    def of(cls, batch: TokenBatch, norm_len: float) -> Counts:
        mask = batch.loss_mask
        return cls(float(mask.sum()), float((mask.sum(-1) > 0).sum()), float(norm_len))


def scope(cfg: Any) -> str:
    return getattr(cfg, "scope", "batch")


def _inputs(entry: Entry, available: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The declared ``needs`` of ``entry`` that ``available`` holds (not those passed by name anyway)."""
    return {k: available[k] for k in entry.needs if k in available and k not in skip}


def minibatch_stats(
    entry: Entry, cfg: Any, batch: TokenBatch, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor] | None:
    """Minibatch-wide statistics of ``entry`` (``stats=`` at registration, ``scope="batch"``), else None.

    Computed once per optimisation minibatch on rollout-time tensors: the loss mask after filters, the
    behaviour log-probs and entropies, the advantages, and the rollout extras or generator the method declares
    in ``needs``. Every axis gets them the same way.
    """
    if entry.stats is None or scope(cfg) != "batch":
        return None
    extra = _inputs(entry, {**batch.extras, "generator": generator})  # rollout extras and the generator it needs
    return entry.stats(
        mask=batch.loss_mask,
        old_logp=batch.old_logp,
        advantages=batch.advantages,
        entropy=batch.old_entropy,
        cfg=cfg,
        **extra,
    )


def slice_stats(stats: dict[str, torch.Tensor] | None, rows: slice, width: int) -> dict[str, torch.Tensor] | None:
    """The rows (and first ``width`` columns) of ``[B, T]`` statistics; scalars and ``[B]`` pass through."""
    if stats is None:
        return None
    return {k: v[rows, :width] if v.dim() == 2 else v for k, v in stats.items()}


def apply_filters(
    methods: Methods,
    batch: TokenBatch,
    micro_batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[TokenBatch, dict[str, float]]:
    """Run the token filters on one minibatch (per micro-batch for ``scope="micro_batch"``).

    -> the batch with ``loss_mask`` and ``token_weight`` updated, and token-weighted metrics. Filters see
    rollout-time tensors only, so running them first lets the aggregation's counts include every drop.
    """
    mask = batch.loss_mask
    weight = batch.weight
    metrics: dict[str, float] = {}
    b = len(batch)
    for entry, fcfg in methods.filters:
        mb = micro_batch_size if scope(fcfg) == "micro_batch" and micro_batch_size else b
        stats = minibatch_stats(entry, fcfg, batch.replace(loss_mask=mask), generator)
        available = {"generator": generator, "group_id": batch.group_id, **batch.extras}
        weights, masks, sums = [], [], {}
        total = max(float(mask.sum()), 1.0)
        for start in range(0, b, mb):
            sl = slice(start, start + mb)
            extra = _inputs(entry, {k: v[sl] if isinstance(v, torch.Tensor) else v for k, v in available.items()})
            if stats is not None:
                extra["stats"] = stats if mb == b else slice_stats(stats, sl, mask.shape[1])
            if entry.state:
                extra["state"] = methods.state.get(entry.name, {})
            token_filter: TokenFilter = entry.fn
            w, m, fm = token_filter(
                mask[sl],
                cfg=fcfg,
                entropy=batch.old_entropy[sl],
                old_logp=batch.old_logp[sl],
                advantages=batch.advantages[sl] if batch.advantages is not None else None,
                truncated=batch.truncated[sl],
                **extra,
            )
            weights.append(w)
            masks.append(m)
            accumulate(sums, fm, float(mask[sl].sum()))  # token-weighted over the slices
        weight, mask = weight * torch.cat(weights), torch.cat(masks)
        metrics.update({k: v / total for k, v in sums.items()})
    return batch.replace(loss_mask=mask, token_weight=weight), metrics


def compose(
    methods: Methods,
    batch: TokenBatch,
    logp: torch.Tensor,  # [b, T] log-probs of the current policy (with grad)
    entropy: torch.Tensor,  # [b, T] entropies of the current policy
    logits: torch.Tensor | None = None,  # [b, T, V], only when a method needs them
    *,
    counts: Counts,
    stats: Mapping[str, dict[str, torch.Tensor] | None] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar loss of one micro-batch and its metrics: policy loss x token weights + regularisers,
    reduced by the aggregation with the minibatch's ``counts``.

    ``batch`` must carry ``advantages``; ``stats`` maps a method name to its :func:`minibatch_stats` (already
    sliced to this micro-batch with :func:`slice_stats`). Metrics are masked means over this micro-batch's
    loss tokens (the caller averages them weighted by token count).
    """
    if batch.advantages is None:
        raise ValueError("compose needs a batch with advantages (TokenBatch.advantages is None)")
    stats = stats or {}
    mask = batch.loss_mask
    ref_logp = batch.extras.get("ref_logp")
    if ref_logp is None and "ref_logp" in methods.needs:
        raise ValueError("a chosen method needs ref_logp: put the reference log-probs in batch.extras['ref_logp']")
    available = {
        "logits": logits,
        "advantages": batch.advantages,
        "old_entropy": batch.old_entropy,
        "generator": generator,
        **batch.extras,
    }
    pl_entry, pl_cfg = methods.policy_loss
    extra = _inputs(pl_entry, available)
    if stats.get(pl_entry.name) is not None:
        extra["stats"] = stats[pl_entry.name]
    if pl_entry.state:
        extra["state"] = methods.state.get(pl_entry.name, {})
    policy_loss: PolicyLoss = pl_entry.fn
    loss, metrics = policy_loss(logp, batch.old_logp, batch.advantages, mask, cfg=pl_cfg, entropy=entropy, **extra)
    loss = loss * batch.weight
    metrics = dict(metrics)
    scalars = []
    for entry, rcfg in methods.regularizers:
        rextra = _inputs(entry, available, skip=("ref_logp",))
        if entry.state:
            rextra["state"] = methods.state.get(entry.name, {})
        if stats.get(entry.name) is not None:
            rextra["stats"] = stats[entry.name]
        regularizer: Regularizer = entry.fn
        term, rm = regularizer(
            logp, mask, cfg=rcfg, entropy=entropy, old_logp=batch.old_logp, ref_logp=ref_logp, **rextra
        )
        if term.dim() == 0:
            scalars.append(term)
        else:
            loss = loss + term
        metrics.update(rm)
    aggregation: Aggregation = methods.aggregation.fn
    total = aggregation(loss, mask, num_tokens=counts.num_tokens, num_seqs=counts.num_seqs, norm_len=counts.norm_len)
    if scalars:
        share = float((mask.sum(-1) > 0).sum()) / max(counts.num_seqs, 1.0)
        for s in scalars:
            total = total + s * share
    return total, metrics


def scale_warnings(methods: Methods, batch: TokenBatch, micro_batch_size: int | None = None) -> dict[str, str]:
    """Methods whose selection is degenerate at this minibatch's size (their registered ``scale`` hook): method
    name -> the warning, e.g. ``clip_cov selects 1 of 2,048 tokens (ratio 0.0002; ...) per minibatch``."""
    out = {}
    n_rows = len(batch)
    for entry, cfg in methods.trained():
        if entry.scale is None:
            continue
        per_micro = scope(cfg) == "micro_batch" and micro_batch_size is not None and micro_batch_size < n_rows
        n = int(batch.loss_mask[:micro_batch_size].sum()) if per_micro else int(batch.loss_mask.sum())
        warning = entry.scale(cfg, n)
        if warning:
            out[entry.name] = f"{warning} per {'micro-batch' if per_micro else 'minibatch'}"
    return out


def inactive_warnings(
    methods: Methods, sums: dict[str, float], metrics: Mapping[str, float], step: int, window: int = 10
) -> dict[str, str]:
    """Methods that acted on no token over the first ``window`` steps (their registered ``active`` metric stayed 0):
    adds this step's value to ``sums`` (kept by the caller across steps) and, at ``step == window``, returns a
    warning per such method, e.g. ``clip_cov acted on no token over the first 10 steps (clip/frac_cov = 0)``."""
    out = {}
    for entry, _ in methods.trained():
        if entry.active is None or step > window or entry.active not in metrics:
            continue
        sums[entry.name] = sums.get(entry.name, 0.0) + abs(float(metrics[entry.active]))
        if step == window and sums[entry.name] == 0.0:
            out[entry.name] = (
                f"{entry.name} acted on no token over the first {window} steps ({entry.active} = 0): "
                "its threshold is never crossed at this scale"
            )
    return out


def accumulate(sums: dict[str, float], metrics: Mapping[str, Any], weight: float) -> None:
    """``sums[k] += metrics[k] * weight`` for every key (tensors read as floats)."""
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + (v.item() if isinstance(v, torch.Tensor) else float(v)) * weight


__all__ = [
    "SUPPLIED_NEEDS",
    "Counts",
    "Methods",
    "accumulate",
    "apply_filters",
    "compose",
    "inactive_warnings",
    "minibatch_stats",
    "scale_warnings",
    "slice_stats",
]
