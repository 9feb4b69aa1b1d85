"""Parity of ``entrolab.methods.sequence_losses`` with verl and TRL (skipped where they are not installed).

- ``gspo`` against verl ``get_policy_loss_fn("gspo")`` in every ``loss_agg_mode`` of ``agg_loss``, and against TRL
  ``GRPOTrainer._compute_loss`` with ``importance_sampling_level="sequence"`` for each loss type that clips
  (grpo, bnpo, dr_grpo, dapo, luspo), each through the aggregation that divides as it does;
- ``luspo`` against TRL ``loss_type="luspo"`` (``seq-mean-token-sum`` over all B rows);
- ``gmpo`` against verl ``get_policy_loss_fn("geo_mean")`` and TRL ``experimental.gmpo.GMPOTrainer._compute_loss``;
- ``vespo`` against TRL ``loss_type="vespo"`` (its ``get_gamma_weights``, ``token-mean`` by the token count).

TRL runs on a stand-in ``self`` (the attributes ``_compute_loss`` reads) whose ``_get_per_token_logps_and_entropies``
returns our logp. Seeded fp64 and fp32 batches with ragged masks (a full row, an empty row, a zero advantage, and
rows beyond the engines' clamps where they clamp); loss, gradient w.r.t. logp and the metrics with a counterpart
agree to 1e-6. Run in the reference venv:

    .venv-ref/bin/python -m pytest tests/test_parity_sequence_losses.py
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.sequence_losses import GMPOConfig, GSPOConfig, VESPOConfig, gmpo, gspo, luspo, vespo

SEEDS = range(4)
DTYPES = [torch.float64, torch.float32]
TOL = dict(atol=1e-6, rtol=1e-6)
AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum"]


def _batch(seed: int, dtype=torch.float64, spread: float = 0.3, empty: bool = True, far: bool = False):
    """16 ragged rows of 48: logp (with grad), old_logp, advantages [B, 1]. Row 0 is full, row 1 empty (unless
    ``empty=False``), row 3 has A = 0, rows 5 and 6 are clipped by GSPO above and below; ``far`` puts row 2 at
    log-ratio +11 per token with A < 0 (beyond verl's GSPO clamp of 10) and row 4 at -1 per token (VESPO's log w
    below log 1e-8)."""
    b, t = 16, 48
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    if empty:
        lengths[1] = 0
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)  # [B, T]
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 4
    logp = old + spread * torch.randn(b, t, generator=g, dtype=dtype)
    adv = torch.randn(b, 1, generator=g, dtype=dtype) * 2
    adv[3] = 0.0
    logp[5], adv[5] = old[5] + 0.05, adv[5].abs()  # a sequence above GSPO's upper clip with A > 0
    logp[6], adv[6] = old[6] - 0.05, -adv[6].abs()  # and one below its lower clip with A < 0
    if far:
        lengths[2], lengths[4] = 30, 40
        mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)
        logp[2], adv[2] = old[2] + 11.0, -adv[2].abs()
        logp[4] = old[4] - 1.0
    return mask, logp.requires_grad_(), old, adv


def _grad(value: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, logp)[0]


# --------------------------------------------------------------------------------------------------- verl


@pytest.fixture(scope="module")
def verl():
    pytest.importorskip("verl")
    from verl.trainer.ppo import core_algos
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig

    def run(loss_mode: str, eps: tuple[float, float], mode: str, mask, logp, old, adv, **batch_info):
        cfg = ActorConfig(
            strategy="fsdp",
            rollout_n=8,
            ppo_micro_batch_size_per_gpu=1,
            use_torch_compile=False,
            clip_ratio_low=eps[0],
            clip_ratio_high=eps[1],
            policy_loss=PolicyLossConfig(loss_mode=loss_mode),
        )
        cfg.global_batch_info.update(batch_info)
        loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(
            old_log_prob=old,
            log_prob=logp,
            advantages=adv.expand_as(mask) * mask,  # verl's advantages: [B, T], 0 on padding
            response_mask=mask,
            loss_agg_mode=mode,
            config=cfg,
        )
        return loss, _grad(loss, logp), metrics

    return run


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.02, 0.03)])
def test_gspo_matches_verl_in_every_aggregation(verl, seed, dtype, mode, eps):
    mask, logp, old, adv = _batch(seed, dtype, far=True)
    ref_loss, ref_grad, ref_m = verl("gspo", eps, mode, mask, logp, old, adv)
    loss, m = gspo(logp, old, adv, mask, cfg=GSPOConfig(eps_low=eps[0], eps_high=eps[1]))
    ours = aggregate(loss, mask, mode)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)
    assert m["clip/frac_low"] > 0 and m["clip/frac_high"] > 0
    if eps[0] > 1e-3:  # the wider range leaves some sequences unclipped
        assert m["clip/seq_frac_low"] + m["clip/seq_frac_high"] < 0.9
    clipfrac = (m["clip/frac_low"] + m["clip/frac_high"]).item()
    assert clipfrac == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)
    assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-5, rel=1e-6)
    assert ref_m["actor/pg_clipfrac_lower"] == 0.0  # verl's GSPO has no dual clip


@pytest.mark.parametrize("seed", SEEDS)
def test_gspo_with_verls_trainer_count_of_all_rows(verl, seed):
    """verl's trainer passes global_batch_size (all rows, empty ones too): num_seqs=B here."""
    mask, logp, old, adv = _batch(seed)
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        ref_loss, ref_grad, _ = verl("gspo", (0.02, 0.03), mode, mask, logp, old, adv, global_batch_size=16)
        loss, _ = gspo(logp, old, adv, mask, cfg=GSPOConfig(eps_low=0.02, eps_high=0.03))
        ours = aggregate(loss, mask, mode, num_seqs=16)
        torch.testing.assert_close(ours, ref_loss, **TOL)
        torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)


def _verl_geo_mean_clipfracs(mask, logp, old, adv, eps):
    """verl's own definition: a token counts when its log-ratio is outside [-eps_low, eps_high], either side."""
    x = (logp - old).detach()
    outside = (x != x.clamp(-eps[0], eps[1])).to(mask.dtype)
    a = adv.expand_as(mask)
    return [((outside * (s * a > 0)) * mask).sum().item() / mask.sum().item() for s in (1, -1)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [(0.4, 0.4), (0.2, 0.28)])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum"])  # verl ignores it
def test_gmpo_matches_verl_geo_mean(verl, seed, dtype, eps, mode):
    mask, logp, old, adv = _batch(seed, dtype, spread=0.6)
    ref_loss, ref_grad, ref_m = verl("geo_mean", eps, mode, mask, logp, old, adv)
    loss, m = gmpo(logp, old, adv, mask, cfg=GMPOConfig(eps_low=eps[0], eps_high=eps[1]))
    ours = aggregate(loss, mask, "seq-mean-token-mean", num_seqs=mask.shape[0])  # torch.mean over all B rows
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)
    assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-6)
    high, low = _verl_geo_mean_clipfracs(mask, logp, old, adv, eps)
    assert ref_m["actor/pg_clipfrac"] == pytest.approx(high, abs=1e-6)
    assert ref_m["actor/pg_clipfrac_lower"] == pytest.approx(low, abs=1e-6)
    assert 0 < m["clip/frac_high"].item() < high and 0 < m["clip/frac_low"].item() < low  # ours: clipped only


# ---------------------------------------------------------------------------------------------------- TRL


@pytest.fixture(scope="module")
def trl():
    pytest.importorskip("trl")
    from accelerate import Accelerator
    from trl import GRPOTrainer
    from trl.experimental.gmpo import GMPOTrainer

    accelerator = Accelerator(cpu=True)

    def run(trainer: str, mask, logp, old, adv, **attrs):
        """TRL's loss on a stand-in self; returns (loss, grad w.r.t. logp, the metrics it logged)."""
        b, t = mask.shape
        stub = SimpleNamespace(
            _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
            get_gamma_weights=GRPOTrainer.get_gamma_weights,
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            importance_sampling_level="sequence",
            beta=0.0,
            use_vllm=False,
            model=SimpleNamespace(training=True),
            current_gradient_accumulation_steps=1,
            max_completion_length=t,
            accelerator=accelerator,
            _entropy_bonus_enabled=False,
            aux_loss_enabled=False,
            _metrics={"train": defaultdict(list)},
        )
        args = dict(delta=None, steps_per_generation=1)
        args.update(attrs.pop("args", {}))
        stub.args = SimpleNamespace(**args)
        for key, value in attrs.items():
            setattr(stub, key, value)
        inputs = {
            "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
            "prompt_mask": torch.ones(b, 2, dtype=torch.long),
            "completion_ids": torch.zeros(b, t, dtype=torch.long),
            "completion_mask": mask,
            "advantages": adv.squeeze(-1),  # TRL's advantages: [B]
            "old_per_token_logps": old,
            "num_items_in_batch": mask.sum(),
        }
        cls = GMPOTrainer if trainer == "gmpo" else GRPOTrainer
        loss = cls._compute_loss(stub, None, inputs)
        return loss, _grad(loss, logp), {k: v[-1] for k, v in stub._metrics["train"].items()}

    return run


B, T = 16, 48
# TRL loss_type -> the aggregation (and counts) that divide as it does with one process, no accumulation
TRL_AGGREGATION = {
    "grpo": ("seq-mean-token-mean", dict(num_seqs=B)),
    "bnpo": ("token-mean", {}),
    "dr_grpo": ("seq-mean-token-sum-norm", dict(num_seqs=B, norm_len=T)),
    "dapo": ("token-mean", {}),  # num_items_in_batch = the batch's tokens
    "luspo": ("seq-mean-token-sum", dict(num_seqs=B)),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", sorted(TRL_AGGREGATION))
def test_gspo_matches_trl_sequence_importance_sampling(trl, seed, dtype, loss_type):
    mask, logp, old, adv = _batch(seed, dtype, far=True)
    eps = dict(epsilon_low=0.02, epsilon_high=0.03)
    ref_loss, ref_grad, ref_m = trl("grpo", mask, logp, old, adv, loss_type=loss_type, **eps)
    mode, counts = TRL_AGGREGATION[loss_type]
    cfg = GSPOConfig(eps_low=0.02, eps_high=0.03, log_ratio_max=None)  # TRL does not clamp log s_i
    loss, m = gspo(logp, old, adv, mask, cfg=cfg)
    ours = aggregate(loss, mask, mode, **counts)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)
    share = (mask.sum(-1) > 0).sum().item() / B  # TRL's sequence means count the empty row as unclipped
    assert ref_m["clip_ratio/low_mean"] == pytest.approx(m["clip/seq_frac_low"].item() * share, abs=1e-6)
    assert ref_m["clip_ratio/high_mean"] == pytest.approx(m["clip/seq_frac_high"].item() * share, abs=1e-6)
    assert ref_m["clip_ratio/low_mean"] > 0 and ref_m["clip_ratio/high_mean"] > 0
    # verl's clamp of log s_i at 10 (the default) is where the engines disagree: row 2 is beyond it
    clamped = aggregate(
        gspo(logp, old, adv, mask, cfg=GSPOConfig(eps_low=0.02, eps_high=0.03))[0], mask, mode, **counts
    )
    assert not torch.allclose(clamped, ref_loss)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_luspo_matches_trl_luspo(trl, seed, dtype):
    mask, logp, old, adv = _batch(seed, dtype)
    ref_loss, ref_grad, _ = trl("grpo", mask, logp, old, adv, loss_type="luspo", epsilon_low=3e-4, epsilon_high=4e-4)
    loss, _ = luspo(logp, old, adv, mask, cfg=GSPOConfig(log_ratio_max=None))
    ours = aggregate(loss, mask, "seq-mean-token-sum", num_seqs=B)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [(0.4, 0.4), (0.2, 0.28)])
def test_gmpo_matches_trl_gmpo_trainer(trl, seed, dtype, eps):
    mask, logp, old, adv = _batch(seed, dtype, spread=0.6, empty=False)
    ref_loss, ref_grad, ref_m = trl("gmpo", mask, logp, old, adv, epsilon_low=eps[0], epsilon_high=eps[1])
    loss, m = gmpo(logp, old, adv, mask, cfg=GMPOConfig(eps_low=eps[0], eps_high=eps[1]))
    ours = aggregate(loss, mask, "seq-mean-token-mean", num_seqs=B)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)
    assert m["clip/frac_low"].item() == pytest.approx(ref_m["clip_ratio/low_mean"], abs=1e-6)
    assert m["clip/frac_high"].item() == pytest.approx(ref_m["clip_ratio/high_mean"], abs=1e-6)
    assert ref_m["clip_ratio/low_mean"] > 0 and ref_m["clip_ratio/high_mean"] > 0


def test_trl_gmpo_adds_minus_a_for_an_empty_response(trl):
    """The one disagreement: TRL's GMPO adds the constant -A_i for a row with no valid token; we add 0."""
    mask, logp, old, adv = _batch(0)
    ref_loss, ref_grad, _ = trl("gmpo", mask, logp, old, adv, epsilon_low=0.4, epsilon_high=0.4)
    loss, _ = gmpo(logp, old, adv, mask, cfg=GMPOConfig())
    ours = aggregate(loss, mask, "seq-mean-token-mean", num_seqs=B)
    torch.testing.assert_close(ref_loss - ours, -adv[1, 0] / B, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", [(2.0, 3.0, 3.0, 2.0), (1.0, 0.5, 4.0, 2.5)])
@pytest.mark.parametrize("far", [False, True])
def test_vespo_matches_trl_vespo(trl, seed, dtype, params, far):
    mask, logp, old, adv = _batch(seed, dtype, far=far)
    k_pos, lambda_pos, k_neg, lambda_neg = params
    vespo_args = dict(vespo_k_pos=k_pos, vespo_lambda_pos=lambda_pos, vespo_k_neg=k_neg, vespo_lambda_neg=lambda_neg)
    ref_loss, ref_grad, ref_m = trl(
        "grpo",
        mask,
        logp,
        old,
        adv,
        loss_type="vespo",
        importance_sampling_level="token",
        epsilon_low=0.2,
        epsilon_high=0.2,
        args=vespo_args,
    )
    cfg = VESPOConfig(k_pos=k_pos, lambda_pos=lambda_pos, k_neg=k_neg, lambda_neg=lambda_neg)
    loss, m = vespo(logp, old, adv, mask, cfg=cfg)
    ours = aggregate(loss, mask, "token-mean")  # TRL: sum / num_items_in_batch
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(_grad(ours, logp), ref_grad, **TOL)
    rows = (mask.sum(-1) > 0).sum().item()
    trl_phi = (m["vespo/phi_mean"].item() * rows + (B - rows)) / B  # TRL counts the empty row's phi(1) = 1
    assert ref_m["vespo/phi_seq_mean"] == pytest.approx(trl_phi, abs=1e-6)
    if far:  # rows 2 and 4 are beyond TRL's log-w clamps [log 1e-8, 20]
        log_w = ((logp - old).detach() * mask).sum(-1)
        assert log_w[2] > 20 and log_w[4] < -18.5
