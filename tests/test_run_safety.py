"""A run directory under hostile and careless input (issue 11): a failed start leaves it unclaimed,
a second writer is refused while the first holds its lock, damaged checkpoints are detected by
their manifest and fall back to an intact one, a bad `latest` pointer is an error (never a silent
restart), stale temporaries are removed, and the command reports every expected failure on one
line with exit code 2.

Runs use the tiny random model of conftest.py and the parity reward (as tests/test_trainer.py)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from clipbench import cli
from clipbench import trainer as trainer_module
from clipbench.config import ConfigError, load_config
from clipbench.trainer import (
    LOCK_FILE,
    CheckpointError,
    RunLock,
    RunLockedError,
    Trainer,
    checkpoint_problem,
)

ROOT = Path(__file__).resolve().parents[1]


def parity_reward(self, samples, answers):
    """conftest.parity_reward, for the module-scoped fixture (which cannot use `parity`)."""
    rewards = torch.tensor([float(len(t) % 2 == 0) for t in samples.texts], dtype=torch.float64)
    return rewards, {"ok": len(answers)}


real_training_prompts = trainer_module.training_prompts


def config_dict(base_model, **overrides) -> dict:
    """The smallest run of tests/test_trainer.py: P=4, G=4, 24 new tokens, 2 minibatches x 2 epochs."""
    return {
        "model": str(base_model),
        "method": "fspo",
        "method_params": {"c_low": 0.05, "c_high": 0.05},
        "steps": 1,
        "data": {"n": 40},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24},
        "optim": {"lr": 3e-3, "minibatches": 2, "epochs": 2},
        "checkpoint_every": 1,
        **overrides,
    }


def train_args(config: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--config-json", json.dumps(config), "--out", str(out), "--no-progress", *extra]


def one_error_line(err: str, command: str = "train") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clipbench {command}: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- a failed start


def break_config_json(model: Path) -> None:
    (model / "config.json").write_text("{")


@pytest.mark.parametrize("case", ["missing_model", "damaged_model", "fails_after_load"])
def test_a_failed_start_leaves_the_directory_unclaimed_and_the_fixed_rerun_succeeds(
    tmp_path, base_model, parity, monkeypatch, case
):
    run = tmp_path / "run"
    if case == "missing_model":
        bad = load_config(config_dict(tmp_path / "no_such_model"))
        message = f"model: {tmp_path / 'no_such_model'}: no such model directory"
    elif case == "damaged_model":
        shutil.copytree(base_model, tmp_path / "broken")
        break_config_json(tmp_path / "broken")
        bad = load_config(config_dict(tmp_path / "broken"))
        message = f"model: {tmp_path / 'broken' / 'config.json'}: not valid JSON"
        run.mkdir()  # made beforehand (e.g. by a workflow): it is kept, and left empty
    else:
        bad = load_config(config_dict(base_model))
        message = "the data went away"

        def no_data(*args):
            raise ValueError(message)

        monkeypatch.setattr(trainer_module, "training_prompts", no_data)
    with pytest.raises(ValueError, match=message):
        Trainer(bad, run, progress=False).run()
    if case == "damaged_model":
        assert list(run.iterdir()) == []
    else:
        assert not run.exists()
    monkeypatch.setattr(trainer_module, "training_prompts", real_training_prompts)
    Trainer(load_config(config_dict(base_model)), run, progress=False).run()  # the fixed config
    assert (run / "config.yaml").is_file() and (run / "final" / "summary.json").is_file()


BAD_FIELDS = [
    ("optim.beta1=5", "optim.beta1: must be finite and in [0, 1), got 5.0"),
    ("optim.weight_decay=-1", "optim.weight_decay: must be finite and >= 0, got -1.0"),
    ("device=tpu", "device: must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("advantage.eps=-1", "advantage.eps: must be finite and >= 0, got -1.0"),
    ("advantage.eps=.nan", "advantage.eps: must be finite and >= 0, got nan"),
    ("optim.lr=.inf", "optim.lr: must be finite and > 0, got inf"),
    ("rollout.temperature=.inf", "rollout.temperature: must be finite and > 0, got inf"),
    ("kl_beta=.inf", "kl_beta: must be finite and >= 0, got inf"),
]


@pytest.mark.parametrize(("item", "message"), BAD_FIELDS)
def test_an_invalid_field_is_refused_before_anything_is_written(tmp_path, base_model, capsys, item, message):
    out = tmp_path / "run"
    assert cli.main(train_args(config_dict(base_model), out, "--set", item)) == 2
    assert one_error_line(capsys.readouterr().err) == f"clipbench train: error: {message}"
    assert not out.exists()


# --------------------------------------------------------------------------- the run lock

HOLDER = """
import os, sys, time
from pathlib import Path
from clipbench.trainer import RunLock
RunLock(Path(sys.argv[1])).acquire()
child = os.fork()  # a forked child must not keep the lock alive after its parent dies
if child == 0:
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(
    tmp_path, base_model, parity, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".final.tmp-abc123"
    stale.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    child = None
    try:
        child = int(holder.stdout.readline())  # the lock is held from here on
        config = load_config(config_dict(base_model))
        with pytest.raises(RunLockedError) as refused:
            Trainer(config, run, progress=False).run()
        message = str(refused.value)
        assert message.startswith(
            f"{run}: another clipbench run is training into this directory (pid {holder.pid} on "
        )
        assert f"lock file {run / LOCK_FILE}" in message
        assert cli.main(train_args(config_dict(base_model), run)) == 2
        assert f"(pid {holder.pid} on " in one_error_line(capsys.readouterr().err)
        # Refused before touching anything: no config claimed, the stale folder not cleaned.
        assert sorted(p.name for p in run.iterdir()) == [".final.tmp-abc123", LOCK_FILE]

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind
        Trainer(config, run, progress=False).run()  # the kernel released the dead holder's lock
        assert (run / "final" / "summary.json").is_file()
        assert not stale.exists() and not (run / LOCK_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path, base_model, parity, monkeypatch):
    run = tmp_path / "run"
    real_step = Trainer._train_step
    seen = []

    def check_lock(self, step):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on "):
            RunLock(run).acquire()
        seen.append(step)
        if step == 1 and not getattr(self, "resumed", False):
            raise KeyboardInterrupt("interrupted")
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "_train_step", check_lock)
    config = load_config(config_dict(base_model, steps=2))
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, run, progress=False).run()
    assert not (run / LOCK_FILE).exists()  # released on the way out of an error, too
    trainer = Trainer(config, run, progress=False)
    trainer.resumed = True
    trainer.run()
    assert seen == [0, 1, 1]
    assert not (run / LOCK_FILE).exists()
    RunLock(run).acquire().release()


def test_a_filesystem_without_flock_warns_and_runs_unlocked(tmp_path, monkeypatch, capsys):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(trainer_module.fcntl, "flock", no_flock)
    lock = RunLock(tmp_path).acquire()
    assert lock.fd is None
    assert f"warning: cannot lock {tmp_path / LOCK_FILE} (No locks available)" in capsys.readouterr().err
    lock.release()


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def finished(tmp_path_factory, base_model):
    """A finished 3-step run with a checkpoint after every step (step_000002 and step_000003 kept)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    config = config_dict(base_model, steps=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_score", parity_reward)
        Trainer(load_config(config), run, progress=False).run()
    assert (run / "checkpoints" / "latest").read_text() == "step_000003\n"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000003"]
    return run, config


def copy_run(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished[0], tmp_path / "run"))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # in the weights, past the header: only the checksum can tell
    path.write_bytes(bytes(data))


DAMAGE = {
    "model_truncated": ("model/model.safetensors", truncate, "bytes, the manifest says"),
    "optimizer_truncated": ("optimizer.pt", truncate, "bytes, the manifest says"),
    "rng_truncated": ("rng.pt", truncate, "bytes, the manifest says"),
    "model_bit_flip": ("model/model.safetensors", flip_a_byte, "content differs from the manifest (sha256)"),
    "state_missing": ("trainer_state.json", Path.unlink, "missing"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, parity, capsys, case):
    run = copy_run(finished, tmp_path)
    name, damage, reason = DAMAGE[case]
    latest, previous = run / "checkpoints" / "step_000003", run / "checkpoints" / "step_000002"
    damage(latest / name)
    assert reason in checkpoint_problem(latest)
    Trainer(load_config(finished[1]), run, progress=False).run()
    warning = capsys.readouterr().err
    assert f"clipbench train: warning: checkpoint {latest} is damaged ({name}: " in warning, warning
    assert reason in warning and f"resuming from the previous intact checkpoint {previous} instead" in warning
    # Step 3 was redone from step 2: the same metrics and records as the uninterrupted run.
    assert (run / "metrics.jsonl").read_text() == (finished[0] / "metrics.jsonl").read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(run / "records"), pd.read_parquet(finished[0] / "records"))
    assert (run / "checkpoints" / "latest").read_text() == "step_000003\n"
    assert checkpoint_problem(latest) is None  # rewritten whole


def test_after_a_fallback_latest_names_the_checkpoint_resumed_from(finished, tmp_path, monkeypatch, capsys):
    # Interrupted before the next checkpoint: the next start resumes from step 2 without the
    # damaged step 3 coming up again, and step 3's lines are gone already.
    run = copy_run(finished, tmp_path)
    truncate(run / "checkpoints" / "step_000003" / "rng.pt")

    def interrupted(self, step):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(finished[1]), run, progress=False).run()
    assert "is damaged (rng.pt: " in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text() == "step_000002\n"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_no_intact_checkpoint_left_is_an_error_that_changes_nothing(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    for step in ("step_000002", "step_000003"):
        truncate(run / "checkpoints" / step / "rng.pt")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError) as refused:
        Trainer(load_config(finished[1]), run, progress=False).run()
    assert str(refused.value).startswith(
        f"checkpoint {run / 'checkpoints' / 'step_000003'} is damaged (rng.pt: "
    )
    assert str(refused.value).endswith(
        f"and no intact older checkpoint is left; to start over from step 0, delete {run / 'checkpoints'}"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_checkpoint_from_before_manifests_still_resumes(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "checkpoints" / "step_000003" / "manifest.json").unlink()
    Trainer(load_config(finished[1]), run, progress=False).run()  # all 3 steps done: nothing redone
    assert "warning" not in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == (finished[0] / "metrics.jsonl").read_text()


# --------------------------------------------------------------------------- the `latest` pointer


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ("", "latest: empty (it names the checkpoint to resume from)"),
        ("step_000009\n", "latest: names step_000009, which does not exist"),
        ("../../elsewhere\n", "latest: names '../../elsewhere', not a checkpoint (step_NNNNNN)"),
    ],
)
def test_a_bad_latest_pointer_is_an_error_never_a_silent_restart(
    finished, tmp_path, capsys, pointer, message
):
    run = copy_run(finished, tmp_path)
    latest = run / "checkpoints" / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_text(pointer)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli.main(train_args(finished[1], run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{latest}: " in line and message in line
    assert line.endswith(
        f"checkpoints on disk: step_000002, step_000003; to resume from one, write its name into {latest} "
        f"(e.g. echo step_000003 > {latest}); to start over from step 0, delete {run / 'checkpoints'}"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing truncated


def test_a_missing_pointer_beside_checkpoints_resumes_from_the_newest_intact_one(finished, tmp_path, capsys):
    # A kill between a checkpoint's atomic rename and its pointer write leaves no `latest`: the
    # checkpoint is complete (its manifest says so), so the run resumes from it, with a warning.
    run = copy_run(finished, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    truncate(run / "checkpoints" / "step_000003" / "rng.pt")
    for name in ("metrics.jsonl", "perf.jsonl"):  # as if steps after step 2 never finished
        lines = (run / name).read_text().splitlines()
        (run / name).write_text("".join(f"{line}\n" for line in lines[:2]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_score", parity_reward)
        Trainer(load_config(finished[1]), run, progress=False).run()
    err = capsys.readouterr().err
    assert "latest: missing beside checkpoints" in err and "step_000002" in err
    assert (run / "metrics.jsonl").read_text() == (finished[0] / "metrics.jsonl").read_text()
    assert (run / "checkpoints" / "latest").read_text() == "step_000003\n"


def test_stale_temporaries_of_a_killed_run_are_removed_at_start(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    stale = [
        run / "checkpoints" / ".step_000004.tmp-k1ll3d" / "model" / "model.safetensors",
        run / "checkpoints" / ".latest.a1b2c3.tmp",
        run / ".final.tmp-x9y8z7" / "model.safetensors",
        run / ".final.old-q1w2e3" / "final" / "summary.json",
        run / ".metrics.jsonl.r4t5y6.tmp",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    (run / "notes.txt").write_text("mine")
    Trainer(load_config(finished[1]), run, progress=False).run()
    left = sorted(p.name for p in run.iterdir())
    assert left == sorted([*(p.name for p in finished[0].iterdir()), "notes.txt"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000003"]


# --------------------------------------------------------------------------- the command's errors


def cli_case(case: str, tmp_path: Path, base_model: str) -> tuple[list[str], str, Path]:
    """(arguments, what the one line must say, the output path that must not appear)."""
    out = tmp_path / "out"
    config = config_dict(base_model)
    if case == "missing_config_file":
        return (
            ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(out)],
            (f"--config {tmp_path / 'nope.yaml'}: no such file"),
            out,
        )
    if case == "config_json_not_a_mapping":
        return (
            ["train", "--config-json", "[1]", "--out", str(out)],
            ("--config-json: expected a JSON object of TrainConfig fields"),
            out,
        )
    if case == "out_is_a_file":
        (tmp_path / "file").write_text("x")
        config["model"] = str(tmp_path / "no_such_model")  # --out is checked before the model
        return (
            train_args(config, tmp_path / "file"),
            f"{tmp_path / 'file'}: exists and is not a directory",
            out,
        )
    if case == "set_bad_yaml":
        return (
            train_args(config, out, "--set", "optim.lr=[1,2"),
            "--set 'optim.lr=[1,2': the value is not valid YAML",
            out,
        )
    if case == "set_through_a_value":
        return train_args(config, out, "--set", "model.x=1"), "model.x: model is a value", out
    if case == "model_config_json_damaged":
        shutil.copytree(base_model, tmp_path / "model")
        break_config_json(tmp_path / "model")
        config["model"] = str(tmp_path / "model")
        return train_args(config, out), f"{tmp_path / 'model' / 'config.json'}: not valid JSON", out
    if case == "model_weights_truncated":
        shutil.copytree(base_model, tmp_path / "model")
        truncate(tmp_path / "model" / "model.safetensors")
        config["model"] = str(tmp_path / "model")
        return (
            train_args(config, out),
            f"{tmp_path / 'model' / 'model.safetensors'}: damaged or incomplete",
            out,
        )
    if case == "sft_hidden_size_0":
        return (
            ["sft", "--out", str(out), "--set", "hidden_size=0"],
            "sft.hidden_size: must be >= 8 and a multiple of 8",
            out,
        )
    raise AssertionError(case)


CLI_CASES = [
    "missing_config_file",
    "config_json_not_a_mapping",
    "out_is_a_file",
    "set_bad_yaml",
    "set_through_a_value",
    "model_config_json_damaged",
    "model_weights_truncated",
    "sft_hidden_size_0",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_each_expected_failure_is_one_line_and_exit_code_2(tmp_path, base_model, case):
    args, message, out = cli_case(case, tmp_path, base_model)
    done = subprocess.run(
        [sys.executable, "-m", "clipbench.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    command = args[0]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in one_error_line(done.stderr, command)
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        cli.main(
            ["--debug", "train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")]
        )


def test_a_run_stopped_by_a_non_finite_loss_is_one_line_exit_code_1(
    tmp_path, base_model, monkeypatch, capsys
):
    def diverge(self, step):
        raise trainer_module.TrainingError(f"step {step}, update 0, method fspo: non-finite loss (nan)")

    monkeypatch.setattr(Trainer, "_train_step", diverge)
    assert cli.main(train_args(config_dict(base_model), tmp_path / "run")) == 1
    # Its last line: transformers' "Loading weights" bar comes first (the model did load).
    err = capsys.readouterr().err
    assert (
        err.strip().splitlines()[-1]
        == "clipbench train: error: step 0, update 0, method fspo: non-finite loss (nan)"
    )
    assert "Traceback" not in err
