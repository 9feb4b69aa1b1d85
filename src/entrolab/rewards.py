"""Scoring completions: a batched, time-limited reward protocol, run in worker processes.

A reward function is a plain picklable callable of one of two kinds:

- per-sample, ``fn(completion: str, example: Example) -> float | Verdict``: a task's verifier (``task.verify``)
  or a user's function (``--reward-fn package.module:function``);
- batched, ``fn(completions: Sequence[str], examples: Sequence[Example]) -> Sequence[float | Verdict]``, one
  call for many samples (e.g. a reward model), marked by the attribute ``batched = True``: decorate a function
  with :func:`batched_reward`, or set it on a callable class (:class:`BatchedReward`).

Either may return ``(score, info)`` instead of a score, ``info`` a dict kept in ``Scores.info``. A float is a
score, right iff >= 1 (unless ``info`` says ``right`` and ``format_error`` itself, as a reward model scored next to
the task's verifier does); a ``Verdict`` carries its reason (``right`` / ``wrong`` / ``format_error``) and score.
Both kinds are driven through one internal protocol (``_score_items``: one :class:`SampleScore` per sample, in
order), shared by the worker processes and the in-process path.

A sample *errors* when the function raises, returns a non-finite score, runs past the time limit, or kills its
worker process. An error is never scored 0 silently: by default scoring stops with a :class:`RewardError`
naming the reason, the example and the prompt (``on_error="raise"``); with ``on_error="skip"`` the sample is
marked ``errored`` (reward 0) and the trainer drops it from the update and counts it in ``reward/errors``.

:class:`RewardPool` (the trainer's path) scores in ``workers`` processes, created once per run:

- each worker receives the pickled reward function once, at start, then chunks of ``(index, completion,
  example)``, and sends one result per sample; the parent waits on the pipes and the process sentinels
  (``multiprocessing.connection.wait``), so a worker that dies (segfault, ``os._exit``) is seen at once;
- the time limit is the parent's: each busy worker's deadline is ``timeout`` seconds after its last result (for
  a batched function, after its chunk was sent), and a worker past it is killed and replaced. No
  ``signal.alarm`` (math-verify's own timeout uses it; its handler runs only in a main thread, between
  bytecodes, never inside a long C call);
- the start method is ``forkserver`` (``spawn`` where there is none), never ``fork``: the trainer has torch's
  OpenMP threads running, and the fork of a threaded process can deadlock. A worker starts with the parent's
  ``sys.path`` and working directory (multiprocessing passes them on), so a function from an importable
  module (``tests.reward_fns:fn``, run from the repository root) or a bound method of a picklable object
  (``task.verify``) loads as it does in the parent. One defined in the main script loads too: multiprocessing
  imports the script in each worker as ``__mp_main__``, so guard its work with ``if __name__ == "__main__":``
  and keep its top-level imports light (an ``import torch`` there costs every worker start ~1.5 s; the
  ``entrolab`` command's script imports only ``entrolab.cli``). One defined in ``python -c`` or a notebook
  does not load;
- a per-sample function gets chunks of ``ceil(B / (4 * workers))`` samples (few round trips for fast
  verifiers, balance for slow ones), a batched one ``ceil(B / workers)``, one call per worker.

:func:`score_completions` is the same protocol in this process, without a time limit (the evaluator's path for
the built-in verifiers, which are fast and never raise).

torch is imported only where :class:`Scores` are built: workers import this module for their loop, and start in
~0.1 s instead of the ~1.5 s an ``import torch`` costs.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar, get_args

from entrolab.loader import load_callable
from entrolab.tasks import Example, Verdict

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

    import torch

OnRewardError = Literal["raise", "skip"]
"""What an erroring sample does: stop scoring with a ``RewardError`` (raise) or mark the sample errored (skip)."""
ON_REWARD_ERROR: tuple[str, ...] = get_args(OnRewardError)
DEFAULT_TIMEOUT = 60.0
"""Seconds one call of the reward function may take in a ``RewardPool`` (one sample, or one batched call)."""
START_TIMEOUT = 120.0
"""Seconds a worker process may take to start and load the reward function."""
SKIP_HINT = "Pass --on-reward-error skip to drop such samples and count them in reward/errors."

RewardOutput = float | Verdict | tuple[float | Verdict, dict[str, Any]]
"""What a reward function returns for one sample: a score, a Verdict, or either with a per-sample info dict."""


class SampleReward(Protocol):
    """A per-sample reward function (a task's verifier is one)."""

    def __call__(self, completion: str, example: Example, /) -> RewardOutput: ...


class BatchedReward(Protocol):
    """A batched reward function: one call scores many samples, returning one output per sample, in order.

    Recognised by ``batched = True`` (:func:`batched_reward` sets it on a function; a class sets it as a class
    attribute). A non-finite score errors that sample only; raising errors every sample of the call.
    """

    batched: Literal[True]

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], /) -> Sequence[RewardOutput]: ...


RewardFn = SampleReward | BatchedReward
F = TypeVar("F", bound=Callable[..., Any])


def batched_reward(fn: F) -> F:
    """Mark ``fn`` as a batched reward function (``fn.batched = True``); use as a decorator. Returns ``fn``."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def is_batched(fn: Any) -> bool:
    """Whether ``fn`` is a batched reward function (its ``batched`` attribute is ``True``)."""
    return getattr(fn, "batched", False) is True


class RewardError(RuntimeError):
    """A sample's reward errored (raised, non-finite, timed out, worker died) with ``on_error="raise"``, or the
    reward function could not be loaded in a worker process."""


class SampleScore(NamedTuple):
    """One sample's score, as a worker sends it back."""

    reward: float
    """0 when errored."""
    right: bool
    format_error: bool
    message: str | None = None
    """The error (a headline, then the traceback if there is one); None when the sample is fine."""
    timed_out: bool = False
    info: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class Scores:
    """Scores of B completions."""

    reward: torch.Tensor  # [B] float32, 0 where the sample errored
    right: torch.Tensor  # [B] bool
    format_error: torch.Tensor  # [B] bool
    errored: torch.Tensor  # [B] bool: raised, non-finite score, timed out or worker died (only with "skip")
    timed_out: torch.Tensor  # [B] bool, a subset of errored
    messages: tuple[str | None, ...]  # [B] the error text, None where the sample is fine
    info: tuple[dict[str, Any] | None, ...]  # [B] what the reward function returned beside the score, if anything

    def __len__(self) -> int:
        return len(self.messages)

    @classmethod
    def from_samples(cls, samples: Sequence[SampleScore]) -> Scores:
        """Stack per-sample scores, in order."""
        import torch

        return cls(
            reward=torch.tensor([s.reward for s in samples], dtype=torch.float32),
            right=torch.tensor([s.right for s in samples], dtype=torch.bool),
            format_error=torch.tensor([s.format_error for s in samples], dtype=torch.bool),
            errored=torch.tensor([s.message is not None for s in samples], dtype=torch.bool),
            timed_out=torch.tensor([s.timed_out for s in samples], dtype=torch.bool),
            messages=tuple(s.message for s in samples),
            info=tuple(s.info for s in samples),
        )

    def select(self, idx) -> Scores:
        """The scores of rows ``idx`` (an index tensor), in that order."""
        rows = [int(i) for i in idx]
        tensors = ("reward", "right", "format_error", "errored", "timed_out")
        picked = {k: getattr(self, k)[idx] for k in tensors}
        return Scores(**picked, messages=tuple(self.messages[i] for i in rows), info=tuple(self.info[i] for i in rows))

    @classmethod
    def cat(cls, parts: Sequence[Scores]) -> Scores:
        """Concatenate the scores of consecutive batches."""
        import torch

        tensors = ("reward", "right", "format_error", "errored", "timed_out")
        fields_ = {k: torch.cat([getattr(p, k) for p in parts]) for k in tensors}
        return cls(
            **fields_,
            messages=tuple(m for p in parts for m in p.messages),
            info=tuple(i for p in parts for i in p.info),
        )


def load_reward_fn(spec: str) -> RewardFn:
    """Load ``"package.module:function"`` (or ``:Class.attribute``); a ``ValueError`` naming ``spec`` if absent."""
    return load_callable(spec, "reward function")


def default_workers() -> int:
    """The number of cores this process may run on (its CPU affinity where the OS reports one), at least 1."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


# ---- the protocol: one SampleScore per sample -------------------------------------------------------------


def _failed(headline: str, detail: str | None = None, *, timed_out: bool = False) -> SampleScore:
    return SampleScore(0.0, False, False, headline if detail is None else f"{headline}\n{detail}", timed_out)


def _judge(out: Any) -> SampleScore:
    """One output of a reward function as a sample's score; neither a number nor a Verdict, or a non-finite
    score, is an error."""
    info = None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        out, info = out
    if isinstance(out, Verdict):
        score, right, fmt = float(out.score), out.reason == "right", out.reason == "format_error"
    else:
        try:
            score = float(out)
        except (TypeError, ValueError):
            return _failed(f"reward function returned {out!r:.80}, neither a number nor a Verdict")
        right, fmt = score >= 1.0, False
    if info is not None and isinstance(info.get("right"), bool):  # a score that is not a judgement (a reward
        right, fmt = info["right"], bool(info.get("format_error", False))  # model's) says right / format apart
    if not math.isfinite(score):
        return _failed(f"reward function returned a non-finite score {score!r}")
    return SampleScore(score, right, fmt, None, False, info)


def _score_items(fn: RewardFn, items: Sequence[tuple[int, str, Example]]) -> Iterator[tuple[int, SampleScore]]:
    """Score ``(index, completion, example)`` items with ``fn`` of either kind: one result per item, in order,
    as soon as it is known (a per-sample function's results one by one, a batched one's after its call)."""
    if not is_batched(fn):
        for i, completion, example in items:
            try:
                out = fn(completion, example)  # type: ignore[call-arg, arg-type]
            except Exception:
                yield i, _failed("reward function raised", traceback.format_exc())
            else:
                yield i, _judge(out)
        return
    try:
        outs = list(fn([c for _, c, _ in items], [e for _, _, e in items]))  # type: ignore[call-arg, arg-type]
        if len(outs) != len(items):
            raise ValueError(f"batched reward function returned {len(outs)} outputs for {len(items)} samples")
    except Exception:
        failed = _failed(f"reward function raised (a batched call on {len(items)} samples)", traceback.format_exc())
        for i, _, _ in items:
            yield i, failed
        return
    for (i, _, _), out in zip(items, outs, strict=True):
        yield i, _judge(out)


def _reward_error(sample: SampleScore, completion: str, example: Example) -> RewardError:
    """The error of an erroring sample: headline, example id, prompt, completion, traceback (if any), hint."""
    headline, _, detail = (sample.message or "").partition("\n")
    return RewardError(
        f"{headline} on example {example.id!r}\n  prompt: {example.prompt!r}\n  completion: {completion!r}\n"
        f"{detail}{SKIP_HINT}"
    )


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_REWARD_ERROR:
        raise ValueError(f"on_error must be one of {ON_REWARD_ERROR}, got {on_error!r}")


def _check_batch(completions: Sequence[str], examples: Sequence[Example]) -> int:
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions for {len(examples)} examples; give one example each")
    return len(completions)


def score_completions(
    completions: Sequence[str],
    examples: Sequence[Example],
    reward_fn: RewardFn,
    on_error: OnRewardError = "raise",
) -> Scores:
    """Score each completion against its example in this process, without a time limit.

    The same protocol as :meth:`RewardPool.score` (either kind of function, the same errors); use the pool
    for user functions, which may hang or crash.
    """
    _check_on_error(on_error)
    n = _check_batch(completions, examples)
    samples: list[SampleScore] = []
    for i, sample in _score_items(reward_fn, list(zip(range(n), completions, examples, strict=True))):
        if sample.message is not None and on_error == "raise":
            raise _reward_error(sample, completions[i], examples[i])
        samples.append(sample)
    return Scores.from_samples(samples)


# ---- the worker process -------------------------------------------------------------------------------------

_READY, _LOAD_ERROR = -1, -2  # a worker's first message: (_READY, None) or (_LOAD_ERROR, traceback)


def _exit_with_parent(lifeline: Connection) -> None:
    """Exit this worker when the parent's end of ``lifeline`` closes (the parent died), even mid-call."""
    wait([lifeline])
    os._exit(1)


def _worker_main(conn: Connection, lifeline: Connection, fn_bytes: bytes) -> None:
    """Load the reward function, then score chunks of (index, completion, example) until ``None`` or EOF."""
    # Ctrl-C, or a scheduler's SIGTERM, reaches the whole process group; the parent decides (it finishes the step
    # or closes the pool), so a worker never dies of one in the middle of a sample
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(lifeline,), daemon=True).start()
    try:
        fn = pickle.loads(fn_bytes)
    except Exception:
        conn.send((_LOAD_ERROR, traceback.format_exc()))
        return
    conn.send((_READY, None))
    try:
        while (items := conn.recv()) is not None:
            for i, sample in _score_items(fn, items):
                conn.send((i, sample))
    except (EOFError, OSError):  # the parent closed the pool or went away
        return


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    lifeline: Connection
    deadline: float
    """When it must have sent its next message: started + START_TIMEOUT, last result + timeout, or inf (idle)."""
    ready: bool = False
    pending: deque[int] = field(default_factory=deque)
    """Indices sent and not answered yet, in the order the worker scores them."""


def _context() -> BaseContext:
    """forkserver where the platform has it, else spawn; never fork (the parent runs OpenMP threads)."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def _exit_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


# ---- the pool ---------------------------------------------------------------------------------------------


class RewardPool:
    """Score batches in worker processes, each sample under a time limit; open once per run, reuse every step.

    >>> with RewardPool(task.verify, workers=2, timeout=60.0) as pool:  # doctest: +SKIP
    ...     scores = pool.score(completions, examples)

    Args:
        fn: a per-sample or batched reward function; it must pickle (a module-level function, a bound method
            of a picklable object, an instance of a module-level class).
        workers: worker processes (>= 1); None: :func:`default_workers`.
        timeout: seconds (> 0, finite) one call may take: one sample, or one batched call. A call past it is
            killed (its worker is terminated and replaced) and its samples error as timed out.
        on_error: ``"raise"``: the first erroring sample raises ``RewardError`` (reason, example id, prompt,
            traceback, and the ``--on-reward-error skip`` hint); ``"skip"``: it is marked errored and scoring
            goes on.

    Workers ignore SIGINT and SIGTERM (the parent stops them: politely when idle, SIGKILL when busy; and they
    exit by themselves if the parent dies). They are daemon processes, so a reward function cannot start
    ``multiprocessing`` children of its own. Not thread-safe: one ``score`` at a time.
    """

    def __init__(
        self,
        fn: RewardFn,
        *,
        workers: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_error: OnRewardError = "raise",
    ) -> None:
        workers = default_workers() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1 (None: the {default_workers()} cores), got {workers!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        _check_on_error(on_error)
        if not callable(fn):
            raise ValueError(f"reward function must be callable, got {type(fn).__name__}")
        try:
            self._fn_bytes = pickle.dumps(fn)
        except Exception as e:
            raise ValueError(
                f"reward function {fn!r} cannot be sent to worker processes ({type(e).__name__}: {e}); use a "
                "module-level function, a bound method of a picklable object or an instance of a module-level class"
            ) from e
        self.fn, self.workers, self.timeout, self.on_error = fn, workers, float(timeout), on_error
        self.batched = is_batched(fn)
        self._ctx = _context()
        self._slots: list[_Worker | None] | None = None  # None: not open
        self._todo: deque[list[int]] = deque()  # chunks of the batch being scored not yet sent

    def __repr__(self) -> str:
        return f"RewardPool({self.fn!r}, workers={self.workers}, timeout={self.timeout:g}, on_error={self.on_error!r})"

    # -- lifetime --
    def __enter__(self) -> RewardPool:
        """Start the workers and wait until each has loaded the reward function (a bad one fails here)."""
        if self._slots is not None:
            raise RuntimeError("this RewardPool is already open")
        self._slots = [None] * self.workers
        try:
            self._fill()
            while not all(w is not None and w.ready for w in self._slots):
                self._events()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers: idle ones are told to exit (up to 1 s), busy or stuck ones are killed."""
        slots, self._slots = self._slots or [], None
        live = [w for w in slots if w is not None]
        for w in live:
            if w.ready and not w.pending:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
        stop_by = time.monotonic() + 1.0
        for w in live:
            if w.ready and not w.pending:
                w.process.join(max(0.0, stop_by - time.monotonic()))
            self._reap(w)

    # -- scoring --
    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> Scores:
        """Score each completion against its example; the results are in the order of the inputs.

        Returns ``Scores`` with ``errored`` / ``timed_out`` / ``messages`` set for erroring samples (with
        ``on_error="skip"``); raises ``RewardError`` on the first one with ``on_error="raise"``.
        """
        if self._slots is None:
            raise RuntimeError("RewardPool is not open: use it as `with RewardPool(...) as pool:`")
        n = _check_batch(completions, examples)
        size = math.ceil(n / self.workers) if self.batched else math.ceil(n / (4 * self.workers))
        self._todo = deque(list(range(s, min(s + size, n))) for s in range(0, n, max(size, 1)))
        results: list[SampleScore | None] = [None] * n
        left = n
        try:
            while left:
                self._fill()
                self._dispatch(completions, examples)
                for i, sample in self._events():
                    if sample.message is not None and self.on_error == "raise":
                        raise _reward_error(sample, completions[i], examples[i])
                    results[i] = sample
                    left -= 1
        finally:  # after an early exit (an error, Ctrl-C), no worker keeps scoring the abandoned batch
            self._todo.clear()
            for k, w in enumerate(self._slots or []):
                if w is not None and w.pending:
                    self._reap(w)
                    self._slots[k] = None  # type: ignore[index]
        return Scores.from_samples(results)  # type: ignore[arg-type]

    def _fill(self) -> None:
        """Start a worker in every empty slot."""
        assert self._slots is not None
        for k, w in enumerate(self._slots):
            if w is None:
                self._slots[k] = self._start()

    def _start(self) -> _Worker:
        conn, child = self._ctx.Pipe()
        lifeline_r, lifeline_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child, lifeline_r, self._fn_bytes),
            name="entrolab-reward",
            daemon=True,  # and so terminated at interpreter exit if a pool was never closed
        )
        try:
            process.start()
        finally:
            child.close()
            lifeline_r.close()
        return _Worker(process, conn, lifeline_w, deadline=time.monotonic() + START_TIMEOUT)

    def _dispatch(self, completions: Sequence[str], examples: Sequence[Example]) -> None:
        """Send the next chunk to every idle worker (only idle ones: a busy worker does not read, and a full
        pipe would block the parent past the deadlines)."""
        assert self._slots is not None
        for k, w in enumerate(self._slots):
            if w is None or not w.ready or w.pending or not self._todo:
                continue
            chunk = self._todo.popleft()
            try:
                w.conn.send([(i, completions[i], examples[i]) for i in chunk])
            except OSError:  # it died while idle: not the chunk's fault
                self._todo.appendleft(chunk)
                self._reap(w)
                self._slots[k] = None
                continue
            w.pending = deque(chunk)
            w.deadline = time.monotonic() + self.timeout

    def _events(self) -> list[tuple[int, SampleScore]]:
        """Wait for the first message, exit or deadline of any worker and handle all that happened: results,
        workers ready, workers that died or ran out of time (killed, replaced at the next ``_fill``). Returns
        the samples finished, the failed ones included."""
        assert self._slots is not None
        live = [w for w in self._slots if w is not None]
        done: list[tuple[int, SampleScore]] = []
        if not live:
            return done
        first = min(w.deadline for w in live)
        timeout = None if first == math.inf else max(0.0, first - time.monotonic())
        ready = set(wait([w.conn for w in live] + [w.process.sentinel for w in live], timeout=timeout))
        for w in live:
            if w.conn in ready or w.process.sentinel in ready:
                if not self._receive(w, done) or w.process.sentinel in ready:
                    w.process.join(1.0)
                    self._fail(w, done, f"reward worker died ({_exit_text(w.process.exitcode)})")
        for w in live:
            if w in self._slots and w.deadline <= time.monotonic():
                self._receive(w, done)  # a result that came in just now restarts the deadline
                if w.deadline > time.monotonic():
                    continue
                if not w.ready:
                    raise RewardError(f"a reward worker did not load the reward function within {START_TIMEOUT:g} s")
                self._fail(w, done, f"reward function timed out after {self.timeout:g} s", timed_out=True)
        return done

    def _receive(self, w: _Worker, done: list[tuple[int, SampleScore]]) -> bool:
        """Read every message ``w`` has sent; False when its pipe is closed (it exited)."""
        try:
            while w.conn.poll():
                index, payload = w.conn.recv()
                if index == _READY:
                    w.ready, w.deadline = True, math.inf
                elif index == _LOAD_ERROR:
                    raise RewardError(f"the reward function could not be loaded in a worker process:\n{payload}")
                else:
                    w.pending.remove(index)
                    done.append((index, payload))
                    w.deadline = time.monotonic() + self.timeout if w.pending else math.inf
        except (EOFError, OSError):
            return False
        return True

    def _fail(self, w: _Worker, done: list[tuple[int, SampleScore]], headline: str, timed_out: bool = False) -> None:
        """Kill ``w`` and free its slot; the sample it was scoring (a batched call: all its samples) fails with
        ``headline``, the rest of its chunk goes back to the queue."""
        assert self._slots is not None
        self._reap(w)
        self._slots[self._slots.index(w)] = None
        if not w.ready:
            raise RewardError(f"{headline} while loading the reward function")
        if not w.pending:
            return
        culprits = list(w.pending) if self.batched else [w.pending[0]]
        if len(culprits) > 1:
            headline += f" (a batched call on {len(culprits)} samples)"
        failed = _failed(headline, timed_out=timed_out)
        done.extend((i, failed) for i in culprits)
        if rest := list(w.pending)[len(culprits) :]:
            self._todo.appendleft(rest)
        w.pending = deque()

    @staticmethod
    def _reap(w: _Worker) -> None:
        """Kill ``w`` if it still runs, wait for it, release its pipes."""
        if w.process.exitcode is None:
            w.process.kill()
            w.process.join(5.0)
        w.conn.close()
        w.lifeline.close()
        if w.process.exitcode is not None:
            w.process.close()


__all__ = [
    "DEFAULT_TIMEOUT",
    "ON_REWARD_ERROR",
    "START_TIMEOUT",
    "BatchedReward",
    "OnRewardError",
    "RewardError",
    "RewardFn",
    "RewardOutput",
    "RewardPool",
    "SampleReward",
    "SampleScore",
    "Scores",
    "batched_reward",
    "default_workers",
    "is_batched",
    "load_reward_fn",
    "score_completions",
]
