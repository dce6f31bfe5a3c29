"""clipbench.artifacts: the one place that makes and reads the names and paths of a study."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from clipbench import artifacts
from clipbench.artifacts import RunId

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_id_spells_its_model_name_and_run_directory():
    run = RunId("seq_ppo", 12)
    assert run.model == "seq_ppo-seed12"
    assert run.run_dir == "results/runs/seq_ppo/seed12"
    assert run.final_dir == "results/runs/seq_ppo/seed12/final"
    assert run.final_summary == "results/runs/seq_ppo/seed12/final/summary.json"
    assert run.train_log == "results/logs/train/seq_ppo-seed12.log"
    assert artifacts.eval_summary(run.model, "math500") == "results/evals/seq_ppo-seed12/math500.json"


@pytest.mark.parametrize(
    "run", [RunId("fspo", 0), RunId("seq_ppo", 12), RunId("a_seed1", 3), RunId("X9", 10**6)]
)
def test_each_spelling_reads_back_as_the_same_run(run):
    assert RunId.from_model(run.model) == run
    assert RunId.from_run_dir(run.run_dir) == run
    assert RunId.from_run_dir(Path("/elsewhere") / run.run_dir) == run
    assert artifacts.parse_model(run.model) == run
    assert artifacts.model_dir(run.model) == run.final_dir
    assert re.fullmatch(artifacts.model_wildcard([run.method]), run.model)


def test_the_base_model_is_no_run():
    assert artifacts.parse_model("base") is None
    assert artifacts.model_dir("base") == artifacts.BASE_MODEL_DIR
    assert artifacts.model_dir("base", base_dir="/models/qwen") == "/models/qwen"
    assert re.fullmatch(artifacts.model_wildcard(["fspo"]), "base")
    with pytest.raises(ValueError, match="not a run's model name"):
        RunId.from_model("base")


@pytest.mark.parametrize(
    "model",
    ["fspo", "fspo-seed", "fspo-seedx", "fspo-seed-1", "../fspo-seed1", "fs po-seed1", "fspo-seed1/x", ""],
)
def test_a_malformed_model_name_is_refused(model):
    with pytest.raises(ValueError):
        RunId.from_model(model)
    assert not re.fullmatch(artifacts.model_wildcard(["fspo"]), model)


@pytest.mark.parametrize(
    "path", ["results/runs/fspo/1", "results/runs/fspo/seedx", "results/runs/../seed1", "seed1"]
)
def test_a_malformed_run_directory_is_refused_naming_it(path):
    with pytest.raises(ValueError, match="expected a run directory named seed<N>"):
        RunId.from_run_dir(path)


@pytest.mark.parametrize(
    ("method", "seed"), [("a/b", 0), ("..", 0), ("a-b", 0), ("", 0), ("fspo", -1), ("fspo", True)]
)
def test_a_run_id_holds_only_safe_names_and_seeds(method, seed):
    with pytest.raises(ValueError):
        RunId(method, seed)


def test_the_model_wildcard_matches_only_the_studys_methods():
    pattern = artifacts.model_wildcard(["ppo", "fspo"])
    assert re.fullmatch(pattern, "ppo-seed3") and re.fullmatch(pattern, "fspo-seed0")
    assert not re.fullmatch(pattern, "gspo-seed0")
    assert not re.fullmatch(pattern, "ppo-seed3/../x")


def test_plot_paths_are_named_after_the_registered_plots():
    from clipbench import plots

    assert artifacts.plot_path("accuracy") == "results/plots/accuracy.png"
    assert artifacts.plot_path("clip_by_length", "out") == "out/clip_by_length.png"
    assert list(plots.PLOTS) == ["accuracy", "clip_by_length", "training_curves"]
    with pytest.raises(ValueError, match="plot: '../x' is not a valid name"):
        artifacts.plot_path("../x")


def test_nothing_outside_artifacts_parses_a_run_name_from_a_path():
    """The issue's check: no `rsplit`/`rpartition`/`removeprefix` on a seed anywhere else."""
    found = subprocess.run(
        ["grep", "-rnE", "rsplit|rpartition|removeprefix", "clipbench", "workflows", "Snakefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert [line for line in found.splitlines() if "seed" in line] == []


def record(**changes):
    row = {
        name: (1 if dtype == "int64" else 0.5) for name, (dtype, _) in artifacts.CLIP_RECORD_COLUMNS.items()
    }
    return {**row, **changes}


def test_clip_records_have_one_schema_of_columns_and_dtypes():
    frame = artifacts.clip_records_frame([record(), record(step=2, S=-0.25)])
    assert list(frame.columns) == list(artifacts.CLIP_RECORD_COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: dtype for c, (dtype, _) in artifacts.CLIP_RECORD_COLUMNS.items()
    }
    assert frame.S.tolist() == [0.5, -0.25] and frame.step.tolist() == [1, 2]
    empty = artifacts.clip_records_frame([])
    assert list(empty.columns) == list(artifacts.CLIP_RECORD_COLUMNS) and len(empty) == 0


def test_a_record_with_a_missing_or_unknown_column_is_refused():
    row = record()
    del row["S"]
    with pytest.raises(ValueError, match=r"clip record 1: .*missing \['S'\]"):
        artifacts.clip_records_frame([record(), row])
    with pytest.raises(ValueError, match=r"unknown \['ratio'\]"):
        artifacts.clip_records_frame([record(ratio=1.0)])


def test_clip_records_are_written_per_step_and_read_as_one_frame(tmp_path):
    run_dir = tmp_path / "runs" / "fspo" / "seed0"
    with pytest.raises(ValueError, match=r"seed0/records: no clip records"):
        artifacts.read_clip_records(run_dir)
    for step in (1, 0, 10):
        path = artifacts.write_step_records(run_dir, step, artifacts.clip_records_frame([record(step=step)]))
        assert path == run_dir / "records" / f"step_{step:06d}.parquet"
    (run_dir / "records" / ".step_000011.parquet.tmp").write_text("a kill's leftover")
    assert list(artifacts.step_records_files(run_dir)) == [0, 1, 10]
    with pytest.raises(ValueError, match=r"the clip records of steps \[2, 3, 4, 5, 6, 7, 8, 9\] are missing"):
        artifacts.read_clip_records(run_dir)
    for step in range(2, 10):
        artifacts.write_step_records(run_dir, step, artifacts.clip_records_frame([record(step=step)]))
    frame = artifacts.read_clip_records(run_dir)
    assert frame.step.tolist() == list(range(11))  # step order (10 after 9), the temporary file left out
    assert frame.equals(artifacts.clip_records_frame([record(step=s) for s in range(11)]))


def test_a_multi_process_run_writes_one_part_per_rank_and_is_read_as_one_frame(tmp_path):
    """A run of two processes (the TRL backend): each writes its part of a step, tagged with its
    rank; the reader joins them in step, then rank order, and refuses incomplete or mixed parts."""
    run_dir = tmp_path / "runs" / "grpo" / "seed0"
    for step in (1, 0):
        for rank in (1, 0):
            frame = artifacts.clip_records_frame([record(step=step, seq=4 * rank + i) for i in range(2)])
            path = artifacts.write_step_records(run_dir, step, frame, rank=rank)
            assert path == run_dir / "records" / f"step_{step:06d}.rank{rank}.parquet"
    files = artifacts.step_records_files(run_dir)
    assert {step: [p.name for p in parts] for step, parts in files.items()} == {
        0: ["step_000000.rank0.parquet", "step_000000.rank1.parquet"],
        1: ["step_000001.rank0.parquet", "step_000001.rank1.parquet"],
    }
    frame = artifacts.read_clip_records(run_dir)
    assert frame.step.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert frame.seq.tolist() == [0, 1, 4, 5, 0, 1, 4, 5]  # rank 0's rows, then rank 1's
    # Rank 10 sorts after rank 2 (numbers, not names); a leading zero is no rank's tag.
    for rank in (2, 10):
        artifacts.write_step_records(run_dir, 0, artifacts.clip_records_frame([record(step=0)]), rank=rank)
    assert [p.name for p in artifacts.step_records_files(run_dir)[0]][2:] == [
        "step_000000.rank2.parquet",
        "step_000000.rank10.parquet",
    ]
    with pytest.raises(ValueError, match=r"seed0/records: step 0 lacks the clip records of ranks \[3, 4, 5"):
        artifacts.read_clip_records(run_dir)
    for rank in (2, 10):
        artifacts.step_records_path(run_dir, 0, rank).unlink()
    (run_dir / "records" / "step_000000.rank01.parquet").write_text("not a rank's name")
    assert len(artifacts.step_records_files(run_dir)[0]) == 2
    artifacts.step_records_path(run_dir, 1, 1).unlink()
    with pytest.raises(ValueError, match=r"different numbers of processes: \['1 ranks', '2 ranks'\]"):
        artifacts.read_clip_records(run_dir)
    artifacts.write_step_records(run_dir, 1, artifacts.clip_records_frame([record(step=1)]))
    with pytest.raises(ValueError, match=r"step 1 has an untagged file beside rank-tagged ones"):
        artifacts.read_clip_records(run_dir)
    with pytest.raises(ValueError, match="rank: -1 is not"):
        artifacts.step_records_path(run_dir, 0, -1)


def test_clip_records_carry_one_prefix_sum_column_per_rung_of_a_constant_ladder():
    from clipbench import fairness

    assert artifacts.RECORD_PREFIX_LADDER == fairness.prefix_ladder(artifacts.RECORD_PREFIX_MAX)
    assert artifacts.RECORD_PREFIX_LADDER[:3] == (8, 16, 32) and artifacts.RECORD_PREFIX_LADDER[-1] == 32768
    assert artifacts.PREFIX_COLUMNS[:2] == ("S_8", "S_16") and artifacts.prefix_column(32768) == "S_32768"
    columns = list(artifacts.CLIP_RECORD_COLUMNS)
    assert columns[-len(artifacts.PREFIX_COLUMNS) :] == list(
        artifacts.PREFIX_COLUMNS
    )  # last, in ladder order
    assert all(artifacts.CLIP_RECORD_COLUMNS[c][0] == "float64" for c in artifacts.PREFIX_COLUMNS)


def test_records_written_before_the_prefix_sums_are_read_with_nan_prefix_sums(tmp_path):
    # A run of an older clipbench: its step files lack S_8 ... S_32768. A run resumed by this one
    # has them from the resumed step on.
    run_dir = tmp_path / "run"
    old = artifacts.clip_records_frame([record(step=0)]).drop(columns=list(artifacts.PREFIX_COLUMNS))
    artifacts.write_step_records(run_dir, 0, old)
    frame = artifacts.read_clip_records(run_dir)
    assert list(frame.columns) == list(artifacts.CLIP_RECORD_COLUMNS)
    assert frame[list(artifacts.PREFIX_COLUMNS)].isna().all().all()
    assert (frame[list(artifacts.PREFIX_COLUMNS)].dtypes == "float64").all()
    artifacts.write_step_records(run_dir, 1, artifacts.clip_records_frame([record(step=1, S_8=0.25)]))
    frame = artifacts.read_clip_records(run_dir)
    assert list(frame.columns) == list(artifacts.CLIP_RECORD_COLUMNS)
    assert frame["S_8"].tolist()[1] == 0.25 and math.isnan(frame["S_8"].tolist()[0])


def test_reading_clip_records_names_a_folder_that_holds_none(tmp_path):
    run_dir = tmp_path / "run"
    bad = artifacts.clip_records_frame([record()]).drop(columns=["seq_out", "length"])
    artifacts.write_step_records(run_dir, 0, bad)
    with pytest.raises(ValueError, match=r"run/records: not clip records, .*\['length', 'seq_out'\]"):
        artifacts.read_clip_records(run_dir)


@pytest.mark.parametrize("name", ["fspo-seed007", "fspo-seed00", "fspo-seed+1"])
def test_a_seed_with_a_leading_zero_or_sign_names_no_run(name):
    """`seed007` would be the run of seed 7 under a second name (its output path would differ
    from the directory the run writes), so no spelling of it is accepted."""
    with pytest.raises(ValueError):
        RunId.from_model(name)
    with pytest.raises(ValueError):
        RunId.from_run_dir("results/runs/fspo/" + name.split("-")[1])
    assert not re.fullmatch(artifacts.model_wildcard(["fspo"]), name)
    assert not re.fullmatch(artifacts.SEED, name.split("-seed")[1])
    assert re.fullmatch(artifacts.SEED, "0") and re.fullmatch(artifacts.SEED, "70")
