"""The offline ``synthetic`` set: seeded arithmetic chains with worked solutions of 1 to many steps.

A problem is a left-nested chain of ``+``, ``-`` and ``*`` written with the fewest parentheses that
keep ordinary precedence, e.g. ``Compute: (3+4)*2-5``. Its worked solution evaluates it one
operation per line and ends in ``\\boxed{n}``::

    3+4=7
    7*2=14
    14-5=9
    \\boxed{9}

Every intermediate value is a single digit (``[0, MAX_VALUE]``, MAX_VALUE = 9) and the alphabet is
tiny (:data:`ALPHABET`), so a ~1M-parameter byte-level model learns it in a few minutes of CPU
(clipbench.sft reaches ~60% greedy accuracy in ~400 steps with 1-12 steps; with two-digit values,
or 1-16 steps, it stayed below 20%), while response lengths range from ~15 characters (one step)
to ~85 (12 steps) and ~120 (18 steps, the out-of-distribution split): the length bins that the
clip-fairness metrics need.

Splits. A problem belongs to the held-out side when a hash of its canonical expression falls below
:data:`HELD_OUT_FRACTION` (:func:`is_held_out`); ``train`` keeps only the other side, so ``train``
and ``test`` can never share a problem, whatever the seeds and sizes. ``test_ood`` is held out too
and uses more steps than ``train`` ever does (difficulty knob: ``min_steps``/``max_steps``).
"""

from __future__ import annotations

import hashlib
import random

from clipbench.benchmarks.problem import Problem

MAX_VALUE = 9
MAX_ADD = 9  # largest operand of + and -
MAX_MUL = 3  # largest factor of *
HELD_OUT_FRACTION = 0.1
PREFIX = "Compute: "
#: Prompt template for this set: no instruction text, the SFT warm-up teaches the format.
PROMPT_TEMPLATE = "{problem}\n"

#: split -> (min_steps, max_steps, default number of problems, held out?)
SPLITS: dict[str, tuple[int, int, int, bool]] = {
    "train": (1, 12, 20000, False),
    "test": (1, 12, 500, True),
    "test_ood": (13, 18, 500, True),
}

#: Every character that a synthetic problem, its solution or its prompt template can contain.
ALPHABET = frozenset("0123456789+-*()=:\n " + PREFIX + "\\boxed{}")

_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
#: Most problems one call generates (10x the train split's default): a larger ``n`` is refused
#: at once instead of filling memory for minutes (each problem with its solution is ~1 KB).
MAX_N = 200_000
# Consecutive draws without a new problem before generate() concludes the range is exhausted.
_MAX_MISSES = 20000


def is_held_out(expression: str) -> bool:
    """Whether a canonical expression belongs to the held-out (test) side of the hash split."""
    digest = hashlib.sha256(expression.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT_FRACTION


def _operations(value: int) -> list[tuple[str, int, int]]:
    """Feasible next operations from ``value`` as (op, lowest operand, highest operand)."""
    ops = []
    if value < MAX_VALUE:
        ops.append(("+", 1, min(MAX_ADD, MAX_VALUE - value)))
    if value > 0:
        ops.append(("-", 1, min(MAX_ADD, value)))
    if 2 <= value <= MAX_VALUE // 2:
        ops.append(("*", 2, min(MAX_MUL, MAX_VALUE // value)))
    return ops


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def random_chain(rng: random.Random, steps: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value and ``steps`` operations whose running values stay within ``[0, MAX_VALUE]``."""
    start = rng.randint(1, MAX_ADD)
    value, chain = start, []
    for _ in range(steps):
        op, low, high = rng.choice(_operations(value))
        operand = rng.randint(low, high)
        chain.append((op, operand))
        value = _apply(op, value, operand)
    return start, chain


def expression(start: int, chain: list[tuple[str, int]]) -> str:
    """Canonical text of a left-nested chain with minimal parentheses: ``(3+4)*2-5``."""
    text, top = str(start), 3  # a bare number binds tighter than any operator
    for op, operand in chain:
        if _PRECEDENCE[op] > top:
            text = f"({text})"
        text, top = f"{text}{op}{operand}", _PRECEDENCE[op]
    return text


def worked_solution(start: int, chain: list[tuple[str, int]]) -> tuple[str, int]:
    """One ``a op b=c`` line per operation, then ``\\boxed{answer}``; returns (text, answer)."""
    lines, value = [], start
    for op, operand in chain:
        new = _apply(op, value, operand)
        lines.append(f"{value}{op}{operand}={new}")
        value = new
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines), value


def num_steps(problem: Problem) -> int:
    """Number of operations in a synthetic problem (lines of its solution before the box)."""
    return len((problem.solution or "").splitlines()) - 1


def generate(
    n: int | None = None,
    split: str = "train",
    seed: int = 0,
    min_steps: int | None = None,
    max_steps: int | None = None,
) -> list[Problem]:
    """``n`` distinct problems of ``split``, deterministic for ``(split, seed, n, min_steps, max_steps)``.

    Step counts are drawn uniformly from ``[min_steps, max_steps]`` (default: the split's range) so
    that every length is populated. Raises ValueError when the split cannot supply ``n`` distinct
    problems in that range (e.g. thousands of 1-step test problems).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; known: {sorted(SPLITS)}")
    lo, hi, default_n, held_out = SPLITS[split]
    lo = lo if min_steps is None else min_steps
    hi = hi if max_steps is None else max_steps
    n = default_n if n is None else n
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {lo}, {hi}")
    if not 0 <= n <= MAX_N:
        raise ValueError(f"n must be between 0 and {MAX_N} (synthetic.MAX_N), got {n}")
    rng = random.Random(f"clipbench-synthetic/{split}/{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    misses = 0
    while len(problems) < n:
        if misses > _MAX_MISSES:
            raise ValueError(
                f"could not draw {n} distinct {split!r} problems with {lo}-{hi} steps "
                f"(got {len(problems)}); ask for fewer or widen the step range"
            )
        start, chain = random_chain(rng, rng.randint(lo, hi))
        expr = expression(start, chain)
        if expr in seen or is_held_out(expr) != held_out:
            misses += 1
            continue
        misses = 0
        seen.add(expr)
        solution, answer = worked_solution(start, chain)
        digest = hashlib.sha256(expr.encode()).hexdigest()[:12]
        problems.append(
            Problem(id=f"syn-{digest}", problem=PREFIX + expr, answer=str(answer), solution=solution)
        )
    return problems
