"""What the AVX2 kernels cost: SFT and RL steps with the kernel variables of clipbench.cpu_kernels set
(as every study job runs) against each library's own choice (CLIPBENCH_CPU_KERNELS=native).

On a CPU with AVX-512, torch, MKL and oneDNN would pick their AVX-512 kernels; clipbench holds them to
AVX2 so that a CPU study gives the same files on any x86 machine with AVX2 (docs/study.md,
"Reproducibility"). On an AVX2-only CPU both children run the same kernels and the ratio is ~1.

Each child is its own process (the variables are read once, at torch's first kernel), the two
alternating `--repeats` times. A child times `--sft-steps` SFT warm-up steps on a fresh model of the
default shape (speed/sft_step.py's loop, the packed loss) and a `grpo` run of the default study's
train config for `--steps` RL steps (speed/rl_throughput.py's, the first step dropped as warm-up).
Printed: the kernels each child ran (torch.backends.cpu.get_cpu_capability()), median seconds per
step of each, and the ratio pinned / native (above 1: the pinned kernels are slower).

    python speed/cpu_kernels.py [--model results/base/model] [--steps 4] [--sft-steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rl_throughput  # noqa: E402  (speed/ is not a package)
import sft_step  # noqa: E402

from clipbench import cpu_kernels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"native": {cpu_kernels.CHOICE_VARIABLE: "native"}, "avx2": cpu_kernels.AVX2_ENVIRONMENT}


def sft_seconds_per_step(steps: int) -> float:
    from clipbench.sft import SFTConfig, sft_loss

    config = SFTConfig()
    tokenizer, batches = sft_step.warmup_batches(config, steps)
    seconds, _ = sft_step.time_steps(sft_loss, batches, tokenizer, config)
    return seconds


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = {"capability": torch.backends.cpu.get_cpu_capability()}
    result["sft_s"] = sft_seconds_per_step(args.sft_steps)
    with tempfile.TemporaryDirectory(prefix="cpu-kernels-") as tmp:
        run = rl_throughput.run_clipbench(rl_throughput.train_config(args.model, args.steps), Path(tmp))
    result["rl_s"] = rl_throughput.step_seconds(run)
    Path(args.result).write_text(json.dumps(result))


def spawn(kind: str, args: argparse.Namespace, model: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    env = {k: v for k, v in os.environ.items() if k not in cpu_kernels.pinned()}
    env.update(KINDS[kind], OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--child", kind, "--result", str(result), "--model", model]
    cmd += ["--steps", str(args.steps), "--sft-steps", str(args.sft_steps), "--threads", str(args.threads)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    data = json.loads(result.read_text())
    result.unlink()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "results" / "base" / "model"))
    parser.add_argument("--steps", type=int, default=4, help="RL steps per child (the first is warm-up)")
    parser.add_argument("--sft-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="children of each kind, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=tuple(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    if args.child:
        child(args)
        return
    model = rl_throughput.ensure_model(args.model)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for repeat in range(args.repeats):
        for kind in KINDS:
            print(f"run {repeat + 1}/{args.repeats}: {kind}", flush=True)
            runs[kind].append(spawn(kind, args, model))
    print(f"\n{args.threads} threads, {args.repeats} children of each kind, alternating:")
    median = {}
    for kind, results in runs.items():
        sft = statistics.median(r["sft_s"] for r in results)
        rl = statistics.median(s for r in results for s in r["rl_s"])
        median[kind] = (sft, rl)
        capability = sorted({r["capability"] for r in results})
        print(f"  {kind:<6} torch kernels {'/'.join(capability):<7} SFT {sft:.3f} s/step  RL {rl:.3f} s/step")
    (sft_n, rl_n), (sft_p, rl_p) = median["native"], median["avx2"]
    print(f"pinned (avx2) / native: SFT {sft_p / sft_n:.2f}x, RL {rl_p / rl_n:.2f}x (above 1: pinned slower)")


if __name__ == "__main__":
    main()
