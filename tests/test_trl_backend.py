"""The TRL backend (clipbench/integrations/trl.py): same loss, same gradient as the native trainer.

One fixed rollout batch (8 rows: prompts of different lengths, completions of 0 to 7 tokens,
advantages of both signs, old log-probs off by N(-0.01, 0.15^2) per token, NaN off the mask), a
float64 copy of the tiny base model, for every registered rule (and the variants whose totals or
statistics matter): the native trainer's `_update` on the batch as one minibatch, and TRL's own
`training_step` (no generation: TRL's `_generate_and_score_completions` returns the fixed batch)
over the two micro-batches of one optimizer step (gradient_accumulation_steps = 2, TRL's shuffled
halves of the batch), must give the same loss and the same parameter gradients to 1e-6 (float64),
the same update metrics and the same clip records. Offline: no hub access."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl_batch import (  # noqa: E402
    COMPLETION_LENGTHS,
    DATASET_ROWS,
    SCORES,
    fixed_batch,
    fixed_generation,
    native_update,
    trl_trainer,
    trl_update,
)

from clipbench import artifacts, methods  # noqa: E402
from clipbench.integrations import trl as backend  # noqa: E402
from clipbench.models import load_model  # noqa: E402

# Every registered rule at its defaults, plus the variants whose minibatch totals or statistics
# matter (FSPO's drift, the fitted power band), a band wide enough to keep some GSPO sequences
# inside, the token rules' other aggregations, and one with the KL penalty (TRL's beta).
CASES = [(name, {}, 0.0) for name in methods.available_methods()] + [
    ("fspo", {"drift": "kl", "c_low": 0.1, "c_high": 0.1}, 0.0),
    ("powerband", {"c_low": 0.1, "c_high": 0.1}, 0.0),
    ("gspo", {"eps_low": 0.05, "eps_high": 0.05}, 0.0),
    ("ppo", {"aggregation": "seq_mean_token_sum"}, 0.0),
    ("grpo", {"aggregation": "seq_mean_token_sum_norm", "norm_tokens": 16}, 0.0),
    ("grpo", {}, 0.5),
]


def case_id(case) -> str:
    name, params, beta = case
    return name + "".join(f"-{k}={v}" for k, v in params.items()) + (f"-beta={beta}" if beta else "")


@pytest.fixture(scope="module")
def model64(base_model):
    model, tokenizer = load_model(base_model, dtype=torch.float64)
    return model, tokenizer


@pytest.fixture(scope="module")
def fixed(model64):
    return fixed_batch(*model64)


@pytest.fixture
def no_generation(monkeypatch, fixed):
    """TRL's generation replaced by the fixed batch, scored by the trainer's own reward path."""
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", fixed_generation(fixed))


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_same_loss_same_gradient_as_the_native_trainer(
    case, base_model, model64, fixed, no_generation, tmp_path
):
    name, params, beta = case
    model, tokenizer = model64
    rule = methods.get_method(name, **params)
    native_out, native_metrics, native_grads, native_records = native_update(
        base_model, copy.deepcopy(model), tokenizer, fixed, name, params, beta, tmp_path
    )
    trainer = trl_trainer(copy.deepcopy(model), tokenizer, rule, beta, tmp_path)
    loss, grads, metrics, records = trl_update(trainer, DATASET_ROWS)

    # The case is worth testing: the rule clips some units (SAPO's soft gate at its defaults: none).
    assert 0 < native_metrics["clip_frac"] < 1 or (name, params) == ("sapo", {}), native_metrics
    assert loss == pytest.approx(native_metrics["loss"], rel=1e-6, abs=1e-12)
    assert grads.keys() == native_grads.keys()
    total = sum(float(g.abs().sum()) for g in native_grads.values())
    assert total > 0 and all(torch.isfinite(g).all() for g in grads.values())
    for key, want in native_grads.items():
        torch.testing.assert_close(grads[key], want, rtol=1e-6, atol=1e-12, msg=key)
    for key, want in native_metrics.items():
        assert metrics[key] == pytest.approx(want, rel=1e-6, abs=1e-12), key
    # The clip records: one per row, matched by the row's place in the rollout batch.
    got = sorted(records, key=lambda r: r["seq"])
    assert [r["seq"] for r in got] == list(range(len(COMPLETION_LENGTHS)))
    for mine, theirs in zip(got, native_records, strict=True):
        assert (mine["step"], mine["update"], mine["epoch"], mine["minibatch"]) == (0, 0, 0, 0)
        assert mine["length"] == theirs["length"] == COMPLETION_LENGTHS[mine["seq"]]
        assert mine["reward"] == SCORES[mine["seq"]]
        assert mine["entropy"] == pytest.approx(float(fixed["entropy"][mine["seq"]]), rel=1e-9)
        for column in ("S", "advantage", "seq_clip", "seq_out", *artifacts.PREFIX_COLUMNS):
            assert mine[column] == pytest.approx(theirs[column], rel=1e-6, abs=1e-12, nan_ok=True), column


def test_the_backends_records_carry_the_same_prefix_sums():
    """The same per-token l_t in TRL's layout (completion tokens from position 0) and the native
    trainer's (after the prompt's positions): `microbatch_records` and the native `_clip_records`
    give the same S_k, the cumulative sums over each sequence's first k tokens (the fixed batch
    above is shorter than the first rung, 8)."""
    from clipbench.trainer import _clip_records

    lengths, prompts = [20, 7, 9], [3, 5, 2]
    g = torch.Generator().manual_seed(0)
    ratios = [0.1 * torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    layouts = {}
    for name, starts in (("trl", [0, 0, 0]), ("native", prompts)):
        width = max(s + n for s, n in zip(starts, lengths, strict=True))
        logp = torch.full((3, width), float("nan"), dtype=torch.float64)
        mask = torch.zeros(3, width, dtype=torch.bool)
        for i, (start, ratio) in enumerate(zip(starts, ratios, strict=True)):
            logp[i, start : start + len(ratio)] = ratio
            mask[i, start : start + len(ratio)] = True
        layouts[name] = (logp, torch.zeros_like(logp), mask)
    advantages = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    rule = methods.get_method("gspo")
    trl_out = rule.loss(*layouts["trl"][:2], advantages, layouts["trl"][2])
    native_out = rule.loss(*layouts["native"][:2], advantages, layouts["native"][2])
    inputs = {
        backend.ROW_KEY: torch.tensor([0, 1, 2]),
        "advantages": advantages,
        backend.REWARD_KEY: torch.tensor([1.0, 0.0, 1.0]),
        backend.ENTROPY_KEY: torch.zeros(3),
    }
    mine = backend.microbatch_records(backend.schedule_position(1, 2, 1, 1), inputs, trl_out)
    theirs = _clip_records(
        0, 1, 0, 1, [0, 1, 2], native_out, advantages, torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3)
    )
    artifacts.clip_records_frame(mine)  # the records' schema, exactly
    for row, other, ratio in zip(mine, theirs, ratios, strict=True):
        for k, column in zip(artifacts.RECORD_PREFIX_LADDER, artifacts.PREFIX_COLUMNS, strict=True):
            want = float(ratio[:k].sum()) if k <= len(ratio) else float("nan")
            assert row[column] == pytest.approx(want, rel=1e-12, abs=1e-15, nan_ok=True), (row["seq"], k)
            assert row[column] == pytest.approx(other[column], rel=1e-12, abs=1e-15, nan_ok=True)
    assert not math.isnan(mine[0]["S_16"]) and math.isnan(mine[1]["S_8"]) and math.isnan(mine[2]["S_16"])


def test_trls_fused_log_probs_give_the_same_update_to_float32_precision(
    model64, fixed, no_generation, tmp_path
):
    """The production path (TRL's fused LM head, float32 accumulators, TRL's positions) on the
    same float64 batch: the same loss and gradient to its float32 precision."""
    model, tokenizer = model64
    rule = methods.get_method("grpo")
    exact = trl_update(trl_trainer(copy.deepcopy(model), tokenizer, rule, 0.0, tmp_path / "a"), DATASET_ROWS)
    trainer = trl_trainer(copy.deepcopy(model), tokenizer, rule, 0.0, tmp_path / "b")
    trainer.fused_logprobs = True
    fused = trl_update(trainer, DATASET_ROWS)
    assert fused[0] == pytest.approx(exact[0], rel=5e-6)
    want = torch.cat([g.flatten() for g in exact[1].values()])
    got = torch.cat([fused[1][k].flatten() for k in exact[1]])
    assert 0 < float((got - want).norm() / want.norm()) < 5e-6  # not float64's 1e-16: TRL's kernel is float32


def test_a_step_writes_its_rank_tagged_records_and_metrics_line(model64, fixed, no_generation, tmp_path):
    """Both updates of an RL step (2 epochs x 1 minibatch of 2 micro-batches): after the last one,
    rank 0's records file and the step's metrics.jsonl line; clipbench's advantages replace TRL's."""
    model, tokenizer = model64
    trainer = trl_trainer(copy.deepcopy(model), tokenizer, methods.get_method("ppo"), 0.0, tmp_path)
    trainer.run_dir, trainer.advantage = tmp_path / "run", ("grpo", 1e-6)
    trl_update(trainer, DATASET_ROWS)
    assert not (tmp_path / "run").exists()  # mid-step: nothing written yet
    trl_update(trainer, DATASET_ROWS)
    files = artifacts.step_records_files(tmp_path / "run")
    assert {step: [f.name for f in parts] for step, parts in files.items()} == {
        0: ["step_000000.rank0.parquet"]
    }
    records = artifacts.read_clip_records(tmp_path / "run")
    rows = len(COMPLETION_LENGTHS)
    assert (
        records["update"].tolist() == [0] * rows + [1] * rows
        and records.epoch.tolist() == [0] * rows + [1] * rows
    )
    assert records.seq.tolist() == list(range(rows)) * 2 and (records.minibatch == 0).all()
    assert records.length.tolist() == COMPLETION_LENGTHS * 2
    # GRPO's advantages of the scores, by hand: each group [1, 0, 0, 1] / [1, 1, 0, 0] has mean 1/2 and
    # unbiased std sqrt(1/3), so A = +-(1/2) / (sqrt(1/3) + 1e-6).
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert records.advantage.tolist() == pytest.approx([a if s else -a for s in SCORES] * 2, rel=1e-6)
    assert (
        records["S"][records["length"] > 0] != 0
    ).all()  # the fixed old log-probs are off by N(-0.01, 0.15^2)
    (line,) = [json.loads(x) for x in (tmp_path / "run" / artifacts.METRICS_FILE).read_text().splitlines()]
    assert line["step"] == 0 and line["updates"] == 2
    assert line["reward_mean"] == line["accuracy"] == 0.5
    assert line["response_length_mean"] == sum(COMPLETION_LENGTHS) / rows and line["response_length_max"] == 7
    assert line["truncated_frac"] == 1.0  # no completion holds EOS
    tokens = sum(COMPLETION_LENGTHS)
    weights = torch.tensor(COMPLETION_LENGTHS, dtype=torch.float64)
    assert line["entropy"] == pytest.approx(float((fixed["entropy"] * weights).sum()) / tokens, rel=1e-9)
    for key in ("loss", "grad_norm", "clip_frac", "clip_frac_low", "clip_frac_high", "out_frac", "ppo_kl"):
        assert math.isfinite(line[key]), key


def test_schedule_positions_by_hand():
    # M = 4 slices per rollout batch, 2 epochs, 2 micro-batches per optimizer step: 2 minibatches.
    positions = [backend.schedule_position(i, 4, 2, 2) for i in range(9)]
    assert [(p.step, p.update, p.epoch, p.minibatch, p.slot, p.first) for p in positions] == [
        (0, 0, 0, 0, 0, True),
        (0, 0, 0, 0, 1, False),
        (0, 1, 0, 1, 2, True),
        (0, 1, 0, 1, 3, False),
        (0, 2, 1, 0, 0, True),
        (0, 2, 1, 0, 1, False),
        (0, 3, 1, 1, 2, True),
        (0, 3, 1, 1, 3, False),
        (1, 0, 0, 0, 0, True),
    ]
    assert positions[3].window == (2, 3) and positions[4].window == (0, 1)
    with pytest.raises(
        ValueError, match="steps_per_generation=3 must be a multiple of gradient_accumulation_steps=2"
    ):
        backend.schedule_position(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_entropy_quantile", 0.2),
        ("off_policy_mask_threshold", 0.5),
        ("delta", 2.0),
        ("entropy_coef", 0.01),
    ],
)
def test_trl_options_that_change_the_loss_are_refused(field, value, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: value})
    with pytest.raises(ValueError, match=rf"GRPOConfig.{field}={value!r}: .*the rule's alone"):
        backend.check_arguments(args)
    backend.check_arguments(GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))


# ---------------------------------------------------------------------------- resume


def resumable_run(tmp_path: Path, base_model: str, checkpoints: dict[int, bool], steps_written: int) -> tuple:
    """A run directory as an interrupted TRL run of `config` leaves it (minibatches 2 x epochs 1:
    2 optimizer steps per RL step): `checkpoints` {optimizer steps: with a manifest?}, metrics lines
    and rank 0's and 1's records of steps 0..steps_written-1, a stale final/."""
    from clipbench.provenance import atomic_write_text
    from clipbench.trainer import write_manifest

    config = {
        "model": base_model, "method": "grpo", "backend": "trl", "processes": 2, "steps": 6,
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4}, "optim": {"minibatches": 2, "epochs": 1},
    }  # fmt: skip
    config = backend_config(config)
    run = tmp_path / "run"
    run.mkdir()
    import yaml

    atomic_write_text(run / "config.yaml", yaml.safe_dump(config, sort_keys=True))
    for updates, complete in checkpoints.items():
        folder = run / backend.TRL_DIR / f"checkpoint-{updates}"
        folder.mkdir(parents=True)
        (folder / "optimizer.pt").write_bytes(b"state " * updates)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": updates}))
        if complete:
            write_manifest(folder)
    frame = artifacts.clip_records_frame([])
    for step in range(steps_written):
        for rank in (0, 1):
            artifacts.write_step_records(run, step, frame, rank=rank)
    lines = "".join(json.dumps({"step": step}) + "\n" for step in range(steps_written))
    (run / artifacts.METRICS_FILE).write_text(lines + '{"step": 9, "cut by a ki')
    (run / artifacts.FINAL_DIR).mkdir()
    return run, config


def backend_config(config: dict) -> dict:
    from clipbench.config import load_config

    return load_config(config).to_dict()


def test_an_interrupted_run_resumes_from_its_newest_intact_checkpoint(base_model, tmp_path):
    # Checkpoints after RL steps 1, 2 and 3 (2, 4, 6 optimizer steps): the newest cut before its
    # manifest, the one before damaged since; steps 0-4 wrote records and metrics before the kill.
    run, config = resumable_run(tmp_path, base_model, {2: True, 4: True, 6: False}, steps_written=5)
    (run / backend.TRL_DIR / "checkpoint-4" / "optimizer.pt").write_bytes(b"damaged")
    assert backend.prepare_run_dir(run, config) == 1
    assert list(backend.checkpoint_dirs(run)) == [2]  # the damaged and the incomplete ones are gone
    assert backend.resume_checkpoint(run) == run / backend.TRL_DIR / "checkpoint-2"
    assert list(artifacts.step_records_files(run)) == [0]  # both ranks' files of steps >= 1 dropped
    assert [f.name for f in artifacts.step_records_files(run)[0]] == [
        "step_000000.rank0.parquet",
        "step_000000.rank1.parquet",
    ]
    assert (run / artifacts.METRICS_FILE).read_text() == '{"step": 0}\n'
    assert not (run / artifacts.FINAL_DIR).exists()
    # TRL's micro-batch counter continues from the checkpoint's optimizer steps (x accumulation).
    assert backend.resume_micro_step(backend.resume_checkpoint(run), 1) == 2
    assert backend.resume_micro_step(backend.resume_checkpoint(run), 3) == 6
    assert backend.resume_micro_step(None, 1) == 0


def test_the_resume_point_is_the_newest_intact_checkpoint_at_a_steps_end():
    folders = {n: Path(f"checkpoint-{n}") for n in (2, 4, 5, 6, 8)}
    damaged = {Path("checkpoint-8")}
    # 2 optimizer steps per RL step: 8 is damaged, 5 is off a step's end, so 6.
    assert backend.resume_point(folders, 2, lambda path: path not in damaged) == 6
    assert backend.resume_point(folders, 4, lambda path: path not in damaged) == 4
    assert backend.resume_point(folders, 2, lambda path: False) is None
    assert backend.resume_point({}, 2, lambda path: True) is None
    assert [
        backend.checkpoint_updates(Path(p))
        for p in ("checkpoint-12", "checkpoint-", "other-3", "checkpoint-x")
    ] == [
        12,
        None,
        None,
        None,
    ]


def test_without_an_intact_checkpoint_the_run_starts_over(base_model, tmp_path):
    # Only a checkpoint cut before its manifest, and one off an RL step's end (3 optimizer steps).
    run, config = resumable_run(tmp_path, base_model, {3: True, 4: False}, steps_written=2)
    assert backend.prepare_run_dir(run, config) == 0
    assert not (run / backend.TRL_DIR).exists() and not (run / artifacts.RECORDS_DIR).exists()
    assert not (run / artifacts.METRICS_FILE).exists() and backend.resume_checkpoint(run) is None
    assert backend.prepare_run_dir(tmp_path / "new", config) == 0  # a new folder: nothing to do


def test_a_finished_run_or_another_configs_run_is_refused(base_model, tmp_path):
    from clipbench.errors import RunDirError

    run, config = resumable_run(tmp_path, base_model, {2: True}, steps_written=1)
    with pytest.raises(RunDirError, match="holds a run with another config"):
        backend.prepare_run_dir(run, {**config, "seed": 1})
    (run / artifacts.FINAL_DIR / artifacts.FINAL_SUMMARY_FILE).write_text("{}")
    with pytest.raises(RunDirError, match="holds a finished run"):
        backend.prepare_run_dir(run, config)


def test_checkpoint_every_and_keep_checkpoints_are_trls_save_steps_and_limit(base_model, tmp_path):
    from clipbench.config import load_config

    config = {
        "model": base_model, "method": "grpo", "backend": "trl", "steps": 6, "checkpoint_every": 3, "keep_checkpoints": 3,
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4}, "optim": {"minibatches": 2, "epochs": 2},
    }  # fmt: skip
    args = backend.trl_arguments(load_config(config), tmp_path)
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 3 * 2 * 2, 3)
    assert args.max_steps == 6 * 2 * 2 and not args.save_only_model  # optimizer and RNG states too


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(base_model, tmp_path, processes):
    """tests/trl_smoke_run.py, 5 RL steps, a checkpoint every 2, on one process and on two (started as a
    study's train job starts them: accelerate launch with workflows/accelerate/cpu.yaml, gloo): killed
    once TRL has saved the checkpoint after step 4 but before its manifest, rerun, it resumes from the
    one after step 2 (steps 0-1's records, every rank's, are not rewritten) and ends with the
    uninterrupted run's metrics, records and final weights, byte for byte."""
    from clipbench import launch

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]), "OMP_NUM_THREADS": "1"}
    launcher = (
        []
        if processes == 1
        else launch.launch_words(2, str(here.parent / "workflows" / "accelerate" / "cpu.yaml"))[1:]
    )
    command = [sys.executable, *launcher, str(here / "trl_smoke_run.py"), base_model]
    options = ["grpo", "--processes", str(processes), "--steps", "5", "--checkpoint-every", "2"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(
        [*command, str(full), *options], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cut = subprocess.run(
        [*command, str(killed), *options, "--kill-before-manifest", "4"],
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert cut.returncode == (-9 if processes == 1 else 1)  # SIGKILL; accelerate's launcher: 1
    assert (
        list(backend.checkpoint_dirs(killed)) == [4, 8]
        and backend.resume_checkpoint(killed).name == "checkpoint-4"
    )
    assert list(artifacts.step_records_files(killed)) == [0, 1, 2, 3]
    kept = {
        path: path.stat().st_mtime_ns
        for step in (0, 1)
        for path in artifacts.step_records_files(killed)[step]
    }
    done = subprocess.run(
        [*command, str(killed), *options], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(kept) == 2 * processes  # every rank's files of steps 0 and 1
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # resumed: steps 0-1 not redone
    assert (killed / artifacts.METRICS_FILE).read_bytes() == (full / artifacts.METRICS_FILE).read_bytes()
    pd.testing.assert_frame_equal(artifacts.read_clip_records(killed), artifacts.read_clip_records(full))
    weights = "final/model.safetensors"
    assert (killed / weights).read_bytes() == (full / weights).read_bytes()
    assert list(backend.checkpoint_dirs(killed)) == [8, 10]  # saved again, the newest two kept


TWO_PROCESS_RULES = ["grpo", "ppo", 'fspo:{"drift": "kl", "c_low": 0.1, "c_high": 0.1}', "seq_ppo", "cispo"]


@pytest.mark.slow
def test_same_loss_same_gradient_on_two_processes(base_model, tmp_path):
    """tests/trl_two_process.py under torchrun (2 processes, gloo, DDP): the processes' halves of
    the batch hold different numbers of tokens and sequences; the loss and the synchronised
    gradients equal the native trainer's on the whole batch (global totals, loss x 2 against DDP's
    average)."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        str(here / "trl_two_process.py"),
        base_model,
        str(tmp_path),
    ]
    result = subprocess.run(command + TWO_PROCESS_RULES, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    done = [line[3:].rsplit(" ", 2)[0] for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert done == TWO_PROCESS_RULES, result.stdout


@pytest.mark.slow
def test_two_methods_train_on_two_processes_and_aggregate_like_native_runs(base_model, tmp_path):
    """The smoke study's train settings with backend trl on 2 processes, started as a study's train
    job starts them (`accelerate launch --config_file workflows/accelerate/cpu.yaml --num_processes 2`,
    clipbench.launch: torchrun underneath, gloo), two methods for 2 steps each
    (tests/trl_smoke_run.py): the run records accelerate's MULTI_CPU on 2 processes, every step has a
    non-empty records file per rank, S is not 0 after the first update, and `clipbench aggregate` and
    `report` read the runs as native ones."""

    from clipbench import cli, launch

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]), "OMP_NUM_THREADS": "1"}
    words = launch.launch_words(2, str(here.parent / "workflows" / "accelerate" / "cpu.yaml"))
    assert words[0] == "python"  # the job's interpreter: here, this one
    runs = {method: tmp_path / "runs" / method / "seed0" for method in ("grpo", "fspo")}
    for method, run in runs.items():
        command = [sys.executable, *words[1:], str(here / "trl_smoke_run.py"), base_model, str(run), method]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert result.stdout.count("process group after the run: False") == 2, result.stdout[-3000:]
        recorded = json.loads((run / "provenance.json").read_text())["backend"]
        assert (recorded["processes"], recorded["distributed_type"], recorded["mixed_precision"]) == (
            2,
            "MULTI_CPU",
            "no",
        )
        for step in (0, 1):
            for rank in (0, 1):
                path = artifacts.step_records_path(run, step, rank)
                assert path.is_file() and len(pd.read_parquet(path)) > 0, path
        records = artifacts.read_clip_records(run)
        assert len(records) == 2 * 16  # steps x P x G rows, each in one update per epoch (1 epoch)
        assert sorted(records[records["step"] == 0]["seq"].unique()) == list(range(16))  # both ranks' rows
        assert (records[records["update"] == 0]["S"] == 0).all()  # the first update: on policy
        assert (records[records["update"] > 0]["S"] != 0).any()
        lines = (run / artifacts.METRICS_FILE).read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [0, 1]
        summary = json.loads((run / "final" / "summary.json").read_text())
        assert (summary["backend"], summary["processes"], summary["records"]) == ("trl", 2, len(records))
        assert (run / "final" / "model.safetensors").is_file()
        # The smoke study's checkpoint_every 2: one checkpoint, at the end, both ranks' RNG states in it.
        checkpoint = backend.resume_checkpoint(run)
        assert checkpoint.name == "checkpoint-4" and {"rng_state_0.pth", "rng_state_1.pth"} <= {
            path.name for path in checkpoint.iterdir()
        }
    from eval_files import aggregate_runs

    out = aggregate_runs(tmp_path, runs, bins=3)
    fairness = pd.read_csv(out["fairness"])
    assert set(fairness["method"]) == {"grpo", "fspo"}
    table = tmp_path / "main.md"
    report = [
        "report",
        "--summary",
        str(out["summary"]),
        "--fairness",
        str(out["fairness"]),
        "--table",
        str(table),
    ]
    assert cli.main(report) == 0
    assert "| fspo | sequence |" in table.read_text() and "| grpo | token |" in table.read_text()
