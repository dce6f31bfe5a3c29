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
clipbench handed over (``limit`` is applied before lm-eval, so ``original`` = ``effective``; the
limit is recorded as ``config.limit``), each task's ``dataset_kwargs.data_files`` names the final
prompts file (``<stem>.prompts.jsonl``), and the
standard errors are lm-eval's closed form for a mean, the same number as the summary's
``avg@k_stderr``.

The clipbench summary is not changed by any of this and does not record these files; the
evaluation writes them after its samples file and before its summary (so a summary exists only
beside a complete set), and nothing in clipbench reads them back.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
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


def write(
    out: str | Path,
    results: dict[str, Any],
    evaluation_tracker: Any,
    *,
    data_files: str | Path | None = None,
    limit: int | None = None,
) -> dict[str, Path]:
    """Write ``results`` (``simple_evaluate``'s dict, with its ``samples``) in lm-eval's layout into
    :func:`folder` of ``out``, through ``evaluation_tracker`` (the one passed to ``simple_evaluate``).
    Neither argument is changed. ``data_files``: the prompts file's final path, recorded in each
    task's config in place of the temporary file lm-eval read (whose cache folder is gone by now);
    ``limit``: the problem limit clipbench applied before lm-eval, recorded as ``config.limit``
    (lm-eval's own field for it), so that a truncated evaluation does not read as a complete one.
    Either left as lm-eval recorded it when None.
    The tracker writes into a temporary sibling folder; once every file is checked whole they are
    moved into place, so the folder never holds a partial file.
    Returns ``{"results": path, "samples_<task>": path...}``. RuntimeError when the tracker did not
    write a file whole."""
    path = folder(out)
    path.mkdir(parents=True, exist_ok=True)
    samples = copy.deepcopy(results.get("samples") or {})  # the tracker rewrites what it is given
    aggregated = copy.deepcopy({key: value for key, value in results.items() if key != "samples"})
    tasks = list(aggregated["configs"])
    for task in tasks:
        kwargs = aggregated["configs"][task].get("dataset_kwargs")
        if data_files is not None and isinstance(kwargs, dict):
            kwargs.pop("cache_dir", None)
            if isinstance(kwargs.get("data_files"), dict):
                kwargs["data_files"] = {key: str(data_files) for key in kwargs["data_files"]}
    if limit is not None and isinstance(aggregated.get("config"), dict):
        aggregated["config"]["limit"] = limit
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        evaluation_tracker.output_path = str(staging / OUTPUT_NAME)
        evaluation_tracker.save_results_aggregated(results=aggregated, samples=samples)
        date_id = getattr(evaluation_tracker, "date_id", None)
        staged = {"results": staging / f"results_{date_id}.json"}
        for task in tasks:
            evaluation_tracker.save_results_samples(task_name=task, samples=samples[task])
            staged[f"samples_{task}"] = staging / f"samples_{task}_{date_id}.jsonl"
        _check_written(staged, results, tasks)
        _remove_previous(path)
        written = {}
        for key, file in staged.items():
            written[key] = path / file.name
            os.replace(file, written[key])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def count_lines(path: Path) -> int:
    """JSON Lines records in ``path``: its newline bytes, counted in chunks. Not ``splitlines``:
    lm-eval writes with ``ensure_ascii=False``, so a generation's U+2028, U+2029 or U+0085 stays
    unescaped inside a record, and ``str.splitlines`` would break a record there."""
    count = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


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
            lines = count_lines(samples_file)
        except OSError as err:
            raise RuntimeError(f"{samples_file}: {hint}: {err}") from None
        if lines != expected:
            raise RuntimeError(f"{samples_file}: {lines} lines for {expected} samples: {hint}")
