"""How a train job starts its processes: the shell words before `-m clipbench.cli train`, and the
accelerate config files they name (this module owns that format: accelerate's own
`default_config.yaml`, read by `accelerate launch --config_file`; `workflows/accelerate/` ships one
per setup).

A run of one process starts as `python`. A run of `train.backend: trl` whose study names an
accelerate config (`launch.accelerate_config`, required with `train.processes` > 1) starts as::

    python -m accelerate.commands.launch --config_file FILE --num_processes N --main_process_port 0

which is `accelerate launch` (accelerate's `accelerate-launch` command is that module's `main`) run
by the job's own interpreter. `--num_processes` is the run's `processes` (it decides how the rollout
batch is split, so the run config owns it and the file's `num_processes` is overridden);
`--main_process_port 0` lets accelerate take a free port, so train jobs running side by side on one
machine do not collide, as torchrun's `--standalone` did.

What accelerate 1.15 does with a config (accelerate/commands/launch.py, `launch_command`):
`distributed_type` MULTI_GPU, FSDP or DEEPSPEED start N processes through torchrun; NO and
MULTI_CPU start one (MULTI_CPU spreads over processes only through MPI), and so does the `--cpu`
flag, whatever `--num_processes` says. The CPU path is therefore MULTI_GPU with `use_cpu: true`:
torchrun starts the N processes and, on `train.device: cpu`, they talk through gloo.

`check_accelerate_config` refuses, naming the file and key, what would start the wrong number of
processes (NO, MULTI_CPU, more than one machine) or change the arithmetic behind the run config's
back: accelerate's `mixed_precision` becomes the trainer's autocast when `train.dtype` does not set
one (transformers reads ACCELERATE_MIXED_PRECISION), so it must be what `train.dtype` says (float32:
no, bfloat16: bf16), and `use_cpu` must agree with `train.device`. Within those rules the file says
how the processes start and shard (DDP, FSDP, DeepSpeed), not what a run computes, so it is not part
of a run's config or identity (`run.yaml`); each TRL run records the distributed type and mixed
precision it ran with in its provenance.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clipbench.settings import ConfigError

__all__ = [
    "ACCELERATE_LAUNCH",
    "MULTI_PROCESS",
    "PRECISION",
    "check_accelerate_config",
    "launch_words",
    "read_accelerate_config",
]

#: `accelerate launch`, run by the job's `python` (the interpreter every other job runs).
ACCELERATE_LAUNCH = ("python", "-m", "accelerate.commands.launch")
#: The distributed types accelerate 1.15 starts N processes for, through torchrun, without MPI.
MULTI_PROCESS = ("MULTI_GPU", "FSDP", "DEEPSPEED")
#: train.dtype -> the mixed_precision an accelerate config must declare for it.
PRECISION = {"float32": "no", "bfloat16": "bf16"}


def launch_words(processes: int, accelerate_config: str | None) -> list[str]:
    """The shell words that start `-m clipbench.cli train ...` on `processes` processes: `python`
    without an accelerate config (one process), else `accelerate launch` with the config (module
    docstring). One list item per shell word, to be quoted by the caller."""
    if accelerate_config is None:
        if processes != 1:
            raise ValueError(f"{processes} processes need an accelerate config (launch.accelerate_config)")
        return ["python"]
    return [
        *ACCELERATE_LAUNCH,
        "--config_file",
        str(accelerate_config),
        "--num_processes",
        str(int(processes)),
        "--main_process_port",
        "0",
    ]


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """The mapping in accelerate config file `path`; ConfigError naming the file when it is missing,
    not YAML or not a mapping (a relative path is read from the working directory)."""
    file = Path(path)
    if not file.is_file():
        where = "" if file.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ConfigError(f"{path}: no such file{where}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not a YAML file: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of accelerate config keys, got {type(data).__name__}")
    return data


def _accelerate_reads(path: str | Path) -> None:
    """accelerate's own reader on `path` when accelerate is installed (unknown keys, unknown enum
    values); nothing without it (the workflow's driver need not have it: the train job's env does)."""
    try:
        from accelerate.commands.config.config_args import load_config_from_file
    except ImportError:
        return
    try:
        load_config_from_file(str(path))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: accelerate cannot read it: {err}") from None


def check_accelerate_config(path: str | Path, *, dtype: str, device: str) -> dict[str, Any]:
    """The accelerate config at `path`, checked for a run of `train.dtype` `dtype` on
    `train.device` `device` (module docstring); ConfigError naming the file and key otherwise."""
    data = read_accelerate_config(path)
    kind = data.get("distributed_type")
    if kind not in MULTI_PROCESS:
        raise ConfigError(
            f"{path}: distributed_type: {kind!r} starts one process in accelerate 1.15; use one of "
            f"{', '.join(MULTI_PROCESS)} (on a CPU: MULTI_GPU with use_cpu: true, as workflows/accelerate/cpu.yaml)"
        )
    machines = data.get("num_machines", 1)
    if machines != 1:
        raise ConfigError(f"{path}: num_machines: {machines!r}; a train job runs on one machine (1)")
    precision = data.get("mixed_precision", None)
    if precision is False:
        raise ConfigError(f"{path}: mixed_precision: write 'no' quoted (YAML reads a bare no as false)")
    precision = "no" if precision is None else precision
    want = PRECISION.get(dtype)
    if precision != want:
        raise ConfigError(
            f"{path}: mixed_precision: {precision!r}, but train.dtype {dtype} needs {want!r} (accelerate's mixed "
            "precision becomes the trainer's autocast: it must be the one the run config declares)"
        )
    use_cpu = data.get("use_cpu", False)
    if use_cpu is not (device == "cpu"):
        raise ConfigError(
            f"{path}: use_cpu: {use_cpu!r}, but train.device is {device!r} (use_cpu: true for cpu, false for cuda)"
        )
    _accelerate_reads(path)
    return data
