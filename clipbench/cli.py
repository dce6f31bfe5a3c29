"""The `clipbench` command line: one sub-command per job (`clipbench --help` lists them)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _parse_lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths {text!r}: expected comma-separated integers") from None
    if not values:
        raise argparse.ArgumentTypeError("--lengths: give at least one length")
    return values


def _parse_params(items: Sequence[str]) -> dict[str, dict]:
    """`--param fspo.c_low=0.015` -> {"fspo": {"c_low": 0.015}} (values read as JSON, else as text)."""
    params: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, field = key.partition(".")
        if not sep or not dot or not method or not field:
            raise SystemExit(f"--param {item!r}: expected METHOD.FIELD=VALUE, e.g. fspo.c_low=0.015")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(method, {})[field] = value
    return params


def cmd_simulate(args: argparse.Namespace) -> int:
    from clipbench.simulate import SimulationConfig, simulate, write_outputs

    config = SimulationConfig(
        sigma=args.sigma,
        mu=args.mu,
        lengths=args.lengths,
        n=args.n,
        seed=args.seed,
        methods=tuple(args.methods or ()),
        method_params=_parse_params(args.param),
    )
    config.build_methods()  # fail on a bad method or hyperparameter before any compute
    result = simulate(config)
    paths = write_outputs(result, args.out)
    print(paths["table"].read_text(), end="")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _parse_sets(items: Sequence[str]) -> dict[str, object]:
    """`--set optim.lr=1e-3` -> {"optim.lr": 0.001} (values read as YAML scalars, `load_yaml`)."""
    from clipbench.config import load_yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        out[key] = load_yaml(raw)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from clipbench.config import load_config
    from clipbench.trainer import train

    source = json.loads(args.config_json) if args.config_json else (args.config or {})
    config = load_config(source, overrides=_parse_sets(args.set))
    final = train(config, args.out, progress=not args.no_progress)
    print(f"final model: {final}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from clipbench.config import from_dict
    from clipbench.sft import SFTConfig, run_sft

    out = run_sft(from_dict(SFTConfig, _parse_sets(args.set), "sft"), args.out)
    print(f"base model: {out}")
    return 0


def _runs_from_dirs(run_dirs: Sequence[Path]) -> dict[tuple[str, int], Path]:
    """results/runs/{method}/seed{seed} -> {(method, seed): dir}."""
    runs = {}
    for run_dir in run_dirs:
        seed = run_dir.name.removeprefix("seed")
        if not seed.isdigit():
            raise ValueError(f"{run_dir}: expected a run directory named seed<N> under its method's folder")
        runs[(run_dir.parent.name, int(seed))] = run_dir
    return runs


def cmd_aggregate(args: argparse.Namespace) -> int:
    from clipbench import report
    from clipbench.provenance import atomic_write_text

    runs = _runs_from_dirs(args.runs)
    atomic_write_text(args.summary, report.collect_evals(args.evals).to_csv(index=False))
    records = report.read_clip_records(runs)
    table = report.collect_fairness(records, n_bins=args.bins, clip_column=args.clip_column)
    atomic_write_text(args.fairness, table.to_csv(index=False))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from clipbench import report
    from clipbench.config import load_yaml
    from clipbench.provenance import atomic_write_text, config_hash, git_commit

    summary, fairness_table = pd.read_csv(args.summary), pd.read_csv(args.fairness)
    study = load_yaml(args.study_config.read_text()) if args.study_config else {}
    if args.table:
        seeds = sorted(int(s) for s in summary.seed.unique() if s >= 0)
        text = report.main_table(
            summary,
            fairness_table,
            config_name=args.config_name or study.get("name", "?"),
            config_hash=args.config_hash or config_hash(study),
            seeds=seeds,
            commit=git_commit(),
        )
        atomic_write_text(args.table, text)
    if args.plots:
        report.plot_accuracy(summary, args.plots / "accuracy.png")
        report.plot_clip_by_length(fairness_table, args.plots / "clip_by_length.png")
        report.plot_training_curves(
            report.read_metrics(_runs_from_dirs(args.runs)), args.plots / "training_curves.png"
        )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import methods

    for name in methods.available_methods():
        print(methods.get_method_class(name).describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from clipbench.simulate import DEFAULT_LENGTHS

    parser = argparse.ArgumentParser(
        prog="clipbench", description="Benchmark suite for clipping rules in LLM RLVR."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("methods", help="list the registered clipping rules and their hyperparameters")
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
        "--param",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override a hyperparameter (repeatable)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/simulation"),
        help="output folder (default results/simulation)",
    )
    p.set_defaults(func=cmd_simulate)

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

    from clipbench.evaluate import add_cli as add_evaluate

    add_evaluate(sub)

    p = sub.add_parser(
        "aggregate", help="tidy summary.csv (accuracy) and fairness.csv (clip rate by length bin)"
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
    p.add_argument("--bins", type=int, default=5, help="length bins (quantiles of the pooled lengths)")
    p.add_argument("--clip-column", choices=("seq_out", "seq_clip"), default="seq_out")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser(
        "report", help="the main table (markdown) and the plots from summary.csv and fairness.csv"
    )
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--fairness", type=Path, required=True)
    p.add_argument(
        "--runs", type=Path, nargs="*", default=[], help="run directories (for the training curves)"
    )
    p.add_argument("--table", type=Path, help="write the main table here")
    p.add_argument(
        "--plots", type=Path, help="write accuracy.png, clip_by_length.png, training_curves.png here"
    )
    p.add_argument("--study-config", type=Path, help="the study config (its name and hash go in the footer)")
    p.add_argument("--config-name")
    p.add_argument("--config-hash")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"clipbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
