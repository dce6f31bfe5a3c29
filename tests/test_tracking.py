"""report_to: a run's metrics also sent to experiment trackers (clipbench/tracking.py).

TensorBoard is checked for real (its event files read back with tensorboard's own reader; pip
install tensorboard, CI stage 2). wandb and trackio are not installed here: their adapters are
checked against stand-in modules that record the calls (offline mode, step numbers), which shows
what clipbench sends, not that those packages accept it."""

from __future__ import annotations

import json
import sys
import types

import pytest

from clipbench import tracking
from clipbench.config import ConfigError, load_config
from clipbench.provenance import config_hash
from clipbench.trainer import Trainer, run_hash


def test_scalars_are_the_numbers_of_the_step_rows():
    metrics = {"step": 3, "reward_mean": 0.5, "updates": 4, "flag": True, "name": "x", "loss": float("nan")}
    perf = {"step": 3, "step_s": 1.25}
    assert tracking.scalars(metrics, perf) == {
        "train/reward_mean": 0.5,
        "train/updates": 4.0,
        "perf/step_s": 1.25,
    }


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["tensorbored"], "report_to[0]: unknown tracker 'tensorbored'"),
        (["trackio", "trackio"], "report_to[1]: 'trackio' is listed twice"),
    ],
)
def test_a_bad_tracker_list_names_the_entry(names, message, monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ValueError) as err:
        tracking.check_available(names)
    assert message in str(err.value)


def test_a_tracker_without_its_package_fails_the_config_check_naming_it(monkeypatch):
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else object()
    )
    with pytest.raises(ConfigError) as err:
        load_config({"model": "m", "report_to": ["wandb"]})
    assert "report_to[0]: 'wandb' needs the wandb package" in str(err.value)


def test_trackers_are_not_part_of_the_run_identity():
    plain = load_config({"model": "m"}).to_dict()
    assert run_hash({**plain, "report_to": ["tensorboard"]}) == run_hash(plain)
    # a config written before the field existed hashes as it always did
    old = {name: value for name, value in plain.items() if name != "report_to"}
    assert run_hash(plain) == config_hash(old)
    assert run_hash({**plain, "seed": 1}) != run_hash(plain)


def small_config(base_model, **overrides):
    return load_config(
        {
            "model": base_model,
            "method": "fspo",
            "method_params": {"c_low": 0.002, "c_high": 0.002},
            "steps": 2,
            "data": {"n": 40},
            "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24},
            "optim": {"lr": 3e-3, "minibatches": 2, "epochs": 2},
            "checkpoint_every": 1,
            **overrides,
        }
    )


def read_rows(run_dir, name):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_tensorboard_gets_each_step_and_a_run_resumes_with_a_tracker_added(
    tmp_path, base_model, parity, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    real_step = Trainer._train_step

    def stop_at_step_1(self, step):
        if step == 1:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "_train_step", stop_at_step_1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(small_config(base_model), run, progress=False).run()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    # resumed from its step-1 checkpoint with the tracker added (not part of the run's identity)
    Trainer(small_config(base_model, report_to=["tensorboard"]), run, progress=False).run()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    metrics, perf = read_rows(run, "metrics.jsonl"), read_rows(run, "perf.jsonl")
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert logged["train/clip_frac"] == [(1, pytest.approx(metrics[1]["clip_frac"]))]
    assert logged["perf/step_s"] == [(1, pytest.approx(perf[1]["step_s"]))]
    assert set(logged) == set(tracking.scalars(metrics[1], perf[1]))


def fake_module(name, calls):
    """A stand-in for wandb or trackio that records each call."""
    module = types.ModuleType(name)

    class Run:
        def log(self, values, step=None):
            calls.append(("run.log", step, dict(values)))

        def finish(self):
            calls.append(("run.finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    module.log = lambda values, step=None: calls.append(("log", step, dict(values)))
    module.finish = lambda: calls.append(("finish",))
    return module


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_and_trackio_are_called_offline_with_the_step(name, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, name, fake_module(name, calls))
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda module: object())
    trackers = tracking.Trackers([name], tmp_path, "fspo-seed0", {"seed": 0})
    trackers.log(5, {"step": 5, "clip_frac": 0.25}, {"step_s": 2.0})
    trackers.close()
    (kind, init), *rest = calls
    assert kind == "init" and init["project"] == "clipbench" and init["name"] == "fspo-seed0"
    if name == "wandb":
        assert init["mode"] == "offline" and init["dir"] == str(tmp_path)
        assert rest == [("run.log", 5, {"train/clip_frac": 0.25, "perf/step_s": 2.0}), ("run.finish",)]
    else:
        assert "space_id" not in init  # local: nothing uploaded
        assert rest == [("log", 5, {"train/clip_frac": 0.25, "perf/step_s": 2.0}), ("finish",)]
