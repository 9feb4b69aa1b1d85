"""The reward protocol: per-sample and batched functions, in process and in a RewardPool of worker processes, with
errors, time-outs and dying workers. The reward functions live in tests/reward_fns.py (workers import them)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
import torch

from entrolab.rewards import (
    RewardError,
    RewardPool,
    Scores,
    default_workers,
    is_batched,
    load_reward_fn,
    score_completions,
)
from entrolab.tasks import Example, make_task
from tests import reward_fns
from tests.reward_fns import batched_hang, batched_length, batched_too_few, behave, plain


def examples(n: int) -> list[Example]:
    return [Example(id=f"ex{i}", prompt=f"{i}+0=?\n", answer=str(i)) for i in range(n)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids(scores: Scores) -> set[int]:
    return {i["pid"] for i in scores.info if i is not None}


@pytest.fixture(scope="module")
def pool():
    """Two workers, 1 s per sample, skip: shared by the tests below, so each also checks that the pool still
    works after the workers the earlier ones killed were replaced."""
    with RewardPool(behave, workers=2, timeout=1.0, on_error="skip") as p:
        yield p


# ---- semantics (in process and in the pool alike) --------------------------------------------------------


def test_scores_floats_and_verdicts_in_process():
    # a float is a score, right iff >= 1; a Verdict carries its reason
    s = score_completions(["1", "0.5", "right", "wrong", "format", "2"], examples(6), behave)
    assert s.reward.dtype == torch.float32
    assert s.reward.tolist() == [1.0, 0.5, 1.0, 0.0, 0.0, 2.0]
    assert s.right.tolist() == [True, False, True, False, False, True]
    assert s.format_error.tolist() == [False, False, False, False, True, False]
    assert not s.errored.any() and not s.timed_out.any()
    assert s.messages == (None,) * 6
    assert pids(s) == {os.getpid()}


def test_pool_scores_verdicts_like_in_process(pool):
    texts = ["right", "wrong", "format", "0.25", "1"]
    got, want = pool.score(texts, examples(5)), score_completions(texts, examples(5), behave)
    for name in ("reward", "right", "format_error", "errored", "timed_out"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.reward.tolist() == [1.0, 0.0, 0.0, 0.25, 1.0]
    assert got.format_error.tolist() == [False, False, True, False, False]


def test_pool_keeps_the_order_over_many_samples_and_uses_every_worker(pool):
    # 301 samples in chunks of ceil(301 / 8) = 38: sample i must come back as i / 100 at position i
    texts = [str(i / 100) for i in range(301)]
    s = pool.score(texts, examples(301))
    assert torch.equal(s.reward, torch.tensor([i / 100 for i in range(301)], dtype=torch.float32))
    assert s.right.tolist() == [i >= 100 for i in range(301)]
    assert len(pids(s)) == 2 and os.getpid() not in pids(s)


@pytest.mark.parametrize("kind", ["task", "module function"])
def test_task_verifiers_in_the_pool_match_in_process(kind):
    # the bound method task.verify pickles with its task; 64 demonstrations mix right, wrong and format errors
    for name in ("arithmetic", "countdown"):
        task = make_task(name)
        ex = list(task.train[:64])
        rng = random.Random(0)
        texts = [task.demonstration(e, rng) for e in ex]
        fn = task.verify if kind == "task" else load_reward_fn(f"entrolab.tasks.{name}:verify_{name}")
        with RewardPool(fn, workers=2, timeout=10.0) as p:
            got = p.score(texts, ex)
        want = score_completions(texts, ex, task.verify)
        assert torch.equal(got.reward, want.reward) and torch.equal(got.right, want.right)
        assert torch.equal(got.format_error, want.format_error)
        assert 0 < int(want.right.sum()) < 64 and 0 < int(want.format_error.sum()) < 64


def test_empty_batch(pool):
    s = pool.score([], [])
    assert len(s) == 0 and s.reward.shape == (0,)


def test_scores_cat():
    a = score_completions(["1", "0.5"], examples(2), plain)
    b = score_completions(["raise"], examples(1), behave, on_error="skip")
    c = Scores.cat([a, b])
    assert c.reward.tolist() == [1.0, 0.5, 0.0] and c.errored.tolist() == [False, False, True]
    assert c.messages[:2] == (None, None) and "ValueError" in c.messages[2]


# ---- a raising function -----------------------------------------------------------------------------------


def test_raising_function_raises_with_the_example_in_process_and_in_the_pool():
    texts, ex = ["1", "raise", "1"], examples(3)
    pattern = (
        r"(?s)reward function raised on example 'ex1'\n  prompt: '1\+0=\?\\n'\n  completion: 'raise'\n"
        r"Traceback.*ValueError: told to raise on ex1\n.*--on-reward-error skip"
    )
    with pytest.raises(RewardError, match=pattern):
        score_completions(texts, ex, behave)
    with RewardPool(behave, workers=2, timeout=5.0) as p:
        with pytest.raises(RewardError, match=pattern):
            p.score(texts, ex)
        assert p.score(["1", "0.5"], examples(2)).reward.tolist() == [1.0, 0.5]  # still usable after the raise


def test_skip_marks_the_raising_samples_and_scores_the_others(pool):
    s = pool.score(["1", "raise", "0.5", "raise", "right"], examples(5))
    assert s.errored.tolist() == [False, True, False, True, False]
    assert s.reward.tolist() == [1.0, 0.0, 0.5, 0.0, 1.0]
    assert s.right.tolist() == [True, False, False, False, True]
    assert not s.timed_out.any()
    assert s.messages[0] is None and s.messages[1].startswith("reward function raised\nTraceback")
    assert s.messages[1].rstrip().endswith("ValueError: told to raise on ex1")
    assert s.info[1] is None and s.info[0]["pid"] in pids(s)


# ---- non-finite scores ------------------------------------------------------------------------------------


def test_non_finite_scores_are_errors(pool):
    s = pool.score(["nan", "inf", "1"], examples(3))
    assert s.errored.tolist() == [True, True, False] and s.reward.tolist() == [0.0, 0.0, 1.0]
    assert s.messages[:2] == (
        "reward function returned a non-finite score nan",
        "reward function returned a non-finite score inf",
    )
    with pytest.raises(RewardError, match=r"non-finite score nan on example 'ex0'\n  prompt: '0\+0=\?\\n'"):
        score_completions(["nan"], examples(1), behave)
    s = score_completions(["1", "x"], examples(2), lambda c, e: [c] if c == "x" else 1.0, on_error="skip")
    assert s.errored.tolist() == [False, True]
    assert s.messages[1] == "reward function returned ['x'], neither a number nor a Verdict"


# ---- time limit -----------------------------------------------------------------------------------------------


def test_a_hanging_sample_times_out_and_its_worker_is_replaced(pool):
    before = pids(pool.score([str(i) for i in range(16)], examples(16)))
    assert len(before) == 2
    t0 = time.monotonic()
    s = pool.score(["1", "hang", "0.5", "1", "0.25"], examples(5))
    assert time.monotonic() - t0 < 4.0  # the 1 s limit, plus a kill and a replacement; not the 60 s sleep
    assert s.timed_out.tolist() == [False, True, False, False, False]
    assert s.errored.tolist() == [False, True, False, False, False]
    assert s.messages[1] == "reward function timed out after 1 s"
    assert s.reward.tolist() == [1.0, 0.0, 0.5, 1.0, 0.25]
    assert sum(not alive(p) for p in before) == 1  # the hung worker was killed...
    after = pool.score([str(i / 10) for i in range(40)], examples(40))  # ...and the pool still scores
    assert after.reward.tolist() == pytest.approx([i / 10 for i in range(40)]) and not after.errored.any()


def test_every_worker_hanging_at_once(pool):
    t0 = time.monotonic()
    s = pool.score(["hang", "hang", "1"], examples(3))
    assert time.monotonic() - t0 < 3.0  # both limits run at once (about 1 s), then a replacement scores "1"
    assert s.timed_out.tolist() == [True, True, False] and s.reward.tolist() == [0.0, 0.0, 1.0]


def test_a_hanging_sample_raises_with_the_example():
    with RewardPool(behave, workers=2, timeout=1.0) as p:
        t0 = time.monotonic()
        with pytest.raises(
            RewardError,
            match=r"(?s)reward function timed out after 1 s on example 'ex2'\n  prompt: '2\+0=\?\\n'.*"
            r"--on-reward-error skip",
        ):
            p.score(["1", "1", "hang", "1"], examples(4))
        assert time.monotonic() - t0 < 4.0


# ---- workers that die -----------------------------------------------------------------------------------------


def test_a_dying_worker_errors_its_sample_and_the_others_are_scored(pool):
    s = pool.score(["1", "die", "0.5", "killed", "1", "0.75"], examples(6))
    assert s.errored.tolist() == [False, True, False, True, False, False]
    assert s.reward.tolist() == [1.0, 0.0, 0.5, 0.0, 1.0, 0.75]
    assert s.messages[1] == "reward worker died (exit code 3)"
    assert s.messages[3] == "reward worker died (killed by signal SIGKILL)"
    assert not s.timed_out.any()
    assert pool.score(["1"] * 20, examples(20)).right.all()


def test_a_dying_worker_raises_with_the_example():
    with RewardPool(behave, workers=1, timeout=5.0) as p:
        with pytest.raises(RewardError, match=r"reward worker died \(exit code 3\) on example 'ex1'\n  prompt: '1"):
            p.score(["1", "die", "1"], examples(3))
        assert p.score(["0.5"], examples(1)).reward.tolist() == [0.5]


# ---- batched functions ----------------------------------------------------------------------------------------


def test_batched_function_in_process_and_in_the_pool():
    assert is_batched(batched_length) and not is_batched(plain)
    texts = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g", "hh", "iii", "jjjjjjjjjj"]
    local = score_completions(texts, examples(10), batched_length)
    assert local.reward.tolist() == pytest.approx([len(t) / 10 for t in texts])
    assert [i["call_size"] for i in local.info] == [10] * 10  # in process: one call
    assert local.right.tolist() == [False] * 9 + [True]
    with RewardPool(batched_length, workers=2, timeout=5.0, on_error="skip") as p:
        s = p.score(texts, examples(10))
        assert torch.equal(s.reward, local.reward)
        assert [i["call_size"] for i in s.info] == [5] * 10  # one call of ceil(10 / 2) per worker
        # a NaN errors its sample only; raising errors the whole call (samples 5..9), not the other one
        s = p.score(["a", "nan", "ccc", "dddd", "eeeee", "raise", "g", "hh", "iii", "j"], examples(10))
        assert s.errored.tolist() == [False, True, False, False, False] + [True] * 5
        assert s.messages[1] == "reward function returned a non-finite score nan"
        assert s.messages[5].startswith("reward function raised (a batched call on 5 samples)\nTraceback")
        assert s.reward.tolist()[:5] == pytest.approx([0.1, 0.0, 0.3, 0.4, 0.5])


def test_batched_function_with_the_wrong_number_of_outputs():
    s = score_completions(["1", "1", "1"], examples(3), batched_too_few, on_error="skip")
    assert s.errored.all()
    assert "ValueError: batched reward function returned 2 outputs for 3 samples" in s.messages[0]


def test_batched_call_times_out_as_a_whole():
    with RewardPool(batched_hang, workers=2, timeout=1.0, on_error="skip") as p:
        s = p.score(["1", "hang", "1", "1"], examples(4))  # calls [0, 1] and [2, 3]
    assert s.timed_out.tolist() == [True, True, False, False] and s.reward.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert s.messages[0] == "reward function timed out after 1 s (a batched call on 2 samples)"


# ---- arguments, loading, shutdown -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"workers": 0}, "workers must be an int >= 1 (None: the"),
        ({"workers": 1.5}, "got 1.5"),
        ({"timeout": 0}, "timeout must be a finite number of seconds > 0, got 0"),
        ({"timeout": float("inf")}, "got inf"),
        ({"timeout": float("nan")}, "got nan"),
        ({"on_error": "ignore"}, "on_error must be one of ('raise', 'skip'), got 'ignore'"),
    ],
)
def test_bad_arguments_fail_before_any_work(kw, msg):
    with pytest.raises(ValueError) as info:
        RewardPool(plain, **kw)
    assert msg in str(info.value)


def test_functions_that_do_not_load_in_a_worker():
    with pytest.raises(ValueError, match="cannot be sent to worker processes"):
        RewardPool(lambda c, e: 1.0)
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"(?s)could not be loaded in a worker.*this reward cannot be loaded here"):
        with RewardPool(reward_fns.Unloadable(), workers=2):
            pass
    assert time.monotonic() - t0 < 10.0
    with pytest.raises(RuntimeError, match="not open"):
        RewardPool(plain).score(["1"], examples(1))


def test_load_reward_fn():
    assert load_reward_fn("tests.reward_fns:plain") is plain
    with pytest.raises(ValueError, match=r"'tests\.reward_fns:nope'.*'nope'"):
        load_reward_fn("tests.reward_fns:nope")
    with pytest.raises(ValueError, match=r"must look like 'package\.module:attribute'"):
        load_reward_fn("tests.reward_fns")


def test_default_workers():
    assert default_workers() >= 1 and RewardPool(plain).workers == default_workers()


def test_ctrl_c_during_a_hanging_score_stops_every_worker_at_once():
    # Ctrl-C as a user's shell delivers it: Python's default handler, whatever an earlier test left installed
    # (in the full suite some earlier test leaves SIGINT away from its default; see the issue 17 closing note)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_a_hanging_score()
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_during_a_hanging_score() -> None:
    main = threading.main_thread().ident
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with RewardPool(behave, workers=2, timeout=30.0) as p:
            workers = pids(p.score(["1"] * 8, examples(8)))
            threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
            p.score(["hang", "hang", "1"], examples(3))
    assert time.monotonic() - t0 < 5.0  # not the 30 s limit, nor the 60 s sleep
    assert len(workers) == 2 and not any(alive(w) for w in workers)


def test_workers_ignore_sigint_and_sigterm(pool):
    # a Ctrl-C or a scheduler's SIGTERM reaches the whole process group: the parent decides, workers carry on
    workers = pids(pool.score(["1"] * 16, examples(16)))
    for w in workers:
        os.kill(w, signal.SIGINT)
        os.kill(w, signal.SIGTERM)
    s = pool.score(["0.5"] * 16, examples(16))
    assert not s.errored.any() and pids(s) <= workers and all(alive(w) for w in workers)


def test_an_exception_in_the_block_closes_the_pool():
    with pytest.raises(ZeroDivisionError):
        with RewardPool(behave, workers=2, timeout=5.0) as p:
            workers = pids(p.score(["1"] * 8, examples(8)))
            1 / 0  # noqa: B018
    assert len(workers) == 2 and not any(alive(w) for w in workers)
