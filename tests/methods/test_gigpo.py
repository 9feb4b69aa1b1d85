"""GiGPO: a hand-built two-group batch with shared anchor states, the reduction to GRPO when every episode has one
turn (or omega = 0), environment tokens and padding that change nothing, row-shuffle invariance, parity with
verl-agent's ``core_gigpo`` (a reference loop written from reading it), and bad inputs."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo
from entrolab.methods.gigpo import GiGPOConfig, gigpo


def layout(episodes, model=2, env=1):
    """Rows from ``episodes``: per row a list of turns ``(state, env_reward[, model_tokens])``; a turn is its model
    tokens (the reward on the last) then ``env`` observation tokens. -> mask, step_ids, state_ids, step_rewards"""
    rows = []
    for turns in episodes:
        m, st, sa, sr = [], [], [], []
        for k, turn in enumerate(turns):
            n = turn[2] if len(turn) > 2 else model
            m += [1.0] * n + [0.0] * env
            st += [k] * n + [-1] * env
            sa += [turn[0]] * n + [-1] * env
            sr += [0.0] * (n - 1) + [float(turn[1])] + [0.0] * env
        rows.append((m, st, sa, sr))
    t = max(len(r[0]) for r in rows)
    fill = (0.0, -1, -1, 0.0)
    cols = [[r[i] + [fill[i]] * (t - len(r[i])) for r in rows] for i in range(4)]
    return torch.tensor(cols[0]), torch.tensor(cols[1]), torch.tensor(cols[2]), torch.tensor(cols[3])


def call(r, g, cfg, mask, steps, states, step_r):
    return gigpo(r, mask, cfg=cfg, group_id=g, step_ids=steps, state_ids=states, step_rewards=step_r)


def run(rewards, episodes, gid, cfg, **kw):
    return call(torch.tensor(rewards, dtype=torch.float32), torch.tensor(gid), cfg, *layout(episodes, **kw))


def per_turn(adv, mask, steps):
    """The advantage of each turn (the value on its model tokens, which must all agree)."""
    out = []
    for b in range(adv.shape[0]):
        turns = []
        for k in range(int(steps[b].max()) + 1):
            vals = adv[b][(steps[b] == k) & (mask[b] > 0)]
            assert torch.all(vals == vals[0])
            turns.append(float(vals[0]))
        out.append(turns)
    return out


# Group 0: A (R=1) 10 -> 11 -> 12, B (R=0) 10 -> 11, C (R=1) 10 -> 13.
# Group 1: D (R=0) 10 -> 20 (env reward 0.5) -> 10 (a revisit), E (R=1) 10 -> 20, F (R=0) 10.
# State 10 in group 1 is not state 10 of group 0: step groups never cross env groups.
HAND = [
    [(10, 0.0), (11, 0.0), (12, 0.0)],
    [(10, 0.0), (11, 0.0)],
    [(10, 0.0), (13, 0.0)],
    [(10, 0.0), (20, 0.5), (10, 0.0)],
    [(10, 0.0), (20, 0.0)],
    [(10, 0.0)],
]
HAND_R = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
HAND_GID = [0, 0, 0, 1, 1, 1]


def test_hand_built_two_groups_with_shared_states():
    cfg = GiGPOConfig(gamma=0.5, mode="mean_norm", step_advantage_w=1.0)
    adv, m = run(HAND_R, HAND, HAND_GID, cfg)
    mask, steps, _, _ = layout(HAND)
    # returns (gamma 0.5): A .25 .5 1 | B 0 0 | C .5 1 | D .25 .5 0 | E .5 1 | F 0
    # group 0: A^E = R - 2/3; state 10 {.25, 0, .5} mean .25, state 11 {.5, 0} mean .25, 12 and 13 singletons
    # group 1: A^E = R - 1/3; state 10 {D0 .25, D2 0, E0 .5, F0 0} mean .1875, state 20 {.5, 1} mean .75
    third = 1 / 3
    expected = [
        [third + 0.0, third + 0.25, third + 0.0],
        [-2 * third - 0.25, -2 * third - 0.25],
        [third + 0.25, third + 0.0],
        [-third + 0.0625, -third - 0.25, -third - 0.1875],
        [2 * third + 0.3125, 2 * third + 0.25],
        [-third - 0.1875],
    ]
    got = per_turn(adv, mask, steps)
    for row, exp in zip(got, expected, strict=True):
        assert row == pytest.approx(exp, abs=1e-6)
    assert torch.all(adv[mask == 0] == 0)
    # step groups: sizes 3, 2, 1, 1 | 4, 2 over 13 turns
    assert m["gigpo/step_group_size_mean"].item() == pytest.approx(13 / 6)
    assert m["gigpo/singleton_frac"].item() == pytest.approx(2 / 6)
    assert m["gigpo/step_adv_abs_mean"].item() == pytest.approx((1.0 + 1.25) / 13)
    assert m["gigpo/episode_adv_abs_mean"].item() == pytest.approx((17 / 3) / 13)
    assert m["adv/mean"].item() == pytest.approx(float(adv[mask > 0].mean()), abs=1e-6)
    # relabelling group 1's states (10 -> 30, 20 -> 40) changes nothing: no merging across groups
    relabelled = [[(s + 20 if b >= 3 else s, r) for s, r in turns] for b, turns in enumerate(HAND)]
    assert torch.equal(run(HAND_R, relabelled, HAND_GID, cfg)[0], adv)


def test_hand_built_std_mode_and_turn_weighted_episode_stats():
    std_cfg = GiGPOConfig(gamma=0.5, mode="mean_std_norm")
    mask, steps, _, _ = layout(HAND)
    got = per_turn(run(HAND_R, HAND, HAND_GID, std_cfg)[0], mask, steps)
    # group 0: episode R {1, 0, 1}: std 0.57735; state 10 returns {.25, 0, .5}: std .25 -> A^S 0, -1, 1
    ep = (1 - 2 / 3) / (0.5773503 + 1e-6)
    assert got[0][0] == pytest.approx(ep + 0.0, rel=1e-5) and got[2][0] == pytest.approx(ep + 0.25 / (0.25 + 1e-6))
    # turn-weighted episode stats, omega 0: group 0 weights 3, 2, 2 -> mean 5/7; group 1 weights 3, 2, 1 -> 1/3
    turn_cfg = GiGPOConfig(gamma=0.5, step_advantage_w=0.0, episode_stats="turn")
    got = per_turn(run(HAND_R, HAND, HAND_GID, turn_cfg)[0], mask, steps)
    firsts = [row[0] for row in got]
    assert firsts == pytest.approx([2 / 7, -5 / 7, 2 / 7, -1 / 3, 2 / 3, -1 / 3], abs=1e-6)


def random_episodes(seed, groups=3, size=4, max_turns=4, one_turn=False):
    rng = random.Random(seed)
    episodes, rewards, gid = [], [], []
    for g in range(groups):
        for _ in range(size):
            n = 1 if one_turn else rng.randint(1, max_turns)
            turns = [(100 + g, 0.0 if one_turn else rng.choice([0.0, 0.0, 0.3, -0.2]), rng.randint(1, 3))]
            turns += [(rng.randint(0, 3), rng.choice([0.0, 0.0, 0.3, -0.2]), rng.randint(1, 3)) for _ in range(n - 1)]
            episodes.append(turns)
            rewards.append(rng.choice([0.0, 1.0, 0.5]))
            gid.append(g)
    return episodes, rewards, gid


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode", ["mean_norm", "mean_std_norm"])
@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_one_turn_episodes_reduce_to_grpo(seed, mode, w):
    episodes, rewards, gid = random_episodes(seed, one_turn=True)
    cfg = GiGPOConfig(mode=mode, step_advantage_w=w)
    adv, _ = run(rewards, episodes, gid, cfg, env=2)
    mask = layout(episodes, env=2)[0]
    r, g = torch.tensor(rewards), torch.tensor(gid)
    parent = (
        grpo(r, mask, cfg=GRPOConfig(), group_id=g)[0]
        if mode == "mean_std_norm"
        else dr_grpo(r, mask, cfg=None, group_id=g)[0]
    )
    # the initial state's step group is the episode group: A^S = A^E, so A = (1 + omega) A_grpo
    torch.testing.assert_close(adv, (1 + w) * parent * mask)


@pytest.mark.parametrize("seed", range(3))
def test_omega_zero_is_grpo_broadcast_on_model_tokens(seed):
    episodes, rewards, gid = random_episodes(seed)
    adv, _ = run(rewards, episodes, gid, GiGPOConfig(step_advantage_w=0.0, mode="mean_std_norm"))
    mask = layout(episodes)[0]
    parent = grpo(torch.tensor(rewards), mask, cfg=GRPOConfig(), group_id=torch.tensor(gid))[0]
    torch.testing.assert_close(adv, parent * mask)


def test_environment_tokens_and_padding_change_nothing():
    episodes, rewards, gid = random_episodes(5)
    mask, steps, states, step_r = layout(episodes)
    r, g, cfg = torch.tensor(rewards), torch.tensor(gid), GiGPOConfig(mode="mean_std_norm")
    base, mb = call(r, g, cfg, mask, steps, states, step_r)
    assert torch.all(base[mask == 0] == 0)
    off = mask == 0
    gen = torch.Generator().manual_seed(0)
    junk_ids = torch.randint(-5, 50, steps.shape, generator=gen)
    junk = (junk_ids, junk_ids.flip(0), torch.full_like(step_r, float("nan")))  # on env tokens and padding
    noisy = call(r, g, cfg, mask, *(torch.where(off, j, x) for j, x in zip(junk, (steps, states, step_r), strict=True)))
    assert torch.equal(noisy[0], base)
    assert all(torch.equal(noisy[1][k], mb[k]) for k in mb)
    wide = [
        torch.cat([x, torch.full((x.shape[0], 3), v, dtype=x.dtype)], 1)
        for x, v in ((mask, 0.0), (steps, 7), (states, 3), (step_r, float("inf")))
    ]
    padded = call(r, g, cfg, *wide)
    assert torch.equal(padded[0][:, : mask.shape[1]], base) and torch.all(padded[0][:, mask.shape[1] :] == 0)


def test_row_shuffle_permutes_the_advantages():
    episodes, rewards, gid = random_episodes(7)
    mask, steps, states, step_r = layout(episodes)
    r, g, cfg = torch.tensor(rewards), torch.tensor(gid), GiGPOConfig(mode="mean_std_norm", episode_stats="turn")
    base, mb = call(r, g, cfg, mask, steps, states, step_r)
    perm = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(1))
    out, mo = call(r[perm], g[perm], cfg, *(x[perm] for x in (mask, steps, states, step_r)))
    torch.testing.assert_close(out, base[perm])
    for k in mb:
        torch.testing.assert_close(mo[k], mb[k])


def test_outcome_in_step_rewards_equals_the_default_flag():
    episodes, rewards, gid = random_episodes(3)
    adv = run(rewards, episodes, gid, GiGPOConfig())[0]
    inside = [
        [*turns[:-1], (turns[-1][0], turns[-1][1] + r, turns[-1][2])]
        for turns, r in zip(episodes, rewards, strict=True)
    ]
    torch.testing.assert_close(run(rewards, inside, gid, GiGPOConfig(episode_reward_on_last_step=False))[0], adv)


def verl_agent_reference(episodes, rewards, gid, gamma, w, mode, cross_steps, outcome_on_last=True, eps=1e-6):
    """verl-agent's GiGPO on one row per turn, rebuilt from reading ``gigpo/core_gigpo.py``: discounted returns
    of each trajectory's env rewards (``compute_step_discounted_returns``), the episode score on every turn row
    (``EpisodeRewardManager``) normalised per group (``episode_norm_reward``), clusters of identical anchor
    observations per group (``build_step_group``) normalised per cluster (``step_norm_reward``)."""
    rows = []  # (index, traj, anchor, episode score, env reward)
    for i, turns in enumerate(episodes):
        for k, (state, env_r, *_) in enumerate(turns):
            last = k == len(turns) - 1
            rows.append((gid[i], i, state, rewards[i], env_r + (rewards[i] if last and outcome_on_last else 0.0)))
    returns = [0.0] * len(rows)
    for traj in {row[1] for row in rows}:
        idx = [j for j, row in enumerate(rows) if row[1] == traj]
        running = torch.tensor(0.0)
        for j in reversed(idx):
            running = torch.tensor(rows[j][4], dtype=torch.float32) + gamma * running
            returns[j] = running

    def normalise(values, keys, lone_mean_zero, seen_once=None):
        buckets = defaultdict(list)
        seen = set()
        for j, v in enumerate(values):
            if seen_once is not None and seen_once[j] in seen:
                continue
            buckets[keys[j]].append(v)
            if seen_once is not None:
                seen.add(seen_once[j])
        out = []
        for j, v in enumerate(values):
            vals = torch.tensor([float(x) for x in buckets[keys[j]]])
            if len(vals) == 1:
                mean, std = (torch.tensor(0.0) if lone_mean_zero else vals.mean()), torch.tensor(1.0)
            else:
                mean, std = vals.mean(), vals.std()
            out.append(float(v - mean) if mode == "mean_norm" else float((v - mean) / (std + eps)))
        return out

    scores = [torch.tensor(row[3], dtype=torch.float32) for row in rows]
    pairs = None if cross_steps else [(row[0], row[1]) for row in rows]
    episode = normalise(scores, [row[0] for row in rows], True, pairs)
    clusters = [(row[0], row[2]) for row in rows]  # per index, identical observations
    step = normalise(returns, clusters, False)
    total = [e + w * s for e, s in zip(episode, step, strict=True)]
    per_row = defaultdict(list)
    for row, value in zip(rows, total, strict=True):
        per_row[row[1]].append(value)
    return [per_row[i] for i in range(len(episodes))]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("mode", ["mean_norm", "mean_std_norm"])
@pytest.mark.parametrize("stats", ["episode", "turn"])
@pytest.mark.parametrize("outcome_on_last", [True, False])
def test_parity_with_verl_agent(seed, mode, stats, outcome_on_last):
    episodes, rewards, gid = random_episodes(seed + 10, groups=3, size=5, max_turns=5)
    cfg = GiGPOConfig(
        gamma=0.9, step_advantage_w=0.7, mode=mode, episode_stats=stats, episode_reward_on_last_step=outcome_on_last
    )
    adv, _ = run(rewards, episodes, gid, cfg)
    mask, steps, _, _ = layout(episodes)
    ref = verl_agent_reference(episodes, rewards, gid, 0.9, 0.7, mode, stats == "turn", outcome_on_last)
    for ours, theirs in zip(per_turn(adv, mask, steps), ref, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def test_anchorless_turns_are_singletons():
    episodes = [[(0, 0.0), (-1, 0.0)], [(0, 0.0), (-1, 0.0)]]
    adv, m = run([1.0, 0.0], episodes, [0, 0], GiGPOConfig(gamma=1.0))
    mask, steps, _, _ = layout(episodes)
    # state 0: returns {1, 0} -> A^S +-0.5; the two anchorless turns: A^S 0 (not grouped with each other)
    assert per_turn(adv, mask, steps) == [[1.0, 0.5], [-1.0, -0.5]]
    assert m["gigpo/singleton_frac"].item() == pytest.approx(2 / 3)


def test_bad_inputs():
    mask, steps, states, step_r = layout([[(0, 0.0)], [(0, 0.0)]])
    r, g, cfg = torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long), GiGPOConfig()
    with pytest.raises(ValueError, match="needs step_ids, state_ids and step_rewards"):
        gigpo(r, mask, cfg=cfg, group_id=g, step_ids=steps)
    with pytest.raises(ValueError, match=">= 2 episodes per group"):
        call(r, torch.arange(2), cfg, mask, steps, states, step_r)
    with pytest.raises(ValueError, match="step_ids >= 0"):
        call(r, g, cfg, mask, torch.where(mask > 0, -1, steps), states, step_r)
    bad_states = states.clone()
    bad_states[0, 1] = 5
    with pytest.raises(ValueError, match="equal on all model tokens of a turn"):
        call(r, g, cfg, mask, steps, bad_states, step_r)
    with pytest.raises(ValueError, match=r"mode must be one of \['mean_norm', 'mean_std_norm'\], got 'std'"):
        GiGPOConfig(mode="std")
    with pytest.raises(ValueError, match=r"episode_stats must be one of \['episode', 'turn'\], got 'step'"):
        GiGPOConfig(episode_stats="step")
    with pytest.raises(ValueError, match="gamma must be in"):
        GiGPOConfig(gamma=1.5)
    with pytest.raises(ValueError, match="step_advantage_w must be finite and >= 0"):
        GiGPOConfig(step_advantage_w=-1.0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        GiGPOConfig(eps=-1e-3)


def test_defaults_and_an_empty_batch():
    cfg = GiGPOConfig()
    assert (cfg.step_advantage_w, cfg.gamma, cfg.mode, cfg.episode_stats) == (1.0, 0.95, "mean_norm", "episode")
    none = -torch.ones(4, 3, dtype=torch.long)
    r, g = torch.tensor([1.0, 0, 1, 0]), ops.contiguous_groups(4, 2)
    adv, m = call(r, g, cfg, torch.zeros(4, 3), none, none, torch.zeros(4, 3))
    assert torch.equal(adv, torch.zeros(4, 3)) and all(v.item() == 0 for v in m.values())
