"""The verifier: golden equivalences, extraction through verify, and the pool's hard time limit."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import types

import pytest

from clipbench import benchmarks
from clipbench.benchmarks import Verdict, VerifierPool, verifier

pytest.importorskip("math_verify", reason="the verifier needs math-verify (the 'eval' extra)")

TIMEOUT_S = 2.0
GRACE_S = 1.0
# Worker start-up/replacement on a shared, loaded machine (12 s seen with four test processes and
# two training jobs on 2 cores): the bound only tells a kill from a hang, so it is generous.
SLACK_S = 60.0


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, kill_grace_s=GRACE_S) as p:
        p.start()
        yield p


def _healthy(pool: VerifierPool) -> None:
    verdicts = pool.verify(["so \\boxed{\\frac{1}{2}}", "\\boxed{3}"], ["0.5", "4"], timeout_s=TIMEOUT_S)
    assert [(v.status, v.correct) for v in verdicts] == [("ok", True), ("ok", False)]


EQUAL = [
    ("27", "\\boxed{27}"),
    ("27", "\\boxed{27.0}"),
    ("27", "\\boxed{\\$27}"),
    ("27", "\\boxed{27\\%}"),
    ("27", "\\boxed{027}"),
    ("27", "\\boxed{\\text{27}}"),
    ("\\$27", "\\boxed{27}"),
    ("27.0", "\\boxed{27}"),
    ("1000", "\\boxed{1,000}"),
    ("1000", "\\boxed{1{,}000}"),
    ("\\frac{1}{2}", "\\boxed{0.5}"),
    ("0.5", "\\boxed{\\frac12}"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}"),
    ("\\frac{\\sqrt2}{2}", "\\boxed{\\sqrt{2}/2}"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    ("[1,2)", "\\boxed{[1,2)}"),
    ("(-\\infty, 0]", "\\boxed{(-\\infty,0]}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3,\\pi/2)}"),
    ("(1,-16,-4,43)", "\\boxed{(1, -16, -4, 43)}"),
    ("x^2+1", "\\boxed{1+x^2}"),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("3, 5, 7", "\\boxed{7,5,3}"),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("\\frac{\\sqrt{3}}{2}", "we get \\boxed{\\frac{\\sqrt{3}}{{2}}} at last"),  # nested braces
    ("\\text{(C)}", "\\boxed{C}"),
    ("5", "\\fbox{5}"),
    ("-1/3", "\\boxed{-\\frac{1}{3}}"),
]

UNEQUAL = [
    ("27", "\\boxed{28}"),
    ("27", "\\boxed{27.5}"),
    ("27", "\\boxed{270}"),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    ("[1,2)", "\\boxed{(1,2)}"),
    ("[1,2)", "\\boxed{[1,2]}"),
    ("(1,2)", "\\boxed{(2,1)}"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\sqrt{2}}"),
    ("x^2+1", "\\boxed{x^2-1}"),
    ("\\pi", "\\boxed{3.14}"),
    ("27", "\\boxed{27} and later \\boxed{26}"),  # the last box counts
]


def test_golden_pairs(pool):
    golds = [g for g, _ in EQUAL + UNEQUAL]
    predictions = [p for _, p in EQUAL + UNEQUAL]
    verdicts = pool.verify(predictions, golds, timeout_s=TIMEOUT_S)
    assert all(v.status == "ok" for v in verdicts), [v for v in verdicts if v.status != "ok"]
    got = [v.correct for v in verdicts]
    expected = [True] * len(EQUAL) + [False] * len(UNEQUAL)
    wrong = [(g, p) for g, p, c, e in zip(golds, predictions, got, expected, strict=True) if c != e]
    assert wrong == []


def test_numeric_gold_types_and_extracted_text(pool):
    verdicts = pool.verify(
        ["x \\boxed{\\frac{\\sqrt{3}}{2}} y", "\\boxed{27}", "\\boxed{27}"], ["\\frac{\\sqrt3}{2}", 27.0, 27]
    )
    assert [v.correct for v in verdicts] == [True, True, True]
    assert verdicts[0] == Verdict(True, "ok", "\\frac{\\sqrt{3}}{2}", "boxed", None)


def test_fallbacks_are_opt_in(pool):
    predictions = [
        "The final answer is $\\frac{1}{2}$. I hope it is correct.",
        "so it is 42 apples",
        "#### 1,000",
    ]
    golds = ["0.5", "42", "1000"]
    strict = pool.verify(predictions, golds, fallbacks=())
    assert [v.status for v in strict] == ["no_answer"] * 3
    assert all(v.extracted is None and not v.correct for v in strict)
    loose = pool.verify(predictions, golds, fallbacks=("answer_is", "hashes", "last_number"))
    assert [(v.correct, v.method) for v in loose] == [
        (True, "answer_is"),
        (True, "last_number"),
        (True, "hashes"),
    ]


def test_empty_and_none_like_predictions(pool):
    verdicts = pool.verify(["", "   \n", None, "no answer at all", "\\boxed{}"], ["1"] * 5)
    assert [v.status for v in verdicts] == ["no_answer"] * 5
    assert not any(v.correct for v in verdicts)


def test_argument_errors_are_raised_up_front(pool):
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        pool.verify(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="empty gold"):
        pool.verify(["\\boxed{1}"], [None])
    with pytest.raises(ValueError, match="timeout_s"):
        pool.verify(["\\boxed{1}"], ["1"], timeout_s=0)
    with pytest.raises(ValueError, match="known"):
        pool.verify(["\\boxed{1}"], ["1"], fallbacks=("nope",))
    assert pool.verify([], []) == []


# -- adversarial inputs ----------------------------------------------------------------------------

ADVERSARIAL = {
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "huge power": "\\boxed{7^{123456789}}",
    "tower of tens": "\\boxed{10^{10^{10}}}",
    "huge factorial": "\\boxed{(10^{10})!}",
    "huge sum": "\\boxed{\\sum_{n=1}^{10^{12}} n^{n}}",
    "nested fractions": "\\boxed{" + "\\frac{1}{" * 150 + "2" + "}" * 150 + "}",
    # the deep-nesting cases stay just under MAX_ANSWER_CHARS (1,000), so they reach the parser
    "nested parentheses": "\\boxed{" + "(" * 499 + "1" + ")" * 499 + "}",
    "nested groups": "\\boxed{" + "{" * 499 + "1" + "}" * 499 + "}",
    "exponent chain": "\\boxed{" + "x^" * 499 + "2}",
    "100k characters": "a" * 100_000 + " \\boxed{27}",
    "100k inside a box": "\\boxed{" + "1+" * 50_000 + "1}",
    "100k unclosed boxes": "\\boxed{" * 15_000,
    "unbalanced braces": "\\boxed{\\frac{1}{2}",
    "stray closers": "}}}} \\boxed{1}}}} {{{",
    "lone surrogates": "\ud800\udfff \\boxed{27} \udcff",
    "NUL and control bytes": "\x00\x01\x1b[31m \\boxed{\x00}",
    "non-UTF-8 bytes": b"\xff\xfe\xfa \\boxed{27}",
    "empty": "",
    "None": None,
    "a number, not text": 27,
    "999-digit number": "\\boxed{" + "9" * 999 + "}",
    "2000-digit number": "\\boxed{" + "9" * 1999 + "}",  # over MAX_ANSWER_CHARS: refused by length
    "big matrix": "\\boxed{\\begin{pmatrix}" + "&".join(["1"] * 50) + "\\\\" * 50 + "\\end{pmatrix}}",
}


@pytest.fixture(scope="module")
def wide_pool():
    """Four workers even on two cores: more workers than cores (the limit is CPU time, so a worker
    that waits for a core is not charged for it; the wall-clock backstop bounds the wait)."""
    with VerifierPool(workers=4, kill_grace_s=GRACE_S) as p:
        p.start()
        yield p


def test_adversarial_inputs_return_within_the_limit(wide_pool):
    pool, names = wide_pool, list(ADVERSARIAL)
    start = time.monotonic()
    verdicts = pool.verify([ADVERSARIAL[n] for n in names], ["27"] * len(names), timeout_s=TIMEOUT_S)
    elapsed = time.monotonic() - start
    # the module docstring's worst case: ceil(n / W) rounds of at most the wall-clock backstop each
    rounds = math.ceil(len(names) / pool.size)
    assert elapsed < rounds * benchmarks.verifier.WALL_BACKSTOP_FACTOR * (TIMEOUT_S + GRACE_S) + SLACK_S
    for name, verdict in zip(names, verdicts, strict=True):
        assert verdict.status in benchmarks.verifier.STATUSES, name
        if verdict.status != "ok":
            assert verdict.correct is False, name
    by_name = dict(zip(names, verdicts, strict=True))
    assert by_name["power tower"].status == "timeout"
    assert by_name["huge power"].status == "timeout"
    assert by_name["100k characters"].correct  # long, but harmless
    assert by_name["lone surrogates"].correct and by_name["non-UTF-8 bytes"].correct
    assert by_name["100k inside a box"].status == "no_answer"  # longer than MAX_ANSWER_CHARS
    assert by_name["2000-digit number"].status == "no_answer"
    for name in ["nested parentheses", "nested groups", "exponent chain", "999-digit number"]:
        assert by_name[name].extracted is not None, name  # extracted: the parser saw it
    for name in ["empty", "None", "100k unclosed boxes", "unbalanced braces"]:
        assert by_name[name].status == "no_answer", name
    _healthy(pool)


def test_single_pathological_answer_is_cut_at_the_limit(pool):
    start = time.monotonic()
    [verdict] = pool.verify(["\\boxed{9^{9^{9^{9}}}}"], ["1"], timeout_s=TIMEOUT_S)
    assert time.monotonic() - start < TIMEOUT_S + GRACE_S + SLACK_S
    assert (verdict.status, verdict.correct) == ("timeout", False)
    _healthy(pool)


# -- a verdict depends on the input and the limit only -------------------------------------------

SHORT_S = 0.5  # a small limit: the pathological answers below need seconds of CPU
PATHOLOGICAL = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{7^{123456789}}", "so \\boxed{(10^{10})!}"]
NORMAL = [
    ("so \\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{3}", "4"),
    ("x = \\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("\\boxed{(1, 2)}", "(1,2)"),
    ("the answer is 7", "7"),
]


def _outcomes(verdicts: list[Verdict]) -> list[tuple[str, bool]]:
    return [(v.status, v.correct) for v in verdicts]


def test_verdicts_do_not_depend_on_the_batch(pool):
    """The same items, verified again, reversed, and mixed with others, get the same verdicts."""
    items = [(p, "27") for p in PATHOLOGICAL] + NORMAL + [(PATHOLOGICAL[0], "27"), NORMAL[0]]  # 2 repeats
    items = items[::2] + items[1::2]  # pathological and normal interleaved

    def run(batch: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, bool]]:
        verdicts = pool.verify([p for p, _ in batch], [g for _, g in batch], timeout_s=SHORT_S)
        out: dict[tuple[str, str], tuple[str, bool]] = {}
        for item, outcome in zip(batch, _outcomes(verdicts), strict=True):
            assert out.setdefault(item, outcome) == outcome, item  # a repeat within the batch agrees
        return out

    first = run(items)
    assert [first[(p, "27")][0] for p in PATHOLOGICAL] == ["timeout"] * len(PATHOLOGICAL)
    assert [first[item] for item in NORMAL] == [
        ("ok", True),
        ("ok", False),
        ("ok", True),
        ("ok", True),
        ("ok", True),
    ]
    assert run(items) == first
    assert run(items[::-1]) == first
    others = [("\\boxed{10^{10^{10}}}", "1"), ("\\boxed{5}", "5"), ("\\boxed{\\frac{3}{4}}", "0.75")]
    mixed = run(others + items[::3] + others + items)
    assert {item: mixed[item] for item in first} == first
    _healthy(pool)


def test_a_repeated_pair_is_compared_once(pool):
    before = pool.compared
    verdicts = pool.verify(
        ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2}", "so \\boxed{9^{9^{9^{9}}}}", "\\boxed{2}", "\\boxed{2}"],
        ["27", "2", "27", "2", "3"],
        timeout_s=SHORT_S,
    )
    assert pool.compared - before == 3  # (27, tower), (2, 2), (3, 2)
    assert _outcomes(verdicts) == [
        ("timeout", False),
        ("ok", True),
        ("timeout", False),
        ("ok", True),
        ("ok", False),
    ]


def test_a_verdict_does_not_depend_on_what_the_worker_saw_before():
    """An answer whose parse needs ~1 s of CPU times out at 0.5 s even right after the same worker
    finished it under a larger limit (a cache of parses, ours or math-verify's, served it at once)."""
    slow = "\\boxed{" + "+".join(f"x_{{{i}}}" for i in range(60)) + "}"
    with VerifierPool(workers=1, kill_grace_s=GRACE_S) as single:
        single.start()
        [done] = single.verify([slow], ["27"], timeout_s=20.0)
        assert (done.status, done.correct) == ("ok", False)
        [again] = single.verify([slow], ["27"], timeout_s=SHORT_S)
        assert again.status == "timeout" and "CPU" in again.detail
        assert single.replaced == 0  # the soft limit stopped it: the same worker ran both


def test_a_starved_worker_is_not_charged_for_waiting():
    """The limit is CPU time: a worker kept off the CPU (here: stopped 90% of the time, as on a
    machine with far more busy processes than cores) still finishes an answer that needs a fraction
    of its limit, though its wall time is past the limit."""
    medium, limit = "\\boxed{3^{1000000}}", SHORT_S  # ~0.1 s of CPU
    with VerifierPool(workers=1, kill_grace_s=GRACE_S) as single:
        single.start()
        [pid] = _idle_pids(single)
        done = threading.Event()

        def starve() -> None:
            with contextlib.suppress(ProcessLookupError):  # killed: the assertions below say so
                while not done.is_set():
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(0.18)
                    os.kill(pid, signal.SIGCONT)
                    time.sleep(0.02)

        starver = threading.Thread(target=starve)
        start = time.monotonic()
        starver.start()
        try:
            [verdict] = single.verify([medium], ["27"], timeout_s=limit)
        finally:
            done.set()
            starver.join()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert time.monotonic() - start > limit  # a wall-clock limit would have cut it
        assert (verdict.status, verdict.correct) == ("ok", False), verdict.detail
        _healthy(single)


def test_batch_deadline_marks_the_rest_timeout(pool):
    deadline = 1.5
    normal = [("\\boxed{5}", "5"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{6}", "7")]
    slow = [(f"\\boxed{{{b}^{{{b}^{{{b}^{{9}}}}}}}}", "1") for b in (3, 4, 5, 6, 7, 8)]
    batch = normal + slow
    start = time.monotonic()
    verdicts = pool.verify(
        [p for p, _ in batch], [g for _, g in batch], timeout_s=10.0, batch_deadline_s=deadline
    )
    elapsed = time.monotonic() - start
    assert elapsed < deadline + GRACE_S
    assert _outcomes(verdicts[:3]) == [("ok", True), ("ok", True), ("ok", False)]
    for verdict in verdicts[3:]:
        assert verdict.status == "timeout" and not verdict.correct
        assert "batch deadline" in verdict.detail
    _healthy(pool)  # the workers stopped at the deadline were replaced


def test_batch_deadline_covers_the_workers_start():
    with VerifierPool(workers=1) as cold:  # not started: its worker needs seconds to start
        start = time.monotonic()
        verdicts = cold.verify(["\\boxed{1}", ""], ["1", "1"], batch_deadline_s=0.2)
        assert time.monotonic() - start < 0.2 + GRACE_S
        assert [v.status for v in verdicts] == ["timeout", "no_answer"]
        assert "batch deadline" in verdicts[0].detail
    with pytest.raises(ValueError, match="batch_deadline_s"):
        VerifierPool(workers=1).verify(["\\boxed{1}"], ["1"], batch_deadline_s=0)


# -- worker failures -------------------------------------------------------------------------------


def _idle_pids(pool: VerifierPool) -> list[int]:
    return [w.proc.pid for w in pool._workers]


def test_hung_worker_is_killed_and_replaced():
    """A worker that never answers (frozen with SIGSTOP: no soft timeout can fire) is killed.

    The tasks queued behind the stuck one never started: they go to the replacement worker.
    """
    with VerifierPool(workers=1, kill_grace_s=GRACE_S) as single:
        single.start()
        [pid] = _idle_pids(single)
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        verdicts = single.verify(["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"], ["1", "2", "4"], timeout_s=1.0)
        assert time.monotonic() - start < 1.0 + GRACE_S + SLACK_S
        assert [(v.status, v.correct) for v in verdicts] == [("timeout", False), ("ok", True), ("ok", False)]
        assert verdicts[0].extracted == "1" and "killed" in verdicts[0].detail
        assert single.replaced == 1 and _idle_pids(single) != [pid]
        _healthy(single)


def test_worker_dying_mid_task_is_an_error_and_replaced():
    with VerifierPool(workers=1) as single:
        single.start()
        [pid] = _idle_pids(single)
        os.kill(pid, signal.SIGSTOP)  # keep the first task in flight until the kill below
        killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
        killer.start()
        verdicts = single.verify(["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"], ["1", "2", "3"], timeout_s=30.0)
        killer.join()
        assert [(v.status, v.correct) for v in verdicts] == [("error", False), ("ok", True), ("ok", True)]
        assert "died" in verdicts[0].detail and "-9" in verdicts[0].detail
        _healthy(single)


def test_idle_worker_death_costs_no_verdict():
    with VerifierPool(workers=1) as single:
        single.start()
        [pid] = _idle_pids(single)
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        [verdict] = single.verify(["\\boxed{1}"], ["1"])
        assert (verdict.status, verdict.correct) == ("ok", True)
        assert single.replaced == 1


def test_workers_are_reused_across_calls(pool):
    before = _idle_pids(pool)
    _healthy(pool)
    _healthy(pool)
    assert _idle_pids(pool) == before


def test_concurrent_callers_share_a_pool(pool):
    results: dict[int, list[Verdict]] = {}

    def call(i: int) -> None:
        results[i] = pool.verify([f"\\boxed{{{i}}}", f"\\boxed{{{i + 1}}}"], [str(i), str(i)])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all([v.correct for v in results[i]] == [True, False] for i in range(4))


def test_closed_pool_refuses_work():
    p = VerifierPool(workers=1)
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.verify(["\\boxed{1}"], ["1"])


def test_module_level_verify_with_torch_imported():
    """The default pool starts lazily, works with torch loaded in the caller, and restarts after shutdown."""
    pytest.importorskip("torch")
    assert benchmarks.verify(["\\boxed{\\frac{2}{4}}"], ["0.5"])[0].correct
    benchmarks.shutdown()
    assert benchmarks.verify(["\\boxed{2}"], ["2"])[0].correct
    pool = benchmarks.configure(workers=1)
    assert pool.size == 1 and benchmarks.verifier.get_pool() is pool
    assert benchmarks.count_statuses(benchmarks.verify(["\\boxed{2}", ""], ["2", "2"])) == {
        "ok": 1,
        "no_answer": 1,
        "timeout": 0,
        "error": 0,
    }
    benchmarks.shutdown()


def test_default_worker_count(monkeypatch):
    monkeypatch.delenv("CLIPBENCH_VERIFY_WORKERS", raising=False)
    assert benchmarks.verifier.default_workers() == max(1, min(os.cpu_count() or 1, 4))
    monkeypatch.setenv("CLIPBENCH_VERIFY_WORKERS", "3")
    assert benchmarks.verifier.default_workers() == 3
    with pytest.raises(ValueError, match="workers"):
        VerifierPool(workers=0)


def _slow_python(tmp_path, sleep_s: float, times: int):
    """A stand-in for sys.executable that sleeps `sleep_s` before exec-ing the real interpreter on
    its first `times` starts (a start-up stalled by a loaded machine), then starts at once."""
    counter = tmp_path / "starts"
    script = tmp_path / "python"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); echo $((n + 1)) > "{counter}"\n'
        f'if [ "$n" -lt {times} ]; then sleep {sleep_s}; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    script.chmod(0o755)
    return script, counter


def test_a_worker_that_misses_its_start_up_time_is_replaced_once(tmp_path, monkeypatch):
    script, counter = _slow_python(tmp_path, sleep_s=60, times=1)
    monkeypatch.setattr(verifier, "sys", types.SimpleNamespace(executable=str(script)))
    monkeypatch.setattr(verifier, "_STARTUP_TIMEOUT_S", 8.0)
    with VerifierPool(workers=1) as pool:
        verdicts = pool.verify(["\\boxed{2}"], ["2"])
        assert _outcomes(verdicts) == [("ok", True)]
        assert pool.replaced == 1 and counter.read_text().strip() == "2"


def test_two_workers_in_a_row_that_miss_their_start_up_time_fail_the_call(tmp_path, monkeypatch):
    script, counter = _slow_python(tmp_path, sleep_s=60, times=5)
    monkeypatch.setattr(verifier, "sys", types.SimpleNamespace(executable=str(script)))
    monkeypatch.setattr(verifier, "_STARTUP_TIMEOUT_S", 1.0)
    with VerifierPool(workers=1) as pool, pytest.raises(RuntimeError, match="2 verifier workers in a row"):
        pool.verify(["\\boxed{2}"], ["2"])
    assert counter.read_text().strip() == "2"
