"""rg:<name>: reasoning-gym datasets as tasks: splits, its own scorer as the verifier, options, safety."""

from __future__ import annotations

import math
import pickle
import random
import re
import sys
import time
from collections import Counter
from fractions import Fraction

import pytest

pytest.importorskip("reasoning_gym")

from entrolab.rewards import RewardPool
from entrolab.tasks import FORMAT_ERROR, RIGHT, WRONG, Example
from entrolab.tasks.rg import (
    ReasoningGymTask,
    RGConfig,
    dataset_names,
    entry_from_json,
    entry_to_json,
    list_tasks,
    make_rg_task,
    rg_config,
    verify_rg,
)

BA = make_rg_task("basic_arithmetic", seed=0, train_size=300, test_size=64)
CD = make_rg_task("countdown", seed=0, train_size=100, test_size=32)
TASKS = pytest.mark.parametrize("task", [BA, CD], ids=["basic_arithmetic", "countdown"])


def small(name: str, **options) -> ReasoningGymTask:
    return make_rg_task(name, seed=0, train_size=4, test_size=2, **options)


# ---- splits ---------------------------------------------------------------------------------------------


@TASKS
def test_splits_are_disjoint_deterministic_and_seeded(task) -> None:
    cfg = task.config
    train, test = {e.prompt for e in task.train}, {e.prompt for e in task.test}
    assert (len(task.train), len(task.test)) == (len(train), len(test)) == (cfg.train_size, cfg.test_size)
    assert not train & test
    assert len({e.id for e in (*task.train, *task.test)}) == cfg.train_size + cfg.test_size
    again = ReasoningGymTask(cfg, seed=0)
    assert (again.train, again.test) == (task.train, task.test)
    other = ReasoningGymTask(cfg, seed=1)
    # nearby seeds share almost nothing (reasoning-gym draws item i from Random(seed + i); entrolab hashes seeds)
    assert len(train & {e.prompt for e in other.train}) < cfg.train_size // 10
    assert task.name == f"rg:{cfg.dataset}" and task.references


def test_prompt_is_the_question_and_the_answer_instruction() -> None:
    ex = BA.test[0]
    question = entry_from_json(ex.get("entry"))["question"]
    assert (
        BA.prompt(ex)
        == ex.prompt
        == f"{question}\n\nEnd your response with answer: followed by your final answer, and nothing after it.\n"
    )


# ---- the verifier ---------------------------------------------------------------------------------------


@TASKS
def test_reference_is_right_another_answer_wrong_no_tag_format_error(task) -> None:
    for ex in task.test:
        assert task.verify(f"some work\nanswer: {ex.answer}", ex) == RIGHT
        assert task.verify(f"answer: 9\nanswer: {ex.answer}  \n", ex) == RIGHT  # the last answer: counts
        assert task.verify(ex.answer, ex) == FORMAT_ERROR
        assert task.verify("answer:   ", ex) == FORMAT_ERROR
    wrong = Counter()
    for ex, other in zip(task.test, task.test[1:], strict=False):
        verdict = task.verify(f"answer: {other.answer}", ex)
        wrong[verdict.reason] += 1
        assert verdict.score < 1
    assert wrong["wrong"] >= len(task.test) - 2  # two problems may share an answer


def test_partial_credit_is_the_scorers_fraction() -> None:
    ex = BA.test[0]  # the default scorer: len(reference) / len(answer) when the answer contains the reference
    verdict = BA.verify(f"answer: {ex.answer}x", ex)
    assert verdict.reason == "wrong" and verdict.score == pytest.approx(len(ex.answer) / (len(ex.answer) + 1))
    for ex in CD.test:  # countdown: 0.05 for an expression over the right numbers with the wrong value
        metadata = entry_from_json(ex.get("entry"))["metadata"]
        numbers = metadata["numbers"]
        if sum(numbers) != metadata["target"]:
            assert CD.verify(f"answer: {' + '.join(map(str, numbers))}", ex).score == pytest.approx(0.05)
        assert CD.verify("answer: 1 + 1", ex).score == pytest.approx(0.05)
        assert CD.verify("answer: 1 +", ex).score == pytest.approx(0.01)  # sympy cannot parse it
        assert CD.verify("answer: hello", ex) == FORMAT_ERROR  # not arithmetic: never reaches sympy
    strict = RGConfig("countdown", partial_credit=False)
    assert verify_rg("answer: 1 + 1", CD.test[0], strict) == WRONG
    assert verify_rg(f"answer: {CD.test[0].answer}", CD.test[0], strict) == RIGHT


def test_scorer_exception_is_a_format_error() -> None:
    task = small("prime_factorization")
    ex = task.test[0]
    assert task.verify("answer: two", ex) == FORMAT_ERROR  # its scorer calls int("two")
    assert task.verify(f"answer: {ex.answer}", ex) == RIGHT


def test_extract_answer_is_the_stripped_final_answer() -> None:
    assert [BA.extract_answer(c) for c in ("x\nanswer:  -12 \n", "answer: 1\nanswer: 2", "12", "answer: ")] == [
        "-12",
        "2",
        None,
        None,
    ]


def test_verifier_pickles_and_scores_the_same_in_forkserver_workers() -> None:
    cfg = pickle.loads(pickle.dumps(CD.config))
    assert cfg == CD.config
    completions, examples = [], []
    for i, ex in enumerate(CD.test):
        completions += [f"answer: {ex.answer}", f"answer: {CD.test[i - 1].answer}", "no tag", "answer: 1 + 1"]
        examples += [ex] * 4
    here = [CD.verify(c, e) for c, e in zip(completions, examples, strict=True)]
    with RewardPool(CD.verify, workers=2, timeout=60.0) as pool:
        scores = pool.score(completions, examples)
    assert scores.reward.tolist() == pytest.approx([v.score for v in here])
    assert scores.right.tolist() == [v.reason == "right" for v in here]
    assert scores.format_error.tolist() == [v.reason == "format_error" for v in here]


# ---- entries --------------------------------------------------------------------------------------------


def test_entries_round_trip_with_their_types() -> None:
    entry = {"a": (1, (2, 3)), "b": {1: "x", (0, 1): [Fraction(1, 3)]}, "c": {"__tuple__": 1}, "d": {4, 5}}
    back = entry_from_json(entry_to_json(entry))
    assert back == entry and type(back["a"]) is tuple and type(back["a"][1]) is tuple and back["b"][1] == "x"
    assert type(back["b"][(0, 1)][0]) is Fraction and back["c"] == {"__tuple__": 1} and back["d"] == {4, 5}
    with pytest.raises(TypeError, match="a value of type type"):
        entry_to_json({"x": object})


@pytest.mark.parametrize("name", ["arc_agi", "gsm_symbolic", "graph_color", "knights_knaves", "codeio"])
def test_datasets_with_tuples_fractions_and_int_keys_keep_them(name: str) -> None:
    import reasoning_gym

    ds = reasoning_gym.create_dataset(name, seed=3, size=3)
    for i in range(3):
        assert entry_from_json(entry_to_json(ds[i])) == ds[i]
    task = small(name)
    if task.references:  # arc_agi: plain JSON turns its tuple grids into lists and the reference scores 0.05
        assert all(task.verify(f"answer: {e.answer}", e) == RIGHT for e in task.test)
    else:  # graph_color checks a colouring; there is no reference answer
        assert name == "graph_color" and all(e.answer == "" for e in task.train)
        with pytest.raises(ValueError, match="rg:graph_color has no reference answers"):
            task.demonstration(task.train[0], random.Random(0))


# ---- safety: scorers that evaluate the answer -----------------------------------------------------------

EVALUATING = [
    "binary_matrix",
    "n_queens",
    "spiral_matrix",
    "string_insertion",
    "countdown",
    "puzzle24",
    "polynomial_multiplication",
    "simple_integration",
    "intermediate_integration",
]


@pytest.mark.parametrize("name", EVALUATING)
def test_an_answer_never_runs_code(name: str, tmp_path) -> None:
    task = small(name)
    ex = task.test[0]
    for k, payload in enumerate(
        [
            "__import__('os').system('touch {}')",
            "(lambda: __import__('os').system('touch {}'))()",
            "[__import__('pathlib').Path('{}').touch()]",
        ]
    ):
        marker = tmp_path / f"pwned{k}"
        verdict = task.verify(f"answer: {payload.format(marker)}", ex)
        assert not marker.exists(), (name, payload)
        assert verdict.score < 1
    assert task.verify(f"answer: {ex.answer}", ex) == RIGHT


def test_list_literal_partial_credit_survives_the_safe_eval() -> None:
    task = small("spiral_matrix")  # 0.1 for the answer written as a Python list
    ex = task.test[0]
    as_list = "[" + ", ".join(ex.answer.split()) + "]"
    assert task.verify(f"answer: {as_list}", ex).score == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["countdown", "polynomial_multiplication"])
def test_power_towers_are_format_errors_not_hangs(name: str) -> None:
    task = CD if name == "countdown" else small(name)
    ex = task.test[0]
    t0 = time.perf_counter()
    for tower in ("9**9**9", "9**(9**9)", "((9**99)**99)**99", "N(pi, 1000000)"):
        assert task.verify(f"answer: {tower}", ex) == FORMAT_ERROR, tower
    assert time.perf_counter() - t0 < 1.0


def test_scorer_prints_are_silenced(capsys) -> None:
    task = small("tower_of_hanoi")
    capsys.readouterr()
    assert task.verify("answer: Move disk 1 from Peg 9 to Peg 8", task.test[0]).score < 1
    assert capsys.readouterr().out == ""


# ---- options and errors ---------------------------------------------------------------------------------


def test_string_options_reach_the_generator() -> None:
    task = make_rg_task(
        "basic_arithmetic",
        seed=0,
        train_size=50,
        test_size=10,
        min_terms="2",
        max_terms="2",
        operators="+",
        format_style="natural",
        allow_negation="false",
        allow_parentheses="false",
    )
    assert dict(task.config.options)["operators"] == ("+",) and dict(task.config.options)["min_terms"] == 2
    for ex in (*task.train, *task.test):
        shape = r"(?:What is|Solve|Compute|Evaluate:) (\d+) \+ (\d+)[.?]"  # not the default "Calculate 3 - -4."
        a, b = map(int, re.fullmatch(shape, ex.prompt.splitlines()[0]).groups())
        assert ex.answer == str(a + b)
        assert task.verify(f"answer: {a + b}", ex) == RIGHT


def test_rg_config_splits_own_fields_from_generator_options() -> None:
    cfg = rg_config("countdown", train_size=10, demo_mix=[0.5, 0.5, 0.0], min_numbers=3, max_numbers="3")
    assert (cfg.train_size, cfg.demo_mix) == (10, (0.5, 0.5, 0.0))
    assert cfg.options == (("min_numbers", 3), ("max_numbers", 3))
    assert dict(rg_config("basic_arithmetic", format_style="natural", max_terms=3.0).options) == {
        "format_style": "natural",
        "max_terms": 3.0,
    }
    assert dict(rg_config("calendar_arithmetic", year="2024").options) == {"year": 2024}
    assert dict(rg_config("basic_arithmetic", format_style=7).options) == {"format_style": "7"}
    cli = rg_config("countdown", train_size="10", partial_credit="false", demo_mix="0.5,0.25,0.25")
    assert (cli.train_size, cli.partial_credit, cli.demo_mix) == (10, False, (0.5, 0.25, 0.25))


def test_unknown_dataset_lists_the_names() -> None:
    with pytest.raises(ValueError, match=r"unknown reasoning-gym dataset 'nope'; known: ab, acre, .*basic_arithmetic"):
        RGConfig("nope")
    assert "composite" not in dataset_names() and "sokoban" in dataset_names() and len(dataset_names()) > 100
    with pytest.raises(ValueError, match="'composite' is not supported"):
        RGConfig("composite")


def test_unknown_reserved_and_invalid_options_are_one_line_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown option 'max_term' for reasoning-gym dataset 'basic_arithmetic'"
    ) as e:
        rg_config("basic_arithmetic", max_term=3)
    assert "allowed: ['allow_negation', 'allow_parentheses', 'format_style', 'max_digits', 'max_terms'," in str(e.value)
    assert "'seed'" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="option 'seed' is set by entrolab"):
        rg_config("basic_arithmetic", seed=3)
    with pytest.raises(ValueError, match=r"rg:basic_arithmetic: invalid options \{'min_terms': 0\}: min_terms must be"):
        rg_config("basic_arithmetic", min_terms="0")
    with pytest.raises(ValueError, match=r"option allow_negation='maybe': expected true/false"):
        rg_config("basic_arithmetic", allow_negation="maybe")
    with pytest.raises(ValueError, match="train_size and test_size must be >= 1"):
        rg_config("basic_arithmetic", test_size=0)


def test_missing_reasoning_gym_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ValueError, match=r"need the reasoning-gym package: pip install 'entrolab\[rg\]'"):
        RGConfig("basic_arithmetic")


# ---- demonstrations and the catalogue -------------------------------------------------------------------


@TASKS
def test_demonstrations_follow_the_mix_and_verify_as_their_kind(task) -> None:
    from entrolab.tasks.rg import rg_demonstration

    rng, total = random.Random(5), 3000
    examples = [task.train[i % len(task.train)] for i in range(total)]
    reasons = Counter(task.verify(task.demonstration(ex, rng), ex).reason for ex in examples)
    for kind, want in zip(("right", "wrong", "format_error"), task.config.demo_mix, strict=True):
        assert abs(reasons[kind] / total - want) < 0.03, reasons
    for kind in ("right", "wrong", "format_error"):
        for ex in task.train[:100]:
            assert task.verify(rg_demonstration(ex, kind, rng, task), ex).reason == kind


def test_list_tasks_names_and_describes_every_dataset() -> None:
    rows = dict(list_tasks())
    assert list(rows) == [f"rg:{n}" for n in dataset_names()]
    assert rows["rg:basic_arithmetic"] == "Dataset that generates basic arithmetic tasks with configurable complexity"
    assert rows["rg:countdown"] == "Generates Countdown Number Game tasks"
    assert all(d and "\n" not in d and not re.match(r"\w+Config\(", d) for d in rows.values())
    assert rows["rg:puzzle24"] == "reasoning-gym procedural dataset"  # no docstring of its own


def test_example_stays_hashable_and_picklable() -> None:
    ex = CD.test[0]
    assert isinstance(ex, Example) and hash(ex) == hash(pickle.loads(pickle.dumps(ex)))
    assert not math.isnan(CD.verify("answer: 1/0", ex).score)
