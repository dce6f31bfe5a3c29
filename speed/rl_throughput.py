"""RL steps per second: `clipbench train` against TRL's GRPOTrainer, same model and schedule.

Both trainers run the default study's tiny config (workflows/config/default.yaml, `train:`) on the
same base model, with the same data, rewards (benchmarks.verify), batch (P prompts x G samples),
group size, max new tokens, sampling temperature, M minibatches x E epochs, AdamW settings (the
fused kernel on both sides) and grad clipping, in float32 on the CPU with the same number of
threads. TRL is mapped as per_device_train_batch_size = P*G/M, steps_per_generation = M, num_iterations = E,
gradient_accumulation_steps = 1, beta = 0, loss_type "grpo" (our `grpo` rule), no gradient
checkpointing (TRL's GRPOConfig turns it on by default; we keep activations), so one TRL
generation cycle (M*E optimizer steps) is one of our RL steps. Otherwise TRL runs at its
defaults: it pads each batch to its longest sequence (GRPOConfig has no padding-free option in
1.16), where clipbench's forward runs on the sequences packed back to back
(clipbench.logprobs.token_logprobs); that is one of the things compared.

Each trainer runs in its own subprocess (alternating, `--repeats` times each); a step's time is the
wall clock between the ends of consecutive RL steps (so it includes everything the loop does:
generation, rewards, log-probs, updates, logging, records), and the first step is dropped as
warm-up. TRL gets the prompts in our order (unshuffled), so step k of both samples the same
problems; the samples themselves differ, so completion tokens per step are printed too, with the
ratio per completion token beside the ratio of steps/s. Printed: median seconds per step of each,
the ratio (target: clipbench >= 1.5x TRL), and our per-phase share of step time and tokens/s
from perf.jsonl.

    pip install -e ".[bench]"
    python speed/rl_throughput.py [--model results/base/model] [--steps 8] [--repeats 3] [--threads 2]

Without `--model` (or when it does not exist) the script first warms up a base model exactly as the
default study does (clipbench.sft, ~1-2 min on 2 cores) into speed/.cache/base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = ROOT / "workflows" / "config" / "default.yaml"
METHOD = "grpo"  # token-level clipping with per-sequence mean: TRL's loss_type="grpo"
PHASES = ("generate", "score", "logprob", "update")


def train_config(model: str, steps: int) -> dict:
    """The default study's train section for one `grpo` run of `steps` steps (no mid-run
    checkpoints: TRL saves none either)."""
    study = yaml.safe_load(DEFAULT_STUDY.read_text())
    return {
        **study["train"],
        "model": model,
        "method": METHOD,
        "seed": 0,
        "steps": steps,
        "checkpoint_every": steps,
    }


# ---------------------------------------------------------------------------------- children


def run_clipbench(config: dict, out: Path) -> dict:
    from clipbench.config import load_config
    from clipbench.trainer import Trainer

    marks: list[float] = []

    class TimedTrainer(Trainer):
        def _train_step(self, step):
            result = super()._train_step(step)
            marks.append(time.perf_counter())
            return result

    run_dir = out / "clipbench_run"
    TimedTrainer(load_config(config), run_dir, progress=False).run()
    perf = [json.loads(line) for line in (run_dir / "perf.jsonl").read_text().splitlines()]
    tokens = [round(row["generate_tokens_per_s"] * row["generate_s"]) for row in perf]
    return {"step_ends": marks, "perf": perf, "completion_tokens": tokens}


def trl_arguments(cfg, output_dir: str):
    """TRL's GRPOConfig for the same schedule as our TrainConfig `cfg` (see the module docstring)."""
    from trl import GRPOConfig

    r, o = cfg.rollout, cfg.optim
    return GRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=cfg.seed,
        max_steps=cfg.steps * o.minibatches * o.epochs,
        per_device_train_batch_size=r.prompts_per_step * r.samples_per_prompt // o.minibatches,
        gradient_accumulation_steps=1,
        steps_per_generation=o.minibatches,
        num_iterations=o.epochs,
        num_generations=r.samples_per_prompt,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=0,
        beta=cfg.kl_beta,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        max_grad_norm=o.grad_clip,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",  # TRL's default, as our trainer's fused AdamW
        gradient_checkpointing=False,  # TRL's default is True; clipbench keeps activations
        save_strategy="no",
        report_to="none",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        shuffle_dataset=False,  # run_trl passes the prompts in our order
    )


def run_trl(config: dict, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from clipbench import benchmarks
    from clipbench.config import load_config
    from clipbench.models import load_model
    from clipbench.trainer import prompt_indices, training_prompts

    cfg = load_config(config)
    spec = benchmarks.get_spec(cfg.data.benchmark)
    model, tokenizer = load_model(cfg.model, device="cpu")
    problems, all_prompts = training_prompts(cfg.data, tokenizer)
    # Our prompt order (clipbench.trainer.prompt_indices), unshuffled: TRL's step k gets the same
    # P prompts as ours, so both sample the same problems (their completions still differ).
    p = cfg.rollout.prompts_per_step
    order = [i for step in range(cfg.steps) for i in prompt_indices(cfg.seed, step, p, len(problems))]
    dataset = Dataset.from_dict(
        {"prompt": [all_prompts[i] for i in order], "answer": [problems[i].answer for i in order]}
    )
    scored: list[tuple[int, int]] = []  # (completions, completion tokens) per reward call = RL step

    def correct(prompts, completions, answer, completion_ids, **_):
        scored.append((len(completions), sum(len(ids) for ids in completion_ids)))
        verdicts = benchmarks.verify(completions, answer, fallbacks=spec.fallbacks)
        return [1.0 if v.correct else 0.0 for v in verdicts]

    marks: list[float] = []
    cycle = cfg.optim.minibatches * cfg.optim.epochs

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % cycle == 0:
                marks.append(time.perf_counter())

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=trl_arguments(cfg, str(out / "trl_run")),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepEnds()],
    )
    torch.manual_seed(cfg.seed)
    trainer.train()
    return {
        "step_ends": marks,
        "completions_per_step": [n for n, _ in scored],
        "completion_tokens": [t for _, t in scored],
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    config = train_config(args.model, args.steps)
    with tempfile.TemporaryDirectory(prefix=f"rl-throughput-{args.child}-") as tmp:
        start = time.perf_counter()
        result = (run_clipbench if args.child == "clipbench" else run_trl)(config, Path(tmp))
    result["start"] = start
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------- parent


def ensure_model(path: str | None) -> str:
    if path and Path(path).exists():
        return path
    cached = ROOT / "speed" / ".cache" / "base"
    if not (cached / "config.json").exists():
        from clipbench.sft import SFTConfig, run_sft

        study = yaml.safe_load(DEFAULT_STUDY.read_text())
        print(f"no base model at {path!r}: warming one up as the default study does -> {cached}")
        run_sft(SFTConfig(**study["base"]["sft"]), cached)
    return str(cached)


def step_seconds(result: dict) -> list[float]:
    """Seconds of each RL step after the first (the first includes warm-up)."""
    ends = result["step_ends"]
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def spawn(which: str, args: argparse.Namespace, model: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", which, "--result", str(result), "--model", model]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    data = json.loads(result.read_text())
    result.unlink()
    return data


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    per_step = {name: [s for r in results for s in step_seconds(r)] for name, results in runs.items()}
    median = {name: statistics.median(values) for name, values in per_step.items()}
    print(f"\nRL steps/s, tiny config ({args.steps} steps per run, first dropped, {args.repeats} runs each,")
    print(f"{args.threads} threads); median seconds per step over {len(per_step['clipbench'])} steps:")
    for name in runs:
        values = per_step[name]
        print(
            f"  {name:<10} {median[name]:7.3f} s/step  {1 / median[name]:6.3f} steps/s"
            f"  (min {min(values):.3f}, max {max(values):.3f})"
        )
    scored = {n for r in runs["trl"] for n in r["completions_per_step"]}
    rollout = train_config(args.model, args.steps)["rollout"]
    batch = rollout["prompts_per_step"] * rollout["samples_per_prompt"]
    print(f"  (completions per RL step: TRL scored {sorted(scored)}, clipbench P x G = {batch})")
    tokens = {
        name: [t for r in results for t in r["completion_tokens"][1:]] for name, results in runs.items()
    }
    print(
        "  (completion tokens per RL step, mean: "
        + ", ".join(f"{name} {statistics.mean(tokens[name]):.0f}" for name in runs)
        + "; same prompts, different samples)"
    )
    ratio = median["trl"] / median["clipbench"]
    print(f"throughput ratio clipbench / TRL GRPOTrainer: {ratio:.2f}x (target >= 1.5x)")
    per_token = {name: sum(per_step[name]) / sum(tokens[name]) for name in runs}
    print(
        f"per completion token (total time / total tokens): {per_token['trl'] / per_token['clipbench']:.2f}x"
    )

    perf = [row for r in runs["clipbench"] for row in r["perf"] if row["step"] > 0]
    total = sum(row["step_s"] for row in perf)
    print("\nclipbench per phase (steps after the first; tokens: generated, scored answers, forward tokens):")
    print(f"  {'phase':<9} {'share':>7} {'s/step':>8} {'per s':>10}")
    for phase in PHASES:
        seconds = sum(row[f"{phase}_s"] for row in perf)
        rate = statistics.median(row[f"{phase}_tokens_per_s"] for row in perf)
        unit = "answers/s" if phase == "score" else "tok/s"
        print(f"  {phase:<9} {seconds / total:7.1%} {seconds / len(perf):8.3f} {rate:10,.0f} {unit}")
    rest = total - sum(sum(row[f"{phase}_s"] for row in perf) for phase in PHASES)
    print(f"  {'other':<9} {rest / total:7.1%} {rest / len(perf):8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "results" / "base" / "model"))
    parser.add_argument("--steps", type=int, default=8, help="RL steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each trainer, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("clipbench", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    if args.child:
        child(args)
        return
    model = ensure_model(args.model)
    runs: dict[str, list[dict]] = {"clipbench": [], "trl": []}
    for repeat in range(args.repeats):
        for which in runs:
            print(f"run {repeat + 1}/{args.repeats}: {which}", flush=True)
            runs[which].append(spawn(which, args, model))
    report(runs, args)


if __name__ == "__main__":
    main()
