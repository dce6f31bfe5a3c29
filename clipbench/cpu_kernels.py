"""One kind of CPU arithmetic for every clipbench job, so that a CPU study gives the same files on
x86 machines of different kinds, not only on the same kind of CPU.

torch picks its CPU kernels by the instruction set it finds (`torch.backends.cpu.get_cpu_capability()`),
and MKL and oneDNN pick theirs the same way. Their float sums differ in the last bits between the
AVX2 and AVX-512 kernels, and training amplifies those bits: on a 2-core AMD EPYC with AVX-512 the
default study's SFT warm-up reached another base model than the machine behind docs/default_study/
(dev greedy accuracy 0.891 at step 600 against 0.539), so every number after it differed. With the
three variables below set on that machine it reaches 0.539 again and the study's csv files are
`cmp`-identical to `docs/default_study/` (docs/study.md, "Reproducibility"). Shown on those two
machines; on others with AVX2 (Intel's AVX-512 CPUs included) the same kernels are expected to give
the same files, unverified. The jobs' thread counts are fixed by the study's rules, as MKL's
reproducibility mode needs.

`pin` sets them, unless already set, in the process's environment before torch is imported (torch
reads ATEN_CPU_CAPABILITY once, at its first CPU kernel; MKL reads MKL_CBWR at its first call); every
process started from it inherits them. It is called at the top of the Snakefile, so
every job of a study, the job host and a launcher's ranks run the same kernels, and by `python -m
clipbench.cli`, the `clipbench` command and the job host for runs outside a study. Only where the CPU
can run AVX2 (a CPU without it keeps its own kernels: nothing to pin it to; the variables a job
inherited from a machine that has it are removed there). `CLIPBENCH_CPU_KERNELS=native` leaves every
library its own choice (results then match only the same kind of CPU; no faster at the default
study's size: speed/cpu_kernels.py).
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
    if choice == "native" or not can_run_avx2(flags, machine):
        return {}
    return {name: value for name, value in AVX2_ENVIRONMENT.items() if name not in environ}


def can_run_avx2(flags: frozenset[str], machine: str) -> bool:
    """Whether torch's AVX2 kernels run on a CPU of these flags and machine type: x86-64 with AVX2 and FMA."""
    return machine.lower() in ("x86_64", "amd64") and AVX2_FLAGS <= flags


def stale(environ: Mapping[str, str], flags: frozenset[str], machine: str) -> list[str]:
    """The AVX2 kernel variables `environ` holds at this module's values on a CPU that cannot run
    those kernels: inherited from a process on another machine (a SLURM job gets its submitter's
    environment), where torch would run AVX2 instructions the CPU lacks. `pin` removes them."""
    if can_run_avx2(flags, machine):
        return []
    return [name for name, value in AVX2_ENVIRONMENT.items() if environ.get(name) == value]


def pin(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the AVX2 kernel variables in `environ` (default: this process's environment), as `settings`
    says, and remove `stale` ones; returns what it set. Call it before importing torch."""
    environ = os.environ if environ is None else environ
    flags, machine = cpu_flags(), platform.machine()
    for name in stale(environ, flags, machine):
        del environ[name]
    added = settings(environ, flags, machine)
    environ.update(added)
    return added


def pinned(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The kernel variables as this process has them, for a result's provenance."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name) for name in (CHOICE_VARIABLE, *AVX2_ENVIRONMENT)}
