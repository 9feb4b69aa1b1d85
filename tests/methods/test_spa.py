"""SPA-RL: the note's estimator-loss and fusion numbers, step ends around environment tokens, hand-computed
group advantages, the code's variants, the single-turn reduction to GRPO, env-token invariance, config errors."""

from __future__ import annotations

import statistics

import pytest
import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo
from entrolab.methods.spa import METRICS, SPAConfig, progress_loss, spa, step_end_mask
from tests.methods._helpers import same_on_real_columns

NAN = float("nan")


def episodes(turns: list[list[tuple[int, int]]], t: int) -> torch.Tensor:
    """step_ids [B, t] of episodes given as [(model tokens, env tokens) per turn]; -1 on env tokens and padding."""
    rows = []
    for ep in turns:
        row: list[int] = []
        for k, (m, e) in enumerate(ep):
            row += [k] * m + [-1] * e
        rows.append(row + [-1] * (t - len(row)))
    return torch.tensor(rows)


def at_ends(ids: torch.Tensor, values: list[list[float]], fill: float = 0.0) -> torch.Tensor:
    """[B, T] with values[b][k] on the last token of step k of row b, ``fill`` elsewhere."""
    out = torch.full(ids.shape, fill)
    ends = step_end_mask(ids)
    for b, vals in enumerate(values):
        out[b, ends[b].nonzero().squeeze(-1)] = torch.tensor(vals)
    return out


def run(ids, c, g, rewards, cfg, gid=None, mask=None):
    mask = (ids >= 0).float() if mask is None else mask
    gid = torch.zeros(ids.shape[0], dtype=torch.long) if gid is None else gid
    return spa(torch.tensor(rewards), mask, cfg=cfg, group_id=gid, progress=c, step_ids=ids, step_valid=g)


def all_steps(adv: torch.Tensor, ids: torch.Tensor) -> list[float]:
    """The value at each step end, row by row."""
    return adv[step_end_mask(ids)].tolist()


def per_step(adv: torch.Tensor, ids: torch.Tensor) -> list[list[float]]:
    ends = step_end_mask(ids)
    return [adv[b][ends[b]].tolist() for b in range(adv.shape[0])]


# episode A: 3 turns with observations in between; episode B: 1 turn
IDS = episodes([[(2, 2), (1, 1), (2, 0)], [(3, 2)]], t=9)
C = at_ends(IDS, [[0.2, 0.3, 0.5], [0.1]])
G_VALID = at_ends(IDS, [[1.0, 0.0, 1.0], [0.0]])


def test_step_end_mask_around_environment_tokens():
    ids = torch.tensor([[0, 0, -1, -1, 1, -1, 2, 2, -1, -1], [0, -1, 1, 1, 1, -1, -1, -1, -1, -1]])
    expect = torch.tensor([[0, 1, 0, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]]).bool()
    assert torch.equal(step_end_mask(ids), expect)
    assert not step_end_mask(torch.full((2, 3), -1)).any()


def test_progress_loss_note_numbers_and_equal_gradients():
    # the note: c = [0.2, 0.3, 0.4], R = 1 -> (0.9 - 1)^2 = 0.01, d loss / d c_t = 2 (0.9 - 1) = -0.2 for every t
    ids = episodes([[(2, 1), (1, 2), (1, 0)]], t=8)  # step ends at columns 1, 3, 6
    c = at_ends(ids, [[0.2, 0.3, 0.4]], fill=NAN).requires_grad_()  # garbage off the ends
    loss, m = progress_loss(c, ids, torch.tensor([1.0]), (ids >= 0).float())
    assert loss.item() == pytest.approx(0.01)
    loss.backward()
    assert c.grad[0, [1, 3, 6]].tolist() == pytest.approx([-0.2, -0.2, -0.2])
    assert torch.all(c.grad[0, [0, 2, 4, 5, 7]] == 0)
    assert m["spa/estimator_loss"].item() == pytest.approx(0.01) and not m["spa/estimator_loss"].requires_grad
    assert m["spa/progress_sum_mean"].item() == pytest.approx(0.9)


def test_progress_loss_averages_over_trajectories_with_a_step():
    ids = torch.tensor([[0, 1], [0, 0], [-1, -1]])  # the last row has no step: left out
    c = torch.tensor([[0.5, 0.5], [0.0, 0.2], [7.0, 7.0]])
    loss, _ = progress_loss(c, ids, torch.tensor([0.0, 1.0, 5.0]), (ids >= 0).float())
    assert loss.item() == pytest.approx((1.0**2 + 0.8**2) / 2)


def test_fusion_note_numbers():
    # alpha 1, beta 0.5, c = [0.2, 0.3, 0.5], g = [1, 0, 1] -> r = [0.7, 0.3, 1.0]; gamma 0 and no std leave r - mean r
    cfg = SPAConfig(alpha=1.0, beta=0.5, gamma=0.0, norm_by_std=False)
    ids = IDS[:1]
    adv, m = run(ids, C[:1], G_VALID[:1], [1.0], cfg)
    mean = m["spa/step_reward_mean"].item()
    assert mean == pytest.approx(2.0 / 3.0)
    assert [a + mean for a in per_step(adv, ids)[0]] == pytest.approx([0.7, 0.3, 1.0])
    assert m["spa/grounded_frac"].item() == pytest.approx(2.0 / 3.0)
    assert m["spa/progress_mean"].item() == pytest.approx(1.0 / 3.0)
    assert m["spa/attribution_mse"].item() == pytest.approx(0.0)


def test_hand_computed_group_advantage():
    # A: r = [0.7, 0.3, 1.0] -> reward-to-go [2.0, 1.3, 1.0]; B: r = 0.1 + 0.5 (last step grounded) = 0.6
    vals = [2.0, 1.3, 1.0, 0.6]
    mean = sum(vals) / 4
    adv, m = run(IDS, C, G_VALID, [1.0, 0.0], SPAConfig(norm_by_std=False))
    assert all_steps(adv, IDS) == pytest.approx([v - mean for v in vals])
    # every model token of a step carries its step's value; env tokens and padding 0
    assert adv[0].tolist() == pytest.approx([0.775, 0.775, 0, 0, 0.075, 0, -0.225, -0.225, 0])
    assert adv[1].tolist() == pytest.approx([-0.625] * 3 + [0] * 6)
    adv_std, _ = run(IDS, C, G_VALID, [1.0, 0.0], SPAConfig())
    sd = statistics.stdev(vals)
    assert all_steps(adv_std, IDS) == pytest.approx([(v - mean) / (sd + 1e-6) for v in vals])
    assert m["spa/steps_mean"].item() == 2.0
    assert m["spa/attribution_mse"].item() == pytest.approx(((1.0 - 1.0) ** 2 + (0.1 - 0.0) ** 2) / 2)
    # B's last step by its own step_valid (0): r_B = 0.1
    adv_g, _ = run(IDS, C, G_VALID, [1.0, 0.0], SPAConfig(norm_by_std=False, last_step_grounded=False))
    vals_g = [2.0, 1.3, 1.0, 0.1]
    assert all_steps(adv_g, IDS) == pytest.approx([v - sum(vals_g) / 4 for v in vals_g])
    # gamma 0.5: A's reward-to-go [0.7 + 0.5 (0.3 + 0.5 * 1.0), 0.3 + 0.5 * 1.0, 1.0] = [1.1, 0.8, 1.0]
    adv_d, _ = run(IDS, C, G_VALID, [1.0, 0.0], SPAConfig(norm_by_std=False, gamma=0.5))
    vals_d = [1.1, 0.8, 1.0, 0.6]
    assert all_steps(adv_d, IDS) == pytest.approx([v - sum(vals_d) / 4 for v in vals_d])


def test_code_variants_loo_reward_and_remaining_steps_multiplier():
    # loo_reward: c = R_i - mean_{j != i} R_j for every step, the estimator's values ignored
    ids = episodes([[(2, 1)], [(1, 0)], [(3, 0)]], t=4)
    cfg = SPAConfig(contribution="loo_reward", beta=0.0, gamma=0.0, norm_by_std=False)
    adv, m = run(ids, at_ends(ids, [[9.0], [9.0], [9.0]]), torch.zeros(3, 4), [1.0, 0.0, 0.5], cfg)
    assert all_steps(adv, ids) == pytest.approx([0.75, -0.75, 0.0])  # their mean is 0
    assert m["spa/progress_mean"].item() == pytest.approx(9.0)  # the metric still reports the estimator
    # a group of one keeps R_i (as the code)
    one = SPAConfig(contribution="loo_reward", beta=0.0, gamma=0.0, norm_by_std=False)
    _, m1 = run(ids[:1], torch.zeros(1, 4), torch.zeros(1, 4), [0.8], one)
    assert m1["spa/step_reward_mean"].item() == pytest.approx(0.8)
    # remaining: r_k (K - k - 1): [0.7, 0.3, 1.0] * [2, 1, 0] = [1.4, 0.3, 0.0]
    cfg_r = SPAConfig(step_weight="remaining", gamma=0.0, norm_by_std=False)
    adv_r, m_r = run(IDS[:1], C[:1], G_VALID[:1], [1.0], cfg_r)
    assert m_r["spa/step_reward_mean"].item() == pytest.approx(1.7 / 3)
    assert per_step(adv_r, IDS[:1])[0] == pytest.approx([1.4 - 1.7 / 3, 0.3 - 1.7 / 3, -1.7 / 3])


def single_turn_batch(seed: int):
    """P = 3 groups of 4 one-step episodes (step_ids 0 on the mask) of ragged length, c at each last token."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 1, 3, 6, 2, 6, 4, 1, 3, 3, 5, 2])
    mask = (torch.arange(6) < lengths.unsqueeze(1)).float()  # [12, 6]
    ids = torch.where(mask > 0, 0, -1)
    c_seq = torch.randn(12, generator=gen)
    c = at_ends(ids, [[v] for v in c_seq.tolist()], fill=NAN)
    valid = (torch.rand(12, 6, generator=gen) > 0.5).float()
    rewards = torch.randint(0, 2, (12,), generator=gen).float()
    return mask, ids, c, c_seq, valid, rewards, ops.contiguous_groups(12, 4)


@pytest.mark.parametrize("seed", range(3))
def test_one_step_per_episode_reduces_to_grpo_of_the_contribution(seed):
    mask, ids, c, c_seq, valid, rewards, gid = single_turn_batch(seed)

    def ours(cfg):
        return spa(rewards, mask, cfg=cfg, group_id=gid, progress=c, step_ids=ids, step_valid=valid)[0]

    ref = grpo(c_seq, mask, cfg=GRPOConfig(), group_id=gid)[0] * mask  # [B, 1] broadcast on the tokens
    torch.testing.assert_close(ours(SPAConfig(alpha=1.0, beta=0.0)), ref)
    torch.testing.assert_close(ours(SPAConfig()), ref)  # beta 0.5, last step grounded: a constant shift
    ref_dr = dr_grpo(c_seq, mask, cfg=None, group_id=gid)[0] * mask
    torch.testing.assert_close(ours(SPAConfig(beta=0.0, norm_by_std=False)), ref_dr)
    # the code's loo_reward with one step is GRPO on R itself (z-scores are scale-free, up to eps)
    ref_r = grpo(rewards, mask, cfg=GRPOConfig(), group_id=gid)[0] * mask
    torch.testing.assert_close(ours(SPAConfig(contribution="loo_reward")), ref_r, atol=1e-5, rtol=1e-5)
    # the code's (K - k - 1) multiplier zeroes a single step's reward
    assert torch.all(ours(SPAConfig(step_weight="remaining")) == 0)


def test_env_tokens_get_zero_and_garbage_there_changes_nothing():
    mask = (IDS >= 0).float()
    base, mb = run(IDS, C, G_VALID, [1.0, 0.0], SPAConfig())
    assert torch.all(base[mask == 0] == 0)
    off = mask == 0
    c_g = torch.where(off, NAN, C)
    valid_g = torch.where(off, 1.0, G_VALID)
    ids_g = torch.where(off, 5, IDS)  # garbage ids on env tokens: only the mask's tokens count
    # garbage on model tokens that are not a step end is not read either
    c_g[0, 0], valid_g[0, 0] = 123.0, 0.0
    out, mo = spa(torch.tensor([1.0, 0.0]), mask, cfg=SPAConfig(), group_id=torch.zeros(2, dtype=torch.long),
                  progress=c_g, step_ids=ids_g, step_valid=valid_g)  # fmt: skip
    assert torch.equal(out, base)
    assert all(torch.equal(mb[k], mo[k]) for k in mb)
    # extra padding columns of garbage change nothing either
    pad = lambda x, v: torch.cat([x, torch.full((2, 3), v, dtype=x.dtype)], 1)  # noqa: E731
    wide, mw = spa(torch.tensor([1.0, 0.0]), pad(mask, 0.0), cfg=SPAConfig(), group_id=torch.zeros(2, dtype=torch.long),
                   progress=pad(C, NAN), step_ids=pad(IDS, 4), step_valid=pad(G_VALID, NAN))  # fmt: skip
    same_on_real_columns((base, mb), (wide, mw))


def test_row_order_and_group_ids_do_not_matter():
    ids = episodes([[(2, 1), (1, 0)], [(1, 1), (1, 1), (1, 0)], [(3, 0)], [(1, 2), (2, 0)]], t=6)
    c = at_ends(ids, [[0.1, 0.9], [0.2, 0.3, 0.1], [0.7], [0.0, 0.4]])
    g = at_ends(ids, [[1.0, 0.0], [0.0, 1.0, 1.0], [0.0], [1.0, 1.0]])
    r = [1.0, 0.0, 1.0, 0.0]
    gid = torch.tensor([0, 1, 0, 1])
    adv, _ = run(ids, c, g, r, SPAConfig(), gid=gid)
    perm = torch.tensor([3, 0, 2, 1])
    adv_p, _ = run(ids[perm], c[perm], g[perm], [r[i] for i in perm], SPAConfig(), gid=gid[perm] + 7)
    torch.testing.assert_close(adv_p, adv[perm])


def test_metric_keys_rows_without_steps_and_missing_inputs():
    ids = torch.cat([IDS, torch.full((2, 9), -1)])  # a second group of two empty episodes
    c = torch.cat([C, torch.zeros(2, 9)])
    g = torch.cat([G_VALID, torch.zeros(2, 9)])
    adv, m = run(ids, c, g, [1.0, 0.0, 1.0, 1.0], SPAConfig(), gid=torch.tensor([0, 0, 1, 1]))
    assert sorted(m) == sorted(METRICS)
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in m.values())
    assert torch.all(adv[2:] == 0) and m["spa/steps_mean"].item() == 2.0
    with pytest.raises(ValueError, match="spa needs progress"):
        spa(torch.zeros(2), torch.ones(2, 3), cfg=SPAConfig(), group_id=torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contribution": "oracle"}, r"contribution must be one of \['estimator', 'loo_reward'\], got 'oracle'"),
        ({"step_weight": "half"}, r"step_weight must be one of \['one', 'remaining'\], got 'half'"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\], got 1.5"),
        ({"alpha": -1.0}, r"alpha must be finite and >= 0, got -1.0"),
        ({"beta": float("nan")}, r"beta must be finite and >= 0, got nan"),
        ({"eps": -1e-3}, r"eps must be finite and >= 0, got -0.001"),
    ],
)
def test_config_errors_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SPAConfig(**kwargs)
