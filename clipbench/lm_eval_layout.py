"""lm-eval's own results layout, written beside a clipbench evaluation summary (the one owner).

``clipbench evaluate --out results/evals/base/math500.json`` writes clipbench's files (the summary,
``<stem>.samples.jsonl``, ``<stem>.prompts.jsonl``: :mod:`clipbench.evaluate`) and, in the folder
``<stem>.lm_eval/`` (:func:`folder`), the files ``lm_eval --output_path <stem>.lm_eval/results.json
--log_samples`` would write for the same run, so that tools reading lm-eval's results read ours:

- ``results_<date>.json``: ``results`` (per task ``name``, ``alias``, ``sample_len`` and
  ``<metric>,<filter>`` / ``<metric>_stderr,<filter>`` keys, here ``avg_at_k,verified``...),
  ``group_subtasks``, ``configs``, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``
  (``original``, ``effective``), ``config`` (model, model_args, parameters, dtype, batch size,
  seeds...), ``git_hash``, ``date``, environment and tokenizer fields, ``task_hashes``, the model
  name fields and ``total_evaluation_time_seconds``;
- ``samples_<task>_<date>.jsonl``: one line per problem (``doc_id``, ``doc``, ``target``,
  ``arguments``, ``resps``, ``filtered_resps``, ``filter``, ``metrics``, the three hashes and the
  per-problem metric values).

``<date>`` is lm-eval's: the local time of writing, ISO format with ``-`` for ``:``.

Nothing here rebuilds lm-eval's format: the content is the results dict ``lm_eval.simple_evaluate``
returned, and the files are written by lm-eval's own ``EvaluationTracker`` (the writer its command
line uses), which the evaluation passed to ``simple_evaluate`` so that it logged the model and
timing fields as the command line does. This module fixes where the files go, replaces the
previous run's files, and checks that the tracker (which only logs a warning when it fails) wrote
them whole. Values follow from how clipbench runs lm-eval: ``n-samples`` counts the problems
clipbench handed over (``limit`` is applied before lm-eval, so ``original`` = ``effective``), and the
standard errors are lm-eval's closed form for a mean, the same number as the summary's
``avg@k_stderr``.

The clipbench summary is not changed by any of this and does not record these files; the
evaluation writes them after its samples file and before its summary (so a summary exists only
beside a complete set), and nothing in clipbench reads them back.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

FOLDER_SUFFIX = ".lm_eval"
#: The ``output_path`` handed to lm-eval's tracker: it names the results ``results_<date>.json``.
OUTPUT_NAME = "results.json"
_RESULTS = re.compile(r"results_.+\.json")
_SAMPLES = re.compile(r"samples_.+_.+\.jsonl")


def folder(out: str | Path) -> Path:
    """The lm-eval folder of the summary ``out``: ``<stem>.lm_eval`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}{FOLDER_SUFFIX}")


def check_folder(out: str | Path) -> None:
    """The lm-eval folder of ``out`` can be made: nothing but a folder stands at its path."""
    path = folder(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out (--out {out}): {path} is a file; the lm-eval results folder goes there")


def tracker() -> Any:
    """A fresh lm-eval ``EvaluationTracker`` (no output path yet): pass it to ``simple_evaluate``
    as ``evaluation_tracker``, then to :func:`write`."""
    from lm_eval.loggers import EvaluationTracker

    return EvaluationTracker()


def file_names(path: Path) -> dict[str, list[str]]:
    """The lm-eval files in the folder ``path``: ``{"results": [...], "samples": [...]}``, sorted."""
    names = sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return {
        "results": [n for n in names if _RESULTS.fullmatch(n)],
        "samples": [n for n in names if _SAMPLES.fullmatch(n)],
    }


def _remove_previous(path: Path) -> None:
    """The files of an earlier run of this output; anything else in the folder stays."""
    found = file_names(path)
    for name in found["results"] + found["samples"]:
        (path / name).unlink()


def write(out: str | Path, results: dict[str, Any], evaluation_tracker: Any) -> dict[str, Path]:
    """Write ``results`` (``simple_evaluate``'s dict, with its ``samples``) in lm-eval's layout into
    :func:`folder` of ``out``, through ``evaluation_tracker`` (the one passed to ``simple_evaluate``).
    Neither argument is changed. Returns ``{"results": path, "samples_<task>": path...}``.
    RuntimeError when the tracker did not write a file whole."""
    path = folder(out)
    path.mkdir(parents=True, exist_ok=True)
    _remove_previous(path)
    samples = copy.deepcopy(results.get("samples") or {})  # the tracker rewrites what it is given
    aggregated = copy.deepcopy({key: value for key, value in results.items() if key != "samples"})
    tasks = list(aggregated["configs"])
    evaluation_tracker.output_path = str(path / OUTPUT_NAME)
    evaluation_tracker.save_results_aggregated(results=aggregated, samples=samples)
    date_id = getattr(evaluation_tracker, "date_id", None)
    written = {"results": path / f"results_{date_id}.json"}
    for task in tasks:
        evaluation_tracker.save_results_samples(task_name=task, samples=samples[task])
        written[f"samples_{task}"] = path / f"samples_{task}_{date_id}.jsonl"
    _check_written(written, results, tasks)
    return written


def _check_written(written: dict[str, Path], results: dict[str, Any], tasks: list[str]) -> None:
    """Each file is there, parses, and holds every task and sample (the tracker swallows its errors)."""
    hint = "lm-eval's EvaluationTracker did not write it (its warning in the log says why)"
    results_file = written["results"]
    try:
        document = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RuntimeError(f"{results_file}: {hint}: {err}") from None
    if sorted(document.get("results", {})) != sorted(results["results"]):
        raise RuntimeError(f"{results_file}: its tasks differ from the evaluation's: {hint}")
    for task in tasks:
        samples_file = written[f"samples_{task}"]
        expected = len(results["samples"][task])
        try:
            lines = samples_file.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise RuntimeError(f"{samples_file}: {hint}: {err}") from None
        if len(lines) != expected:
            raise RuntimeError(f"{samples_file}: {len(lines)} lines for {expected} samples: {hint}")
