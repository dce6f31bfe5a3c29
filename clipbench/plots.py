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
inputs returning a phrase, or None), so that a report checks every output before it writes any,
and declare options (``options``: names of :data:`OPTIONS`, passed as keyword arguments): each
option is a `clipbench report` flag and a key of the study config's ``report`` section
(``clipbench.study.Report``), with one default, :attr:`PlotOption.default`.

The look every plot shares: one colour (and marker) per method, the same in every plot and every
study, from the method registry's order (:func:`method_colours`); a rule's clipping level, token
or sequence, from the registry too (:func:`method_level`), so that a new rule lands in its panel
with no edit here; response lengths on a log axis labelled with plain numbers (16, 32, 64, ...:
:func:`length_ticks`); and a caption under each figure saying what its lines, points and bands
are. Intervals are the ones the tidy files hold (``_lo``/``_hi``, ``lo``/``hi``: clipbench.stats),
never recomputed here. Figures are byte-reproducible: no unseeded jitter, no timestamp in the file.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipbench import artifacts, methods, stats
from clipbench.report import CLIP_COLUMN_MEANING, missing_columns


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


@dataclass(frozen=True)
class PlotOption:
    """An option a plot may declare (an integer >= 1): its default, what it sets, and the
    `clipbench report` flag that gives it; the study config's ``report.<name>`` sets it."""

    default: int
    help: str
    flag: str


#: Every option a plot may declare, by name (the plot function's keyword argument, the key of the
#: study config's report section).
OPTIONS = {
    "smoothing_window": PlotOption(
        1,
        "training curves: each run's series is the trailing mean over this many RL steps (fewer at the "
        "start) before the seeds are combined; 1: not smoothed",
        "--smoothing-window",
    ),
}

#: The summary.csv columns the accuracy plot reads.
SUMMARY_NEEDS = ["scope", "method", "seed", "benchmark", "metric", "k", "value", "lo", "hi"]
#: The fairness.csv columns the clip-by-length plot reads.
FAIRNESS_NEEDS = ["scope", "method", "clip_column", "clip_rate"]
#: The clipping levels, in panel order (clipbench.methods: a rule's ``level``).
LEVELS = ("token", "sequence")
#: What a clip rate counts at each level: a token-level rule's rate is a share of tokens, a
#: sequence-level rule's a share of whole responses, so the two never share an axis.
LEVEL_UNITS = {"token": "tokens", "sequence": "responses"}
#: The training curves' panels: metrics.jsonl column, axis label, the level whose rules it shows
#: (None: every rule).
TRAINING_CURVE_PANELS = [
    ("reward_mean", "reward (mean over the step's rollouts)", None),
    ("response_length_mean", "response length (mean, tokens)", None),
    *(("clip_frac", f"clip fraction (share of {LEVEL_UNITS[lvl]})", lvl) for lvl in LEVELS),
]
#: The colour of the base model, and of reference lines that belong to no method.
BASE_COLOUR = "#4d4d4d"
# Qualitative colours for the registered rules, in registry order: tab10 without its grey (the base
# model's), then darker ones; beyond these, evenly spaced hues.
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#9a9a00", "#17becf",
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
]  # fmt: skip
_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "<", ">", "p", "h", "*"]


@dataclass(frozen=True)
class Plot:
    """A registered plot: ``draw(**inputs, **options) -> Figure``; ``needs(**inputs) -> phrase | None``."""

    name: str
    draw: Callable
    inputs: tuple[str, ...]
    needs: Callable | None = None
    options: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return (self.draw.__doc__ or "").strip().split("\n\n")[0]


#: Every plot, by name, in registration order.
PLOTS: dict[str, Plot] = {}


def plot(name: str, *, inputs: tuple[str, ...], needs: Callable | None = None, options: tuple[str, ...] = ()):
    """Register the decorated function as the plot ``name`` drawn from ``inputs`` (keys of
    :data:`INPUTS`, passed as keyword arguments of those names) with ``options`` (keys of
    :data:`OPTIONS`, passed as keyword arguments too)."""
    artifacts.check_name(name, "plot name")
    unknown = [i for i in inputs if i not in INPUTS]
    if unknown or not inputs:
        raise ValueError(f"plot {name!r}: inputs {list(inputs)} must be some of {list(INPUTS)}")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"plot {name!r}: options {list(options)} must be some of {list(OPTIONS)}")

    def register(draw: Callable) -> Callable:
        if name in PLOTS:
            raise ValueError(
                f"plot {name!r} is registered twice ({PLOTS[name].draw.__qualname__}, {draw.__qualname__})"
            )
        PLOTS[name] = Plot(name, draw, tuple(inputs), needs, tuple(options))
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


def draw(name: str, frames: dict[str, pd.DataFrame], options: Mapping[str, int] | None = None):
    """The figure of plot ``name`` from ``frames`` (its inputs, by input name) and ``options`` (by
    option name; those the plot does not declare are ignored, those it declares default to
    :attr:`PlotOption.default`)."""
    entry = get_plot(name)
    options = options or {}
    chosen = {o: options.get(o, OPTIONS[o].default) for o in entry.options}
    return entry.draw(**{i: frames[i] for i in entry.inputs}, **chosen)


def write(
    name: str, frames: dict[str, pd.DataFrame], path: str | Path, options: Mapping[str, int] | None = None
) -> Path:
    """Draw plot ``name`` (:func:`draw`) and save it at ``path``."""
    return save_figure(draw(name, frames, options), path)


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
    """Save ``fig`` at ``path`` (PNG, 120 dpi, cropped to what is drawn, the caption included; no
    timestamp: byte-reproducible) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


def method_level(name: str) -> str | None:
    """A registered rule's clipping level ("token" or "sequence", its class's ``level``); None for
    the base model and for names the registry does not know."""
    return methods.get_method_class(name).level if name in methods.available_methods() else None


def method_order(names: Iterable[str]) -> list[str]:
    """``names`` in the order every plot shows them: the base model first, then the registered
    rules in registry order (clipbench.methods.available_methods), then unregistered names, sorted."""
    names = set(names)
    registered = methods.available_methods()
    return (
        ([artifacts.BASE] if artifacts.BASE in names else [])
        + [m for m in registered if m in names]
        + sorted(names - set(registered) - {artifacts.BASE})
    )


def method_colours(names: Iterable[str]) -> dict[str, str]:
    """One colour per name, the same in every plot and study: the i-th registered rule
    (clipbench.methods.available_methods) gets palette colour i, the base model
    :data:`BASE_COLOUR`, unregistered names the colours after the registered ones (sorted)."""
    import matplotlib.colors as mcolors
    import seaborn as sns

    registered = methods.available_methods()
    extra = sorted(set(names) - set(registered) - {artifacts.BASE})
    every = registered + extra
    palette = list(_PALETTE)
    if len(every) > len(palette):
        palette += [mcolors.to_hex(c) for c in sns.color_palette("husl", len(every) - len(palette))]
    colours = dict(zip(every, palette, strict=False))
    return {n: BASE_COLOUR if n == artifacts.BASE else colours[n] for n in names}


def method_marker(name: str) -> str:
    """One marker per registered rule (registry order, cycling), a circle for any other name."""
    registered = methods.available_methods()
    return _MARKERS[registered.index(name) % len(_MARKERS)] if name in registered else "o"


def by_level(names: Iterable[str]) -> dict[str, list[str]]:
    """``{level: names of that level}`` for the levels of :data:`LEVELS` some name has, in plot
    order (:func:`method_order`)."""
    ordered = method_order(names)
    found = {lvl: [n for n in ordered if method_level(n) == lvl] for lvl in LEVELS}
    return {lvl: names for lvl, names in found.items() if names}


def unregistered(names: Iterable[str]) -> list[str]:
    """The names that are neither the base model nor a registered rule, sorted."""
    return sorted({n for n in names if n != artifacts.BASE and method_level(n) is None})


def _registered_needs(names: Iterable[str], flag: str) -> str | None:
    unknown = unregistered(names)
    if unknown:
        return (
            f"{flag} whose methods are registered rules (a rule's level, token or sequence, picks its "
            f"panel); not registered: {', '.join(unknown)}"
        )
    return None


def length_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log length axis spanning [low, high]: the powers of two inside it (16, 32,
    64, ...); with fewer than three, the powers of two and their 1.5 multiples (16, 24, 32, ...); with
    fewer than two still, the nearest of those below ``low`` and above ``high``."""
    if not (0 < low <= high) or not math.isfinite(high):
        raise ValueError(f"length_ticks: need 0 < low <= high, got {low}, {high}")
    exponents = range(math.floor(math.log2(low)) - 1, math.ceil(math.log2(high)) + 2)
    powers = [2.0**e for e in exponents]
    inside = [t for t in powers if low <= t <= high]
    if len(inside) >= 3:
        return inside
    both = sorted(powers + [1.5 * t for t in powers])
    inside = [t for t in both if low <= t <= high]
    if len(inside) >= 2:
        return inside
    below = max(t for t in both if t < low) if not inside or inside[0] > low else None
    above = min(t for t in both if t > high) if not inside or inside[-1] < high else None
    return [t for t in (below, *inside, above) if t is not None]


def set_length_axis(ax, lengths: Iterable[float]) -> None:
    """A log x axis for response lengths, ticked by :func:`length_ticks` and labelled with plain
    numbers (16, not 2^4 or 1.6 x 10^1), no minor ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    values = [float(v) for v in lengths if np.isfinite(v) and v > 0]
    ticks = length_ticks(min(values), max(values))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    low, high = min(min(values), ticks[0]), max(max(values), ticks[-1])
    ax.set_xlim(low / 1.08, high * 1.08)


def clip_rate_lines(sns, ax, data: pd.DataFrame, x: str, y: str) -> None:
    """One marked line per method, in its colour (:func:`method_colours`) and plot order: the
    simulation's clip-rate-by-length panels (clipbench.simulate)."""
    names = method_order(data["method"].unique())
    sns.lineplot(
        data=data,
        x=x,
        y=y,
        hue="method",
        hue_order=names,
        palette=method_colours(names),
        style="method",
        style_order=names,
        markers=[method_marker(m) for m in names],
        dashes=False,
        ax=ax,
    )


def caption(fig, text: str) -> None:
    """``text`` under the figure, wrapped to its width (:func:`save_figure` keeps it in the file)."""
    width = max(60, int(fig.get_figwidth() * 15))
    fig.text(0.01, 0.0, textwrap.fill(text, width), ha="left", va="top", fontsize=9, gid="caption")


def _interval_text() -> str:
    return f"{stats.DEFAULT_LEVEL:.0%} percentile bootstrap interval (clipbench/stats.py)"


# --------------------------------------------------------------------------- accuracy


def _accuracy_needs(summary: pd.DataFrame) -> str | None:
    lacking = missing_columns(summary, SUMMARY_NEEDS)
    if lacking:
        return f"--summary with the columns {lacking} (a summary.csv from `clipbench aggregate`)"
    acc = summary[summary["metric"] == "avg@k"]
    if acc.empty:
        return "--summary with avg@k rows (it has none)"
    with_pooled = acc[acc.scope == "pooled"]
    pooled = set(zip(with_pooled.method, with_pooled.benchmark, strict=True))
    lacking = sorted(
        {f"{m} on {b}" for m, b in zip(acc.method, acc.benchmark, strict=True) if (m, b) not in pooled}
    )
    if lacking:
        return f"--summary with a pooled avg@k row (the value and its interval) for {', '.join(lacking)}"
    return None


#: Where a method's seeds sit beside its pooled point on the accuracy plot's x axis (the pooled
#: point at 0): deterministic, never jitter.
SEED_OFFSETS = (0.16, 0.34)


#: The accuracy plot's widest row of panels (inches): wider, the benchmarks' panels wrap to rows.
ACCURACY_MAX_WIDTH = 14.0


def seed_offsets(n: int) -> np.ndarray:
    """x offsets of ``n`` seed points beside the pooled point: spread evenly over
    :data:`SEED_OFFSETS` (the middle of it for one seed)."""
    low, high = SEED_OFFSETS
    return np.full(1, (low + high) / 2) if n == 1 else np.linspace(low, high, n)


@plot("accuracy", inputs=("summary",), needs=_accuracy_needs)
def accuracy(summary: pd.DataFrame):
    """avg@k per method, one panel per benchmark: each method's pooled value (seeds together) with
    its bootstrap interval, each seed's value beside it, the base model as a dashed reference."""
    plt, _ = pyplot()
    acc = summary[summary.metric == "avg@k"]
    pooled = acc[acc.scope == "pooled"].set_index(["benchmark", "method"])
    runs = acc[(acc.scope == "seed") & (acc.seed >= 0)]
    benches = sorted(acc.benchmark.unique())
    order = method_order(acc.method.unique())
    colours = method_colours(order)
    width = max(4.2, 0.75 * len(order) + 1.2)
    ncols = max(1, min(len(benches), int(ACCURACY_MAX_WIDTH // width)))  # many methods: benchmarks stacked
    nrows = math.ceil(len(benches) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 4.2 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(benches) :]:
        fig.delaxes(ax)
    for ax, bench in zip(axes.flat, benches, strict=False):
        here = [m for m in order if (bench, m) in pooled.index]
        for x, m in enumerate(here):
            row = pooled.loc[(bench, m)]
            value, low, high = float(row["value"]), float(row["lo"]), float(row["hi"])
            bars = ax.errorbar(
                [x],
                [value],
                # clamped at 0: a degenerate percentile interval can sit a rounding error inside its
                # point, and matplotlib refuses a negative error
                yerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]],
                fmt=method_marker(m) if m != artifacts.BASE else "s",
                color=colours[m],
                markersize=8,
                capsize=5,
                elinewidth=1.8,
                zorder=3,
            )
            bars.lines[0].set_gid(f"{m}/pooled")
            bars.lines[2][0].set_gid(f"{m}/interval")
            seeds = runs[(runs.benchmark == bench) & (runs.method == m)].sort_values("seed")
            if not seeds.empty:
                ax.plot(
                    x + seed_offsets(len(seeds)),
                    seeds["value"].to_numpy(dtype=float),
                    linestyle="none",
                    marker="o",
                    markersize=5,
                    markerfacecolor="white",
                    markeredgecolor=colours[m],
                    markeredgewidth=1.4,
                    zorder=4,
                    gid=f"{m}/seeds",
                )
            if m == artifacts.BASE:
                ax.axhline(
                    value, color=BASE_COLOUR, linestyle="--", linewidth=1, zorder=1, gid="base/reference"
                )
        ax.set_xticks(range(len(here)), here, rotation=30, ha="right")
        for label, m in zip(ax.get_xticklabels(), here, strict=True):
            label.set_color(colours[m])
        ax.set_xlim(-0.6, len(here) - 0.4)
        ax.set_title(f"{bench} (avg@{int(acc[acc.benchmark == bench].k.iloc[0])})")
        ax.set_xlabel("")
        ax.set_ylabel("accuracy (avg@k)")
    caption(
        fig,
        "Filled marker and bar: a method's avg@k with its seeds pooled (the mean over seeds of each run's "
        f"avg@k) and its {_interval_text()}: seeds and problems resampled together, the base model's (one "
        "run) problems only. Open circles: each seed's own avg@k, in seed order left to right. Dashed grey: "
        "the base model every run starts from.",
    )
    return fig


# --------------------------------------------------------------------------- clip rate by length


def _clip_column(fairness: pd.DataFrame) -> str:
    """The clip indicator the fairness metrics were computed on (`seq_out` or `seq_clip`)."""
    return str(fairness.loc[fairness["scope"] == "pooled", "clip_column"].iloc[0])


def _clip_by_length_needs(fairness_bins: pd.DataFrame, fairness: pd.DataFrame) -> str | None:
    lacking = missing_columns(fairness_bins, ["scope", "method", "seed", "length_mean"])
    if lacking:
        return f"--fairness-bins with the columns {lacking} (a fairness_bins.csv from `clipbench aggregate`)"
    lacking = missing_columns(fairness, FAIRNESS_NEEDS)
    if lacking:
        return f"--fairness with the columns {lacking} (a fairness.csv from `clipbench aggregate`)"
    if not (fairness_bins["scope"] == "pooled").any() or not (fairness["scope"] == "pooled").any():
        return "--fairness and --fairness-bins with pooled rows (one has none)"
    column = _clip_column(fairness)
    if column not in fairness_bins.columns:
        return f"--fairness-bins with its clip column {column!r}"
    lacking = missing_columns(fairness_bins, [f"{column}_lo", f"{column}_hi"])
    if lacking:
        return (
            f"--fairness-bins with the interval columns {lacking} (a fairness_bins.csv from `clipbench "
            "aggregate`)"
        )
    binned = set(fairness_bins.loc[fairness_bins.scope == "pooled", "method"])
    lacking = sorted(binned - set(fairness.loc[fairness.scope == "pooled", "method"]))
    if lacking:
        return f"--fairness with a pooled row (the mean clip rate) for {', '.join(lacking)}"
    return _registered_needs(binned, "--fairness-bins")


def _rate_lines(
    ax, method: str, colour: str, pooled, seeds, column: str, mean_rate: float, alpha: float
) -> None:
    """One method on a clip-rate panel: its pooled rate per bin (thick, marked) with its interval
    band, a thin line per seed, and a dashed line at its mean rate over the pooled bins' span."""
    pooled = pooled.sort_values("length_mean")
    x = pooled["length_mean"].to_numpy(dtype=float)
    ax.fill_between(
        x,
        pooled[f"{column}_lo"].to_numpy(dtype=float),
        pooled[f"{column}_hi"].to_numpy(dtype=float),
        color=colour,
        alpha=alpha,
        linewidth=0,
        gid=f"{method}/interval",
    )
    for seed, run in seeds.groupby("seed", sort=True):
        run = run.sort_values("length_mean")
        ax.plot(
            run["length_mean"],
            run[column],
            color=colour,
            linewidth=0.8,
            alpha=0.55,
            gid=f"{method}/seed{seed}",
        )
    ax.plot(
        [x.min(), x.max()],
        [mean_rate, mean_rate],
        color=colour,
        linestyle="--",
        linewidth=1.1,
        gid=f"{method}/mean",
    )
    ax.plot(
        x,
        pooled[column].to_numpy(dtype=float),
        color=colour,
        marker=method_marker(method),
        markersize=6,
        linewidth=2.2,
        label=method,
        gid=f"{method}/pooled",
    )


@plot("clip_by_length", inputs=("fairness_bins", "fairness"), needs=_clip_by_length_needs)
def clip_by_length(fairness_bins: pd.DataFrame, fairness: pd.DataFrame):
    """Clip rate against response length (bin mean length, log axis), one panel per clipping level
    (a token-level rule's rate counts tokens, a sequence-level rule's whole responses): per method
    the pooled rate with its bootstrap band, a thin line per seed and a dashed line at its mean
    rate (flat: every length clipped alike). Last panel, when the records had S: median |S| /
    sqrt(L) per bin, which is flat exactly when FSPO's sqrt(L) band clips every length alike."""
    plt, _ = pyplot()
    column = _clip_column(fairness)
    pooled = fairness_bins[fairness_bins.scope == "pooled"]
    seeds = fairness_bins[fairness_bins.scope == "seed"]
    means = fairness[fairness.scope == "pooled"].set_index("method")["clip_rate"]
    levels = by_level(pooled.method.unique())
    colours = method_colours(pooled.method.unique())
    with_s = "abs_s_median" in pooled and pooled["abs_s_median"].notna().any()
    n_panels = len(levels) + bool(with_s)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.6 * n_panels, 4.4), squeeze=False)
    meaning = CLIP_COLUMN_MEANING.get(column, "clip rate")
    lengths = fairness_bins["length_mean"]
    for ax, (lvl, names) in zip(axes[0], levels.items(), strict=False):
        alpha = 0.15 if len(names) <= 3 else 0.09  # many overlapping bands: lighter
        for m in names:
            here = pooled[pooled.method == m]
            _rate_lines(ax, m, colours[m], here, seeds[seeds.method == m], column, float(means[m]), alpha)
        set_length_axis(ax, lengths)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("response length (bin mean, tokens)")
        ax.set_ylabel(f"{meaning} ({column}), share of {LEVEL_UNITS[lvl]}")
        ax.set_title(f"{lvl.capitalize()}-level rules")
        ax.legend(title="method", fontsize=8, title_fontsize=9)
    if with_s:
        ax = axes[0, -1]
        for m in method_order(pooled.method.unique()):
            here = pooled[pooled.method == m].sort_values("length_mean")
            root = np.sqrt(here["length_mean"].to_numpy(dtype=float))
            if {"abs_s_median_lo", "abs_s_median_hi"} <= set(here.columns):
                ax.fill_between(
                    here["length_mean"],
                    here["abs_s_median_lo"].to_numpy(dtype=float) / root,
                    here["abs_s_median_hi"].to_numpy(dtype=float) / root,
                    color=colours[m],
                    alpha=0.08,
                    linewidth=0,
                    gid=f"{m}/s_interval",
                )
            ax.plot(
                here["length_mean"],
                here["abs_s_median"].to_numpy(dtype=float) / root,
                color=colours[m],
                marker=method_marker(m),
                markersize=5,
                linewidth=1.6,
                label=m,
                gid=f"{m}/s_pooled",
            )
        ax.set_yscale("log")
        set_length_axis(ax, lengths)
        ax.set_xlabel("response length (bin mean, tokens)")
        ax.set_ylabel("median |S| / sqrt(L)")
        ax.set_title("Flat = FSPO's sqrt(L) band fits (S-growth exponent 1/2)")
        ax.legend(title="method", fontsize=8, title_fontsize=9)
    text = (
        f"Thick marked line: a method's {meaning} ({column}) in each response-length bin, its seeds pooled, "
        f"at the bin's mean length; band: its {_interval_text()}, the runs and then each run's RL steps "
        "resampled; thin lines: each seed alone; dashed: the method's mean rate over all lengths, the line "
        "a rule that clips every length alike would draw. A token-level rule's rate is a share of tokens, a "
        "sequence-level rule's a share of whole responses: one panel per level. Off-policy updates only "
        "(the first update of each step, at ratio 1, cannot clip)."
    )
    if with_s:
        text += (
            " Last panel: median |S| / sqrt(L) per bin, seeds pooled, with its interval (the median's, "
            "divided by sqrt(L))."
        )
    caption(fig, text)
    _rate_key(fig)
    return fig


def _rate_key(fig) -> None:
    """The key of the clip-rate panels' line styles, above the figure (colours name the methods)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    grey = BASE_COLOUR
    key = {
        "seeds pooled": Line2D([], [], color=grey, linewidth=2.2, marker="o", markersize=5),
        f"{stats.DEFAULT_LEVEL:.0%} bootstrap interval": Patch(facecolor=grey, alpha=0.25, linewidth=0),
        "one seed": Line2D([], [], color=grey, linewidth=0.8, alpha=0.7),
        "mean rate over all lengths (flat reference)": Line2D(
            [], [], color=grey, linestyle="--", linewidth=1.1
        ),
    }
    fig.legend(
        list(key.values()),
        list(key),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(key),
        fontsize=9,
        frameon=False,
    )


# --------------------------------------------------------------------------- training curves


def _training_curves_needs(metrics: pd.DataFrame) -> str | None:
    needed = ["step", *dict.fromkeys(c for c, _, _ in TRAINING_CURVE_PANELS)]
    lacking = missing_columns(metrics, needed)
    if lacking:
        return f"--runs whose metrics.jsonl have the columns {lacking}"
    runs = metrics.groupby(["method", "seed"])[needed]
    without = [f"{m}/seed{s}" for (m, s), frame in runs if frame.isna().all().any()]
    if without:
        return f"--runs whose metrics.jsonl have the columns {needed} (not in {', '.join(without)})"
    return _registered_needs(metrics["method"].unique(), "--runs")


def smooth(values: pd.Series | np.ndarray, window: int) -> np.ndarray:
    """The trailing mean of ``values`` over ``window`` consecutive entries (fewer at the start:
    entry i is the mean of entries max(0, i - window + 1) .. i); ``window`` 1 gives the values."""
    if window < 1:
        raise ValueError(f"smooth: window must be >= 1, got {window}")
    return pd.Series(np.asarray(values, dtype=float)).rolling(window, min_periods=1).mean().to_numpy()


def seed_spread(metrics: pd.DataFrame, column: str, window: int = 1) -> pd.DataFrame:
    """Per method and step: the mean, min and max over seeds of ``column``, each run's series first
    smoothed by :func:`smooth` (in step order), and n_seeds, the runs that have the step."""
    runs = []
    for (method, seed), run in metrics.groupby(["method", "seed"], sort=True):
        run = run.sort_values("step")
        values = smooth(run[column], window)
        runs.append(
            pd.DataFrame({"method": method, "seed": seed, "step": run["step"].to_numpy(), "value": values})
        )
    grouped = pd.concat(runs, ignore_index=True).groupby(["method", "step"], sort=True)["value"]
    return grouped.agg(mean="mean", min="min", max="max", n_seeds="count").reset_index()


@plot("training_curves", inputs=("metrics",), needs=_training_curves_needs, options=("smoothing_window",))
def training_curves(metrics: pd.DataFrame, smoothing_window: int = OPTIONS["smoothing_window"].default):
    """Reward, response length and clip fraction (one panel per clipping level) over RL steps: per
    method the mean over its seeds, the band spanning min to max over them, each run optionally
    smoothed first (``smoothing_window`` steps, trailing)."""
    plt, _ = pyplot()
    levels = by_level(metrics.method.unique())
    panels = [(c, label, lvl) for c, label, lvl in TRAINING_CURVE_PANELS if lvl is None or lvl in levels]
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 3.6 * nrows), squeeze=False)
    names = method_order(metrics.method.unique())
    colours = method_colours(names)
    spreads = {c: seed_spread(metrics, c, smoothing_window) for c in dict.fromkeys(c for c, _, _ in panels)}
    handles = {}
    for ax, (column, label, lvl) in zip(axes.flat, panels, strict=False):
        spread = spreads[column]
        for m in levels[lvl] if lvl else names:
            rows = spread[spread.method == m]
            if (rows.n_seeds > 1).any():
                ax.fill_between(
                    rows["step"],
                    rows["min"],
                    rows["max"],
                    color=colours[m],
                    alpha=0.15,
                    linewidth=0,
                    gid=f"{m}/range",
                )
            (line,) = ax.plot(
                rows["step"], rows["mean"], color=colours[m], linewidth=1.6, label=m, gid=f"{m}/mean"
            )
            handles.setdefault(m, line)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.set_title(f"Clip fraction, {lvl}-level rules" if lvl else label.split(" (")[0].capitalize())
    for ax in list(axes.flat)[len(panels) :]:
        fig.delaxes(ax)
    fig.legend(
        [handles[m] for m in names],
        names,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(names), 6),
        title="method (line: mean over its seeds; band: min to max over its seeds)",
        fontsize=9,
        title_fontsize=9,
        frameon=False,
    )
    n_seeds = sorted(set(metrics.groupby("method")["seed"].nunique()))
    seeds_text = " or ".join(map(str, n_seeds))
    smoothing = (
        "Not smoothed (smoothing window 1)."
        if smoothing_window == 1
        else f"Each run's series is first smoothed: the trailing mean over {smoothing_window} RL steps "
        "(fewer at the start); the mean and the band are taken over the smoothed runs."
    )
    caption(
        fig,
        f"Line: a method's mean over its seeds ({seeds_text} per method) at each RL step; band: from the "
        "lowest to the highest seed at that step (min-max over the seeds, not a confidence interval; none "
        f"with one seed). {smoothing} Clip fraction: the share of a rule's units whose gradient the clip "
        "removed (tokens for token-level rules, whole responses for sequence-level ones), the mean over the "
        "step's updates, the first (at ratio 1) included.",
    )
    return fig
