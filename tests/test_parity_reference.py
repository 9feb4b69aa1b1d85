"""Parity with the reference implementations, run in the separate reference venv (skipped elsewhere).

verl's ``core_algos`` (policy losses by ``get_policy_loss_fn``, aggregation by ``agg_loss``) for ``ppo_clip``,
``clip_cov`` and ``kl_cov`` with ``token-mean``, and TRL's ``GRPOTrainer.get_high_entropy_mask``
(``top_entropy_quantile``) for ``forking_tokens``: random batches with ragged masks, loss and gradient equal
to 1e-6. Where our default follows the paper and verl its code, the code variant is compared.

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0          # first: the CPU build on disk, nothing may replace it
    .venv-ref/bin/pip install verl trl               # verl 0.9.1 pins transformers < 5.11
    .venv-ref/bin/pip install -e . --no-deps && .venv-ref/bin/pip install pytest hypothesis
    .venv-ref/bin/python -m pytest tests/test_parity_reference.py
"""

from __future__ import annotations

import pytest
import torch

from entrolab.methods.aggregation import aggregate
from entrolab.methods.covariance import ClipCovConfig, KLCovConfig, clip_cov, kl_cov
from entrolab.methods.forking import ForkingTokensConfig, forking_tokens
from entrolab.methods.policy_loss import PPOClipConfig, ppo_clip

SEEDS = range(5)
TOL = dict(atol=1e-6, rtol=0)


def _batch(seed: int, b: int = 16, t: int = 48, dtype=torch.float32):
    """Ragged batch as verl sees it: advantages broadcast to [B, T] and zero on padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t  # at least one full row
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(dtype)  # [B, T]
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 4
    logp = (old + 0.3 * torch.randn(b, t, generator=g, dtype=dtype)).requires_grad_()
    adv = (torch.randn(b, 1, generator=g, dtype=dtype) * 2).expand(b, t) * mask  # [B, T]
    entropy = torch.rand(b, t, generator=g, dtype=dtype) * 3
    return mask, logp, old, adv, entropy


def _loss_and_grad(value: torch.Tensor, logp: torch.Tensor):
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


# --------------------------------------------------------------------------------------------------- verl


@pytest.fixture(scope="module")
def verl():
    pytest.importorskip("verl")
    from verl.trainer.ppo import core_algos
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig

    def actor(loss_mode: str, eps_low: float = 0.2, eps_high: float = 0.2, **policy_loss):
        return ActorConfig(
            strategy="fsdp",
            rollout_n=8,
            ppo_micro_batch_size_per_gpu=1,
            use_torch_compile=False,
            clip_ratio_low=eps_low,
            clip_ratio_high=eps_high,
            clip_ratio_c=3.0,
            policy_loss=PolicyLossConfig(loss_mode=loss_mode, **policy_loss),
        )

    def run(loss_mode: str, cfg, mask, logp, old, adv):
        loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(
            old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean", config=cfg
        )
        return (*_loss_and_grad(loss, logp), metrics)

    return actor, run, core_algos


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ppo_clip_token_mean_matches_verl_vanilla(verl, seed, dtype):
    actor, run, core_algos = verl
    mask, logp, old, adv, _ = _batch(seed, dtype=dtype)
    logp = (old + 4 * (logp.detach() - old)).requires_grad_()  # wide ratios (sd 1.2): every clip branch is hit
    ref_loss, ref_grad, ref_m = run("vanilla", actor("vanilla", 0.2, 0.28), mask, logp, old, adv)
    loss, m = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0))
    ours, grad = _loss_and_grad(aggregate(loss, mask, "token-mean"), logp)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert ref_m["actor/pg_clipfrac"] > 0 and ref_m["actor/pg_clipfrac_lower"] > 0
    clipfrac = (m["clip/frac_low"] + m["clip/frac_high"]).item()
    assert clipfrac == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)
    assert m["clip/frac_dual"].item() == pytest.approx(ref_m["actor/pg_clipfrac_lower"], abs=1e-6)
    assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-6)
    # agg_loss itself on our per-token loss
    torch.testing.assert_close(core_algos.agg_loss(loss.detach(), mask, "token-mean"), ours, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "params",
    [
        dict(eps=(0.2, 0.28), ratio=0.05, lb=0.5, ub=5.0),
        dict(eps=(1.0, 1.0), ratio=0.02, lb=1.0, ub=5.0),  # the authors' Clip-Cov scripts: clip range 1 / 1
        dict(eps=(0.2, 0.2), ratio=2e-4, lb=1.0, ub=5.0),  # verl's defaults: 1 token of the ~400
    ],
)
def test_clip_cov_code_variant_matches_verl(verl, seed, params):
    actor, run, _ = verl
    mask, logp, old, adv, _ = _batch(seed)
    (eps_low, eps_high), seed_rng = params["eps"], 1000 + seed
    vcfg = actor(
        "clip_cov",
        eps_low,
        eps_high,
        clip_cov_ratio=params["ratio"],
        clip_cov_lb=params["lb"],
        clip_cov_ub=params["ub"],
    )
    torch.manual_seed(seed_rng)  # verl draws with torch.randperm on the global RNG
    ref_loss, ref_grad, ref_m = run("clip_cov", vcfg, mask, logp, old, adv)
    cfg = ClipCovConfig(
        ratio=params["ratio"],
        cov_lb=params["lb"],
        cov_ub=params["ub"],
        eps_low=eps_low,
        eps_high=eps_high,
    )
    loss, m = clip_cov(logp, old, adv, mask, cfg=cfg, generator=torch.Generator().manual_seed(seed_rng))
    ours, grad = _loss_and_grad(aggregate(loss, mask, "token-mean"), logp)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert ref_m["actor/pg_clipfrac"] > 0  # tokens were really detached
    assert m["clip/frac_cov"].item() == pytest.approx(ref_m["actor/pg_clipfrac"], abs=1e-6)
    assert m["kl/approx_old"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("ratio", "coef"), [(0.05, 1.0), (2e-3, 0.1), (2e-4, 1.0)])
def test_kl_cov_matches_verl(verl, seed, ratio, coef):
    actor, run, _ = verl
    mask, logp, old, adv, _ = _batch(seed)
    ref_loss, ref_grad, ref_m = run(
        "kl_cov", actor("kl_cov", kl_cov_ratio=ratio, ppo_kl_coef=coef), mask, logp, old, adv
    )
    loss, m = kl_cov(logp, old, adv, mask, cfg=KLCovConfig(ratio=ratio, coef=coef))
    ours, grad = _loss_and_grad(aggregate(loss, mask, "token-mean"), logp)
    torch.testing.assert_close(ours, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert m["kl/abs_log_ratio"].item() == pytest.approx(ref_m["actor/ppo_kl"], abs=1e-6)
    assert m["kl/frac_cov"].item() == pytest.approx(max(int(ratio * mask.sum().item()), 1) / mask.sum().item())


# ---------------------------------------------------------------------------------------------------- TRL


@pytest.fixture(scope="module")
def trl_mask():
    pytest.importorskip("trl")
    from accelerate import Accelerator
    from trl import GRPOTrainer

    class Minimal:  # get_high_entropy_mask only reads self.accelerator (pad_across_processes, gather)
        accelerator = Accelerator(cpu=True)

    return lambda entropies, mask, threshold: GRPOTrainer.get_high_entropy_mask(Minimal(), entropies, mask, threshold)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rho", [0.2, 0.5, 0.7, 0.05, 1.0])
def test_forking_tokens_quantile_matches_trl_top_entropy_quantile(trl_mask, seed, rho):
    mask, logp, old, adv, entropy = _batch(seed)
    # TRL: entropy_mask = get_high_entropy_mask(entropies, mask, 1 - top_entropy_quantile)
    ref = trl_mask(entropy, mask, 1.0 - rho)
    cfg = ForkingTokensConfig(rho=rho, selection="quantile", drop="zero_weight")
    weight, new_mask, _ = forking_tokens(mask, cfg=cfg, entropy=entropy, old_logp=old, advantages=adv, truncated=None)
    assert torch.equal(new_mask, mask)
    assert torch.equal((weight == 1) & mask.bool(), ref)
    # TRL's loss_type="dapo": (per_token_loss * entropy_mask * mask).sum() / num_items (all completion tokens)
    per_token, _ = ppo_clip(logp, old, adv, mask, cfg=PPOClipConfig(eps_low=0.2, eps_high=0.28))
    trl_loss = (per_token * ref * mask).sum() / mask.sum()
    ours = aggregate(per_token * weight, new_mask, "token-mean")
    torch.testing.assert_close(ours, trl_loss, **TOL)
    masked_out = forking_tokens(
        mask,
        cfg=ForkingTokensConfig(rho=rho, selection="quantile"),
        entropy=entropy,
        old_logp=old,
        advantages=adv,
        truncated=None,
    )[1]
    assert torch.equal(masked_out.bool(), ref)  # mask-out keeps the same tokens (the denominator differs)
