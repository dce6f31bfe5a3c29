"""The `clipbench` command line: one sub-command per job (`clipbench --help` lists them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from clipbench import artifacts


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _parse_lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths {text!r}: expected comma-separated integers") from None
    if not values:
        raise argparse.ArgumentTypeError("--lengths: give at least one length")
    return values


def _parse_sets(items: Sequence[str]) -> dict[str, object]:
    """`--set optim.lr=1e-3` -> {"optim.lr": 0.001} (values read as YAML scalars, `load_yaml`, so
    `1e-5` is a number and `kl` is text). A malformed item raises ValueError naming it."""
    import yaml

    from clipbench.config import load_yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        try:
            out[key] = load_yaml(raw)
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({reason})") from None
    return out


def _parse_method_sets(items: Sequence[str]) -> dict[str, dict]:
    """`--set fspo.c_low=0.015` -> {"fspo": {"c_low": 0.015}} (values as in `_parse_sets`)."""
    params: dict[str, dict] = {}
    for item in items:
        key = item.partition("=")[0]
        method, dot, field = key.partition(".")
        if "=" not in item or not dot or not method or not field:
            raise ValueError(f"--set {item!r}: expected METHOD.FIELD=VALUE, e.g. fspo.c_low=0.015")
        params.setdefault(method, {})[field] = _parse_sets([item])[key]
    return params


class _DeprecatedAlias(argparse._AppendAction):
    """A hidden old spelling of an append option: works as before, with a one-line warning on stderr."""

    def __init__(self, *args, replacement: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warned = "_warned_" + self.dest
        if not getattr(namespace, warned, False):
            setattr(namespace, warned, True)
            print(
                f"{parser.prog}: warning: {option_string} is deprecated and will be removed; "
                f"use {self.replacement} (same syntax)",
                file=sys.stderr,
            )
        super().__call__(parser, namespace, values, option_string)


def cmd_simulate(args: argparse.Namespace) -> int:
    from clipbench.simulate import SimulationConfig, simulate, write_outputs

    config = SimulationConfig(
        sigma=args.sigma,
        mu=args.mu,
        lengths=args.lengths,
        n=args.n,
        seed=args.seed,
        methods=tuple(args.methods or ()),
        method_params=_parse_method_sets(args.set),
    )
    config.build_methods()  # fail on a bad method or hyperparameter before any compute
    result = simulate(config)
    paths = write_outputs(result, args.out)
    print(paths["table"].read_text(), end="")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import time

    from clipbench import probe
    from clipbench.settings import ConfigError

    start = time.perf_counter()
    options = {
        name: getattr(args, name)
        for name in (
            "model",
            "benchmark",
            "split",
            "data_dir",
            "prompt_style",
            "n_prompts",
            "samples",
            "max_new_tokens",
            "temperature",
            "lr",
            "updates",
            "method",
            "estimator",
            "engine",
            "max_tokens_per_microbatch",
            "logprob_chunk_tokens",
            "device",
            "seed",
            "bins",
            "target_rate",
            "resamples",
            "bootstrap_seed",
        )
        if getattr(args, name) is not None
    }
    options["methods"] = list(args.methods or [])
    try:
        options["method_params"] = _parse_method_sets(args.set)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    # Every option is checked (and --out) before the model is loaded or anything computed.
    config, carrier = probe.load_probe_config(options)
    artifacts.check_run_dir_path(args.out)
    try:
        measured = probe.run(config, carrier, args.out)
    except ConfigError as err:  # the model does not load
        raise ConfigError(probe.option_message(str(err))) from None
    summary, frame = probe.analyse(measured, config)
    timings = {**measured.timings, "total_s": time.perf_counter() - start}
    paths = probe.write_outputs(summary, frame, args.out, timings)
    print("\n".join(summary["recommendation"]))
    print(f"wall time: {timings['total_s']:.1f} s")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from clipbench import calibration, probe
    from clipbench.settings import ConfigError

    try:
        method_params = _parse_method_sets(args.set)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for flag, value in (("--target-rate", args.target_rate), ("--tolerance", args.tolerance)):
        if not 0 < value < 1:
            raise ConfigError(f"{flag}: must be in (0, 1), got {value}")
    # Every option is checked before anything is read.
    names = calibration.check_rules(args.methods or [], method_params)
    sequences = artifacts.probe_paths(args.probe)["sequences"]
    if not sequences.is_file():
        raise ValueError(
            f"--probe {args.probe}: no {sequences.name} (give the --out folder of `clipbench probe`)"
        )
    if args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a directory; give the calibration.json file to write")
    measurement, provenance = probe.read_measurement(sequences)
    rules = calibration.calibrate(measurement, args.target_rate, names, method_params, args.tolerance)
    data = calibration.document(
        rules,
        target=args.target_rate,
        tolerance=args.tolerance,
        probe_file=sequences,
        measurement=measurement,
        probe_provenance=provenance,
    )
    calibration.write_calibration(args.out, data)
    n = len(measurement.lengths)
    print(f"target out-of-band rate {args.target_rate:g} on the probe's {n} responses ({sequences}):")
    for name, rule in rules.items():
        values = ", ".join(f"{k} = {v:g}" for k, v in {**rule.calibrated, **rule.hand}.items())
        print(f"  {name}: {values} ({rule.source}): rate {rule.rate:.4f}")
    print(f"calibration: {args.out}")
    return 0


def _train_source(args: argparse.Namespace) -> dict | Path:
    """The config `clipbench train` was given: --config's file or --config-json's object."""
    from clipbench.config import ConfigError

    if args.config is not None and args.config_json is not None:
        raise ConfigError("give --config FILE or --config-json JSON, not both")
    if args.config_json is not None:
        try:
            source = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config-json: not valid JSON ({err})") from None
        if not isinstance(source, dict):
            raise ConfigError(
                f"--config-json: expected a JSON object of TrainConfig fields, e.g. "
                f'\'{{"model": "DIR"}}\', got {type(source).__name__} {args.config_json[:80]}'
            )
        return source
    if args.config is not None:
        if not args.config.is_file():
            why = "is a directory" if args.config.is_dir() else "no such file"
            raise ConfigError(f"--config {args.config}: {why}; give a YAML file of TrainConfig fields")
        return args.config
    return {}


def cmd_train(args: argparse.Namespace) -> int:
    from clipbench.config import ConfigError, load_config

    artifacts.check_run_dir_path(args.out)  # before anything is read or loaded
    config = load_config(_train_source(args), overrides=_parse_sets(args.set))
    if config.backend == "verl":  # three jobs of a study, not one process (docs/training.md)
        raise ConfigError(
            "backend: 'verl' runs through a study (clipbench verl-config, verl's main_ppo, clipbench "
            "verl-finish: workflows/rules/verl.smk), not clipbench train"
        )
    if config.backend == "trl":  # TRL's GRPOTrainer (clipbench.integrations.trl): needs the trl extra
        from clipbench.integrations.trl import train_trl

        final = train_trl(config, args.out)
    else:
        from clipbench.trainer import train  # after the checks: it imports transformers (seconds)

        final = train(config, args.out, progress=not args.no_progress)
    print(f"final model: {final}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from clipbench.config import ConfigError, from_dict
    from clipbench.sft import SFTConfig, run_sft

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a directory; give a directory for the model")
    out = run_sft(from_dict(SFTConfig, _parse_sets(args.set), "sft"), args.out)
    print(f"base model: {out}")
    return 0


def _runs_from_dirs(run_dirs: Sequence[Path]) -> dict[tuple[str, int], Path]:
    """results/runs/{method}/seed{seed} -> {(method, seed): dir}."""
    from clipbench.artifacts import RunId

    runs = {}
    for run_dir in run_dirs:
        run = RunId.from_run_dir(run_dir)
        runs[(run.method, run.seed)] = run_dir
    return runs


def cmd_aggregate(args: argparse.Namespace) -> int:
    from clipbench import report
    from clipbench.provenance import atomic_write_text

    # Every file is computed before any is written: a run without clip records must not leave a
    # new summary.csv beside a stale fairness.csv.
    runs = _runs_from_dirs(args.runs)
    problems = [f"--evals {path}: no such file" for path in args.evals if not path.is_file()]
    absent = [str(d) for d in args.runs if not artifacts.run_is_finished(d)]
    if absent:
        problems.append(f"--runs: no final/summary.json (an unfinished run?) in {', '.join(absent)}")
    if problems:
        raise ValueError("; ".join(problems))
    resampling = {"n_resamples": args.resamples, "seed": args.bootstrap_seed}
    summary = report.collect_evals(args.evals, reference=args.reference, **resampling)
    records = report.read_clip_records(runs)
    groups, bins = report.collect_fairness(
        records, n_bins=args.bins, clip_column=args.clip_column, **resampling
    )
    atomic_write_text(args.summary, summary.to_csv(index=False))
    atomic_write_text(args.fairness, groups.to_csv(index=False))
    atomic_write_text(args.fairness_bins, bins.to_csv(index=False))
    return 0


def _report_plots(args: argparse.Namespace) -> list[str]:
    """The plots asked for: with --plots, those named by --only, else every registered one."""
    from clipbench import plots

    return (
        [plots.get_plot(name).name for name in args.only]
        if args.plots and args.only
        else (list(plots.PLOTS) if args.plots else [])
    )


def _has_lines(path: Path) -> bool:
    return path.is_file() and bool(path.read_text().strip())


def _needed_inputs(args: argparse.Namespace) -> list[str]:
    """The inputs the requested outputs read, in the order of clipbench.plots.INPUTS."""
    from clipbench import plots

    needed = {"summary", "fairness"} if args.table else set()
    for name in _report_plots(args):
        needed.update(plots.get_plot(name).inputs)
    return [i for i in plots.INPUTS if i in needed]


def _report_problems(args: argparse.Namespace) -> list[str]:
    """What the requested outputs need and was not given (flags, files), before reading anything."""
    from clipbench import plots

    if args.only and not args.plots:
        return ["--only names plots: give --plots DIR too"]
    if not args.table and not args.plots:
        return ["nothing to write: give --table FILE and/or --plots DIR"]
    try:
        names = _report_plots(args)
    except ValueError as err:
        return [f"--only: {err}"]
    problems = [
        f"{flag} {path}: no such file"
        for flag, path in (
            ("--summary", args.summary),
            ("--fairness", args.fairness),
            ("--fairness-bins", args.fairness_bins),
            ("--study-config", args.study_config),
            ("--calibration", args.calibration),
        )
        if path is not None and not path.is_file()
    ]
    if args.calibration is not None and not args.table:
        problems.append("--calibration goes in the main table's footer: give --table too")
    for need in _needed_inputs(args):
        users = _users(args, names, need)
        if not (args.runs if need == "metrics" else getattr(args, need)):
            if "the main table" not in users:
                where = "--plots"
            else:
                where = "--table" if len(users) == 1 else "--table and --plots"
            source = plots.INPUTS[need]
            problems.append(f"{where}: {_needs(users)} {source.flag} ({source.holds})")
        elif need == "metrics":
            absent = [str(d) for d in args.runs if not _has_lines(d / artifacts.METRICS_FILE)]
            if absent:
                problems.append(
                    f"--plots: {_needs(users)} a metrics.jsonl with at least one step in every --runs "
                    f"directory; missing or empty in {', '.join(absent)}"
                )
            try:
                _runs_from_dirs(args.runs)
            except ValueError as err:
                problems.append(f"--runs: {err}")
    return problems


def _users(args: argparse.Namespace, plot_names: list[str], need: str) -> list[str]:
    """The requested outputs that read the input ``need``, as the errors name them."""
    from clipbench import plots

    table = ["the main table"] if args.table and need in ("summary", "fairness") else []
    return table + [f"the {name} plot" for name in plot_names if need in plots.get_plot(name).inputs]


def _needs(users: list[str]) -> str:
    return " and ".join(users) + (" needs" if len(users) == 1 else " need")


def _read_csv(flag: str, path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{flag} {path}: empty file") from None


def _read_input(args: argparse.Namespace, name: str):
    """One input of the report, read: a tidy csv, or the runs' metrics."""
    if name == "metrics":
        return artifacts.read_metrics(_runs_from_dirs(args.runs))
    from clipbench import plots

    return _read_csv(plots.INPUTS[name].flag, getattr(args, name))


def cmd_report(args: argparse.Namespace) -> int:
    from clipbench import plots, report
    from clipbench.config import load_yaml
    from clipbench.provenance import atomic_write_text, config_hash, git_commit

    # Every requested output is checked against what it needs before any is written: a missing
    # input never leaves some outputs new and the others stale.
    problems = _report_problems(args)
    if problems:
        raise ValueError("; ".join(problems))
    frames = {name: _read_input(args, name) for name in _needed_inputs(args)}
    study = load_yaml(args.study_config.read_text()) if args.study_config else {}
    if args.table:
        need = report.unmet_needs(frames["summary"], frames["fairness"])
        if need:
            problems.append(f"--table: the main table needs {need}")
    for name in _report_plots(args):
        need = plots.unmet_needs(name, frames)
        if need:
            problems.append(f"--plots: the {name} plot needs {need}")
    if problems:
        raise ValueError("; ".join(problems))
    calibrated = None
    if args.calibration is not None:
        from clipbench.calibration import read_calibration

        calibrated = read_calibration(args.calibration)
    if args.table:
        summary = frames["summary"]
        seeds = sorted(int(s) for s in summary.seed.unique() if s >= 0)
        text = report.main_table(
            summary,
            frames["fairness"],
            config_name=args.config_name or study.get("name", "?"),
            config_hash=args.config_hash or config_hash(study),
            seeds=seeds,
            commit=git_commit(),
            calibration=calibrated,
            table_dir=args.table.parent,
        )
        atomic_write_text(args.table, text)
    options = {name: getattr(args, name) for name in plots.OPTIONS}
    for name in _report_plots(args):
        plots.write(name, frames, artifacts.plot_path(name, args.plots), options)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from clipbench import methods

    for name in methods.available_methods():
        print(methods.get_method_class(name).describe())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from clipbench import plan

    data = plan.read_config(args.config)
    result = plan.plan_config(
        data,
        name=str(args.config),
        gpu=args.gpu,
        shape=args.shape,
        prompt_tokens=args.prompt_tokens,
        dtype=args.dtype,
        checkpointing=args.gradient_checkpointing,
        mean_response_tokens=args.mean_response_tokens,
        overrides=_parse_sets(args.set),
    )
    print(plan.format_plan(result))
    return 0


def _verl_run(args: argparse.Namespace):
    """(the run's TrainConfig, its model as verl gets it, its verl cluster, run directory) from a study
    config, METHOD and SEED, or from --config-json (a study's verl-config job) with --run-dir."""
    from clipbench.config import ConfigError, load_config, load_yaml
    from clipbench.integrations import verl_config

    positional = [args.study_config, args.method, args.seed]
    if args.config_json is not None:
        if any(value is not None for value in positional):
            raise ConfigError("give STUDY_CONFIG METHOD SEED or --config-json, not both")
        if args.run_dir is None:
            raise ConfigError("--config-json: needs --run-dir (the run directory the records go to)")
        cfg = load_config(_train_source(argparse.Namespace(config_json=args.config_json, config=None)))
        cluster = verl_config.Cluster(nodes=args.nodes or 1, gpus_per_node=args.gpus_per_node or 1)
        return cfg, verl_config.model_for_verl(cfg.model), cluster, args.run_dir
    if any(value is None for value in positional):
        raise ConfigError("give STUDY_CONFIG METHOD SEED (or --config-json with --run-dir)")
    if not args.study_config.is_file():
        raise FileNotFoundError(f"{args.study_config}: no such study config")
    study = load_yaml(args.study_config.read_text())
    if not isinstance(study, dict):
        raise ValueError(f"{args.study_config}: not a study config (a YAML mapping)")
    cfg, model = verl_config.study_run(study, args.method, args.seed)
    given = verl_config.study_cluster(study)  # the study's resources.train: what its own jobs use
    cluster = verl_config.Cluster(
        nodes=args.nodes or given.nodes, gpus_per_node=args.gpus_per_node or given.gpus_per_node
    )
    return cfg, model, cluster, args.run_dir or Path(artifacts.RunId(args.method, args.seed).run_dir)


def cmd_verl_config(args: argparse.Namespace) -> int:
    from clipbench.integrations import verl_config

    cfg, model, cluster, run_dir = _verl_run(args)
    files = verl_config.write_run(
        cfg,
        model=model,
        run_dir=run_dir,
        out=args.out,
        cluster=cluster,
        max_prompt_length=args.max_prompt_length,
    )
    for kind in ("config", "settings", "train", "val"):
        print(f"{kind}: {getattr(files, kind)}")
    print(f"records: {artifacts.records_dir(Path(run_dir).resolve())}")
    print(f"start: {files.command()}")
    return 0


def cmd_verl_finish(args: argparse.Namespace) -> int:
    from clipbench.integrations import verl_finish

    artifacts.check_run_dir_path(args.run_dir)
    cfg = verl_finish.load_run(_train_source(args))
    final = verl_finish.finish(cfg, args.run_dir)
    print(f"final model: {final}")
    return 0


def version() -> str:
    """The installed distribution's version, else the package's `__version__`."""
    from importlib import metadata

    try:
        return metadata.version("clipbench")
    except metadata.PackageNotFoundError:
        import clipbench

        return getattr(clipbench, "__version__", "unknown")


def _plot_inputs_text() -> str:
    """``name: --flag, --flag`` for every registered plot, for the report command's help."""
    from clipbench import plots

    return "; ".join(
        f"{name}: {' and '.join(plots.INPUTS[i].flag for i in plot.inputs)}"
        for name, plot in plots.PLOTS.items()
    )


def build_parser() -> argparse.ArgumentParser:
    from clipbench import plots
    from clipbench.fairness import CLIP_COLUMNS, DEFAULT_BINS
    from clipbench.simulate import DEFAULT_LENGTHS
    from clipbench.stats import DEFAULT_REFERENCE, DEFAULT_RESAMPLES

    parser = argparse.ArgumentParser(
        prog="clipbench", description="Benchmark suite for clipping rules in LLM RLVR."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of the one-line message",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "methods",
        help="list the registered clipping rules and their hyperparameters",
        description="Print every registered clipping rule (the modules of clipbench/methods/) with its level "
        "(token or sequence) and each hyperparameter's default, valid range and meaning.",
    )
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "simulate",
        help="clip rate against length for every rule under Gaussian log-ratios (no model)",
        description="Draw per-token log-ratios l_t ~ N(mu, sigma^2) for n sequences at each length, feed them "
        "through every registered rule, and write simulation.csv, simulation.md, clip_by_length.png and "
        "provenance.json. Deterministic for a seed.",
    )
    p.add_argument("--sigma", type=float, default=0.01, help="std of the per-token log-ratio (default 0.01)")
    p.add_argument(
        "--mu", type=float, default=0.0, help="mean of the per-token log-ratio, the drift (default 0)"
    )
    p.add_argument(
        "--lengths",
        type=_parse_lengths,
        default=DEFAULT_LENGTHS,
        help="comma-separated lengths (default 8,16,...,4096)",
    )
    p.add_argument("--n", type=int, default=20_000, help="sequences per length (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", help="rules to simulate (default: every registered rule)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override a rule's hyperparameter, e.g. fspo.c_low=0.015 (repeatable; values read as YAML)",
    )
    p.add_argument(  # the old spelling, kept so old scripts run; hidden from --help
        "--param",
        dest="set",
        action=_DeprecatedAlias,
        replacement="--set",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/simulation"),
        help="output folder (default results/simulation)",
    )
    p.set_defaults(func=cmd_simulate)

    from clipbench.probe import ProbeConfig

    probe_help = {f.name: f.metadata["help"] for f in dataclasses.fields(ProbeConfig)}
    p = sub.add_parser(
        "probe",
        help="measure how S grows with length on your model (one RL step's compute) and which band is flat",
        description="Sample P prompts x G responses from the model (the training engine), split them by prompt "
        "group into an update half and a measurement half, take K optimizer steps of the update rule on the "
        "first (verifier advantages; random signs when every group has zero advantage), and measure l_t on the "
        "second against the model before the update: the S-growth exponent across sequences (a) and within "
        "them (prefix sums, a_w), per-position |l_t|, lag-1 autocorrelation and drift, with bootstrap intervals "
        "over prompt groups; every sequence-level rule's clip rate by length, spread and LRE at its configured "
        "band; and the flattest power-band exponent. Writes probe.json, sequences.parquet and probe.png "
        "(docs/probe.md). Options are checked before the model is loaded.",
    )
    p.add_argument("--model", required=True, help="an HF model directory (or hub id)")
    p.add_argument("--benchmark", required=True, help=probe_help["benchmark"])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    for name, kind in (
        ("split", str),
        ("data_dir", str),
        ("prompt_style", str),
        ("n_prompts", int),
        ("samples", int),
        ("max_new_tokens", int),
        ("temperature", float),
        ("lr", float),
        ("updates", int),
        ("method", str),
        ("estimator", str),
        ("engine", str),
        ("max_tokens_per_microbatch", int),
        ("logprob_chunk_tokens", int),
        ("device", str),
        ("seed", int),
        ("bins", int),
        ("target_rate", float),
        ("resamples", int),
        ("bootstrap_seed", int),
    ):
        field = ProbeConfig.__dataclass_fields__[name]
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            help=f"{probe_help[name]} (default {field.default})",
        )
    p.add_argument("--methods", nargs="*", help=probe_help["methods"])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="a rule's hyperparameter, e.g. fspo.c_low=0.1 (repeatable; values read as YAML); the update "
        "rule's too",
    )
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "calibrate",
        help="matched clip budgets: each sequence rule's band set to a target out-of-band rate on a probe",
        description="Read a probe's measured log-ratios (the sequences.parquet of `clipbench probe --out DIR`) "
        "and, for each sequence-level rule (--methods; default every registered one, each declaring its band "
        "fields), set its band fields not given by --set to the one value whose out-of-band rate on those "
        "responses (the mean of the rule's seq_out, through the simulation's rule_outputs) is closest to "
        "--target-rate; hyperparameters given by --set stay. Fails when a rule's rate is further than "
        "--tolerance from the target. Writes calibration.json (docs/probe.md).",
    )
    p.add_argument(
        "--probe", type=Path, required=True, help="the probe's output folder (--out of clipbench probe)"
    )
    p.add_argument(
        "--target-rate", type=float, required=True, help="the out-of-band rate to match, in (0, 1), e.g. 0.15"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="the largest allowed distance of a rule's achieved rate from the target (default 0.02)",
    )
    p.add_argument(
        "--methods", nargs="*", help="the sequence-level rules to calibrate (default: every registered one)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="a rule's hyperparameter set by hand, e.g. gspo.eps_low=0.005 (repeatable; values read as YAML): "
        "a band field set here is not calibrated",
    )
    p.add_argument("--out", type=Path, required=True, help="the calibration file to write (calibration.json)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "sft",
        help="build the tiny base model and warm it up on synthetic worked solutions",
        description="Build a tiny Qwen2 model with a local tokenizer and train it on synthetic worked solutions "
        "until its greedy dev accuracy reaches target_accuracy (fields of clipbench.sft.SFTConfig via --set).",
    )
    p.add_argument("--out", type=Path, required=True, help="output model directory (HF format)")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override an SFTConfig field"
    )
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser(
        "train",
        help="RL-train one method from a base checkpoint (resumes from the run directory's last checkpoint)",
        description="Train one clipping rule (clipbench.config.TrainConfig, from --config YAML and --set overrides). "
        "Re-running with the same --out resumes from the last checkpoint.",
    )
    p.add_argument("--config", type=Path, help="YAML with TrainConfig fields")
    p.add_argument("--config-json", help="TrainConfig fields as JSON (instead of --config)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. optim.lr=1e-3"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    from clipbench.plan import DTYPES, GPUS, PROMPT_TOKENS

    p = sub.add_parser(
        "plan",
        help="predict a training run's peak GPU memory, the micro-batch budget that fits, and GPU-hours",
        description="From the model's shape (its config.json, or the shipped shape of a hub id in "
        "workflows/config/models/), the rollout and optimisation settings and the dtype, print the predicted "
        "peak memory per device term by term (weights, gradients, AdamW state, activations of one micro-batch, "
        "log-prob chunk, vLLM's share), the largest micro-batch token budget that fits the GPU, and the "
        "estimated time of a step and GPU-hours of a study, with the throughput assumptions they use "
        "(clipbench/plan.py; docs/training.md, 'Planning a GPU run'). CONFIG is a study config (its train "
        "job is planned) or a TrainConfig YAML. Predictions only: nothing here was measured on a GPU.",
    )
    p.add_argument(
        "config", type=Path, help="a study config (e.g. workflows/config/paper.yaml) or TrainConfig YAML"
    )
    p.add_argument(
        "--gpu",
        choices=list(GPUS),
        help="the GPU kind (default: the study's resources.train.gpu_model; none: memory only)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="plan at this precision (default: the config's dtype, float32 where it has none)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plan with (or without) gradient checkpointing (default: the config's optim.gradient_checkpointing, "
        "off where it has none)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field (a study's train section), e.g. optim.max_tokens_per_microbatch=16384",
    )
    p.add_argument(
        "--prompt-tokens",
        type=int,
        default=PROMPT_TOKENS,
        help=f"the longest prompt in tokens (default {PROMPT_TOKENS}); with max_new_tokens, the longest sequence",
    )
    p.add_argument(
        "--mean-response-tokens",
        type=float,
        help="the mean response length for the time estimate (default: half of max_new_tokens)",
    )
    p.add_argument("--shape", type=Path, help="a config.json to take the model's shape from")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "verl-config",
        help="write the verl 0.9.1 config, data and adapter settings of one run of a study",
        description="For METHOD and SEED of the study config (a run of its grid, checked as the DAG check "
        "does), write a Hydra config over verl's ppo_trainer whose policy loss is the clipbench rule "
        "(clipbench_METHOD, registered in verl's workers by clipbench.integrations.verl_plugin), the training "
        "prompts as verl's parquet in the native trainer's order with clipbench's verifier as the reward, and "
        "the adapter's settings (the rule's hyperparameters, where the clip records go). Prints the files and "
        "the command that starts verl. What is mapped, what is not and what is refused: docs/training.md, "
        "'Training inside verl'.",
    )
    p.add_argument(
        "study_config", type=Path, nargs="?", help="a study config, e.g. workflows/config/default.yaml"
    )
    p.add_argument("method", nargs="?", help="one of the study's methods")
    p.add_argument("seed", type=_nonnegative_int, nargs="?", help="one of the study's seeds")
    p.add_argument(
        "--config-json",
        help="instead of STUDY_CONFIG METHOD SEED: the run's TrainConfig as JSON (a study's verl-config job, "
        "workflows/rules/verl.smk; needs --run-dir)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="the config file to write (default RUN_DIR/verl/config.yaml); the data and settings go beside it",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="the run directory, whose records/ gets the clip records (default results/runs/METHOD/seedSEED)",
    )
    p.add_argument(
        "--nodes",
        type=_positive_int,
        default=None,
        help="verl's trainer.nnodes (default: the study's resources.train.nodes, else 1)",
    )
    p.add_argument(
        "--gpus-per-node",
        type=_positive_int,
        help="verl's trainer.n_gpus_per_node (default: the study's resources.train.gpu, else 1)",
    )
    p.add_argument(
        "--max-prompt-length",
        type=_positive_int,
        help="verl's data.max_prompt_length in tokens (default: the longest prompt in UTF-8 bytes, plus 256 for "
        "prompt_style chat)",
    )
    p.set_defaults(func=cmd_verl_config)

    p = sub.add_parser(
        "verl-finish",
        help="turn a finished verl run (backend verl) into clipbench's run directory",
        description="After verl trained the run in RUN_DIR/verl/ and its last checkpoint was merged into "
        "RUN_DIR/verl/hf/: check verl's per-step metrics, the clip records and the merged model, then write "
        "config.yaml, provenance.json, metrics.jsonl (verl's metrics under the native keys), final/ (the model) "
        "and final/summary.json, last. The mapping: docs/training.md, 'Training inside verl'.",
    )
    p.add_argument("--config", type=Path, help="the run's TrainConfig as a YAML file")
    p.add_argument("--config-json", help="the run's TrainConfig as JSON (a study's verl_finish job)")
    p.add_argument(
        "--run-dir", type=Path, required=True, help="the run directory (results/runs/METHOD/seedSEED)"
    )
    p.set_defaults(func=cmd_verl_finish)

    from clipbench.evaluate import add_cli as add_evaluate

    add_evaluate(sub)

    p = sub.add_parser(
        "aggregate",
        help="tidy summary.csv (accuracy), fairness.csv and fairness_bins.csv (clip rate by length)",
        description="Collect the evaluation summaries and their samples into summary.csv (per evaluation, "
        "and per method with its seeds pooled: avg@k and pass@k with 95% bootstrap intervals; per method "
        "the paired difference against --reference) and the runs' per-sequence clip records into "
        "fairness.csv (per method and per run: clip rate, spread, slope, LRE, the S-growth exponent and the "
        "within-sequence exponent, with intervals) and fairness_bins.csv (per method and run and length bin: clip rates and median "
        "|S|; bin edges shared by every run). The intervals: clipbench/stats.py. All are computed before "
        "any is written.",
    )
    p.add_argument(
        "--evals",
        type=Path,
        nargs="+",
        required=True,
        help="evaluation summaries results/evals/{model}/{bench}.json",
    )
    p.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="run directories results/runs/{method}/seed{seed}"
    )
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--fairness", type=Path, required=True)
    p.add_argument("--fairness-bins", type=Path, required=True)
    p.add_argument(
        "--bins", type=int, default=DEFAULT_BINS, help="length bins (quantiles of the pooled lengths)"
    )
    p.add_argument("--clip-column", choices=CLIP_COLUMNS, default=CLIP_COLUMNS[0])
    p.add_argument(
        "--reference",
        default=DEFAULT_REFERENCE,
        help=f"the method every other is compared with, paired (default {DEFAULT_REFERENCE}); it must "
        "have evaluations on every benchmark",
    )
    p.add_argument(
        "--resamples", type=_positive_int, default=DEFAULT_RESAMPLES, help="bootstrap resamples per interval"
    )
    p.add_argument(
        "--bootstrap-seed", type=_nonnegative_int, default=0, help="seed of the bootstrap resamples"
    )
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser(
        "report",
        help="the main table (markdown) and the plots from the tidy files",
        description="Write the main table (--table: needs --summary and --fairness) and/or the plots "
        "registered in clipbench.plots (--plots DIR, each as DIR/{name}.png; --only names some): each "
        f"plot reads the inputs it declares ({_plot_inputs_text()}). What every requested output needs "
        "is checked before any is written; a missing input exits with code 2 and writes nothing.",
    )
    p.add_argument("--summary", type=Path, help="summary.csv (the table, the accuracy plot)")
    p.add_argument("--fairness", type=Path, help="fairness.csv (the table, the clip-by-length plot)")
    p.add_argument("--fairness-bins", type=Path, help="fairness_bins.csv (the clip-by-length plot)")
    p.add_argument(
        "--runs",
        type=Path,
        nargs="*",
        default=[],
        help="run directories results/runs/{method}/seed{seed} (their metrics.jsonl: the training curves)",
    )
    p.add_argument("--table", type=Path, help="write the main table here")
    p.add_argument("--plots", type=Path, help="write each registered plot here, as {name}.png")
    p.add_argument("--only", nargs="+", default=[], metavar="PLOT", help="with --plots: just these plots")
    for name, option in plots.OPTIONS.items():  # each option a plot may declare
        p.add_argument(
            option.flag,
            dest=name,
            type=_positive_int,
            default=option.default,
            help=f"{option.help} (default {option.default}; the study config's report.{name})",
        )
    p.add_argument(
        "--calibration",
        type=Path,
        help="with --table: the study's calibration.json (the footer gives the target and each rule's achieved "
        "rate, and which bands were calibrated or set by hand)",
    )
    p.add_argument("--study-config", type=Path, help="the study config (its name and hash go in the footer)")
    p.add_argument("--config-name")
    p.add_argument("--config-hash")
    p.set_defaults(func=cmd_report)
    return parser


# Errors of input the user gives (values, files, directories): one line, exit code 2. A
# ValueError is one by convention here (every check of a value raises it, ConfigError included).
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _exit_code(err: BaseException) -> int | None:
    """2 for an error of the user's input, 1 for a run that stopped on its own (a non-finite loss:
    the message says where), None for anything else (a bug: its traceback is shown)."""
    from clipbench.errors import UserError

    if isinstance(err, (UserError, ValueError, *_USER_OS_ERRORS)):
        return 2
    trainer = sys.modules.get("clipbench.trainer")  # imported only if a training ran
    if trainer is not None and isinstance(err, trainer.TrainingError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. An expected failure prints one line, `clipbench SUB: error: ...`, and
    exits with code 2 (1 for a run stopped by a non-finite loss); `--debug` shows the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        code = _exit_code(err)
        if code is None or args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"clipbench {args.command}: error: {message}", file=sys.stderr)
        return code


def console_main() -> int:
    """The `clipbench` command (pyproject's script): `main` with the CPU kernels pinned first, as
    `python -m clipbench.cli` pins them (`clipbench.cpu_kernels`; importing this module imports no torch)."""
    from clipbench import cpu_kernels

    cpu_kernels.pin()
    return main()


if __name__ == "__main__":
    # Before torch is imported: the AVX2 kernels on any x86 CPU that has them (clipbench/cpu_kernels.py).
    from clipbench import cpu_kernels

    cpu_kernels.pin()
    # In a local Snakemake study, a child of the job host (clipbench/jobhost.py) runs the job, with
    # torch, transformers and lm-eval imported already; without a host (or when it declines), this process.
    from clipbench import jobhost

    hosted = jobhost.delegate()
    if hosted is not None:
        jobhost.exit_like(hosted)
    sys.exit(main())
