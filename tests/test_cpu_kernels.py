"""clipbench.cpu_kernels: which kernel variables a job's environment gets, and that torch, started after
`pin`, runs its AVX2 kernels (on an x86 CPU that has them)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from clipbench import artifacts, cpu_kernels

ROOT = Path(__file__).resolve().parents[1]
AVX2_CPU = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
AVX512_CPU = AVX2_CPU | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
THIS_CPU_PINS = bool(cpu_kernels.settings({}, cpu_kernels.cpu_flags(), platform.machine()))


@pytest.mark.parametrize("flags", [AVX2_CPU, AVX512_CPU], ids=["avx2", "avx512"])
def test_an_x86_cpu_with_avx2_gets_all_three_variables(flags):
    assert cpu_kernels.settings({}, flags, "x86_64") == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }
    assert (
        cpu_kernels.settings({"CLIPBENCH_CPU_KERNELS": "avx2"}, flags, "AMD64")
        == cpu_kernels.AVX2_ENVIRONMENT
    )


def test_a_users_own_value_is_kept():
    added = cpu_kernels.settings({"ATEN_CPU_CAPABILITY": "default", "HOME": "/x"}, AVX512_CPU, "x86_64")
    assert added == {"MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.parametrize(
    "environ, flags, machine",
    [
        ({"CLIPBENCH_CPU_KERNELS": "native"}, AVX512_CPU, "x86_64"),  # opted out
        ({}, AVX512_CPU, "aarch64"),  # not x86: torch has no AVX2 kernels there
        ({}, AVX2_CPU - {"fma"}, "x86_64"),  # torch's AVX2 kernels need FMA too
        ({}, frozenset({"fpu", "sse2", "avx"}), "x86_64"),  # no AVX2: nothing to pin it to
        ({}, frozenset(), "x86_64"),  # no /proc/cpuinfo (macOS): nothing known, nothing set
    ],
    ids=["native", "arm", "no-fma", "no-avx2", "unknown"],
)
def test_nothing_is_set_where_the_avx2_kernels_cannot_or_should_not_run(environ, flags, machine):
    assert cpu_kernels.settings(environ, flags, machine) == {}


def test_an_unknown_choice_names_the_variable():
    with pytest.raises(ValueError, match=r"CLIPBENCH_CPU_KERNELS='avx512': expected one of avx2, native"):
        cpu_kernels.settings({"CLIPBENCH_CPU_KERNELS": "avx512"}, AVX512_CPU, "x86_64")


def test_pin_adds_what_settings_says_and_reports_it(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: AVX512_CPU)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    environ = {"MKL_CBWR": "COMPATIBLE"}
    assert cpu_kernels.pin(environ) == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert environ == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cpu_kernels.pin(environ) == {}  # set already: a second pin changes nothing
    assert cpu_kernels.pinned(environ) == {
        "CLIPBENCH_CPU_KERNELS": None,
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 fma\nflags\t\t: other\n")
    assert cpu_kernels.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "fma"}
    assert cpu_kernels.cpu_flags(str(tmp_path / "missing")) == frozenset()


def clean_environment() -> dict[str, str]:
    """This process's environment less the kernel variables (as a user's shell would have it)."""
    return {
        k: v for k, v in os.environ.items() if k not in cpu_kernels.pinned() and k != "CLIPBENCH_JOB_HOST"
    }


CAPABILITY = "import torch; print(torch.backends.cpu.get_cpu_capability())"


@pytest.mark.skipif(not THIS_CPU_PINS, reason="this CPU has no AVX2 kernels to pin to")
def test_torch_started_after_pin_runs_its_avx2_kernels():
    pinned = f"from clipbench import cpu_kernels; cpu_kernels.pin(); {CAPABILITY}"
    done = subprocess.run(
        [sys.executable, "-c", pinned], capture_output=True, text=True, env=clean_environment(), check=True
    )
    assert done.stdout.strip() == "AVX2"


@pytest.mark.skipif(not THIS_CPU_PINS, reason="this CPU has no AVX2 kernels to pin to")
def test_a_cli_job_records_the_avx2_kernels_in_its_provenance(tmp_path):
    """`python -m clipbench.cli` pins before it imports torch: the SFT warm-up's saved provenance says AVX2."""
    out = tmp_path / "base"
    sets = ["--set", "max_steps=1", "--set", "eval_every=1", "--set", "target_accuracy=1"]
    subprocess.run(
        [sys.executable, "-m", "clipbench.cli", "sft", "--out", str(out), *sets],
        capture_output=True, text=True, env=clean_environment(), cwd=ROOT, check=True, timeout=600,
    )  # fmt: skip
    cpu = json.loads((out / artifacts.MODEL_PROVENANCE_FILE).read_text())["cpu"]
    assert cpu["torch_capability"] == "AVX2"
    assert cpu["kernel_variables"] == {"CLIPBENCH_CPU_KERNELS": None, **cpu_kernels.AVX2_ENVIRONMENT}


@pytest.mark.parametrize(
    "environ, flags, machine, gone",
    [
        # Inherited on a CPU that cannot run AVX2 (ARM; an x86 without it): this module's values go.
        ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, AVX2_CPU, "aarch64",
         ["ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"]),
        ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}, frozenset({"avx"}), "x86_64",
         ["ATEN_CPU_CAPABILITY"]),  # a user's own other value stays
        ({"ATEN_CPU_CAPABILITY": "avx2"}, AVX512_CPU, "x86_64", []),  # the CPU runs them: kept
    ],
    ids=["arm", "no-avx2", "avx512"],
)  # fmt: skip
def test_variables_inherited_on_a_cpu_without_avx2_are_removed(environ, flags, machine, gone, monkeypatch):
    assert cpu_kernels.stale(environ, flags, machine) == gone
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: flags)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    pinned = dict(environ)
    cpu_kernels.pin(pinned)
    kept = {k: v for k, v in environ.items() if k not in gone}
    assert pinned == {**kept, **cpu_kernels.settings(environ, flags, machine)}


def test_the_clipbench_command_pins_before_it_runs(monkeypatch):
    from importlib import metadata

    from clipbench import cli

    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "clipbench"]
    assert script.value == "clipbench.cli:console_main"
    order = []
    monkeypatch.setattr(cpu_kernels, "pin", lambda: order.append("pin"))
    monkeypatch.setattr(cli, "main", lambda: order.append("main") or 0)
    assert cli.console_main() == 0 and order == ["pin", "main"]
