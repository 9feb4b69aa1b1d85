"""`entrolab compare` and `entrolab report` as a user runs them: a small grid on the random tiny model."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import entrolab

SMALL = [
    "--set",
    "prompts_per_step=4",
    "group_size=4",
    "max_new_tokens=10",
    "eval_samples=4",
    "eval_prompts=6",
    "reward_fn='tests.fault_fns:digits'",
    "save_every=1",
]


def test_compare_grid_skips_finished_runs_and_renders_the_report(tiny_dir, tmp_path):
    cmp = tmp_path / "cmp"
    args = [
        "compare",
        "--out",
        str(cmp),
        "--model",
        str(tiny_dir),
        "--methods",
        "grpo,clip_cov",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--workers",
        "2",
        "--no-progress",
        *SMALL,
    ]
    entrolab(*args, timeout=600)
    for method in ("grpo", "clip_cov"):
        for seed in (0, 1):
            run = cmp / method / f"seed{seed}"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["config"]["seed"] == seed and summary["config"]["preset"] == method
            assert json.loads((run / "eval_detail.json").read_text())["samples"] == 4
    # every run of a seed saw the same prompts: the base evaluation and the data order are shared
    base = json.loads((cmp / "base_eval.json").read_text())
    assert len(base["right"]) == 6 and len(base["answers"][0]) == 4
    html = (cmp / "report.html").read_text()
    assert "grpo" in html and "clip_cov" in html and html.count("data:image/png;base64,") >= 5
    # one recipe for the grid (grpo's), the differing fields shown, and Clip-Cov's scale warning said
    grid = json.loads((cmp / "grid.json").read_text())
    assert grid["recipe"] == "grpo" and set(grid["differences"]) == {
        "policy_loss",
        "options:policy_loss.ratio",
        "options:policy_loss.cov_lb",
        "options:policy_loss.cov_ub",
    }
    cfgs = [json.loads((cmp / m / "seed0" / "config.json").read_text()) for m in ("grpo", "clip_cov")]
    assert cfgs[0]["aggregation"] == cfgs[1]["aggregation"] == "seq-mean-token-mean"  # grpo's recipe for both
    assert cfgs[0]["minibatches"] == cfgs[1]["minibatches"] == 1
    warnings = json.loads((cmp / "clip_cov" / "seed0" / "scale_warnings.json").read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("clip_cov selects 1 of ")
    assert "Recipe" in html and "scale warning, clip_cov: clip_cov selects 1 of" in html
    # repeating the command skips the finished runs (their metrics are untouched)
    before = (cmp / "grpo" / "seed0" / "metrics.jsonl").read_text()
    entrolab(*args, timeout=600)
    assert (cmp / "grpo" / "seed0" / "metrics.jsonl").read_text() == before
    # the report renders again from the files alone
    (cmp / "report.html").unlink()
    out = entrolab("report", str(cmp))
    assert (cmp / "report.html").is_file() and "report.html" in out.stdout


def test_compare_rejects_unknown_methods_before_any_work(tmp_path):
    proc = entrolab("compare", "--out", str(tmp_path / "c"), "--methods", "grpo,nope", check=False)
    assert proc.returncode == 2
    assert "unknown method(s) ['nope'] for compare; known presets:" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_sinks_write_through_the_real_libraries(tiny_dir, tmp_path):
    """--log-to tensorboard and mlflow (local file store) record the same numbers as metrics.jsonl."""
    run = tmp_path / "run"
    entrolab(
        "train",
        "--model",
        str(tiny_dir),
        "--out",
        str(run),
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "6",
        "--eval-samples",
        "2",
        "--eval-prompts",
        "2",
        "--no-progress",
        "--log-to",
        "tensorboard",
        "mlflow",
    )
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("entropy/token_mean")]
    assert tb == [(r["step"], __import__("pytest").approx(r["entropy/token_mean"])) for r in rows[1:]]
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    client = mlflow.tracking.MlflowClient((run / "mlruns").resolve().as_uri())
    run_id = (run / "mlruns" / "entrolab_run_id").read_text().strip()
    hist = client.get_metric_history(run_id, "eval/pass_at_1")
    assert sorted(m.step for m in hist) == [0, 2]
    assert client.get_run(run_id).data.params["max_new_tokens"] == "6"


@pytest.mark.slow
def test_compare_on_an_environment_and_train_the_spear_recipe_from_the_cli(tiny_dir, tmp_path):
    """The README's agent commands at toy size: a grid on calc (plain and branching rollouts), SPEAR's recipe."""
    cmp = tmp_path / "cmp_env"
    small = ["--set", "prompts_per_step=2", "group_size=4", "turn_tokens=6", "episode_tokens=40", "eval_samples=2"]
    small += ["eval_prompts=2"]
    entrolab(
        "compare",
        "--env",
        "calc",
        "--out",
        str(cmp),
        "--model",
        str(tiny_dir),
        "--methods",
        "grpo,gigpo,aepo",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--workers",
        "2",
        "--no-progress",
        *small,
        timeout=600,
    )
    for method in ("grpo", "gigpo", "aepo"):
        summary = json.loads((cmp / method / "seed0" / "summary.json").read_text())
        assert summary["config"]["env"] == "calc" and "turns_mean" in summary["final_eval"]
    html = (cmp / "report.html").read_text()
    assert "<h2>Turns and tool calls</h2>" in html
    run = tmp_path / "spear"
    entrolab(
        "train",
        "--model",
        str(tiny_dir),
        "--env",
        "lookup",
        "--preset",
        "spear",
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "4",
        "--turn-tokens",
        "6",
        "--episode-tokens",
        "40",
        "--eval-prompts",
        "2",
        "--eval-samples",
        "2",
        "--out",
        str(run),
        "--no-progress",
        timeout=600,
    )
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 2 and all("spear/tool_weight" in r and "sil/held" in r for r in rows)


ANCHOR_PRESETS = (
    "gspo,gmpo,cispo,sapo,dppo_tv,dppo_kl,dro,gpg,luspo,vespo,bnpo,reinforce_pp,reinforce_pp_baseline,opo,remax,"
    "grpo_passk,optimal_token_baseline,kl_in_reward,rollout_is,opsm"
)


@pytest.mark.slow
def test_every_anchor_preset_runs_two_steps_from_the_cli(tiny_dir, tmp_path):
    """verl's and TRL's losses and estimators, as presets, 2 steps each through `entrolab compare` (gdpo needs a
    reward model's parts: it runs in tests/test_trainer.py's preset test with one)."""
    cmp = tmp_path / "cmp_anchors"
    small = ["--set", "prompts_per_step=2", "group_size=4", "max_new_tokens=6", "eval_samples=2", "eval_prompts=2"]
    entrolab(
        "compare",
        "--task",
        "arithmetic",
        "--out",
        str(cmp),
        "--model",
        str(tiny_dir),
        "--methods",
        ANCHOR_PRESETS,
        "--seeds",
        "1",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--workers",
        "2",
        "--no-progress",
        *small,
        timeout=1200,
    )
    for method in ANCHOR_PRESETS.split(","):
        rows = [json.loads(x) for x in (cmp / method / "seed0" / "metrics.jsonl").read_text().splitlines()[1:]]
        assert len(rows) == 2, method
        summary = json.loads((cmp / method / "seed0" / "summary.json").read_text())
        assert "pass@1" in summary["final_eval"], method
