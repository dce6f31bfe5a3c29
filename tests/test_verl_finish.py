"""`clipbench verl-finish` (clipbench/integrations/verl_finish.py): a verl run's folder turned into the
run directory clipbench reads, and read back by `clipbench aggregate`.

verl's per-step metrics are written here as verl 0.9.1's FileLogger writes them
(verl/utils/tracking.py, `FileLogger.log`: one `{"step": step, "data": data}` JSON line per
`Tracking.log` call; `RayPPOTrainer.fit` calls it once per step from step 1), with the keys verl's
trainer logs (`compute_data_metrics`: critic/score/mean, response_length/*; the actor's:
actor/pg_clipfrac, actor/grad_norm, ...; the adapter's actor/clipbench_<key>). The merged model is an
HF directory as verl's merger leaves it (config.json, model.safetensors, the tokenizer), saved here by
transformers; tests/verl_layout.py (run in verl's venv) produces the same layout with verl's own
checkpoint manager and merger: test_finish_reads_the_layout_verl_itself_writes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from clipbench import artifacts, cli
from clipbench.config import TrainConfig, from_dict
from clipbench.integrations import verl_finish
from clipbench.integrations.verl_config import RunFiles

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def run_config(steps: int = 2, method: str = "fspo") -> dict:
    """A verl run's TrainConfig fields: P 2 prompts x G 4, M 2 minibatches, E 1 epoch."""
    return {
        "model": "results/base/model",
        "method": method,
        "seed": 0,
        "steps": steps,
        "backend": "verl",
        "data": {"benchmark": "synthetic", "split": "train", "n": 50},
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
        "optim": {"minibatches": 2, "epochs": 1},
    }


def cfg_of(fields: dict) -> TrainConfig:
    return from_dict(TrainConfig, fields)


def verl_data(step: int) -> dict:
    """One step's metric dict with verl 0.9.1's keys (a subset of what fit() logs, and two it logs that
    clipbench does not map), numbers chosen by hand."""
    return {
        "training/global_step": step,
        "training/epoch": 0,
        "critic/score/mean": 0.25 * step,
        "critic/rewards/mean": 0.25 * step,
        "response_length/mean": 10.5 + step,
        "response_length/max": 16.0,
        "response_length/min": 3.0,
        "response_length/clip_ratio": 0.125,
        "actor/entropy": 1.5,
        "actor/grad_norm": 0.75,
        "actor/pg_loss": -0.01,
        "actor/pg_clipfrac": 0.2,
        "actor/ppo_kl": 0.001,
        "actor/pg_clipfrac_lower": 0.0,
        "actor/clipbench_clip_frac": 0.2,
        "actor/clipbench_clip_frac_low": 0.05,
        "actor/clipbench_clip_frac_high": 0.15,
        "actor/clipbench_ppo_kl": 0.001,
        "timing_s/step": 12.0,
        "perf/mfu/actor": 0.3,
    }


def file_logger_lines(steps: int, data=verl_data) -> str:
    """verl's FileLogger output for steps 1..steps (json.dumps: the JSON orjson writes, same values)."""
    return "".join(json.dumps({"step": s, "data": data(s)}) + "\n" for s in range(1, steps + 1))


def record_rows(step: int, rank: int, rows: int = 4) -> list[dict]:
    """Clip records as the adapter writes them for one rank: `rows` sequences x 2 updates."""
    out = []
    for update in range(2):
        for i in range(rows):
            seq = rank * rows + i
            row = {
                "step": step,
                "update": update,
                "epoch": 0,
                "minibatch": update,
                "seq": seq,
                "length": 4 + seq,
                "S": 0.01 * seq * update,
                "advantage": 1.0 if seq % 2 else -1.0,
                "reward": float("nan"),
                "entropy": float("nan"),
                "seq_clip": float(update and seq == 3),
                "seq_out": float(update and seq in (3, 5)),
            }
            row.update({col: float("nan") for col in artifacts.PREFIX_COLUMNS})
            out.append(row)
    return out


def save_merged(folder: Path) -> None:
    """An HF model directory as verl's merger writes it: config, safetensors weights, tokenizer."""
    from clipbench.models import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def verl_run_dir(root: Path, method: str = "fspo", steps: int = 2, ranks: int = 2) -> Path:
    """A verl run's directory as the train job leaves it: verl/ (config, metrics, merged model) and
    the adapter's rank-tagged clip records."""
    run_dir = root / "runs" / method / "seed0"
    files = RunFiles(run_dir / "verl" / "config.yaml")
    files.folder.mkdir(parents=True)
    files.config.write_text("# written by clipbench verl-config\n")
    files.metrics.write_text(file_logger_lines(steps))
    files.versions.write_text("torch==2.13.0\ntransformers==5.10.4\nverl==0.9.1\nclipbench @ file:///src\n")
    save_merged(files.merged)
    for step in range(steps):
        for rank in range(ranks):
            frame = artifacts.clip_records_frame(record_rows(step, rank))
            artifacts.write_step_records(run_dir, step, frame, rank=rank)
    return run_dir


# --------------------------------------------------------------------------- the metrics


def test_verls_metrics_map_to_the_native_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(file_logger_lines(2))
    rows = verl_finish.metrics_rows(path, cfg_of(run_config()))
    # by hand from verl_data: step = verl's - 1; updates = M x E = 2 x 1
    assert rows[1] == {
        "step": 1,
        "reward_mean": 0.5,
        "accuracy": 0.5,
        "response_length_mean": 12.5,
        "response_length_max": 16,
        "truncated_frac": 0.125,
        "entropy": 1.5,
        "grad_norm": 0.75,
        "clip_frac": 0.2,
        "clip_frac_low": 0.05,
        "clip_frac_high": 0.15,
        "ppo_kl": 0.001,
        "updates": 2,
    }
    assert rows[0]["step"] == 0 and rows[0]["reward_mean"] == 0.25
    assert isinstance(rows[0]["response_length_max"], int)
    assert "kl_ref" not in rows[0]  # verl logs actor/kl_loss only with use_kl_loss


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            lambda: file_logger_lines(1) + json.dumps({"step": 3, "data": verl_data(3)}) + "\n",
            r":2: step 3, expected 2",
        ),
        (
            lambda: file_logger_lines(
                1, lambda s: {k: v for k, v in verl_data(s).items() if k != "critic/score/mean"}
            ),
            r":1: no 'critic/score/mean' in verl's metrics \(clipbench's 'reward_mean'\)",
        ),
        (
            lambda: file_logger_lines(
                1, lambda s: {**verl_data(s), "actor/clipbench_clip_frac": float("nan")}
            ),
            r":1: 'clip_frac' is nan, not a finite number",
        ),
        (lambda: "{not json\n", r":1: not JSON"),
        (lambda: json.dumps({"step": 1, "metrics": {}}) + "\n", r":1: not a verl FileLogger line"),
        (lambda: file_logger_lines(1), r"1 steps of metrics, the run has 2 \(an unfinished run\?\)"),
    ],
    ids=["gap", "missing-key", "nan", "not-json", "not-filelogger", "too-few"],
)
def test_bad_verl_metrics_are_refused_naming_file_and_line(tmp_path, lines, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines())
    with pytest.raises(verl_finish.VerlRunError, match=message) as err:
        verl_finish.metrics_rows(path, cfg_of(run_config(steps=2)))
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- the run directory


def test_finish_writes_the_run_directory_and_aggregate_reads_it(tmp_path):
    runs = {m: verl_run_dir(tmp_path, m) for m in ("fspo", "grpo")}
    for method, run_dir in runs.items():
        fields = run_config(method=method)
        assert cli.main(["verl-finish", "--config-json", json.dumps(fields), "--run-dir", str(run_dir)]) == 0
        assert artifacts.run_is_finished(run_dir)
        final = run_dir / "final"
        assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
        assert (final / "tokenizer.json").is_file()
        info = json.loads((final / artifacts.MODEL_PROVENANCE_FILE).read_text())
        assert (info["kind"], info["steps_done"], info["method"]) == ("verl", 2, method)
        assert info["merged_from"].endswith("verl/checkpoints/global_step_2/actor")
        summary = json.loads((final / "summary.json").read_text())
        assert (summary["backend"], summary["steps"], summary["records"]) == ("verl", 2, 2 * 2 * 2 * 4)
        assert summary["last"]["step"] == 1
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert provenance["config"]["backend"] == "verl" and provenance["seed"] == 0
        assert provenance["verl"]["metrics"] == str(run_dir / "verl" / "metrics.jsonl")
        # the versions of the env that trained (verl's), beside this job's own (clipbench's)
        assert provenance["verl"]["versions"] == {
            "torch": "2.13.0",
            "transformers": "5.10.4",
            "verl": "0.9.1",
            "clipbench": "file:///src",
        }
        assert info["versions"] == provenance["verl"]["versions"]
        assert provenance["versions"]["transformers"] != "5.10.4"  # clipbench's env: 5.19.0
        # the merged model's files are linked or copied: verl's folder stays whole
        assert (run_dir / "verl" / "hf" / "model.safetensors").is_file()
    metrics = artifacts.read_metrics({(m, 0): d for m, d in runs.items()})
    from clipbench.plots import _training_curves_needs

    assert _training_curves_needs(metrics) is None  # what the training curves read is there

    from eval_files import aggregate_runs

    out = aggregate_runs(tmp_path, runs, bins=2)
    fairness = pd.read_csv(out["fairness"])
    pooled = fairness[fairness["scope"] == "pooled"].set_index("method")
    # by hand from record_rows: the fairness metrics read the off-policy records (update 1: update 0 runs
    # at ratio 1), 2 steps x 2 ranks x 4 rows = 16 per run; seq_out 1 for seq 3 and 5 of each step: 4 of 16
    assert pooled.loc["fspo", "clip_rate"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "verl" / "metrics.jsonl").unlink(), "no verl metrics"),
        (
            lambda d: artifacts.step_records_path(d, 1, 0).unlink(),
            r"step 1 lacks the clip records of ranks \[0\]",
        ),
        (
            lambda d: [p.unlink() for p in artifacts.step_records_files(d)[1]],
            r"clip records of steps \[0\], not 0..1",
        ),
        (lambda d: (d / "verl" / "hf" / "model.safetensors").unlink(), "no HF model"),
        (
            lambda d: [p.unlink() for p in (d / "verl" / "hf").glob("tokenizer*.json")],
            "no tokenizer",
        ),
        (lambda d: (d / "verl" / "versions.txt").unlink(), "no package versions of verl's env"),
        (lambda d: (d / "verl" / "versions.txt").write_text("torch\n"), "no `name==version` line"),
    ],
    ids=[
        "no-metrics",
        "missing-rank",
        "missing-step",
        "no-weights",
        "no-tokenizer",
        "no-versions",
        "bad-versions",
    ],
)
def test_an_unfinished_verl_run_is_refused_and_nothing_is_written(tmp_path, damage, message, capsys):
    import re

    run_dir = verl_run_dir(tmp_path)
    damage(run_dir)
    assert (
        cli.main(["verl-finish", "--config-json", json.dumps(run_config()), "--run-dir", str(run_dir)]) == 2
    )
    assert re.search(message, capsys.readouterr().err)
    for name in ("final", "metrics.jsonl", "provenance.json", "config.yaml"):
        assert not (run_dir / name).exists(), name


def test_verl_finish_takes_only_a_verl_run(tmp_path, capsys):
    run_dir = verl_run_dir(tmp_path)
    fields = {**run_config(), "backend": "native"}
    assert cli.main(["verl-finish", "--config-json", json.dumps(fields), "--run-dir", str(run_dir)]) == 2
    assert "backend: 'native'; verl-finish finishes a run of backend verl" in capsys.readouterr().err


# --------------------------------------------------------------------------- verl's own layout


def verl_python() -> str | None:
    """verl's venv's python, from CLIPBENCH_VERL_PYTHON (`.ci/run` stage 4 sets it to the verl venv's)."""
    return os.environ.get("CLIPBENCH_VERL_PYTHON") or None


@pytest.mark.slow
def test_finish_reads_the_layout_verl_itself_writes(tmp_path):
    """tests/verl_layout.py, in verl's venv, saves an FSDP checkpoint of a tiny random Qwen2 with verl's
    FSDPCheckpointManager (CPU, gloo, world size 1), logs two steps through verl's Tracking with the
    file logger, and merges the checkpoint with `python -m verl.model_merger merge --backend fsdp`; the
    run directory that leaves is finished here and read by aggregate's readers."""
    python = verl_python()
    if python is None:
        if os.environ.get("CLIPBENCH_REQUIRE_VERL"):  # CI: a missing verl venv fails, never skips
            pytest.fail("CLIPBENCH_REQUIRE_VERL is set but CLIPBENCH_VERL_PYTHON is not")
        pytest.skip("no verl venv (set CLIPBENCH_VERL_PYTHON to its python)")
    run_dir = tmp_path / "runs" / "fspo" / "seed0"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [python, str(HERE / "verl_layout.py"), str(run_dir), "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    actor = RunFiles(run_dir / "verl" / "config.yaml").actor_checkpoint(2)
    assert (actor / "model_world_size_1_rank_0.pt").is_file() and (actor / "fsdp_config.json").is_file()
    for step in range(2):
        artifacts.write_step_records(
            run_dir, step, artifacts.clip_records_frame(record_rows(step, 0)), rank=0
        )
    final = verl_finish.finish(cfg_of(run_config()), run_dir)
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    # verl 0.9.1's merger writes bfloat16 (config dtype and weights): the trained float32 weights rounded
    trained = load_file(run_dir / "verl" / "reference.safetensors")
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16)
    state = model.state_dict()
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((final / artifacts.MODEL_PROVENANCE_FILE).read_text())["dtype"] == "bfloat16"
    for name, weight in trained.items():
        assert torch.equal(state[name], weight.to(torch.bfloat16)), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["reward_mean"] == 0.5
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["verl"]["versions"]["verl"] == "0.9.1"  # pip freeze of verl's own venv
