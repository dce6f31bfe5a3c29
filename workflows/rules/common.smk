# Shared helpers: the study grid, per-run configs, and the check that fails at DAG construction
# (before any job runs) with a message naming the offending key: clipbench.study.check_study, which
# calls the validators the jobs themselves use.

import json
import re
from pathlib import Path

from clipbench import artifacts, calibration, fairness, jobhost, plots, study
from clipbench.artifacts import RunId
from clipbench.provenance import config_hash

GRID = study.check_study(config)
METHODS = GRID.methods
SEEDS = GRID.seeds
BENCHES = GRID.benchmarks
REFERENCE = GRID.reference  # report.reference, resolved and checked (clipbench.study.check_study)
PROBE = GRID.probe  # a probe: section: the probe of the base model (workflows/rules/probe.smk)
CALIBRATED = GRID.calibrated  # the rules the calibrate job calibrates (a calibration: section)
VERL = study.train_backend(config) == "verl"  # train.backend verl: workflows/rules/verl.smk trains
RUNS = [RunId(m, s) for m in METHODS for s in SEEDS]
MODELS = [artifacts.BASE] + [run.model for run in RUNS]
CONFIG_HASH = config_hash(config)


# Each wildcard matches only the study's own (checked) names: never a `/` or `..`.
wildcard_constraints:
    method="|".join(map(re.escape, METHODS)) or "NONE",
    seed=artifacts.SEED,
    model=artifacts.model_wildcard(METHODS),
    bench="|".join(map(re.escape, BENCHES)) or "NONE",


def base_model_dir():
    return study.base_model_dir(config)


def base_model_input():
    """The file the train and evaluate rules wait on (nothing for a hub id)."""
    directory = base_model_dir()
    if config["base"]["kind"] == "path" and not Path(directory).exists():
        return []
    return f"{directory}/config.json" if config["base"]["kind"] == "path" else artifacts.BASE_MODEL_MARKER


def calibration_input():
    """The file the train jobs and the main table wait on with a calibration: section (else none)."""
    return artifacts.CALIBRATION_JSON if CALIBRATED else []


def run_config(method, seed, input=None):
    """The TrainConfig dict of one run (written to run.yaml; a change reruns that run). Given the
    train job's `input` in a calibrated study, with calibration.json's bands (hand-set method_params
    over them: clipbench.study.run_config). Before the calibrate job has run the file is missing:
    Snakemake then shows the value as <TBD> and evaluates it again when the job starts."""
    calibrated = calibration.read_calibration(input.calibration) if CALIBRATED and input is not None else None
    return study.run_config(config, method, seed, calibrated)


def probe_args():
    """`clipbench probe`'s arguments for the study's probe (clipbench.study.probe_args), one list item
    per shell word."""
    return study.probe_args(config)


def calibrate_args():
    """`clipbench calibrate`'s arguments (clipbench.study.calibrate_args), one list item per shell word."""
    return study.calibrate_args(config, CALIBRATED)


def model_dir(model):
    return artifacts.model_dir(model, base_dir=base_model_dir())


def model_input(wildcards):
    run = artifacts.parse_model(wildcards.model)
    return base_model_input() if run is None else run.final_summary


def report_args():
    """The aggregate command's --reference and --resamples, one list item per shell word."""
    return study.report_args(config, REFERENCE)


def sft_args():
    """`--set FIELD=VALUE` for each base.sft field, one list item per shell word (quoted by the rule)."""
    return study.sft_args(config)


def resources_of(group):
    return (config.get("resources") or {}).get(group, {})


# For each input a plot may declare (clipbench.plots.INPUTS): the files it is read from, and the
# `clipbench report` arguments that give it (the runs' metrics: every run of the study).
PLOT_INPUT_FILES = {
    name: [source.study_file] if source.study_file else [run.final_summary for run in RUNS]
    for name, source in plots.INPUTS.items()
}
PLOT_INPUT_ARGS = {
    name: [source.flag, *([source.study_file] if source.study_file else [run.run_dir for run in RUNS])]
    for name, source in plots.INPUTS.items()
}


def plot_inputs(wildcards):
    return [path for need in plots.get_plot(wildcards.plot).inputs for path in PLOT_INPUT_FILES[need]]


def plot_args(wildcards):
    """The report command's arguments for one plot: its inputs, its options (the config's report
    section: clipbench.study.plot_option_args), where it goes."""
    args = [arg for need in plots.get_plot(wildcards.plot).inputs for arg in PLOT_INPUT_ARGS[need]]
    args += study.plot_option_args(config, wildcards.plot)
    return args + ["--plots", artifacts.PLOTS_DIR, "--only", wildcards.plot]


# A local run's jobs start as forks of one process that has imported torch, transformers and
# lm-eval once (clipbench/jobhost.py: the same job, same files; not for a dry run, a cluster or
# --use-conda; CLIPBENCH_JOB_HOST=off turns it off).
onstart:
    jobhost.start(workflow)
