"""The entrolab verl trainer: ``trainer.use_v1=True trainer.v1.trainer_mode=entrolab``.

verl's synchronous v1 trainer (``PPOTrainerSync``) with entrolab's loss in place of ``ppo_loss``, for the methods
the policy-loss signature cannot serve (token filters, regularisers, schedules, a policy loss that needs the
rollout's entropy or minibatch statistics). It

- forces ``actor.calculate_entropy=True`` so the model output carries the current entropies;
- installs :class:`~entrolab.integrations.verl.loss_fn.EntrolabLoss` on the actor workers with ``set_loss_fn``
  after initialisation and again after every step, with that step's scheduled values;
- runs the schedules at step end (``on_step_end``) on the step's metrics: verl's keys, the methods' own metrics
  under their entrolab names (the loss logs them as ``actor/entrolab/<key>``), ``entropy/token_mean`` (the
  rollout's token entropy) and, with an ``entrolab.*`` advantage, ``reward/mean`` / ``reward/std`` /
  ``reward/shaped_mean``; the values in force during a step are logged as ``schedule/<method.field>``.

The controllers' state lives on the trainer, not in verl's checkpoint: a resumed run restarts them.

This module imports verl's v1 trainer, which needs TransferQueue (verl's ``verl-core`` extra); the plugin
registers it only where that is installed.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from omegaconf import open_dict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from entrolab.grid import preset_of
from entrolab.integrations.verl import advantages
from entrolab.integrations.verl.config import PREFIX, advantage_spec, policy_spec, strip_prefix
from entrolab.integrations.verl.loss_fn import EntrolabLoss, trainer_problems, with_step
from entrolab.integrations.verl.losses import methods_of

log = logging.getLogger("entrolab.integrations.verl")
NAME = "entrolab"
REWARD_KEYS = ("reward/mean", "reward/std", "reward/shaped_mean")
VERL_PREFIXES = ("actor/", "critic/", "response_length/", "prompt_length/", "training/", "timing", "perf/")


class EntrolabRun:
    """What the trainer keeps about entrolab: the methods, the checks at start-up, the schedules' state."""

    def __init__(self, config: Any) -> None:
        from verl.utils.config import omega_conf_to_dataclass

        actor = config.actor_rollout_ref.actor
        name = strip_prefix(str(actor.policy_loss.loss_mode), "actor.policy_loss.loss_mode (entrolab trainer)")
        self.spec, notes = policy_spec(actor, name)
        self.methods = methods_of(self.spec)
        adv_mode = str(config.algorithm.adv_estimator)
        self.entrolab_advantage = adv_mode.startswith(PREFIX)
        problems = trainer_problems(self.methods) + self._verl_conflicts(config)
        if self.entrolab_advantage:
            problems += self._side_conflicts(actor, config.algorithm, strip_prefix(adv_mode, "adv_estimator"))
        if problems:
            raise ValueError("entrolab verl trainer: " + "; ".join(problems))
        known = ("entropy/token_mean", *(REWARD_KEYS if self.entrolab_advantage else ()))
        self.methods.check_schedules(known, (*VERL_PREFIXES, "schedule/"))
        for note in notes:
            log.info("entrolab: %s", note)
        self.actor_config = omega_conf_to_dataclass(actor)
        self.loss = EntrolabLoss(
            self.spec,
            max_response_length=config.data.get("max_response_length", None),
            seed=int(actor.get("data_loader_seed", 0) or 0),
        )
        self.schedule_state: dict[str, dict[str, float]] = {e.name: {} for e, _ in self.methods.schedules}
        self.values: dict[str, Any] = {}

    def _verl_conflicts(self, config: Any) -> list[str]:
        """verl's own loss terms, which entrolab's loss replaces: each has an entrolab method instead."""
        actor, out = config.actor_rollout_ref.actor, []
        if float(actor.get("entropy_coeff", 0) or 0) != 0:
            out.append(
                "actor.entropy_coeff is verl's term, which the entrolab loss replaces: choose "
                "regularizers=[entropy_bonus] with options=[entropy_bonus.coef=...] instead"
            )
        wants_ref = "ref_logp" in self.methods.needs
        has_ref = bool(actor.get("use_kl_loss", False)) or bool(config.algorithm.get("use_kl_in_reward", False))
        if actor.get("use_kl_loss", False) and not wants_ref:
            out.append(
                "actor.use_kl_loss=True adds verl's KL term, which the entrolab loss replaces: choose "
                "regularizers=[kl] with options=[kl.coef=...,kl.estimator=k3] (keep use_kl_loss=True: it makes "
                "verl compute ref_log_prob)"
            )
        if wants_ref and not has_ref:
            out.append("a chosen method needs ref_log_prob: set actor.use_kl_loss=True so verl computes it")
        if config.get("distillation") is not None and config.distillation.get("enabled", False):
            out.append("distillation replaces the loss function too; it cannot be combined with the entrolab trainer")
        return out

    def _side_conflicts(self, actor: Any, algo: Any, advantage: str) -> list[str]:
        """A policy-side preset that chooses an advantage or reward shapers must agree with the algorithm side."""
        preset = (actor.policy_loss.get("entrolab", None) or {}).get("preset", None)
        if preset is None:
            return []
        part, out = preset_of(str(preset)).method, []
        aspec, _ = advantage_spec(algo, advantage)
        if part.get("advantage", aspec.advantage) != aspec.advantage:
            chosen = part["advantage"]
            out.append(f"preset {preset!r} uses advantage {chosen!r}: set algorithm.adv_estimator=entrolab.{chosen}")
        if tuple(part.get("reward_shapers", aspec.reward_shapers)) != aspec.reward_shapers:
            out.append(
                f"preset {preset!r} uses reward shapers {part['reward_shapers']}: set algorithm.entrolab.preset too"
            )
        return out

    def observed(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The step's metrics as the schedules read them."""
        out = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        out.update({k[len("actor/entrolab/") :]: v for k, v in out.items() if k.startswith("actor/entrolab/")})
        if self.entrolab_advantage:
            out.update(advantages.last_metrics())
        return out

    def advance(self, step: int, total_steps: int, observed: dict[str, float]) -> dict[str, Any]:
        """Run every schedule for ``step`` on the previous step's ``observed`` metrics -> this step's values."""
        values: dict[str, Any] = {}
        for entry, scfg in self.methods.schedules:
            self.schedule_state[entry.name], v = entry.fn(
                self.schedule_state[entry.name], observed, cfg=scfg, step=step, total_steps=total_steps
            )
            values.update(v)
        self.values = values
        return values

    def loss_fn(self, step: int) -> partial:
        """The loss function of ``step`` (the current values), ready for ``set_loss_fn``."""
        return partial(with_step(self.loss, self.values, step), config=self.actor_config)


@register_trainer(NAME)
class EntrolabTrainer(PPOTrainerSync):
    """verl's sync trainer with entrolab's loss function and schedules (see the module docstring)."""

    def __init__(self, config: Any) -> None:
        with open_dict(config):
            config.actor_rollout_ref.actor.calculate_entropy = True
        self.entrolab = EntrolabRun(config)  # fails before any worker starts
        self._entrolab_metrics: dict[str, Any] = {}
        super().__init__(config)

    def _install_loss(self, step: int) -> None:
        self.actor_rollout_wg.set_loss_fn(self.entrolab.loss_fn(step))

    def on_init_end(self) -> None:
        super().on_init_end()
        step = self.global_steps + 1
        self.entrolab.advance(step, self.total_training_steps, {})
        self._install_loss(step)

    def _update_actor(self, batch: Any, metrics: dict) -> Any:
        batch = super()._update_actor(batch, metrics)
        self._entrolab_metrics = metrics  # the step's metrics so far (reward, old-log-prob, actor update)
        return batch

    def on_step_end(self) -> None:
        super().on_step_end()
        logged = {f"schedule/{k}": float(v) for k, v in self.entrolab.values.items()}
        pending = getattr(self, "_pending_sync_metrics", None) or {}
        self._pending_sync_metrics = {**pending, **logged}  # merged into this step's logged metrics by verl
        step = self.global_steps + 1
        self.entrolab.advance(step, self.total_training_steps, self.entrolab.observed(self._entrolab_metrics))
        self._install_loss(step)


__all__ = ["NAME", "EntrolabRun", "EntrolabTrainer"]
