"""SPA's progress estimator: contributions only at step ends, one fit step of the note's loss, the fit reaching
sum_t c_t = R, detached inputs, and the estimator feeding the spa advantage (one step per episode: GRPO of c)."""

from __future__ import annotations

import pytest
import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, grpo
from entrolab.methods.spa import SPAConfig, progress_loss, spa, step_end_mask
from entrolab.progress_estimator import ProgressEstimator

D = 16


def batch(seed: int = 0):
    """8 multi-turn episodes of 1-3 turns with observations in between, hidden states [8, 12, D], rewards [8]."""
    gen = torch.Generator().manual_seed(seed)
    turns = [[(2, 2), (1, 1), (2, 0)], [(3, 1)], [(1, 1), (1, 1), (1, 1)], [(4, 0)],
             [(2, 3), (2, 0)], [(1, 0)], [(2, 2), (3, 2)], [(1, 2), (1, 2), (2, 0)]]  # fmt: skip
    rows = []
    for ep in turns:
        row: list[int] = []
        for k, (m, e) in enumerate(ep):
            row += [k] * m + [-1] * e
        rows.append(row + [-1] * (12 - len(row)))
    ids = torch.tensor(rows)  # [8, 12]
    mask = (ids >= 0).float()
    hidden = torch.randn(8, 12, D, generator=gen)
    rewards = torch.rand(8, generator=gen)
    return hidden, ids, mask, rewards


def test_contributions_sit_on_step_ends_and_ignore_everything_else():
    torch.manual_seed(0)
    est = ProgressEstimator(D)
    hidden, ids, mask, _ = batch()
    c = est.contributions(hidden, ids, mask)  # [8, 12]
    ends = step_end_mask(ids)
    assert c.shape == ids.shape and torch.all(c[~ends] == 0)
    with torch.no_grad():
        torch.testing.assert_close(c[ends], est.head(hidden[ends]).squeeze(-1))
    garbage = torch.where(ends.unsqueeze(-1), hidden, torch.full_like(hidden, float("nan")))
    assert torch.equal(est.contributions(garbage, torch.where(mask > 0, ids, 9), mask), c)
    assert torch.equal(est(hidden, ids, mask), c)


def test_fit_step_is_one_step_of_progress_loss_and_leaves_the_hidden_states_alone():
    torch.manual_seed(0)
    est = ProgressEstimator(D)
    hidden, ids, mask, rewards = batch()
    hidden = hidden.requires_grad_()
    opt = torch.optim.SGD(est.parameters(), lr=0.01)
    before, _ = progress_loss(est.contributions(hidden, ids, mask), ids, rewards, mask)
    out = est.fit_step(hidden, ids, mask, rewards, opt)
    assert set(out) == {"spa/estimator_loss", "spa/progress_sum_mean"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["spa/estimator_loss"] == pytest.approx(before.item())
    after, _ = progress_loss(est.contributions(hidden, ids, mask), ids, rewards, mask)
    assert after.item() < before.item()
    assert hidden.grad is None


def test_fit_reaches_contributions_that_sum_to_the_reward():
    torch.manual_seed(0)
    est = ProgressEstimator(D)
    hidden, ids, mask, rewards = batch(1)
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    first = est.fit_step(hidden, ids, mask, rewards, opt)["spa/estimator_loss"]
    for _ in range(199):
        last = est.fit_step(hidden, ids, mask, rewards, opt)["spa/estimator_loss"]
    loss, _ = progress_loss(est.contributions(hidden, ids, mask), ids, rewards, mask)
    assert first > 0.1 and last < first and loss.item() < 1e-3
    totals = est.contributions(hidden, ids, mask).sum(1).detach()  # [8] sum over steps
    torch.testing.assert_close(totals, rewards, atol=0.05, rtol=0.0)


def test_a_batch_without_steps_leaves_the_parameters():
    est = ProgressEstimator(D)
    params = [p.detach().clone() for p in est.parameters()]
    ids = torch.full((2, 4), -1)
    out = est.fit_step(
        torch.randn(2, 4, D), ids, torch.zeros(2, 4), torch.ones(2), torch.optim.SGD(est.parameters(), 0.1)
    )
    assert out == {"spa/estimator_loss": 0.0, "spa/progress_sum_mean": 0.0}
    assert all(torch.equal(p, q) for p, q in zip(params, est.parameters(), strict=True))
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        ProgressEstimator(0)


def test_one_step_episodes_through_spa_are_grpo_of_the_estimators_contribution():
    torch.manual_seed(0)
    est = ProgressEstimator(D)
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 1, 3, 6, 2, 6, 4, 1])
    mask = (torch.arange(6) < lengths.unsqueeze(1)).float()  # [8, 6]
    ids = torch.where(mask > 0, 0, -1)  # one step per episode
    hidden = torch.randn(8, 6, D, generator=gen)
    rewards = torch.randint(0, 2, (8,), generator=gen).float()
    gid = ops.contiguous_groups(8, 4)
    c = est.contributions(hidden, ids, mask).detach()  # [8, 6]
    c_seq = c.sum(1)  # [8] the one contribution per episode
    adv, _ = spa(rewards, mask, cfg=SPAConfig(alpha=1.0, beta=0.0), group_id=gid, progress=c, step_ids=ids,
                 step_valid=torch.ones(8, 6))  # fmt: skip
    torch.testing.assert_close(adv, grpo(c_seq, mask, cfg=GRPOConfig(), group_id=gid)[0] * mask)
