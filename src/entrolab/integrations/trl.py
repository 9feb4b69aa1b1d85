"""entrolab's methods inside TRL: ``EntrolabGRPOTrainer``, a ``GRPOTrainer`` whose loss, reward shaping and
advantages are entrolab's, chosen by name with one extra keyword.

    trainer = EntrolabGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
                                  methods="clip_cov")            # or {"policy_loss": "steer", ...}

Everything else is TRL's: generation (HF ``generate`` or vLLM), the reward functions, the reference model, the
optimizer, accelerate / DeepSpeed, logging and checkpoints. The adapter holds no loss logic; it turns TRL's
tensors into a :class:`~entrolab.batch.TokenBatch` and calls ``entrolab.update`` (filters, minibatch statistics,
``compose``), the functions the built-in trainer calls. Where it hooks in (TRL 1.16, private methods, version
checked at import):

- ``_calculate_rewards``: keeps TRL's gathered per-function rewards ``[N, F]`` (N = the generation batch over
  all processes).
- ``_generate_and_score_completions``: after TRL's own, computes entrolab's reward shapers and advantage over the
  whole generation batch (groups of ``num_generations`` as TRL lays them out), replaces TRL's advantages
  (``[B]`` or ``[B, T]``), and, when a method needs rollout-time tensors (any token filter, a method with
  minibatch statistics, STEER's behaviour entropy, discriminator clipping's vocabulary baseline), runs one
  no-grad pass for the behaviour log-probs and entropies. Filters and minibatch statistics are computed on the
  tensors of *all* processes (gathered), so quantiles and covariance top-k are batch-wide, then each process
  keeps its rows. A completion every reward function returned None for is unscorable: it leaves the loss
  (loss mask 0) and its reward is set to its group's mean, counted in ``reward/errors`` (never scored 0).
- ``_compute_loss``: the update's forward (TRL's fused LM head; a plain forward when a method needs logits),
  then ``compose`` with the counts of :func:`~entrolab.integrations.trl_config.loss_counts`, so the loss
  divides exactly as TRL's loss type does under gradient accumulation and several processes. The loss mask is
  ``completion_mask * tool_mask``.
- Schedules run from a ``TrainerCallback`` (``on_step_begin`` sets the step's options from the previous step's
  metrics); their state is saved in each checkpoint folder (``entrolab_state.json``) and restored on resume.

Entrolab's metric keys (``clip/frac_cov``, ``filter/frac_kept``, ``adv/std``, ``reward/errors``,
``entropy/token_mean``, ``schedule/...``) go to TRL's logs, as token-weighted means over all processes.
A sampler (``dynamic_sampling``) drops groups from the loss and its counts but draws no new rollouts (TRL's
generation owns them).

Differences from entrolab's own trainer and from TRL:
- Filters and statistics span the generation batch (``per_device_train_batch_size * steps_per_generation`` rows
  per process): one optimizer step's data with TRL's default ``steps_per_generation = gradient_accumulation_
  steps``; with more steps per generation they span several optimizer steps. TRL's ``top_entropy_quantile``
  takes its quantile per accumulation micro-batch on the current entropies; here on the behaviour entropies of
  the generation batch (the same numbers on TRL's default on-policy path with one micro-batch per step).
- TRL's ``entropy_coef`` bonus is a token mean over each micro-batch's kept tokens; entrolab's ``entropy_bonus``
  is a per-token term reduced by the run's aggregation (the same under ``dapo`` / ``bnpo`` with one micro-batch).
  A zero-weight filter (``forking_tokens`` as TRL selects) leaves the token in regularisers' masks; TRL's
  entropy mask removes it from the bonus too.
- TRL's optimizer loop owns the step: a non-finite loss is not skipped as entrolab's trainer does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

try:
    import trl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("entrolab.integrations.trl needs TRL: pip install 'entrolab[trl]'") from e

from entrolab.integrations.trl_config import check_version, loss_counts, trl_methods

check_version(trl.__version__)

from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from entrolab.agent_rollout import ENV_NEEDS  # noqa: E402
from entrolab.batch import TokenBatch  # noqa: E402
from entrolab.integrations.trl_data import (  # noqa: E402
    ADAPTER_METRICS,
    Generation,
    behaviour_pass,
    forward_with_logits,
    rows_of,
    truncated_rows,
)
from entrolab.integrations.trl_env import EnvRollout, episode_inputs  # noqa: E402
from entrolab.sampling import advantage_of, answer_marker, answer_phase, apply_shapers, declared, pre_inputs  # noqa: E402
from entrolab.step_inputs import pre_update_needs, step_ids  # noqa: E402
from entrolab.stepstats import fill_errored  # noqa: E402
from entrolab.tasks import final_answer  # noqa: E402
from entrolab.update import Methods, apply_filters, compose, minibatch_stats, slice_stats  # noqa: E402

STATE_FILE = "entrolab_state.json"
# what the adapter does not compute: extra model passes (the reference answer, hidden states, an implicit PRM),
# the base policy's reference responses (PAR), a reward model's heads
UNSERVED_NEEDS = ("answer_logp", "answer_mask", "hidden_states", "prm_logp", "ref_rewards", "rm_heads")
# ... nor ReMax's greedy rollout, the collision probability sum_v pi^2, or the sampler's log-probs beside the
# trainer's (TRL's own vllm_importance_sampling_correction is the rollout correction there)
UNSERVED_NEEDS += ("greedy_rewards", "sum_pi_sq", "rollout_logp")
MM_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles")
MM_KEYS += ("image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


class _Schedules(TrainerCallback):
    """Runs entrolab's schedules at each optimizer step's boundaries."""

    def __init__(self, trainer: EntrolabGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._begin_step(state.global_step + 1, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_step()


@dataclass
class _Observed:
    """Token-weighted sums of this optimizer step's metrics (what the schedules read next step)."""

    sums: dict[str, list[float]]

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for k, v in metrics.items():
            s = self.sums.setdefault(k, [0.0, 0.0])
            s[0] += v * weight
            s[1] += weight

    def means(self) -> dict[str, float]:
        return {k: s / w for k, (s, w) in self.sums.items() if w > 0}


class EntrolabGRPOTrainer(GRPOTrainer):
    """A ``GRPOTrainer`` whose update is entrolab's: ``methods=`` a preset name (``"clip_cov"``), a mapping with
    ``entrolab train``'s axis names and ``method.field=value`` options, or None (TRL's own settings in entrolab's
    terms). ``GRPOConfig``'s fields keep their meaning unless ``methods=`` overrides them: ``loss_type`` sets
    the aggregation and its normalisation, ``epsilon`` / ``epsilon_high`` the clip range, ``beta`` a ``kl``
    term (k3, x ratio when ``use_bias_correction_kl``), ``entropy_coef`` an ``entropy_bonus``,
    ``top_entropy_quantile`` a ``forking_tokens`` filter as TRL selects, ``scale_rewards`` the GRPO std.
    ``entrolab_methods`` is the resolved choice."""

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: GRPOConfig | None = None,
        *rest,
        methods: Any = None,
        answer_extractor: Callable[[str], str | None] | None = None,
        **kw,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = GRPOConfig(f"{str(name).split('/')[-1]}-GRPO")
        spec, rule, notes = trl_methods(args, methods)
        self.entrolab_methods = spec
        self._methods = Methods(spec)
        unserved = sorted((pre_update_needs(self._methods) | set(self._methods.needs)) & set(UNSERVED_NEEDS))
        if unserved:
            raise ValueError(
                f"a chosen method needs {unserved}, which the TRL adapter does not compute (an extra model pass "
                "or rollout over the generation batch); use `entrolab train`, or choose another method"
            )
        env_only = sorted((pre_update_needs(self._methods) | set(self._methods.needs)) & set(ENV_NEEDS))
        if env_only and not isinstance(kw.get("rollout_func"), EnvRollout):
            raise ValueError(
                f"a chosen method needs {env_only}, which only a multi-turn environment supplies: pass "
                "rollout_func=entrolab.integrations.trl_env.EnvRollout(ENV)"
            )
        self._answer_extractor = answer_extractor or final_answer
        self._methods.check_schedules(ADAPTER_METRICS, ("schedule/", "rewards/"))
        self._step_methods = self._methods
        self._count_rule = rule
        self._schedule_state: dict[str, dict[str, float]] = {e.name: {} for e, _ in self._methods.schedules}
        self._observed: dict[str, float] = {}
        self._step_sums = _Observed({})
        self._generation: dict[str, Generation] = {}
        self._rewards_per_func: torch.Tensor | None = None
        if "ref_logp" in self._methods.needs | pre_update_needs(self._methods) and float(args.beta) == 0.0:
            # TRL loads its reference model and computes its log-probs only for beta != 0; entrolab's term (and
            # its coefficient) replace TRL's KL, so any non-zero value does.
            args = copy.copy(args)
            args.beta = 1.0
        super().__init__(model, reward_funcs, args, *rest, **kw)
        self._compose_gen = torch.Generator().manual_seed(int(self.args.seed))
        self.add_callback(_Schedules(self))
        for note in notes:
            warnings.warn(note, stacklevel=2)

    # --- schedules -----------------------------------------------------------------------------------------
    def _begin_step(self, step: int, total_steps: int) -> None:
        values: dict[str, Any] = {}
        for entry, scfg in self._methods.schedules:
            self._schedule_state[entry.name], v = entry.fn(
                self._schedule_state[entry.name], self._observed, cfg=scfg, step=step, total_steps=total_steps
            )
            values.update(v)
        self._step_methods = self._methods.configured(values)
        for k, v in values.items():
            self._metrics["train"][f"schedule/{k}"].append(float(v))

    def _end_step(self) -> None:
        self._observed = self._step_sums.means()
        self._step_sums = _Observed({})

    def _record(self, mode: str, metrics: dict[str, float], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            self._metrics[mode][k].append(float(v))
        if mode == "train":
            self._step_sums.add(metrics, weight)

    def _global_mean(self, metrics: dict[str, Any], weight: float) -> dict[str, float]:
        """Token-weighted means over all processes of a micro-batch's metrics."""
        keys = sorted(metrics)
        if not keys:
            return {}
        device = self.accelerator.device
        vals = [float(metrics[k]) * weight for k in keys]
        totals = torch.tensor([*vals, weight], dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        n = float(totals[-1])
        return {k: float(totals[i]) / n for i, k in enumerate(keys)} if n > 0 else {}

    # --- rewards, advantages, filters and statistics over the generation batch -----------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _answer_ids(self, texts: list[str]) -> torch.Tensor:
        """Ids of the completions' extracted answers (``answer_extractor``), equal on every process for equal
        answers (a stable 62-bit hash of the text); -1 when there is none.  [b]"""
        out = []
        for text in texts:
            answer = self._answer_extractor(text)
            digest = hashlib.blake2b(answer.encode(), digest_size=8).digest() if answer is not None else None
            out.append(-1 if digest is None else int.from_bytes(digest, "big") >> 2)
        return torch.tensor(out, dtype=torch.long, device=self.accelerator.device)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every process, padded to the widest (dim 1) with 0."""
        if self.accelerator.num_processes == 1:
            return x
        if x.dim() > 1:
            x = self.accelerator.pad_across_processes(x, dim=1, pad_index=0)
        return self.accelerator.gather(x)

    def _generate_and_score_completions(self, inputs):
        return self.entrolab_prepare(super()._generate_and_score_completions(inputs))

    def entrolab_prepare(self, out: dict[str, Any]) -> dict[str, Any]:
        """TRL's generation output -> the same with entrolab's advantages and ``entrolab_rows``; keeps this
        process's rows (filters, statistics, behaviour tensors) for the loss. Reads the gathered per-function
        rewards TRL's ``_calculate_rewards`` returned last."""
        mode = "train" if self.model.training else "eval"
        methods = self._step_methods
        device = self.accelerator.device
        ids, cmask = out["completion_ids"], out["completion_mask"]
        b, t = ids.shape
        attn = cmask.float()
        loss_mask = attn * out["tool_mask"].float() if out.get("tool_mask") is not None else attn.clone()
        truncated = truncated_rows(ids, cmask, self.eos_token_ids)
        needs_pass = bool(methods.filters) or any(e.stats is not None for e, _ in methods.trained())
        needs_pass = needs_pass or bool({"old_entropy", "vocab_baseline"} & methods.needs) or bool(methods.samplers)
        pre_needs = pre_update_needs(methods)
        needs_pass = needs_pass or bool({"old_entropy", "old_logp"} & pre_needs)
        old_logp, old_entropy = torch.zeros_like(attn), torch.zeros_like(attn)
        extras: dict[str, torch.Tensor] = {}
        if needs_pass:
            old_logp, old_entropy, extras = behaviour_pass(
                self, out, "vocab_baseline" in methods.needs, {k: out[k] for k in MM_KEYS if k in out}
            )
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        if "answer_phase" in methods.shaper_needs:  # 1 from the last answer marker on (PEAR's phases)
            marker = tok(answer_marker(methods), add_special_tokens=False)["input_ids"]
            extras["answer_phase"] = answer_phase(ids, cmask.float(), marker)
        if "step_ids" in pre_needs:  # reasoning steps end at newline tokens
            newline = tok("\n", add_special_tokens=False)["input_ids"][-1:]
            extras["step_ids"] = step_ids(ids, cmask.float(), newline)
        if "answer_ids" in pre_needs:  # COPO: the extracted final answers, as ids equal across processes
            texts = tok.batch_decode([row[: int(n)] for row, n in zip(ids, cmask.sum(-1), strict=True)])
            extras["answer_ids"] = self._answer_ids(texts)
        # the whole generation batch, every process's rows (N = b * processes)
        rewards_pf = self._rewards_per_func
        if rewards_pf is None:
            raise RuntimeError("TRL did not compute rewards through _calculate_rewards")
        unscorable = torch.isnan(rewards_pf).all(dim=1)  # [N]
        raw = (rewards_pf * self.reward_weights.to(rewards_pf.device).unsqueeze(0)).nansum(dim=1)  # [N]
        g = self.num_generations if mode == "train" else self.num_generations_eval
        n_rows = raw.shape[0]
        group_id = torch.arange(n_rows // g, device=raw.device).repeat_interleave(g)  # [N]
        glob = TokenBatch(
            prompt_ids=torch.zeros(n_rows, 1, dtype=torch.long, device=device),
            prompt_mask=torch.zeros(n_rows, 1, device=device),
            response_ids=self._gather(ids),
            attention_mask=self._gather(attn),
            loss_mask=self._gather(loss_mask) * (~unscorable).float().unsqueeze(1),
            old_logp=self._gather(old_logp.float()),
            old_entropy=self._gather(old_entropy.float()),
            group_id=group_id,
            truncated=self._gather(truncated),
            extras={k: self._gather(v.float()) for k, v in extras.items() if k not in ("answer_ids", "step_ids")},
        )
        rewards = fill_errored(raw, unscorable, group_id)
        m: dict[str, float] = {}
        gen = torch.Generator().manual_seed(int(self.args.seed) * 1_000_003 + int(self._step))  # same on every rank
        inputs = {"generator": gen, "step": int(self.state.global_step) + 1, "total_steps": int(self.state.max_steps)}
        if "answer_ids" in extras:
            inputs["answer_ids"] = self._gather(extras["answer_ids"])  # [N] long
        if "step_ids" in extras:
            inputs["step_ids"] = self._gather(extras["step_ids"] + 1) - 1  # padding across processes: -1
        for key, x in episode_inputs(self, t).items():  # a multi-turn EnvRollout's turns, states and counts
            x = x.to(device)
            inputs[key] = self._gather(x + 1) - 1 if key in ("step_ids", "state_ids") else self._gather(x)
        if "step_ids" in methods.needs and "step_ids" in inputs:  # a trained method's (EPO's turn gate)
            glob.extras["step_ids"] = inputs["step_ids"]
        if "reward_parts" in pre_needs:  # TRL's reward functions are the components (NaN: did not apply)
            inputs["reward_parts"] = rewards_pf.float()
        if "ref_logp" in pre_needs:  # TRL's reference log-probs of the completions (beta != 0 loads the model)
            if out.get("ref_per_token_logps") is None:
                raise RuntimeError("a chosen advantage needs ref_logp, but TRL computed no ref_per_token_logps")
            inputs["ref_logp"] = self._gather(out["ref_per_token_logps"].float() * attn)
        rewards, sm = apply_shapers(methods, glob, rewards, self.max_completion_length, inputs)
        m.update(sm)
        available = pre_inputs(glob, inputs)
        for entry, scfg in methods.samplers:  # no refill in TRL: a dropped group leaves the loss and its counts
            keep, km = entry.fn(
                raw,
                glob.loss_mask,
                cfg=scfg,
                group_id=group_id,
                shaped=rewards,
                lengths=glob.lengths,
                entropy=glob.old_entropy,
                **declared(entry, available),
            )  # a group or a sample-unit sampler: either way the dropped rows leave the loss
            glob = glob.replace(loss_mask=glob.loss_mask * keep.float().unsqueeze(1))
            m.update({k: float(v) for k, v in km.items()})
        advantages, am, provided = advantage_of(methods, glob, rewards, inputs)
        m.update({k: float(v) for k, v in am.items()})
        glob = glob.replace(advantages=advantages, extras={**glob.extras, **provided})
        glob, fm = apply_filters(methods, glob, None, gen)
        stats = {e.name: minibatch_stats(e, c, glob, gen) for e, c in methods.trained()}
        rows = slice(self.accelerator.process_index * b, (self.accelerator.process_index + 1) * b)
        local = glob.select(rows).trim(t)
        self._generation[mode] = Generation(
            batch=local,
            stats={k: slice_stats(v, rows, t) for k, v in stats.items()},
            window_tokens=float(glob.loss_mask.sum()),
            rollout_pass=needs_pass,
        )
        local_adv = local.advantages
        out["advantages"] = local_adv.squeeze(1) if local_adv.shape[1] == 1 else local_adv
        out["entrolab_rows"] = torch.arange(b, device=device)
        self._replace_logged_advantages(advantages, glob.attention_mask)
        scored = raw[~unscorable]
        m.update(fm)
        m["reward/mean"] = float(scored.mean()) if scored.numel() else float("nan")
        m["reward/std"] = float(scored.std()) if scored.numel() > 1 else 0.0
        m["reward/shaped_mean"] = float(rewards.mean())
        m["reward/errors"] = float(unscorable.sum())
        m["len/mean"] = float(glob.lengths.float().mean())
        m["len/truncated_frac"] = float(glob.truncated.float().mean())
        if needs_pass:
            attn_all = glob.attention_mask
            m["entropy/token_mean"] = float((glob.old_entropy * attn_all).sum() / attn_all.sum().clamp(min=1))
        self._record(mode, m)
        return out

    def _replace_logged_advantages(self, advantages: torch.Tensor, mask: torch.Tensor) -> None:
        """The completions table shows entrolab's advantages (a token-level one as its masked mean)."""
        logged = self._logs.get("advantages") if isinstance(self._logs, dict) else None
        if logged is None or len(logged) < advantages.shape[0]:
            return
        if advantages.shape[1] == 1:
            values = advantages[:, 0]
        else:
            values = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        for _ in range(advantages.shape[0]):
            logged.pop()
        logged.extend(values.tolist())

    # --- the loss of one micro-batch --------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        methods = self._step_methods
        generation = self._generation[mode]
        rows = inputs["entrolab_rows"]
        micro = generation.batch.select(rows)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        keep = completion_ids.size(1)
        logits = None
        if "logits" in methods.needs:
            logp, entropy, logits = forward_with_logits(model, input_ids, attention_mask, keep, self.temperature)
        else:
            logp, entropy, _ = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                keep,
                compute_entropy=True,
                **{k: inputs.get(k) for k in MM_KEYS if k in inputs},
            )
        old = inputs.get("old_per_token_logps")
        advantages = inputs["advantages"]
        changes: dict[str, Any] = {
            "old_logp": logp.detach() if old is None else old,  # TRL's on-policy path: ratio exactly 1
            "advantages": advantages.unsqueeze(1) if advantages.dim() == 1 else advantages,
        }
        if not generation.rollout_pass:
            changes["old_entropy"] = entropy.detach()
        extras = dict(micro.extras)
        if inputs.get("ref_per_token_logps") is not None:
            extras["ref_logp"] = inputs["ref_per_token_logps"]
        weight = micro.weight
        # TRL's vLLM importance-sampling correction (TRL leaves vespo's loss unweighted: vespo folds it in its w)
        if inputs.get("importance_sampling_ratio") is not None and self.entrolab_methods.policy_loss != "vespo":
            weight = weight * inputs["importance_sampling_ratio"]
        micro = micro.replace(extras=extras, token_weight=weight, **changes)
        train = mode == "train"
        counts = loss_counts(
            methods.aggregation.name,
            self._count_rule,
            micro_tokens=float(micro.loss_mask.sum()),
            micro_rows=len(micro),
            window_tokens=generation.window_tokens,
            grad_accum=self.current_gradient_accumulation_steps if train else 1,
            num_processes=self.accelerator.num_processes,
            steps_per_generation=self.args.steps_per_generation if train else 1,
            max_completion_length=self.max_completion_length,
        )
        stats = {k: rows_of(v, rows) for k, v in generation.stats.items()}
        loss, metrics = compose(
            methods, micro, logp, entropy, logits, counts=counts, stats=stats, generator=self._compose_gen
        )
        n = float(micro.loss_mask.sum())
        metrics = {k: float(v) for k, v in metrics.items()}
        if not generation.rollout_pass:
            metrics["entropy/token_mean"] = float((entropy.detach() * micro.attention_mask).sum()) / max(
                float(micro.attention_mask.sum()), 1.0
            )
        self._record(mode, self._global_mean(metrics, n), n)
        return loss

    # --- schedule state in TRL's checkpoints -------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self._schedule_state:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            state = {"schedule_state": self._schedule_state, "observed": self._observed}
            tmp = os.path.join(folder, STATE_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, os.path.join(folder, STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.entrolab_load_state(checkpoint)

    def entrolab_load_state(self, checkpoint: str) -> None:
        """Restore the schedules' state and last observed metrics saved in a TRL checkpoint folder."""
        path = os.path.join(checkpoint, STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self._schedule_state = {k: dict(v) for k, v in state["schedule_state"].items()}
            self._observed = dict(state["observed"])


__all__ = ["STATE_FILE", "EntrolabGRPOTrainer"]
