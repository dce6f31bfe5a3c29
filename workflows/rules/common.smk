# Shared helpers: the study grid, per-run configs, and checks that fail at DAG construction
# (before any job runs) with a message naming the offending key.

import json
import re
from pathlib import Path

import benchmarks
import methods
from clipbench import artifacts, plots
from clipbench.artifacts import RunId
from clipbench.provenance import config_hash


class StudyConfigError(ValueError):
    pass


# Names that become file names and wildcards (method names, benchmark keys): the schema asks the
# same pattern (artifacts.NAME); checked here again before any path is built from them.
def _check_name(where, name):
    try:
        artifacts.check_name(name, f"config {where}")
    except ValueError as err:
        raise StudyConfigError(str(err)) from None


def _study_methods():
    names = list(config.get("methods") or methods.available_methods())
    for name in names:
        _check_name("methods", name)
        if name not in methods.available_methods():
            raise StudyConfigError(
                f"config methods: unknown method {name!r}; available: {', '.join(methods.available_methods())}"
            )
    for name, params in (config.get("method_params") or {}).items():
        _check_name("method_params", name)
        if name not in methods.available_methods():
            raise StudyConfigError(f"config method_params.{name}: unknown method; available: {', '.join(methods.available_methods())}")
        try:
            methods.get_method(name, **params)
        except ValueError as err:
            raise StudyConfigError(f"config method_params.{name}: {err}") from None
    return names


def _study_benchmarks():
    evaluate = config["evaluate"]
    data_dir = evaluate.get("data_dir")
    for key, entry in evaluate["benchmarks"].items():
        _check_name("evaluate.benchmarks", key)
        name = entry["benchmark"]
        if name not in benchmarks.available():
            raise StudyConfigError(
                f"config evaluate.benchmarks.{key}.benchmark: unknown benchmark {name!r}; available: {', '.join(benchmarks.available())}"
            )
        spec = benchmarks.get_spec(name)
        split = entry.get("split") or spec.default_split
        if split not in spec.splits:
            raise StudyConfigError(f"config evaluate.benchmarks.{key}.split: {name} has no split {split!r}; splits: {', '.join(spec.splits)}")
        if data_dir and not spec.generated:
            local = spec.local.get(split)
            if local is None:
                raise StudyConfigError(f"config evaluate.benchmarks.{key}: {name} has no local copy of split {split!r} (evaluate.data_dir is set)")
            path = Path(data_dir) / local.path
            if not path.exists():
                raise StudyConfigError(f"config evaluate.benchmarks.{key}: local data file {path} does not exist (evaluate.data_dir={data_dir!r})")
    return list(evaluate["benchmarks"])


METHODS = _study_methods()
SEEDS = [int(s) for s in config["seeds"]]
BENCHES = _study_benchmarks()
RUNS = [RunId(m, s) for m in METHODS for s in SEEDS]
MODELS = [artifacts.BASE] + [run.model for run in RUNS]
CONFIG_HASH = config_hash(config)


# Each wildcard matches only the study's own (checked) names: never a `/` or `..`.
wildcard_constraints:
    method="|".join(map(re.escape, METHODS)) or "NONE",
    seed=artifacts.SEED,
    model=artifacts.model_wildcard(METHODS),
    bench="|".join(map(re.escape, BENCHES)),


def base_model_dir():
    base = config["base"]
    if base["kind"] == "path":
        return base["path"]
    return artifacts.BASE_MODEL_DIR


def base_model_input():
    """The file the train and evaluate rules wait on (nothing for a hub id)."""
    directory = base_model_dir()
    if config["base"]["kind"] == "path" and not Path(directory).exists():
        return []
    return f"{directory}/config.json" if config["base"]["kind"] == "path" else artifacts.BASE_MODEL_MARKER


def run_config(method, seed):
    """The TrainConfig dict of one run (written to run.yaml; a change reruns that run)."""
    return {
        **config["train"],
        "model": base_model_dir(),
        "method": method,
        "method_params": (config.get("method_params") or {}).get(method, {}),
        "seed": int(seed),
    }


def model_dir(model):
    return artifacts.model_dir(model, base_dir=base_model_dir())


def model_input(wildcards):
    run = artifacts.parse_model(wildcards.model)
    return base_model_input() if run is None else run.final_summary


def eval_args(bench):
    """The evaluate command's arguments, one list item per shell word: the rule writes them
    `{params.args:q}`, each quoted (a data_dir with a space or `$(...)` stays one argument)."""
    entry = config["evaluate"]["benchmarks"][bench]
    evaluate = config["evaluate"]
    args = ["--benchmark", entry["benchmark"]]
    for key, flag in (("split", "--split"), ("k", "--k"), ("limit", "--limit"), ("max_new_tokens", "--max-new-tokens"), ("temperature", "--temperature")):
        if entry.get(key) is not None:
            args += [flag, str(entry[key])]
    if evaluate.get("data_dir"):
        args += ["--data-dir", str(evaluate["data_dir"])]
    args += ["--backend", evaluate.get("backend", "hf")]
    args += ["--prompt-style", evaluate.get("prompt_style", "base")]
    return args


def sft_args():
    """`--set FIELD=VALUE` for each base.sft field, one list item per shell word (quoted by the rule)."""
    args = []
    for key, value in (config["base"].get("sft") or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def resources_of(group):
    return (config.get("resources") or {}).get(group, {})


def _check_run_settings():
    """The SFT settings and every run's TrainConfig, validated now: a bad field fails the DAG,
    not a job after hours of compute."""
    from clipbench.config import ConfigError, from_dict, load_config
    from clipbench.sft import SFTConfig

    if config["base"]["kind"] == "sft":
        try:
            from_dict(SFTConfig, config["base"].get("sft") or {}, "base.sft")
        except ValueError as err:  # ConfigError, or SFTConfig's range checks
            raise StudyConfigError(f"config {err}") from None
    for run in RUNS:
        try:
            load_config(run_config(run.method, run.seed))
        except ConfigError as err:
            raise StudyConfigError(f"config train: {err}") from None


_check_run_settings()


# For each input a plot may declare (clipbench.plots.INPUTS): the files it is read from, and the
# `clipbench report` arguments that give it.
PLOT_INPUT_FILES = {
    "summary": [artifacts.SUMMARY_CSV],
    "fairness": [artifacts.FAIRNESS_CSV],
    "fairness_bins": [artifacts.FAIRNESS_BINS_CSV],
    "metrics": [run.final_summary for run in RUNS],
}
PLOT_INPUT_ARGS = {
    "summary": ["--summary", artifacts.SUMMARY_CSV],
    "fairness": ["--fairness", artifacts.FAIRNESS_CSV],
    "fairness_bins": ["--fairness-bins", artifacts.FAIRNESS_BINS_CSV],
    "metrics": ["--runs", *(run.run_dir for run in RUNS)],
}


def plot_inputs(wildcards):
    return [path for need in plots.get_plot(wildcards.plot).inputs for path in PLOT_INPUT_FILES[need]]


def plot_args(wildcards):
    args = [arg for need in plots.get_plot(wildcards.plot).inputs for arg in PLOT_INPUT_ARGS[need]]
    return args + ["--plots", artifacts.PLOTS_DIR, "--only", wildcards.plot]
