"""Parity of the token-level policy losses of ``soft_clip`` (cispo, sapo) and ``trust_region`` (dppo_tv, dppo_kl,
dro, gpg) with verl 0.9.1 and TRL 1.16, run in the reference venv (skipped elsewhere).

verl: ``core_algos.get_policy_loss_fn(name)`` with an ``ActorConfig``, for every ``loss_agg_mode`` verl accepts.
TRL: the loss code of ``GRPOTrainer._compute_loss`` itself, called unbound on a ``SimpleNamespace`` holding the
attributes it reads, with ``_get_per_token_logps_and_entropies`` returning our log-prob tensor, for each TRL
normalisation that applies (cispo: the accumulated token count; sapo: ``grpo``). Loss and gradient w.r.t. logp
agree to 1e-6 in fp64 (1e-5 in fp32), and the metrics with a counterpart agree too.

    .venv-ref/bin/python -m pytest tests/test_parity_token_losses.py
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from entrolab.methods.aggregation import aggregate
from entrolab.methods.soft_clip import CISPOConfig, SAPOConfig, cispo, sapo
from entrolab.methods.trust_region import DPPOKLConfig, DPPOTVConfig, DROConfig, dppo_kl, dppo_tv, dro, gpg

SEEDS = range(3)
# every loss_agg_mode verl's ActorConfig accepts (entrolab's AGG_MODES may hold more, e.g. TRL's bnpo)
VERL_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
DTYPES = [torch.float64, torch.float32]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return dict(atol=1e-6 if dtype == torch.float64 else 1e-5, rtol=0)


def _batch(seed: int, b: int = 16, t: int = 48, dtype=torch.float64):
    """Ragged batch as verl sees it (advantages [B, T], 0 on padding), with real log-probs (< 0, so the
    binary KL of DPPO is defined) and wide ratios (log-ratio sd ~1.5), so every clip / mask branch is hit."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0], lengths[1] = t, 0  # one full row, one fully padded row
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)  # [B, T]
    logit = 2 * torch.randn(b, t, generator=g, dtype=dtype)  # [B, T]
    old = F.logsigmoid(logit)  # [B, T]
    logp = F.logsigmoid(logit + 1.5 * torch.randn(b, t, generator=g, dtype=dtype)).requires_grad_()  # [B, T]
    adv = (torch.randn(b, 1, generator=g, dtype=dtype) * 2).expand(b, t) * mask  # [B, T]
    return mask, logp, old, adv


def _loss_and_grad(value: torch.Tensor, logp: torch.Tensor):
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


def _ours(fn, cfg, mode, mask, logp, old, adv, **counts):
    loss, metrics = fn(logp, old, adv, mask, cfg=cfg)
    return (*_loss_and_grad(aggregate(loss, mask, mode, **counts), logp), metrics)


def _close(ours, ref, dtype):
    torch.testing.assert_close(ours[0], ref[0], **_tol(dtype))
    torch.testing.assert_close(ours[1], ref[1], **_tol(dtype))


# --------------------------------------------------------------------------------------------------- verl


@pytest.fixture(scope="module")
def verl():
    pytest.importorskip("verl")
    from verl.trainer.ppo import core_algos
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig

    def run(loss_mode: str, mode: str, mask, logp, old, adv, policy_loss: dict | None = None, **actor):
        cfg = ActorConfig(
            strategy="fsdp",
            rollout_n=8,
            ppo_micro_batch_size_per_gpu=1,
            use_torch_compile=False,
            loss_agg_mode=mode,
            policy_loss=PolicyLossConfig(loss_mode=loss_mode, **(policy_loss or {})),
            **actor,
        )
        loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(
            old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=cfg
        )
        return (*_loss_and_grad(loss, logp), metrics)

    return run


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize(
    ("eps", "verl_eps"),
    [((None, 0.2), (10.0, 0.2)), ((0.2, 0.28), (0.2, 0.28))],  # the paper's no-lower-bound (verl's example: 10)
)
def test_cispo_matches_verl(verl, seed, dtype, mode, eps, verl_eps):
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    ref = verl("cispo", mode, mask, logp, old, adv, clip_ratio_low=verl_eps[0], clip_ratio_high=verl_eps[1])
    ours = _ours(cispo, CISPOConfig(eps_low=eps[0], eps_high=eps[1]), mode, mask, logp, old, adv)
    _close(ours, ref, dtype)
    m, ref_m = ours[2], ref[2]
    assert ref_m["actor/pg_clipfrac"] > 0.05
    assert m["cispo/frac_clipped"].item() == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)
    assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("tau", [(1.0, 1.05), (0.5, 2.0)])
def test_sapo_matches_verl_which_always_aggregates_seq_mean_token_mean(verl, seed, dtype, mode, tau):
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    ref = verl("sapo", mode, mask, logp, old, adv, tau_pos=tau[0], tau_neg=tau[1])
    # verl ignores loss_agg_mode for SAPO: whatever the mode, it is the paper's seq-mean-token-mean
    ours = _ours(sapo, SAPOConfig(tau_pos=tau[0], tau_neg=tau[1]), "seq-mean-token-mean", mask, logp, old, adv)
    _close(ours, ref, dtype)
    assert ours[2]["kl/approx_old"].item() == pytest.approx(ref[2]["actor/ppo_kl"], abs=1e-5)
    assert ref[2]["actor/pg_clipfrac"] == 0.0  # a constant in verl: no counterpart


DPPO = [
    (dppo_tv, DPPOTVConfig, "dppo_tv", dict(delta_low=0.15, delta_high=0.15)),
    (dppo_kl, DPPOKLConfig, "dppo_kl", dict(delta_low=0.05, delta_high=0.05)),
    (dppo_tv, DPPOTVConfig, "dppo_tv", dict(delta_low=0.1, delta_high=0.3)),
    (dppo_kl, DPPOKLConfig, "dppo_kl", dict(delta_low=0.2, delta_high=0.02)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize(("fn", "config", "name", "delta"), DPPO, ids=lambda x: getattr(x, "__name__", str(x)))
@pytest.mark.parametrize(("is_cap", "verl_c"), [(None, 1e4), (3.0, 3.0)])  # authors' TIS off / verl's default 3
def test_dppo_matches_verl(verl, seed, dtype, mode, fn, config, name, delta, is_cap, verl_c):
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    assert (logp - old).max() < 9  # ratio < 1e4: TIS at 1e4 is off on this batch
    ref = verl(
        name,
        mode,
        mask,
        logp,
        old,
        adv,
        clip_ratio=delta["delta_high"],
        clip_ratio_low=delta["delta_low"],
        clip_ratio_high=delta["delta_high"],
        clip_ratio_c=verl_c,
    )
    ours = _ours(fn, config(**delta, is_cap=is_cap), mode, mask, logp, old, adv)
    _close(ours, ref, dtype)
    m, ref_m = ours[2], ref[2]
    assert 0.02 < ref_m["actor/pg_clipfrac"] < 0.9  # tokens really were masked, not all of them
    masked = (m["clip/frac_low"] + m["clip/frac_high"]).item()  # A != 0 on every valid token here
    assert masked == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)
    assert m["dppo/frac_truncated"].item() == pytest.approx(ref_m["actor/pg_clipfrac_lower"], abs=1e-6)
    assert (ref_m["actor/pg_clipfrac_lower"] > 0) == (is_cap is not None)
    assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-5)


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_verl_dppo_default_config_truncates_at_clip_ratio_c_3(verl, name):
    # verl's code falls back to clip_ratio_c=20.0, but ActorConfig always carries clip_ratio_c (default 3.0)
    mask, logp, old, adv = _batch(0)
    ref = verl(name, "token-mean", mask, logp, old, adv, clip_ratio_low=0.15, clip_ratio_high=0.15)
    fn, config = (dppo_tv, DPPOTVConfig) if name == "dppo_tv" else (dppo_kl, DPPOKLConfig)
    ours = _ours(fn, config(delta_low=0.15, delta_high=0.15, is_cap=3.0), "token-mean", mask, logp, old, adv)
    _close(ours, ref, torch.float64)
    untruncated = _ours(fn, config(delta_low=0.15, delta_high=0.15), "token-mean", mask, logp, old, adv)
    assert not torch.allclose(untruncated[1], ref[1])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_dro_matches_verl(verl, seed, dtype, mode, beta):
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    ref = verl("dro", mode, mask, logp, old, adv, policy_loss=dict(dro_beta=beta))
    ours = _ours(dro, DROConfig(beta=beta), mode, mask, logp, old, adv)
    _close(ours, ref, dtype)
    assert ours[2]["kl/approx_old"].item() == pytest.approx(ref[2]["actor/ppo_kl"], abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", VERL_MODES)
def test_gpg_matches_verl(verl, seed, dtype, mode):
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    ref = verl("gpg", mode, mask, logp, old, adv)
    _close(_ours(gpg, None, mode, mask, logp, old, adv), ref, dtype)
    assert ref[2] == {}  # verl's gpg logs nothing


# ---------------------------------------------------------------------------------------------------- TRL


@pytest.fixture(scope="module")
def trl():
    """TRL's ``_compute_loss`` on given tensors: (loss_type, mask, logp, old, adv [B], **options) -> (loss, grad,
    TRL's logged metrics)."""
    pytest.importorskip("trl")
    from trl import GRPOTrainer

    def run(loss_type, mask, logp, old, adv, *, epsilon_high=0.2, tau=(1.0, 1.05), num_items=None, accum=1, spg=1):
        b, t = mask.shape
        logged = defaultdict(lambda: defaultdict(list))
        trainer = SimpleNamespace(
            _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(old), None),
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            importance_sampling_level="token",
            beta=0.0,
            loss_type=loss_type,
            epsilon_low=0.2,
            epsilon_high=epsilon_high,
            args=SimpleNamespace(
                delta=None, sapo_temperature_pos=tau[0], sapo_temperature_neg=tau[1], steps_per_generation=spg
            ),
            use_vllm=False,
            vllm_importance_sampling_correction=False,
            model=SimpleNamespace(training=True),
            current_gradient_accumulation_steps=accum,
            accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x),
            _entropy_bonus_enabled=False,
            aux_loss_enabled=False,
            _metrics=logged,
        )
        inputs = {
            "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
            "prompt_mask": torch.ones(b, 1, dtype=mask.dtype),
            "completion_ids": torch.zeros(b, t, dtype=torch.long),
            "completion_mask": mask,
            "advantages": adv,
            "old_per_token_logps": old,
            "num_items_in_batch": torch.as_tensor(mask.sum() if num_items is None else num_items),
        }
        loss = GRPOTrainer._compute_loss(trainer, None, inputs)
        return (*_loss_and_grad(loss, logp), {k: v[-1] for k, v in logged["train"].items()})

    return run


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cap", [5.0, 1.28, 0.2])  # ScaleRL's eps_max, DAPO-like, TRL's fallback to epsilon
@pytest.mark.parametrize(("accum", "spg", "share"), [(1, 1, 1.0), (2, 2, 1.0), (2, 4, 3.0)])
def test_cispo_matches_trl(trl, seed, dtype, cap, accum, spg, share):
    # TRL normalises by num_items_in_batch * accum / steps_per_generation: the accumulation window's tokens
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    num_items = share * mask.sum()  # num_items_in_batch: the generation batch's tokens (share x this one's)
    ref = trl("cispo", mask, logp, old, adv[:, 0], epsilon_high=cap, num_items=num_items, accum=accum, spg=spg)
    window = num_items * accum / spg
    ours = _ours(
        cispo, CISPOConfig(eps_high=cap, bounds="trl"), "token-mean", mask, logp, old, adv[:, :1], num_tokens=window
    )
    _close(ours, ref, dtype)
    assert ours[2]["clip/frac_high"].item() == pytest.approx(ref[2]["cispo_clip_ratio"], abs=1e-6)
    assert ref[2]["cispo_clip_ratio"] > 0
    if cap > 1:  # the same weights written as the paper's 1 + eps_high
        same = _ours(cispo, CISPOConfig(eps_high=cap - 1), "token-mean", mask, logp, old, adv, num_tokens=window)
        _close(same, ref, dtype)


@pytest.mark.parametrize("seed", SEEDS)
def test_cispo_trl_micro_batches_add_up_to_the_window(trl, seed):
    mask, logp, old, adv = _batch(seed)
    total = mask.sum()  # num_items_in_batch: the tokens of both micro-batches
    grads, values = torch.zeros_like(logp), []
    for s in (slice(0, 8), slice(8, 16)):  # two micro-batches of one accumulation window
        part = logp.detach()[s].requires_grad_()
        value, grad, _ = trl(
            "cispo", mask[s], part, old[s], adv[s, 0], epsilon_high=5.0, num_items=total, accum=2, spg=2
        )
        grads[s], values = grad, [*values, value]
    full = _ours(cispo, CISPOConfig(eps_high=4.0), "token-mean", mask, logp, old, adv)
    torch.testing.assert_close(sum(values), full[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads, full[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [(1.0, 1.25), (0.5, 2.0)])  # exact in fp32 (TRL builds taus in fp32)
@pytest.mark.parametrize("accum", [1, 2])
def test_sapo_matches_trl_grpo_normalisation(trl, seed, dtype, tau, accum):
    # TRL's "grpo" normalisation: mean over EVERY row (the fully padded one too) of the row's token mean / accum
    mask, logp, old, adv = _batch(seed, dtype=dtype)
    ref = trl("sapo", mask, logp, old, adv[:, 0], tau=tau, accum=accum)
    rows = mask.shape[0] * accum
    ours = _ours(sapo, SAPOConfig(*tau), "seq-mean-token-mean", mask, logp, old, adv[:, :1], num_seqs=rows)
    _close(ours, ref, dtype)


@pytest.mark.parametrize("seed", SEEDS)
def test_sapo_trl_default_taus_are_rounded_to_fp32(trl, seed):
    # TRL builds the temperatures with torch.where on Python floats: tau_neg = 1.05 becomes fp32 1.0499999523
    mask, logp, old, adv = _batch(seed)
    ref = trl("sapo", mask, logp, old, adv[:, 0], tau=(1.0, 1.05))
    fp32_tau = torch.tensor(1.05, dtype=torch.float32).item()  # 1.0499999523
    exact = _ours(sapo, SAPOConfig(1.0, fp32_tau), "seq-mean-token-mean", mask, logp, old, adv, num_seqs=16)
    torch.testing.assert_close(exact[0], ref[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(exact[1], ref[1], atol=1e-12, rtol=0)
    paper = _ours(sapo, SAPOConfig(), "seq-mean-token-mean", mask, logp, old, adv, num_seqs=16)
    _close(paper, ref, torch.float64)  # the fp32 rounding moves the loss by ~1e-8
