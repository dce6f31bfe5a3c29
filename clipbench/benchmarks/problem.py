"""The :class:`Problem` record that every loader returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One evaluation or training problem.

    ``answer`` is the gold answer as a cleaned LaTeX/plain string (see
    :func:`benchmarks.extraction.clean_gold`); ``solution`` is a worked solution when the source has
    one (the synthetic set always does: it is the SFT warm-up target).
    """

    id: str
    problem: str
    answer: str
    solution: str | None = None
