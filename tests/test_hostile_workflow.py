"""Hostile and careless study configs (issue 11): config strings that reach a shell line stay one
argument (no injection, spaces work), and names that become paths or wildcards (benchmark keys,
method names) are refused at DAG construction, naming the key, before anything is written."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import snakemake_run
import yaml
from snakemake_run import SNAKEMAKE

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflows" / "config" / "schema.yaml"

# Stands in for `python` on the jobs' PATH: records its argv (one JSON file per call) and writes
# the job's outputs, as a successful `python -m clipbench.cli evaluate|train` would; like the real
# CLI (argparse) it exits 0 on --help and 2 without --out (train) or --plan-json (evaluate).
STUB_PYTHON = f"""#!{sys.executable}
import json, os, sys, time
from pathlib import Path

argv = sys.argv[1:]
record = Path(os.environ["STUB_RECORD"]) / f"{{time.time_ns()}}.json"
record.write_text(json.dumps(argv))
if "--help" in argv:
    print("usage: clipbench ...")
    sys.exit(0)
if "evaluate" in argv and "--plan-json" in argv:
    for entry in json.loads(argv[argv.index("--plan-json") + 1]):
        Path(entry["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(entry["out"]).write_text("{{}}")
    sys.exit(0)
if "--out" not in argv:
    print("error: the following arguments are required: --out", file=sys.stderr)
    sys.exit(2)
out = Path(argv[argv.index("--out") + 1])
if "train" in argv:
    (out / "final").mkdir(parents=True, exist_ok=True)
    (out / "final" / "summary.json").write_text("{{}}")
"""


def hostile_values(tmp_path: Path) -> tuple[str, str]:
    """A base model path and a data_dir that each hold a space and a shell injection. Unquoted,
    the base path ends `python ... --model .../my base --help` (exit 0: argparse prints its help
    first), then `touch INJECTED_BASE`, then `:` (a no-op whose arguments, the rest of the line,
    are still expanded, so the data_dir's `$(touch INJECTED_DATA)` runs too)."""
    base = f"{tmp_path}/my models/my base --help;touch {tmp_path}/INJECTED_BASE;:"
    data_dir = f"{tmp_path}/my data/$(touch {tmp_path}/INJECTED_DATA)"
    return base, data_dir


def write_study(tmp_path: Path, base: str, data_dir: str) -> Path:
    study = {
        "name": "hostile",
        "methods": ["fspo"],
        "seeds": [0],
        "base": {"kind": "path", "path": base},
        "train": {"steps": 1},
        "evaluate": {
            "data_dir": data_dir,
            "benchmarks": {
                "t": {"benchmark": "synthetic", "split": "test", "k": 1, "limit": 2, "max_new_tokens": 8}
            },
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def injected(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("INJECTED*") if p.is_file())


def run_stubbed(tmp_path: Path, config: Path, *targets: str) -> list[list[str]]:
    """Snakemake builds `targets` of the study `config` for real in a scratch working directory,
    with `python` on the jobs' PATH replaced by STUB_PYTHON; returns each call's argv. Fails when
    an injected command ran or Snakemake failed."""
    bin_dir, record = tmp_path / "bin", tmp_path / "argv"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "python").write_text(STUB_PYTHON)
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_RECORD": str(record)}
    result = subprocess.run(
        [
            *SNAKEMAKE,
            *targets,
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path / "work"),
            "--cores",
            "1",
            "--configfile",
            str(config),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert not injected(tmp_path), f"injected commands ran: {injected(tmp_path)}\n{result.stdout[-3000:]}"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(record.iterdir())]


def test_config_strings_on_shell_lines_are_one_argument_and_inject_nothing(tmp_path):
    """Runs the real study jobs (not a dry run) for the evaluate job of the base model and the
    train job of fspo, in a scratch working directory, with `python` on the jobs' PATH replaced
    by a stub that records its argv and writes the job's output (so the shell line runs exactly
    as Snakemake builds it, `set -euo pipefail` included, in seconds instead of minutes). The base
    path and data_dir carry `;touch ...` and `$(touch ...)` and spaces: no INJECTED file may
    appear, and each value must reach the program as one argument, unchanged.
    test_a_hostile_path_study_evaluates_for_real runs the real program on such paths."""
    base, data_dir = hostile_values(tmp_path)
    config = write_study(tmp_path, base, data_dir)
    calls = run_stubbed(
        tmp_path, config, "results/evals/base/t.json", "results/runs/fspo/seed0/final/summary.json"
    )
    evaluate = next(c for c in calls if "evaluate" in c)
    train = next(c for c in calls if "train" in c)
    assert evaluate[evaluate.index("--model") + 1] == base
    (plan,) = json.loads(evaluate[evaluate.index("--plan-json") + 1])
    assert plan["data_dir"] == data_dir and plan["out"] == "results/evals/base/t.json"
    assert json.loads(train[train.index("--config-json") + 1])["model"] == base
    assert train[train.index("--out") + 1] == "results/runs/fspo/seed0"


def test_the_accelerate_config_path_reaches_the_launcher_as_one_argument(tmp_path):
    """The train job of a trl study on 2 processes, whose launch.accelerate_config (a real copy of
    workflows/accelerate/cpu.yaml, since the DAG check reads it) sits under a folder named with
    spaces, `--help;touch ...` and `$(touch ...)` (unquoted, the stub would exit 0 on --help and the
    touches run, as hostile_values explains): the stubbed `python` gets `-m accelerate.commands.launch
    --config_file PATH` with PATH as one argument, unchanged, and nothing is injected."""
    folder = (
        f"{tmp_path}/my launch --help;touch {tmp_path}/INJECTED_LAUNCH;:/$(touch {tmp_path}/INJECTED_SUB)"
    )
    path = Path(folder) / "cpu config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text((ROOT / "workflows" / "accelerate" / "cpu.yaml").read_text())
    config = write_study(tmp_path, f"{tmp_path}/base", f"{tmp_path}/data")
    study = yaml.safe_load(config.read_text())
    study["train"].update(backend="trl", processes=2)
    study["launch"] = {"accelerate_config": str(path)}
    config.write_text(yaml.safe_dump(study))
    (train,) = run_stubbed(tmp_path, config, "results/runs/fspo/seed0/final/summary.json")
    assert train[:4] == ["-m", "accelerate.commands.launch", "--config_file", str(path)]
    assert train[4:9] == ["--num_processes", "2", "--main_process_port", "0", "-m"]
    assert train[train.index("--out") + 1] == "results/runs/fspo/seed0"


@pytest.mark.slow
def test_a_hostile_path_study_evaluates_for_real(tmp_path):
    """End to end, no stub: a tiny model saved under the hostile base path (spaces, `;`, `--help`)
    and a real data_dir named with `$(touch ...)`; Snakemake runs the real evaluate job on them,
    which succeeds, records the model path as given, and nothing is injected (~1 minute)."""
    from clipbench.models import build_tiny_model, build_tokenizer, save_model

    base, data_dir = hostile_values(tmp_path)
    tokenizer = build_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    save_model(model, tokenizer, base)
    Path(data_dir).mkdir(parents=True)
    config = write_study(tmp_path, base, data_dir)
    work = tmp_path / "work"
    result = subprocess.run(
        [
            *SNAKEMAKE,
            "results/evals/base/t.json",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(work),
            "--cores",
            "1",
            "--configfile",
            str(config),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert not injected(tmp_path), injected(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((work / "results" / "evals" / "base" / "t.json").read_text())
    assert summary["model"]["path"] == base


def smoke_with(tmp_path: Path, **changes) -> Path:
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            study[section][field] = value
        else:
            study[section] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def dry_run(
    config: Path, tmp_path: Path, snakefile: Path = ROOT / "Snakefile"
) -> subprocess.CompletedProcess:
    """A dry run in this process (tests/snakemake_run.py), in a scratch working directory."""
    args = ["-n", "--snakefile", snakefile, "--directory", tmp_path / "work", "--configfile", config]
    return snakemake_run.snakemake(*args, cwd=tmp_path)


BENCH = {"benchmark": "synthetic", "split": "test", "k": 1, "limit": 2}


@pytest.mark.parametrize("key", ["../x", "a(b"])
def test_benchmark_keys_that_are_not_names_fail_at_dag_construction(tmp_path, key):
    # Before: '../x' gave results/evals/base/../x.json (any depth of ../ leaves results/);
    # 'a(b' crashed with "missing ), unterminated subpattern ... in wildcard statement".
    result = dry_run(smoke_with(tmp_path, evaluate__benchmarks={key: BENCH}), tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{key!r} does not match '^[A-Za-z0-9_]+$'" in log, log[-3000:]
    assert "benchmarks']['propertyNames']" in log, log[-3000:]
    assert "Job stats" not in log and not (tmp_path / "work" / "results").exists()


@pytest.mark.parametrize(
    "name",
    ["x", "a_b", "A9", "fspo", "synthetic_ood"],
)
def test_the_schema_accepts_plain_names(name):
    schema = yaml.safe_load(SCHEMA.read_text())
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["methods"] = [name]
    study["method_params"] = {name: {}}
    study["evaluate"]["benchmarks"] = {name: BENCH}
    jsonschema.validate(study, schema)


@pytest.mark.parametrize(
    "name", ["../x", "../../../../tmp/x", "a(b", "a/b", "..", "", "a b", "a;b", "$(x)", "a-b", "a.b", "ä"]
)
@pytest.mark.parametrize("where", ["methods", "method_params", "benchmarks"])
def test_the_schema_refuses_names_that_are_not_safe_file_names(name, where):
    schema = yaml.safe_load(SCHEMA.read_text())
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    if where == "methods":
        study["methods"] = [name]
    elif where == "method_params":
        study["method_params"] = {name: {}}
    else:
        study["evaluate"]["benchmarks"] = {name: BENCH}
    with pytest.raises(jsonschema.ValidationError, match=re.escape(f"{name!r} does not match")):
        jsonschema.validate(study, schema)


def copy_workflow(tmp_path: Path) -> Path:
    """The Snakefile with its rules, configs and profiles (the code comes from the install)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Snakefile", project / "Snakefile")
    for part in ("workflows", "profiles"):
        shutil.copytree(ROOT / part, project / part)
    return project


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"evaluate__benchmarks": {"../x": BENCH}}, "config evaluate.benchmarks: '../x' is not a valid name"),
        pytest.param(
            {"evaluate__benchmarks": {"a(b": BENCH}},
            "config evaluate.benchmarks: 'a(b' is not a valid name",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"methods": ["../fspo"]}, "config methods: '../fspo' is not a valid name", marks=pytest.mark.slow
        ),
        pytest.param(
            {"method_params": {"a/b": {}}},
            "config method_params: 'a/b' is not a valid name",
            marks=pytest.mark.slow,
        ),
    ],
)
@pytest.mark.dag
def test_common_smk_checks_names_even_without_the_schema(tmp_path, changes, message):
    """The names are checked again where paths are built (workflows/rules/common.smk): with the
    schema's patterns removed (a copy of the workflow), the DAG still fails naming the key."""
    project = copy_workflow(tmp_path)
    schema = project / "workflows" / "config" / "schema.yaml"
    text = schema.read_text()
    # methods, method_params and evaluate.benchmarks keys, report.reference (a study method, checked too)
    assert text.count('pattern: "^[A-Za-z0-9_]+$"') == 4
    schema.write_text(text.replace('pattern: "^[A-Za-z0-9_]+$"', 'pattern: ".*"'))
    result = dry_run(smoke_with(tmp_path, **changes), tmp_path, project / "Snakefile")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in log, log[-3000:]
    assert "Job stats" not in log and not (tmp_path / "work" / "results").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"benchmark": "synthetic", "split": "tset", "n": 100},
            "config train.data.split: synthetic has no split 'tset'; splits: test, test_ood, train",
        ),
        pytest.param(
            {"benchmark": "math_train", "split": "train", "data_dir": "no_such_dir"},
            "config train.data.data_dir: math_train/train: no_such_dir/math_train/train.json not found",
            marks=pytest.mark.slow,
        ),
    ],
)
@pytest.mark.dag
def test_bad_training_data_fails_at_dag_construction(tmp_path, data, message):
    """The training set of every run is checked while the DAG is built, as the train job checks
    it (clipbench.config.check_run), not first inside a job: a split the benchmark lacks, a local
    copy that is not there. Nothing is run or written."""
    project = copy_workflow(tmp_path)
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["train"]["data"] = data
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    result = dry_run(config, tmp_path, project / "Snakefile")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in log, log[-3000:]
    assert "Job stats" not in log and not (tmp_path / "work" / "results").exists()
