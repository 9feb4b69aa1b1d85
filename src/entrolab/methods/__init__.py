"""The method catalogue: pure functions over tensors, one file per family, registered by name per axis.

The call convention of each axis is code: the protocols in ``entrolab.axes`` (what ``entrolab.update`` calls
and the contract test checks). Importing this package registers every built-in method;
``entrolab.catalogue`` resolves names.
"""

from __future__ import annotations

from entrolab.methods import (
    advantages,
    aepo,
    aggregation,
    ares,
    best_of_n,
    canon,
    copo,
    covariance,
    discriminator,
    entrocraft,
    epe,
    epo,
    erank,
    filters,
    forking,
    light_if,
    likelihood,
    pear,
    policy_loss,
    regularizers,
    riskpo,
    safe,
    samplers,
    schedules,
    sft,
    shapers,
    siren,
    spear,
    spurious,
    steer,
)

__all__ = [
    "advantages",
    "aepo",
    "aggregation",
    "ares",
    "best_of_n",
    "canon",
    "copo",
    "covariance",
    "discriminator",
    "entrocraft",
    "epe",
    "epo",
    "erank",
    "filters",
    "forking",
    "light_if",
    "likelihood",
    "pear",
    "policy_loss",
    "regularizers",
    "riskpo",
    "safe",
    "samplers",
    "schedules",
    "sft",
    "shapers",
    "siren",
    "spear",
    "spurious",
    "steer",
]
