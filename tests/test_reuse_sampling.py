"""The update's first minibatch reuses the sampling pass's logsumexp and entropy (``reuse_sampling_pass``).

What must hold: the op's gradient is the full op's when handed the same lse and entropy; the values stay within
fp32 rounding of a full forward on real rollouts; the trainer reuses on the one minibatch at the sampling weights
and nowhere else (later minibatches and epochs, replays, multi-turn episodes, rollout correction); and a run with
reuse follows the run without it to rounding.
"""

from __future__ import annotations

import json

import pytest
import torch

from entrolab import logprob
from entrolab.config import base_config
from entrolab.logprob import chunked_logprob_entropy
from entrolab.rollout import generate, teacher_forced
from entrolab.trainer import train
from tests.test_logprob import inputs
from tests.test_trainer import small_cfg


def full_stats(h, w, b, temperature):
    """The lse and entropy of softmax((h W^T + b) / T), by definition.  [N] each"""
    z = torch.nn.functional.linear(h, w, b) / temperature
    lp = torch.log_softmax(z, -1)
    return torch.logsumexp(z, -1), -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize(("temperature", "bias"), [(1.0, False), (0.6, True)])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_given_the_exact_lse_and_entropy_values_and_gradients_are_the_full_ops(temperature, bias, chunk_size):
    h, w, b, y, up = inputs(dtype=torch.float64, bias=bias)
    lse, ent = (x.detach() for x in full_stats(h, w, b, temperature))
    outs = []
    for sampled in (None, (lse, ent)):
        params = [h, w] + ([b] if b is not None else [])
        for p in params:
            p.grad = None
        lp, en = chunked_logprob_entropy(
            h, w, y, temperature=temperature, bias=b, chunk_size=chunk_size, sampled=sampled
        )
        ((lp * up[0]).sum() + (en * up[1]).sum()).backward()
        outs.append([lp.detach(), en.detach(), *(p.grad.clone() for p in params)])
    for name, a, c in zip(["logp", "entropy", "grad h", "grad w", "grad b"], *outs, strict=False):
        assert (a - c).abs().max() < 1e-12, (name, (a - c).abs().max())
    assert outs[0][2].abs().max() > 0.1  # the entropy and logp gradients do flow


def test_the_reused_forward_runs_no_product_over_the_vocabulary(monkeypatch):
    h, w, _, y, _ = inputs(n=9, v=50, d=4)
    lse, ent = (x.detach() for x in full_stats(h, w, None, 1.0))
    calls = []
    real = logprob._chunk_logits
    monkeypatch.setattr(logprob, "_chunk_logits", lambda *a: calls.append(1) or real(*a))
    lp, en = chunked_logprob_entropy(h, w, y, sampled=(lse, ent), chunk_size=4)
    assert not calls
    (lp.sum() + en.sum()).backward()
    assert len(calls) == 3  # the backward's chunks: 9 tokens in 4 + 4 + 1


def test_a_sampled_shape_that_disagrees_with_the_targets_is_refused():
    h, w, _, y, _ = inputs(n=5)
    with pytest.raises(ValueError, match=r"sampled .* must each match targets \(5,\)"):
        chunked_logprob_entropy(h, w, y, sampled=(torch.zeros(4), torch.zeros(5)))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_on_real_rollouts_the_reused_values_and_gradients_match_a_full_forward(tiny, temperature):
    model, tok = tiny
    r = generate(
        model,
        tok,
        ["3+4=?\n", "12-7=?\n"],
        group_size=4,
        max_new_tokens=12,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
        keep_lse=True,
    )
    lse = r.extras["sampled_lse"]
    assert lse.shape == r.logp.shape and bool((lse[r.response_mask == 0] == 0).all())
    mask = r.response_mask
    outs = []
    for sampled in (None, (lse, r.entropy)):
        model.zero_grad(set_to_none=True)
        lp, ent, _ = teacher_forced(
            model, r.prompt_ids, r.prompt_mask, r.response_ids, mask, temperature, sampled=sampled
        )
        ((lp * mask).sum() - 0.3 * (ent * mask).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        outs.append((lp.detach(), ent.detach(), grads))
    (lp0, ent0, g0), (lp1, ent1, g1) = outs
    assert ((lp0 - lp1) * mask).abs().max() < 1e-5
    assert ((ent0 - ent1) * mask).abs().max() < 1e-5
    assert ((lp1 - r.logp) * mask).abs().max() < 1e-5  # the sampled token's logit from teacher forcing
    assert float((g0 - g1).norm() / g0.norm()) < 1e-5


def spy_reuse(monkeypatch) -> list[bool]:
    """Record, per call of the chunked op, whether it was handed sampled statistics."""
    seen: list[bool] = []
    real = chunked_logprob_entropy

    def spy(*a, sampled=None, **kw):
        seen.append(sampled is not None)
        return real(*a, sampled=sampled, **kw)

    monkeypatch.setattr("entrolab.rollout.chunked_logprob_entropy", spy)
    return seen


def one_step(tiny_dir, out, preset: str = "grpo", **kw) -> None:
    """One training step of the tiny model (arithmetic, a digits reward unless an environment scores)."""
    kw = {"reward_fn": "tests.fault_fns:digits", **kw} if "env" not in kw else kw
    cfg = small_cfg(tiny_dir, out, base=base_config(preset), steps=1, entropy_probe=0, **kw)
    train(cfg, log=lambda *a: None)


@pytest.mark.parametrize(("ppo_epochs", "minibatches", "want"), [(1, 1, [True]), (2, 2, [True, False, False, False])])
def test_the_trainer_reuses_on_the_first_minibatch_of_the_first_epoch_only(
    tiny_dir, tmp_path, monkeypatch, ppo_epochs, minibatches, want
):
    seen = spy_reuse(monkeypatch)
    one_step(tiny_dir, tmp_path / "run", ppo_epochs=ppo_epochs, minibatches=minibatches)
    assert seen == want


def test_switched_off_or_with_rollout_correction_nothing_is_reused(tiny_dir, tmp_path, monkeypatch):
    seen = spy_reuse(monkeypatch)
    one_step(tiny_dir, tmp_path / "off", reuse_sampling_pass=False)
    one_step(tiny_dir, tmp_path / "rollout_is", "rollout_is")
    assert seen and not any(seen)


def test_multi_turn_episodes_are_not_reused(tiny_dir, tmp_path, monkeypatch):
    seen = spy_reuse(monkeypatch)
    one_step(tiny_dir, tmp_path / "run", env="lookup", turn_tokens=6, episode_tokens=40)
    assert seen and not any(seen)


def test_a_run_with_reuse_follows_the_run_without_it_to_rounding(tiny_dir, tmp_path):
    rows = {}
    for reuse in (True, False):
        cfg = small_cfg(
            tiny_dir,
            tmp_path / str(reuse),
            base=base_config("grpo"),
            steps=3,
            reward_fn="tests.fault_fns:digits",
            reuse_sampling_pass=reuse,
            lr=1e-3,
        )
        train(cfg, log=lambda *a: None)
        rows[reuse] = [json.loads(x) for x in (tmp_path / str(reuse) / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows[True], rows[False], strict=True):
        if "grad_norm" not in a:
            continue
        assert a["grad_norm"] > 0
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * b["grad_norm"], (
            a["step"],
            a["grad_norm"],
            b["grad_norm"],
        )
