"""One TRL-backend run (tests/test_trl_backend.py starts it as a study's train job starts its
processes: accelerate launch with workflows/accelerate/cpu.yaml, 2 processes): the smoke study's train
settings with `backend: trl`, `processes: 2`, from a random tiny base model, with a reward a random
model can earn (1 when the completion text has even length, as the native tests' `parity` fixture) in
place of the verifier's 0 everywhere.

    python -m accelerate.commands.launch --config_file workflows/accelerate/cpu.yaml --num_processes 2 \
        --main_process_port 0 tests/trl_smoke_run.py MODEL RUN_DIR METHOD
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipbench.integrations.trl import train_trl  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "workflows" / "config" / "smoke.yaml"


def parity(completions: list[str], answers: list[str]) -> list[float]:
    return [float(len(text) % 2 == 0) for text in completions]


if __name__ == "__main__":
    model, run_dir, method = sys.argv[1:]
    torch.set_num_threads(1)
    train = yaml.safe_load(SMOKE.read_text())["train"]
    config = {
        **train,
        "model": model,
        "method": method,
        "seed": 0,
        "steps": 2,
        "backend": "trl",
        "processes": 2,
    }
    config["optim"] = {**config["optim"], "lr": 3e-3}  # moves a random model within two steps
    final = train_trl(config, run_dir, reward=parity)
    # One write per line: both ranks share the test's stdout pipe, and print's pieces (each its own
    # write under PYTHONUNBUFFERED) interleave with the other rank's.
    os.write(
        1,
        f"final model: {final}\nprocess group after the run: {torch.distributed.is_initialized()}\n".encode(),
    )
