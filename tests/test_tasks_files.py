"""Local datasets (JSONL, JSON, Parquet, CSV, save_to_disk) and the math task with math-verify.

Needs the optional extras ``datasets`` and ``math`` (installed in CI); skipped where they are missing.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("math_verify")

from entrolab.evaluate import evaluate  # noqa: E402
from entrolab.rewards import RewardPool  # noqa: E402
from entrolab.tasks import Example, make_task  # noqa: E402
from entrolab.tasks.files import boxed_content, reference_answer  # noqa: E402
from entrolab.tasks.math_answers import extract_math, verify_math  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GSM = ROOT / "examples" / "data" / "gsm8k_tiny.jsonl"
ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"} for i in range(40)]


def _write(tmp_path: Path, kind: str) -> str:
    if kind == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "json":
        p = tmp_path / "d.json"
        p.write_text(json.dumps(ROWS))
    elif kind == "parquet":
        p = tmp_path / "d.parquet"
        datasets.Dataset.from_list(ROWS).to_parquet(str(p))
    elif kind == "csv":
        p = tmp_path / "d.csv"
        datasets.Dataset.from_list(ROWS).to_csv(str(p))
    else:
        p = tmp_path / "saved"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(p))
    return str(p)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "folder"])
def test_every_format_gives_the_same_seeded_split(tmp_path, kind):
    reference = make_task("math", path=_write(tmp_path, "jsonl"), seed=3)
    task = make_task("math", path=_write(tmp_path, kind), seed=3)
    assert [e.prompt for e in task.train] == [e.prompt for e in reference.train]
    assert [e.answer for e in task.test] == [e.answer for e in reference.test]
    assert len(task.test) == 8 and len(task.train) == 32  # test_fraction 0.2 of 40
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.test}
    other = make_task("math", path=_write(tmp_path, kind), seed=4)
    assert [e.prompt for e in other.test] != [e.prompt for e in task.test]


def test_datasetdict_splits_are_used_as_they_are_or_one_is_chosen(tmp_path):
    dd = datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS[:30]), test=datasets.Dataset.from_list(ROWS[30:]))
    dd.save_to_disk(str(tmp_path / "dd"))
    task = make_task("math", path=str(tmp_path / "dd"))
    assert len(task.train) == 30 and [e.answer for e in task.test] == [str(2 * i) for i in range(30, 40)]
    one = make_task("math", path=str(tmp_path / "dd"), split="train", test_fraction=0.5)
    assert len(one.train) == len(one.test) == 15
    with pytest.raises(ValueError, match=r"no split 'validation'; the splits are \['test', 'train'\]"):
        make_task("math", path=str(tmp_path / "dd"), split="validation")


def test_column_mapping_and_answer_extraction(tmp_path):
    rows = [{"problem": f"p{i}", "solution": f"so \\boxed{{\\frac{{{i}}}{{2}}}}", "id": i} for i in range(10)]
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task("math", path=str(p))
    assert {e.answer for e in task.train} <= {f"\\frac{{{i}}}{{2}}" for i in range(10)}
    renamed = make_task("jsonl", path=str(p), prompt_field="solution", answer_field="problem")
    assert {e.answer for e in renamed.test} <= {f"p{i}" for i in range(10)}
    with pytest.raises(
        ValueError, match=r"no column 'q' for the prompt; the columns are \['id', 'problem', 'solution'\]"
    ):
        make_task("math", path=str(p), prompt_field="q")
    with pytest.raises(ValueError, match=r"'id' must be a non-empty string, got 0"):
        make_task("jsonl", path=str(p), prompt_field="id")
    assert reference_answer("steps\n#### 1,234") == "1234"
    assert boxed_content("a \\boxed{\\{1, \\frac{2}{3}\\}} b") == "\\{1, \\frac{2}{3}\\}"
    assert reference_answer(" 7 ") == "7"


def test_bad_inputs_are_one_line_errors_naming_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"'openai/gsm8k' is not a local file .* never downloads: download it first"):
        make_task("math", path="openai/gsm8k")
    with pytest.raises(ValueError, match=r"task file '.*missing\.jsonl' does not exist"):
        make_task("math", path=str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"unknown format '\.txt'; allowed: \.jsonl, \.json, \.parquet, \.csv"):
        make_task("math", path=str(tmp_path / "x.txt"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="the split is empty"):
        make_task("math", path=str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match=r"none of the default answer columns"):
        (tmp_path / "noans.jsonl").write_text('{"question": "a", "x": 1}\n{"question": "b", "x": 2}\n')
        make_task("math", path=str(tmp_path / "noans.jsonl"))


MATH_CASES = [
    ("42", "answer: 42", "right"),
    ("42", "we get \\boxed{42}.", "right"),
    ("42", "answer: 41", "wrong"),
    ("42", "42", "format_error"),  # no answer line, no boxed: not read from loose text
    ("42", "answer:", "format_error"),
    ("\\frac{1}{2}", "answer: 0.5", "right"),
    ("\\frac{1}{2}", "answer: 1/2", "right"),
    ("[1,2)", "answer: [1,2)", "right"),
    ("[1,2)", "answer: (1,2)", "wrong"),
    ("\\{1,2\\}", "answer: \\{2,1\\}", "right"),
    ("3\\sqrt{2}", "answer: \\sqrt{18}", "right"),
    ("x^2+1", "answer: 1+x^2", "right"),
]


@pytest.mark.parametrize(("ref", "completion", "reason"), MATH_CASES)
def test_math_verify_verdicts(ref, completion, reason):
    assert verify_math(completion, Example("m:1", "q", ref)).reason == reason


def test_math_extraction_reads_equal_answers_alike():
    assert extract_math("answer: 1/2") == extract_math("answer: \\frac{1}{2}")
    assert extract_math("nothing") is None


def test_a_pathological_answer_times_out_in_the_pool_and_is_reported():
    ex = Example("m:1", "q", "42")
    completions = ["answer: 42", "answer: 9^{9^{9^{9}}}", "answer: 41"]
    with RewardPool(verify_math, workers=2, timeout=2.0, on_error="skip") as pool:
        scores = pool.score(completions, [ex, ex, ex])
    assert scores.right.tolist() == [True, False, False]
    assert scores.timed_out.tolist() == [False, True, False] and scores.errored.tolist() == [False, True, False]
    assert "time" in scores.messages[1].lower()
    with RewardPool(verify_math, workers=1, timeout=2.0, on_error="raise") as pool, pytest.raises(Exception) as e:
        pool.score(completions[1:2], [ex])
    assert "m:1" in str(e.value)  # names the example: never a silent 0


def test_the_math_task_pickles_for_worker_processes():
    task = make_task("math", path=str(GSM))
    again = pickle.loads(pickle.dumps(task.verify))
    ex = task.test[0]
    assert again(f"answer: {ex.answer}", ex).reason == "right"


def test_evaluation_of_a_math_task_counts_verifier_errors(tiny):
    model, tok = tiny
    task = make_task("math", path=str(GSM))
    ev = evaluate(model, tok, task, samples=2, limit=3, max_new_tokens=8, verify_timeout=30)
    assert ev["verify_errors"] == 0.0 and ev["n_prompts"] == 3.0 and 0 <= ev["format_error_rate"] <= 1
