"""The study's plots: one function per plot, registered by name. A new plot is one function here.

A plot function draws one matplotlib figure from the study's tidy inputs and returns it::

    @plot("reward_by_step", inputs=("metrics",))
    def reward_by_step(metrics):
        plt, sns = pyplot()
        fig, ax = plt.subplots()
        sns.lineplot(data=metrics, x="step", y="reward_mean", hue="method", ax=ax)
        return fig

The registry (:data:`PLOTS`) drives everything else: `clipbench report --plots DIR` draws every
registered plot (or those named by ``--only``), each into ``DIR/{name}.png``
(:func:`clipbench.artifacts.plot_path`); the study's `plot` rule (``workflows/rules/report.smk``)
builds ``results/plots/{name}.png`` for each name, with the input files the plot declares, and
``snakemake --cores all`` asks for all of them. The inputs a plot may declare (:data:`INPUTS`):

* ``summary``: summary.csv, one row per (scope, model, benchmark, metric) (clipbench.report);
* ``fairness``: fairness.csv, the length-fairness metrics per method (scope "pooled", seed -1)
  and per run (scope "seed");
* ``fairness_bins``: fairness_bins.csv, the same groups per length bin;
* ``metrics``: the runs' metrics.jsonl, one row per (method, seed, step).

A plot may also say what it needs beyond its inputs' existence (``needs``: a function of the same
inputs returning a phrase, or None), so that a report checks every output before it writes any.
Figures are byte-reproducible: no unseeded jitter, no timestamp in the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipbench import artifacts
from clipbench.report import missing_columns


@dataclass(frozen=True)
class PlotInput:
    """An input a plot may declare: what it holds, the `clipbench report` flag that gives it, and
    its file in a study (None for the runs' metrics: one metrics.jsonl per run directory)."""

    holds: str
    flag: str
    study_file: str | None


#: Every input a plot may declare, by name (the plot function's keyword argument).
INPUTS = {
    "summary": PlotInput(
        "summary.csv, accuracy per model, benchmark and metric", "--summary", artifacts.SUMMARY_CSV
    ),
    "fairness": PlotInput(
        "fairness.csv, the fairness metrics per method and per run", "--fairness", artifacts.FAIRNESS_CSV
    ),
    "fairness_bins": PlotInput(
        "fairness_bins.csv, clip rate and median |S| per length bin",
        "--fairness-bins",
        artifacts.FAIRNESS_BINS_CSV,
    ),
    "metrics": PlotInput("the run directories' metrics.jsonl", "--runs", None),
}
#: The summary.csv columns the accuracy plot reads.
SUMMARY_NEEDS = ["method", "seed", "benchmark", "metric", "k", "value"]
TRAINING_CURVE_PANELS = [
    ("reward_mean", "reward"),
    ("clip_frac", "clip fraction"),
    ("response_length_mean", "response length"),
]


@dataclass(frozen=True)
class Plot:
    """A registered plot: ``draw(**inputs) -> Figure``; ``needs(**inputs) -> phrase | None``."""

    name: str
    draw: Callable
    inputs: tuple[str, ...]
    needs: Callable | None = None

    @property
    def description(self) -> str:
        return (self.draw.__doc__ or "").strip().split("\n\n")[0]


#: Every plot, by name, in registration order.
PLOTS: dict[str, Plot] = {}


def plot(name: str, *, inputs: tuple[str, ...], needs: Callable | None = None):
    """Register the decorated function as the plot ``name`` drawn from ``inputs`` (keys of
    :data:`INPUTS`, passed as keyword arguments of those names)."""
    artifacts.check_name(name, "plot name")
    unknown = [i for i in inputs if i not in INPUTS]
    if unknown or not inputs:
        raise ValueError(f"plot {name!r}: inputs {list(inputs)} must be some of {list(INPUTS)}")

    def register(draw: Callable) -> Callable:
        if name in PLOTS:
            raise ValueError(
                f"plot {name!r} is registered twice ({PLOTS[name].draw.__qualname__}, {draw.__qualname__})"
            )
        PLOTS[name] = Plot(name, draw, tuple(inputs), needs)
        return draw

    return register


def get_plot(name: str) -> Plot:
    if name not in PLOTS:
        raise ValueError(f"unknown plot {name!r}; registered: {', '.join(PLOTS)}")
    return PLOTS[name]


def unmet_needs(name: str, frames: dict[str, pd.DataFrame]) -> str | None:
    """What plot ``name`` needs from ``frames`` (its inputs, by input name) and they lack, as a
    phrase completing "the <name> plot needs ..."; None when it can be drawn."""
    entry = get_plot(name)
    return entry.needs(**{i: frames[i] for i in entry.inputs}) if entry.needs else None


def write(name: str, frames: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Draw plot ``name`` from ``frames`` (its inputs, by input name) and save it at ``path``."""
    entry = get_plot(name)
    return save_figure(entry.draw(**{i: frames[i] for i in entry.inputs}), path)


# --------------------------------------------------------------------------- shared look


def pyplot():
    """matplotlib's pyplot (headless) and seaborn with the suite's theme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` at ``path`` (PNG, 120 dpi, no timestamp: byte-reproducible) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def clip_rate_lines(sns, ax, data: pd.DataFrame, x: str, y: str) -> None:
    """One marked line per method: the shared look of every clip-rate-by-length plot."""
    sns.lineplot(data=data, x=x, y=y, hue="method", style="method", markers=True, dashes=False, ax=ax)


# --------------------------------------------------------------------------- the plots


def _accuracy_needs(summary: pd.DataFrame) -> str | None:
    lacking = missing_columns(summary, SUMMARY_NEEDS)
    if lacking:
        return f"--summary with the columns {lacking} (a summary.csv from `clipbench aggregate`)"
    if not (summary["metric"] == "avg@k").any():
        return "--summary with avg@k rows (it has none)"
    return None


@plot("accuracy", inputs=("summary",), needs=_accuracy_needs)
def accuracy(summary: pd.DataFrame):
    """Mean (bar) and per-seed points of avg@k per method, one panel per benchmark."""
    plt, sns = pyplot()
    acc = summary[summary.metric == "avg@k"]
    if "scope" in acc.columns:  # one point per evaluation: summary.csv's pooled rows are means of them
        acc = acc[acc.scope == "seed"]
    benches = sorted(acc.benchmark.unique())
    order = [artifacts.BASE] + sorted(m for m in acc.method.unique() if m != artifacts.BASE)
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.8), squeeze=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        data = acc[acc.benchmark == bench]
        sns.barplot(data=data, x="method", y="value", order=order, errorbar=None, alpha=0.6, ax=ax)
        # No jitter: seaborn's jitter draws from an unseeded RNG, and plots must be reproducible.
        sns.stripplot(
            data=data, x="method", y="value", order=order, color="black", size=5, jitter=False, ax=ax
        )
        ax.set_title(f"{bench} (avg@{int(data.k.iloc[0])})")
        ax.set_xlabel("")
        ax.set_ylabel("accuracy")
        ax.tick_params(axis="x", rotation=30)
    return fig


def _clip_by_length_needs(fairness_bins: pd.DataFrame, fairness: pd.DataFrame) -> str | None:
    lacking = missing_columns(fairness_bins, ["scope", "method", "length_mean"])
    if lacking:
        return f"--fairness-bins with the columns {lacking} (a fairness_bins.csv from `clipbench aggregate`)"
    lacking = missing_columns(fairness, ["scope", "method", "clip_column"])
    if lacking:
        return f"--fairness with the columns {lacking} (a fairness.csv from `clipbench aggregate`)"
    if not (fairness_bins["scope"] == "pooled").any() or not (fairness["scope"] == "pooled").any():
        return "--fairness and --fairness-bins with pooled rows (one has none)"
    column = _clip_column(fairness)
    if column not in fairness_bins.columns:
        return f"--fairness-bins with its clip column {column!r}"
    return None


def _clip_column(fairness: pd.DataFrame) -> str:
    """The clip indicator the fairness metrics were computed on (`seq_out` or `seq_clip`)."""
    return str(fairness.loc[fairness["scope"] == "pooled", "clip_column"].iloc[0])


@plot("clip_by_length", inputs=("fairness_bins", "fairness"), needs=_clip_by_length_needs)
def clip_by_length(fairness_bins: pd.DataFrame, fairness: pd.DataFrame):
    """Left: clip rate against length bin (bin mean length, log x), a line per method (seeds
    pooled). Right, when the records had S: median |S| / sqrt(L) per bin, which is flat exactly
    when FSPO's sqrt(L) band clips every length alike (the S-growth exponent is 1/2)."""
    plt, sns = pyplot()
    pooled = fairness_bins[fairness_bins.scope == "pooled"]
    column = _clip_column(fairness)
    with_s = "abs_s_median" in pooled and pooled["abs_s_median"].notna().any()
    fig, axes = plt.subplots(
        1, 2 if with_s else 1, figsize=(12, 4.2) if with_s else (6.5, 4.2), squeeze=False
    )
    ax = axes[0, 0]
    clip_rate_lines(sns, ax, pooled, x="length_mean", y=column)
    ax.set_xscale("log")
    ax.set_xlabel("response length (bin mean, tokens)")
    ax.set_ylabel(f"clip rate ({column})")
    ax.set_title("Clip rate by response length (training records)")
    if with_s:
        ax = axes[0, 1]
        scaled = pooled.assign(s_per_root_l=pooled["abs_s_median"] / np.sqrt(pooled["length_mean"]))
        clip_rate_lines(sns, ax, scaled, x="length_mean", y="s_per_root_l")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("response length (bin mean, tokens)")
        ax.set_ylabel("median |S| / sqrt(L)")
        ax.set_title("Flat = FSPO's sqrt(L) band fits (S-growth exponent 1/2)")
    return fig


def _training_curves_needs(metrics: pd.DataFrame) -> str | None:
    needed = ["step", *(c for c, _ in TRAINING_CURVE_PANELS)]
    lacking = missing_columns(metrics, needed)
    if lacking:
        return f"--runs whose metrics.jsonl have the columns {lacking}"
    runs = metrics.groupby(["method", "seed"])[needed]
    without = [f"{m}/seed{s}" for (m, s), frame in runs if frame.isna().all().any()]
    if without:
        return f"--runs whose metrics.jsonl have the columns {needed} (not in {', '.join(without)})"
    return None


@plot("training_curves", inputs=("metrics",), needs=_training_curves_needs)
def training_curves(metrics: pd.DataFrame):
    """Reward, clip fraction and mean response length over steps (mean over seeds, band = range)."""
    plt, sns = pyplot()
    fig, axes = plt.subplots(1, len(TRAINING_CURVE_PANELS), figsize=(14, 3.8))
    for ax, (column, label) in zip(axes, TRAINING_CURVE_PANELS, strict=True):
        sns.lineplot(data=metrics, x="step", y=column, hue="method", errorbar=("pi", 100), ax=ax)
        ax.set_ylabel(label)
        if ax is not axes[-1]:
            ax.get_legend().remove()
    return fig
