"""Is the planner honest? Its predicted peak memory (clipbench.plan) beside the measured peak
resident memory of the same update on a CPU, for three float32 models of different sizes.

Each update is speed/microbatch_memory.py's `measure`: a real `Trainer` on a random Qwen2 saved as
a model directory, the old log-prob pass of a minibatch of S sequences (a 32-token prompt and a
completion of random tokens, all of the same length) then its update (forward + backward per
micro-batch of the token budget, gradients accumulated, AdamW), after a first update that allocated
AdamW's state; the peak resident set (VmHWM) is reset just before. One fresh process per setting.

The prediction is `clipbench.plan.memory` for the same model shape and settings (padding 1: the
sequences have equal lengths; no rollout, no vLLM), with the process's own memory in place of the
CUDA runtime: the resident memory measured before the model loads (the interpreter, torch and
transformers), printed as `start`.

The planner predicts live memory: what tensors hold at the peak. Each update is measured twice:
with glibc's malloc told to return freed blocks to the system at once (MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ fixed at 128 KiB, `TRIMMED`), so the resident set follows the live memory
as `torch.cuda.max_memory_allocated` does on a GPU; and with glibc's defaults, whose resident set
also holds freed blocks malloc keeps for reuse (up to 29% more here; a GPU's caching
allocator keeps such blocks too, which is what clipbench.plan.HEADROOM is for). Printed side by
side: start, predicted, both measured peaks and their ratios to the prediction.

    python speed/plan_accuracy.py [--threads 2]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's clipbench, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from microbatch_memory import PROMPT, build_model  # noqa: E402

MB = 2**20
TRIMMED = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}

# name -> the model (Qwen2, float32, tied embeddings) and the update: S sequences of PROMPT +
# `length` tokens, micro-batches of `budget` tokens (two each), log-probs in chunks of `chunk`.
CONFIGS = {
    "small": {
        "shape": {
            "vocab": 32_768,
            "hidden": 256,
            "intermediate": 768,
            "layers": 4,
            "heads": 4,
            "kv_heads": 2,
        },
        "sequences": 8,
        "length": 224,
        "budget": 1024,
        "chunk": None,
    },
    "medium": {
        "shape": {
            "vocab": 32_768,
            "hidden": 512,
            "intermediate": 1536,
            "layers": 12,
            "heads": 8,
            "kv_heads": 2,
        },
        "sequences": 16,
        "length": 96,
        "budget": 1024,
        "chunk": 128,
    },
    "large": {
        "shape": {
            "vocab": 65_536,
            "hidden": 1024,
            "intermediate": 2816,
            "layers": 6,
            "heads": 16,
            "kv_heads": 4,
        },
        "sequences": 8,
        "length": 96,
        "budget": 512,
        "chunk": 256,
    },
}


def predicted(model_dir: Path, setting: dict, start: int) -> int:
    """The planner's peak for this update, with `start` as the process's own memory."""
    from clipbench import plan

    shape, _ = plan.load_shape(str(model_dir))
    run = plan.RunSettings(
        prompts_per_step=setting["sequences"],
        samples_per_prompt=2,
        minibatches=2,  # a minibatch of `sequences` rows
        epochs=1,
        steps=1,
        prompt_tokens=PROMPT,
        max_new_tokens=setting["length"],
        budget=setting["budget"],
        chunk=setting["chunk"],
        engine=None,  # the measured window holds no rollout
        padding=1.0,
    )
    return plan.memory(shape, run, runtime=start).peak, shape.parameters()


def measured(model_dir: Path, setting: dict, threads: int, env: dict[str, str]) -> dict:
    """`measure` in a fresh interpreter with `env` added to the environment."""
    command = [
        sys.executable,
        __file__,
        "--measure",
        str(model_dir),
        json.dumps(setting),
        "--threads",
        str(threads),
    ]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, env=environ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="just these settings")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        from microbatch_memory import measure

        model_dir, setting = args.measure[0], json.loads(args.measure[1])
        keys = ("sequences", "length", "budget")
        result = measure(model_dir, *(setting[k] for k in keys), args.threads, chunk=setting["chunk"])
        print(json.dumps(result))
        return

    print(
        f"float32 random Qwen2 models, {args.threads} threads; {PROMPT}-token prompts; one fresh process per "
        "measurement; MB = 2^20 bytes; ratio = predicted / measured"
    )
    print(
        f"{'setting':<8}{'params':>12}{'tokens':>8}{'budget':>7}{'chunk':>6}{'start':>7}{'predicted':>10}"
        f"{'trimmed':>9}{'ratio':>6}{'glibc':>8}{'ratio':>6}{'seconds':>9}"
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CONFIGS:
            setting = CONFIGS[name]
            model_dir = build_model(Path(tmp) / name, setting["shape"])
            trimmed = measured(model_dir, setting, args.threads, TRIMMED)
            default = measured(model_dir, setting, args.threads, {})
            peak, params = predicted(model_dir, setting, trimmed["start"])
            worst = max(worst, abs(peak / trimmed["peak"] - 1))
            print(
                f"{name:<8}{params:>12,}{trimmed['tokens']:>8}{setting['budget']:>7}{str(setting['chunk']):>6}"
                f"{trimmed['start'] / MB:>7.0f}{peak / MB:>10.0f}{trimmed['peak'] / MB:>9.0f}"
                f"{peak / trimmed['peak']:>6.2f}{default['peak'] / MB:>8.0f}{peak / default['peak']:>6.2f}"
                f"{trimmed['seconds']:>9.0f}",
                flush=True,
            )
            shutil.rmtree(model_dir)
    print(f"largest error of the predicted peak (trimmed malloc): {worst:.0%}; the acceptance bound: 25%")


if __name__ == "__main__":
    main()
