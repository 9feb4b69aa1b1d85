"""The entrolab trainer's loss function: verl's ``loss_fn(config, model_output, data, dp_group)``, in place of
``ppo_loss``, for the methods verl's policy-loss signature cannot serve.

Per micro-batch: the model output's log-probs and entropies and the data's response mask, old log-probs, old
entropies (verl's old-log-prob pass writes them as ``entropy``), advantages, ``rollout_is_weights`` and
``ref_log_prob`` become a :class:`~entrolab.batch.TokenBatch` (padded as ``ppo_loss`` pads them); entrolab's token
filters and batch-scope statistics run on it, gathered over the data-parallel group first, so every rank sees the
statistics of the whole data-parallel micro-batch; ``entrolab.update.compose`` gives the loss. No loss logic here.

Normalisation: verl passes ``batch_num_tokens`` (the mini-batch's response tokens summed over ranks),
``global_batch_size`` (its sequences) and ``dp_size``; the composer gets ``Counts(batch_num_tokens / dp_size,
global_batch_size / dp_size, norm_len)``, so the sum over micro-batches, averaged over ranks as data-parallel
gradient reduction does, is the loss of the whole mini-batch with verl's ``agg_loss`` normalisation (token-sum is
multiplied by ``dp_size``, as verl's). Two consequences of verl counting before the loss function runs: a
token filter's mask-out drop stays in token-mean's denominator (it scales the mini-batch's loss like a
zero-weight drop; per-sequence modes do honour it), and ``norm_len`` is ``loss_scale_factor``, else the
configured max response length (verl: the micro-batch's padded width).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from entrolab.batch import TokenBatch
from entrolab.integrations.choice import MethodSpec
from entrolab.integrations.verl.losses import methods_of
from entrolab.update import Counts, Methods, apply_filters, compose, minibatch_stats, scope, slice_stats

UNSUPPORTED_NEEDS = {
    "logits": "verl's model output carries log-probs and entropies, not logits",
    "vocab_baseline": "verl's rollout does not record the vocabulary baseline",
    "group_id": "the actor's micro-batches carry no prompt uids, so groups cannot be found there",
    "copo_global_adv": "verl's advantage estimator cannot hand extra tensors to the policy loss",
    "copo_weight": "verl's advantage estimator cannot hand extra tensors to the policy loss",
    "rollout_logp": "verl corrects the rollout itself: use its algorithm.rollout_correction (the same weights)",
    "sum_pi_sq": "verl's rollout does not record sum_v pi^2 per token for the entrolab loss",
}
GATHERED = ("attention_mask", "loss_mask", "old_logp", "old_entropy", "advantages", "token_weight")


def trainer_problems(methods: Methods) -> list[str]:
    """Why ``methods`` cannot run even in the entrolab trainer (empty: they can)."""
    out = [
        f"{e.name!r} needs {n}: {why}"
        for e, _ in methods.trained()
        for n, why in UNSUPPORTED_NEEDS.items()
        if n in e.needs
    ]
    out += [
        f"sampler {e.name!r} chooses groups before the update and may draw more rollouts, which verl's rollout "
        "owns: use verl's own algorithm.filter_groups (its DAPO recipe) instead"
        for e, _ in methods.samplers
    ]
    return out


def needs_gather(methods: Methods) -> bool:
    """Whether any filter runs or any trained method has batch-scope statistics (then rows are gathered)."""
    return bool(methods.filters) or any(e.stats is not None and scope(c) == "batch" for e, c in methods.trained())


def gather_batch(batch: TokenBatch, dp_group: Any) -> tuple[TokenBatch, slice]:
    """The rollout-time fields of every data-parallel rank's micro-batch, concatenated in rank order and padded to
    the widest -> (gathered batch, this rank's rows). Identity without a group of more than one rank."""
    import torch.distributed as dist

    if dp_group is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size(dp_group) < 2:
        return batch, slice(0, len(batch))
    world, rank = dist.get_world_size(dp_group), dist.get_rank(dp_group)
    b, t = batch.loss_mask.shape
    shape = torch.tensor([b, t], device=batch.loss_mask.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=dp_group)
    sizes = [int(s[0]) for s in shapes]
    bmax, tmax = max(sizes), max(int(s[1]) for s in shapes)

    def gather(x: torch.Tensor) -> torch.Tensor:
        """[b] or [b, T] (T: this rank's width; [b, 1] advantages stay narrow) -> every rank's rows."""
        target = (bmax,) if x.dim() == 1 else (bmax, tmax if x.shape[1] == t else x.shape[1])
        padded = x.new_zeros(target)
        padded[tuple(slice(0, n) for n in x.shape)] = x
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=dp_group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    changes = {k: gather(getattr(batch, k)) for k in GATHERED if getattr(batch, k) is not None}
    changes["truncated"] = gather(batch.truncated.to(torch.float32)).bool()
    changes["extras"] = {k: gather(v) for k, v in batch.extras.items()}
    total = sum(sizes)
    changes["group_id"] = torch.arange(total, device=batch.group_id.device)
    changes["prompt_ids"] = torch.zeros(total, 1, dtype=torch.long, device=batch.prompt_ids.device)
    changes["prompt_mask"] = torch.ones(total, 1, device=batch.prompt_mask.device)
    changes["response_ids"] = torch.zeros(total, tmax, dtype=torch.long, device=batch.response_ids.device)
    start = sum(sizes[:rank])
    return batch.replace(**changes), slice(start, start + b)


def _rows(batch: TokenBatch, rows: slice, width: int) -> TokenBatch:
    """This rank's rows of a gathered batch, cut back to its own width."""
    return batch.select(rows).trim(width)


def _seed(seed: int, step: int, batch: TokenBatch) -> int:
    """A seed equal on every rank for one gathered micro-batch (drawn subsets agree across ranks)."""
    key = f"{seed}:{step}:{float(batch.loss_mask.sum())}:{len(batch)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def _non_tensor(data: Any, key: str, default: Any) -> Any:
    from verl.utils import tensordict_utils as tu

    value = tu.get_non_tensor_data(data=data, key=key, default=default)
    return default if value is None else value


@dataclass
class EntrolabLoss:
    """``loss_fn(config, model_output, data, dp_group)`` for verl's ``set_loss_fn`` (bind ``config`` with
    ``functools.partial``): the methods of ``spec`` with this step's scheduled ``values``."""

    spec: MethodSpec
    values: Mapping[str, Any] = field(default_factory=dict)
    max_response_length: int | None = None
    seed: int = 0
    step: int = 0

    def methods(self) -> Methods:
        methods = methods_of(self.spec)
        problems = trainer_problems(methods)
        if problems:
            raise ValueError("not available in verl: " + "; ".join(problems))
        return methods.configured(dict(self.values))

    def batch(
        self, config: Any, model_output: Mapping[str, Any], data: Any
    ) -> tuple[TokenBatch, torch.Tensor, torch.Tensor, bool]:
        """(the micro-batch as a TokenBatch, current log-probs [b, T], current entropies [b, T], whether the data
        carries the rollout's entropies)."""
        from verl.workers.utils.padding import no_padding_2_padding

        if model_output.get("entropy") is None:
            raise ValueError("the entrolab loss needs the model output's entropy: set actor.calculate_entropy=True")
        logp = no_padding_2_padding(model_output["log_probs"], data)  # [b, T]
        entropy = no_padding_2_padding(model_output["entropy"], data)  # [b, T]
        names = ["response_mask", "old_log_probs", "advantages"]
        names += [k for k in ("rollout_is_weights", "ref_log_prob", "entropy") if k in data.keys()]
        td = data.select(*names).to_padded_tensor()
        mask = td["response_mask"].to(logp.dtype)  # [b, T]
        b, t = mask.shape
        lengths = mask.sum(-1)  # [b]
        if self.max_response_length:
            truncated = lengths >= self.max_response_length
        else:
            truncated = torch.zeros(b, dtype=torch.bool, device=mask.device)
        old_entropy = td["entropy"].to(logp.dtype) if "entropy" in names else None
        batch = TokenBatch(
            prompt_ids=torch.zeros(b, 1, dtype=torch.long, device=mask.device),
            prompt_mask=torch.ones(b, 1, device=mask.device),
            response_ids=torch.zeros(b, t, dtype=torch.long, device=mask.device),
            attention_mask=mask,
            loss_mask=mask.clone(),
            old_logp=td["old_log_probs"].to(logp.dtype),
            old_entropy=torch.zeros_like(mask) if old_entropy is None else old_entropy,
            group_id=torch.arange(b, device=mask.device),
            truncated=truncated,
            advantages=td["advantages"].to(logp.dtype),
            token_weight=td["rollout_is_weights"].to(logp.dtype) if "rollout_is_weights" in names else None,
            extras={"ref_logp": td["ref_log_prob"].to(logp.dtype)} if "ref_log_prob" in names else {},
        )
        return batch, logp, entropy, old_entropy is not None

    def counts(self, config: Any, data: Any, batch: TokenBatch) -> tuple[Counts, int]:
        """The mini-batch's counts per rank from verl's global batch info -> (counts, dp_size)."""
        dp = int(_non_tensor(data, "dp_size", 1))
        tokens = _non_tensor(data, "batch_num_tokens", None)
        seqs = _non_tensor(data, "global_batch_size", None)
        if dp > 1 and (tokens is None or seqs is None):
            raise ValueError("dp_size > 1 needs verl's batch_num_tokens and global_batch_size in the data")
        mask = batch.attention_mask
        tokens = float(mask.sum()) if tokens is None else float(tokens)
        seqs = float((mask.sum(-1) > 0).sum()) if seqs is None else float(seqs)
        norm_len = config.get("loss_scale_factor", None) or self.max_response_length or mask.shape[1]
        return Counts(tokens / dp, seqs / dp, float(norm_len)), dp

    def __call__(
        self, config: Any, model_output: Mapping[str, Any], data: Any, dp_group: Any = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        methods = self.methods()
        batch, logp, entropy, has_old_entropy = self.batch(config, model_output, data)
        if "ref_logp" in methods.needs and "ref_logp" not in batch.extras:
            raise ValueError("a chosen method needs ref_log_prob: set actor.use_kl_loss=True so verl computes it")
        if not has_old_entropy and (methods.filters or "old_entropy" in methods.needs):
            raise ValueError(
                "a chosen method needs the rollout's entropy (data['entropy'], written by verl's "
                "old-log-prob pass; bypass mode does not compute it)"
            )
        counts, dp = self.counts(config, data, batch)
        width = batch.loss_mask.shape[1]
        stats: dict[str, Any] = {}
        filter_metrics: dict[str, float] = {}
        generator = None
        if needs_gather(methods):
            full, rows = gather_batch(batch, dp_group)
            generator = torch.Generator(device="cpu").manual_seed(_seed(self.seed, self.step, full))
            full, filter_metrics = apply_filters(methods, full, None, generator)
            batch = _rows(full, rows, width)
            stats = {
                e.name: slice_stats(minibatch_stats(e, c, full, generator), rows, width) for e, c in methods.trained()
            }
        loss, metrics = compose(methods, batch, logp, entropy, counts=counts, stats=stats, generator=generator)
        if methods.aggregation.name == "token-sum":
            loss = loss * dp  # verl's agg_loss undoes the data-parallel mean of gradients for token-sum
        return loss, self.metrics(loss, {**filter_metrics, **metrics}, batch)

    @staticmethod
    def metrics(loss: torch.Tensor, metrics: Mapping[str, Any], batch: TokenBatch) -> dict[str, Any]:
        """verl's metric objects: the loss summed over micro-batches, the methods' metrics averaged."""
        from verl.utils.metric import AggregationType, Metric

        out: dict[str, Any] = {f"actor/entrolab/{k}": float(v) for k, v in metrics.items()}
        mask = batch.attention_mask
        out["actor/entrolab/entropy/token_mean"] = float((batch.old_entropy * mask).sum() / mask.sum().clamp(min=1))
        out = Metric.from_dict(out, aggregation=AggregationType.MEAN)
        out["actor/pg_loss"] = Metric(value=loss.detach(), aggregation=AggregationType.SUM)
        return out


def with_step(loss: EntrolabLoss, values: Mapping[str, Any], step: int) -> EntrolabLoss:
    """A copy of ``loss`` for ``step`` with the scheduled ``values``."""
    return dataclasses.replace(loss, values=dict(values), step=step)


__all__ = ["EntrolabLoss", "gather_batch", "needs_gather", "trainer_problems", "with_step"]
