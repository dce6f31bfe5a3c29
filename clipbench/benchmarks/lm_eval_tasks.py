r"""lm-eval tasks for the registered sets: the task config, and the hooks lm-eval calls to score.

Every set goes through one task shape, built by :func:`task_config` as an inline config dict for
``lm_eval.simple_evaluate(tasks=[config])`` (lm-eval 0.4.13):

- the data is a JSONL written beforehand (rows from :func:`prompt_rows`: ``index``, ``id``,
  ``prompt``, ``answer``), read with ``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}``,
  so local copies, hub sets and the generated ``synthetic`` set all reach lm-eval the same way;
- the prompt is pre-rendered (``doc_to_text: "{{prompt}}"``, zero-shot, empty delimiters), so lm-eval
  sends exactly the suite's prompt (:func:`benchmarks.build_prompt`, chat template included);
- ``repeats: k`` asks for k generations per problem. lm-eval's default filter (``take_first``)
  would score only the first, so the task has its own filter pipeline, named ``"verified"``:
  ``take_first_k`` (k), then :class:`VerifyFilter`, which sends all n*k generations to
  :func:`benchmarks.verify` in one call (so the verifier's worker processes run in parallel, and a
  pathological answer times out instead of hanging the run) and replaces each generation by its
  verdict record;
- :func:`process_results` turns one problem's k verdict records into ``avg_at_k`` (fraction correct)
  and ``pass_at_k`` (any correct), which lm-eval averages over problems.

The same tasks ship as lm-eval YAML files in :data:`YAML_DIR` (package data, one per registered set,
``clipbench_<name>.yaml``), so that ``lm_eval --include_path <YAML_DIR> --tasks clipbench_math500``
runs them without clipbench's runner. Each file is :func:`yaml_task_config`: the shape above at the
spec's defaults, its hooks written as lm-eval's ``!function clipbench.benchmarks.lm_eval_tasks.NAME``
(the very functions above, imported from the installed package, no copies), and its data read by the
``custom_dataset`` hook :func:`load_docs` (local copies under ``--metadata '{"data_dir": ...}'`` or
:data:`DATA_DIR_ENV`, else the hub; the generated set needs neither). The files are generated:
``python -m clipbench.benchmarks.lm_eval_tasks --write`` rewrites them, a test checks they match.

lm-eval itself is never imported here (the hooks are plain callables that lm-eval accepts in an
inline config), so :mod:`benchmarks` imports without it. :func:`describe_config` gives the
JSON-safe form of a config (callables as dotted names) that result files record.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from clipbench.benchmarks.loading import load_with_meta
from clipbench.benchmarks.problem import Problem
from clipbench.benchmarks.prompts import build_prompt
from clipbench.benchmarks.registry import available, get_spec
from clipbench.benchmarks.verifier import DEFAULT_TIMEOUT_S, verify

TASK_PREFIX = "clipbench_"
FILTER_NAME = "verified"
METRICS = ("avg_at_k", "pass_at_k")
DATA_SPLIT = "test"  # the split name the JSONL is loaded under (whatever the benchmark's split)
#: The lm-eval YAML files of the registered sets (package data): ``lm_eval --include_path YAML_DIR``.
YAML_DIR = Path(__file__).with_name("lm_eval_yaml")
#: Where the YAML tasks read the local copies when lm-eval's ``--metadata`` names no ``data_dir``.
DATA_DIR_ENV = "CLIPBENCH_DATA_DIR"
REGENERATE = "python -m clipbench.benchmarks.lm_eval_tasks --write"


def prompt_rows(problems: Sequence[Problem], prompts: Sequence[str]) -> list[dict[str, Any]]:
    """The JSONL rows lm-eval reads: one per problem, in order."""
    if len(problems) != len(prompts):
        raise ValueError(f"{len(problems)} problems but {len(prompts)} prompts")
    return [
        {"index": i, "id": p.id, "prompt": prompt, "answer": p.answer}
        for i, (p, prompt) in enumerate(zip(problems, prompts, strict=True))
    ]


def generation_kwargs(
    *, max_new_tokens: int, temperature: float, stop: Sequence[str] = (), backend: str = "hf"
) -> dict[str, Any]:
    """lm-eval ``generation_kwargs``: greedy when ``temperature == 0``, else plain sampling.

    Sampling pins ``top_p = 1`` and switches top-k off explicitly: transformers otherwise applies
    its global default ``top_k = 50`` while vLLM applies none, and the two backends would sample
    from different distributions. (The off value differs: 0 for transformers, -1 for vLLM.)
    No ``n``: lm-eval's hf backend rejects it; ``repeats`` gives the k samples.
    """
    kwargs: dict[str, Any] = {"until": list(stop), "max_gen_toks": int(max_new_tokens)}
    if temperature == 0:
        return kwargs | {"do_sample": False, "temperature": 0.0}
    top_k_off = -1 if backend == "vllm" else 0
    return kwargs | {"do_sample": True, "temperature": float(temperature), "top_p": 1.0, "top_k": top_k_off}


def task_config(
    benchmark: str,
    data_file: str | Path,
    *,
    k: int,
    generation: Mapping[str, Any],
    fallbacks: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """The inline lm-eval task config for ``benchmark``'s prompts in ``data_file`` (a JSONL).

    ``data_file`` is made absolute: lm-eval resolves relative data paths against the working
    directory, not against anything of ours.
    """
    source = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {DATA_SPLIT: str(Path(data_file).absolute())}},
    }
    return _task(benchmark, source, k=k, generation=generation, fallbacks=fallbacks, timeout_s=timeout_s)


def _task(
    benchmark: str,
    source: Mapping[str, Any],
    *,
    k: int,
    generation: Mapping[str, Any],
    fallbacks: Sequence[str],
    timeout_s: float,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one task shape: ``source`` (the data keys) in it, ``metadata`` added to its version."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return {
        "task": f"{TASK_PREFIX}{benchmark}",
        **source,
        "test_split": DATA_SPLIT,
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "description": "",
        "target_delimiter": "",
        "fewshot_delimiter": "",
        "num_fewshot": 0,
        "repeats": k,
        "generation_kwargs": dict(generation),
        "filter_list": [
            {
                "name": FILTER_NAME,
                "filter": [
                    {"function": "take_first_k", "k": k},
                    {"function": VerifyFilter, "fallbacks": list(fallbacks), "timeout_s": timeout_s},
                ],
            }
        ],
        "process_results": process_results,
        "metric_list": [
            {"metric": name, "aggregation": "mean", "higher_is_better": True} for name in METRICS
        ],
        "metadata": {"version": 1, **(metadata or {})},
    }


def describe_config(config: Any) -> Any:
    """A JSON-safe copy of a task config: functions and classes become ``"module.qualname"``."""
    if isinstance(config, Mapping):
        return {str(key): describe_config(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [describe_config(value) for value in config]
    if callable(config):
        return f"{config.__module__}.{config.__qualname__}"
    return config


class VerifyFilter:
    """lm-eval filter: each problem's generations -> their verdict records, verified in one batch.

    lm-eval builds it as ``VerifyFilter(**kwargs)`` from the filter entry and calls
    ``apply(resps, docs)`` once with every problem's responses, in order. A record is
    ``{"generation", "correct", "status", "extracted", "method", "detail"}``.
    """

    def __init__(self, fallbacks: Sequence[str] = (), timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.fallbacks = tuple(fallbacks)
        self.timeout_s = timeout_s

    def apply(self, resps: Iterable[Sequence[str]], docs: Sequence[Mapping[str, Any]]) -> list[list[dict]]:
        resps = [list(r) for r in resps]
        generations = [g for group in resps for g in group]
        golds = [doc["answer"] for doc, group in zip(docs, resps, strict=True) for _ in group]
        verdicts = iter(verify(generations, golds, timeout_s=self.timeout_s, fallbacks=self.fallbacks))
        return [[verdict_record(g, next(verdicts)) for g in group] for group in resps]


def verdict_record(generation: str, verdict: Any) -> dict[str, Any]:
    """One generation and its :class:`~benchmarks.verifier.Verdict` as a plain dict."""
    return {
        "generation": generation,
        "correct": bool(verdict.correct),
        "status": verdict.status,
        "extracted": verdict.extracted,
        "method": verdict.method,
        "detail": verdict.detail,
    }


def problem_metrics(correct: Sequence[bool]) -> dict[str, float]:
    """One problem's ``avg_at_k`` (fraction of its samples correct) and ``pass_at_k`` (any correct)."""
    if not correct:
        raise ValueError("a problem needs at least one sample")
    return {"avg_at_k": sum(map(bool, correct)) / len(correct), "pass_at_k": float(any(correct))}


def process_results(
    doc: Mapping[str, Any], results: Sequence[Sequence[Mapping[str, Any]]]
) -> dict[str, float]:
    """lm-eval hook: ``results`` holds one entry per request of the problem (one, with k records)."""
    (records,) = results
    return problem_metrics([r["correct"] for r in records])


# --- the same tasks as lm-eval YAML files, for `lm_eval --include_path` -----------------------


def data_dir_of(metadata: Mapping[str, Any]) -> str | None:
    """Where :func:`load_docs` reads the local copies: the task metadata's ``data_dir`` (lm-eval's
    ``--metadata '{"data_dir": ...}'``), else the :data:`DATA_DIR_ENV` environment variable, else
    None (the hub). A relative path is relative to the working directory."""
    value = metadata.get("data_dir") or os.environ.get(DATA_DIR_ENV) or None
    return None if value is None else str(value)


def load_docs(benchmark: str | None = None, split: str | None = None, **metadata: Any) -> Any:
    """lm-eval ``custom_dataset`` hook of the YAML tasks: ``benchmark``'s problems as the rows
    :func:`prompt_rows` gives clipbench's own evaluation (``index``, ``id``, ``prompt``, ``answer``),
    each prompt rendered by :func:`benchmarks.build_prompt` with the spec's template (``base``
    style; lm-eval's ``--apply_chat_template`` wraps it for chat models), under the split name the
    task reads (:data:`DATA_SPLIT`).

    lm-eval calls it with the task's metadata as keywords: ``benchmark`` (set by the YAML file),
    optional ``split`` and ``data_dir`` (:func:`data_dir_of`), and whatever else lm-eval puts there
    (version, model arguments), which is ignored.
    """
    import datasets  # lm-eval's own dependency; only this hook needs it

    if benchmark is None:
        raise ValueError("load_docs: the task's metadata names no benchmark (metadata: {benchmark: NAME})")
    spec = get_spec(benchmark)
    data_dir = data_dir_of(metadata)
    try:
        loaded = load_with_meta(benchmark, data_dir, split)
    except (ConnectionError, OSError) as err:  # a missing local file, or the hub out of reach
        source = f"data_dir={data_dir}" if data_dir else "the hub (no data_dir set)"
        raise RuntimeError(
            f"{TASK_PREFIX}{benchmark}: cannot load {benchmark} from {source}: {err}. Local copies: "
            f'{DATA_DIR_ENV}=../shared/data, or lm_eval --metadata \'{{"data_dir": "../shared/data"}}\''
        ) from err
    prompts = [build_prompt(p, template=spec.prompt_template) for p in loaded.problems]
    # keys sorted, as in the prompts file clipbench's evaluation writes: lm-eval then logs the same
    # docs with the same doc hashes (json.dumps of the doc, in its key order) either way
    rows = [dict(sorted(row.items())) for row in prompt_rows(loaded.problems, prompts)]
    return datasets.DatasetDict({DATA_SPLIT: datasets.Dataset.from_list(rows)})


def yaml_task_config(benchmark: str) -> dict[str, Any]:
    """The YAML task of ``benchmark``: :func:`task_config`'s shape at the spec's defaults (``k``,
    ``max_new_tokens``, greedy for k = 1 else temperature 1.0, fallbacks), reading its data through
    :func:`load_docs` instead of a prompts file, with no stop string of its own (lm-eval's hf
    backend always stops at the tokenizer's EOS, which is all clipbench adds for ``base`` prompts)."""
    from clipbench.evaluate import sampling  # the default temperature rule, stated once there

    spec = get_spec(benchmark)
    generation = generation_kwargs(max_new_tokens=spec.max_new_tokens, temperature=sampling(spec.k, None))
    return _task(
        benchmark,
        {"custom_dataset": load_docs},
        k=spec.k,
        generation=generation,
        fallbacks=spec.fallbacks,
        timeout_s=DEFAULT_TIMEOUT_S,
        metadata={"benchmark": benchmark},
    )


class _YamlDumper(yaml.SafeDumper):
    """Writes a function or class as lm-eval's ``!function module.name`` tag."""

    def represent_hook(self, hook: Any) -> yaml.Node:
        return self.represent_scalar("!function", f"{hook.__module__}.{hook.__qualname__}")


_YamlDumper.add_representer(types.FunctionType, _YamlDumper.represent_hook)
_YamlDumper.add_representer(type, _YamlDumper.represent_hook)


def yaml_text(benchmark: str) -> str:
    """:func:`yaml_task_config` as the file ``<YAML_DIR>/clipbench_<benchmark>.yaml``."""
    header = (
        f"# lm-eval task {TASK_PREFIX}{benchmark}: clipbench's evaluation of {benchmark} (clipbench/benchmarks/"
        "lm_eval_tasks.py).\n"
        "# GENERATED: do not edit; change the spec or the task shape, then run\n"
        f"#   {REGENERATE}\n"
        "# Run: lm_eval --model hf --model_args pretrained=DIR --include_path THIS_FOLDER "
        f"--tasks {TASK_PREFIX}{benchmark}\n"
    )
    if get_spec(benchmark).generated:
        header += "# Data: generated by clipbench (seeded), no files.\n"
    else:
        header += f"# Data: {DATA_DIR_ENV}=../shared/data (or --metadata '{{\"data_dir\": ...}}'); unset: the hub.\n"
    text = yaml.dump(yaml_task_config(benchmark), Dumper=_YamlDumper, sort_keys=False, width=100)
    # PyYAML quotes every explicitly tagged scalar; lm-eval's own files write the dotted name bare
    return header + re.sub(r"!function '([\w.]+)'", r"!function \1", text)


def yaml_files() -> dict[Path, str]:
    """Every registered set's YAML file and its text."""
    return {YAML_DIR / f"{TASK_PREFIX}{name}.yaml": yaml_text(name) for name in available()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipbench.benchmarks.lm_eval_tasks",
        description="clipbench's tasks as lm-eval YAML files (the folder to pass to lm_eval --include_path).",
    )
    parser.add_argument("--write", action="store_true", help=f"(re)write the YAML files in {YAML_DIR}")
    args = parser.parse_args(argv)
    if args.write:
        files = yaml_files()
        for stale in set(YAML_DIR.glob(f"{TASK_PREFIX}*.yaml")) - set(files):
            stale.unlink()
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
        print(f"wrote {len(files)} task files in {YAML_DIR}")
    else:
        print(YAML_DIR)
    return 0


if __name__ == "__main__":
    # the hooks must be written under their importable name, not __main__'s
    from clipbench.benchmarks import lm_eval_tasks

    sys.exit(lm_eval_tasks.main())
