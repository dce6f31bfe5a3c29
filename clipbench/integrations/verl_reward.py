"""verl's reward function for clipbench's data: `compute_score`, the verifier's verdict as 1.0 or 0.0.

verl loads it from `reward.custom_reward_function` (`path: pkg://clipbench.integrations.verl_reward`,
`name: compute_score`; `clipbench verl-config` writes both) and calls it once per response with
`(data_source, solution_str, ground_truth, extra_info)` (plus keyword arguments of its reward loop,
ignored). The rows `clipbench verl-config` writes carry `data_source = "clipbench/<benchmark>"`
(`DATA_SOURCE_PREFIX`): the benchmark's spec gives the verifier its answer fallbacks, as in the
native trainer's reward. The verdict is `clipbench.benchmarks.verify`'s (math-verify in killable
worker processes, so it is safe in verl's reward threads): 1.0 when the answer is verified, 0.0
otherwise (wrong, no answer, a timeout, an error).
"""

from __future__ import annotations

from typing import Any

from clipbench import benchmarks

#: data_source of the rows clipbench writes for verl: the prefix, then the benchmark's name.
DATA_SOURCE_PREFIX = "clipbench/"


def source_of(benchmark: str) -> str:
    """The data_source of a row of `benchmark` (`clipbench/<benchmark>`)."""
    benchmarks.get_spec(benchmark)
    return DATA_SOURCE_PREFIX + benchmark


def benchmark_of(source: Any) -> str:
    """The benchmark of a data_source `clipbench/<benchmark>`; ValueError naming it otherwise."""
    if not isinstance(source, str) or not source.startswith(DATA_SOURCE_PREFIX):
        raise ValueError(
            f"data_source {source!r}: clipbench's reward scores rows of clipbench's data "
            f"({DATA_SOURCE_PREFIX}<benchmark>, written by clipbench verl-config)"
        )
    name = source[len(DATA_SOURCE_PREFIX) :]
    try:
        benchmarks.get_spec(name)
    except (KeyError, ValueError) as err:
        raise ValueError(f"data_source {source!r}: {err}") from None
    return name


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **_: Any
) -> float:
    """1.0 when the verifier accepts `solution_str` against `ground_truth` (with the fallbacks of the
    benchmark `data_source` names), else 0.0 (timeouts and errors included)."""
    spec = benchmarks.get_spec(benchmark_of(data_source))
    verdict = benchmarks.verify([solution_str], [ground_truth], fallbacks=spec.fallbacks)[0]
    return 1.0 if verdict.correct else 0.0


__all__ = ["DATA_SOURCE_PREFIX", "benchmark_of", "compute_score", "source_of"]
