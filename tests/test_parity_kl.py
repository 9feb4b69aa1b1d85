"""Parity of ``entrolab.methods.kl`` with verl and TRL (skipped where they are not installed).

- ``kl_estimate`` against verl ``core_algos.kl_penalty`` for every estimator name, value and gradient w.r.t.
  logp, elementwise and through ``agg_loss`` in each of its modes (verl's ``use_kl_loss`` path);
- ``kl_in_reward`` against verl ``ray_trainer.apply_kl_penalty`` on a ``DataProto`` (the sum of its token-level
  rewards, its two metrics), and ``adaptive_kl`` against ``AdaptiveKLController.update`` (chained over steps,
  n_steps = the batch size as ``apply_kl_penalty`` passes it);
- ``kl_estimate`` k3 / k3_is (``clamp=None``) against TRL ``GRPOTrainer._compute_loss``'s KL term, run on a
  stand-in ``self`` with zero advantages, so that the loss is exactly beta times the aggregated per-token KL.

Seeded fp64 and fp32 batches with ragged masks (one full row, some empty rows), tolerance 1e-6. Run in the
reference venv:

    .venv-ref/bin/python -m pytest tests/test_parity_kl.py
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.kl import (
    KL_ESTIMATORS,
    AdaptiveKLConfig,
    KLInRewardConfig,
    adaptive_kl,
    kl_estimate,
    kl_in_reward,
)

SEEDS = range(4)
TOL = dict(atol=1e-6, rtol=1e-6)
VERL_NAMES = [e for e in KL_ESTIMATORS if not e.endswith("_is")]
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _batch(seed: int, b: int = 16, t: int = 32, dtype=torch.float64, spread: float = 3.0):
    """Ragged batch: log-probs of the policy (with grad), the behaviour policy and the reference; wide log-ratios
    (sd ``spread``) so that verl's k3 clamps act, plus a few entries beyond its +-20 log-ratio clamp."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)  # [B, T]
    ref = -torch.rand(b, t, generator=g, dtype=dtype) * 4
    old = ref + spread * torch.randn(b, t, generator=g, dtype=dtype)
    old[0, :3] = ref[0, :3] + torch.tensor([25.0, -25.0, -3.0], dtype=dtype)
    logp = (old + 0.3 * torch.randn(b, t, generator=g, dtype=dtype)).requires_grad_()
    return mask, logp, old, ref


def _grad(value: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, logp, retain_graph=True)[0]


# --------------------------------------------------------------------------------------------------- verl


@pytest.fixture(scope="module")
def core_algos():
    pytest.importorskip("verl")
    from verl.trainer.ppo import core_algos

    return core_algos


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", VERL_NAMES)
def test_kl_estimate_matches_verl_kl_penalty(core_algos, name, dtype, seed):
    mask, logp, _, ref = _batch(seed, dtype=dtype)
    theirs = core_algos.kl_penalty(logp, ref, kl_penalty=name)  # [B, T]
    ours = kl_estimate(logp, ref, name)  # [B, T], verl's clamp by default
    torch.testing.assert_close(ours, theirs, **TOL)
    weights = torch.rand(logp.shape, generator=torch.Generator().manual_seed(99), dtype=dtype)
    torch.testing.assert_close(_grad((ours * weights).sum(), logp), _grad((theirs * weights).sum(), logp), **TOL)
    if name.removesuffix("+") in ("k3", "low_var_kl"):
        assert (theirs.detach() == 10).any(), "the batch exercises verl's k3 value clamp"
    # masked: ours reads nothing where mask is 0, verl multiplies by the mask
    masked = kl_estimate(logp, ref, name, mask=mask)
    torch.testing.assert_close(masked, theirs * mask, **TOL)
    torch.testing.assert_close(_grad(masked.sum(), logp), _grad((theirs * mask).sum(), logp), **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("name", ["low_var_kl", "k3+", "kl", "mse", "abs"])
def test_kl_loss_through_every_aggregation_matches_verl_use_kl_loss(core_algos, name, mode, seed):
    """verl ``losses.ppo_loss``: agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type), response_mask)."""
    mask, logp, _, ref = _batch(seed, spread=1.0)
    theirs = core_algos.agg_loss(core_algos.kl_penalty(logp, ref, kl_penalty=name), mask, mode)
    ours = aggregate(kl_estimate(logp, ref, name, mask=mask), mask, mode)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(_grad(ours, logp), _grad(theirs, logp), **TOL)


@pytest.fixture(scope="module")
def verl_reward():
    pytest.importorskip("verl")
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty

    def run(ctrl, name, mask, old, ref, scores):
        data = DataProto.from_dict(
            tensors={"response_mask": mask, "token_level_scores": scores, "old_log_probs": old, "ref_log_prob": ref}
        )
        data, metrics = apply_kl_penalty(data, kl_ctrl=ctrl, kl_penalty=name)
        return data.batch["token_level_rewards"], metrics

    return run


def _scores(mask: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 0/1 reward [B] on each row's last valid token (none on empty rows), as verl's reward manager."""
    b = mask.shape[0]
    r = torch.randint(0, 2, (b,), generator=torch.Generator().manual_seed(seed)).to(mask.dtype)
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    scores = torch.zeros_like(mask).scatter(1, last.unsqueeze(-1), r.unsqueeze(-1)) * mask
    return scores.sum(-1), scores


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["kl", "low_var_kl", "mse", "abs", "k3+"])
def test_kl_in_reward_and_adaptive_kl_match_verl_apply_kl_penalty(core_algos, verl_reward, name, seed):
    """Six steps: verl's controller and reward vs the schedule feeding kl_in_reward through ``state``."""
    acfg = AdaptiveKLConfig(target=0.1, horizon=200.0, coef_init=0.05, samples_per_step=16)
    ctrl = core_algos.AdaptiveKLController(init_kl_coef=0.05, target_kl=0.1, horizon=200)
    state, observed, coefs = {}, {}, []
    for step in range(1, 7):
        mask, _, old, ref = _batch(100 * seed + step, spread=0.2 * step)  # the KL grows across steps
        r, scores = _scores(mask, seed + step)
        state, values = adaptive_kl(state, observed, cfg=acfg, step=step, total_steps=6)
        beta = ctrl.value
        # not exact: verl's masked_mean adds 1e-8 to each row's token count, so the KLs fed back differ ~1e-9
        assert values["kl_in_reward.coef"] == pytest.approx(beta, rel=1e-6, abs=0)
        token_rewards, vm = verl_reward(ctrl, name, mask, old, ref, scores)
        shaped, m = kl_in_reward(
            r,
            mask,
            cfg=KLInRewardConfig(estimator=name),
            group_id=None,
            lengths=None,
            truncated=None,
            max_length=mask.shape[1],
            ref_logp=ref,
            old_logp=old,
            state={"coef": values["kl_in_reward.coef"]},
        )
        torch.testing.assert_close(shaped, token_rewards.sum(-1), **TOL)
        assert m["kl_reward/kl"].item() == pytest.approx(vm["actor/reward_kl_penalty"], abs=1e-6)
        assert m["kl_reward/coef"].item() == pytest.approx(vm["actor/reward_kl_penalty_coeff"], rel=1e-6)
        observed = {k: float(v) for k, v in m.items()}
        coefs.append(beta)
    assert coefs[-1] != coefs[0]  # the controller moved


def test_adaptive_kl_matches_verl_controller_over_a_kl_sequence(core_algos):
    """Below, inside and beyond the +-20% clip band; n_steps = samples_per_step."""
    kls = [0.0, 0.05, 0.09, 0.1, 0.11, 0.3, 1.0, 0.12, 0.02, 0.1]
    for horizon, n in [(10000.0, 128), (50.0, 64), (7.0, 1)]:
        ctrl = core_algos.AdaptiveKLController(init_kl_coef=0.2, target_kl=0.1, horizon=horizon)
        cfg = AdaptiveKLConfig(target=0.1, horizon=horizon, coef_init=0.2, samples_per_step=n)
        state, values = adaptive_kl({}, {}, cfg=cfg, step=1, total_steps=11)
        for step, kl in enumerate(kls, start=2):
            assert values["kl_in_reward.coef"] == float(ctrl.value)  # exact: the same float operations
            ctrl.update(current_kl=kl, n_steps=n)
            state, values = adaptive_kl(state, {"kl_reward/kl": kl}, cfg=cfg, step=step, total_steps=11)
        assert values["kl_in_reward.coef"] == float(ctrl.value)
    fixed = core_algos.FixedKLController(kl_coef=0.3)  # verl's fixed controller: the constant coef, no schedule
    fixed.update(current_kl=5.0, n_steps=128)
    assert fixed.value == KLInRewardConfig(coef=0.3).coef


# ---------------------------------------------------------------------------------------------------- TRL


@pytest.fixture(scope="module")
def trl_kl_loss():
    pytest.importorskip("trl")
    from accelerate import Accelerator
    from trl import GRPOTrainer

    accelerator = Accelerator(cpu=True)

    def run(logp, old, ref, mask, *, bias_correction: bool, loss_type: str, beta: float = 0.7):
        """TRL's loss with zero advantages: exactly beta * aggregate(per_token_kl); and its logged ``kl``."""
        stub = SimpleNamespace(
            _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            importance_sampling_level="token",
            beta=beta,
            args=SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None),
            loss_type=loss_type,
            epsilon_low=0.2,
            epsilon_high=0.2,
            use_vllm=False,
            model=SimpleNamespace(training=True),
            current_gradient_accumulation_steps=1,
            accelerator=accelerator,
            _entropy_bonus_enabled=False,
            aux_loss_enabled=False,
            _metrics={"train": defaultdict(list)},
        )
        b, t = mask.shape
        inputs = {
            "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
            "prompt_mask": torch.ones(b, 2, dtype=torch.long),
            "completion_ids": torch.zeros(b, t, dtype=torch.long),
            "completion_mask": mask,
            "advantages": torch.zeros(b, dtype=logp.dtype),
            "ref_per_token_logps": ref,
        }
        if old is not None:
            inputs["old_per_token_logps"] = old
        loss = GRPOTrainer._compute_loss(stub, None, inputs)
        return loss, stub._metrics["train"]["kl"][-1]

    return run


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_type", ["bnpo", "grpo"])
@pytest.mark.parametrize(("bias_correction", "off_policy"), [(False, True), (True, True), (True, False)])
def test_kl_estimate_matches_trl_grpo_kl_term(trl_kl_loss, seed, dtype, loss_type, bias_correction, off_policy):
    mask, logp, old, ref = _batch(seed, dtype=dtype, spread=1.0)
    old = old if off_policy else None  # TRL then uses per_token_logps.detach(): rho = 1 with a gradient
    loss, logged_kl = trl_kl_loss(logp, old, ref, mask, bias_correction=bias_correction, loss_type=loss_type)
    name = "k3_is" if bias_correction else "k3"
    kl = kl_estimate(logp, ref, name, mask=mask, old_logp=logp.detach() if old is None else old, clamp=None)
    if loss_type == "bnpo":  # sum / tokens
        ours = 0.7 * aggregate(kl, mask, "token-mean")
    else:  # "grpo": the mean over all rows (empty ones too) of each row's token mean
        ours = 0.7 * aggregate(kl, mask, "seq-mean-token-mean", num_seqs=mask.shape[0])
    torch.testing.assert_close(ours, loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), _grad(loss, logp), **TOL)
    assert (kl.detach() * mask).sum().item() / mask.sum().item() == pytest.approx(logged_kl, rel=1e-5)
