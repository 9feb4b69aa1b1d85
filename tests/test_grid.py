"""Fair grids: a preset's method part and recipe kept apart, one recipe per grid, refusal of any other
difference unless allowed, needs applied to every run and said, and scale warnings."""

from __future__ import annotations

import pytest
import torch

from entrolab.batch import TokenBatch
from entrolab.compare import CompareArgs, plan
from entrolab.config import TrainConfig, base_config
from entrolab.grid import differences, plan_grid
from entrolab.methods.covariance import budget_warning
from entrolab.methods.forking import ForkingTokensConfig, fraction_warning
from entrolab.presets import BASELINE, PRESET_PARTS, PRESETS, Preset
from entrolab.update import Methods, scale_warnings


def grid(methods: str, **kw) -> tuple[list[TrainConfig], dict]:
    return plan(CompareArgs(out="/tmp/unused", methods=methods, seeds=2, steps=3, **kw))


@pytest.mark.parametrize("name", sorted(PRESET_PARTS))
def test_a_preset_is_its_recipe_with_its_method_on_top(name):
    p = PRESET_PARTS[name]
    full = PRESETS[name]
    for key, value in p.method.items():
        if key != "options":
            assert full[key] == value, key  # the method part wins
    for key, value in p.recipe.items():
        if key != "options" and key not in p.method:
            assert full[key] == value, key
    assert full["options"] == (*p.recipe.get("options", ()), *p.method.get("options", ()))
    assert set(full) >= set(BASELINE)  # unset axes are the baseline's, never another preset's
    cfg = base_config(name)  # `entrolab train --preset` applies both parts
    assert cfg.preset == name and cfg.policy_loss == full["policy_loss"]


def test_the_recipe_split_keeps_the_papers_recipes():
    assert PRESET_PARTS["clip_cov"].recipe["minibatches"] == 4 and base_config("clip_cov").minibatches == 4
    assert "minibatches" not in PRESET_PARTS["clip_cov"].method  # a recipe setting, not the method
    assert PRESET_PARTS["dapo"].method["aggregation"] == "token-mean"  # DAPO declares its aggregation
    assert "aggregation" not in PRESET_PARTS["clip_cov"].method  # Clip-Cov does not


def test_one_recipe_for_every_run_of_a_grid():
    runs, info = grid("grpo,clip_cov,forking_tokens")
    assert info["recipe"] == "grpo" and len(runs) == 6
    by = {r.preset: r for r in runs if r.seed == 0}
    for field in ("aggregation", "minibatches", "lr", "ppo_epochs", "group_size", "max_new_tokens"):
        assert len({getattr(r, field) for r in by.values()}) == 1, field
    assert by["clip_cov"].aggregation == "seq-mean-token-mean" and by["clip_cov"].minibatches == 1
    assert set(info["differences"]) == {
        "policy_loss",
        "token_filters",
        "options:forking_tokens.rho",
        "options:policy_loss.ratio",
        "options:policy_loss.cov_lb",
        "options:policy_loss.cov_ub",
    }
    runs, info = grid("grpo,clip_cov", recipe="clip_cov")  # another preset's recipe, for every run
    assert {r.minibatches for r in runs} == {4} and {r.aggregation for r in runs} == {"token-mean"}


def test_a_method_that_needs_a_recipe_setting_gets_it_for_every_run_and_it_is_said():
    runs, info = grid("grpo,kl_cov")
    assert {r.minibatches for r in runs} == {4}
    (note,) = info["notes"]
    assert note.startswith("kl_cov needs minibatches changed from 1") and "every run uses minibatches=4" in note


def test_the_recipe_clip_range_follows_the_policy_loss_where_it_has_one():
    plan_ = plan_grid(["forking_tokens", "steer", "clip_cov"])  # DAPO's clip range is forking_tokens' recipe
    assert "steer.eps_high=0.28" in plan_.fields["steer"]["options"]
    assert not any(o.startswith("clip_cov.eps") for o in plan_.fields["clip_cov"]["options"])
    assert any("does not apply to clip_cov" in n for n in plan_.notes)
    diff = differences({m: f for m, f in plan_.fields.items()})
    assert "options:policy_loss.eps_high" not in diff or diff["options:policy_loss.eps_high"]["clip_cov"] is None


def test_a_difference_outside_the_methods_parts_is_refused_unless_allowed(monkeypatch):
    rogue = Preset(method=dict(policy_loss="steer", lr=5e-4))  # a method part that changes the learning rate
    monkeypatch.setitem(PRESET_PARTS, "rogue", rogue)
    monkeypatch.setitem(PRESETS, "rogue", rogue.full())
    with pytest.raises(ValueError, match=r"differ in lr outside their methods' own parts .*--allow-unequal lr"):
        grid("grpo,rogue")
    runs, info = grid("grpo,rogue", allow_unequal=("lr",))
    assert {r.lr for r in runs} == {1e-4, 5e-4} and info["differences"]["lr"] == {"grpo": 1e-4, "rogue": 5e-4}


def test_set_overrides_apply_to_every_run():
    runs, info = grid("grpo,steer", set=("lr=3e-5", "minibatches=2"))
    assert {r.lr for r in runs} == {3e-5} and {r.minibatches for r in runs} == {2}
    assert "lr" not in info["differences"]


def test_scale_warnings_name_the_degenerate_selection():
    assert budget_warning("clip_cov", 2e-4, 2048) == (
        "clip_cov selects 1 of 2,048 tokens (ratio 0.0002; ratio * N < 1: the method is nearly off)"
    )
    assert budget_warning("clip_cov", 2e-4, 5000) is None  # floor(1.0) = 1 token is what the ratio asks for
    assert budget_warning("clip_cov", 0.0, 2048) is None  # off on purpose
    assert "keeps every token" in fraction_warning(ForkingTokensConfig(rho=1.0), 100)
    assert fraction_warning(ForkingTokensConfig(rho=0.2), 100) is None
    assert "keeps 1 of 3 tokens" in fraction_warning(ForkingTokensConfig(rho=0.2), 3)
    methods = Methods(base_config("clip_cov"))
    b = 4
    mask = torch.ones(b, 512)
    batch = TokenBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1),
        response_ids=torch.zeros(b, 512, dtype=torch.long),
        attention_mask=mask,
        loss_mask=mask,
        old_logp=torch.zeros(b, 512),
        old_entropy=torch.zeros(b, 512),
        group_id=torch.zeros(b, dtype=torch.long),
        truncated=torch.zeros(b, dtype=torch.bool),
    )
    assert scale_warnings(methods, batch) == {
        "clip_cov": "clip_cov selects 1 of 2,048 tokens (ratio 0.0002; ratio * N < 1: the method is nearly off) "
        "per minibatch"
    }
    assert scale_warnings(methods, batch, micro_batch_size=2)["clip_cov"].endswith("1 of 1,024 tokens (ratio "
        "0.0002; ratio * N < 1: the method is nearly off) per micro-batch")  # fmt: skip


def test_a_variant_adds_options_to_the_method_part_for_a_sweep():
    runs, info = grid("clip_cov,clip_cov@clip_cov.ratio=0.002")
    by = {r.out.split("/")[-2]: r for r in runs if r.seed == 0}
    assert by["clip_cov@clip_cov.ratio=0.002"].method_options()["clip_cov"]["ratio"] == 0.002
    assert by["clip_cov"].method_options()["clip_cov"]["ratio"] == 0.0002
    assert by["clip_cov@clip_cov.ratio=0.002"].preset == "clip_cov"
    assert info["differences"]["options:policy_loss.ratio"] == {
        "clip_cov": "0.0002",
        "clip_cov@clip_cov.ratio=0.002": "0.002",
    }
    with pytest.raises(ValueError, match=r"must look like 'method.field=value'"):
        grid("clip_cov@ratio")
    with pytest.raises(ValueError, match="which this run does not use"):
        grid("grpo@kl_cov.ratio=0.1")


def test_a_method_that_never_acts_over_the_first_steps_is_warned_about():
    from entrolab.update import inactive_warnings

    methods = Methods(base_config("clip_cov"))
    sums: dict[str, float] = {}
    for step in range(1, 10):
        assert inactive_warnings(methods, sums, {"clip/frac_cov": 0.0}, step) == {}
    (warning,) = inactive_warnings(methods, sums, {"clip/frac_cov": 0.0}, 10).values()
    assert warning.startswith("clip_cov acted on no token over the first 10 steps (clip/frac_cov = 0)")
    sums = {}
    for step in range(1, 11):  # one step with a clipped token: no warning
        out = inactive_warnings(methods, sums, {"clip/frac_cov": 0.01 if step == 3 else 0.0}, step)
    assert out == {}
    assert inactive_warnings(Methods(base_config("grpo")), {}, {}, 10) == {}  # ppo_clip declares no activity key
