"""``rg:<name>``: any procedural dataset of reasoning-gym, scored by reasoning-gym's own ``score_answer``.

``pip install 'entrolab[rg]'``. ``make_rg_task("countdown", seed=0, min_numbers=3)`` (or ``make_task("rg:countdown",
...)``): the options that are fields of :class:`RGConfig` set it, every other one is a field of the dataset's own
config dataclass (``--task-option key=value``; a string value is converted to the type of the field's default).

Splits: one pool of ``train_size + test_size`` problems from reasoning-gym seeds derived from (dataset, seed),
deduplicated by prompt and split by :func:`split_examples`, so train and test are disjoint and the same for a
seed. A dataset with few distinct problems gives a shorter train split.

Each :class:`Example` keeps the whole reasoning-gym entry (question, answer, metadata) as a JSON string in
``data["entry"]``, with tuples, non-string dict keys, sets and fractions tagged so that the entry the scorer
sees is equal to the one the generator made (plain JSON turns tuples into lists, and arc_agi's scorer then
compares a list grid with a tuple grid and gives 0.05 for the reference answer).

The verifier reads the text after the last ``answer:``; none (or nothing after it) is a ``format_error``.
Otherwise the score is ``score_answer(answer, entry)`` on a dataset instance built once per process with the
task's options: 1 is ``right``, anything lower ``wrong`` with the score kept as partial credit (or 0 with
``partial_credit=False``). An exception in the scorer, or a non-numeric score, is a ``format_error``: it is
the completion's answer that the scorer could not read (prime_factorization's ``int("abc")``).

Safety: some reasoning-gym scorers evaluate the answer as code. Four (binary_matrix, n_queens, spiral_matrix,
string_insertion) call ``eval(answer)`` for partial credit; here that module's ``eval`` is replaced with
``ast.literal_eval`` (the partial credit for a Python list literal stays). Five (countdown, puzzle24,
polynomial_multiplication, simple_integration, intermediate_integration) call sympy's ``parse_expr``, which
evaluates Python and computes ``9**9**9`` exactly (it never returns); their answers must be arithmetic over
numbers, single-letter symbols and a list of math functions, with no ``**`` inside an exponent and numeric
exponents of at most 100 (countdown and puzzle24 allow no ``**`` at all: their operators are + - * /), or they
are a ``format_error``. Scorers are also run with stdout silenced (tower_of_hanoi prints on every bad move).

Demonstrations: right: ``answer: <reference>``; wrong: another train example's answer that scores below 1;
format_error: the reference without the tag. Datasets without a reference answer (boxnet, graph_color,
propositional_logic, rubiks_cube, rush_hour: their scorer checks a solution) have no demonstrations.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import random
import sys
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from entrolab.tasks import (
    ANSWER_TAG,
    FORMAT_ERROR,
    RIGHT,
    WRONG,
    Example,
    Reason,
    Verdict,
    check_demo_mix,
    draw_demo_kind,
    final_answer,
    split_examples,
)

INSTALL_HINT = "pip install 'entrolab[rg]'"
UNSUPPORTED: dict[str, str] = {"composite": "it mixes other datasets from a list of specs; build those one by one"}
RESERVED_OPTIONS = ("seed", "size")
"""reasoning-gym config fields that entrolab sets itself (from the task seed, train_size and test_size)."""
DEFAULT_DESCRIPTION = "reasoning-gym procedural dataset"
_GROW_ROUNDS = 8  # extra generator rounds when duplicates leave the pool short
_MAX_EXPRESSION_CHARS = 1000
_MAX_EXPONENT = 100
_MAX_POWER_NESTING = 2  # (x**2)**3 is fine, ((9**99)**99)**99 is not
_NO_POWER = frozenset({"countdown", "puzzle24"})
_EXPRESSION_SCORED = frozenset(
    {"countdown", "puzzle24", "polynomial_multiplication", "simple_integration", "intermediate_integration"}
)
_MATH_NAMES = frozenset(
    "sin cos tan cot sec csc asin acos atan acot sinh cosh tanh asinh acosh atanh exp log ln sqrt pi oo "
    "Abs abs Integral".split()
)
_SAFE_OPS = frozenset({"(", ")", "+", "-", "*", "/", "**", "^", ","})
_TAGS = ("__tuple__", "__set__", "__frozenset__", "__fraction__", "__complex__", "__dict__")


def _rg() -> Any:
    """The reasoning_gym module; without it a ValueError (the CLI's one-line error) names the extra to install."""
    try:
        import reasoning_gym
    except ImportError as e:
        raise ValueError(f"rg:<dataset> tasks need the reasoning-gym package: {INSTALL_HINT}") from e
    return reasoning_gym


def _registry() -> dict[str, tuple[type, type]]:
    """reasoning-gym's name -> (dataset class, config dataclass), as ``register_dataset`` filled it."""
    return _rg().factory.DATASETS


def dataset_names() -> list[str]:
    """The reasoning-gym datasets ``rg:<name>`` accepts, sorted."""
    return sorted(set(_registry()) - set(UNSUPPORTED))


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def list_tasks() -> list[tuple[str, str]]:
    """``(f"rg:{name}", one-line description)`` for every supported reasoning-gym dataset, sorted by name.

    The description is the first line of the dataset class's docstring, else of its config's (unless that is
    the signature dataclasses writes), else ``"reasoning-gym procedural dataset"``.
    """
    out = []
    for name in dataset_names():
        dataset_cls, config_cls = _registry()[name]
        config_doc = _first_line(config_cls.__doc__)
        if config_doc.startswith(f"{config_cls.__name__}("):
            config_doc = ""
        out.append((f"rg:{name}", _first_line(dataset_cls.__doc__) or config_doc or DEFAULT_DESCRIPTION))
    return out


# ---- options -------------------------------------------------------------------------------------------


def _field_example(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(text: str, example: Any) -> Any:
    """A command-line string as the type of the field's default (``example``)."""
    if isinstance(example, bool):
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(example, int):
        return int(text)
    if isinstance(example, float):
        return float(text)
    if isinstance(example, str):
        return text
    if isinstance(example, tuple | list):
        if text.lstrip().startswith(("[", "(")):
            value = ast.literal_eval(text)
            return type(example)(value) if isinstance(value, tuple | list) else value
        inner = example[0] if example else ""
        items = [_coerce(part.strip(), inner) for part in text.split(",") if part.strip()]
        return type(example)(items)
    try:  # None or another type: a Python literal, else the string itself
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        raise ValueError(f"a dict option value is not supported, got {value!r}")
    return value


# ---- config --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RGConfig:
    """A reasoning-gym procedural dataset as an entrolab task."""

    dataset: str = ""
    """The reasoning-gym dataset name (``entrolab tasks`` lists them), e.g. ``basic_arithmetic``."""
    options: tuple[tuple[str, Any], ...] = ()
    """Fields of the dataset's config dataclass, as (key, value) pairs; string values are converted to the
    field's type (``"3"`` -> 3, ``"+,-"`` -> ``("+", "-")``, ``"false"`` -> False)."""
    train_size: int = 2000
    """Problems in the train split (fewer when the dataset has fewer distinct ones)."""
    test_size: int = 128
    """Problems in the test split."""
    partial_credit: bool = True
    """Keep reasoning-gym's fractional scores (countdown: 0.05 for the right numbers and a wrong value);
    False scores everything below 1 as 0."""
    demo_mix: tuple[float, float, float] = (0.35, 0.45, 0.20)
    """Fractions of right, wrong and badly formatted demonstrations."""

    def __post_init__(self) -> None:
        registry = _registry()
        if self.dataset in UNSUPPORTED:
            raise ValueError(f"reasoning-gym dataset {self.dataset!r} is not supported: {UNSUPPORTED[self.dataset]}")
        if self.dataset not in registry:
            raise ValueError(f"unknown reasoning-gym dataset {self.dataset!r}; known: {', '.join(dataset_names())}")
        if self.train_size < 1 or self.test_size < 1:
            raise ValueError(f"train_size and test_size must be >= 1, got {self.train_size}, {self.test_size}")
        check_demo_mix(self.demo_mix)
        config_cls = registry[self.dataset][1]
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        allowed = sorted(set(fields) - set(RESERVED_OPTIONS))
        options = dict(self.options)
        if len(options) != len(self.options):
            raise ValueError(f"rg:{self.dataset}: an option is given twice in {self.options!r}")
        for key in options:
            if key in RESERVED_OPTIONS:
                raise ValueError(
                    f"rg:{self.dataset}: option {key!r} is set by entrolab (from the task seed, train_size and "
                    f"test_size); allowed options: {allowed}"
                )
            if key not in fields:
                raise ValueError(
                    f"unknown option {key!r} for reasoning-gym dataset {self.dataset!r} "
                    f"({config_cls.__name__}); allowed: {allowed}"
                )
        coerced = []
        for key, value in self.options:
            example = _field_example(fields[key])
            if isinstance(value, str):
                try:
                    value = _coerce(value, example)
                except (ValueError, SyntaxError) as e:
                    raise ValueError(f"rg:{self.dataset}: option {key}={value!r}: {e}") from None
            elif isinstance(example, str) and isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)  # key=3 read as a number, for a text field
            coerced.append((key, _hashable(value)))
        object.__setattr__(self, "options", tuple(coerced))
        try:  # the generator's own checks (asserts, mostly), before any work
            config = config_cls(seed=0, size=1, **self.kwargs())
            if callable(getattr(config, "validate", None)):
                config.validate()
        except (AssertionError, ValueError, TypeError) as e:
            raise ValueError(
                f"rg:{self.dataset}: invalid options {dict(self.options)}: {e or type(e).__name__}"
            ) from None

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the dataset's config (tuples where a list was given)."""
        return dict(self.options)


def rg_config(dataset: str, **options: Any) -> RGConfig:
    """An :class:`RGConfig`: ``options`` that are its own fields set it, the others are generator options.

    String values (``--task-option key=value``) are converted to the field's type, for both kinds."""
    own = {f.name: f for f in dataclasses.fields(RGConfig) if f.name not in ("dataset", "options")}
    mine = {}
    for key, value in options.items():
        if key not in own:
            continue
        if isinstance(value, str):  # from the command line
            try:
                value = _coerce(value, _field_example(own[key]))
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"rg:{dataset}: option {key}={value!r}: {e}") from None
        mine[key] = tuple(value) if isinstance(value, list) else value
    generator = tuple((k, v) for k, v in options.items() if k not in own)
    return RGConfig(dataset=dataset, options=generator, **mine)


# ---- entries as JSON -----------------------------------------------------------------------------------


def _encode(x: Any) -> Any:
    """``x`` as plain JSON values, with the types JSON would lose tagged (see ``_decode``)."""
    if x is None or isinstance(x, bool | str):
        return str(x) if isinstance(x, str) and type(x) is not str else x
    if isinstance(x, Fraction):
        return {"__fraction__": [x.numerator, x.denominator]}
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, complex):
        return {"__complex__": [x.real, x.imag]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, set | frozenset):
        return {f"__{type(x).__name__}__": [_encode(v) for v in x]}
    if isinstance(x, dict):
        if all(type(k) is str for k in x) and not (len(x) == 1 and next(iter(x)) in _TAGS):
            return {k: _encode(v) for k, v in x.items()}
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if hasattr(x, "item") and callable(x.item):  # a numpy scalar
        return _encode(x.item())
    raise TypeError(f"a value of type {type(x).__name__} ({x!r:.60}) cannot be stored as JSON")


def _decode_hook(d: dict[str, Any]) -> Any:
    if len(d) != 1:
        return d
    tag, value = next(iter(d.items()))
    if tag == "__tuple__":
        return tuple(value)
    if tag == "__set__":
        return set(value)
    if tag == "__frozenset__":
        return frozenset(value)
    if tag == "__fraction__":
        return Fraction(*value)
    if tag == "__complex__":
        return complex(*value)
    if tag == "__dict__":
        return dict(value)  # tuple keys are tuples again already (decoded inside out)
    return d


def entry_to_json(entry: dict[str, Any]) -> str:
    """A reasoning-gym entry as JSON that :func:`entry_from_json` turns back into an equal entry."""
    return json.dumps(_encode(entry), ensure_ascii=False, separators=(",", ":"))


def entry_from_json(text: str) -> dict[str, Any]:
    """The entry :func:`entry_to_json` stored; a fresh object each call (a scorer may change what it gets)."""
    return json.loads(text, object_hook=_decode_hook)


# ---- the scorer ----------------------------------------------------------------------------------------


def _literal_eval(source: Any, *_: Any) -> Any:
    """A stand-in for ``eval`` in scorers that parse a Python literal: literals only, never code."""
    return ast.literal_eval(source)


def _score_fns(dataset_cls: type) -> Iterable[Callable[..., Any]]:
    for klass in dataset_cls.__mro__:
        fn = vars(klass).get("score_answer")
        if fn is not None and hasattr(fn, "__code__"):
            yield fn


def _make_safe(name: str, dataset_cls: type) -> bool:
    """Replace ``eval`` with ``_literal_eval`` in the scorer's module; True if its scorer parses with sympy."""
    sympy_scored = name in _EXPRESSION_SCORED
    for fn in _score_fns(dataset_cls):
        names = set(fn.__code__.co_names)
        if "eval" in names:
            module = sys.modules[fn.__module__]
            if getattr(module, "eval", _literal_eval) is not _literal_eval:
                raise RuntimeError(f"rg:{name}: {fn.__module__} defines its own eval; refusing to score with it")
            module.eval = _literal_eval  # the builtin eval is looked up in the module's globals first
        sympy_scored |= bool(names & {"parse_expr", "sympify", "exec"})
    return sympy_scored


@functools.lru_cache(maxsize=16)
def _dataset(name: str, options: tuple[tuple[str, Any], ...]) -> tuple[Any, bool]:
    """(a dataset instance with these options, whether its scorer parses the answer with sympy); per process."""
    dataset_cls = _registry()[name][0]
    sympy_scored = _make_safe(name, dataset_cls)
    return _rg().create_dataset(name, seed=0, size=1, **dict(options)), sympy_scored


def safe_expression(answer: str, allow_power: bool = True) -> bool:
    """Whether ``answer`` is plain arithmetic that sympy's ``parse_expr`` can evaluate without running code
    or computing a tower of powers: numbers, single-letter symbols, math function names, ``( ) + - * / , **``.

    >>> [safe_expression(s) for s in ("2*(3*x - 1)**(3/2) + C", "9**9**9", "__import__('os')", "x.real")]
    [True, False, False, False]
    """
    if len(answer) > _MAX_EXPRESSION_CHARS:
        return False
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(answer).readline)
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
        ]
    except (tokenize.TokenError, SyntaxError):
        return False
    exponent_depth: int | None = None  # the bracket depth a parenthesised exponent opened at
    want_exponent = after_exponent = False  # just after ** / just after a whole exponent
    levels = [0]  # per open bracket: the deepest power nesting inside it
    closed_level = 0  # that of the bracket just closed
    previous = None
    for tok in tokens:
        text = tok.string
        follows_exponent, after_exponent = after_exponent, False
        if tok.type == tokenize.NAME:
            if text not in _MATH_NAMES and not (len(text) == 1 and text.isascii() and text.isalpha()):
                return False
            if want_exponent and text in _MATH_NAMES:
                return False  # 9**abs(9**9)
            after_exponent, want_exponent = want_exponent, False
        elif tok.type == tokenize.NUMBER:
            if want_exponent and not _small_number(text):
                return False
            after_exponent, want_exponent = want_exponent, False
        elif tok.type == tokenize.OP and text in _SAFE_OPS:
            if text in ("**", "^"):
                if not allow_power or want_exponent or follows_exponent or exponent_depth is not None:
                    return False  # a power inside an exponent: 9**9**9, 9**(9**9)
                level = 1 + (closed_level if previous is not None and previous.string == ")" else 0)
                if level > _MAX_POWER_NESTING:
                    return False  # ((9**99)**99)**99
                levels[-1] = max(levels[-1], level)
                want_exponent = True
            elif text == "(":
                if previous is not None and previous.type == tokenize.NAME and previous.string not in _MATH_NAMES:
                    return False  # only the math functions are called: N(pi, 10**6) is sympy's N
                if want_exponent:
                    exponent_depth, want_exponent = len(levels), False
                levels.append(0)
            elif text == ")":
                if len(levels) == 1:
                    return False
                closed_level = levels.pop()
                levels[-1] = max(levels[-1], closed_level)
                if exponent_depth is not None and len(levels) == exponent_depth:
                    exponent_depth, after_exponent = None, True
            elif want_exponent and text not in ("+", "-"):
                return False
        else:
            return False
        previous = tok
    return not want_exponent


def _small_number(text: str) -> bool:
    """A numeric literal of at most ``_MAX_EXPONENT`` in absolute value."""
    try:
        return abs(float(text)) <= _MAX_EXPONENT
    except ValueError:
        return False


def score_rg(answer: str, entry: dict[str, Any], dataset: str, options: tuple[tuple[str, Any], ...] = ()) -> float:
    """reasoning-gym's ``score_answer(answer, entry)``, made safe (see the module docstring); may raise."""
    instance, sympy_scored = _dataset(dataset, options)
    if sympy_scored and not safe_expression(answer, allow_power=dataset not in _NO_POWER):
        raise ValueError(f"not a plain arithmetic expression: {answer[:80]!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        return instance.score_answer(answer, entry)


def verify_rg(completion: str, example: Example, config: RGConfig) -> Verdict:
    """reasoning-gym's score of the text after the last ``answer:`` (see the module docstring). Never raises."""
    answer = final_answer(completion)
    if not answer:
        return FORMAT_ERROR
    try:
        score = float(score_rg(answer, entry_from_json(example.get("entry")), config.dataset, config.options))
    except Exception:  # the scorer could not read this answer
        return FORMAT_ERROR
    if math.isnan(score):
        return FORMAT_ERROR
    if score >= 1.0:
        return RIGHT
    if score <= 0.0 or not config.partial_credit:
        return WRONG
    return Verdict(score, "wrong")


def extract_rg(completion: str) -> str | None:
    """The stripped text after the last ``answer:`` (for majority vote); None when there is none."""
    return final_answer(completion) or None


# ---- the task ------------------------------------------------------------------------------------------


def derived_seed(dataset: str, seed: int, round_: int) -> int:
    """A reasoning-gym seed for (dataset, task seed, generator round). Hashed, not ``seed + k``: many
    generators draw item ``i`` from ``Random(seed + i)``, so nearby seeds would share almost every problem."""
    digest = hashlib.sha256(f"entrolab-rg:{dataset}:{seed}:{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


INSTRUCTION = "End your response with answer: followed by your final answer, and nothing after it."


def rg_prompt(question: str) -> str:
    """The question, a blank line, and the instruction to finish with ``answer: <X>``."""
    return f"{question.rstrip()}\n\n{INSTRUCTION}\n"


def generate_rg(config: RGConfig, seed: int) -> list[Example]:
    """At least ``train_size + test_size`` distinct problems when the dataset has them (up to 9 rounds)."""
    rg, need = _rg(), config.train_size + config.test_size
    examples: dict[str, Example] = {}
    for round_ in range(1 + _GROW_ROUNDS):
        missing = need - len(examples)
        if missing <= 0:
            break
        size = missing if round_ == 0 else max(2 * missing, 64)
        with contextlib.redirect_stdout(io.StringIO()):
            ds = rg.create_dataset(
                config.dataset, seed=derived_seed(config.dataset, seed, round_), size=size, **config.kwargs()
            )
            entries = [ds[i] for i in range(size)]
        for entry in entries:
            prompt = rg_prompt(str(entry["question"]))
            if prompt in examples:
                continue
            try:
                text = entry_to_json(entry)
            except TypeError as e:
                raise ValueError(f"rg:{config.dataset}: an entry cannot be stored: {e}") from None
            answer = "" if entry.get("answer") is None else str(entry["answer"]).strip()
            key = hashlib.sha1(prompt.encode()).hexdigest()[:16]
            examples[prompt] = Example(
                id=f"rg:{config.dataset}:{key}", prompt=prompt, answer=answer, data=(("entry", text),)
            )
    return list(examples.values())


class ReasoningGymTask:
    """The ``rg:<dataset>`` task: a seeded, disjoint split of a reasoning-gym dataset's problems."""

    pooled_verifier = True  # a reasoning-gym scorer may hang on an unguarded answer: evaluation uses workers

    def __init__(self, config: RGConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.name = f"rg:{config.dataset}"
        examples = generate_rg(config, seed)
        self.train, self.test = split_examples(examples, random.Random(seed), config.test_size, config.train_size)
        self.references = all(e.answer for e in (*self.train, *self.test))
        """Whether every problem has a reference answer (needed for demonstrations)."""

    def __repr__(self) -> str:
        return f"ReasoningGymTask({self.config}, seed={self.seed}, train={len(self.train)}, test={len(self.test)})"

    def prompt(self, example: Example) -> str:
        return example.prompt

    def verify(self, completion: str, example: Example) -> Verdict:
        return verify_rg(completion, example, self.config)

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_rg(completion)

    def demonstration(self, example: Example, rng: random.Random) -> str:
        return rg_demonstration(example, draw_demo_kind(rng, self.config.demo_mix), rng, self)


def rg_demonstration(example: Example, kind: Reason, rng: random.Random, task: ReasoningGymTask) -> str:
    """right: ``answer: <reference>``. wrong: another train example's answer that scores below 1 (else the
    reference with ``?`` appended). format_error: the bare reference, ``answer`` without the colon, or an empty
    ``answer:``."""
    if not example.answer:
        raise ValueError(
            f"{task.name} has no reference answers (its scorer checks solutions), so it has no demonstrations "
            "for a warm start; start from a trained model instead"
        )
    if kind == "right":
        return f"{ANSWER_TAG} {example.answer}"
    if kind == "wrong":
        for _ in range(20):
            other = f"{ANSWER_TAG} {rng.choice(task.train).answer}"
            if task.verify(other, example).reason == "wrong":
                return other
        return f"{ANSWER_TAG} {example.answer}?"
    return rng.choice((example.answer, f"answer {example.answer}", ANSWER_TAG))


def make_rg_task(dataset: str, *, seed: int = 0, **options: Any) -> ReasoningGymTask:
    """``rg:<dataset>`` with :func:`rg_config`'s split of ``options``; errors before any generation."""
    return ReasoningGymTask(rg_config(dataset, **options), seed=seed)


__all__ = [
    "RGConfig",
    "ReasoningGymTask",
    "dataset_names",
    "entry_from_json",
    "entry_to_json",
    "list_tasks",
    "make_rg_task",
    "rg_config",
    "safe_expression",
    "verify_rg",
]
