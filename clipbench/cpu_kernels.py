"""One kind of CPU arithmetic for every clipbench job, so that a CPU study gives the same files on
any x86 machine with AVX2, not only on the same kind of CPU.

torch picks its CPU kernels by the instruction set it finds (`torch.backends.cpu.get_cpu_capability()`),
and MKL and oneDNN pick theirs the same way. Their float sums differ in the last bits between the
AVX2 and AVX-512 kernels, and training amplifies those bits: on a 2-core AMD EPYC with AVX-512 the
default study's SFT warm-up matched CI's machine to step 300 and then reached another base model (dev
greedy accuracy 0.891 at step 600 against 0.539), so every number after it differed. With the three
variables below set on that machine it reaches 0.539 again and the study's csv files are `cmp`-identical
to `docs/default_study/` (docs/study.md, "Reproducibility").

`pin` sets them, unless already set, in the process's environment before torch is imported (torch
reads ATEN_CPU_CAPABILITY once, at its first CPU kernel; MKL reads MKL_CBWR at its first call); every
process started from it inherits them. It is called by the Snakefile (workflows/rules/common.smk), so
every job of a study, the job host and a launcher's ranks run the same kernels, and by `python -m
clipbench.cli` and the job host for runs outside a study. Only where the CPU can run AVX2 (a CPU without
it keeps its own, slower kernels: nothing to pin it to). `CLIPBENCH_CPU_KERNELS=native` leaves every
library its own choice (faster on AVX-512 machines; results then match only the same kind of CPU).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, MutableMapping

CHOICE_VARIABLE = "CLIPBENCH_CPU_KERNELS"
CHOICES = ("avx2", "native")

# torch's ATen kernels, MKL (BLAS: every matmul on CPU) and oneDNN, each held to its AVX2 code path.
AVX2_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# What torch requires of a CPU to run its AVX2 kernels (aten/src/ATen/native/DispatchStub.cpp).
AVX2_FLAGS = frozenset({"avx2", "fma"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (none where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def settings(environ: Mapping[str, str], flags: frozenset[str], machine: str) -> dict[str, str]:
    """The variables `pin` adds to `environ`: the AVX2 set on an x86-64 CPU with AVX2 and FMA, less
    any the environment sets itself (a user's own value is kept); nothing with
    CLIPBENCH_CPU_KERNELS=native. Raises ValueError naming the variable for any other value."""
    choice = environ.get(CHOICE_VARIABLE, "avx2")
    if choice not in CHOICES:
        raise ValueError(f"{CHOICE_VARIABLE}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "native" or machine.lower() not in ("x86_64", "amd64") or not AVX2_FLAGS <= flags:
        return {}
    return {name: value for name, value in AVX2_ENVIRONMENT.items() if name not in environ}


def pin(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the AVX2 kernel variables in `environ` (default: this process's environment), as `settings`
    says; returns what it set. Call it before importing torch."""
    environ = os.environ if environ is None else environ
    added = settings(environ, cpu_flags(), platform.machine())
    environ.update(added)
    return added


def pinned(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The kernel variables as this process has them, for a result's provenance."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name) for name in (CHOICE_VARIABLE, *AVX2_ENVIRONMENT)}
