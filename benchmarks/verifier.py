"""Answer verification: math-verify behind a pool of worker processes with a hard time limit per answer.

``verify(predictions, answers)`` returns one :class:`Verdict` per prediction and never raises
because of what a prediction contains (empty, ``None``, bytes, lone surrogates, 100k characters,
unbalanced braces, ``9^{9^{9^{9}}}``...):

1. in the calling process, the answer is extracted (:func:`benchmarks.extraction.extract_answer`:
   last balanced ``\\boxed{}``/``\\fbox{}``, then the set's fallbacks); this is linear-time and needs
   no time limit. Nothing found -> ``status="no_answer"``;
2. a worker process parses gold and answer with math-verify and compares them
   (:mod:`benchmarks._worker`), with a soft deadline of ``timeout_s`` raised inside the worker.
   Each worker holds at most two tasks: the running one and the next, waiting in its pipe so that
   the worker never idles on a round trip (a waiting task is handed to another worker if the
   running one hangs);
3. a worker that has not answered by ``timeout_s + kill_grace_s`` (stuck in C code) is killed and
   replaced: ``status="timeout"``. A worker that dies (segfault, OOM killer, CPU limit) gives
   ``status="error"`` and is replaced; so does any exception inside math-verify.

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

from benchmarks.extraction import MAX_ANSWER_CHARS, check_fallbacks, clean_gold, extract_answer, format_number

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_KILL_GRACE_S = 1.0
DEFAULT_MAX_MEMORY_MB = 2048
DEFAULT_FALLBACKS: tuple[str, ...] = ("answer_is",)
STATUSES = ("ok", "no_answer", "timeout", "error")
_STARTUP_TIMEOUT_S = 120.0
_PIPELINE_DEPTH = 2  # tasks queued per worker, so it never idles waiting for the parent's next send
_NOTHING_FOUND = f"no \\boxed{{}} (of at most {MAX_ANSWER_CHARS} characters) and no fallback matched"
_MAX_FAILED_STARTS = 3


Task = tuple[int, str, str]  # (index in the call, gold, extracted answer)


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
        code = f"from benchmarks._worker import main; main({fd}, {max_memory_mb!r})"
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
        self.deadline = math.inf  # hard deadline of the running task

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

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
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._failed_starts = 0

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
    ) -> list[Verdict]:
        """One Verdict per prediction, in order; see the module docstring for the statuses."""
        predictions, answers = list(predictions), list(answers)
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
        fallbacks = check_fallbacks(fallbacks)
        golds = [gold_string(a) for a in answers]
        verdicts: list[Verdict | None] = [None] * len(predictions)
        extracted: dict[int, tuple[str, str]] = {}
        tasks: deque[Task] = deque()
        for i, (prediction, gold) in enumerate(zip(predictions, golds, strict=True)):
            prepared = prepare(prediction, fallbacks)
            if isinstance(prepared, Verdict):
                verdicts[i] = prepared
            else:
                extracted[i] = prepared
                tasks.append((i, gold, prepared[0]))
        if tasks:
            with self._lock:
                if self._closed:
                    raise RuntimeError("this VerifierPool is closed")
                results = self._run(tasks, [None] * len(predictions), float(timeout_s))
            for i, (answer, method) in extracted.items():
                correct, status, detail = results[i]
                verdicts[i] = Verdict(correct, status, answer, method, detail)
        return [v for v in verdicts if v is not None]

    def _run(
        self, tasks: deque[Task], results: list[Any], timeout_s: float, wait_ready: bool = False
    ) -> list[Any]:
        """Feed ``tasks`` to the workers until each has a result; ``wait_ready``: also until all started."""
        try:
            while True:
                self._spawn_missing()
                busy = any(w.busy for w in self._workers)
                starting = any(not w.ready for w in self._workers)
                if not tasks and not busy and not (wait_ready and starting):
                    return results
                self._dispatch(tasks, results, timeout_s)
                self._collect(tasks, results, timeout_s)
                self._enforce_deadlines(tasks, results)
        finally:
            for worker in [w for w in self._workers if w.busy]:  # interrupted mid-call
                self._discard(worker, kill=True)

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
                    worker.deadline = time.monotonic() + timeout_s + self.kill_grace_s

    def _collect(self, tasks: deque[Task], results: list[Any], timeout_s: float) -> None:
        pending = {w.conn: w for w in self._workers if w.busy or not w.ready}
        if not pending:
            return
        deadlines = [w.deadline if w.busy else w.started + _STARTUP_TIMEOUT_S for w in pending.values()]
        for conn in wait(list(pending), timeout=max(0.0, min(deadlines) - time.monotonic())):
            worker = pending[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self._on_death(worker, tasks, results)
                continue
            if not worker.ready:
                worker.ready = message == "ready"
                self._failed_starts = 0
                continue
            index, correct, status, detail = message
            if worker.inflight and index == worker.inflight[0][0]:
                results[index] = (correct, status, detail)
                worker.inflight.popleft()
                # the worker has gone on to its next queued task: that task's clock starts now
                worker.deadline = (
                    time.monotonic() + timeout_s + self.kill_grace_s if worker.busy else math.inf
                )

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

    def _enforce_deadlines(self, tasks: deque[Task], results: list[Any]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.busy and now >= worker.deadline:
                index = worker.inflight[0][0]
                self._requeue_waiting(worker, tasks)
                self._discard(worker, kill=True)
                results[index] = (False, "timeout", "killed at the hard time limit")
            elif not worker.ready and now >= worker.started + _STARTUP_TIMEOUT_S:
                self._discard(worker, kill=True)
                raise RuntimeError(f"a verifier worker did not start within {_STARTUP_TIMEOUT_S:g} s")


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
) -> list[Verdict]:
    """Verify ``predictions`` against gold ``answers`` with the module-level pool.

    ``timeout_s`` is the limit per answer (hard: a worker still busy ``kill_grace_s`` later is
    killed); ``fallbacks`` are the extractors tried after ``\\boxed{}`` (a spec's ``fallbacks``).
    """
    return get_pool().verify(predictions, answers, timeout_s, fallbacks)
