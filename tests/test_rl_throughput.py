"""speed/rl_throughput.py: TRL's GRPOTrainer is configured to our schedule, and both trainers report
one time mark per RL step (what the throughput ratio is computed from)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl")

from clipbench.config import load_config  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "speed" / "rl_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("rl_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script()


def small(bench, model: str, steps: int = 2) -> dict:
    config = bench.train_config(model, steps)
    config["rollout"] = {
        **config["rollout"],
        "prompts_per_step": 2,
        "samples_per_prompt": 4,
        "max_new_tokens": 12,
    }
    config["optim"] = {**config["optim"], "minibatches": 2, "epochs": 2}
    return config


def test_the_benchmark_runs_the_default_study_train_config(bench):
    config = bench.train_config("some/model", 6)
    assert config["method"] == "grpo" and config["steps"] == 6 and config["checkpoint_every"] == 6
    assert config["rollout"]["max_new_tokens"] == 128 and config["optim"]["minibatches"] == 4


def test_trl_is_configured_to_the_same_schedule(bench, base_model, tmp_path):
    cfg = load_config(small(bench, base_model, steps=3))
    args = bench.trl_arguments(cfg, str(tmp_path))
    r, o = cfg.rollout, cfg.optim
    assert args.generation_batch_size == r.prompts_per_step * r.samples_per_prompt == 8
    assert args.steps_per_generation == o.minibatches and args.num_iterations == o.epochs
    assert args.per_device_train_batch_size * o.minibatches == args.generation_batch_size
    assert args.gradient_accumulation_steps == 1
    assert args.num_generations == r.samples_per_prompt
    assert args.max_completion_length == r.max_new_tokens
    assert args.max_steps == cfg.steps * o.minibatches * o.epochs  # optimizer steps = M x E per RL step
    assert (args.learning_rate, args.max_grad_norm, args.beta) == (o.lr, o.grad_clip, 0.0)
    assert (args.temperature, args.top_p, args.top_k) == (r.temperature, r.top_p, 0)
    assert args.loss_type == "grpo" and args.scale_rewards == "group"
    assert args.gradient_checkpointing is False  # TRL's default (True) would recompute every forward
    assert args.optim == "adamw_torch_fused"  # as clipbench's trainer


def test_both_trainers_mark_every_rl_step_and_trl_scores_p_times_g(bench, base_model, tmp_path):
    config = small(bench, base_model, steps=2)
    ours = bench.run_clipbench(config, tmp_path / "ours")
    trl = bench.run_trl(config, tmp_path / "trl")
    assert len(ours["step_ends"]) == len(trl["step_ends"]) == 2
    assert trl["completions_per_step"] == [8, 8]  # one generation batch of P x G per RL step
    assert [row["step"] for row in ours["perf"]] == [0, 1]
    assert len(bench.step_seconds(ours)) == len(bench.step_seconds(trl)) == 1  # first step dropped
