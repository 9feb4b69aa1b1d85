"""Parity of the advantage estimators with verl 0.9.1's ``get_adv_estimator_fn(name)`` (reference venv only).

verl sees what its trainer passes: ``token_level_rewards [B, T]`` with the score on each row's last response
token, a ragged ``response_mask``, ``index`` = the rows' uids as a numpy object array (rows shuffled, groups
not contiguous), an ``AlgoConfig``, and the estimator's extra inputs (``reward_baselines``, ``old_log_probs``,
``sum_pi_squared``). Everything is fp64 and compared to 1e-6 on the response tokens, except where verl computes
in fp32 itself (``grpo_vectorized``'s ``group_mean_std``, ``gdpo``'s per-component scores): there 1e-5.
(verl's ``gpg`` computes its alpha as an fp32 tensor: ~1e-7 off an fp64 value, inside 1e-6.)

``gdpo``'s default batch step is the paper's and TRL's (sequence-level, std + eps); verl whitens over tokens,
which is ``gdpo.batch_stats="tokens"``: the tests check both that the default differs and that the option matches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entrolab import ops
from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo, rloo
from entrolab.methods.group_baselines import GPGConfig, GrpoPasskConfig, gpg, grpo_passk, opo
from entrolab.methods.marble import GdpoConfig, gdpo
from entrolab.methods.optimal_baseline import (
    OptimalTokenBaselineConfig,
    optimal_token_baseline,
    sum_pi_sq_from_logits,
    tir_optimal_token_baseline,
)
from entrolab.methods.reinforce_pp import (
    ReinforcePPBaselineConfig,
    ReinforcePPConfig,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
)

SEEDS = range(4)
TOL = dict(atol=1e-6, rtol=0)
TOL_FP32 = dict(atol=1e-5, rtol=0)  # verl computes these in fp32 internally (measured: <= 3e-7)


@pytest.fixture(scope="module")
def verl():
    pytest.importorskip("verl")
    from verl.trainer.config.algorithm import AlgoConfig
    from verl.trainer.ppo import core_algos
    from verl.utils import torch_functional as verl_F

    return core_algos, AlgoConfig, verl_F


def _batch(seed: int, p: int = 5, g: int = 4, t: int = 10, binary: bool = False, holes: bool = False):
    """Shuffled groups, ragged (optionally holed) masks with a few empty rows, the score on the last token."""
    gen = torch.Generator().manual_seed(seed)
    b = p * g
    lengths = torch.randint(0, t + 1, (b,), generator=gen)
    lengths[0] = t
    mask = torch.arange(t) < lengths.unsqueeze(-1)  # [B, T]
    if holes:  # multi-turn: observation tokens inside a response are masked out
        mask &= (torch.rand(b, t, generator=gen) < 0.7) | (torch.arange(t) == 0)
    mask = mask.double()
    if binary:
        rewards = torch.randint(0, 2, (b,), generator=gen).double()
    else:
        rewards = torch.randn(b, generator=gen, dtype=torch.float64) * 2
    group_id = ops.contiguous_groups(b, g)[torch.randperm(b, generator=gen)]
    uid = np.array([f"uid-{int(i)}" for i in group_id], dtype=object)
    # the last response token; an empty row's score lands on column -1, as verl's reward manager writes it
    last = torch.where(mask.sum(-1) > 0, (mask * torch.arange(1, t + 1)).argmax(-1), t - 1)  # [B]
    scores = torch.zeros(b, t, dtype=torch.float64)
    scores[torch.arange(b), last] = rewards
    return rewards, mask, group_id, uid, scores


def _on_mask(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return adv.expand_as(mask) * mask


# ------------------------------------------------------------------------------------------- existing methods


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name", ["grpo", "grpo_vectorized"])
def test_grpo_and_dr_grpo_match_verl(verl, seed, binary, name):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed, binary=binary)
    tol = TOL if name == "grpo" else TOL_FP32
    for norm in (True, False):
        ref, _ = core_algos.get_adv_estimator_fn(name)(
            token_level_rewards=scores, response_mask=mask, index=uid, norm_adv_by_std_in_grpo=norm, config=AlgoConfig()
        )
        ours, _ = grpo(rewards, mask, cfg=GRPOConfig(norm_by_std=norm), group_id=gid)
        torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **tol)
        if not norm:
            dr, _ = dr_grpo(rewards, mask, cfg=None, group_id=gid)
            torch.testing.assert_close(_on_mask(dr, mask), ref * mask, **tol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["rloo", "rloo_vectorized"])
def test_rloo_matches_verl(verl, seed, name):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed)
    ref, _ = core_algos.get_adv_estimator_fn(name)(
        token_level_rewards=scores, response_mask=mask, index=uid, config=AlgoConfig()
    )
    ours, _ = rloo(rewards, mask, cfg=None, group_id=gid)
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)


def _verl_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's masked_whiten of a per-row value over the response tokens, written out."""
    x = values.expand_as(mask)
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


@pytest.mark.parametrize("seed", SEEDS)
def test_gdpo_group_stage_matches_verl_and_batch_step_differs(verl, seed):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, _ = _batch(seed, binary=True)
    gen = torch.Generator().manual_seed(100 + seed)
    parts = torch.stack([rewards, torch.rand(rewards.shape[0], generator=gen, dtype=torch.float64).round()], 1)
    parts = parts.float().double()  # verl reads the components as float32
    b, t = mask.shape
    cfg = AlgoConfig(gdpo_reward_keys=["acc", "fmt"], gdpo_reward_weights=[1.0, 0.5])
    attention = torch.cat([torch.ones(b, 3, dtype=torch.long), mask.long()], 1)  # 3 prompt tokens, then the response
    batch = {"prompts": torch.zeros(b, 3, dtype=torch.long), "attention_mask": attention}
    non_tensor = {"acc": parts[:, 0].numpy().astype(np.float32), "fmt": parts[:, 1].numpy().astype(np.float32)}
    ref, _ = core_algos.get_adv_estimator_fn("gdpo")(
        token_level_rewards=torch.zeros(b, t, dtype=torch.float64),
        response_mask=mask,
        index=uid,
        config=cfg,
        non_tensor_batch=non_tensor,
        batch=batch,
    )
    summed, _ = gdpo(
        rewards, mask, cfg=GdpoConfig(weights=(1.0, 0.5), batch_norm=False), group_id=gid, reward_parts=parts
    )
    torch.testing.assert_close(_verl_whiten(summed, mask), ref.double() * mask, **TOL_FP32)
    ours, _ = gdpo(rewards, mask, cfg=GdpoConfig(weights=(1.0, 0.5)), group_id=gid, reward_parts=parts)
    assert (_on_mask(ours, mask) - ref * mask).abs().max() > 1e-3  # sequence-level vs token-level batch step
    verl_like = GdpoConfig(weights=(1.0, 0.5), batch_stats="tokens")
    ours, _ = gdpo(rewards, mask, cfg=verl_like, group_id=gid, reward_parts=parts)
    torch.testing.assert_close(_on_mask(ours, mask), ref.double() * mask, **TOL_FP32)


@pytest.mark.parametrize("seed", SEEDS)
def test_gdpo_one_component_is_grpo_then_verls_token_whitening(verl, seed):
    # without its config verl's gdpo whitens grpo's advantages over the tokens (all fp64)
    core_algos, _, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed)
    ref, _ = core_algos.get_adv_estimator_fn("gdpo")(token_level_rewards=scores, response_mask=mask, index=uid)
    summed, _ = gdpo(rewards, mask, cfg=GdpoConfig(batch_norm=False), group_id=gid, reward_parts=rewards[:, None])
    torch.testing.assert_close(_verl_whiten(summed, mask), ref * mask, **TOL)
    ours, _ = gdpo(rewards, mask, cfg=GdpoConfig(batch_stats="tokens"), group_id=gid, reward_parts=rewards[:, None])
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)


# ---------------------------------------------------------------------------------------------- new methods


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("holes", [False, True])
def test_reinforce_pp_matches_verl(verl, seed, gamma, holes):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, _, scores = _batch(seed, holes=holes)
    ref, _ = core_algos.get_adv_estimator_fn("reinforce_plus_plus")(
        token_level_rewards=scores, response_mask=mask, config=AlgoConfig(gamma=gamma)
    )
    ours, _ = reinforce_pp(rewards, mask, cfg=ReinforcePPConfig(gamma=gamma), group_id=gid)
    torch.testing.assert_close(ours, ref * mask, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("holes", [False, True])
def test_reinforce_pp_baseline_matches_verl(verl, seed, holes):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed, binary=seed % 2 == 0, holes=holes)
    ref, _ = core_algos.get_adv_estimator_fn("reinforce_plus_plus_baseline")(
        token_level_rewards=scores, response_mask=mask, index=uid, config=AlgoConfig()
    )
    ours, _ = reinforce_pp_baseline(rewards, mask, cfg=ReinforcePPBaselineConfig(), group_id=gid)
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_remax_matches_verl(verl, seed):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, _, scores = _batch(seed)
    greedy = torch.randn(rewards.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref, _ = core_algos.get_adv_estimator_fn("remax")(
        token_level_rewards=scores, reward_baselines=greedy, response_mask=mask, config=AlgoConfig()
    )
    ours, _ = remax(rewards, mask, cfg=None, group_id=gid, greedy_rewards=greedy)
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_opo_matches_verl(verl, seed):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed)
    ref, _ = core_algos.get_adv_estimator_fn("opo")(
        token_level_rewards=scores, response_mask=mask, index=uid, config=AlgoConfig()
    )
    ours, _ = opo(rewards, mask, cfg=None, group_id=gid)
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("norm", [True, False])
def test_grpo_passk_matches_verl(verl, seed, binary, norm):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed, binary=binary)
    ref, _ = core_algos.get_adv_estimator_fn("grpo_passk")(
        token_level_rewards=scores, response_mask=mask, index=uid, config=AlgoConfig(norm_adv_by_std_in_grpo=norm)
    )
    ours, _ = grpo_passk(rewards, mask, cfg=GrpoPasskConfig(norm_by_std=norm), group_id=gid)
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [False, True])
def test_gpg_matches_verl_with_its_alpha(verl, seed, binary):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed, binary=binary)
    ref, _ = core_algos.get_adv_estimator_fn("gpg")(
        token_level_rewards=scores, response_mask=mask, index=uid, config=AlgoConfig()
    )
    ours, m = gpg(rewards, mask, cfg=GPGConfig(alpha="nonzero_rewards"), group_id=gid)
    torch.testing.assert_close(_on_mask(ours, mask), ref * mask, **TOL)
    assert m["gpg/alpha"].item() == pytest.approx(rewards.numel() / max(int((rewards != 0).sum()), 1))


def _policy(seed: int, mask: torch.Tensor, v: int = 7):
    gen = torch.Generator().manual_seed(1000 + seed)
    logits = torch.randn(*mask.shape, v, generator=gen, dtype=torch.float64) * 2
    tokens = torch.randint(0, v, mask.shape, generator=gen)
    old_logp = ops.logprobs_from_logits(logits, tokens)  # [B, T]
    return logits, old_logp


def test_sum_pi_sq_matches_verl(verl):
    _, _, verl_F = verl
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    torch.testing.assert_close(sum_pi_sq_from_logits(logits), verl_F.calculate_sum_pi_squared_from_logits(logits))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("zero_tail", [True, False])
@pytest.mark.parametrize("g", [4, 1])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("name", ["optimal_token_baseline", "tir_optimal_token_baseline"])
def test_optimal_token_baseline_matches_verl(verl, seed, zero_tail, g, holes, name):
    core_algos, AlgoConfig, _ = verl
    rewards, mask, gid, uid, scores = _batch(seed, p=20 // g, g=g, holes=holes)
    logits, old_logp = _policy(seed, mask)
    spq = sum_pi_sq_from_logits(logits)
    ref, _ = core_algos.get_adv_estimator_fn(name)(
        token_level_rewards=scores,
        response_mask=mask,
        index=uid,
        old_log_probs=old_logp,
        sum_pi_squared=spq,
        handle_zero_tail=zero_tail,
        config=AlgoConfig(),
    )
    fn = optimal_token_baseline if name == "optimal_token_baseline" else tir_optimal_token_baseline
    cfg = OptimalTokenBaselineConfig(handle_zero_tail=zero_tail)
    ours, _ = fn(rewards, mask, cfg=cfg, group_id=gid, old_logp=old_logp, sum_pi_sq=spq)
    torch.testing.assert_close(ours, ref * mask, **TOL)
