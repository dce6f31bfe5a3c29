"""The plot registry: one function per plot, drawn by name; byte-reproducible figures."""

import subprocess
import sys

import pandas as pd
import pytest

from clipbench import cli, plots


def summary_rows():
    """summary.csv rows: avg@k of the base model and two seeds of two methods."""
    rows = [("base", -1, 0.40), ("ppo", 0, 0.50), ("ppo", 1, 0.60), ("fspo", 0, 0.70), ("fspo", 1, 0.50)]
    return pd.DataFrame(
        [
            {
                "model": "x",
                "method": m,
                "seed": s,
                "benchmark": "synthetic_test",
                "metric": "avg@k",
                "k": 4,
                "value": v,
            }
            for m, s, v in rows
        ]
    )


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test (so a test's plot does not leak into others)."""
    monkeypatch.setattr(plots, "PLOTS", dict(plots.PLOTS))
    return plots.PLOTS


def fairness_inputs():
    bins = pd.DataFrame(
        [
            {"scope": "pooled", "method": m, "seed": -1, "length_mean": L, "seq_out": r, "abs_s_median": s}
            for m, k in (("fspo", 1.0), ("gspo", 2.0))
            for L, r, s in ((10, 0.05 * k, 0.01), (40, 0.1 * k, 0.2), (90, 0.2 * k, 1.5))
        ]
    )
    groups = pd.DataFrame(
        [{"scope": "pooled", "method": m, "seed": -1, "clip_column": "seq_out"} for m in ("fspo", "gspo")]
    )
    return {"fairness_bins": bins, "fairness": groups}


def test_plots_are_byte_reproducible(tmp_path):
    # A plot drawn twice from the same tidy data is the same file (no unseeded jitter, no
    # timestamps): a re-run of a study reproduces its figures as well as its tables.
    metrics = pd.DataFrame(
        [
            {"method": m, "seed": seed, "step": step, "reward_mean": 0.1 * step + seed}
            | {"clip_frac": 0.01 * step, "response_length_mean": 20 + step}
            for m in ("fspo", "gspo")
            for seed in (0, 1)
            for step in range(4)
        ]
    )
    frames = {"summary": summary_rows(), "metrics": metrics, **fairness_inputs()}
    for name in plots.PLOTS:
        first = plots.write(name, frames, tmp_path / f"{name}-1.png").read_bytes()
        assert plots.write(name, frames, tmp_path / f"{name}-2.png").read_bytes() == first


def test_the_accuracy_plot_draws_one_point_per_evaluation(tmp_path):
    # summary.csv's pooled rows (a method's seeds together, with intervals) are means of the
    # evaluations' rows: drawn too, they would add a point per method. The plot is the same without them.
    runs = summary_rows().assign(scope="seed")
    pooled = runs.groupby("method", as_index=False).agg(value=("value", "mean"))
    pooled = pooled.assign(scope="pooled", model=pooled.method, seed=-1, benchmark="synthetic_test")
    pooled = pooled.assign(metric="avg@k", k=4, value=pooled.value + 0.2)  # moved: it would show
    both = pd.concat([pooled, runs], ignore_index=True)
    with_pooled = plots.write("accuracy", {"summary": both}, tmp_path / "a.png").read_bytes()
    assert plots.write("accuracy", {"summary": runs}, tmp_path / "b.png").read_bytes() == with_pooled
    without_scope = plots.write("accuracy", {"summary": summary_rows()}, tmp_path / "c.png").read_bytes()
    assert without_scope == with_pooled  # a summary.csv from before the scope column: every row a run


def test_a_registered_function_is_a_plot_the_cli_draws(registry, tmp_path):
    @plots.plot("accuracy_by_seed", inputs=("summary",))
    def accuracy_by_seed(summary):
        """Accuracy per seed."""
        plt, sns = plots.pyplot()
        fig, ax = plt.subplots()
        sns.pointplot(data=summary, x="seed", y="value", ax=ax)
        return fig

    assert registry["accuracy_by_seed"].inputs == ("summary",)
    assert registry["accuracy_by_seed"].description == "Accuracy per seed."
    summary = tmp_path / "summary.csv"
    summary_rows().to_csv(summary, index=False)
    out = tmp_path / "plots"
    assert (
        cli.main(["report", "--summary", str(summary), "--plots", str(out), "--only", "accuracy_by_seed"])
        == 0
    )
    assert [p.name for p in out.iterdir()] == ["accuracy_by_seed.png"]


def test_registering_checks_the_name_the_inputs_and_duplicates(registry):
    def draw(summary):
        raise AssertionError("never drawn")

    with pytest.raises(ValueError, match="plot name: 'a/b' is not a valid name"):
        plots.plot("a/b", inputs=("summary",))(draw)
    with pytest.raises(ValueError, match=r"inputs \['records'\] must be some of"):
        plots.plot("x", inputs=("records",))(draw)
    with pytest.raises(ValueError, match="plot 'accuracy' is registered twice"):
        plots.plot("accuracy", inputs=("summary",))(draw)
    with pytest.raises(ValueError, match="unknown plot 'nope'; registered: accuracy, clip_by_length"):
        plots.get_plot("nope")


def test_each_plot_says_what_its_inputs_lack():
    frames = {"summary": summary_rows().assign(metric="pass@k"), **fairness_inputs()}
    assert plots.unmet_needs("accuracy", frames) == "--summary with avg@k rows (it has none)"
    assert plots.unmet_needs("clip_by_length", frames) is None
    frames["fairness"] = frames["fairness"].assign(clip_column="seq_clip")
    assert plots.unmet_needs("clip_by_length", frames) == "--fairness-bins with its clip column 'seq_clip'"


def test_report_draws_only_the_plots_named(tmp_path):
    summary = tmp_path / "summary.csv"
    summary_rows().to_csv(summary, index=False)
    done = subprocess.run(
        [sys.executable, "-m", "clipbench.cli", "report", "--summary", str(summary)]
        + ["--plots", str(tmp_path / "p"), "--only", "accuracy", "clip_by_length"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and not (tmp_path / "p").exists()
    assert done.stderr.strip() == (
        "clipbench report: error: --plots: the clip_by_length plot needs --fairness "
        "(fairness.csv, the fairness metrics per method and per run); --plots: the clip_by_length plot "
        "needs --fairness-bins (fairness_bins.csv, clip rate and median |S| per length bin)"
    )
