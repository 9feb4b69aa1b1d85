"""Issue 15's presets, two steps each through the real CLI: every method's metric keys are logged, finite, and
the method visibly acted (its own number moved off the value it has when it does nothing)."""

from __future__ import annotations

import json
import math

import pytest

from entrolab.cli import main
from entrolab.integrations.choice import MethodSpec
from entrolab.presets import AXIS_CHOICE_FIELDS, PRESETS
from entrolab.update import Methods

# preset -> (a metric key of the method, a predicate on the second step's value that shows it acted)
ACTED = {
    "riskpo": ("riskpo/q_beta", lambda v: v >= 0),
    "copo": ("copo/weight_mean", lambda v: 0 <= v <= 1),
    "ares": ("ares/tau", lambda v: v > 0),
    "entrocraft": ("entrocraft/batch_entropy", lambda v: v > 0),
    "likelihood": ("likelihood/answer_logp_mean", lambda v: v < 0),
    "erank": ("erank/er_mean", lambda v: v > 1),
    "epe": ("epe/log_ppl_mean", lambda v: v > 0),
    "spurious_reward": ("random_reward/frac_high", lambda v: 0 <= v <= 1),
    "best_of_n": ("sampler/dropped_rows", lambda v: v == 4 * 3),  # 4 groups of 4, one kept per group
}


@pytest.mark.parametrize("preset", sorted(ACTED))
def test_the_preset_trains_two_steps_through_the_cli(tiny_dir, tmp_path, preset):
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", preset, "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--group-size", "4", "--eval-prompts", "2", "--eval-samples", "2"]
    assert main([*argv, "--out", str(run), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2
    methods = Methods(MethodSpec(**{k: PRESETS[preset][k] for k in AXIS_CHOICE_FIELDS}))
    pairs = [methods.advantage, methods.policy_loss, *methods.shapers, *methods.filters, *methods.samplers]
    for entry, _ in pairs:
        for key in entry.metrics:
            assert all(key in r and math.isfinite(r[key]) for r in rows), (entry.name, key)
    key, acted = ACTED[preset]
    assert acted(rows[-1][key]), (key, rows[-1][key])


def test_the_erank_bonus_starts_on_the_second_step(tiny_dir, tmp_path):
    """Step 1 has no baselines (plain GRPO, no bonus); step 2 has the EMA of step 1's indicators."""
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", "erank", "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--group-size", "4", "--eval-prompts", "2", "--eval-samples", "2"]
    argv += ["--option", "erank.stride=2"]
    assert main([*argv, "--out", str(run), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert rows[0]["erank/aux_mean"] == 0.0 and "schedule/erank.m_er" not in rows[0]
    assert rows[1]["schedule/erank.m_er"] == pytest.approx(rows[0]["erank/er_mean"], rel=1e-6)
