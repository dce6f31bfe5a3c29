"""The RL trainer: advantages, config validation, the minibatch/epoch schedule, determinism,
resume after an interruption (a raised error and a real SIGKILL), failure behaviour.

Runs use a tiny random model built here (no SFT), so the verifier would give every sample reward 0
and no gradient; the mechanics tests therefore replace `Trainer._score` with a deterministic reward
of the completion text (its length parity), keeping everything else on the real code path. The real
`_score` is tested on its own, on completions written for it. Rewards, advantages, the KL penalty and
the old log-probs are checked against values recomputed from what spies saw pass on the real path.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipbench import artifacts
from clipbench import trainer as trainer_module
from clipbench.advantages import available_estimators, compute_advantages
from clipbench.cli import _parse_sets
from clipbench.config import ConfigError, exponent_numbers, load_config
from clipbench.engines import Samples
from clipbench.methods import available_methods, combine_outputs, get_method
from clipbench.models import load_model
from clipbench.precision import compute_dtype
from clipbench.trainer import Trainer, TrainingError, derive_seed, prompt_indices, training_prompts

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- advantages


def test_advantages_golden():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    # Group 0: mean 0.5, sample std sqrt(1/3) -> +-0.5 / 0.57735 = +-0.866025.
    # Group 1: all equal -> 0. Group 2: mean 0.25, std 0.5 -> (-0.5, ..., 1.5).
    grpo = compute_advantages(rewards, "grpo", eps=0.0)
    torch.testing.assert_close(
        grpo[0], torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-6, rtol=0
    )
    assert grpo[1].tolist() == [0.0] * 4
    torch.testing.assert_close(grpo[2], torch.tensor([-0.5, -0.5, -0.5, 1.5]))
    # drgrpo: r - mean.
    assert compute_advantages(rewards, "drgrpo")[2].tolist() == [-0.25, -0.25, -0.25, 0.75]
    # rloo: r_i - mean of the other three: row 2 -> (0 - 1/3, ..., 1 - 0) = (-1/3, -1/3, -1/3, 1).
    torch.testing.assert_close(
        compute_advantages(rewards, "rloo")[2], torch.tensor([-1 / 3, -1 / 3, -1 / 3, 1.0])
    )
    assert available_estimators() == ["drgrpo", "grpo", "rloo"]
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'; available: drgrpo, grpo, rloo"):
        compute_advantages(rewards, "gae")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "fsop"}, "method: unknown method 'fsop'; available: " + ", ".join(available_methods())),
        ({"method_params": {"c_low": -1}}, r"method_params: fspo.c_low=-1: must be in \(0, inf\)"),
        ({"advantage": {"estimator": "gae"}}, "advantage.estimator: unknown estimator 'gae'"),
        ({"rollout": {"engine": "sglang"}}, "rollout.engine: unknown engine 'sglang'; available: hf, vllm"),
        ({"rollout": {"temprature": 1.0}}, "rollout.temprature: unknown field"),
        ({"optim": {"minibatches": 1, "epochs": 1}}, r"optim.minibatches \* optim.epochs: must be > 1"),
        ({"optim": {"minibatches": 3}}, "optim.minibatches: must divide the rollout batch"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
        ({"data": {"benchmark": "aime26"}}, "data.benchmark: unknown benchmark 'aime26'"),
        ({"steps": 0}, "steps: must be >= 1"),
        ({"model": ""}, "model: required"),
    ],
)
def test_invalid_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"model": "some/dir", **overrides})


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: base\nmethod: gspo\nrollout:\n  temperature: 0.8\n")
    config = load_config(path, overrides={"optim.lr": 1e-3, "method_params": {"eps_low": 1e-3}})
    assert config.rollout.temperature == 0.8 and config.optim.lr == 1e-3
    assert config.build_method().eps_low == 1e-3


def test_numbers_written_with_an_exponent_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads `1e-5` as text; every config clipbench reads treats it as a number.
    assert exponent_numbers({"a": "1e-5", "b": ["2E3", "x1e5", "+1.5e-3", ".5e1"], "c": "1e", "d": 3}) == {
        "a": 1e-5,
        "b": [2000.0, "x1e5", 1.5e-3, 5.0],
        "c": "1e",
        "d": 3,
    }
    path = tmp_path / "run.yaml"
    path.write_text("model: base\nmethod: gspo\nmethod_params: {eps_low: 5e-3}\noptim:\n  lr: 1e-5\n")
    config = load_config(path, overrides=_parse_sets(["optim.weight_decay=1e-2"]))
    assert config.optim.lr == 1e-5 and config.optim.weight_decay == 1e-2
    assert config.build_method().eps_low == 5e-3
    assert _parse_sets(["optim.lr=1e-3", "model=dir/1e3x"]) == {"optim.lr": 1e-3, "model": "dir/1e3x"}


# --------------------------------------------------------------------------- seeds and data order


def test_prompt_order_depends_on_the_seed_only_and_covers_the_data():
    first = [prompt_indices(7, s, 4, 10) for s in range(5)]
    assert first == [prompt_indices(7, s, 4, 10) for s in range(5)]
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # one full pass, no repeats
    assert first != [prompt_indices(8, s, 4, 10) for s in range(5)]
    assert derive_seed(0, 1) != derive_seed(0, 2) and derive_seed(0, 1) == derive_seed(0, 1)


# --------------------------------------------------------------------------- end-to-end mechanics


def small_config(base_model, **overrides):
    data = {
        "model": base_model,
        "method": "fspo",
        "method_params": {"c_low": 0.05, "c_high": 0.05},
        "steps": 4,
        "data": {"n": 40},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24},
        "optim": {"lr": 3e-3, "minibatches": 2, "epochs": 2},
        "checkpoint_every": 2,
        **overrides,
    }
    return load_config(data)


def read_run(run_dir: Path):
    metrics = (run_dir / "metrics.jsonl").read_text()
    records = artifacts.read_clip_records(run_dir)
    return metrics, records


def test_first_update_is_on_policy_and_later_ones_are_not(tmp_path, base_model, parity):
    Trainer(small_config(base_model, steps=2), tmp_path / "run", progress=False).run()
    _, records = read_run(tmp_path / "run")
    first = records[records["update"] == 0]
    later = records[records["update"] > 0]
    assert (first["S"] == 0).all() and (first["seq_out"] == 0).all()  # ratio exactly 1
    assert (later["S"] != 0).mean() > 0.9  # off-policy by the updates before
    assert set(records["update"]) == {0, 1, 2, 3}  # 2 minibatches x 2 epochs
    assert len(records) == 2 * 2 * 16  # every sequence once per epoch, per step


def test_chunked_log_probs_train_as_the_unchunked_ones(tmp_path, base_model, parity, monkeypatch):
    # optim.logprob_chunk_tokens reaches every log-prob of the step (old, update; the chunked
    # path is exact to float32 rounding, clipbench/logprobs.py): one step, same S and clip records.
    Trainer(small_config(base_model, steps=1, kl_beta=0.1), tmp_path / "whole", progress=False).run()
    seen = []
    real = trainer_module.token_logprobs

    def spy(*args, **kwargs):
        seen.append(kwargs.get("chunk_tokens"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "token_logprobs", spy)
    chunked = small_config(
        base_model,
        steps=1,
        kl_beta=0.1,
        optim={"lr": 3e-3, "minibatches": 2, "epochs": 2, "logprob_chunk_tokens": 5},
    )
    Trainer(chunked, tmp_path / "chunked", progress=False).run()
    # 1 old-log-prob pass + 2 reference passes + 4 updates, all chunked
    assert len(seen) == 7 and set(seen) == {5}
    _, whole = read_run(tmp_path / "whole")
    _, parts = read_run(tmp_path / "chunked")
    assert (whole["S"] != 0).any()
    for column in ("S", "entropy", "seq_clip", "seq_out"):
        pd.testing.assert_series_equal(whole[column], parts[column], atol=1e-4, rtol=0)
    pd.testing.assert_series_equal(whole["length"], parts["length"])


def test_without_the_progress_bar_each_step_logs_one_line_of_its_metrics(
    tmp_path, base_model, parity, capsys
):
    """Under Snakemake (--no-progress) the job's log gets a line per step, read from that step's
    metrics.jsonl and perf.jsonl rows (the same numbers, rounded). A narrow band and the parity
    reward make the clip fraction differ from the out-of-band fraction, so a line printing the wrong
    one fails (reward and accuracy are one number with 0/1 rewards: metrics.jsonl's definition)."""
    config = small_config(base_model, steps=2, method_params={"c_low": 0.002, "c_high": 0.002})
    Trainer(config, tmp_path / "run", progress=False).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    perf = [json.loads(line) for line in (tmp_path / "run" / "perf.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for step, (line, m, p) in enumerate(zip(lines, metrics, perf, strict=True)):
        assert line == (
            f"step {step + 1}/2: reward {m['reward_mean']:.4f}, accuracy {m['accuracy']:.4f}, "
            f"clip_frac {m['clip_frac']:.4f}, response_length {m['response_length_mean']:.1f}, "
            f"seconds {p['step_s']:.2f}"
        )
    assert any(m["clip_frac"] != m["out_frac"] for m in metrics)


def test_two_runs_with_the_same_seed_are_identical(tmp_path, base_model, parity):
    for name in ("a", "b"):
        Trainer(small_config(base_model), tmp_path / name, progress=False).run()
    metrics_a, records_a = read_run(tmp_path / "a")
    metrics_b, records_b = read_run(tmp_path / "b")
    assert metrics_a == metrics_b
    pd.testing.assert_frame_equal(records_a, records_b)
    assert json.loads(metrics_a.splitlines()[-1])["clip_frac"] > 0  # the rule did act
    Trainer(small_config(base_model, seed=1), tmp_path / "c", progress=False).run()
    assert read_run(tmp_path / "c")[0] != metrics_a


def interrupt_at_step_3(monkeypatch, at: int = 3):
    """Make step 3 (or `at`) of the next run raise KeyboardInterrupt (after the checkpoint at 2
    steps); returns the real `_train_step`, to put back."""
    real_step = Trainer._train_step

    def crash_at_step_3(self, step):
        if step == at:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_3)
    return real_step


def test_resume_after_an_error_equals_an_uninterrupted_run(tmp_path, base_model, parity, monkeypatch):
    Trainer(small_config(base_model), tmp_path / "full", progress=False).run()
    real_step = interrupt_at_step_3(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(small_config(base_model), tmp_path / "resumed", progress=False).run()
    # Step 2 ran after the checkpoint at 2 steps: its lines are dropped and redone on resume.
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 3
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    Trainer(small_config(base_model), tmp_path / "resumed", progress=False).run()
    full, resumed = read_run(tmp_path / "full"), read_run(tmp_path / "resumed")
    assert full[0] == resumed[0]
    pd.testing.assert_frame_equal(full[1], resumed[1])
    a = torch.load(tmp_path / "full" / "checkpoints" / "step_000004" / "optimizer.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "step_000004" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(a["state"][k]["exp_avg"], b["state"][k]["exp_avg"]) for k in a["state"])


def test_a_changed_config_does_not_resume_silently(tmp_path, base_model, parity):
    Trainer(small_config(base_model, steps=1), tmp_path / "run", progress=False).run()
    with pytest.raises(ConfigError, match="holds a run with another config"):
        Trainer(small_config(base_model, steps=1, seed=5), tmp_path / "run", progress=False).run()


def test_a_run_saved_before_a_field_existed_resumes(tmp_path, base_model, parity, monkeypatch):
    """A config field added later (at its default, which keeps the old behaviour) does not make
    a run directory of the previous version "another config": it resumes."""
    import yaml

    from clipbench.provenance import config_hash

    real_step = interrupt_at_step_3(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(small_config(base_model), run, progress=False).run()
    # What the previous version wrote: no optim.logprob_chunk_tokens, optim.gradient_checkpointing,
    # dtype or report_to, hashes without them.
    old = yaml.safe_load((run / "config.yaml").read_text())
    del old["optim"]["logprob_chunk_tokens"], old["optim"]["gradient_checkpointing"], old["dtype"]
    del old["report_to"]
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=True))
    checkpoint = run / "checkpoints" / "step_000002"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps({**state, "config_hash": config_hash(old)}))
    trainer_module.write_manifest(checkpoint)
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    Trainer(small_config(base_model), run, progress=False).run()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert list(artifacts.step_records_files(run)) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- precision and memory


def tiny_config(base_model, **overrides):
    """`small_config` with a smaller rollout (2 prompts x 4 samples of 16 tokens at most)."""
    rollout = {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16}
    return small_config(base_model, rollout=rollout, **overrides)


def test_a_bfloat16_run_resumes_as_if_uninterrupted(tmp_path, base_model, parity, monkeypatch):
    # bfloat16 autocast over float32 weights: checkpoints hold float32 weights and AdamW state, so
    # a resumed run continues bit for bit.
    config = tiny_config(base_model, dtype="bfloat16", steps=2, checkpoint_every=1)
    full = Trainer(config, tmp_path / "full", progress=False)
    full.run()
    assert compute_dtype(full.model) == torch.bfloat16
    real_step = interrupt_at_step_3(monkeypatch, at=1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "resumed", progress=False).run()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    Trainer(config, tmp_path / "resumed", progress=False).run()
    assert read_run(tmp_path / "full")[0] == read_run(tmp_path / "resumed")[0]
    pd.testing.assert_frame_equal(read_run(tmp_path / "full")[1], read_run(tmp_path / "resumed")[1])
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step_000002"
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert {t.dtype for s in optimizer["state"].values() for t in s.values() if t.dim()} == {torch.float32}
    assert json.loads((checkpoint / "model" / "clipbench_model.json").read_text())["dtype"] == "float32"
    a, _ = load_model(tmp_path / "full" / "final")
    b, _ = load_model(tmp_path / "resumed" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_a_bfloat16_reference_starts_at_kl_zero(tmp_path, base_model, parity, monkeypatch):
    # The KL reference computes in the policy's precision: at the first update the policy still is
    # the reference, so the KL is exactly 0 (a float32 reference would differ by bfloat16's noise).
    kls = []
    real = trainer_module.kl_to_reference

    def watch(logp, ref_logp, mask, tokens=None):
        kls.append(real(logp, ref_logp, mask, tokens).item())
        return real(logp, ref_logp, mask, tokens)

    monkeypatch.setattr(trainer_module, "kl_to_reference", watch)
    config = tiny_config(base_model, dtype="bfloat16", steps=1, kl_beta=0.1)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    assert kls[0] == 0.0 and min(kls[1:]) > 0
    assert compute_dtype(trainer.reference) == torch.bfloat16


def test_gradient_checkpointing_trains_exactly_as_without(tmp_path, base_model, parity, monkeypatch):
    # optim.gradient_checkpointing recomputes every decoder layer of each update's forward in
    # backward, on the packed attention: same metrics and records bit for bit (float32, CPU), and
    # the packed attention ran in every recomputation.
    from clipbench import attention

    calls = []
    real = attention.packed_sdpa_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "packed_sdpa_attention", counted)
    runs = {}
    for on in (False, True):
        calls.clear()
        optim = {"lr": 3e-3, "minibatches": 2, "epochs": 2, "gradient_checkpointing": on}
        config = tiny_config(base_model, steps=1, kl_beta=0.1, optim=optim)
        trainer = Trainer(config, tmp_path / str(on), progress=False)
        trainer.run()
        assert trainer.model.is_gradient_checkpointing == on
        runs[on] = read_run(tmp_path / str(on)), len(calls)
    layers = trainer.model.config.num_hidden_layers
    # Forwards: 1 old-log-prob, 2 reference, 4 updates; with checkpointing 4 recomputations more.
    assert runs[False][1] == 7 * layers and runs[True][1] == 11 * layers
    assert runs[False][0][0] == runs[True][0][0]
    pd.testing.assert_frame_equal(runs[False][0][1], runs[True][0][1])


def test_vllm_engine_loads_the_runs_dtype(tmp_path, base_model, monkeypatch):
    seen = {}
    monkeypatch.setattr(trainer_module, "VLLMEngine", lambda *args, **kwargs: seen.update(kwargs))
    for dtype in ("float32", "bfloat16"):
        rollout = {"prompts_per_step": 2, "samples_per_prompt": 4, "engine": "vllm"}
        trainer = Trainer(small_config(base_model, dtype=dtype, rollout=rollout), tmp_path / "run")
        trainer.tokenizer = None
        trainer._make_engine(base_model)
        assert seen["dtype"] == dtype


def test_vllm_engine_gets_the_sync_and_sleep_settings(tmp_path, base_model, monkeypatch):
    seen = {}
    monkeypatch.setattr(trainer_module, "VLLMEngine", lambda *args, **kwargs: seen.update(kwargs))
    rollout = {"prompts_per_step": 2, "samples_per_prompt": 4, "engine": "vllm"}
    trainer = Trainer(small_config(base_model, rollout=rollout), tmp_path / "run")
    trainer.tokenizer = None
    trainer._make_engine(base_model)
    assert (seen["weight_sync"], seen["sleep_level"]) == ("memory", None)  # the defaults
    rollout = {**rollout, "vllm_weight_sync": "disk"}
    trainer = Trainer(small_config(base_model, rollout=rollout), tmp_path / "run2")
    trainer.tokenizer = None
    trainer._make_engine(base_model)
    assert seen["weight_sync"] == "disk"
    # vLLM's sleep mode exists on CUDA only: refused before anything loads.
    with pytest.raises(
        ConfigError, match="rollout.vllm_sleep_level: vLLM's sleep mode needs rollout.engine=vllm on a CUDA"
    ):
        small_config(base_model, rollout={**rollout, "vllm_sleep_level": 1})
    with pytest.raises(ConfigError, match="rollout.vllm_sleep_level"):
        small_config(base_model, rollout={"vllm_sleep_level": 2}, device="cuda")


def test_the_engine_sleeps_through_the_updates_and_wakes_before_the_sync(
    tmp_path, base_model, parity, monkeypatch
):
    """The order the trainer drives an engine in, per step: generate, release (a vLLM with a sleep
    level frees its GPU memory), the update's forwards, resume, sync; every step."""
    events = []
    for name in ("generate", "release", "resume", "sync"):
        real = getattr(trainer_module.HFEngine, name)

        def spy(self, *args, real=real, name=name, **kwargs):
            events.append(name)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(trainer_module.HFEngine, name, spy)
    real_logprobs = trainer_module.token_logprobs

    def update_forward(*args, **kwargs):
        if not events or events[-1] != "forward":
            events.append("forward")
        return real_logprobs(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "token_logprobs", update_forward)
    Trainer(small_config(base_model, steps=2), tmp_path / "run", progress=False).run()
    assert events == ["generate", "release", "forward", "resume", "sync"] * 2


def digit_share(self, samples, answers):
    """A reward a random tiny model can learn in a few steps: the share of digits in the text."""
    rewards = [sum(c.isdigit() for c in t) / max(len(t), 1) for t in samples.texts]
    return torch.tensor(rewards, dtype=torch.float64), {"ok": len(answers)}


@pytest.mark.slow
def test_a_bfloat16_run_trains(tmp_path, base_model, monkeypatch):
    # 10 steps of the tiny model in bfloat16 (~30 s on 2 CPU cores): the reward rises.
    monkeypatch.setattr(Trainer, "_score", digit_share)
    Trainer(small_config(base_model, dtype="bfloat16", steps=10), tmp_path / "run", progress=False).run()
    rewards = [json.loads(line)["reward_mean"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert sum(rewards[-3:]) / 3 > 2 * sum(rewards[:3]) / 3 + 0.05, rewards


def test_non_finite_loss_stops_with_step_method_and_dump(tmp_path, base_model, parity, monkeypatch):
    config = small_config(base_model)
    real_loss = type(config.build_method()).loss

    def nan_loss(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        return type(out)(out.loss * float("nan"), out.seq_clip, out.seq_out, out.metrics)

    monkeypatch.setattr(type(config.build_method()), "loss", nan_loss)
    with pytest.raises(TrainingError, match=r"step 0, update 0, method fspo: non-finite loss \(nan\)"):
        Trainer(config, tmp_path / "run", progress=False).run()
    dumps = list((tmp_path / "run").glob("debug_step000000_update0.pt"))
    assert dumps and set(torch.load(dumps[0], weights_only=False)) >= {
        "logp",
        "old_logp",
        "advantages",
        "mask",
    }


KILL_SCRIPT = """
import sys, torch
from clipbench.trainer import Trainer
from clipbench.config import load_config
import json
Trainer._score = lambda self, samples, answers: (
    torch.tensor([float(len(t) % 2 == 0) for t in samples.texts], dtype=torch.float64), {"ok": len(answers)})
config = load_config(json.loads(sys.argv[1]))
Trainer(config, sys.argv[2], progress=False).run()
"""


@pytest.mark.slow
def test_sigkill_at_any_point_then_restart_matches(tmp_path, base_model):
    config = {
        "model": base_model, "method": "gspo", "method_params": {"eps_low": 0.01, "eps_high": 0.01}, "steps": 6,
        "data": {"n": 40}, "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24},
        "optim": {"lr": 3e-3, "minibatches": 2, "epochs": 1}, "checkpoint_every": 2,
    }  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", KILL_SCRIPT, json.dumps(config)]
    subprocess.run([*args, str(tmp_path / "full")], check=True, env=env, capture_output=True)
    victim = subprocess.Popen(
        [*args, str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    metrics = tmp_path / "killed" / "metrics.jsonl"
    while time.time() < deadline and victim.poll() is None:  # kill mid-run, after some progress
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "final" / "summary.json").exists(), "the run finished before the kill"
    subprocess.run([*args, str(tmp_path / "killed")], check=True, env=env, capture_output=True)
    full, resumed = read_run(tmp_path / "full"), read_run(tmp_path / "killed")
    assert full[0] == resumed[0]
    pd.testing.assert_frame_equal(full[1], resumed[1])


def test_outputs_are_traceable(tmp_path, base_model, parity):
    final = Trainer(small_config(base_model, steps=2), tmp_path / "run", progress=False).run()
    run = tmp_path / "run"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["config"]["method"] == "fspo" and prov["versions"]["torch"] and "commit" in prov
    # the kind of CPU: torch's float results depend on its instruction set (provenance.cpu_description)
    assert prov["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["cpu"]["model"]
    summary = json.loads((final / "summary.json").read_text())
    assert summary["hparams"] == {"c_low": 0.05, "c_high": 0.05, "drift": "none"}
    assert (final / "model.safetensors").exists() and not (final / "clip_records.parquet").exists()
    assert list(artifacts.step_records_files(run)) == [0, 1] and summary["records"] == len(
        artifacts.read_clip_records(run)
    )
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in (
        "reward_mean",
        "accuracy",
        "response_length_p90",
        "clip_frac",
        "clip_frac_low",
        "ppo_kl",
        "entropy",
        "grad_norm",
    ):
        assert key in line
    perf = json.loads((run / "perf.jsonl").read_text().splitlines()[0])
    assert {"generate_s", "score_s", "logprob_s", "update_s", "generate_tokens_per_s"} <= set(perf)


def test_records_carry_each_sequence_entropy_consistent_with_the_step_metric(tmp_path, base_model, parity):
    # The metric `entropy` is the token-weighted mean over the step's responses; the records hold
    # each sequence's own mean (the same in every update of the step, as it is the sampling policy's).
    Trainer(small_config(base_model, steps=2), tmp_path / "run", progress=False).run()
    metrics, records = read_run(tmp_path / "run")
    assert (records["entropy"] > 0).all()
    assert (records.groupby(["step", "seq"])["entropy"].nunique() == 1).all()
    for line in metrics.splitlines():
        row = json.loads(line)
        first = records[(records.step == row["step"]) & (records.epoch == 0)]  # every sequence once
        weighted = (first["entropy"] * first["length"]).sum() / first["length"].sum()
        assert weighted == pytest.approx(row["entropy"], rel=1e-5)


def expected_prefix_sums(call: dict) -> list[tuple[list[float], float]]:
    """Per row of one loss call: S_k on the records' ladder and S_L, recomputed from the l_t the
    rule saw (logp - old_logp in their dtype, as `prepare_batch` takes it) over the row's response
    tokens in order: the cumulative sum at the k-th token, NaN when L < k."""
    ratio = (call["logp"] - call["old_logp"]).double()
    out = []
    for i in range(ratio.shape[0]):
        running = torch.cumsum(ratio[i][call["mask"][i].bool()], 0).tolist()
        prefix = [running[k - 1] if k <= len(running) else math.nan for k in artifacts.RECORD_PREFIX_LADDER]
        out.append((prefix, running[-1] if running else 0.0))
    return out


@pytest.mark.parametrize("budget", [None, 90], ids=["whole", "micro-batches"])
def test_records_carry_the_prefix_sums_of_the_l_t_the_rule_saw(
    tmp_path, base_model, parity, monkeypatch, budget
):
    # Every record's S_8, S_16, ... is the cumulative sum of that update's l_t over the sequence's
    # first k response tokens (the prompt's positions before them do not count), NaN when it has
    # fewer; S_L = S. Split into micro-batches of different widths (optim.max_tokens_per_microbatch),
    # the rule's per-token outputs are joined (padded) and give the same.
    optim = {"lr": 3e-3, "minibatches": 2, "epochs": 2, "max_tokens_per_microbatch": budget}
    config = small_config(base_model, steps=1, optim=optim)
    calls = spy_on_loss(monkeypatch, config)
    Trainer(config, tmp_path / "run", progress=False).run()
    _, records = read_run(tmp_path / "run")
    if budget is not None:
        assert len(calls) > 4  # split: more loss calls than the 4 updates
    want = [row for call in calls for row in expected_prefix_sums(call)]  # the records' order: update, row
    got = records[list(artifacts.PREFIX_COLUMNS)].to_numpy()
    assert got.shape == (len(want), len(artifacts.PREFIX_COLUMNS))
    assert got == pytest.approx(np.array([prefix for prefix, _ in want]), rel=1e-12, abs=1e-15, nan_ok=True)
    assert records["S"].to_numpy() == pytest.approx([s for _, s in want], abs=1e-6)  # S_L = S (float32 sum)
    reached = records["length"] >= 16
    assert reached.any() and (records["length"] < 16).any()  # rungs 8 and 16 of <= 24-token responses
    assert records.loc[reached, "S_16"].notna().all() and records.loc[~reached, "S_16"].isna().all()
    assert records[records["update"] == 0]["S_8"].dropna().eq(0).all()  # on policy: l_t = 0
    assert (records[records["update"] > 0]["S_8"].dropna() != 0).mean() > 0.9


def test_clip_records_prefix_sums_by_hand_across_micro_batches():
    # Two micro-batches of different widths, as `_update` joins their LossOutputs. Micro-batch A
    # (width 12): row 0 has 2 prompt positions, then 9 response tokens with l_t = 0.25 -> S_8 = 2,
    # no S_16; row 1 has 7 tokens -> no rung. Micro-batch B (width 20): 3 prompt positions, then 17
    # tokens with l_t = 0.125 t (t = 1 .. 17) -> S_8 = 0.125 * 36 = 4.5, S_16 = 0.125 * 136 = 17.
    # Values off the mask are NaN in logp (they must not leak).
    rule = get_method("grpo")
    mask_a = torch.zeros(2, 12, dtype=torch.bool)
    mask_a[0, 2:11] = True
    mask_a[1, 0:7] = True
    old_a = torch.zeros(2, 12)
    logp_a = torch.where(mask_a, torch.full((2, 12), 0.25), torch.full((2, 12), math.nan))
    mask_b = torch.zeros(1, 20, dtype=torch.bool)
    mask_b[0, 3:20] = True
    old_b = torch.zeros(1, 20)
    logp_b = torch.full((1, 20), math.nan)
    logp_b[0, 3:20] = 0.125 * torch.arange(1, 18)
    parts = [
        rule.loss(logp, old, torch.ones(len(logp)), mask)
        for logp, old, mask in ((logp_a, old_a, mask_a), (logp_b, old_b, mask_b))
    ]
    out = combine_outputs(parts)
    assert out.log_ratio.shape == (3, 20) and out.mask.shape == (3, 20)
    rows = trainer_module._clip_records(
        0, 1, 0, 0, [5, 2, 7], out, torch.ones(3), torch.zeros(8), torch.zeros(8)
    )
    assert [list(r)[-len(artifacts.PREFIX_COLUMNS) :] for r in rows] == [list(artifacts.PREFIX_COLUMNS)] * 3
    assert [r["length"] for r in rows] == [9, 7, 17]
    assert rows[0]["S_8"] == 2.0 and math.isnan(rows[0]["S_16"])
    assert all(math.isnan(rows[1][c]) for c in artifacts.PREFIX_COLUMNS)
    assert (rows[2]["S_8"], rows[2]["S_16"]) == (4.5, 17.0) and math.isnan(rows[2]["S_32"])
    assert rows[2]["S"] == pytest.approx(0.125 * 153)  # S = S_17: the whole response
    artifacts.clip_records_frame(rows)  # the records' schema, exactly


def test_real_verifier_rewards_on_the_tiny_model(tmp_path, base_model):
    # Without the parity reward: a random model earns nothing, so advantages and gradients are 0,
    # and the verifier's statuses are recorded.
    Trainer(small_config(base_model, steps=1), tmp_path / "run", progress=False).run()
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["reward_mean"] == 0.0 and line["grad_norm"] == 0.0
    assert sum(v for k, v in line.items() if k.startswith("verifier_")) == 16


# --------------------------------------------------------------------------- rewards, advantages, KL
#
# These tests watch the real trainer through spies that call the real function and keep a copy of
# what passed through (the method's loss, the log-prob forward, the minibatch collation).


def spy_on_loss(monkeypatch, config) -> list[dict]:
    """Every call of the method's real `loss`, in update order: its inputs and the loss it returned."""
    cls = type(config.build_method())
    real_loss = cls.loss
    calls = []

    def recording(self, logp, old_logp, advantages, mask, totals=None):
        out = real_loss(self, logp, old_logp, advantages, mask, totals=totals)
        calls.append(
            {
                "logp": logp.detach().clone(),
                "old_logp": old_logp.detach().clone(),
                "mask": mask.clone(),
                "loss": out.loss.item(),
                "totals": totals,
            }
        )
        return out

    monkeypatch.setattr(cls, "loss", recording)
    return calls


def test_real_score_rewards_only_a_verified_answer_and_counts_timeouts(tmp_path, base_model):
    # The trainer's own `_score` with the real math-verify verifier (worker pool, default 5 s limit)
    # and the synthetic set's strict extraction (\boxed{} only, no fallbacks).
    pytest.importorskip("math_verify", reason="the verifier needs math-verify (the 'eval' extra)")
    trainer = Trainer(small_config(base_model), tmp_path / "run", progress=False)
    texts = [
        "3+5=8\n8-5=3\n\\boxed{3}",  # correct
        "3+5=8\n\\boxed{8}",  # wrong
        "\\boxed{9^{9^{9^{9}}}}",  # math-verify cannot finish: killed at the time limit
        "so the answer is 3",  # right number, but no \boxed{}: this set rewards only the box
    ]
    answers = ["3", "3", "1", "3"]
    samples = Samples(
        prompt_ids=[[1]] * len(texts), completion_ids=[[2]] * len(texts), texts=texts, finished=[True] * 4
    )
    rewards, statuses = trainer._score(samples, answers)
    assert rewards.dtype == torch.float64
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert statuses == {"ok": 2, "no_answer": 1, "timeout": 1, "error": 0}


def test_each_record_carries_the_advantage_of_its_own_group(tmp_path, base_model, parity, monkeypatch):
    # Sequence `seq` of a step is sample seq % G of prompt seq // G: recompute every group's
    # advantages from its rewards and find each one on its own sequence's records.
    seen = {}
    reward = Trainer._score  # the parity reward

    def remember(self, samples, answers):
        seen["texts"], seen["answers"] = list(samples.texts), list(answers)
        return reward(self, samples, answers)

    monkeypatch.setattr(Trainer, "_score", remember)
    config = small_config(base_model, steps=1)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    p, g = config.rollout.prompts_per_step, config.rollout.samples_per_prompt
    problems, _ = training_prompts(config.data, trainer.tokenizer)
    step_prompts = prompt_indices(config.seed, 0, p, len(problems))
    assert seen["answers"] == [problems[i].answer for i in step_prompts for _ in range(g)]

    _, records = read_run(tmp_path / "run")
    assert sorted(records["seq"].unique()) == list(range(p * g))
    rewards = records.groupby("seq")["reward"].agg(["nunique", "first"])
    assert (rewards["nunique"] == 1).all()  # one reward per sequence, in every update
    assert rewards["first"].tolist() == [float(len(t) % 2 == 0) for t in seen["texts"]]
    expected = compute_advantages(
        torch.tensor(rewards["first"].tolist()).view(p, g), config.advantage.estimator, config.advantage.eps
    ).view(-1)
    assert len(set(expected.tolist())) > 2  # mixed groups: a misplaced advantage shows
    assert records["advantage"].to_numpy() == pytest.approx(
        expected.numpy()[records["seq"].to_numpy()], rel=1e-6, abs=1e-7
    )


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token, from log(pi_ref / pi) at a token
    sampled from pi: r - 1 - log r with r = pi_ref / pi (>= 0, 0 only at r = 1)."""
    return log_ratio.exp() - 1 - log_ratio


def test_kl_to_reference_is_the_token_mean_of_k3_over_the_response():
    # Two responses; the masked-out positions (prompt, padding) carry large differences that
    # must not count. Row 0: r = 2, 1/2, 1; row 1: r = 1 -> mean of k3 over the 4 response tokens.
    ln2 = math.log(2)
    logp = torch.tensor([[0.0, 0.0, 0.0, 7.0], [-1.0, 0.0, 0.0, 0.0]])
    ref_logp = torch.tensor([[ln2, -ln2, 0.0, -7.0], [-1.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    kl = trainer_module.kl_to_reference(logp, ref_logp, mask)
    assert kl.item() == pytest.approx(((1 - ln2) + (ln2 - 0.5) + 0.0 + 0.0) / 4)
    assert trainer_module.kl_to_reference(logp, logp, mask).item() == 0.0  # the policy is the reference


def test_kl_penalty_to_the_reference_model(tmp_path, base_model, parity, monkeypatch):
    # Hand values of the estimator: r = 2 -> 1 - ln 2; r = 1/2 -> ln 2 - 1/2; r = 1 -> 0.
    ln2 = math.log(2)
    assert k3(torch.tensor([ln2, -ln2, 0.0])).tolist() == pytest.approx([1 - ln2, ln2 - 0.5, 0.0])

    beta = 0.5
    config = small_config(base_model, steps=1, kl_beta=beta)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    ref_logps = []
    real_logprobs = trainer_module.token_logprobs

    def watch_reference(model, batch, temperature, with_entropy=False, chunk_tokens=None):
        out = real_logprobs(model, batch, temperature, with_entropy=with_entropy, chunk_tokens=chunk_tokens)
        if model is trainer.reference:
            ref_logps.append(out[0].clone())
        return out

    monkeypatch.setattr(trainer_module, "token_logprobs", watch_reference)
    calls = spy_on_loss(monkeypatch, config)
    trainer.run()

    # The reference is a frozen copy of the base model, not the policy.
    m = config.optim.minibatches
    assert trainer.reference is not None, "kl_beta > 0 but no reference model was loaded"
    assert trainer.reference is not trainer.model, "the reference must be a copy, not the policy"
    assert len(ref_logps) == m and len(calls) == m * config.optim.epochs
    base, _ = load_model(base_model)
    for (name, ref), (_, b) in zip(
        trainer.reference.named_parameters(), base.named_parameters(), strict=True
    ):
        assert not ref.requires_grad and torch.equal(ref, b), name
    # Per update: the token mean of k3 of the reference's log-probs against the policy's.
    kls = []
    for update, call in enumerate(calls):
        mask = call["mask"]
        kls.append(float(k3(ref_logps[update % m][mask] - call["logp"][mask]).mean()))
    torch.testing.assert_close(ref_logps[0][calls[0]["mask"]], calls[0]["logp"][calls[0]["mask"]])
    assert kls[0] == pytest.approx(0.0, abs=1e-9)  # update 0: the policy still is the base model
    assert min(kls[1:]) > 1e-5  # later ones have moved away from it: a positive KL
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["kl_ref"] == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    # The penalty is added to the rule's loss: loss = rule loss + beta * KL, in every update.
    total = [call["loss"] + beta * kl for call, kl in zip(calls, kls, strict=True)]
    assert line["loss"] == pytest.approx(sum(total) / len(total), rel=1e-5, abs=1e-7)


def test_old_logprobs_are_the_sampling_policys_so_only_the_first_update_is_on_policy(
    tmp_path, base_model, parity, monkeypatch
):
    # The rule of the module docstring ("Why M * E > 1"): old log-probs are those of the weights
    # that sampled, at the sampling temperature, for every minibatch and epoch (the first
    # minibatch's are its first update's own, detached; the others' are computed before any
    # update). So update 0 runs at ratio exactly 1 and every later one is off-policy; with
    # M = E = 1 no rule could ever clip, and the config refuses it.
    temperature = 0.7
    rollout = {
        "prompts_per_step": 4,
        "samples_per_prompt": 4,
        "max_new_tokens": 24,
        "temperature": temperature,
    }
    config = small_config(base_model, steps=1, rollout=rollout)
    batches = []
    real_collate = trainer_module.collate

    def watch_collate(*args, **kwargs):
        batches.append(real_collate(*args, **kwargs))
        return batches[-1]

    monkeypatch.setattr(trainer_module, "collate", watch_collate)
    calls = spy_on_loss(monkeypatch, config)
    Trainer(config, tmp_path / "run", progress=False).run()

    m = config.optim.minibatches
    assert len(batches) == m and len(calls) == m * config.optim.epochs
    sampler, _ = load_model(base_model)  # the weights that sampled step 0
    sampler.eval()
    with torch.no_grad():
        expected = [trainer_module.token_logprobs(sampler, b, temperature)[0] for b in batches]
    assert torch.equal(calls[0]["logp"], calls[0]["old_logp"])  # ratio exactly 1
    for update, call in enumerate(calls):
        mask = call["mask"]
        torch.testing.assert_close(call["old_logp"][mask], expected[update % m][mask], rtol=0, atol=1e-5)
        if update > 0:
            assert (call["logp"][mask] - call["old_logp"][mask]).abs().max() > 1e-4, update
    with pytest.raises(ConfigError, match=r"optim.minibatches \* optim.epochs: must be > 1"):
        small_config(base_model, optim={"minibatches": 1, "epochs": 1})
