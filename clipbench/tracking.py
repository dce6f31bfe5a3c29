"""Experiment trackers a run may also write to (`TrainConfig.report_to`), besides its own files.

A run's numbers live in its run directory (metrics.jsonl, perf.jsonl, the clip records): that is
what the study aggregates. `report_to` sends each step's metrics.jsonl row (and its perf.jsonl
timings, under ``perf/``) to the trackers named, to watch a run as it trains; nothing is read
back. Each tracker's package is imported only when it is chosen; a chosen tracker whose package is
missing fails the config check before any compute (`check_available`). All write locally:

- ``tensorboard``: event files in ``{run_dir}/tensorboard/`` (``torch.utils.tensorboard``; pip
  install tensorboard); ``tensorboard --logdir results/runs`` shows every run of a study;
- ``wandb``: Weights & Biases in offline mode (``mode="offline"``), the run in
  ``{run_dir}/wandb/``; ``wandb sync`` uploads it later if you want;
- ``trackio``: Hugging Face's local tracker (project ``clipbench``, its default local database;
  ``trackio show`` opens the dashboard); no Space, nothing uploaded.

Scalars are logged under ``train/<name>`` and ``perf/<name>`` at the RL step (0-based, as in
metrics.jsonl). A resumed run opens its trackers again and continues at its next step.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: report_to's choices -> the module each needs (checked with importlib, not imported).
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
PROJECT = "clipbench"


def check_available(names: Sequence[str]) -> None:
    """ValueError naming ``report_to[i]`` for an unknown tracker, a repeated one, or one whose
    package is not installed (without importing it)."""
    for i, name in enumerate(names):
        if name not in TRACKERS:
            raise ValueError(f"report_to[{i}]: unknown tracker {name!r}; available: {', '.join(TRACKERS)}")
        if name in names[:i]:
            raise ValueError(f"report_to[{i}]: {name!r} is listed twice")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(
                f"report_to[{i}]: {name!r} needs the {TRACKERS[name]} package (pip install {name})"
            )


def scalars(metrics: Mapping[str, Any], perf: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one step's metrics.jsonl and perf.jsonl rows as ``train/<name>`` and
    ``perf/<name>`` (the step itself, text and non-finite values left out)."""
    out = {}
    for prefix, row in (("train", metrics), ("perf", perf)):
        for name, value in row.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                out[f"{prefix}/{name}"] = float(value)
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(
            project=PROJECT, name=name, config=config, dir=str(run_dir), mode="offline", reinit="create_new"
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        import trackio

        self.module = trackio
        self.run = trackio.init(project=PROJECT, name=name, config=config, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log(values, step=step)

    def close(self) -> None:
        self.module.finish()


_OPENERS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}


class Trackers:
    """The run's chosen trackers, opened together; ``log`` sends one step to each, ``close``
    closes each (also after an error)."""

    def __init__(self, names: Sequence[str], run_dir: str | Path, name: str, config: dict[str, Any]):
        check_available(list(names))
        self.open: list[Any] = []
        try:
            for tracker in names:
                self.open.append(_OPENERS[tracker](Path(run_dir), name, config))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: Mapping[str, Any], perf: Mapping[str, Any]) -> None:
        values = scalars(metrics, perf)
        for tracker in self.open:
            tracker.log(step, values)

    def close(self) -> None:
        while self.open:
            self.open.pop().close()
