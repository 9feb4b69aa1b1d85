"""CANON: hand-computed advantages, the reduction to Dr.GRPO at mu = 0.5, the halves' gap, the alpha placement."""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.advantages import dr_grpo
from entrolab.methods.canon import CanonConfig, canon

H = torch.tensor([0.2, 0.4, 0.6, 0.8]).unsqueeze(1).expand(4, 3)  # [4, 3] ascending mean entropies
ONE = torch.zeros(4, dtype=torch.long)


def adv_of(r, cfg, entropy=H, mask=None, gid=ONE):
    mask = torch.ones(len(r), 3) if mask is None else mask
    return canon(torch.tensor(r), mask, cfg=cfg, group_id=gid, old_entropy=entropy)[0].squeeze(1).tolist()


def test_note_cases():
    # equal halves' means: inter = intra = Dr.GRPO
    assert adv_of([1.0, 0.0, 1.0, 0.0], CanonConfig(mu=1.0)) == [0.5, -0.5, 0.5, -0.5]
    assert adv_of([1.0, 0.0, 1.0, 0.0], CanonConfig(mu=0.0)) == [0.5, -0.5, 0.5, -0.5]
    # low half all right, high half all wrong
    assert adv_of([1.0, 1.0, 0.0, 0.0], CanonConfig(mu=1.0)) == [1.0, 1.0, -1.0, -1.0]
    assert adv_of([1.0, 1.0, 0.0, 0.0], CanonConfig(mu=0.0)) == [0.0, 0.0, 0.0, 0.0]
    assert adv_of([1.0, 1.0, 0.0, 0.0], CanonConfig(mu=0.5)) == [0.5, 0.5, -0.5, -0.5]


@pytest.mark.parametrize("seed", range(5))
def test_mu_half_with_equal_halves_is_dr_grpo(seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 2, (12,), generator=g).float()
    gid = torch.arange(3).repeat_interleave(4)
    ent = torch.rand(12, 5, generator=g)
    mask = torch.ones(12, 5)
    ours = canon(r, mask, cfg=CanonConfig(mu=0.5), group_id=gid, old_entropy=ent)[0]
    ref = dr_grpo(r, mask, cfg=None, group_id=gid)[0]
    torch.testing.assert_close(ours, ref)


def test_the_gap_between_halves_doubles_under_inter_and_vanishes_under_intra():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])  # lower half mean 0.5, upper half mean 1.0
    gap = {}
    for mu in (0.0, 0.5, 1.0):
        a = torch.tensor(adv_of(r.tolist(), CanonConfig(mu=mu)))
        gap[mu] = float(a[2:].mean() - a[:2].mean())
    assert gap == {0.0: 0.0, 0.5: 0.5, 1.0: 1.0}  # 0, (m_U - m_L), 2 (m_U - m_L)


def test_length_metric_odd_groups_shuffled_ids_and_the_alpha_placements():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]]).float()  # lengths 3, 1, 2, 3, 1
    r = [1.0, 0.0, 1.0, 0.0, 1.0]
    gid = torch.zeros(5, dtype=torch.long)
    # stable ascending by length: rows 1, 4 (len 1) | 2 (len 2), 0, 3 (len 3); lower = {1, 4}, upper = {2, 0, 3}
    a = adv_of(r, CanonConfig(metric="length", mu=1.0), entropy=None, mask=mask, gid=gid)
    mean_l, mean_u = 0.5, 2.0 / 3.0
    assert a == pytest.approx([1 - mean_l, 0 - mean_u, 1 - mean_l, 0 - mean_l, 1 - mean_u])
    paper = adv_of(r, CanonConfig(metric="length", alpha=0.9), entropy=None, mask=mask, gid=gid)
    code = adv_of(r, CanonConfig(metric="length", alpha=0.9, alpha_on="code"), entropy=None, mask=mask, gid=gid)
    assert paper[0] == pytest.approx(0.9 * 1 - mean_l) and code[0] == pytest.approx(1 - 0.9 * mean_l)
    assert paper[1] == pytest.approx(0 - 0.9 * mean_u) and code[1] == pytest.approx(0.9 * 0 - mean_u)
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = canon(torch.tensor(r)[perm], mask[perm], cfg=CanonConfig(metric="length"), group_id=gid)[0]
    assert shuffled.squeeze(1).tolist() == pytest.approx([a[i] for i in perm.tolist()])


def test_bad_inputs():
    with pytest.raises(ValueError, match="needs old_entropy"):
        canon(torch.ones(4), torch.ones(4, 3), cfg=CanonConfig(), group_id=ONE)
    with pytest.raises(ValueError, match="mu must be in"):
        CanonConfig(mu=1.5)


def test_the_canon_preset_trains_two_steps_through_the_cli(tiny_dir, tmp_path):
    import json

    from entrolab.cli import main

    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_dir), "--task", "arithmetic", "--preset", "canon", "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--group-size", "4", "--eval-prompts", "2", "--eval-samples", "2"]
    assert main([*argv, "--out", str(run), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2 and all("canon/upper_reward_mean" in r for r in rows)
