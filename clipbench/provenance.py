"""Provenance of result files: the config, its hash, the seed, package versions and git commit
that made a file, so every number can be traced back. Also the atomic writers every output uses
(a reader never sees a half-written file)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clipbench import cpu_kernels

TRACKED_PACKAGES = (
    "clipbench",
    "torch",
    "numpy",
    "pandas",
    "transformers",
    "math-verify",
    "lm-eval",
    "vllm",
    "snakemake",
    "datasets",
    "tokenizers",
    "seaborn",
    "matplotlib",
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path = PROJECT_ROOT) -> str | None:
    """HEAD's commit of the checkout holding the code, with "-dirty" when tracked files differ
    from it; None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of `config`."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def cpu_description() -> dict[str, str | None]:
    """The CPU a result was computed on, as far as it changes float results: its model name, the
    instruction set torch's CPU kernels use (e.g. AVX2, AVX512) and the variables that chose the
    kernels of torch, MKL and oneDNN (`clipbench.cpu_kernels`: with them, AVX2 on any x86 CPU that has
    it; without, each library's own choice, and results match only the same kind of CPU)."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None
            )
    except OSError:
        pass
    import torch  # a job that writes provenance has imported it, or pays that once

    capability = torch.backends.cpu.get_cpu_capability()
    return {
        "model": model or platform.processor() or None,
        "torch_capability": capability,
        "kernel_variables": cpu_kernels.pinned(),
    }


def provenance(config: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
    """Everything needed to trace a result file back to what made it."""
    return {
        "config": dict(config),
        "config_hash": config_hash(config),
        "seed": seed,
        "commit": git_commit(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory `src` to `dst`, replacing an existing `dst`.

    `os.replace` cannot overwrite a non-empty directory, so an old `dst` is first renamed
    aside and deleted only once `src` is in place (and put back if that move fails). Readers
    see the old directory or the new one, never a partial one; `dst` is briefly absent.
    """
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old / dst.name, dst)
        raise
    finally:
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
