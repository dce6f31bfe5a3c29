"""The verifier's worker process: math-verify comparisons under a deadline (child side of the pool).

Started by :mod:`benchmarks.verifier` as a fresh interpreter (``python -c ...``) with one end of a
socket pair; it answers ``(task_id, gold, answer, timeout_s)`` messages with
``(task_id, correct, status, detail)`` until it reads ``None`` or the pipe closes.

math-verify's own timeouts are switched off here: they use ``signal.alarm`` per call, which would
cancel ours, and they report a timeout as a plain False. Instead one ``ITIMER_REAL`` per task raises
:class:`SoftTimeout` (a BaseException, so math-verify's ``except Exception`` cannot swallow it). Work
stuck in C code that never returns to the interpreter (a regular-expression backtrack, a bignum
operation) never sees that signal: the parent kills the process at the hard deadline. After a
timeout or a MemoryError the worker drops its caches, so a half-built giant cannot linger. As backstops for an orphaned worker, each task also gets an RLIMIT_CPU budget, and an
optional RLIMIT_AS cap turns runaway allocations into MemoryError (or a dead worker) instead of
swapping.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
from multiprocessing.connection import Connection
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

_CPU_SLACK_S = 5


class SoftTimeout(BaseException):
    """Raised by SIGALRM inside a task that ran past its time limit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise SoftTimeout


def _wrap(answer: str) -> str:
    """Text for math-verify's parser: ``\\boxed{answer}`` when its braces balance, else ``$answer$``."""
    depth = 0
    i = 0
    while i < len(answer):
        c = answer[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            break
        i += 1
    return f"\\boxed{{{answer}}}" if depth == 0 else f"${answer}$"


@functools.lru_cache(maxsize=8192)
def parse_answer(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of one answer string (cached: golds repeat k times, answers often)."""
    from math_verify import parse

    return tuple(parse(_wrap(answer), parsing_timeout=None))


def compare(gold: str, answer: str) -> tuple[bool, str | None]:
    """``(correct, detail)`` for a gold string and an extracted answer string."""
    from math_verify import verify
    from sympy import Basic, MatrixBase

    gold_parsed = parse_answer(gold)
    answer_parsed = parse_answer(answer)
    if not gold_parsed:
        return False, "gold answer not parsed by math-verify"
    if not answer_parsed:
        return False, "answer not parsed by math-verify"
    correct = verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None)
    if not any(isinstance(g, (Basic, MatrixBase)) for g in gold_parsed):
        return correct, "gold not parsed to an expression: compared as text"
    return correct, None


def _drop_caches() -> None:
    from sympy.core.cache import clear_cache

    parse_answer.cache_clear()
    clear_cache()


def _set_cpu_budget(seconds: float) -> None:
    """Let the kernel end this process once it has used ``seconds`` more CPU (orphan backstop)."""
    if resource is None:
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    budget = math.ceil(used.ru_utime + used.ru_stime + seconds) + _CPU_SLACK_S
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        budget = min(budget, hard)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (budget, hard))
    except (ValueError, OSError):  # some platforms refuse; the parent's hard deadline still holds
        pass


def run_task(gold: str, answer: str, timeout_s: float) -> tuple[bool, str, str | None]:
    """``(correct, status, detail)`` of one comparison, with a soft deadline of ``timeout_s``.

    Needs the SIGALRM handler :func:`serve` installs (``signal.signal(signal.SIGALRM, _on_alarm)``).
    """
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        correct, detail = compare(gold, answer)
        return bool(correct), "ok", detail
    except SoftTimeout:
        _drop_caches()
        return False, "timeout", f"timed out after {timeout_s:g} s"
    except RecursionError:
        return False, "error", "RecursionError"
    except MemoryError:
        _drop_caches()
        return False, "error", "MemoryError"
    except Exception as exc:  # noqa: BLE001 - any failure is a verdict, never a crash
        return False, "error", f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _limit_memory(max_memory_mb: int | None) -> None:
    if resource is None or not max_memory_mb:
        return
    limit = max_memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # e.g. macOS rejects RLIMIT_AS: run without the cap
        pass


def serve(conn: Connection, max_memory_mb: int | None = None) -> None:
    """Warm up, say ``"ready"``, then answer tasks until ``None`` or EOF."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    compare("1", "1")  # import math-verify, sympy and antlr before the first deadline starts
    _limit_memory(max_memory_mb)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, gold, answer, timeout_s = message
        _set_cpu_budget(timeout_s)
        try:
            correct, status, detail = run_task(gold, answer, timeout_s)
        except SoftTimeout:  # the alarm fired between the task's end and its cancellation
            correct, status, detail = False, "timeout", f"timed out after {timeout_s:g} s"
        conn.send((task_id, correct, status, detail))


def main(fd: int, max_memory_mb: int | None = None) -> None:
    """Entry point: ``fd`` is this end of the socket pair the parent passed in."""
    serve(Connection(fd), max_memory_mb)
