"""The verifier's worker process: math-verify comparisons under a CPU-time limit (child side of the pool).

Started by :mod:`benchmarks.verifier` as a fresh interpreter (``python -c ...``) with one end of a
socket pair; it says ``("ready", cpu_s)`` once warmed up, then answers
``(task_id, gold, answer, timeout_s)`` messages with ``(task_id, correct, status, detail, cpu_s)``
until it reads ``None`` or the pipe closes. ``cpu_s`` is the process's CPU time when the message is
sent: the parent charges each task the CPU time the worker used since its previous message.

A verdict depends on the gold, the answer and ``timeout_s`` only, not on the tasks this worker ran
before nor on the machine's load:

* the limit is CPU time, not wall time: one ``ITIMER_PROF`` per task raises :class:`SoftTimeout` (a
  BaseException, so math-verify's ``except Exception`` cannot swallow it) once the task has used
  ``timeout_s`` seconds of CPU, however long other processes keep this one waiting;
* nothing computed for one task is reused by another: no cache of parses or results here, and
  sympy's cache and math-verify's parse caches are emptied around every task (which also frees a
  half-built giant after a timeout).
  A cache of parses made a verdict depend on history: an answer that timed out once in one worker
  (and dropped the cache) but finished in another (and was then served from the cache) gave 129
  ``ok`` and 5 ``timeout`` for one input in one batch. Identical (gold, answer) pairs of one call
  are compared once by the parent instead. What stays is state no task can avoid building: the
  imports and ANTLR's lexer/parser tables, which the warm-up fills for common answer shapes.

math-verify's own timeouts are switched off here: they use ``signal.alarm`` per call and report a
timeout as a plain False. Work stuck in C code that never returns to the interpreter (a
regular-expression backtrack, a bignum operation) never sees the signal: the parent kills the
process at the hard limit. As backstops for an orphaned worker, each task also gets an RLIMIT_CPU
budget, and an optional RLIMIT_AS cap turns runaway allocations into MemoryError (or a dead worker)
instead of swapping.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

_CPU_SLACK_S = 5
#: (gold, answer) pairs compared once at start-up: the imports, and the parser's tables for the
#: most common answer shapes (a cold first fraction, tuple or power costs up to ~0.25 s more CPU). The
#: warm-up adds ~0.5 s of CPU to a worker's start; more shapes would cost every start for little.
WARM_UP: tuple[tuple[str, str], ...] = (
    ("\\frac{1}{2}", "0.5"),
    ("x^2+\\frac{3}{4}", "x^{2}+\\frac{3}{4}"),
    ("(1, 2)", "[0,1)"),
    ("2\\sqrt{3}", "\\text{yes}"),
    ("1024", "2^{10000}"),  # also the first integer of more than 4300 digits (~0.2 s more when cold)
)


class SoftTimeout(BaseException):
    """Raised by SIGPROF inside a task that used up its CPU time."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise SoftTimeout


def cpu_seconds() -> float:
    """CPU time (user + system) used by this process so far."""
    return time.process_time()


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


def parse_answer(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of one answer string (never cached: see the module docstring)."""
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


#: math-verify's own caches keyed by the text it parses (``lru_cache(maxsize=20)`` each, in
#: ``math_verify.parser``): emptied like sympy's, or a repeated answer skips its parse.
MATH_VERIFY_CACHES = ("parse_latex_cached", "parse_expr_cached", "extract_latex")


def _clear_caches() -> None:
    """Empty every cache that one comparison fills and the next could hit (sympy's, math-verify's)."""
    from math_verify import parser
    from sympy.core.cache import clear_cache

    clear_cache()
    for name in MATH_VERIFY_CACHES:
        cached = getattr(parser, name, None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()


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


def _install_handler() -> None:
    if signal.getsignal(signal.SIGPROF) is not _on_alarm:
        signal.signal(signal.SIGPROF, _on_alarm)


def run_task(gold: str, answer: str, timeout_s: float) -> tuple[bool, str, str | None]:
    """``(correct, status, detail)`` of one comparison, stopped after ``timeout_s`` s of CPU time.

    Starts from an empty sympy cache; installs the SIGPROF handler when it is not there yet (which
    only works in the main thread, as in a worker).
    """
    _install_handler()
    _clear_caches()
    signal.setitimer(signal.ITIMER_PROF, timeout_s)
    try:
        correct, detail = compare(gold, answer)
        return bool(correct), "ok", detail
    except SoftTimeout:
        return False, "timeout", f"timed out after {timeout_s:g} s of CPU"
    except RecursionError:
        return False, "error", "RecursionError"
    except MemoryError:
        return False, "error", "MemoryError"
    except Exception as exc:  # noqa: BLE001 - any failure is a verdict, never a crash
        return False, "error", f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        _clear_caches()  # a half-built giant (after a timeout or MemoryError) must not linger


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
    """Warm up, say ``("ready", cpu_s)``, then answer tasks until ``None`` or EOF."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    _install_handler()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    for gold, answer in WARM_UP:  # imports and the parser's tables, before the first limit starts
        compare(gold, answer)
    _clear_caches()
    _limit_memory(max_memory_mb)
    conn.send(("ready", cpu_seconds()))
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
        except SoftTimeout:  # the signal fired between the task's end and its cancellation
            correct, status, detail = False, "timeout", f"timed out after {timeout_s:g} s of CPU"
        conn.send((task_id, correct, status, detail, cpu_seconds()))


def main(fd: int, max_memory_mb: int | None = None) -> None:
    """Entry point: ``fd`` is this end of the socket pair the parent passed in."""
    serve(Connection(fd), max_memory_mb)
