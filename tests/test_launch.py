"""How a train job starts its processes (clipbench/launch.py, clipbench.study.train_launcher): the
launcher's words, the accelerate config files of workflows/accelerate/ and their check at DAG
construction (each error naming the file and key), and, under -m slow, what accelerate 1.15 really
starts with them: two processes in one gloo group from workflows/accelerate/cpu.yaml, one from
`--cpu`, and two jobs side by side without a port collision."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipbench import launch, study
from clipbench.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflows" / "accelerate"
CPU = CONFIGS / "cpu.yaml"
#: Each shipped accelerate config and the (train.dtype, train.device) it is written for.
SHIPPED = {
    "cpu.yaml": ("float32", "cpu"),
    "ddp_bf16.yaml": ("bfloat16", "cuda"),
    "fsdp_bf16.yaml": ("bfloat16", "cuda"),
    "zero2_bf16.yaml": ("bfloat16", "cuda"),
}


def smoke_trl(**launch_section) -> dict:
    """The smoke study with backend trl on 2 processes, and the given launch section (if any)."""
    config = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    config["train"].update(backend="trl", processes=2)
    if launch_section:
        config["launch"] = launch_section
    return config


def write(tmp_path: Path, **changes) -> Path:
    """cpu.yaml with `changes` (None: the key removed), as a new file."""
    data = yaml.safe_load(CPU.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- the words


def test_the_launcher_words_by_hand():
    assert launch.launch_words(1, None) == ["python"]
    assert launch.launch_words(2, "workflows/accelerate/cpu.yaml") == [
        "python",
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "workflows/accelerate/cpu.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
    ]
    with pytest.raises(ValueError, match="2 processes need an accelerate config"):
        launch.launch_words(2, None)


def test_the_study_launches_trl_runs_with_its_accelerate_config_and_native_runs_with_python():
    config = smoke_trl(accelerate_config="workflows/accelerate/cpu.yaml")
    run = study.run_config(config, "fspo", 0)
    words = study.train_launcher(config, run)
    assert words[:3] == ["python", "-m", "accelerate.commands.launch"]
    assert words[words.index("--num_processes") + 1] == "2"  # the run's processes, not the file's
    assert words[words.index("--config_file") + 1] == "workflows/accelerate/cpu.yaml"
    assert study.train_threads(run) == 2
    native = yaml.safe_load((ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    assert study.train_launcher(native, study.run_config(native, "fspo", 0)) == ["python"]


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_accelerate_config_passes_for_its_setup_and_says_what_it_is_for(name):
    path = CONFIGS / name
    assert path.read_text().startswith("# "), f"{name}: no comment header"
    dtype, device = SHIPPED[name]
    data = launch.check_accelerate_config(path, dtype=dtype, device=device)
    assert data["distributed_type"] in launch.MULTI_PROCESS and data["num_machines"] == 1


def test_every_accelerate_config_of_the_workflow_is_listed_here():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize(
    ("changes", "dtype", "device", "message"),
    [
        (
            {"distributed_type": "MULTI_CPU"},
            "float32",
            "cpu",
            r"distributed_type: 'MULTI_CPU' starts one process in accelerate 1\.15; use one of MULTI_GPU, "
            r"FSDP, DEEPSPEED \(on a CPU: MULTI_GPU with use_cpu: true",
        ),
        ({"distributed_type": "NO"}, "float32", "cpu", "distributed_type: 'NO' starts one process"),
        ({"distributed_type": None}, "float32", "cpu", "distributed_type: None starts one process"),
        ({"num_machines": 2}, "float32", "cpu", "num_machines: 2; a train job runs on one machine"),
        (
            {"mixed_precision": "bf16"},
            "float32",
            "cpu",
            "mixed_precision: 'bf16', but train.dtype float32 needs 'no'",
        ),
        ({}, "bfloat16", "cpu", "mixed_precision: 'no', but train.dtype bfloat16 needs 'bf16'"),
        ({"mixed_precision": None}, "bfloat16", "cpu", "mixed_precision: 'no', but train.dtype bfloat16"),
        ({"mixed_precision": False}, "float32", "cpu", "write 'no' quoted"),
        ({}, "float32", "cuda", "use_cpu: True, but train.device is 'cuda'"),
        ({"use_cpu": None}, "float32", "cpu", "use_cpu: False, but train.device is 'cpu'"),
    ],
)
def test_a_config_that_starts_the_wrong_processes_or_arithmetic_is_refused(
    tmp_path, changes, dtype, device, message
):
    path = write(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        launch.check_accelerate_config(path, dtype=dtype, device=device)
    assert str(err.value).startswith(f"{path}: ") and re.search(message, str(err.value)), str(err.value)


def test_a_missing_or_unreadable_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"^no/such\.yaml: no such file \(relative to the working directory "
    ):
        launch.check_accelerate_config("no/such.yaml", dtype="float32", device="cpu")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(
        ConfigError, match=r"list\.yaml: expected a mapping of accelerate config keys, got list"
    ):
        launch.check_accelerate_config("list.yaml", dtype="float32", device="cpu")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not a YAML file"):
        launch.check_accelerate_config("bad.yaml", dtype="float32", device="cpu")


def test_accelerates_own_reader_refuses_a_key_it_does_not_know(tmp_path):
    pytest.importorskip("accelerate")
    path = write(tmp_path, num_process=2)  # a typo of num_processes
    with pytest.raises(ConfigError, match=r"accelerate cannot read it: .*unknown keys \(\['num_process'\]\)"):
        launch.check_accelerate_config(path, dtype="float32", device="cpu")


# --------------------------------------------------------------------------- the study's check


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            smoke_trl(),
            "config launch.accelerate_config: required with train.processes: 2 (backend trl starts its "
            "processes through accelerate launch): e.g. workflows/accelerate/cpu.yaml on a CPU",
        ),
        (
            smoke_trl(accelerate_config="workflows/accelerate/nope.yaml"),
            "config launch.accelerate_config: workflows/accelerate/nope.yaml: no such file",
        ),
        (
            smoke_trl(accelerate_config="workflows/accelerate/ddp_bf16.yaml"),
            "config launch.accelerate_config: workflows/accelerate/ddp_bf16.yaml: mixed_precision: 'bf16', "
            "but train.dtype float32 needs 'no'",
        ),
        (
            {
                **smoke_trl(),
                "train": {**smoke_trl()["train"], "backend": "native", "processes": 1},
                "launch": {"accelerate_config": "workflows/accelerate/cpu.yaml"},
            },
            "config launch.accelerate_config: train.backend native trains in one process without accelerate",
        ),
        (
            smoke_trl(config_file="x.yaml"),
            "config launch.config_file: unknown field; valid: accelerate_config",
        ),
    ],
    ids=["required", "missing-file", "precision", "native", "unknown-key"],
)
def test_the_study_check_names_the_launch_field(monkeypatch, config, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(study.StudyConfigError) as err:
        study.check_study(config)
    assert message in str(err.value)


def test_a_trl_study_on_one_process_needs_no_launch_section():
    config = smoke_trl()
    config["train"]["processes"] = 1
    study.check_study(config)
    assert study.train_launcher(config, study.run_config(config, "fspo", 0)) == ["python"]


# --------------------------------------------------------------------------- what accelerate starts

PROBE = """
import os, sys
import torch
if "WORLD_SIZE" not in os.environ:
    print("rank 0 of 1 alone", flush=True)
    sys.exit(0)
from accelerate import PartialState
state = PartialState(cpu=True)
total = torch.tensor([float(state.process_index + 1)])
torch.distributed.all_reduce(total)
# One write per line: the two ranks share the pipe, and under PYTHONUNBUFFERED print's text and its
# newline are two writes, which the other rank's line can come between.
os.write(1, (f"rank {state.process_index} of {state.num_processes} {state.distributed_type.value} "
             f"{torch.distributed.get_backend()} sum {total.item():g} threads {torch.get_num_threads()}\\n").encode())
state.destroy_process_group()  # as train_trl does: left to the exit, gloo sometimes aborts it
"""


def start(words: list[str], script: Path) -> subprocess.Popen:
    """`words` (launch_words) run by this interpreter on `script`, as the train job's shell line does."""
    command = [sys.executable, *words[1:], str(script)] if words[0] == "python" else [*words, str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def ranks(process: subprocess.Popen) -> list[str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out[-2000:] + err[-3000:]
    return sorted(line for line in out.splitlines() if line.startswith("rank "))


@pytest.mark.slow
def test_the_cpu_config_starts_two_processes_in_one_gloo_group_and_two_jobs_run_side_by_side(tmp_path):
    """workflows/accelerate/cpu.yaml with --num_processes 2: two processes, MULTI_CPU over gloo, one
    thread each, whose all-reduce of 1 and 2 gives 3 (hand-computed), for two launches started at
    the same moment (each takes a free port: --main_process_port 0)."""
    pytest.importorskip("accelerate")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    words = launch.launch_words(2, str(CPU))
    jobs = [start(words, script), start(words, script)]
    expected = [f"rank {r} of 2 MULTI_CPU gloo sum 3 threads 1" for r in (0, 1)]
    for job in jobs:
        assert ranks(job) == expected


@pytest.mark.slow
def test_the_cpu_flag_starts_one_process_whatever_num_processes_says(tmp_path):
    """What docs/training.md records of accelerate 1.15: `accelerate launch --num_processes 2 --cpu`
    starts one process (its simple launcher), hence workflows/accelerate/cpu.yaml."""
    pytest.importorskip("accelerate")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    assert ranks(start([*launch.ACCELERATE_LAUNCH, "--num_processes", "2", "--cpu"], script)) == [
        "rank 0 of 1 alone"
    ]
