r"""Evaluation sets, prompts and the answer verifier of clipbench.

::

    from clipbench import benchmarks

    benchmarks.available()                       # ['aime24', 'aime25', 'amc23', 'gsm8k', ...]
    spec = benchmarks.get_spec("math500")        # hub id, local file + sha256, k, max tokens, fallbacks
    problems = benchmarks.load("math500", data_dir="../shared/data")   # or data_dir=None: the hub
    prompt = benchmarks.build_prompt(problems[0])                     # base-model template
    verdicts = benchmarks.verify([r"... so \boxed{3}"], [problems[0].answer], fallbacks=spec.fallbacks)
    verdicts[0].correct, verdicts[0].status      # status: "ok" | "no_answer" | "timeout" | "error"
    train = benchmarks.load("synthetic", split="train", n=1000, seed=0)  # generated, no files

Modules: :mod:`~benchmarks.registry` (the specs), :mod:`~benchmarks.loading` (local, hub and
generated sources), :mod:`~benchmarks.synthetic` (the arithmetic set), :mod:`~benchmarks.prompts`,
:mod:`~benchmarks.extraction` (answer extraction and gold cleaning) and
:mod:`~benchmarks.verifier` (math-verify in a pool of killable worker processes).
"""

from clipbench.benchmarks.loading import DataIntegrityWarning, LoadResult, load, load_with_meta, local_file
from clipbench.benchmarks.problem import Problem
from clipbench.benchmarks.prompts import BASE_TEMPLATE, INSTRUCTION, build_prompt
from clipbench.benchmarks.registry import BenchmarkSpec, HubSource, LocalFile, RowFormat, available, get_spec
from clipbench.benchmarks.verifier import (
    DEFAULT_TIMEOUT_S,
    Verdict,
    VerifierPool,
    configure,
    count_statuses,
    get_pool,
    shutdown,
    verify,
)

__all__ = [
    "BASE_TEMPLATE",
    "DEFAULT_TIMEOUT_S",
    "INSTRUCTION",
    "BenchmarkSpec",
    "DataIntegrityWarning",
    "HubSource",
    "LoadResult",
    "LocalFile",
    "Problem",
    "RowFormat",
    "Verdict",
    "VerifierPool",
    "available",
    "build_prompt",
    "configure",
    "count_statuses",
    "get_pool",
    "get_spec",
    "load",
    "load_with_meta",
    "local_file",
    "shutdown",
    "verify",
]
