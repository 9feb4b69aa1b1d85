"""PEAR: the note's hand-computed rewards, monotonicity, the answer-phase mask, and 2 steps through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from entrolab.methods.pear import PearConfig, pear
from entrolab.sampling import answer_phase


def reward(h_think, h_answer, right=True, cfg=None, with_answer=True):
    cfg = cfg or PearConfig()
    h = torch.tensor([[h_think, h_think, h_answer, h_answer]])
    phase = torch.tensor([[0.0, 0.0, 1.0, 1.0]]) if with_answer else torch.zeros(1, 4)
    r = torch.tensor([1.0 if right else 0.0])
    out, m = pear(
        r,
        torch.ones(1, 4),
        cfg=cfg,
        group_id=None,
        lengths=None,
        truncated=None,
        max_length=4,
        old_entropy=h,
        answer_phase=phase,
    )
    return out.item(), m


def test_note_cases():
    assert reward(0.8, 0.3)[0] == pytest.approx(0.5)  # P = 0.5
    assert reward(0.2, 0.3)[0] == pytest.approx(1.0)  # P = 0
    assert reward(0.8, 0.3, right=False)[0] == 0.0  # r_fmt
    assert reward(0.8, 0.3, right=False, cfg=PearConfig(incorrect=0.1))[0] == pytest.approx(0.1)
    value, m = reward(0.6, 0.3, with_answer=False)  # no answer phase: every token thinks, H_answer = 0
    assert value == pytest.approx(1 - 0.45) and m["pear/answer_entropy"].item() == 0.0


def test_reward_is_monotone_in_the_two_phase_entropies_and_at_most_one():
    think = [reward(t, 0.3)[0] for t in (0.1, 0.4, 0.7, 1.0)]
    answer = [reward(0.9, a)[0] for a in (0.0, 0.3, 0.6, 0.9)]
    assert think == sorted(think, reverse=True) and answer == sorted(answer) and max(think + answer) <= 1.0
    assert reward(0.9, 0.3, cfg=PearConfig(alpha=0.0))[0] == pytest.approx(0.1)  # alpha 0: P = H_think


def test_answer_phase_marks_tokens_from_the_last_marker():
    ids = torch.tensor([[5, 7, 8, 5, 7, 9, 0], [1, 2, 3, 4, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]).float()
    phase = answer_phase(ids, mask, [5, 7])
    assert phase.tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]]


def test_the_pear_preset_trains_two_steps_through_the_cli(tiny_dir, tmp_path):
    from entrolab.cli import main

    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", "pear", "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--group-size", "4", "--eval-prompts", "2", "--eval-samples", "2"]
    assert main([*argv, "--out", str(run), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2 and all("pear/think_entropy" in r and r["pear/think_entropy"] > 0 for r in rows)


def test_reduces_to_the_verifier_reward_when_the_answer_phase_dominates():
    """alpha -> large: P = 0 for every right answer, so PEAR gives back plain GRPO's 0/1 rewards."""
    h = torch.rand(6, 5, generator=torch.Generator().manual_seed(0)) + 0.1
    phase = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]]).expand(6, 5)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    out, _ = pear(
        r,
        torch.ones(6, 5),
        cfg=PearConfig(alpha=1e6),
        group_id=None,
        lengths=None,
        truncated=None,
        max_length=5,
        old_entropy=h,
        answer_phase=phase,
    )
    assert torch.equal(out, r)
