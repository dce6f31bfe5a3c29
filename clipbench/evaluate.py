r"""Evaluation of one model on one registered benchmark, through lm-eval: avg@k and pass@k.

::

    from clipbench.evaluate import evaluate

    summary = evaluate("results/models/base", "math500", out="results/eval/base/math500.json",
                       k=4, data_dir="../shared/data")
    summary["avg@k"], summary["pass@k"], summary["statuses"]

What happens, in order:

1. the arguments are checked (unknown benchmark, ``k < 1``, a missing model directory or data
   file, an ``out`` that is a directory or under a file... raise ValueError naming the field; a
   ``limit`` beyond a generated set's size is capped to it, with a warning) and the problems are
   loaded with :func:`benchmarks.load_with_meta` (local copy, hub or generated), before any model
   is loaded;
2. each prompt is rendered with :func:`benchmarks.build_prompt` (the spec's template, ``base`` or
   ``chat`` style, with the model's own tokenizer) and written with its gold answer to a temporary
   file next to ``out``;
3. ``lm_eval.simple_evaluate`` runs the task of :func:`benchmarks.lm_eval_tasks.task_config` on
   that file with the ``hf`` backend (transformers, CPU or GPU) or ``vllm`` (GPU): k samples per
   problem, greedy for k = 1 and temperature 1.0 for k > 1 unless ``temperature`` is given, seeded
   (python, numpy and torch seeds, and vLLM's engine seed) so that the same call gives the same
   generations; lm-eval's filter hook scores every sample with :func:`benchmarks.verify`;
4. the files are written as one unit: first the old summary (if any) is removed, then the
   prompts file is renamed to ``<stem>.prompts.jsonl``, ``<stem>.samples.jsonl`` (one line per
   problem and sample: prompt, generation, gold, extracted answer, verdict) is written atomically,
   lm-eval's own results and samples files of the run go to ``<stem>.lm_eval/``
   (:mod:`clipbench.lm_eval_layout`, for tools that read lm-eval's layout), and ``out`` (summary
   JSON: metrics, verdict counts, data sha256, task config, provenance, and the sha256 of the two
   sibling files) is written last. A summary therefore exists only beside the
   files it describes: an interrupted run leaves either the previous complete set (interrupted
   before step 4) or no summary at all, never a summary over a mix of old and new files; and
   :func:`read_outputs` tells a complete set from a partial one by the recorded hashes.

Metrics: avg@k is the mean over problems of the fraction of a problem's k samples that are correct
(it is also the unbiased estimate of pass@1); pass@k counts a problem when any of its k samples is
correct; ``avg@k_stderr`` is the standard error of avg@k over problems (sample std / sqrt(n)).
Stop sequences: the tokenizer's EOS always, and for ``chat`` prompts the chat template's
end-of-turn marker; nothing else, so no ``\boxed{}`` answer is ever cut.

The ``vllm`` backend builds its arguments (``pretrained``, ``dtype``, ``gpu_memory_utilization``,
``seed``) like the ``hf`` one but has not been run by this project's tests (no GPU): treat it as
unverified until it has.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import importlib.util
import json
import math
import os
import random
import tempfile
import time
import typing
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipbench import benchmarks, lm_eval_layout
from clipbench.artifacts import MODEL_PROVENANCE_FILE  # written by clipbench.models.save_model
from clipbench.benchmarks import lm_eval_tasks, synthetic
from clipbench.benchmarks.prompts import STYLES
from clipbench.provenance import atomic_write_json, atomic_write_text, provenance
from clipbench.settings import ConfigError, check, setting

__all__ = [
    "BACKENDS",
    "CLI_FIELDS",
    "Settings",
    "add_cli",
    "check_data",
    "check_settings",
    "cli_flag",
    "context_length",
    "evaluate",
    "lm_eval_model",
    "check_output_paths",
    "output_paths",
    "read_outputs",
    "sample_records",
    "sampling",
    "score",
    "stop_sequences",
]

BACKENDS = ("hf", "vllm")
SAMPLING_TEMPERATURE = 1.0  # default for k > 1
VLLM_GPU_MEMORY_UTILIZATION = 0.85
# End-of-turn markers of common chat templates (ChatML, Llama 3, Phi 3, Gemma).
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# Settings repeated at the top level of the summary (all of them are in its provenance config).
_RUN_FIELDS = ("temperature", "max_new_tokens", "prompt_style", "backend", "batch_size", "seed")


# --- arguments ---------------------------------------------------------------------------------


def _benchmarks() -> list[str]:
    return benchmarks.available()


@dataclass(frozen=True)
class Settings:
    """The settings of one evaluation, declared once: :func:`evaluate`'s keyword arguments,
    ``clipbench evaluate``'s flags (:func:`add_cli`) and a study's ``evaluate`` section
    (:mod:`clipbench.study`) are these fields. :func:`check_settings` returns them checked, with the
    benchmark spec's defaults filled in; ``asdict`` of that is the summary's config."""

    benchmark: str = setting(help="a registered set", choices=_benchmarks)
    k: int | None = setting(None, help="samples per problem (default: the benchmark's)", ge=1)
    limit: int | None = setting(None, help="evaluate the first N problems only", ge=1)
    data_dir: str | None = setting(None, help="folder of the local copies (default: the hub)")
    split: str | None = setting(None, help="split (default: the benchmark's)")
    backend: str = setting("hf", help="hf (transformers) or vllm (GPU)", choices=BACKENDS)
    temperature: float | None = setting(None, help="default: 0 (greedy) for k=1, 1.0 for k>1", ge=0)
    max_new_tokens: int | None = setting(None, help="default: the benchmark's", ge=1)
    prompt_style: str = setting(
        "base", help="base: the benchmark's template; chat: the tokenizer's chat template", choices=STYLES
    )
    batch_size: int = setting(32, help="hf backend batch size (default 32)", ge=1)
    seed: int = setting(0, help="seeds the sampling")
    load_kwargs: dict[str, Any] = setting(
        default_factory=dict,
        help="passed to benchmarks.load_with_meta (e.g. min_steps/max_steps of the synthetic set)",
    )

    @classmethod
    def of(cls, benchmark: str, **options: Any) -> Settings:
        """Settings from :func:`evaluate`'s arguments: a keyword that is no field (but
        ``load_kwargs``) goes to ``load_kwargs``; a path is kept as its string. Not checked yet."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("benchmark", "load_kwargs")]
        given = {name: options.pop(name) for name in names if name in options}
        if isinstance(given.get("data_dir"), os.PathLike):
            given["data_dir"] = os.fspath(given["data_dir"])
        return cls(benchmark=benchmark, **given, load_kwargs=options)


#: The fields given on the command line (``--max-new-tokens``...), in order.
CLI_FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "load_kwargs")


def cli_flag(name: str) -> str:
    """The ``clipbench evaluate`` flag of field ``name``: ``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + name.replace("_", "-")


def sampling(k: int, temperature: float | None) -> float:
    """The sampling temperature: as given, else greedy (0) for k = 1 and 1.0 for k > 1."""
    if temperature is None:
        return 0.0 if k == 1 else SAMPLING_TEMPERATURE
    return float(temperature)


def check_settings(settings: Settings) -> Settings:
    """Validate everything that needs no file: every field by its declaration, the split against
    the spec; a bad value raises ValueError naming its field. Returns the settings with the spec's
    defaults filled in (``k``, ``temperature``, ``max_new_tokens``)."""
    check(settings)
    spec = benchmarks.get_spec(settings.benchmark)
    if settings.split is not None and settings.split not in spec.splits:
        raise ConfigError(
            f"split: {settings.benchmark} has no split {settings.split!r}; splits: {', '.join(spec.splits)}"
        )
    if "n" in settings.load_kwargs:
        raise ConfigError("load_kwargs: pass limit=..., not n=...")
    k = spec.k if settings.k is None else settings.k
    return dataclasses.replace(
        settings,
        k=k,
        temperature=sampling(k, settings.temperature),
        max_new_tokens=spec.max_new_tokens if settings.max_new_tokens is None else settings.max_new_tokens,
        load_kwargs=dict(settings.load_kwargs),
    )


def check_data(settings: Settings) -> None:
    """The local copy the settings read exists (``data_dir`` set, a set read from files), without
    reading it; ValueError naming ``data_dir`` otherwise. The loader makes the same check
    (:func:`benchmarks.local_file`); a study calls this when its DAG is built."""
    if settings.data_dir is None or benchmarks.get_spec(settings.benchmark).generated:
        return
    try:
        benchmarks.local_file(settings.benchmark, settings.split, settings.data_dir)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data_dir: {err}") from None


def _looks_local(model: str) -> bool:
    """A path rather than a hub id ("org/name"): it exists, or it can't be a hub id."""
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") != 1


def _check_model(model: str | Path) -> str:
    """The model as a string: a local directory (absolute, must hold config.json) or a hub id."""
    text = str(model)
    if not text:
        raise ValueError("model: empty")
    if not _looks_local(text):
        return text
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError(f"model: {text} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"model: {text} is not a Hugging Face model directory (no config.json)")
    quantization = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    if quantization.get("quant_method") == "gguf" and not any(path.glob("*.gguf")):
        # lm-eval passes this back to from_pretrained, which then fails with an obscure message
        raise ValueError(
            f"model: {text}/config.json keeps a GGUF quantization_config but the directory has no "
            ".gguf file (de-quantised weights): delete that entry from config.json, or re-convert"
        )
    return str(path.resolve())


def _check_installed(backend: str) -> None:
    """lm-eval (and vLLM for that backend) must be importable; say how to install them."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ModuleNotFoundError(
            "evaluation runs through lm-eval: pip install -e '.[eval]' (lm-eval==0.4.13)"
        )
    if backend == "hf" and importlib.util.find_spec("accelerate") is None:
        raise ModuleNotFoundError(
            "lm-eval's hf backend imports accelerate, which plain lm-eval does not install: "
            "pip install -e '.[eval]' (it names accelerate)"
        )
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ModuleNotFoundError("backend='vllm' needs vLLM on a GPU machine: pip install -e '.[gpu]'")


def output_paths(out: str | Path) -> dict[str, Path]:
    """``out`` (the summary, a .json file) and its neighbours ``<stem>.samples.jsonl``, ``<stem>.prompts.jsonl``."""
    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"out must be a .json file, got {str(out)!r}")
    return {
        "summary": out,
        "samples": out.with_name(f"{out.stem}.samples.jsonl"),
        "prompts": out.with_name(f"{out.stem}.prompts.jsonl"),
    }


def check_output_paths(paths: dict[str, Path]) -> None:
    """Each output can be written: not a directory, and no file where a parent folder should be.

    Called before any work, so that a bad ``--out`` fails at once instead of after the generation.
    """
    out = paths["summary"]
    for path in paths.values():
        if path.is_dir():
            raise ValueError(f"out (--out {out}): {path} is a directory; give the summary's .json file path")
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ValueError(f"out (--out {out}): {ancestor} is a file, not a folder to write into")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ValueError(f"out (--out {out}): {ancestor} is not writable")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_outputs(out: str | Path) -> dict[str, Any]:
    """The summary at ``out`` once its set is complete: ValueError when it is not.

    Complete: the summary exists and its sibling files (samples, prompts) exist with the sha256 the
    summary recorded when it was written (summaries older than that record only the prompts').
    """
    paths = output_paths(out)
    if not paths["summary"].is_file():
        raise ValueError(f"{paths['summary']}: no summary (never written, or an interrupted run removed it)")
    summary = json.loads(paths["summary"].read_text())
    files = summary.get("files", {})
    for kind in ("samples", "prompts"):
        expected = files.get(f"{kind}_sha256")
        if expected is None:
            continue
        sibling = paths["summary"].with_name(files.get(kind, paths[kind].name))
        if not sibling.is_file():
            raise ValueError(f"{paths['summary']}: its {kind} file {sibling.name} is missing")
        if _sha256(sibling.read_bytes()) != expected:
            raise ValueError(
                f"{paths['summary']}: {sibling.name} is not the file this summary describes (sha256 differs)"
            )
    return summary


def _write_outputs(
    paths: dict[str, Path],
    prompts_tmp: Path,
    samples_text: str,
    summary: dict,
    results: dict,
    tracker: Any,
    limit: int | None,
) -> None:
    """Step 4 of the module docstring: the old summary goes first, the new one comes last; lm-eval's
    own layout of the run (``results``, through its ``tracker``) is written in between."""
    paths["summary"].unlink(missing_ok=True)
    os.replace(prompts_tmp, paths["prompts"])
    atomic_write_text(paths["samples"], samples_text)
    lm_eval_layout.write(
        paths["summary"], results, tracker, data_files=paths["prompts"].absolute(), limit=limit
    )
    atomic_write_json(paths["summary"], summary)


def _generated_size(spec: benchmarks.BenchmarkSpec, split: str | None) -> int | None:
    """The number of problems of a generated set's split (its generator's default), else None."""
    split = spec.default_split if split is None else split
    if not spec.generated or split not in synthetic.SPLITS:
        return None
    return synthetic.SPLITS[split][2]


def _cap_limit(settings: Settings) -> Settings:
    """A ``limit`` beyond a generated set's size is capped to it (the generator would otherwise
    draw problems until memory runs out), with a one-line warning naming the real size."""
    size = _generated_size(benchmarks.get_spec(settings.benchmark), settings.split)
    if size is None or settings.limit is None or settings.limit <= size:
        return settings
    split = settings.split or benchmarks.get_spec(settings.benchmark).default_split
    warnings.warn(
        f"limit={settings.limit} is more than the {size} problems of {settings.benchmark}/{split}: "
        f"evaluating all {size}",
        stacklevel=3,
    )
    return dataclasses.replace(settings, limit=size)


def _load_problems(
    benchmark: str, data_dir: str | Path | None, split: str | None, limit: int | None, load_kwargs: dict
) -> benchmarks.LoadResult:
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(f"data_dir: {data_dir} is not a directory")
    try:
        result = benchmarks.load_with_meta(benchmark, data_dir, split, n=limit, **load_kwargs)
    except FileNotFoundError as err:
        raise ValueError(f"data_dir: {err}") from None
    if not result.problems:
        raise ValueError(f"{benchmark}/{result.split}: no problems to evaluate")
    return result


# --- prompts, stops, lm-eval arguments ---------------------------------------------------------


def stop_sequences(tokenizer: Any, prompt_style: str) -> list[str]:
    """EOS always; for chat prompts also the end-of-turn marker their chat template uses.

    Base models get nothing else: a stop string such as "\n\n" would cut worked answers before
    their ``\boxed{}``. (A base model that rambles on after its answer only costs tokens: the
    verifier reads the last ``\boxed{}``.)
    """
    stops = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    if prompt_style == "chat":
        template = getattr(tokenizer, "chat_template", None) or ""
        stops += [m for m in TURN_END_MARKERS if m in template and m not in stops]
    return stops


def _render_prompts(
    problems: Sequence[benchmarks.Problem], tokenizer: Any, style: str, template: str
) -> list[str]:
    try:
        return [benchmarks.build_prompt(p, tokenizer, style, template=template) for p in problems]
    except ValueError as err:
        raise ValueError(f"prompt_style={style!r}: {err}") from None
    except Exception as err:  # e.g. a tokenizer without a chat template
        raise ValueError(f"prompt_style={style!r}: cannot render the prompt: {err}") from None


def context_length(model: str) -> int | None:
    """The model's context length as lm-eval reads it from the config (None when it has none)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _overlong_prompts(
    prompts: Sequence[str], tokenizer: Any, max_new_tokens: int, context: int | None
) -> int:
    """How many prompts lm-eval will left-truncate to leave room for ``max_new_tokens``."""
    if context is None:
        return 0
    if max_new_tokens >= context:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of {context} tokens"
        )
    return sum(len(ids) + max_new_tokens > context for ids in tokenizer(list(prompts))["input_ids"])


def lm_eval_model(backend: str, model: str, *, seed: int) -> tuple[str, dict[str, Any]]:
    """``(model, model_args)`` for ``lm_eval.simple_evaluate``."""
    if backend == "hf":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return "hf", {"pretrained": model, "tokenizer": model, "dtype": "float32", "device": device}
    if backend == "vllm":
        return "vllm", {
            "pretrained": model,
            "tokenizer": model,
            "dtype": "auto",  # the checkpoint's dtype: float32 for the tiny model, bf16 for Qwen3
            "gpu_memory_utilization": VLLM_GPU_MEMORY_UTILIZATION,
            "seed": seed,
        }
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


@contextlib.contextmanager
def _global_rngs_restored() -> Iterator[None]:
    """simple_evaluate seeds python's, numpy's and torch's global RNGs; give the caller theirs back."""
    import numpy as np
    import torch

    # numpy's legacy global state is exactly what lm-eval reseeds, hence the legacy calls
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


def _run_lm_eval(
    task: dict, model_name: str, model_args: dict, *, batch_size: int | str, seed: int, tracker: Any
) -> dict:
    """``lm_eval.simple_evaluate`` on the inline ``task``; ``tracker`` (:func:`lm_eval_layout.tracker`)
    logs the run's model and timing fields as lm-eval's command line does."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    # A private `datasets` cache, deleted afterwards: the prompts file is rewritten by every run and
    # its arrow copy has no use beyond this one.
    with tempfile.TemporaryDirectory(prefix="clipbench-eval-") as cache, _global_rngs_restored():
        task = task | {"dataset_kwargs": task["dataset_kwargs"] | {"cache_dir": cache}}
        results = lm_eval.simple_evaluate(
            model=model_name,
            model_args=model_args,
            tasks=[task],
            batch_size=batch_size,
            # the built-in task index takes ~5 s to scan and is not needed for an inline config
            task_manager=TaskManager(include_defaults=False),
            log_samples=True,
            evaluation_tracker=tracker,
            # lm-eval's default: for a mean (both metrics) it gives the closed-form standard error,
            # sample std / sqrt(n), no resampling: the summary's avg@k_stderr, in lm-eval's results
            bootstrap_iters=100000,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results (not rank 0?)")
    return results


# --- scoring -----------------------------------------------------------------------------------


def score(correct: Sequence[Sequence[bool]]) -> dict[str, float | None]:
    """avg@k, pass@k, pass@1 (= avg@k) and the standard error of avg@k over problems.

    ``correct[i][j]``: sample j of problem i was correct. The standard error is the sample std
    (ddof 1) of the per-problem accuracies over sqrt(n), None for a single problem.
    """
    if not correct:
        raise ValueError("no problems to score")
    per_problem = [lm_eval_tasks.problem_metrics(c) for c in correct]
    acc = [m["avg_at_k"] for m in per_problem]
    n = len(acc)
    avg = sum(acc) / n
    stderr = math.sqrt(sum((a - avg) ** 2 for a in acc) / (n - 1) / n) if n > 1 else None
    return {
        "avg@k": avg,
        "pass@k": sum(m["pass_at_k"] for m in per_problem) / n,
        "pass@1": avg,
        "avg@k_stderr": stderr,
    }


def sample_records(logged: Sequence[dict]) -> list[dict[str, Any]]:
    """lm-eval's logged samples -> one record per (problem, sample), ordered by problem then sample."""
    records = []
    for entry in sorted(logged, key=lambda e: e["doc"]["index"]):
        doc = entry["doc"]
        (verdicts,) = entry["filtered_resps"]
        for j, v in enumerate(verdicts):
            records.append(
                {
                    "problem_index": doc["index"],
                    "problem_id": doc["id"],
                    "sample": j,
                    "prompt": doc["prompt"],
                    "generation": v["generation"],
                    "gold": doc["answer"],
                    "extracted": v["extracted"],
                    "method": v["method"],
                    "correct": v["correct"],
                    "status": v["status"],
                    "detail": v["detail"],
                }
            )
    return records


def _correct_by_problem(records: Sequence[dict]) -> list[list[bool]]:
    grouped: dict[int, list[bool]] = {}
    for r in records:
        grouped.setdefault(r["problem_index"], []).append(r["correct"])
    return [grouped[i] for i in sorted(grouped)]


def _verdicts(records: Sequence[dict]) -> list[benchmarks.Verdict]:
    return [
        benchmarks.Verdict(r["correct"], r["status"], r["extracted"], r["method"], r["detail"])
        for r in records
    ]


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def _model_info(model: str) -> dict[str, Any]:
    provenance_file = Path(model) / MODEL_PROVENANCE_FILE
    info = json.loads(provenance_file.read_text()) if provenance_file.is_file() else None
    return {"path": model, "clipbench_model": info}


# --- the entry point ---------------------------------------------------------------------------


def _lm_eval_metrics(results: dict, task_name: str) -> dict[str, Any]:
    """lm-eval's own aggregates of :func:`benchmarks.lm_eval_tasks.process_results` (a cross-check)."""
    return {
        key: value
        for key, value in results["results"][task_name].items()
        if key.split(",")[0] in lm_eval_tasks.METRICS
    }


def _source(loaded: benchmarks.LoadResult) -> dict[str, Any]:
    return {
        "kind": loaded.source,
        "path": None if loaded.path is None else str(loaded.path),
        "sha256": loaded.sha256,
        "expected_sha256": loaded.expected_sha256,
        "sha256_ok": loaded.sha256_ok,
        "skipped_rows": len(loaded.skipped),
    }


def evaluate(
    model: str | Path, benchmark: str | Settings, *, out: str | Path, **options: Any
) -> dict[str, Any]:
    """Evaluate ``model`` on ``benchmark`` through lm-eval; write ``out`` and its samples file.

    ``benchmark`` is a registered set's name, with the other :class:`Settings` fields as keyword
    ``options``, or a whole :class:`Settings`. ``k`` (samples per problem) and ``max_new_tokens``
    default to the benchmark spec's; ``limit`` keeps the first problems; ``data_dir`` reads the
    local copy (None: the hub, or the generator for ``synthetic``); any other keyword goes to
    :func:`benchmarks.load_with_meta` (e.g. ``min_steps``/``max_steps`` of the synthetic set, whose
    generator seed stays its default so that every evaluation sees the same problems; ``seed``
    seeds the sampling). ``model`` is a directory, or a hub id ("org/name", exactly one slash, not
    an existing path). ``batch_size`` is the hf backend's (vLLM schedules its own batches). Returns
    the summary written to ``out`` (see the module docstring).
    """
    started = time.perf_counter()
    if isinstance(benchmark, Settings):
        if options:
            raise TypeError(f"evaluate: give a Settings or keyword options, not both ({sorted(options)})")
        settings = benchmark
    else:
        settings = Settings.of(benchmark, **options)
    settings = check_settings(settings)
    settings = _cap_limit(settings)
    spec = benchmarks.get_spec(settings.benchmark)
    paths = output_paths(out)
    check_output_paths(paths)
    lm_eval_layout.check_folder(paths["summary"])
    model = _check_model(model)
    _check_installed(settings.backend)
    loaded = _load_problems(
        settings.benchmark, settings.data_dir, settings.split, settings.limit, settings.load_kwargs
    )

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = _render_prompts(loaded.problems, tokenizer, settings.prompt_style, spec.prompt_template)
    stops = stop_sequences(tokenizer, settings.prompt_style)
    truncated = _overlong_prompts(prompts, tokenizer, settings.max_new_tokens, context_length(model))
    if truncated:
        warnings.warn(
            f"{truncated} of {len(prompts)} prompts plus max_new_tokens={settings.max_new_tokens} exceed "
            "the model's context: lm-eval keeps only their last tokens",
            stacklevel=2,
        )
    prompts_text = _jsonl(lm_eval_tasks.prompt_rows(loaded.problems, prompts))
    # lm-eval reads the prompts from a file: a temporary one until the whole set is written (step 4)
    folder = paths["prompts"].parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(paths)
    # Made under a name the sweep ignores, locked, and only then renamed into the sweep's pattern
    # (the lock goes with the file): a concurrent sweep never finds this run's file unlocked.
    creating = f".{paths['prompts'].name}.new-"
    fd, name = tempfile.mkstemp(prefix=creating, suffix=".jsonl", dir=folder)
    prompts_tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            _try_flock(handle.fileno())  # held while this run lives: marks the file as in use
            partial = prompts_tmp.with_name(_partial_prefix(paths) + prompts_tmp.name[len(creating) :])
            os.replace(prompts_tmp, partial)
            prompts_tmp = partial
            handle.write(prompts_text)
            handle.flush()
            os.chmod(prompts_tmp, 0o644)  # mkstemp makes the file private; results are meant to be shared
            return _generate_and_write(
                settings, spec, model, loaded, paths, prompts_tmp, prompts_text, stops, truncated, started
            )
    finally:
        prompts_tmp.unlink(missing_ok=True)


def _partial_prefix(paths: dict[str, Path]) -> str:
    return f"{paths['prompts'].name}.partial-"


def _try_flock(fd: int) -> bool | None:
    """An exclusive, non-blocking flock on ``fd``: True when taken, False when another process
    holds one, None on a filesystem without flock (nothing can be known)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def remove_stale_partials(paths: dict[str, Path]) -> list[Path]:
    """Remove the temporary prompts files (``<stem>.prompts.jsonl.partial-*``) that killed runs of
    this output left behind. Only a file this process can lock is removed: one a running evaluation
    holds (its flock) stays, and so does every file on a filesystem without flock or one that
    cannot be opened or removed (a warning names it)."""
    removed = []
    for leftover in paths["prompts"].parent.glob(f"{glob.escape(_partial_prefix(paths))}*.jsonl"):
        try:
            with open(leftover, "rb") as handle:
                if _try_flock(handle.fileno()) is not True:
                    continue
                leftover.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            warnings.warn(f"{leftover}: a stale temporary file that cannot be removed ({err})", stacklevel=2)
            continue
        removed.append(leftover)
    return removed


def _generate_and_write(
    settings: Settings,
    spec: benchmarks.BenchmarkSpec,
    model: str,
    loaded: benchmarks.LoadResult,
    paths: dict[str, Path],
    prompts_tmp: Path,
    prompts_text: str,
    stops: list[str],
    truncated: int,
    started: float,
) -> dict[str, Any]:
    """Steps 3 and 4 of the module docstring: lm-eval on ``prompts_tmp``, then the files."""
    benchmark, backend, seed = settings.benchmark, settings.backend, settings.seed
    generation = lm_eval_tasks.generation_kwargs(
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, stop=stops, backend=backend
    )
    task = lm_eval_tasks.task_config(
        benchmark, prompts_tmp, k=settings.k, generation=generation, fallbacks=spec.fallbacks
    )
    model_name, model_args = lm_eval_model(backend, model, seed=seed)
    lm_batch_size: int | str = "auto" if backend == "vllm" else settings.batch_size
    lm_eval_started = time.perf_counter()
    tracker = lm_eval_layout.tracker()
    results = _run_lm_eval(task, model_name, model_args, batch_size=lm_batch_size, seed=seed, tracker=tracker)
    lm_eval_s = time.perf_counter() - lm_eval_started

    records = sample_records(results["samples"][task["task"]])
    samples_text = _jsonl(records)
    # the summary describes the task as it reads once the prompts file has its final name
    described = lm_eval_tasks.describe_config(task)
    data_files = described["dataset_kwargs"]["data_files"]
    described["dataset_kwargs"]["data_files"] = {key: str(paths["prompts"].absolute()) for key in data_files}
    config = {"model": model, **asdict(settings), "split": loaded.split}
    summary = {
        **{key: config[key] for key in ("benchmark", "split", "k", "limit")},
        "model": _model_info(model),
        "n_problems": len(loaded.problems),
        "n_samples": len(records),
        "truncated_prompts": truncated,
        **{key: config[key] for key in _RUN_FIELDS},
        **score(_correct_by_problem(records)),
        "statuses": benchmarks.count_statuses(_verdicts(records)),
        "source": _source(loaded),
        "files": {
            "samples": paths["samples"].name,
            "prompts": paths["prompts"].name,
            "samples_sha256": _sha256(samples_text.encode()),
            "prompts_sha256": _sha256(prompts_text.encode()),
        },
        "lm_eval": {
            "task_config": described,
            "model": model_name,
            "model_args": model_args,
            "batch_size": lm_batch_size,
            "stop_sequences": stops,
            "metrics": _lm_eval_metrics(results, task["task"]),
        },
        "timing_s": {"lm_eval": round(lm_eval_s, 3), "total": round(time.perf_counter() - started, 3)},
        "provenance": provenance(config, seed=seed),
    }
    _write_outputs(paths, prompts_tmp, samples_text, summary, results, tracker, settings.limit)
    return summary


# --- command line ------------------------------------------------------------------------------


def read_plan(text: str) -> list[tuple[Settings, Path]]:
    """``--plan-json``: a JSON list of evaluations, each an object of :class:`Settings` fields
    (``benchmark`` required) and ``out``, its summary file. Every entry is checked, naming it
    (``plan[i].field``), before anything is evaluated; two entries may not share an ``out``."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"plan: not valid JSON ({err})") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError("plan: expected a non-empty JSON list of evaluations")
    from clipbench.settings import from_dict

    plan = []
    for i, entry in enumerate(entries):
        where = f"plan[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("out"), str) or not entry["out"]:
            raise ConfigError(f"{where}.out: required, the summary file (a path)")
        fields = {name: value for name, value in entry.items() if name != "out"}
        settings = check_settings(from_dict(Settings, fields, prefix=where))
        plan.append((settings, Path(entry["out"])))
    outs = [out for _, out in plan]
    for i, out in enumerate(outs):
        if out in outs[:i]:
            raise ConfigError(f"plan[{i}].out: {out} is also plan[{outs.index(out)}]'s")
    return plan


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    print(
        f"{summary['benchmark']}/{summary['split']}: {summary['n_problems']} problems x k={summary['k']}: "
        f"avg@k {summary['avg@k']:.4f}, pass@k {summary['pass@k']:.4f}, statuses {summary['statuses']}"
    )
    print(f"summary: {out}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.plan_json is None:
        if args.benchmark is None or args.out is None:
            raise ConfigError("evaluate: give --benchmark and --out (one evaluation) or --plan-json")
        settings = Settings.of(**{name: getattr(args, name) for name in CLI_FIELDS})
        _print_summary(evaluate(args.model, settings, out=args.out), args.out)
        return 0
    given = [cli_flag(name) for name in ("benchmark", "out", *CLI_FIELDS[1:]) if _given(args, name)]
    if given:
        raise ConfigError(f"evaluate: --plan-json holds every setting; {given[0]} is not taken with it")
    plan = read_plan(args.plan_json)
    for settings, out in plan:  # one after another, in one process (the same results as one call each)
        _print_summary(evaluate(args.model, settings, out=out), out)
    return 0


def _given(args: argparse.Namespace, name: str) -> bool:
    """Whether flag ``name`` was given (its value differs from the parser's default)."""
    return getattr(args, name) != args.defaults[name]


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` sub-command on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model on a benchmark through lm-eval (avg@k, pass@k, per-sample verdicts)",
        description="Generate k samples per problem with lm-eval (hf or vllm backend), score each with the "
        "verifier, and write the summary JSON (--out), <stem>.samples.jsonl beside it, and lm-eval's own results "
        "and samples files in <stem>.lm_eval/.",
    )
    p.add_argument("--model", required=True, help="model directory (Hugging Face format) or hub id")
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        if f.name not in CLI_FIELDS:
            continue
        kind = typing.get_args(hints[f.name])[0] if typing.get_args(hints[f.name]) else hints[f.name]
        kwargs: dict[str, Any] = {"help": f.metadata["help"]}
        kwargs["default"] = None if f.default is dataclasses.MISSING else f.default
        if f.name == "benchmark":
            kwargs["help"] = f"registered set: {', '.join(benchmarks.available())}"
        elif isinstance(f.metadata.get("choices"), tuple):
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["type"] = Path if f.name == "data_dir" else kind
        p.add_argument(cli_flag(f.name), **kwargs)
        if f.name == "benchmark":
            p.add_argument("--out", type=Path, help="summary JSON file (required with --benchmark)")
    p.add_argument(
        "--plan-json",
        help="several evaluations of the model in one process, instead of --benchmark and --out: a JSON "
        'list of objects, each the settings above by field name and "out", e.g. [{"benchmark": "math500", '
        '"k": 4, "out": "math500.json"}] (a study\'s evaluate job: clipbench.study.eval_plan)',
    )
    p.set_defaults(func=_cmd_evaluate)
    # what _given compares against: each flag's default as declared above
    p.set_defaults(defaults={name: p.get_default(name) for name in ("out", *CLI_FIELDS)})
    return p
