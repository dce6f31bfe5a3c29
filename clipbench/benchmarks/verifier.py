"""Answer verification: math-verify behind a pool of worker processes with a hard time limit per answer.

``verify(predictions, answers)`` returns one :class:`Verdict` per prediction and never raises
because of what a prediction contains (empty, ``None``, bytes, lone surrogates, 100k characters,
unbalanced braces, ``9^{9^{9^{9}}}``...):

1. in the calling process, the answer is extracted (:func:`benchmarks.extraction.extract_answer`:
   last balanced ``\\boxed{}``/``\\fbox{}``, then the set's fallbacks); this is linear-time and needs
   no time limit. Nothing found -> ``status="no_answer"``. Identical (gold, answer) pairs of one
   call are compared once and share the outcome;
2. a worker process parses gold and answer with math-verify and compares them
   (:mod:`benchmarks._worker`), stopped inside the worker once the task has used ``timeout_s``
   seconds of CPU time. Each worker holds at most two tasks: the running one and the next, waiting
   in its pipe so that the worker never idles on a round trip (a waiting task is handed to another
   worker if the running one hangs);
3. a worker whose task has used ``timeout_s + kill_grace_s`` of CPU without answering (stuck in C
   code), or has run for :data:`WALL_BACKSTOP_FACTOR` times that in wall time (a frozen or starved
   process), is killed and replaced: ``status="timeout"``. A worker that dies (segfault, OOM killer,
   CPU limit) gives ``status="error"`` and is replaced; so does any exception inside math-verify.

A verdict depends only on the gold, the answer and ``timeout_s``: not on the other items of the
call, their order, what a worker ran before, or the machine's load. That is why the limit is CPU
time (a worker kept waiting by other processes is not charged for it; on Linux the parent reads a
worker's CPU time from ``/proc``, elsewhere it falls back to wall time) and why workers keep no cache
from one task to the next (see :mod:`benchmarks._worker`). What is left: CPU time itself jitters by
some percent (more on a busy machine), so an answer that needs about ``timeout_s`` could land
either side. Answers over ``MAX_ANSWER_CHARS`` (1,000) characters are refused by length before any
parse (``no_answer``), which keeps the long, slow-to-parse answers of the adversarial batch (sums of
250 terms, 4-5 s of CPU at the 5 s default, whose verdict flipped once in 2,000 under load) out of
that zone: ``speed/verifier_adversarial.py`` then gave the same verdict to all 2,000 answers in two
runs. Two exceptions remain, both named in the verdict's ``detail``: the wall-clock
backstop above ("wall-clock backstop") fires only when a worker gets less than
1/:data:`WALL_BACKSTOP_FACTOR` of a core, and the optional batch deadline ("batch deadline") is
wall time by design. The price of a CPU-time limit: on a machine with fewer free cores than busy
workers, an answer that times out holds its worker for longer than ``timeout_s`` of wall time (2,000
answers with 40 pathological ones, 2 workers: 97-101 s on an idle machine, 200-240 s with about one
core taken by other work, where a wall-clock limit took 117 s, with 3 more timeouts that were the
load's doing); ``batch_deadline_s`` bounds it. Training and evaluation pass no batch deadline: it
would make rewards and scores depend on the machine's load, and a run must be deterministic.

Wall time of one call, worst case: W workers, n distinct (gold, answer) pairs to compare,
T = ``timeout_s``, G = ``kill_grace_s``. With a core per worker each answer takes at most T + G
(most pathological answers stop at T; one stuck in C code is killed at T + G and its worker
replaced, a start-up of ~1 s of CPU), so a call takes at most about ceil(n / W) * (T + G): e.g. 40
distinct answers that all time out at the default 5 s (+ 1 s grace) on 2 workers, 100-120 s. With
fewer free cores than busy workers each answer stretches with the load, up to the backstop
WALL_BACKSTOP_FACTOR * (T + G). With ``batch_deadline_s=D`` the call returns after at most D plus
the time to kill the busy workers (well under a second), whatever the inputs and the load: every
answer not verified by then is ``timeout`` with a detail saying "batch deadline".

Why worker processes, and why started this way: math-verify's own timeouts use ``signal.alarm``
and only work in a main thread, and switching them off lets pathological inputs hang for minutes;
``ProcessPoolExecutor`` cannot cancel a running task. Each worker is a fresh interpreter
(``subprocess`` + ``python -c``, the equivalent of the "spawn" start method) talking over a socket
pair: nothing is forked from a caller that may have torch or CUDA threads, and unlike
``multiprocessing`` the caller's ``__main__`` module (which may import torch) is not re-imported in
every worker. Workers live in a module-level pool created on first use, reused across calls, and
shut down at exit; their number is ``min(os.cpu_count(), 4)`` unless set with :func:`configure`,
``VerifierPool(workers=...)`` or the ``CLIPBENCH_VERIFY_WORKERS`` environment variable.
"""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from clipbench.benchmarks.extraction import (
    MAX_ANSWER_CHARS,
    check_fallbacks,
    clean_gold,
    extract_answer,
    format_number,
)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_KILL_GRACE_S = 1.0
DEFAULT_MAX_MEMORY_MB = 2048
DEFAULT_FALLBACKS: tuple[str, ...] = ("answer_is",)
STATUSES = ("ok", "no_answer", "timeout", "error")
_STARTUP_TIMEOUT_S = 120.0
#: Workers in a row that may miss _STARTUP_TIMEOUT_S before the call fails: one is replaced and
#: tried again (a start-up stalled by a loaded machine), the second such miss raises.
_MAX_SLOW_STARTS = 2
_PIPELINE_DEPTH = 2  # tasks queued per worker, so it never idles waiting for the parent's next send
_NOTHING_FOUND = f"no \\boxed{{}} (of at most {MAX_ANSWER_CHARS} characters) and no fallback matched"
_MAX_FAILED_STARTS = 3
#: A task is killed after this many times ``timeout_s + kill_grace_s`` of wall time even when it has
#: not used that much CPU (a frozen worker, or one starved by other load).
WALL_BACKSTOP_FACTOR = 4.0
_MIN_POLL_S = 0.01  # shortest wait between two looks at a busy worker's CPU time
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


Task = tuple[int, str, str]  # (index in the call, gold, extracted answer)


def _process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of process ``pid`` from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # the name (field 2) may hold spaces
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14, 15
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Verdict:
    """Outcome of one prediction.

    ``status``: ``"ok"`` (compared; ``correct`` says how it went), ``"no_answer"`` (nothing
    extractable), ``"timeout"`` (stopped at the time limit) or ``"error"`` (an exception or a dead
    worker); ``correct`` is False unless the status is ``"ok"``. ``extracted`` is the predicted
    answer that was compared, ``method`` the extractor that found it (``"boxed"`` or a fallback
    name), ``detail`` a human-readable note (error message, "compared as text", ...).
    """

    correct: bool
    status: str
    extracted: str | None
    method: str | None = None
    detail: str | None = None


def default_workers() -> int:
    """``$CLIPBENCH_VERIFY_WORKERS`` if set, else ``min(os.cpu_count(), 4)``."""
    env = os.environ.get("CLIPBENCH_VERIFY_WORKERS")
    if env:
        return _check_workers(int(env))
    return max(1, min(os.cpu_count() or 1, 4))


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _check_workers(workers: int) -> int:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers


def _as_text(value: Any) -> str | None:
    """Any prediction as valid UTF-8 text (lone surrogates and bad bytes become U+FFFD/'?')."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    return value.encode("utf-8", "replace").decode("utf-8")


def gold_string(answer: Any) -> str:
    """A gold answer as the cleaned string the workers compare against; empty/None raise ValueError."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return format_number(answer)
    text = _as_text(answer)
    gold = clean_gold(text) if text is not None else ""
    if not gold:
        raise ValueError(f"empty gold answer: {answer!r}")
    return gold


def prepare(prediction: Any, fallbacks: Sequence[str]) -> Verdict | tuple[str, str]:
    """Extract the answer in the caller's process: a final Verdict, or ``(answer, method)`` to compare."""
    try:
        text = _as_text(prediction)
        if text is None or not text.strip():
            return Verdict(False, "no_answer", None, detail="empty prediction")
        answer, method = extract_answer(text, fallbacks)
    except Exception as exc:  # noqa: BLE001 - a prediction must never crash the caller
        return Verdict(False, "error", None, detail=f"extraction failed: {type(exc).__name__}: {exc}"[:300])
    if answer is None or method is None:
        return Verdict(False, "no_answer", None, detail=_NOTHING_FOUND)
    return answer, method


def count_statuses(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """``{status: count}`` over all four statuses (zeros included)."""
    counts = Counter(v.status for v in verdicts)
    return {status: counts.get(status, 0) for status in STATUSES}


def _child_env() -> dict[str, str]:
    """The caller's environment, with this copy of ``benchmarks`` first on the worker's PYTHONPATH."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


class _Worker:
    """One worker process, the parent's end of its socket pair, and the tasks sent to it."""

    def __init__(self, max_memory_mb: int | None) -> None:
        parent_end, child_end = Pipe(duplex=True)
        fd = child_end.fileno()
        code = f"from clipbench.benchmarks._worker import main; main({fd}, {max_memory_mb!r})"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )
        finally:
            child_end.close()
        self.conn: Connection = parent_end
        self.started = time.monotonic()
        self.ready = False
        # Tasks sent and not answered, oldest first; the oldest is running, the rest wait in the pipe.
        self.inflight: deque[Task] = deque()
        self.cpu_mark = 0.0  # the worker's CPU time in its last message: where the running task began
        self.task_started = math.inf  # wall (monotonic) time the running task began

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    def start_task(self, cpu_mark: float | None = None) -> None:
        """The oldest in-flight task starts now (``cpu_mark``: the worker's CPU time at its start)."""
        if cpu_mark is not None:
            self.cpu_mark = cpu_mark
        self.task_started = time.monotonic() if self.inflight else math.inf

    def task_usage(self, now: float, cpu_limit: float) -> tuple[float, float]:
        """``(cpu_s, wall_s)`` the running task has used so far (CPU falls back to wall time).

        Below ``cpu_limit`` of wall time the wall time is returned as the CPU time, an upper bound
        for a single-threaded task that spares a read of /proc on every look.
        """
        wall = now - self.task_started
        cpu = _process_cpu_seconds(self.proc.pid) if wall >= cpu_limit else None
        return (wall if cpu is None else max(0.0, cpu - self.cpu_mark)), wall

    def stop(self, kill: bool) -> int | None:
        """End the process (SIGKILL when ``kill``, else ask it to exit) and return its exit code."""
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                kill = True
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            code = self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.conn.close()
        return code


class VerifierPool:
    """A set of reusable verification workers; use the module-level :func:`verify` unless you need two.

    ``workers``: number of processes (default :func:`default_workers`); ``kill_grace_s``: how long
    after ``timeout_s`` a silent worker is killed; ``max_memory_mb``: address-space cap per worker
    (None: no cap). Thread-safe (calls are serialised); after ``os.fork`` a child gets fresh workers.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        max_memory_mb: int | None = DEFAULT_MAX_MEMORY_MB,
    ) -> None:
        self.size = _check_workers(workers) if workers is not None else default_workers()
        self.kill_grace_s = kill_grace_s
        self.max_memory_mb = max_memory_mb
        self.replaced = 0  # workers killed or found dead and replaced, over the pool's life
        self.compared = 0  # (gold, answer) comparisons sent to workers, over the pool's life
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._failed_starts = 0
        self._slow_starts = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers. The pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            if os.getpid() == self._pid:
                for worker in self._workers:
                    worker.stop(kill=worker.busy)
            self._workers = []

    def start(self) -> VerifierPool:
        """Start the workers now and wait until they are ready (otherwise the first call does it)."""
        with self._lock:
            self._run(deque(), [], 1.0, wait_ready=True)
        return self

    def _spawn_missing(self) -> None:
        if os.getpid() != self._pid:  # forked: the workers belong to the parent process
            self._workers, self._pid = [], os.getpid()
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self.max_memory_mb))

    def _discard(self, worker: _Worker, kill: bool) -> int | None:
        self._workers.remove(worker)
        self.replaced += 1
        return worker.stop(kill=kill)

    # -- verification ----------------------------------------------------------------------------

    def verify(
        self,
        predictions: Sequence[Any],
        answers: Sequence[Any],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
        batch_deadline_s: float | None = None,
    ) -> list[Verdict]:
        """One Verdict per prediction, in order; see the module docstring for the statuses.

        ``timeout_s``: CPU seconds per answer. ``batch_deadline_s``: wall seconds for the whole call
        (None: no limit); answers not verified by then are ``timeout`` ("batch deadline").
        """
        started = time.monotonic()
        predictions, answers = list(predictions), list(answers)
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
        if not _positive_number(timeout_s):
            raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
        if batch_deadline_s is not None and not _positive_number(batch_deadline_s):
            raise ValueError(f"batch_deadline_s must be a positive number or None, got {batch_deadline_s!r}")
        fallbacks = check_fallbacks(fallbacks)
        golds = [gold_string(a) for a in answers]
        verdicts: list[Verdict | None] = [None] * len(predictions)
        extracted: dict[int, tuple[str, str, int]] = {}  # index -> (answer, method, task slot)
        slots: dict[tuple[str, str], int] = {}  # (gold, answer) -> slot: each pair compared once
        tasks: deque[Task] = deque()
        for i, (prediction, gold) in enumerate(zip(predictions, golds, strict=True)):
            prepared = prepare(prediction, fallbacks)
            if isinstance(prepared, Verdict):
                verdicts[i] = prepared
                continue
            answer, method = prepared
            slot = slots.setdefault((gold, answer), len(slots))
            if slot == len(tasks):
                tasks.append((slot, gold, answer))
            extracted[i] = (answer, method, slot)
        if tasks:
            deadline = math.inf if batch_deadline_s is None else started + batch_deadline_s
            with self._lock:
                if self._closed:
                    raise RuntimeError("this VerifierPool is closed")
                self.compared += len(tasks)
                results = self._run(tasks, [None] * len(tasks), float(timeout_s), deadline=deadline)
            for i, (answer, method, slot) in extracted.items():
                correct, status, detail = results[slot]
                verdicts[i] = Verdict(correct, status, answer, method, detail)
        return [v for v in verdicts if v is not None]

    def _run(
        self,
        tasks: deque[Task],
        results: list[Any],
        timeout_s: float,
        wait_ready: bool = False,
        deadline: float = math.inf,
    ) -> list[Any]:
        """Feed ``tasks`` to the workers until each has a result; ``wait_ready``: also until all started.

        ``deadline`` (monotonic time): then every task without a result gets a batch-deadline timeout.
        """
        try:
            while True:
                self._spawn_missing()
                busy = any(w.busy for w in self._workers)
                starting = any(not w.ready for w in self._workers)
                if not tasks and not busy and not (wait_ready and starting):
                    return results
                if time.monotonic() >= deadline:
                    self._expire(tasks, results, deadline)
                    return results
                self._dispatch(tasks, results, timeout_s)
                self._collect(tasks, results, timeout_s, deadline)
                self._enforce_deadlines(tasks, results, timeout_s)
        finally:
            for worker in [w for w in self._workers if w.busy]:  # interrupted mid-call
                self._discard(worker, kill=True)

    def _expire(self, tasks: deque[Task], results: list[Any], deadline: float) -> None:
        """The batch deadline has passed: stop the busy workers; what has no result is a timeout."""
        for worker in [w for w in self._workers if w.busy]:
            self._discard(worker, kill=True)
        note = "batch deadline reached before this answer was verified"
        for i, result in enumerate(results):
            if result is None:
                results[i] = (False, "timeout", note)
        tasks.clear()

    def _dispatch(self, tasks: deque[Task], results: list[Any], timeout_s: float) -> None:
        for worker in list(self._workers):
            while tasks and worker.ready and len(worker.inflight) < _PIPELINE_DEPTH:
                task = tasks[0]
                try:
                    if worker.proc.poll() is not None:  # found dead: an idle worker costs no verdict
                        raise BrokenPipeError
                    worker.conn.send((*task, timeout_s))
                except OSError:
                    self._on_death(worker, tasks, results)
                    break
                tasks.popleft()
                worker.inflight.append(task)
                if len(worker.inflight) == 1:
                    worker.start_task()  # an idle worker: its CPU time is still its last message's

    def _hard_limits(self, timeout_s: float) -> tuple[float, float]:
        """``(cpu_s, wall_s)`` after which a running task is killed."""
        cpu = timeout_s + self.kill_grace_s
        return cpu, WALL_BACKSTOP_FACTOR * cpu

    def _collect(self, tasks: deque[Task], results: list[Any], timeout_s: float, deadline: float) -> None:
        pending = {w.conn: w for w in self._workers if w.busy or not w.ready}
        if not pending:
            return
        now = time.monotonic()
        cpu_limit, wall_limit = self._hard_limits(timeout_s)
        waits = [deadline - now]
        for w in pending.values():
            if w.busy:  # CPU time grows at most as fast as wall time: look again when it could be up
                cpu, wall = w.task_usage(now, cpu_limit)
                waits.append(max(_MIN_POLL_S, min(cpu_limit - cpu, wall_limit - wall)))
            else:
                waits.append(w.started + _STARTUP_TIMEOUT_S - now)
        for conn in wait(list(pending), timeout=max(0.0, min(waits))):
            worker = pending[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self._on_death(worker, tasks, results)
                continue
            if not worker.ready:
                worker.ready = isinstance(message, tuple) and message[0] == "ready"
                if worker.ready:
                    worker.cpu_mark = message[1]
                self._failed_starts = 0
                self._slow_starts = 0
                continue
            index, correct, status, detail, cpu_mark = message
            if worker.inflight and index == worker.inflight[0][0]:
                results[index] = (correct, status, detail)
                worker.inflight.popleft()
                # the worker has gone on to its next queued task: that task starts now
                worker.start_task(cpu_mark)

    @staticmethod
    def _requeue_waiting(worker: _Worker, tasks: deque[Task]) -> None:
        """Give back the tasks queued behind the running one: they never started."""
        tasks.extendleft(reversed(list(worker.inflight)[1:]))
        worker.inflight.clear()

    def _on_death(self, worker: _Worker, tasks: deque[Task], results: list[Any]) -> None:
        running = worker.inflight[0] if worker.inflight else None
        self._requeue_waiting(worker, tasks)
        was_ready = worker.ready
        code = self._discard(worker, kill=True)
        if running is not None:
            results[running[0]] = (False, "error", f"verifier worker died (exit code {code})")
        elif not was_ready:
            self._failed_starts += 1
            if self._failed_starts >= _MAX_FAILED_STARTS:
                raise RuntimeError(
                    f"verifier workers fail to start (last exit code {code}); "
                    "is math-verify installed for this interpreter? (see the worker's stderr)"
                )

    def _enforce_deadlines(self, tasks: deque[Task], results: list[Any], timeout_s: float) -> None:
        now = time.monotonic()
        cpu_limit, wall_limit = self._hard_limits(timeout_s)
        for worker in list(self._workers):
            cpu, wall = worker.task_usage(now, cpu_limit) if worker.busy else (0.0, 0.0)
            if worker.busy and (cpu >= cpu_limit or wall >= wall_limit):
                index = worker.inflight[0][0]
                self._requeue_waiting(worker, tasks)
                self._discard(worker, kill=True)
                if cpu >= cpu_limit:
                    detail = f"killed at the hard time limit ({cpu_limit:g} s of CPU)"
                else:
                    detail = (
                        f"killed at the wall-clock backstop ({wall_limit:g} s, before its CPU limit): a "
                        f"frozen worker, or one that got less than 1/{WALL_BACKSTOP_FACTOR:g} of a core"
                    )
                results[index] = (False, "timeout", detail)
            elif not worker.ready and now >= worker.started + _STARTUP_TIMEOUT_S:
                self._discard(worker, kill=True)  # a replacement starts on the next pass
                self._slow_starts += 1
                if self._slow_starts >= _MAX_SLOW_STARTS:
                    raise RuntimeError(
                        f"{self._slow_starts} verifier workers in a row did not start within "
                        f"{_STARTUP_TIMEOUT_S:g} s each"
                    )


_default_pool: VerifierPool | None = None
_default_lock = threading.Lock()


def get_pool() -> VerifierPool:
    """The module-level pool, created on first use (and re-created in a forked child)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool._closed:
            _default_pool = VerifierPool()
        return _default_pool


def configure(workers: int | None = None, **kwargs: Any) -> VerifierPool:
    """Replace the module-level pool by ``VerifierPool(workers, **kwargs)`` (the old one is closed)."""
    global _default_pool
    with _default_lock:
        old, _default_pool = _default_pool, VerifierPool(workers, **kwargs)
    if old is not None:
        old.close()
    return _default_pool


def shutdown() -> None:
    """Stop the module-level pool's workers (registered with atexit; a later call starts new ones)."""
    global _default_pool
    with _default_lock:
        old, _default_pool = _default_pool, None
    if old is not None:
        old.close()


atexit.register(shutdown)


def verify(
    predictions: Sequence[Any],
    answers: Sequence[Any],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
    batch_deadline_s: float | None = None,
) -> list[Verdict]:
    """Verify ``predictions`` against gold ``answers`` with the module-level pool.

    ``timeout_s`` is the limit per answer in CPU seconds (hard: a worker still busy after
    ``kill_grace_s`` more is killed); ``fallbacks`` are the extractors tried after ``\\boxed{}`` (a
    spec's ``fallbacks``); ``batch_deadline_s`` bounds the wall time of the whole call (answers not
    verified by then are ``timeout``, detail "batch deadline"). Worst cases: the module docstring.
    """
    return get_pool().verify(predictions, answers, timeout_s, fallbacks, batch_deadline_s)
