"""Tasks: verifiers on hand-written completions, robustness on arbitrary text, splits, demonstrations."""

from __future__ import annotations

import ast
import json
import pickle
import random
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrolab.tasks import CHARSET, REASONS, TASKS, Example, Verdict, make_task
from entrolab.tasks.arithmetic import (
    ArithmeticConfig,
    arithmetic_demonstration,
    extract_arithmetic,
    verify_arithmetic,
)
from entrolab.tasks.countdown import (
    MAX_ANSWER_CHARS,
    CountdownConfig,
    countdown_demonstration,
    extract_countdown,
    parse_expression,
    verify_countdown,
)
from entrolab.tasks.jsonl import extract_jsonl, jsonl_demonstration, verify_jsonl

ARITH = make_task("arithmetic", seed=0)
COUNT = make_task("countdown", seed=0)
CD_EX = Example(
    id="countdown:3 7 8:29",
    prompt="use 3 7 8 to make 29\n",
    answer="29",
    data=(("numbers", (3, 7, 8)), ("target", 29)),
)
AR_EX = Example("arithmetic:3+7-5", "3+7-5=?\n", "5", (("operands", (3, 7, 5)), ("operators", ("+", "-"))))
JS_EX = Example("jsonl:1", "q\n", "0.25")


def write_jsonl(tmp_path: Path, rows: list[dict] | list[str], name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


# ---- robustness: any text, never raises -------------------------------------------------------------------

ANSWERISH = st.one_of(
    st.text(),
    st.builds(lambda a, b: a + "answer:" + b, st.text(max_size=20), st.text()),
    st.builds(lambda b: "answer: " + b, st.text(alphabet="0123456789+-*/() .", max_size=300)),
    st.integers(0, 3000).map(lambda n: "answer: " + "(" * n + "3" + ")" * n),
    st.integers(0, 3000).map(lambda n: "answer: " + "-" * n + "8"),
    st.integers(0, 3000).map(lambda n: "answer: " + "(" * n),
    st.integers(1, 6000).map(lambda n: "answer: " + "9" * n),
)


@settings(max_examples=300, deadline=None)
@given(ANSWERISH)
def test_verifiers_never_raise(text: str) -> None:
    verdicts = [
        verify_arithmetic(text, AR_EX),
        verify_countdown(text, CD_EX),
        verify_jsonl(text, JS_EX, "exact"),
        verify_jsonl(text, JS_EX, "numeric"),
    ]
    for v in verdicts:
        assert isinstance(v, Verdict)
        assert 0.0 <= v.score <= 1.0
        assert v.reason in REASONS
        assert (v.score == 1.0) == (v.reason == "right")
    for out in (
        extract_arithmetic(text),
        extract_countdown(text),
        extract_countdown(text, CD_EX),
        extract_jsonl(text, "exact"),
        extract_jsonl(text, "numeric"),
    ):
        assert out is None or isinstance(out, str)


def test_deep_nesting_is_a_format_error_not_a_recursion_error() -> None:
    deep = "answer: " + "(" * 100_000 + "3" + ")" * 100_000
    assert verify_countdown(deep, CD_EX).reason == "format_error"
    assert verify_countdown("answer: " + "(" * 39 + "7*3+8" + ")" * 39, CD_EX).reason == "right"  # depth 39
    assert verify_countdown("answer: " + "(" * 50 + "7*3+8" + ")" * 50, CD_EX).reason == "format_error"
    assert verify_countdown("answer: " + "1+" * MAX_ANSWER_CHARS + "1", CD_EX).reason == "format_error"
    assert verify_arithmetic("answer: " + "9" * 5000, AR_EX).reason == "format_error"  # int() limit


# ---- closed-form verifier cases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("3+7=10\n10-5=5\nanswer: 5", "right"),
        ("answer:5", "right"),
        ("answer:   5  \n", "right"),
        ("answer: 4\nanswer: 5", "right"),  # the last answer counts
        ("answer: 5\nanswer: 4", "wrong"),
        ("answer: -5", "wrong"),
        ("answer: 005", "right"),
        ("answer: 5.0", "format_error"),
        ("answer: +5", "format_error"),
        ("answer: five", "format_error"),
        ("answer: 10-5", "format_error"),
        ("answer: ", "format_error"),
        ("3+7=10\n10-5=5", "format_error"),
        ("Answer: 5", "format_error"),
        ("", "format_error"),
    ],
)
def test_arithmetic_verifier(completion: str, reason: str) -> None:
    assert verify_arithmetic(completion, AR_EX).reason == reason


def test_arithmetic_negative_answer_and_precedence() -> None:
    task = make_task("arithmetic", operators=("+", "-", "*"), n_operands=(2, 3), test_size=16)
    ex = next(e for e in [*task.train, *task.test] if e.prompt == "9-3*4=?\n")
    assert ex.answer == "-3"
    assert arithmetic_demonstration(ex, "right", random.Random(0)) == "3*4=12\n9-12=-3\nanswer: -3"
    assert verify_arithmetic("answer: -3", ex).reason == "right"
    assert verify_arithmetic("answer: 24", ex).reason == "wrong"  # left to right, ignoring precedence
    four = Example("a", "2+3*4-9=?\n", "5", (("operands", (2, 3, 4, 9)), ("operators", ("+", "*", "-"))))
    assert arithmetic_demonstration(four, "right", random.Random(0)) == "3*4=12\n2+12=14\n14-9=5\nanswer: 5"
    assert extract_arithmetic("x\nanswer: -08 ") == "-8"
    assert extract_arithmetic("answer: 8 apples") is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("7*3+8", "right"),
        ("8+3*7", "right"),
        ("( 7 * 3 ) + 8", "right"),  # whitespace and parentheses
        ("((7))*(3)+(8)", "right"),
        ("8-(-3*7)", "right"),  # unary minus
        ("(8*7+2)/2", "wrong"),  # 2 is not given
        ("(8-2)/3*7+8", "wrong"),  # 2 is not given (and 8 twice)
        ("7*3+8+0", "wrong"),  # 0 is not given
        ("7*8-3*9", "wrong"),  # 9 is not given
        ("7*3+8-8+8", "wrong"),  # 8 reused: value 29 but illegal
        ("3*8", "wrong"),  # legal, value 24
        ("8/(7-7)", "wrong"),  # division by zero (7 also reused)
        ("7*3+8=29", "format_error"),
        ("7*3+", "format_error"),
        ("(7*3+8", "format_error"),
        ("7*3)+8", "format_error"),
        ("7x3+8", "format_error"),
        ("7**3", "format_error"),
        ("", "format_error"),
    ],
)
def test_countdown_verifier(answer: str, reason: str) -> None:
    assert verify_countdown(f"7*3=21\n21+8=29\nanswer: {answer}", CD_EX).reason == reason


def test_countdown_exact_fractions() -> None:
    ex = Example("c", "use 2 3 8 to make 2\n", "2", (("numbers", (2, 3, 8)), ("target", 2)))
    assert parse_expression("(8-2)/3") == (Fraction(2), (8, 2, 3))
    assert verify_countdown("answer: (8-2)/3", ex).reason == "right"  # exact 6/3, not float 1.999...
    assert parse_expression("8/3") == (Fraction(8, 3), (8, 3))
    assert verify_countdown("answer: 8/3*3", ex).reason == "wrong"  # 3 used twice
    ex2 = Example("c", "use 3 3 8 to make 8\n", "8", (("numbers", (3, 3, 8)), ("target", 8)))
    assert verify_countdown("answer: 8/3*3", ex2).reason == "right"  # (8/3)*3 == 8 exactly
    assert verify_countdown("answer: 8/(3-3)", ex2).reason == "wrong"  # legal numbers, division by zero
    assert parse_expression("(3-3)/8") == (Fraction(0), (3, 3, 8))  # dividing zero is fine
    assert parse_expression("1/(3-3)") == (None, (1, 3, 3))
    assert parse_expression("3-") is None


def test_countdown_extract_answer_groups_by_value() -> None:
    assert extract_countdown("answer: 7*3+8", CD_EX) == "29"
    assert extract_countdown("answer: 8 + 7*3", CD_EX) == "29"
    assert extract_countdown("answer: 8/3", CD_EX) == "8/3"
    assert extract_countdown("answer: 29", CD_EX) == "illegal:29"  # 29 is not a given number
    assert extract_countdown("answer: 29") == "29"  # without the example, legality is unknown
    assert extract_countdown("answer: 8 / (3 - 3)", CD_EX) == "illegal:8/(3-3)"
    assert extract_countdown("answer: 7*") is None
    assert COUNT.extract_answer("answer: 3*8", CD_EX) == "24"


@pytest.mark.parametrize(
    ("completion", "exact", "numeric"),
    [
        ("answer: 0.25", "right", "right"),
        ("answer: .25", "wrong", "right"),
        ("answer: 2.5e-1", "wrong", "right"),
        ("answer: 0.2500001", "wrong", "right"),  # within rel. tol 1e-6
        ("answer: 0.2501", "wrong", "wrong"),
        ("answer: a quarter", "wrong", "format_error"),
        ("answer: nan", "wrong", "format_error"),
        ("answer: ", "format_error", "format_error"),
        ("0.25", "format_error", "format_error"),
    ],
)
def test_jsonl_verifier(completion: str, exact: str, numeric: str) -> None:
    assert verify_jsonl(completion, JS_EX, "exact").reason == exact
    assert verify_jsonl(completion, JS_EX, "numeric").reason == numeric


# ---- splits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_splits_disjoint_deterministic_seeded(name: str) -> None:
    a, b, c = make_task(name, seed=0), make_task(name, seed=0), make_task(name, seed=1)
    assert len(a.test) == 128
    assert {e.prompt for e in a.train}.isdisjoint(e.prompt for e in a.test)
    assert len({e.prompt for e in a.train}) == len(a.train)
    assert len({e.id for e in [*a.train, *a.test]}) == len(a.train) + len(a.test)
    assert a.train == b.train and a.test == b.test
    assert len(set(a.test) & set(c.test)) < 32  # a different seed gives a different test set
    assert set(a.train) | set(a.test) == set(c.train) | set(c.test)  # drawn from the same pool


def test_split_sizes() -> None:
    assert (len(ARITH.train), len(ARITH.test)) == (10**3 * 2**2 - 128, 128)  # every 3-operand +/- problem
    small = make_task("arithmetic", test_size=50, max_train=300)
    assert (len(small.train), len(small.test)) == (300, 50)
    assert len(COUNT.train) > 2000
    big = make_task("countdown", n_numbers=4, values=(1, 20), target_terms=(2, 4), max_train=5000)
    assert (len(big.train), len(big.test)) == (5000, 128)  # sampled, not enumerated


def test_countdown_targets_are_reachable_positive_integers() -> None:
    for ex in COUNT.test:
        numbers, target = ex.get("numbers"), ex.get("target")
        assert ex.answer == str(target) and target > 0
        assert list(numbers) == sorted(numbers) and len(numbers) == 3
        assert ex.prompt == f"use {' '.join(map(str, numbers))} to make {target}\n"
        assert verify_countdown(countdown_demonstration(ex, "right", random.Random(0), COUNT.config), ex).score == 1


# ---- demonstrations --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [ARITH, COUNT], ids=["arithmetic", "countdown"])
def test_demo_mix_matches_config(task) -> None:
    rng, n = random.Random(123), 3000
    reasons = Counter()
    for i in range(n):
        ex = task.train[i % len(task.train)]
        demo = task.demonstration(ex, rng)
        assert set(demo) <= CHARSET and set(ex.prompt) <= CHARSET
        reasons[task.verify(demo, ex).reason] += 1
    measured = tuple(reasons[r] / n for r in ("right", "wrong", "format_error"))
    for got, want in zip(measured, task.config.demo_mix, strict=True):
        assert abs(got - want) < 0.03, (measured, task.config.demo_mix)


@pytest.mark.parametrize("kind", ["right", "wrong", "format_error"])
def test_each_demonstration_verifies_as_its_kind(kind: str) -> None:
    rng = random.Random(7)
    mult = make_task("arithmetic", operators=("+", "-", "*"), n_operands=(2, 4), max_train=2000)
    for ex in [*ARITH.train[:1500], *mult.train[:1500]]:
        demo = arithmetic_demonstration(ex, kind, rng)
        assert verify_arithmetic(demo, ex).reason == kind, (ex.prompt, demo)
    for ex in COUNT.train:
        demo = countdown_demonstration(ex, kind, rng, COUNT.config)
        assert verify_countdown(demo, ex).reason == kind, (ex.prompt, demo)


def test_demonstrations_look_like_the_format() -> None:
    rng = random.Random(0)
    right = arithmetic_demonstration(AR_EX, "right", rng)
    assert right == "3+7=10\n10-5=5\nanswer: 5"
    wrongs = {arithmetic_demonstration(AR_EX, "wrong", rng) for _ in range(200)}
    # one step off by +-1 or +-2, carried on: 3+7=8..12 then -5, or 10-5=3..7
    assert "3+7=11\n11-5=6\nanswer: 6" in wrongs and "3+7=10\n10-5=3\nanswer: 3" in wrongs
    assert all(w.endswith(("answer: 3", "answer: 4", "answer: 6", "answer: 7")) for w in wrongs)
    assert max(len(arithmetic_demonstration(e, "right", rng)) for e in ARITH.train) <= 27
    cd_rights = {countdown_demonstration(CD_EX, "right", rng, COUNT.config) for _ in range(200)}
    assert "3*7=21\n21+8=29\nanswer: 3*7+8" in cd_rights and "3*7=21\n8+21=29\nanswer: 8+3*7" in cd_rights
    assert max(len(countdown_demonstration(e, "right", rng, COUNT.config)) for e in COUNT.train) <= 31


def test_demonstration_is_driven_by_rng() -> None:
    ex = ARITH.train[0]
    first = [ARITH.demonstration(ex, random.Random(5)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = random.Random(5)
    assert len({ARITH.demonstration(ex, rng) for _ in range(50)}) > 3


# ---- jsonl -----------------------------------------------------------------------------------------------


def test_jsonl_task_exact(tmp_path: Path) -> None:
    rows = [{"prompt": f"capital of c{i}?\n", "answer": f"city{i}"} for i in range(20)]
    rows.append({"prompt": "capital of c0?\n", "answer": "dup"})  # repeated prompt: first line wins
    path = write_jsonl(tmp_path, [*rows[:10], "", *rows[10:]])  # a blank line is skipped
    task = make_task("jsonl", path=path, seed=3)
    assert (len(task.train), len(task.test)) == (16, 4)
    assert {e.prompt for e in task.train}.isdisjoint(e.prompt for e in task.test)
    assert make_task("jsonl", path=path, seed=3).test == task.test
    ex = next(e for e in [*task.train, *task.test] if e.prompt == "capital of c0?\n")
    assert ex.answer == "city0" and ex.id == "jsonl:1"
    assert task.verify("answer: city0", ex).reason == "right"
    assert task.verify("answer: City0", ex).reason == "wrong"
    assert task.extract_answer(" answer:  city0 ") == "city0"
    rng, reasons = random.Random(0), Counter()
    for i in range(4000):
        e = task.train[i % len(task.train)]
        reasons[task.verify(task.demonstration(e, rng), e).reason] += 1
    assert abs(reasons["right"] / 4000 - 0.35) < 0.03 and abs(reasons["wrong"] / 4000 - 0.45) < 0.03
    assert abs(reasons["format_error"] / 4000 - 0.20) < 0.03


def test_jsonl_task_numeric(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": f"{i}/4=?\n", "answer": i / 4} for i in range(10)])
    task = make_task("jsonl", path=path, match="numeric", test_fraction=0.3)
    assert (len(task.train), len(task.test)) == (7, 3)
    ex = next(e for e in [*task.train, *task.test] if e.prompt == "3/4=?\n")
    assert ex.answer == "0.75"
    assert [task.verify(c, ex).reason for c in ("answer: 0.75", "answer: 3e-1", "answer: x")] == [
        "right",
        "wrong",
        "format_error",
    ]
    assert task.extract_answer("answer: 7.5e-1") == "0.75"
    same = write_jsonl(tmp_path, [{"prompt": f"p{i}\n", "answer": 1} for i in range(5)], "same.jsonl")
    one = make_task("jsonl", path=same, match="numeric")  # every other answer equals this one
    rng = random.Random(0)
    for ex in one.train:
        assert one.verify(jsonl_demonstration(ex, "wrong", rng, one), ex).reason == "wrong"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": '], "data.jsonl:2: not valid JSON"),
        (['{"prompt": "a", "answer": "1"}', '["b", "2"]'], 'data.jsonl:2: expected an object with "prompt"'),
        (['{"prompt": "a"}'], 'data.jsonl:1: expected an object with "prompt" and "answer"'),
        (['{"prompt": "", "answer": "1"}'], 'data.jsonl:1: "prompt" must be a non-empty string'),
        (['{"prompt": "a", "answer": true}'], 'data.jsonl:1: "answer" must be a string or a number'),
        (['{"prompt": "a", "answer": "x answer: y"}'], 'data.jsonl:1: "answer" must be non-empty'),
        (['{"prompt": "caf\\u00e9", "answer": "1"}'], "data.jsonl:1: characters outside the tokenizer"),
        (['{"prompt": "a", "answer": "1"}'], "needs at least 2 distinct prompts"),
    ],
)
def test_jsonl_errors(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_jsonl(tmp_path, lines)
    with pytest.raises(ValueError, match=message):
        make_task("jsonl", path=path)


def test_jsonl_missing_file_and_numeric_answer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read .*nope\.jsonl"):
        make_task("jsonl", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="needs path="):
        make_task("jsonl")
    path = write_jsonl(tmp_path, ['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": "two"}'])
    with pytest.raises(ValueError, match=r"data\.jsonl:2: match=\"numeric\" but \"answer\" 'two'"):
        make_task("jsonl", path=path, match="numeric")


# ---- registry, configs, pickling -------------------------------------------------------------------------


def test_make_task_errors() -> None:
    assert TASKS == ("arithmetic", "countdown", "jsonl", "math")
    with pytest.raises(ValueError, match="unknown task 'sudoku'; known: arithmetic, countdown, jsonl, math"):
        make_task("sudoku")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_digits'\] for task 'arithmetic'; allowed: "):
        make_task("arithmetic", n_digits=3)
    assert make_task("arithmetic", n_operands=[2, 2], test_size=10).config.n_operands == (2, 2)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (
            ArithmeticConfig,
            {"n_operands": (1, 3)},
            r"n_operands must be .* 2 <= min <= max <= 8, got \(1, 3\)",
        ),
        (ArithmeticConfig, {"operators": ("+", "/")}, "operators must be drawn from"),
        (ArithmeticConfig, {"demo_mix": (0.5, 0.5, 0.5)}, r"demo_mix .* summing to 1, got \(0.5, 0.5, 0.5\)"),
        (ArithmeticConfig, {"test_size": 0}, "test_size and max_train must be >= 1, got 0"),
        (CountdownConfig, {"n_numbers": 9}, r"n_numbers must be an int in \[2, 6\], got 9"),
        (CountdownConfig, {"target_terms": (2, 4)}, r"target_terms must be .* <= 3, got \(2, 4\)"),
    ],
)
def test_config_validation(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_too_small_a_space_raises() -> None:
    with pytest.raises(ValueError, match="only 12 distinct problems for a test set of 128"):
        make_task("arithmetic", n_operands=(2, 2), values=(0, 1), operators=("+", "-", "*"))


def test_pickling(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": f"p{i}\n", "answer": str(i)} for i in range(5)])
    for task in (ARITH, COUNT, make_task("jsonl", path=path)):
        ex = task.test[0]
        verify = pickle.loads(pickle.dumps(task.verify))
        assert verify(f"answer: {ex.answer}", ex).reason == "right"
        clone = pickle.loads(pickle.dumps(task))
        assert clone.test == task.test and clone.train == task.train and clone.config == task.config
    assert pickle.loads(pickle.dumps(verify_countdown))("answer: 7*3+8", CD_EX).reason == "right"


def test_tasks_package_is_pure_python() -> None:
    """The tasks modules import only the standard library, entrolab.tasks itself and the optional verifier and
    data libraries (math-verify, reasoning-gym, datasets), never torch, numpy or transformers."""
    package = Path(verify_arithmetic.__code__.co_filename).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module if node.module.startswith("entrolab") else node.module.split(".")[0])
    optional = {"datasets", "math_verify", "reasoning_gym"}
    own = {"entrolab.tasks", "entrolab.tasks.files", "entrolab.tasks.rg"}
    assert imported - set(sys.stdlib_module_names) <= own | optional
    assert "entrolab.tasks" in imported and not imported & {"torch", "numpy", "transformers"}
