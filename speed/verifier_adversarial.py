"""The verifier on a batch with pathological answers: wall time, determinism, batch deadline.

Builds ``--n`` answers (default 2,000): ``--bad`` of them (default 40, all distinct, so that no
repeat is compared once for all of them) are pathological answers meant to run past the limit
(power towers such as ``9^{9^{9^{9}}}``, ``7^{123456789}``, ``(10^{10})!``, huge sums, sums of 130
variables, just under the answer-length cap ``MAX_ANSWER_CHARS``, that take 1-3 s of CPU to parse;
the output counts how many timed out), placed at seeded random
positions; the others are the real-looking generations of ``speed/verifier_throughput.py``. Then, with one pool of ``--workers``
workers started before the clock:

- ``reference``: the same batch without the pathological answers (what the rest costs);
- ``run 1`` and ``run 2``: the whole batch, twice (the second time in reverse order): wall time,
  statuses, and whether every answer got the same verdict both times;
- ``deadline``: the whole batch with ``batch_deadline_s=--deadline``: wall time and how many answers
  the deadline cut (skipped, with a note, where ``verify`` has no ``batch_deadline_s``).

Ratios are against the reference of the same invocation, and the wall time against the bound of
the verifier's docstring, ceil(bad / workers) * (timeout + kill grace). The "other load" line is the
CPU (in cores) other processes used meanwhile: on a busy machine the limit, CPU time, stretches in
wall time. Runs against whichever ``benchmarks`` sits next to this file's folder, so a copy of the
file in an older checkout measures that version.

Usage: ``python speed/verifier_adversarial.py [--n 2000] [--bad 40] [--workers 2] [--deadline 30]``
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "speed"))

from verifier_throughput import _busy_cpu_seconds, build_inputs  # noqa: E402

from clipbench import benchmarks  # noqa: E402
from clipbench.benchmarks import verifier  # noqa: E402

LOAD_BEFORE = ", ".join(f"{x:.2f}" for x in os.getloadavg())


def pathological(count: int) -> list[str]:
    """``count`` distinct answers that each need far more than a 5 s limit (seconds to minutes)."""
    shapes = []
    for a, b, c in [(9, 9, 9), (8, 9, 9), (7, 9, 9), (9, 8, 7), (6, 7, 8), (9, 9, 5), (5, 9, 9), (7, 7, 7)]:
        shapes.append(f"{a}^{{{b}^{{{c}^{{9}}}}}}")  # power towers
        shapes.append(f"{a}^{{{b}^{{{c}}}}}+1")
    shapes += [f"{k}^{{123456789}}" for k in (3, 5, 6, 7, 9, 11, 13, 17)]  # huge powers
    shapes += [f"(10^{{{k}}})!" for k in (8, 9, 10, 11, 12)]  # huge factorials
    shapes += [f"\\sum_{{n=1}}^{{10^{{{k}}}}} n^{{n}}" for k in (9, 10, 11, 12, 13)]  # huge sums
    # the longest slow-to-parse answers the length cap lets through (~950 of MAX_ANSWER_CHARS=1000)
    shapes += ["+".join(f"{v}_{{{i}}}" for i in range(130)) for v in "xyzw"]  # seconds to parse
    shapes += [f"10^{{10^{{{k}}}}}" for k in (10, 11, 12)]  # towers of tens
    if count > len(shapes):
        raise SystemExit(f"--bad {count}: at most {len(shapes)} distinct pathological answers here")
    return [f"So the answer is $\\boxed{{{s}}}$." for s in shapes[:count]]


def build_batch(args: argparse.Namespace) -> tuple[list[str], list[str], set[int]]:
    predictions, golds = build_inputs(args.n - args.bad, args.data_dir, args.seed)
    rng = random.Random(args.seed)
    bad_at = set(rng.sample(range(args.n), args.bad))
    bad = iter(pathological(args.bad))
    normal = iter(zip(predictions, golds, strict=True))
    out_p, out_g = [], []
    for i in range(args.n):
        prediction, gold = (next(bad), "27") if i in bad_at else next(normal)
        out_p.append(prediction)
        out_g.append(gold)
    return out_p, out_g, bad_at


def _process_cpu_seconds(pid: int) -> float:
    """CPU time of a live process from /proc (0 where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def own_cpu_seconds(pool: verifier.VerifierPool) -> float:
    """CPU of this process, its reaped workers (rusage) and its live workers (/proc)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage) + sum(
        _process_cpu_seconds(w.proc.pid) for w in pool._workers
    )


def timed(
    pool: verifier.VerifierPool, predictions, golds, args, **kwargs
) -> tuple[float, list, float | None]:
    """``(wall s, verdicts, other load in cores)`` of one call."""
    busy_before, own_before = _busy_cpu_seconds(), own_cpu_seconds(pool)
    start = time.perf_counter()
    verdicts = pool.verify(predictions, golds, timeout_s=args.timeout, **kwargs)
    seconds = time.perf_counter() - start
    busy_after, own_after = _busy_cpu_seconds(), own_cpu_seconds(pool)
    other = None
    if busy_before is not None and busy_after is not None:
        other = max(0.0, busy_after - busy_before - (own_after - own_before)) / seconds
    return seconds, verdicts, other


def outcome(v: benchmarks.Verdict) -> tuple[str, bool]:
    return v.status, v.correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--bad", type=int, default=40, help="pathological answers among the n")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=benchmarks.DEFAULT_TIMEOUT_S)
    parser.add_argument("--deadline", type=float, default=30.0, help="batch deadline of the last run (s)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    predictions, golds, bad_at = build_batch(args)
    normal = [i for i in range(args.n) if i not in bad_at]
    grace = verifier.DEFAULT_KILL_GRACE_S
    has_deadline = "batch_deadline_s" in inspect.signature(verifier.VerifierPool.verify).parameters
    print(
        f"{args.n} answers, {args.bad} of them pathological (distinct), timeout {args.timeout:g} s, "
        f"{args.workers} workers, {os.cpu_count()} CPUs, load average before: {LOAD_BEFORE}; "
        f"benchmarks from {ROOT}"
    )
    with verifier.VerifierPool(workers=args.workers).start() as pool:
        pool.verify(*build_inputs(200, args.data_dir, args.seed + 1), timeout_s=args.timeout)  # warm-up
        t_ref, _, load_ref = timed(pool, [predictions[i] for i in normal], [golds[i] for i in normal], args)
        t1, first, load1 = timed(pool, predictions, golds, args)
        t2, second_reversed, load2 = timed(pool, predictions[::-1], golds[::-1], args)
        second = second_reversed[::-1]
        deadline_run = None
        if has_deadline:
            deadline_run = timed(pool, predictions, golds, args, batch_deadline_s=args.deadline)

    bound = math.ceil(args.bad / args.workers) * (args.timeout + grace)
    differ = [i for i in range(args.n) if outcome(first[i]) != outcome(second[i])]
    header = f"| {'run':34} | {'wall s':>7} | {'vs reference':>12} | {'timeouts':>8} | {'other load':>10} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    rows = [
        (f"reference ({len(normal)} normal answers)", t_ref, None, load_ref),
        ("run 1 (whole batch)", t1, first, load1),
        ("run 2 (whole batch, reversed)", t2, second, load2),
    ]
    if deadline_run is not None:
        rows.append((f"deadline {args.deadline:g} s (whole batch)", *deadline_run))
    for name, seconds, verdicts, load in rows:
        timeouts = "" if verdicts is None else str(sum(v.status == "timeout" for v in verdicts))
        other = "?" if load is None else f"{load:.2f}"
        print(f"| {name:34} | {seconds:7.1f} | {seconds / t_ref:11.2f}x | {timeouts:>8} | {other:>10} |")
    for name, verdicts in (("run 1", first), ("run 2", second)):
        print(
            f"{name} statuses: {dict(Counter(v.status for v in verdicts))}; pathological answers: "
            f"{dict(Counter(verdicts[i].status for i in sorted(bad_at)))}"
        )
    print(
        f"verdicts identical in runs 1 and 2: {'yes' if not differ else 'NO'} "
        f"({args.n - len(differ)}/{args.n} the same"
        + (
            f"; differing: {[(i, outcome(first[i]), outcome(second[i])) for i in differ[:5]]}"
            if differ
            else ""
        )
        + ")"
    )
    print(
        f"docstring bound ceil({args.bad}/{args.workers}) * ({args.timeout:g} + {grace:g}) = {bound:.0f} s "
        f"(+ the reference's {t_ref:.0f} s): run 1 took {t1 / (bound + t_ref):.2f}x of it"
    )
    if deadline_run is None:
        print("deadline: skipped (this verify has no batch_deadline_s)")
    else:
        seconds, verdicts, _ = deadline_run
        cut = [i for i, v in enumerate(verdicts) if v.detail and "batch deadline" in v.detail]
        changed = [i for i in range(args.n) if i not in cut and outcome(verdicts[i]) != outcome(first[i])]
        print(
            f"deadline {args.deadline:g} s: returned after {seconds:.1f} s ({seconds - args.deadline:+.2f} s past "
            f"it); {len(cut)} answers cut by it ({sum(i in bad_at for i in cut)} pathological, "
            f"{sum(i not in bad_at for i in cut)} normal); the {args.n - len(cut)} others "
            f"{'all as in run 1' if not changed else f'differ from run 1 in {len(changed)}'}"
        )


if __name__ == "__main__":
    main()
