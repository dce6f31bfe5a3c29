"""Same loss, same gradient on two processes (run by tests/test_trl_backend.py under torchrun):
each process takes half of the fixed rollout batch (rows 0-3 and 4-7: 16 and 15 response tokens,
so a per-process normaliser would weigh them differently), the backend's update runs through TRL's
own training_step on the DDP-wrapped model (gloo), two micro-batches per process; rank 0 then
compares the loss (summed over the processes) and the synchronised gradients with the native
trainer's update on the whole batch, for the rules given on the command line, and prints one line
"ok NAME loss_error grad_error" per rule (or raises).

    torchrun --nproc_per_node 2 tests/trl_two_process.py BASE_MODEL_DIR OUT_DIR RULE[:PARAMS_JSON] ...
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from trl import GRPOTrainer  # noqa: E402
from trl_batch import DATASET_ROWS, fixed_batch, fixed_generation, native_update, trl_trainer, trl_update  # noqa: E402

from clipbench import methods  # noqa: E402
from clipbench.models import load_model  # noqa: E402


def main() -> None:
    base_model, out_dir, *rules = sys.argv[1:]
    torch.set_num_threads(1)
    model, tokenizer = load_model(base_model, dtype=torch.float64)
    fixed = fixed_batch(model, tokenizer)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    share = len(DATASET_ROWS) // world
    rows = slice(rank * share, (rank + 1) * share)
    GRPOTrainer._generate_and_score_completions = fixed_generation(fixed, rows)
    for spec in rules:
        name, _, params = spec.partition(":")
        params = json.loads(params) if params else {}
        rule = methods.get_method(name, **params)
        out = Path(out_dir) / f"{name}-{rank}"
        trainer = trl_trainer(
            copy.deepcopy(model), tokenizer, rule, 0.0, out, rows, per_device_train_batch_size=2
        )
        assert trainer.accelerator.num_processes == world, trainer.accelerator.state
        wrapped = trainer.accelerator.prepare_model(trainer.model)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel), type(wrapped)
        loss, grads, metrics, _ = trl_update(trainer, DATASET_ROWS[rows], wrapped)
        # Each process's returned loss is its share x num_processes (DDP averages the gradients).
        total = (
            trainer.accelerator.reduce(torch.tensor([loss], dtype=torch.float64), reduction="sum").item()
            / world
        )
        if rank == 0:
            _, native_metrics, native_grads, _ = native_update(
                base_model, copy.deepcopy(model), tokenizer, fixed, name, params, 0.0, out
            )
            want = native_metrics["loss"]
            assert abs(total - want) <= 1e-6 * abs(want) + 1e-12, (name, total, want)
            assert abs(metrics["loss"] - want) <= 1e-6 * abs(want) + 1e-12, (name, metrics["loss"], want)
            error = 0.0
            for key, g in native_grads.items():
                torch.testing.assert_close(grads[key], g, rtol=1e-6, atol=1e-12, msg=f"{name}: {key}")
                error = max(error, float((grads[key] - g).abs().max()))
            for key in ("clip_frac", "ppo_kl"):
                assert abs(metrics[key] - native_metrics[key]) <= 1e-9, (
                    name,
                    key,
                    metrics[key],
                    native_metrics[key],
                )
            # one write (print's text and newline are two): the other rank shares this stdout pipe
            os.write(1, f"ok {spec} {abs(total - want):.3g} {error:.3g}\n".encode())
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
