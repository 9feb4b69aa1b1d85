"""Issue 16's presets, two steps each through the real CLI: PAR, Ctrl-U and MARBLE on a reward model; PRL on
the reference; PRIME and Clip/Delta on an implicit PRM (--prm-model). Every method's metric keys are logged."""

from __future__ import annotations

import json
import math

import pytest

from entrolab.cli import main
from entrolab.integrations.choice import MethodSpec
from entrolab.presets import AXIS_CHOICE_FIELDS, PRESETS
from entrolab.update import Methods

# preset -> extra flags (with {rm} / {prm} filled in)
FLAGS = {
    "par": ["--reward-model", "{rm}", "--reference-responses", "2"],
    "ctrl_u": ["--reward-model", "{rm}"],
    "marble": ["--reward-model", "{rm}"],
    "prl": ["--option", "prl.step_len=4"],
    "prime": ["--prm-model", "{prm}"],
    "clip_delta": ["--prm-model", "{prm}"],
    "tp_grpo": ["--prm-model", "{prm}"],
}


@pytest.mark.parametrize("preset", sorted(FLAGS))
def test_the_preset_trains_two_steps_through_the_cli(tiny_dir, rm_dir, tmp_path, preset):
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", preset, "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--group-size", "4", "--eval-prompts", "2", "--eval-samples", "2"]
    argv += [f.format(rm=rm_dir, prm=tiny_dir) for f in FLAGS[preset]]
    assert main([*argv, "--reward-workers", "1", "--out", str(run), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    methods = Methods(MethodSpec(**{k: PRESETS[preset][k] for k in AXIS_CHOICE_FIELDS}))
    for entry, _ in [methods.advantage, methods.policy_loss, *methods.shapers]:
        for key in entry.metrics:
            assert all(key in r and math.isfinite(r[key]) for r in rows), (entry.name, key)
    if "--reward-model" in FLAGS[preset]:
        assert all("reward/gold_mean" in r for r in rows)


def test_prime_without_a_prm_model_is_refused_before_any_work(tiny_dir, tmp_path):
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", "prime", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
