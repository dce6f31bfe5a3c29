"""One TRL-backend run (tests/test_trl_backend.py starts it as a study's train job starts its
processes: accelerate launch with workflows/accelerate/cpu.yaml, 2 processes): the smoke study's train
settings with `backend: trl`, `processes: 2`, from a random tiny base model, with a reward a random
model can earn (1 when the completion text has even length, as the native tests' `parity` fixture) in
place of the verifier's 0 everywhere.

    python -m accelerate.commands.launch --config_file workflows/accelerate/cpu.yaml --num_processes 2 \
        --main_process_port 0 tests/trl_smoke_run.py MODEL RUN_DIR METHOD

Options for the resume test (one process, started as `python tests/trl_smoke_run.py ... --processes 1`):
`--steps`, `--checkpoint-every`, and `--kill-before-manifest N`: the process SIGKILLs itself once TRL has
saved the checkpoint after RL step N, before clipbench's manifest marks it complete (a kill mid-save).
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipbench.integrations.trl import train_trl, trainer_class  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "workflows" / "config" / "smoke.yaml"


def parity(completions: list[str], answers: list[str]) -> list[float]:
    return [float(len(text) % 2 == 0) for text in completions]


def kill_before_manifest(optimizer_steps: int) -> None:
    """SIGKILL this process once TRL has saved checkpoint-`optimizer_steps`, before the manifest."""
    cls = trainer_class()
    clipbench_save = cls._save_checkpoint  # TRL's save, then the manifest
    trl_save = cls.__mro__[1]._save_checkpoint  # GRPOTrainer's own

    def save_then_die(self, model, trial):
        if self.state.global_step == optimizer_steps:
            trl_save(self, model, trial)
            os.kill(os.getpid(), signal.SIGKILL)
        clipbench_save(self, model, trial)

    cls._save_checkpoint = save_then_die


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("run_dir")
    parser.add_argument("method")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, help="default: the smoke study's")
    parser.add_argument("--kill-before-manifest", type=int, help="an RL step")
    args = parser.parse_args()
    model, run_dir, method = args.model, args.run_dir, args.method
    torch.set_num_threads(1)
    train = yaml.safe_load(SMOKE.read_text())["train"]
    config = {
        **train,
        "model": model,
        "method": method,
        "seed": 0,
        "steps": args.steps,
        "backend": "trl",
        "processes": args.processes,
    }
    if args.checkpoint_every is not None:
        config["checkpoint_every"] = args.checkpoint_every
    config["optim"] = {**config["optim"], "lr": 3e-3}  # moves a random model within two steps
    if args.kill_before_manifest is not None:
        optim = config["optim"]
        kill_before_manifest(args.kill_before_manifest * optim.get("minibatches", 1) * optim.get("epochs", 1))
    final = train_trl(config, run_dir, reward=parity)
    # One write per line: both ranks share the test's stdout pipe, and print's pieces (each its own
    # write under PYTHONUNBUFFERED) interleave with the other rank's.
    os.write(
        1,
        f"final model: {final}\nprocess group after the run: {torch.distributed.is_initialized()}\n".encode(),
    )
