"""entrolab.report on a synthetic comparison folder whose numbers are known."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from entrolab.report import load_comparison, mean_ci, render_report, summary_rows, t_quantile_975

PLOTS = ("curves", "passk", "entropy_law", "covariance", "clip", "length", "support", "best_of_n")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# final evaluation per (method, seed): pass@1, pass@16, entropy
FINAL = {
    ("alpha", 0): (0.40, 0.80, 1.0),
    ("alpha", 1): (0.60, 0.90, 1.2),
    ("beta", 0): (0.70, 0.95, 0.3),
    ("beta", 1): (0.72, 0.97, 0.5),
}
# per-problem right counts out of n = 4 (base, and each run's final model)
BASE_RIGHT = [4, 2, 0, 0, 1]
RIGHT = {"alpha": [4, 0, 3, 0, 1], "beta": [4, 4, 0, 0, 0]}


def write_comparison(root: Path, *, steps: int = 10, with_cov: bool = True, with_base: bool = True) -> Path:
    """2 methods x 2 seeds x ``steps`` steps of fake metrics; the final evals are FINAL, every 5 steps an eval."""
    for (method, seed), (p1, p16, ent) in FINAL.items():
        run = root / method / f"seed{seed}"
        run.mkdir(parents=True)
        rows = [{"step": 0, "eval/pass@1": 0.1, "eval/pass@16": 0.3, "eval/entropy": 1.5}]
        for t in range(1, steps + 1):
            frac = t / steps
            row = {
                "step": t,
                "reward/accuracy": 0.1 + (p1 - 0.1) * frac,
                "entropy/token_mean": 1.5 + (ent - 1.5) * frac,
                "clip/frac_low": 0.01 * seed,
                "clip/frac_high": 0.02,
                "len/mean": 10.0 + t,
                "len/max": 20,
                "len/truncated_frac": 0.1,
                "kl/seq_to_base": (0.1 if method == "alpha" else 0.05) * t,
            }
            if with_cov and method == "beta":
                row["cov/logp_adv"] = 0.2 + 0.01 * t
                row["entropy/predicted_delta"] = -1e-5 * row["cov/logp_adv"]
            if t % 5 == 0:
                row.update({"eval/pass@1": row["reward/accuracy"], "eval/entropy": row["entropy/token_mean"]})
            rows.append(row)
        rows[-1].update({"eval/pass@1": p1, "eval/pass@16": p16, "eval/entropy": ent})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        final = {"pass@1": p1, "pass@2": p1 + 0.1, "pass@16": p16, "entropy": ent, "maj@16": p1}
        base = {"pass@1": 0.1, "pass@2": 0.2, "pass@16": 0.3, "entropy": 1.5, "maj@16": 0.1}
        (run / "summary.json").write_text(json.dumps({"base_eval": base, "final_eval": final, "config": {}}))
        answers = [["1", "1", "2", None]] * 5
        detail = {"samples": 4, "right": RIGHT[method], "answers": answers}
        (run / "eval_detail.json").write_text(json.dumps(detail))
    if with_base:
        base_answers = [["1", "2", "3", "4"]] * 5
        (root / "base_eval.json").write_text(json.dumps({"samples": 4, "right": BASE_RIGHT, "answers": base_answers}))
    return root


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str]:
    root = write_comparison(tmp_path_factory.mktemp("cmp"))
    out = render_report(root)
    return root, out.read_text()


def test_t_quantile_and_interval():
    assert t_quantile_975(1) == pytest.approx(12.7062)
    assert t_quantile_975(30) == pytest.approx(2.0423)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=1e-4)  # the expansion continues the table
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-4)
    mean, half = mean_ci([0.4, 0.6])  # s = 0.1414, h = 12.7062 * s / sqrt(2) = 1.27062
    assert (mean, half) == pytest.approx((0.5, 1.27062))
    assert mean_ci([0.3])[0] == 0.3 and math.isnan(mean_ci([0.3])[1])
    assert math.isnan(mean_ci([math.nan])[0])


def test_report_is_written_with_every_plot_embedded_and_saved(rendered):
    root, doc = rendered
    assert (root / "report.html").exists()
    for name in PLOTS:
        png = root / "plots" / f"{name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC), name
        match = re.search(rf'id="plot-{name}"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
        assert match, f"plot {name} not embedded"
        assert base64.b64decode(match.group(1)) == png.read_bytes()
    assert "<link" not in doc and "<script" not in doc  # self-contained
    assert 'class="note"' not in doc  # every section had its inputs


def test_summary_table_has_the_known_numbers(rendered):
    root, doc = rendered
    # alpha pass@1: 0.4, 0.6 -> 0.500 ± 1.271; beta: 0.70, 0.72 -> 0.710 ± 12.7062 * 0.01414 / sqrt 2 = 0.127
    assert "<td>alpha</td><td>2</td><td>0.500 ± 1.271</td><td>0.850 ± 0.635</td>" in doc
    assert "<td>beta</td><td>2</td><td><b>0.710 ± 0.127</b></td><td><b>0.960 ± 0.127</b></td>" in doc
    # maj@16 is ranked, entropy is not (1.100 for alpha is the highest and stays plain)
    assert "<td><b>0.710 ± 0.127</b></td><td>0.400 ± 1.271</td>" in doc
    assert "<td>0.500 ± 1.271</td><td>1.100 ± 1.271</td>" in doc
    # the base row: every run's base eval is identical -> zero-width interval
    assert "<td>base</td><td>–</td><td>0.100 ± 0.000</td><td>0.300 ± 0.000</td>" in doc
    # answer entropy: runs {1: 2, 2: 1, None: 1} per prompt = 1.0397; base 4 distinct answers = ln 4 = 1.386
    assert "<td>1.040 ± 0.000</td>" in doc and "<td>1.386</td>" in doc
    header, rows, bold = summary_rows(load_comparison(root))
    assert header == [
        "method",
        "seeds",
        "pass@1",
        "pass@16",
        "maj@16",
        "token entropy (nats)",
        "answer entropy (nats)",
    ]
    assert [r[0] for r in rows] == ["base", "alpha", "beta"]
    assert bold[2][2:6] == [True, True, True, False]


def test_support_table_counts(rendered):
    _, doc = rendered
    # k = n = 4. base [4, 2, 0, 0, 1] vs alpha [4, 0, 3, 0, 1]: P = {0, 4}, S = {1}, E = {2}, O = {3};
    # vs beta [4, 4, 0, 0, 0]: P = {0, 1}, S = {4}, E = {}, O = {2, 3}.
    alpha = "<td>alpha</td><td>4</td><td>2.0 ± 0.0</td><td>1.0 ± 0.0</td><td>1.0 ± 0.0</td><td>1.0 ± 0.0</td>"
    beta = "<td>beta</td><td>4</td><td>2.0 ± 0.0</td><td>0.0 ± 0.0</td><td>1.0 ± 0.0</td><td>2.0 ± 0.0</td>"
    assert alpha in doc and beta in doc


def test_entropy_law_and_covariance_sections(rendered):
    _, doc = rendered
    assert "Pearson r" in doc and "<td>beta</td><td>18</td>" in doc  # 9 pairs (t, t+1) per seed, 2 seeds
    assert "<td>alpha</td><td>" in doc.split("ceiling b − a")[1]  # a law row per method
    # 3 eval points per run after step 0 (steps 0, 5, 10) -> eval points are used
    assert "evaluation points" in doc


def test_missing_inputs_are_skipped_with_a_note(tmp_path):
    root = write_comparison(tmp_path, steps=4, with_cov=False, with_base=False)
    (root / "alpha" / "seed1" / "summary.json").unlink()  # a run still going: the last eval row stands in
    doc = render_report(root).read_text()
    assert "no run logged <code>cov/logp_adv</code>" in doc
    assert "no <code>base_eval.json</code>" in doc
    assert 'id="plot-covariance"' not in doc and 'id="plot-support"' not in doc
    assert not (root / "plots" / "covariance.png").exists()
    for name in ("curves", "passk", "entropy_law", "clip", "length"):
        assert f'id="plot-{name}"' in doc
    assert "<td>alpha</td><td>2</td><td>0.500 ± 1.271</td>" in doc  # seed 1's pass@1 read from metrics.jsonl
    assert "training rollouts" in doc  # too few eval points: the law uses the training steps


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="seed"):
        render_report(tmp_path)


def test_best_of_n_section_places_the_measured_kl_next_to_best_of_n(rendered):
    """alpha: KL = mean of the last three logged values 0.8, 0.9, 1.0 = 0.9 nats; BoN's bound reaches 0.9 at
    N = equivalent_n(0.9); alpha's win rate over the base, per problem p(1-q) + (pq + (1-p)(1-q))/2:
    (0.5 + 0.25 + 0.875 + 0.5 + 0.5) / 5 = 0.525 (the same for both seeds: one detail file per run)."""
    from entrolab.bon import bon_kl_bound, bon_win_rate, equivalent_n
    from entrolab.report_bon import win_rate

    assert win_rate([4, 2, 0, 0, 1], 4, [4, 0, 3, 0, 1], 4) == pytest.approx(0.525)
    n = equivalent_n(0.9)
    assert bon_kl_bound(n) == pytest.approx(0.9, abs=1e-9)
    _, doc = rendered
    section = doc.split("<h2>Best-of-N vs KL-regularised RL</h2>")[1].split("<h2>")[0]
    assert "<td>alpha</td><td>0.900 ± 0.000</td>" in section
    assert f"<td>{n:.2f}</td><td>{bon_win_rate(n):.3f}</td><td>0.525 ± 0.000</td>" in section


def test_the_hacking_section_appears_for_runs_on_a_reward_model(tmp_path):
    root = write_comparison(tmp_path / "cmp")
    for path in root.glob("*/seed*/metrics.jsonl"):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for r in rows[1:]:
            r.update({"reward/proxy_mean": 0.1 * r["step"], "reward/gold_mean": 0.5, "reward/spurious_rate": 0.2})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = render_report(root).read_text()
    assert "Reward hacking: proxy against gold" in doc and (root / "plots" / "hacking.png").exists()
    plain = render_report(write_comparison(tmp_path / "plain")).read_text()
    assert "Reward hacking" not in plain


def test_the_turns_section_appears_for_runs_on_an_environment(tmp_path):
    root = write_comparison(tmp_path / "cmp")
    for path in root.glob("*/seed*/metrics.jsonl"):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for r in rows[1:]:
            r.update(
                {"env/turns_mean": 2.0, "env/tool_calls_mean": 1.0 + 0.01 * r["step"], "env/parse_errors_mean": 0.1}
            )
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = render_report(root).read_text()
    assert "<h2>Turns and tool calls</h2>" in doc and (root / "plots" / "agent.png").exists()
    assert "Turns and tool calls" not in render_report(write_comparison(tmp_path / "plain")).read_text()
