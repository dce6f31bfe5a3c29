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

lm-eval itself is never imported here (the hooks are plain callables that lm-eval accepts in an
inline config), so :mod:`benchmarks` imports without it. :func:`describe_config` gives the
JSON-safe form of a config (callables as dotted names) that result files record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clipbench.benchmarks.problem import Problem
from clipbench.benchmarks.verifier import DEFAULT_TIMEOUT_S, verify

TASK_PREFIX = "clipbench_"
FILTER_NAME = "verified"
METRICS = ("avg_at_k", "pass_at_k")
DATA_SPLIT = "test"  # the split name the JSONL is loaded under (whatever the benchmark's split)


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
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return {
        "task": f"{TASK_PREFIX}{benchmark}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {DATA_SPLIT: str(Path(data_file).absolute())}},
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
        "metadata": {"version": 1},
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
