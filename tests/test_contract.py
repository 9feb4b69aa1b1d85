"""The contract every registered method keeps, checked over the whole registry.

One parametrised test calls every entry on every axis with its default config and random inputs laid out
by the axis's call convention (``entrolab.methods`` docstring), and checks: finite outputs of the right
shape, metric keys exactly as declared in ``register(metrics=...)``, scalar detached metrics, a working
backward for the loss-producing axes, and the docstring sections of the house template. Plus: signatures
follow the convention, docstring examples run, unknown names list the known ones, and
``"package.module:function"`` loads a user's own method.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import math
import re
import textwrap

import pytest
import torch

from entrolab import catalogue, ops, registry
from entrolab.axes import PROTOCOLS
from entrolab.methods.aggregation import aggregate

B, G, T, MAX_LENGTH = 8, 4, 6, 8192
ENTRIES = [entry for axis_entries in catalogue.entries().values() for entry in axis_entries]


def _convention(protocol: type) -> tuple[tuple[str, ...], set[str]]:
    """(positional names, keyword-only names) of an axis protocol's ``__call__``."""
    params = list(inspect.signature(protocol.__call__).parameters.values())[1:]  # drop self
    positional = tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return positional, {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


# The call convention per axis, from the protocols in entrolab.axes (what the composer calls).
CONVENTION = {axis: _convention(protocol) for axis, protocol in PROTOCOLS.items()}
# What a schedule may observe: the previous step's logged metrics (a few of the trainer's and methods' keys).
OBSERVED = {
    "entropy/token_mean": 0.15,
    "entropy/sampled_nll": 0.3,
    "entropy/topp_peak_mean": 0.7,
    "reward/mean": 0.4,
    "kl/ref_k1_mean": 0.6,
    "kl_reward/kl": 0.05,
    "erank/er_mean": 4.0,
    "erank/erv_mean": 0.5,
    "erank/era_mean": 0.1,
    "reward_meanstd/batch_n": 8.0,
    "reward_meanstd/batch_mean": 0.4,
    "reward_meanstd/batch_var": 0.24,
    "reward_meanstd/batch_min": 0.0,
    "reward_meanstd/batch_max": 1.0,
}


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 3, 1, 0, 5, 6, 2, 4])  # one empty response on purpose
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()  # [B, T]
    logits = torch.randn(B, T, 11, generator=g)
    return {
        "mask": mask,
        "rewards": torch.randint(0, 2, (B,), generator=g).float(),
        "logp": torch.log_softmax(logits, -1)[..., 0].requires_grad_(),  # [B, T]
        "old_logp": torch.log_softmax(logits + 0.1 * torch.randn(logits.shape, generator=g), -1)[..., 0],
        "ref_logp": torch.log_softmax(logits + 0.3 * torch.randn(logits.shape, generator=g), -1)[..., 0],
        "entropy": torch.rand(B, T, generator=g).mul(2.0).requires_grad_(),  # [B, T]
        "advantages": torch.randn(B, 1, generator=g),
        "lengths": torch.randint(0, MAX_LENGTH + 1, (B,), generator=g),
        "truncated": torch.tensor([True, False] * (B // 2)),
        "loss": torch.randn(B, T, generator=g).requires_grad_(),
        # extra inputs a method asks for with register(needs=...); "ref_logp" is above
        "logits": logits.clone().requires_grad_(),  # [B, T, V] current forward pass
        "old_entropy": ops.entropy_from_logits(logits),  # [B, T] rollout policy
        "vocab_baseline": ops.discriminator_baseline_from_logits(logits),  # [B, T] sum_v p_v^2 (H + log p_v)
        "generator": torch.Generator().manual_seed(seed),  # the run's generator, for random subsets
        "answer_phase": (torch.rand(B, T, generator=g) > 0.5).float(),  # [B, T] tokens after the answer marker
        "group_id": ops.contiguous_groups(B, G),  # [B] (token filters ask for it)
        "answer_ids": torch.tensor([0, 0, 1, -1, 2, 2, 2, 3]),  # [B] extracted answers' ids, -1: none
        "answer_logp": -torch.rand(B, 3, generator=g).mul(3.0),  # [B, A] reference answer's log-probs
        "answer_mask": torch.tensor([[1.0, 1.0, 0.0]] * (B - 1) + [[0.0, 0.0, 0.0]]),  # one empty answer
        "hidden_states": torch.randn(B, T, 5, generator=g) * mask.unsqueeze(-1),  # [B, T, d]
        "step": 3,
        "total_steps": 10,
        # per-sample tensors an advantage provides (register(provides=...)) for the policy loss
        "copo_global_adv": torch.randn(B, 1, generator=g),
        "copo_weight": torch.rand(B, 1, generator=g),
        "ref_rewards": torch.randn(B, 3, generator=g),  # [B, M] reward-model scores of reference responses
        "step_ids": torch.where(mask > 0, torch.arange(T).div(2, rounding_mode="floor"), -1),  # [B, T] 2-token steps
        "prm_logp": torch.log_softmax(logits + 0.2 * torch.randn(logits.shape, generator=g), -1)[..., 0],
        "reward_parts": torch.rand(B, 2, generator=g),  # [B, K] reward components
        "rm_heads": torch.randn(B, 4, generator=g),  # [B, K] ensemble heads
        "labels": torch.rand(B, generator=g),  # [N] soft preference labels
        # multi-turn episodes: 2-token turns as steps, a state per (turn, row parity), rewards on turn ends
        "state_ids": torch.where(
            mask > 0, torch.arange(T).div(2, rounding_mode="floor") * 3 + torch.arange(B).unsqueeze(1) % 2, -1
        ),
        "step_rewards": torch.zeros(B, T),
        "step_valid": (torch.rand(B, T, generator=g) > 0.3).float() * mask,
        "progress": torch.rand(B, T, generator=g) * mask,  # [B, T] progress estimates on step ends
        "turns": torch.tensor([3, 2, 1, 0, 3, 3, 1, 2]),
        "tool_calls": torch.tensor([2, 1, 0, 0, 2, 1, 0, 1]),
        # the sampler's log-probs beside the trainer's (rollout correction), ReMax's greedy rewards, sum_v pi^2
        "rollout_logp": torch.log_softmax(logits + 0.05 * torch.randn(logits.shape, generator=g), -1)[..., 0],
        "greedy_rewards": torch.randint(0, 2, (B,), generator=g).float(),
        "sum_pi_sq": torch.softmax(logits, -1).square().sum(-1),  # [B, T]
    }


def _check_schedule(entry: registry.Entry, cfg) -> None:
    """state {} then observations: plain finite float state (JSON-checkpointable), values 'method.field' that
    name a field of a registered non-schedule method and are valid values of it."""
    state: dict[str, float] = {}
    doc = inspect.getdoc(entry.fn) or ""
    for step, observed in enumerate(({}, OBSERVED, OBSERVED), start=1):
        state, values = entry.fn(state, dict(observed), cfg=cfg, step=step, total_steps=10)
        assert all(isinstance(v, float) and math.isfinite(v) for v in state.values()), state
        assert json.loads(json.dumps(state)) == state
        for key, value in values.items():
            assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", key), key
            assert isinstance(value, float) and math.isfinite(value), (key, value)
            method, _, field = key.partition(".")
            targets = [e for e in ENTRIES if e.name == method and e.axis != "schedule"]
            assert targets, f"{entry.name}: {key!r} names no registered method"
            if field not in targets[0].state:  # a declared controller-state value, or else a config field
                targets[0].make_config({field: value})  # a real field, and a valid value of it
            assert key in entry.sets(cfg), f"{entry.name}: sets {key!r} without declaring it in sets="
            assert key in doc, f"{entry.name}: value key {key!r} not documented"
    assert values, f"{entry.name}: no values after two observations"


def _check_metrics(entry: registry.Entry, metrics: dict[str, torch.Tensor]) -> None:
    assert tuple(sorted(metrics)) == tuple(sorted(entry.metrics)), f"{entry.name}: {sorted(metrics)}"
    assert len(entry.metrics) == len(set(entry.metrics))
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert torch.isfinite(value) and not value.requires_grad, key


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.axis}:{e.name}")
def test_every_registered_method_keeps_the_contract(entry: registry.Entry) -> None:
    x, cfg = _inputs(), entry.make_config()
    fn, mask = entry.fn, x["mask"]
    ref_logp = x["ref_logp"] if "ref_logp" in entry.needs else None
    extra = {k: x[k] for k in entry.needs if k != "ref_logp" or entry.axis != "regularizer"}
    if entry.state:
        extra["state"] = {}
    grad_of: list[torch.Tensor] = []
    if entry.axis == "advantage":
        out = fn(x["rewards"], mask, cfg=cfg, group_id=ops.contiguous_groups(B, G), **extra)
        adv, metrics = out[:2]
        assert adv.shape in ((B, 1), (B, T)) and torch.isfinite(adv).all()
        assert len(out) == (3 if entry.provides else 2)
        if entry.provides:
            assert set(out[2]) == set(entry.provides)
            assert all(v.shape[0] == B and torch.isfinite(v).all() and not v.requires_grad for v in out[2].values())
    elif entry.axis == "reward_shaper":
        shaped, metrics = fn(
            x["rewards"],
            mask,
            cfg=cfg,
            group_id=ops.contiguous_groups(B, G),
            lengths=x["lengths"],
            truncated=x["truncated"],
            max_length=MAX_LENGTH,
            **extra,
        )
        assert shaped.shape == (B,) and torch.isfinite(shaped).all()
    elif entry.axis == "token_filter":
        weight, new_mask, metrics = fn(
            mask,
            cfg=cfg,
            entropy=x["entropy"].detach(),
            old_logp=x["old_logp"],
            advantages=x["advantages"],
            truncated=x["truncated"],
            **extra,
        )
        assert weight.shape == new_mask.shape == (B, T) and torch.isfinite(weight).all()
        assert torch.all((new_mask == 0) | (mask == 1)), "a filter may only remove tokens"
    elif entry.axis == "policy_loss":
        out, metrics = fn(x["logp"], x["old_logp"], x["advantages"], mask, cfg=cfg, entropy=x["entropy"], **extra)
        grad_of = [x["logp"]]
    elif entry.axis == "regularizer":
        out, metrics = fn(
            x["logp"], mask, cfg=cfg, entropy=x["entropy"], old_logp=x["old_logp"], ref_logp=ref_logp, **extra
        )
        grad_of = [x["logp"], x["entropy"], x["logits"]]
    elif entry.axis == "schedule":
        metrics = {}
        _check_schedule(entry, cfg)
    elif entry.axis == "sampler":
        keep, metrics = fn(
            x["rewards"],
            mask,
            cfg=cfg,
            group_id=ops.contiguous_groups(B, G),
            shaped=x["rewards"],
            lengths=x["lengths"],
            entropy=x["entropy"].detach(),
            **extra,
        )
        grid = keep.view(-1, G)
        assert keep.shape == (B,) and keep.dtype == torch.bool
        assert entry.unit == "sample" or torch.equal(grid.all(1), grid.any(1)), "group samplers keep whole groups"
    elif entry.axis == "preference_loss":
        chosen = x["logp"].sum(-1)  # [N] sequence log-probs with grad
        rejected = (x["logp"] * 0.5).sum(-1)
        out, metrics = fn(
            chosen,
            rejected,
            x["ref_logp"].sum(-1),
            x["old_logp"].sum(-1),
            cfg=cfg,
            chosen_lengths=x["lengths"].clamp(min=1),
            rejected_lengths=x["lengths"].clamp(min=1),
            **{k: v for k, v in extra.items()},
        )
        assert out.shape == (B,) and torch.isfinite(out).all()
        out.mean().backward()
        assert x["logp"].grad is not None and torch.isfinite(x["logp"].grad).all()
    elif entry.axis == "sft_loss":
        out, used, metrics = fn(x["logp"], x["entropy"].detach(), mask, cfg=cfg)
        assert used.shape == (B, T) and torch.all(~used.bool() | (mask == 1)), "an SFT loss uses only supervised tokens"
        grad_of = [x["logp"]]
    else:
        out = fn(x["loss"], mask, num_tokens=mask.sum(), num_seqs=(mask.sum(-1) > 0).sum(), norm_len=T)
        metrics = {}
        assert out.dim() == 0 and torch.isfinite(out)
        out.backward()
        assert torch.isfinite(x["loss"].grad).all() and torch.all(x["loss"].grad[mask == 0] == 0)
    _check_metrics(entry, metrics)
    if grad_of:
        scalar = entry.axis == "regularizer" and out.dim() == 0  # a batch scalar, added once per micro-batch
        assert scalar or (out.shape == (B, T) and torch.all(out[mask == 0] == 0))
        assert torch.isfinite(out).all()
        (out if scalar else aggregate(out, mask, "token-mean")).backward()
        grads = [t.grad for t in grad_of if t.grad is not None]
        assert grads, f"{entry.name}: no gradient reached logp or entropy"
        assert all(torch.isfinite(g).all() and torch.all(g[mask == 0] == 0) for g in grads)
    doc = inspect.getdoc(fn) or ""
    for section in ("Args:", "Returns:", "Differences from the paper", "Example:", ">>>"):
        assert section in doc, f"{entry.axis} {entry.name!r} docstring lacks {section!r}"
    for key in entry.metrics:
        assert key in doc, f"{entry.name}: metric {key!r} not documented"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.axis}:{e.name}")
def test_signature_follows_the_axis_convention(entry: registry.Entry) -> None:
    params = inspect.signature(entry.fn).parameters.values()
    positional = tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    expected_positional, expected_keyword = CONVENTION[entry.axis]
    stats = {"stats"} if entry.stats is not None else set()  # batch-wide statistics, see entrolab.axes
    state = {"state"} if entry.state else set()  # controller values set by a schedule
    assert (positional, keyword) == (expected_positional, expected_keyword | set(entry.needs) | stats | state)
    args = (inspect.getdoc(entry.fn) or "").split("Args:")[1].split("Returns:")[0]
    for name in (*positional, *keyword):
        assert re.search(rf"\b{name}\b", args), f"{entry.name}: argument {name!r} not in Args"


@pytest.mark.parametrize("module", sorted({e.fn.__module__ for e in ENTRIES}))
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.failed == 0 and result.attempted > 0


def test_unknown_name_lists_known_ones() -> None:
    known = r"known: aem, aepo_adv, canon, copo, dr_grpo, empg, erank, gdpo, gigpo, gpg, grpo, "
    with pytest.raises(ValueError, match=known) as err:
        catalogue.get("advantage", "gpro")
    assert "package.module:function" in str(err.value)
    with pytest.raises(ValueError, match="allowed"):
        catalogue.get("nonsense", "grpo")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['eps_hi'\].*eps_high"):
        catalogue.get("policy_loss", "ppo_clip").make_config({"eps_hi": 0.3})


USER_MODULE = '''
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScaleConfig:
    scale: float = 2.0


def scaled_mean(rewards, mask, *, cfg, group_id):
    """Rewards minus the group mean, times cfg.scale (contiguous groups)."""
    r = rewards.view(int(group_id.max()) + 1, -1)
    return ((r - r.mean(-1, keepdim=True)) * cfg.scale).reshape(-1, 1), {}


scaled_mean.config = ScaleConfig
'''


def test_user_function_loads_from_module_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_entrolab_methods.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = catalogue.get("advantage", "my_entrolab_methods:scaled_mean")
    assert entry.name == "my_entrolab_methods:scaled_mean" and entry.summary.startswith("Rewards minus")
    cfg = entry.make_config({"scale": 3.0})
    adv, metrics = entry.fn(
        torch.tensor([1.0, 0.0]), torch.ones(2, 1), cfg=cfg, group_id=torch.zeros(2, dtype=torch.long)
    )
    assert adv.squeeze(-1).tolist() == [1.5, -1.5] and metrics == {}
    with pytest.raises(ValueError, match="no callable or attribute 'missing'"):
        catalogue.get("advantage", "my_entrolab_methods:missing")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        catalogue.get("advantage", "no_such_module_xyz:fn")


def test_user_module_that_registers_itself(tmp_path, monkeypatch) -> None:
    # A module that calls register() on import: the loader returns that entry (with its config).
    monkeypatch.setitem(registry._REGISTRY, "advantage", dict(registry._REGISTRY["advantage"]))
    source = USER_MODULE.replace("def scaled_mean", '@register("advantage", "scaled")\ndef scaled_mean')
    source = source.replace("import torch\n", "import torch\n\nfrom entrolab.registry import register\n")
    (tmp_path / "my_registered_methods.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = catalogue.get("advantage", "my_registered_methods:scaled_mean")
    assert entry.name == "scaled" and catalogue.get("advantage", "scaled") is entry
