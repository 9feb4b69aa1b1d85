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
    canon,
    covariance,
    discriminator,
    epo,
    filters,
    forking,
    light_if,
    pear,
    policy_loss,
    regularizers,
    safe,
    samplers,
    schedules,
    sft,
    shapers,
    siren,
    spear,
    steer,
)

__all__ = [
    "advantages",
    "aepo",
    "aggregation",
    "canon",
    "covariance",
    "discriminator",
    "epo",
    "filters",
    "forking",
    "light_if",
    "pear",
    "policy_loss",
    "regularizers",
    "safe",
    "samplers",
    "schedules",
    "sft",
    "shapers",
    "siren",
    "spear",
    "steer",
]
