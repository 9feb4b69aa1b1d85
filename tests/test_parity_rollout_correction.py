"""Parity of the rollout corrections with verl 0.9.1 and TRL 1.16, run in the reference venv (skipped elsewhere).

verl: ``rollout_corr_helper.compute_rollout_correction_and_rejection_mask`` (IS weights, TIS / IcePop, every
``rollout_rs`` family, batch normalisation) for ``rollout_is``; its decoupled PPO loss (``vanilla`` with
``rollout_is_weights`` on the rejected mask) for ``rollout_is`` + ``ppo_clip``; ``bypass_mode`` (reinforce and
ppo_clip) for ``reinforce_is`` / ``ppo_clip``. TRL: the ``vllm_importance_sampling_mode`` block and its metrics,
executed from ``GRPOTrainer``'s own source, for ``rollout_is``; ``GRPOTrainer.get_off_policy_mask`` for
``ppo_clip_opmask``. Seeded fp64 tensors with a perturbed behaviour policy; tolerance 1e-6.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.off_policy_mask import OffPolicyMaskConfig, off_policy_sequence_mask, ppo_clip_opmask
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip
from entrolab.methods.rollout_correction import (
    RolloutISConfig,
    reinforce_is,
    rollout_is,
)

SEEDS = range(4)
TOL = dict(atol=1e-6, rtol=0)
F64 = torch.float64
VERL_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _batch(seed: int, b: int = 16, t: int = 48, spread: float = 0.3):
    """Ragged fp64 batch: mask (row 0 full, some rows empty), rollout log-probs, the trainer's log-probs
    perturbed from them (sd ``spread``), current log-probs (requires grad) and advantages [B, T] (0 on padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(F64)  # [B, T]
    roll = -torch.rand(b, t, generator=g, dtype=F64) * 4
    old = roll + spread * torch.randn(b, t, generator=g, dtype=F64)
    logp = (old + 0.2 * torch.randn(b, t, generator=g, dtype=F64)).requires_grad_()
    adv = (torch.randn(b, 1, generator=g, dtype=F64) * 2).expand(b, t) * mask  # [B, T]
    return mask, roll, old, logp, adv


def _grad(value: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


# (verl rollout_is, rollout_is_threshold, rollout_rs, rollout_rs_threshold, batch_normalize) -> our config.
# verl's k1 bounds "l_u" bound 1 / rho: ours take reject_low = 1 / u, reject_high = 1 / l.
C = RolloutISConfig
VERL_CASES = [
    (("token", 2.0, None, None, False), C()),
    (("sequence", 2.0, None, None, False), C(mode="sequence_truncate")),
    (("token", "0.5_5.0", None, None, False), C(mode="token_mask", lower=0.5, upper=5.0)),  # IcePop
    (("sequence", "0.3_3.0", None, None, False), C(mode="sequence_mask", lower=0.3, upper=3.0)),
    (("token", 1.5, None, None, True), C(upper=1.5, batch_normalize=True)),
    (("sequence", 4.0, None, None, True), C(mode="sequence_truncate", upper=4.0, batch_normalize=True)),
    (  # verl decoupled_seq_is_rs
        ("sequence", 2.0, "seq_sum_k1", "0.5_2.0", False),
        C(mode="sequence_truncate", reject="seq_sum_k1", reject_low=0.5, reject_high=2.0),
    ),
    (  # geometric RS, asymmetric bounds
        (None, 2.0, "seq_mean_k1", "0.95_1.1", False),
        C(mode="none", reject="seq_mean_k1", reject_low=1 / 1.1, reject_high=1 / 0.95),
    ),
    (("token", 2.0, "seq_mean_k1", 1.05, False), C(reject="seq_mean_k1", reject_high=1.05)),  # geo_rs_token_tis
    (("token", 2.0, "token_k1", "0.6_1.5", False), C(reject="token_k1", reject_low=1 / 1.5, reject_high=1 / 0.6)),
    ((None, 2.0, "token_k2", 0.08, False), C(mode="none", reject="token_k2", reject_high=0.08)),
    ((None, 2.0, "token_k3", 0.05, False), C(mode="none", reject="token_k3", reject_high=0.05)),
    ((None, 2.0, "seq_sum_k2", 1.0, False), C(mode="none", reject="seq_sum_k2", reject_high=1.0)),
    (("token", 2.0, "seq_sum_k3", 1.0, False), C(reject="seq_sum_k3", reject_high=1.0)),
    ((None, 2.0, "seq_mean_k2", 0.04, False), C(mode="none", reject="seq_mean_k2", reject_high=0.04)),
    (
        ("sequence", 3.0, "seq_mean_k3", 0.05, False),
        C(mode="sequence_truncate", upper=3.0, reject="seq_mean_k3", reject_high=0.05),
    ),
    ((None, 2.0, "seq_max_k2", 0.3, False), C(mode="none", reject="seq_max_k2", reject_high=0.3)),
    (("token", 2.0, "seq_max_k3", 0.4, False), C(reject="seq_max_k3", reject_high=0.4)),
]


@pytest.fixture(scope="module")
def verl():
    pytest.importorskip("verl")
    from verl.trainer.config.algorithm import RolloutCorrectionConfig
    from verl.trainer.ppo import core_algos, rollout_corr_helper
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig

    def actor(loss_mode: str, mask: torch.Tensor | None = None, **rollout_correction):
        info = {}
        if mask is not None:  # the trainer's minibatch counts, from before any in-loss rejection
            info = dict(dp_size=1, batch_num_tokens=mask.sum(), global_batch_size=(mask.sum(-1) > 0).sum())
        return ActorConfig(
            strategy="fsdp",
            rollout_n=8,
            ppo_micro_batch_size_per_gpu=1,
            use_torch_compile=False,
            clip_ratio_low=0.2,
            clip_ratio_high=0.28,
            clip_ratio_c=3.0,
            policy_loss=PolicyLossConfig(
                loss_mode=loss_mode, rollout_correction=RolloutCorrectionConfig(**rollout_correction)
            ),
            global_batch_info=info,
        )

    return SimpleNamespace(helper=rollout_corr_helper, core=core_algos, actor=actor)


def _verl_correction(verl, spec, old, roll, mask):
    is_level, is_thr, rs, rs_thr, norm = spec
    proto, new_mask, metrics = verl.helper.compute_rollout_correction_and_rejection_mask(
        old_log_prob=old,
        rollout_log_prob=roll,
        response_mask=mask,
        rollout_is=is_level,
        rollout_is_threshold=is_thr,
        rollout_is_batch_normalize=norm,
        rollout_rs=rs,
        rollout_rs_threshold=rs_thr,
    )
    weights = proto.batch["rollout_is_weights"] if proto is not None else None
    return weights, new_mask, metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", VERL_CASES, ids=lambda c: "-".join(str(x) for x in c[0]))
def test_rollout_is_matches_verl_helper(verl, seed, case):
    spec, cfg = case
    mask, roll, old, _, _ = _batch(seed)
    ref_w, ref_mask, ref_m = _verl_correction(verl, spec, old, roll, mask)
    weight, new_mask, m = rollout_is(
        mask, cfg=cfg, entropy=None, old_logp=old, advantages=None, truncated=None, rollout_logp=roll
    )
    torch.testing.assert_close(new_mask, ref_mask, atol=0, rtol=0)
    assert 0 < new_mask.sum() <= mask.sum()
    if ref_w is not None:
        torch.testing.assert_close(weight, ref_w, **TOL)
        for ours, theirs in [("is_mean", "rollout_is_mean"), ("is_ess", "rollout_is_eff_sample_size")]:
            assert m[f"rollout_corr/{ours}"].item() == pytest.approx(ref_m[f"rollout_corr/{theirs}"], abs=1e-6)
        if spec[0] == "token":  # verl's sequence-level max/min/fractions are per raw sequence ratio
            for ours, theirs in [
                ("is_min", "rollout_is_min"),
                ("is_max", "rollout_is_max"),
                ("is_frac_high", "rollout_is_ratio_fraction_high"),
                ("is_frac_low", "rollout_is_ratio_fraction_low"),
            ]:
                assert m[f"rollout_corr/{ours}"].item() == pytest.approx(ref_m[f"rollout_corr/{theirs}"], abs=1e-6)
        if "rollout_corr/rollout_is_oob_ratio" in ref_m:
            assert m["rollout_corr/frac_rejected"].item() == pytest.approx(
                ref_m["rollout_corr/rollout_is_oob_ratio"], abs=1e-6
            )
    else:
        assert torch.equal(weight, mask)
    if spec[2] is not None:
        assert ref_m["rollout_corr/rollout_rs_masked_fraction"] > 0
        frac = m["rollout_corr/frac_rejected"].item()
        assert frac == pytest.approx(ref_m["rollout_corr/rollout_rs_masked_fraction"], abs=1e-6)
        rows = (mask.sum(-1) > 0).sum().item() / mask.shape[0]  # verl's sequence fraction is over all B rows
        seq = m["rollout_corr/seq_frac_rejected"].item() * rows
        assert seq == pytest.approx(ref_m["rollout_corr/rollout_rs_seq_masked_fraction"], abs=1e-6)
    for ours in ("kl", "k3_kl"):
        assert m[f"rollout_corr/{ours}"].item() == pytest.approx(ref_m[f"rollout_corr/{ours}"], abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("case", [VERL_CASES[i] for i in (1, 2, 6, 9)], ids=lambda c: "-".join(map(str, c[0])))
def test_decoupled_ppo_with_rollout_is_matches_verl_vanilla(verl, seed, mode, case):
    # verl decoupled mode: vanilla PPO against the recomputed old_log_prob, pg_losses * rollout_is_weights,
    # aggregated over the rejected mask. Ours: rollout_is (filter) then ppo_clip * weight over the new mask.
    spec, cfg = case
    mask, roll, old, logp, adv = _batch(seed)
    ref_w, ref_mask, _ = _verl_correction(verl, spec, old, roll, mask)
    ref_loss, _ = verl.core.get_policy_loss_fn("vanilla")(
        old_log_prob=old,
        log_prob=logp,
        advantages=adv,
        response_mask=ref_mask,
        loss_agg_mode=mode,
        config=verl.actor("vanilla"),
        rollout_is_weights=ref_w,
    )
    ref_loss, ref_grad = _grad(ref_loss, logp)
    weight, new_mask, _ = rollout_is(
        mask, cfg=cfg, entropy=None, old_logp=old, advantages=None, truncated=None, rollout_logp=roll
    )
    loss, _ = ppo_clip(logp, old, adv, new_mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0))
    ours, grad = _grad(aggregate(loss * weight, new_mask, mode), logp)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


BYPASS_CASES = [
    (dict(rollout_is="sequence", rollout_is_threshold=2.0), C(mode="sequence_truncate")),  # bypass_pg_is
    (dict(rollout_is="token", rollout_is_threshold="0.5_5.0"), C(mode="token_mask", lower=0.5, upper=5.0)),
    (  # bypass_pg_geo_rs
        dict(rollout_is=None, rollout_rs="seq_mean_k1", rollout_rs_threshold="0.98_1.02"),
        C(mode="none", reject="seq_mean_k1", reject_low=1 / 1.02, reject_high=1 / 0.98),
    ),
    (
        dict(rollout_is="token", rollout_is_threshold=2.0, rollout_rs="seq_mean_k3", rollout_rs_threshold=0.02),
        C(reject="seq_mean_k3", reject_high=0.02),
    ),
    (
        dict(rollout_is="token", rollout_is_threshold=2.0, rollout_rs="token_k3", rollout_rs_threshold=0.02),
        C(reject="token_k3", reject_high=0.02),
    ),
]


# verl's seq-mean-token-mean divides each sequence by its kept tokens, so token-level in-loss rejection differs
# there (documented); every other pair is compared.
BYPASS_PAIRS = [
    (mode, case)
    for case in BYPASS_CASES
    for mode in VERL_MODES
    if not (mode == "seq-mean-token-mean" and case[1].reject.startswith("token"))
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("mode", "case"), BYPASS_PAIRS, ids=lambda x: x if isinstance(x, str) else str(x[0]))
def test_reinforce_is_matches_verl_bypass_reinforce(verl, seed, mode, case):
    kw, cfg = case
    mask, roll, _, logp, adv = _batch(seed, spread=0.05)
    # bypass: old_log_prob is the rollout's; verl computes rho from the current log_prob inside the loss
    actor = verl.actor("bypass_mode", mask, bypass_mode=True, loss_type="reinforce", **kw)
    ref_loss, ref_m = verl.core.get_policy_loss_fn("bypass_mode")(
        old_log_prob=roll, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=actor
    )
    ref_loss, ref_grad = _grad(ref_loss, logp)
    loss, m = reinforce_is(logp, roll, adv, mask, cfg=cfg)
    ours, grad = _grad(aggregate(loss, mask, mode), logp)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert m["reinforce_is/kl"].item() == pytest.approx(ref_m["rollout_corr/kl"], abs=1e-6)
    if cfg.reject == "none":
        assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-6)
        assert m["reinforce_is/is_mean"].item() == pytest.approx(ref_m["rollout_corr/rollout_is_mean"], abs=1e-6)
    else:
        frac = ref_m["rollout_corr/rollout_rs_masked_fraction"]
        assert 0 < frac < 1 and m["reinforce_is/frac_rejected"].item() == pytest.approx(frac, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", VERL_MODES)
def test_verl_bypass_ppo_clip_is_ppo_clip(verl, seed, mode):
    mask, roll, _, logp, adv = _batch(seed)
    actor = verl.actor("bypass_mode", mask, rollout_is=None, bypass_mode=True, loss_type="ppo_clip")
    ref_loss, _ = verl.core.get_policy_loss_fn("bypass_mode")(
        old_log_prob=roll, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=actor
    )
    ref_loss, ref_grad = _grad(ref_loss, logp)
    loss, _ = ppo_clip(logp, roll, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0))
    ours, grad = _grad(aggregate(loss, mask, mode), logp)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


# --------------------------------------------------------------------------------------------------- TRL


def _block(src: str, start: int, end_marker: str) -> str:
    line = src.rindex("\n", 0, start) + 1
    return textwrap.dedent(src[line : src.index(end_marker, start)])


@pytest.fixture(scope="module")
def trl():
    pytest.importorskip("trl")
    from trl.trainer import grpo_trainer

    src = textwrap.dedent(inspect.getsource(grpo_trainer.GRPOTrainer._generate_and_score_completions))
    ratio = src.index("# Compute the importance sampling ratio when using vLLM")
    delta = src.index("delta = torch.abs(old_per_token_logps - sampling_per_token_logps)")
    blocks = (
        compile(_block(src, ratio, "# Compute the per-token log probabilities for the reference model"), "trl", "exec"),
        compile(_block(src, src.rindex("if self.use_vllm", 0, delta), "output = {"), "trl", "exec"),
    )

    def run(mode: str, clip_min, clip_max, old, sampling, mask):
        """TRL's own IS code on these tensors -> (importance_sampling_ratio, logged metrics)."""
        metrics = defaultdict(lambda: defaultdict(list))
        trainer = SimpleNamespace(
            use_vllm=True,
            vllm_importance_sampling_correction=True,
            vllm_importance_sampling_mode=mode,
            vllm_importance_sampling_clip_min=clip_min,
            vllm_importance_sampling_clip_max=clip_max,
            _metrics=metrics,
            accelerator=SimpleNamespace(gather=lambda x: x.reshape(1)),
        )
        scope = dict(vars(grpo_trainer), math=math, torch=torch)
        local = dict(self=trainer, completion_mask=mask, tool_mask=None, old_per_token_logps=old)
        local.update(sampling_per_token_logps=sampling, device=old.device, mode="train")
        for code in blocks:
            exec(code, scope, local)  # TRL's own installed source
        return local["vllm_importance_sampling_ratio"], {k: v[0] for k, v in metrics["train"].items()}

    return SimpleNamespace(run=run, trainer=grpo_trainer.GRPOTrainer)


TRL_CASES = [
    ("token_truncate", None, 3.0),
    ("token_truncate", 0.5, 2.0),
    ("token_mask", None, 1.5),
    ("token_mask", 0.5, 2.0),
    ("sequence_truncate", None, 3.0),
    ("sequence_truncate", 0.2, 4.0),
    ("sequence_mask", None, 3.0),  # TRL's default
    ("sequence_mask", 0.3, 3.0),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", TRL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("nan", [False, True], ids=["scored", "nan-sampler"])
def test_rollout_is_matches_trl_vllm_importance_sampling(trl, seed, case, nan):
    mode, clip_min, clip_max = case
    mask, roll, old, _, _ = _batch(seed)
    if nan:  # tokens vLLM could not score: TRL counts them as ratio 1
        roll = roll.clone()
        roll[0, [3, 17]] = float("nan")
    ref_ratio, ref_m = trl.run(mode, clip_min, clip_max, old, roll, mask)
    cfg = RolloutISConfig(mode=mode, lower=clip_min, upper=clip_max)
    weight, new_mask, m = rollout_is(
        mask, cfg=cfg, entropy=None, old_logp=old, advantages=None, truncated=None, rollout_logp=roll
    )
    assert torch.equal(new_mask, mask)  # TRL never changes the mask: its *_mask drops are zero-weight
    ref = (ref_ratio * torch.ones_like(mask)) * mask  # [B, T]; TRL's loss multiplies by the mask afterwards
    torch.testing.assert_close(weight, ref, **TOL)
    if mode.endswith("mask"):
        assert 0 < m["rollout_corr/frac_rejected"] < 1
    diff = m["rollout_corr/logp_abs_diff"].item()
    assert diff == pytest.approx(ref_m["sampling/sampling_logp_difference/mean"], abs=1e-6)
    if mode.startswith("token"):  # TRL's sequence-mode stats are per sequence, over all rows
        for stat in ("min", "mean", "max"):
            assert m[f"rollout_corr/is_{stat}"].item() == pytest.approx(
                ref_m[f"sampling/importance_sampling_ratio/{stat}"], abs=1e-6
            )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.0, 0.02, 0.1])
@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])  # TRL grpo / dapo, bnpo
def test_ppo_clip_opmask_matches_trl_get_off_policy_mask(trl, seed, threshold, mode):
    mask, roll, _, logp, adv = _batch(seed)
    adv = adv[:, :1].contiguous()  # TRL's advantages are [B, 1]
    ref = trl.trainer.get_off_policy_mask(
        advantages=adv, per_token_logps=logp, sampling_per_token_logps=roll, mask=mask, off_policy_threshold=threshold
    )  # [B, 1]
    keep = off_policy_sequence_mask(adv, logp, roll, mask, threshold)
    torch.testing.assert_close(keep.to(F64), ref.expand_as(mask) * mask, atol=0, rtol=0)
    dropped = int((mask.sum(-1, keepdim=True) > 0).logical_and(ref == 0).sum())
    assert dropped > 0 or threshold > 0
    cfg = OffPolicyMaskConfig(threshold=threshold, eps_low=0.2, eps_high=0.28)
    loss, m = ppo_clip_opmask(logp, roll, adv, mask, cfg=cfg)
    ours, grad = _grad(aggregate(loss, mask, mode), logp)
    per_token, _ = ppo_clip(logp, roll, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.28))
    ref_loss, ref_grad = _grad(aggregate(per_token * ref, mask, mode), logp)  # TRL: per_token_loss * mask
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    n_rows = (mask.sum(-1) > 0).sum().item()
    assert m["opsm/frac_masked_seqs"].item() == pytest.approx(dropped / n_rows, abs=1e-9)
