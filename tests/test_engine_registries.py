"""entrolab's catalogue is a superset of verl's and TRL's: every name their registries and config choices accept
has a counterpart in ``entrolab.anchors`` (or a documented exclusion), and every counterpart resolves here.

Runs in the reference venv (skipped elsewhere), where verl 0.9.1 and TRL 1.16 are installed: a new engine
release that adds a loss or an estimator fails this test until it has a counterpart or an exclusion.
"""

from __future__ import annotations

import inspect
import re

import pytest

from entrolab import anchors, catalogue
from entrolab.options import dataclass_options


def _choices(source: str, attribute: str) -> set[str]:
    """String literals compared with ``attribute`` in ``source``: ``a == "x"``, ``a in ["x", "y"]`` / ``("x",)``."""
    out: set[str] = set()
    name = re.escape(attribute)
    for m in re.finditer(rf"{name}\s*(?:==|!=)\s*\"([^\"]+)\"", source):
        out.add(m.group(1))
    for m in re.finditer(rf"{name}\s+(?:not\s+)?in\s*[\[(]([^\])]*)[\])]", source):
        out |= set(re.findall(r"\"([^\"]+)\"", m.group(1)))
    return out


@pytest.fixture(scope="module")
def verl_names() -> dict[str, set[str]]:
    pytest.importorskip("verl")
    from verl.trainer.ppo import core_algos

    kl = _choices(inspect.getsource(core_algos.kl_penalty_forward), "kl_penalty")
    ours = "entrolab."  # entrolab.integrations.verl registers the catalogue's methods there under this prefix
    return {
        "policy_loss": {k for k in core_algos.POLICY_LOSS_REGISTRY if not k.startswith(ours)},
        "advantage": {
            str(getattr(k, "value", k))
            for k in core_algos.ADV_ESTIMATOR_REGISTRY
            if not str(getattr(k, "value", k)).startswith(ours)
        },
        "kl_estimator": kl - {"full"},  # verl raises NotImplementedError for "full"
    }


@pytest.fixture(scope="module")
def trl_names() -> dict[str, set[str]]:
    pytest.importorskip("trl")
    from trl.trainer import grpo_trainer

    source = inspect.getsource(grpo_trainer)
    return {
        kind: _choices(source, f"self.{kind}")
        for kind in ("loss_type", "importance_sampling_level", "scale_rewards", "multi_objective_aggregation")
    } | {"vllm_importance_sampling_mode": _choices(source, "self.vllm_importance_sampling_mode")}


def _check(engine: str, kind: str, names: set[str]) -> list[str]:
    missing = []
    for name in sorted(names):
        try:
            anchors.lookup(engine, kind, name)
        except KeyError as e:
            missing.append(str(e))
    return missing


def test_the_engines_expose_the_names_this_test_reads(verl_names, trl_names):
    # a parser that finds nothing would make the superset test vacuous
    assert {"vanilla", "gspo", "geo_mean", "cispo", "sapo", "dppo_tv"} <= verl_names["policy_loss"]
    assert {"grpo", "reinforce_plus_plus", "remax", "opo", "gdpo"} <= verl_names["advantage"]
    assert {"k1", "k2", "k3", "low_var_kl", "abs", "mse"} <= verl_names["kl_estimator"]
    assert {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"} <= trl_names["loss_type"]
    assert trl_names["importance_sampling_level"] == {"token", "sequence"}
    assert {"group", "batch", "none"} <= trl_names["scale_rewards"]
    assert len(trl_names["vllm_importance_sampling_mode"]) >= 4


def test_every_verl_and_trl_name_has_a_counterpart_or_an_exclusion(verl_names, trl_names):
    missing = [m for kind, names in verl_names.items() for m in _check("verl", kind, names)]
    missing += [m for kind, names in trl_names.items() for m in _check("trl", kind, names)]
    assert not missing, "\n".join(missing)


def test_every_counterpart_resolves_in_the_catalogue():
    for key, counterpart in anchors.COUNTERPARTS.items():
        entries = {}
        for spec in counterpart.methods:
            axis, name = spec.split(":", 1)
            entries[name] = catalogue.get(axis, name)  # raises on an unknown name
        for option in counterpart.options:
            field, _, value = option.partition("=")
            method, dot, field = field.rpartition(".")
            targets = [entries[method]] if dot else [e for e in entries.values() if e.config is not None]
            assert targets, (key, option)
            for entry in targets:  # the option is accepted (and validated) by the method's config
                dataclass_options(entry.config, (f"{field}={value}",), entry.name)


def test_anchors_lookup_names_an_unknown_name():
    with pytest.raises(KeyError, match="no counterpart and no exclusion"):
        anchors.lookup("verl", "policy_loss", "not_a_loss")
