"""entrolab's methods inside verl 0.9.x: a plugin loaded by verl's ``verl.plugins`` entry point (or
``VERL_USE_EXTERNAL_MODULES=entrolab.integrations.verl``), in every verl process.

Importing it registers

- every entrolab policy loss as ``entrolab.<name>`` with verl's ``register_policy_loss``
  (``actor_rollout_ref.actor.policy_loss.loss_mode=entrolab.clip_cov``; :mod:`.losses`);
- every entrolab advantage estimator, with the reward shapers before it, as ``entrolab.<name>`` with
  ``register_adv_est`` (``algorithm.adv_estimator=entrolab.grpo``; :mod:`.advantages`);
- the entrolab trainer ``entrolab`` with verl's ``register_trainer`` (``trainer.v1.trainer_mode=entrolab``;
  :mod:`.trainer`), where verl's v1 trainer can be imported (it needs TransferQueue).

Method options come from :mod:`.config` (``PolicyLossConfig`` / ``AlgoConfig`` subclasses chosen with Hydra's
``_target_``). Registering twice is a no-op. Another verl version raises ImportError naming it.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

SUPPORTED = (0, 9)  # verl 0.9.x: the signatures and config fields this plugin was written against
log = logging.getLogger("entrolab.integrations.verl")


def _check_version() -> str:
    import verl

    version = str(getattr(verl, "__version__", "unknown"))
    try:
        release = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        release = ()
    if release != SUPPORTED:
        message = (
            f"entrolab.integrations.verl supports verl {SUPPORTED[0]}.{SUPPORTED[1]}.x (>=0.9,<0.10); the installed "
            f"verl is {version}. Install a supported one: pip install 'entrolab[verl]'"
        )
        log.error(message)  # verl's plugin loader only debug-logs a failing plugin
        raise ImportError(message)
    return version


VERL_VERSION = _check_version()

from entrolab.integrations.verl import advantages, losses  # noqa: E402

POLICY_LOSSES = losses.register_all()
ADVANTAGES = advantages.register_all()


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def register_trainer() -> str | None:
    """Register the entrolab trainer with verl's v1 trainer registry -> its name, or None where verl's v1 trainer
    cannot be imported here (TransferQueue missing). Idempotent."""
    if not _importable("verl.trainer.ppo.v1.trainer_base") or not _importable("transfer_queue"):
        log.debug("entrolab: verl's v1 trainer needs TransferQueue; the entrolab trainer is not registered")
        return None
    try:
        from entrolab.integrations.verl.trainer import NAME
    except ImportError as e:  # a verl install whose v1 trainer does not import: the plain path still works
        log.warning("entrolab: the entrolab verl trainer is not registered: %s", e)
        return None
    return NAME


TRAINER = register_trainer()

__all__ = ["ADVANTAGES", "POLICY_LOSSES", "SUPPORTED", "TRAINER", "VERL_VERSION", "register_trainer"]
