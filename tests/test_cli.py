"""Conventions of the `clipbench` command: --version, a description for every sub-command, one
override syntax (--set, with --param as a deprecated alias), and outputs that check their inputs
before any is written."""

import argparse
import json
import subprocess
import sys
from importlib import metadata

import pandas as pd
import pytest
from eval_files import write_eval

import clipbench
from clipbench import cli

SIMULATE = ["simulate", "--lengths", "8,32", "--n", "50", "--methods", "fspo"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def words(text: str) -> str:
    """`text` without whitespace: help output wraps lines (at spaces and after hyphens)."""
    return "".join(text.split())


# --------------------------------------------------------------------------- --version


def test_version_prints_the_installed_version_and_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "clipbench.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"clipbench {metadata.version('clipbench')}\n"


def test_version_falls_back_to_the_package_attribute(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == clipbench.__version__


# --------------------------------------------------------------------------- descriptions


def test_every_subcommand_has_a_description_shown_by_its_help(capsys):
    parsers = subcommands()
    assert {"methods", "simulate", "sft", "train", "evaluate", "aggregate", "report"} <= set(parsers)
    for name, parser in parsers.items():
        assert parser.description, f"clipbench {name} has no description"
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert words(parser.description) in words(capsys.readouterr().out), name


# --------------------------------------------------------------------------- --set and --param


def test_simulate_set_values_are_yaml_scalars():
    assert cli._parse_method_sets(["fspo.c_low=1e-5", "fspo.drift=kl", "gspo.eps_low=3.0e-4"]) == {
        "fspo": {"c_low": 1e-5, "drift": "kl"},
        "gspo": {"eps_low": 3e-4},
    }
    assert isinstance(cli._parse_method_sets(["fspo.c_low=1e-5"])["fspo"]["c_low"], float)
    # The same reading as train's and sft's --set, quoting and YAML's spellings included.
    for value in ("1e-5", "5E-3", "0.2", "kl", "'kl'", "true", "null", "7", "dir/1e3x"):
        expected = cli._parse_sets([f"key={value}"])["key"]
        assert cli._parse_method_sets([f"m.key={value}"]) == {"m": {"key": expected}}, value
    assert cli._parse_sets(["a='kl'", "b=null", "c=5E-3"]) == {"a": "kl", "b": None, "c": 5e-3}


def test_simulate_accepts_set(tmp_path, capsys):
    assert (
        cli.main([*SIMULATE, "--set", "fspo.c_low=1e-2", "--set", "fspo.drift=kl", "--out", str(tmp_path)])
        == 0
    )
    captured = capsys.readouterr()
    assert "| fspo | sequence | c_low=0.01, c_high=0.03, drift=kl |" in captured.out
    assert captured.err == ""
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["config"]["method_params"] == {"fspo": {"c_low": 0.01, "drift": "kl"}}
    assert "--param" not in words(subcommands()["simulate"].format_help())  # the alias is hidden


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("c_low=1", "--set 'c_low=1': expected METHOD.FIELD=VALUE, e.g. fspo.c_low=0.015"),
        ("fspo.c_low", "--set 'fspo.c_low': expected METHOD.FIELD=VALUE"),
        (
            "fspo.nope=1",
            "method 'fspo' has no hyperparameter 'nope'; its hyperparameters: c_low, c_high, drift",
        ),
        ("fpso.c_low=1", "method_params names methods not simulated: ['fpso']"),
        ("fspo.c_low=1e-5x", "fspo.c_low='1e-5x': must be a number"),
        ("fspo.c_low=[1", "--set 'fspo.c_low=[1': the value is not valid YAML"),
    ],
)
def test_simulate_bad_set_is_a_one_line_error(tmp_path, capsys, item, message):
    assert cli.main([*SIMULATE, "--set", item, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipbench simulate: error: ") and message in err
    assert err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_deprecated_param_still_works_and_warns_once(tmp_path, capsys):
    code = cli.main(
        [*SIMULATE, "--param", "fspo.c_low=0.02", "--param", "fspo.c_high=2e-2", "--out", str(tmp_path)]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "| fspo | sequence | c_low=0.02, c_high=0.02, drift=none |" in captured.out
    assert captured.err == (
        "clipbench simulate: warning: --param is deprecated and will be removed; use --set (same syntax)\n"
    )


# --------------------------------------------------------------------------- report and aggregate


@pytest.fixture
def study(tmp_path):
    """summary.csv, fairness.csv, fairness_bins.csv and two run directories with metrics.jsonl, as
    `aggregate` and `train` leave them."""
    rows = [("base", -1, 0.4), ("ppo", 0, 0.5), ("fspo", 0, 0.6)]
    pd.DataFrame(
        [
            {
                "scope": scope,
                "model": m,
                "method": m,
                "seed": s if scope == "seed" else -1,
                "benchmark": "synthetic_test",
                "metric": "avg@k",
                "k": 4,
                "value": v,
                "lo": v - 0.1,
                "hi": v + 0.1,
                "reference": "ppo",
                "diff": v - 0.5,
                "diff_lo": v - 0.6,
                "diff_hi": v - 0.4,
            }
            for m, s, v in rows
            for scope in ("pooled", "seed")
        ]
    ).to_csv(tmp_path / "summary.csv", index=False)
    metrics = {"clip_rate": 0.1, "spread": 1.0, "lre": 0.01, "s_exponent": 0.5}
    pd.DataFrame(
        [
            {"scope": "pooled", "method": m, "seed": -1, "clip_column": "seq_out"}
            | {f"{name}{end}": value for name, value in metrics.items() for end in ("", "_lo", "_hi")}
            for m in ("ppo", "fspo")
        ]
    ).to_csv(tmp_path / "fairness.csv", index=False)
    pd.DataFrame(
        [
            {
                "scope": "pooled",
                "method": m,
                "seed": -1,
                "bin": b,
                "length_mean": length,
                "seq_out": rate,
                "seq_out_lo": rate - 0.05,
                "seq_out_hi": rate + 0.05,
                "abs_s_median": 0.01 * length,
            }
            for m in ("ppo", "fspo")
            for b, (length, rate) in enumerate(((10, 0.1), (40, 0.2)))
        ]
    ).to_csv(tmp_path / "fairness_bins.csv", index=False)
    runs = []
    for method in ("ppo", "fspo"):
        run = tmp_path / "runs" / method / "seed0"
        run.mkdir(parents=True)
        lines = [
            {"step": step, "reward_mean": 0.1 * step, "clip_frac": 0.01, "response_length_mean": 20 + step}
            for step in (1, 2, 3)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        runs.append(str(run))
    return tmp_path, runs


def report_args(tmp_path, *extra):
    return [
        "report",
        "--summary",
        str(tmp_path / "summary.csv"),
        "--fairness",
        str(tmp_path / "fairness.csv"),
        "--fairness-bins",
        str(tmp_path / "fairness_bins.csv"),
        *extra,
    ]


def written(tmp_path) -> set[str]:
    """The files under tmp_path that the study fixture did not make."""
    made = {"summary.csv", "fairness.csv", "fairness_bins.csv", "metrics.jsonl"}
    return {
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and p.name not in made
    }


def test_report_plots_without_runs_exits_2_and_writes_nothing(study, capsys):
    tmp_path, _ = study
    assert cli.main(report_args(tmp_path, "--plots", str(tmp_path / "plots"))) == 2
    assert capsys.readouterr().err == (
        "clipbench report: error: --plots: the training_curves plot needs --runs "
        "(the run directories' metrics.jsonl)\n"
    )
    assert written(tmp_path) == set() and not (tmp_path / "plots").exists()


def test_report_plots_without_runs_through_the_command(study):
    tmp_path, _ = study
    done = subprocess.run(
        [sys.executable, "-m", "clipbench.cli", *report_args(tmp_path, "--table", str(tmp_path / "main.md"))]
        + ["--plots", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "clipbench report: error: --plots: the training_curves plot needs --runs (the run directories' metrics.jsonl)"
    ]
    assert written(tmp_path) == set()


REPORT_PROBLEMS = {  # case -> what the one-line error says
    "no_output": "nothing to write: give --table FILE and/or --plots DIR",
    "run_without_metrics": "the training_curves plot needs a metrics.jsonl with at least one step",
    "metrics_empty": "at least one step in every --runs directory; missing or empty in",
    "metrics_without_columns": "the training_curves plot needs --runs whose metrics.jsonl have the columns",
    "run_badly_named": "expected a run directory named seed<N>",
    "summary_missing": "summary.csv: no such file",
    "no_accuracy_rows": "--plots: the accuracy plot needs --summary with avg@k rows (it has none)",
    "no_pooled_rows": "--plots: the clip_by_length plot needs --fairness and --fairness-bins with pooled rows",
    "files_swapped": "--table: the main table needs --summary with the columns",
}


@pytest.mark.parametrize("case", REPORT_PROBLEMS)
def test_report_checks_every_output_before_writing_any(study, capsys, case):
    # --table and --plots together, so that any output written before the failing check shows.
    tmp_path, runs = study
    summary, fairness = tmp_path / "summary.csv", tmp_path / "fairness.csv"
    outputs = ["--table", str(tmp_path / "main.md"), "--plots", str(tmp_path / "plots")]
    if case == "no_output":
        outputs = []
    elif case == "run_without_metrics":
        (tmp_path / "runs" / "fspo" / "seed0" / "metrics.jsonl").unlink()
    elif case == "run_badly_named":
        runs = [*runs, str(tmp_path / "runs")]
    elif case == "summary_missing":
        summary.unlink()
    elif case == "no_accuracy_rows":
        pd.read_csv(summary).assign(metric="pass@k").to_csv(summary, index=False)
    elif case == "no_pooled_rows":
        bins = tmp_path / "fairness_bins.csv"
        pd.read_csv(bins).assign(scope="seed").to_csv(bins, index=False)
    elif case == "metrics_empty":
        (tmp_path / "runs" / "fspo" / "seed0" / "metrics.jsonl").write_text("\n")
    elif case == "metrics_without_columns":
        (tmp_path / "runs" / "fspo" / "seed0" / "metrics.jsonl").write_text('{"step": 1}\n')
    elif case == "files_swapped":
        summary.rename(tmp_path / "x.csv")
        fairness.rename(summary)
        (tmp_path / "x.csv").rename(fairness)
    code = cli.main(report_args(tmp_path, "--runs", *runs, *outputs))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("clipbench report: error: ") and REPORT_PROBLEMS[case] in err
    assert err.count("\n") == 1
    assert written(tmp_path) == set()


def test_report_writes_every_output_when_its_inputs_are_there(study):
    tmp_path, runs = study
    args = report_args(
        tmp_path, "--runs", *runs, "--table", str(tmp_path / "main.md"), "--plots", str(tmp_path / "plots")
    )
    assert cli.main(args + ["--config-name", "t", "--config-hash", "h"]) == 0
    assert written(tmp_path) == {
        "main.md",
        "plots/accuracy.png",
        "plots/clip_by_length.png",
        "plots/training_curves.png",
    }
    assert "Config `t` (hash h)" in (tmp_path / "main.md").read_text()


def test_aggregate_writes_no_file_when_a_run_is_unfinished(tmp_path, capsys):
    evals = tmp_path / "evals" / "base" / "synthetic_test.json"
    evals.parent.mkdir(parents=True)
    evals.write_text(json.dumps({"k": 4, "avg@k": 0.5, "pass@k": 0.75}))
    run = tmp_path / "runs" / "ppo" / "seed0"
    run.mkdir(parents=True)
    summary, fairness = tmp_path / "summary.csv", tmp_path / "fairness.csv"
    bins = tmp_path / "fairness_bins.csv"
    args = [
        "aggregate",
        "--evals",
        str(evals),
        "--runs",
        str(run),
        "--summary",
        str(summary),
        "--fairness",
        str(fairness),
        "--fairness-bins",
        str(bins),
    ]
    assert cli.main(args) == 2
    assert "--runs: no final/summary.json (an unfinished run?) in" in capsys.readouterr().err
    assert not summary.exists() and not fairness.exists() and not bins.exists()


def finished_run(root, method, seed, steps=4, per_step=30):
    """A run directory as `clipbench train` leaves it: a clip-records file per step, then
    final/summary.json."""
    import numpy as np

    from clipbench import artifacts

    run = root / "runs" / method / f"seed{seed}"
    rng = np.random.default_rng(seed)
    for step in range(steps):
        rows = [
            {"step": step, "update": update, "epoch": 0, "minibatch": update, "seq": i}
            | {"length": int(rng.integers(5, 60)), "S": float(rng.normal(0, 0.1)), "advantage": 0.0}
            | {"reward": 0.0, "entropy": 0.1, "seq_clip": 0.0, "seq_out": float(rng.random() < 0.2)}
            for update in (0, 1)
            for i in range(per_step)
        ]
        for row in rows:  # prefix sums S_k ~ N(0, 0.01^2 k) for the rungs k <= L
            for k, column in zip(artifacts.RECORD_PREFIX_LADDER, artifacts.PREFIX_COLUMNS, strict=True):
                row[column] = float(rng.normal(0, 0.01 * k**0.5)) if k <= row["length"] else float("nan")
        artifacts.write_step_records(run, step, artifacts.clip_records_frame(rows))
    (run / "final").mkdir(parents=True)
    (run / "final" / "summary.json").write_text("{}")
    return run


def test_aggregate_writes_intervals_and_differences_against_the_reference(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    evals = [write_eval(tmp_path, "base", rng.random((12, 2)) < 0.5)]
    runs = []
    for method in ("ppo", "grpo"):
        for seed in (0, 1):
            evals.append(write_eval(tmp_path, f"{method}-seed{seed}", rng.random((12, 2)) < 0.5))
            runs.append(finished_run(tmp_path, method, seed))
    out = {name: tmp_path / f"{name}.csv" for name in ("summary", "fairness", "fairness_bins")}
    args = ["aggregate", "--evals", *map(str, evals), "--runs", *map(str, runs), "--bins", "3"]
    args += [arg for name, path in out.items() for arg in (f"--{name.replace('_', '-')}", str(path))]
    assert cli.main([*args, "--reference", "gspo", "--resamples", "20"]) == 2
    assert capsys.readouterr().err == (
        "clipbench aggregate: error: accuracy_differences: the reference 'gspo' has no verdicts on synthetic_test\n"
    )
    assert not any(path.exists() for path in out.values())  # nothing written
    assert cli.main([*args, "--reference", "ppo", "--resamples", "20", "--bootstrap-seed", "3"]) == 0
    summary = pd.read_csv(out["summary"])
    pooled = summary[summary.scope == "pooled"].set_index(["method", "metric"])
    assert set(pooled.reference) == {"ppo"} and pooled.loc[("ppo", "avg@k"), "diff_hi"] == 0.0
    assert summary[["lo", "hi"]].notna().all().all()
    groups = pd.read_csv(out["fairness"])
    assert groups[["spread_lo", "spread_hi", "lre_lo", "lre_hi"]].notna().all().all()
    within = ["s_exponent_within", "s_exponent_within_lo", "s_exponent_within_hi"]
    assert groups[within].notna().all().all() and (groups.n_rungs == 3).all()  # rungs 8, 16, 32
    first = {name: path.read_bytes() for name, path in out.items()}
    assert cli.main([*args, "--reference", "ppo", "--resamples", "20", "--bootstrap-seed", "3"]) == 0
    assert {name: path.read_bytes() for name, path in out.items()} == first  # byte for byte
    with pytest.raises(SystemExit) as exited:  # argparse's own exit
        cli.main([*args, "--resamples", "0"])
    assert exited.value.code == 2
    assert "--resamples: must be an integer >= 1, got 0" in capsys.readouterr().err
