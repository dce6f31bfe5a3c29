"""Throughput of the verifier pool against math-verify called in one process, on the same inputs.

Builds N real-looking generations from the local evaluation sets' gold answers (correct answers,
LaTeX variants of them, and wrong answers taken from other problems, each in a short fake reasoning
text ending in ``\\boxed{}``), then times, in the same run:

- ``math-verify loop``: a plain loop of ``verify(parse(gold), parse(generation))`` in one process
  (math-verify's own signal timeouts on; the reference);
- ``same pipeline, inline``: this package's extraction + worker comparison, called in one process
  (same code and caches as a worker, so it isolates what the pool adds: parallelism minus IPC);
- ``pool, W workers``: ``VerifierPool(workers=W).verify`` on the whole list (workers started before
  the clock, as in a training run where the pool is reused).

Each contender runs in a fresh process of its own, one after the other, and first verifies
``--warmup`` other answers (a different seed): imports, ANTLR's lazily built DFA and sympy's caches
make a cold process much slower than a warm one (a training run's pool is warm after its first
steps), and no contender may profit from another having seen the measured inputs. Contenders are
repeated in interleaved order (``--repeats``) and the best wall time is reported; the "other load"
column is the CPU (in cores) that other processes used during that contender's worst run, so a
number taken on a busy machine shows as such.

Usage: ``python speed/verifier_throughput.py [--n 2000] [--workers 2 1] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipbench import benchmarks  # noqa: E402
from clipbench.benchmarks import _worker  # noqa: E402
from clipbench.benchmarks.verifier import gold_string, prepare  # noqa: E402

LOAD_BEFORE = ", ".join(f"{x:.2f}" for x in os.getloadavg())
SETS = ["math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench", "gsm8k"]
FILLER = [
    "First, let us restate the problem in our own words.",
    "We set up the equation from the given conditions.",
    "Substituting the known values, the expression simplifies.",
    "Checking the boundary cases confirms the computation.",
    "Combining like terms gives a cleaner form.",
    "Therefore we can read off the result directly.",
]


def variant(gold: str, rng: random.Random) -> str:
    """A differently written but equal answer, when an easy rewrite exists."""
    if gold.lstrip("-").isdigit():
        return rng.choice([f"{gold}.0", f"\\${gold}", f"{gold}\\%", f"\\text{{{gold}}}"])
    if "\\frac" in gold:
        return gold.replace("\\frac", "\\dfrac")
    return f"{{{gold}}}"


def build_inputs(n: int, data_dir: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    by_set = [benchmarks.load(name, data_dir) for name in SETS]
    predictions, golds = [], []
    for _ in range(n):
        problems = rng.choices(by_set, weights=[len(p) for p in by_set])[0]  # like the pooled sets
        problem = rng.choice(problems)
        kind = rng.random()
        if kind < 0.4:
            answer = problem.answer
        elif kind < 0.6:
            answer = variant(problem.answer, rng)
        else:
            answer = rng.choice(problems).answer
        reasoning = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 12)))
        predictions.append(f"{reasoning}\nSo the final answer is $\\boxed{{{answer}}}$.")
        golds.append(problem.answer)
    return predictions, golds


def run_math_verify_loop(predictions: list[str], golds: list[str]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse(f"\\boxed{{{g}}}"), parse(p))) for p, g in zip(predictions, golds, strict=True)]


def run_inline(predictions: list[str], golds: list[str], timeout_s: float) -> list[bool]:
    signal.signal(signal.SIGALRM, _worker._on_alarm)
    out = []
    for p, g in zip(predictions, golds, strict=True):
        prepared = prepare(p, benchmarks.verifier.DEFAULT_FALLBACKS)
        if isinstance(prepared, benchmarks.Verdict):
            out.append(False)
        else:
            out.append(_worker.run_task(gold_string(g), prepared[0], timeout_s)[0])
    return out


def run_contender(args: argparse.Namespace) -> dict:
    """One contender in this (fresh) process: warm up on other inputs, then time the measured ones."""
    predictions, golds = build_inputs(args.n, args.data_dir, args.seed)
    warm_predictions, warm_golds = build_inputs(args.warmup, args.data_dir, args.seed + 1)
    startup = None
    if args.contender == "math-verify":
        run = lambda p, g: run_math_verify_loop(p, g)  # noqa: E731
    elif args.contender == "inline":
        run = lambda p, g: run_inline(p, g, args.timeout)  # noqa: E731
    else:
        start = time.perf_counter()
        pool = benchmarks.VerifierPool(workers=args.workers[0]).start()
        startup = time.perf_counter() - start
        run = lambda p, g: [v.correct for v in pool.verify(p, g, args.timeout)]  # noqa: E731
    run(warm_predictions, warm_golds)
    start = time.perf_counter()
    correct = run(predictions, golds)
    seconds = time.perf_counter() - start
    if args.contender == "pool":
        pool.close()  # reaps the workers, so the parent's RUSAGE_CHILDREN counts their CPU
    return {"seconds": seconds, "correct": correct, "startup": startup, "distinct_golds": len(set(golds))}


def _busy_cpu_seconds() -> float | None:
    """System-wide busy CPU time so far (Linux /proc/stat), to spot other load during a run."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def spawn_contender(args: argparse.Namespace, contender: str, workers: int | None = None) -> dict:
    """Run one contender in a fresh process; ``foreign_cpu``: CPU-seconds other processes used meanwhile."""
    command = [
        sys.executable,
        __file__,
        "--contender",
        contender,
        "--n",
        str(args.n),
        "--seed",
        str(args.seed),
    ]
    command += [
        "--warmup",
        str(args.warmup),
        "--timeout",
        str(args.timeout),
        "--data-dir",
        str(args.data_dir),
    ]
    if workers is not None:
        command += ["--workers", str(workers)]
    busy_before, own_before = _busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    busy_after, own_after = _busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = json.loads(out.strip().splitlines()[-1])
    run["wall"] = wall
    if busy_before is not None and busy_after is not None:
        own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
        run["foreign_cpu"] = max(0.0, busy_after - busy_before - own)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--timeout", type=float, default=benchmarks.DEFAULT_TIMEOUT_S)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=500, help="answers (other seed) run before timing")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs per contender (best is shown)"
    )
    parser.add_argument("--contender", choices=["math-verify", "inline", "pool"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(run_contender(args)))
        return

    contenders = [("math-verify loop (1 process)", "math-verify", None)]
    contenders.append(("same pipeline, inline (1 process)", "inline", None))
    contenders += [(f"pool, {w} worker{'s' if w > 1 else ''}", "pool", w) for w in args.workers]
    # Interleaved repeats; the best of them is the estimate least disturbed by other load.
    results: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}
    for _ in range(args.repeats):
        for name, contender, workers in contenders:
            results[name].append(spawn_contender(args, contender, workers))

    def best(name: str) -> float:
        return min(run["seconds"] for run in results[name])

    def foreign(name: str) -> str:
        shares = [r.get("foreign_cpu", math.nan) / r["wall"] for r in results[name]]
        return f"{max(shares):.2f}"

    t_ref, t_inline = best(contenders[0][0]), best(contenders[1][0])
    first = results[contenders[0][0]][0]
    print(
        f"{args.n} answers ({first['distinct_golds']} distinct golds), timeout {args.timeout:g} s, "
        f"{args.warmup} warm-up answers per contender, best of {args.repeats} interleaved runs, "
        f"{os.cpu_count()} CPUs, load average before: {LOAD_BEFORE}"
    )
    header = (
        f"| {'run':34} | {'best s':>6} | {'median s':>8} | {'answers/s':>9} | {'vs math-verify loop':>19} "
        f"| {'vs inline':>9} | {'correct':>7} | {'other load':>10} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, _, _ in contenders:
        seconds, median = best(name), statistics.median(r["seconds"] for r in results[name])
        print(
            f"| {name:34} | {seconds:6.2f} | {median:8.2f} | {args.n / seconds:9.0f} | {t_ref / seconds:18.2f}x "
            f"| {t_inline / seconds:8.2f}x | {sum(results[name][0]['correct']):7d} | {foreign(name):>10} |"
        )
    reference = first["correct"]
    for name, contender, _ in contenders[1:]:
        agree = min(sum(a == b for a, b in zip(reference, r["correct"], strict=True)) for r in results[name])
        startup = (
            f", start-up {max(r['startup'] for r in results[name]):.2f} s (not timed)"
            if contender == "pool"
            else ""
        )
        print(f"{name}: verdicts agree with the math-verify loop on {agree}/{args.n}{startup}")


if __name__ == "__main__":
    main()
