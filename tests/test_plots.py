"""The plot registry (one function per plot, drawn by name; byte-reproducible figures) and what the
three study plots show, read off the figures themselves: panels, which method is in which panel,
the intervals and reference lines, the per-seed lines and points, the length ticks, the smoothing."""

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from clipbench import cli, methods, plots, study
from clipbench.methods import Method, RolloutBatch, hparam, log_band, token_level_rule

# --------------------------------------------------------------------------- hand-made tidy frames


def summary_rows():
    """summary.csv's avg@k rows: per method a pooled row (seeds together, seed -1, with its
    interval) and a row per evaluation (the base model's seed -1; two seeds of ppo and fspo)."""
    runs = [("base", -1, 0.40), ("ppo", 0, 0.50), ("ppo", 1, 0.60), ("fspo", 0, 0.70), ("fspo", 1, 0.50)]
    pooled = [("base", 0.40, 0.30, 0.52), ("ppo", 0.55, 0.41, 0.69), ("fspo", 0.60, 0.45, 0.74)]
    rows = [
        {"scope": "pooled", "method": m, "seed": -1, "value": v, "lo": lo, "hi": hi}
        for m, v, lo, hi in pooled
    ]
    rows += [
        {"scope": "seed", "method": m, "seed": s, "value": v, "lo": v - 0.1, "hi": v + 0.1}
        for m, s, v in runs
    ]
    frame = pd.DataFrame(rows).assign(benchmark="synthetic_test", metric="avg@k", k=4)
    frame["model"] = frame["method"]
    return frame


#: Per method: (mean clip rate in fairness.csv, per-bin pooled rates); lengths 14, 40, 90.
RATES = {
    "ppo": (0.011, (0.005, 0.010, 0.020)),
    "grpo": (0.012, (0.006, 0.012, 0.018)),
    "fspo": (0.210, (0.100, 0.200, 0.300)),
    "gspo": (0.250, (0.200, 0.250, 0.300)),
}
LENGTHS = (14.0, 40.0, 90.0)


def fairness_inputs(rates=RATES):
    """fairness_bins.csv and fairness.csv as `clipbench aggregate` writes them: pooled rows (seed -1)
    and two seeds per method, the clip rate's interval bounds beside it (lo = 0.8 x, hi = 1.3 x the
    rate), and median |S|."""
    bins = []
    for m, (_, pooled) in rates.items():
        for b, (length, rate) in enumerate(zip(LENGTHS, pooled, strict=True)):
            row = {"method": m, "bin": b, "length_mean": length, "abs_s_median": 0.01 * length**0.7}
            bins.append(row | {"scope": "pooled", "seed": -1, "seq_out": rate})
            for seed, factor in ((0, 0.9), (1, 1.1)):
                bins.append(
                    row
                    | {"scope": "seed", "seed": seed, "seq_out": rate * factor, "length_mean": length + seed}
                )
    bins = pd.DataFrame(bins)
    bins["seq_out_lo"], bins["seq_out_hi"] = 0.8 * bins["seq_out"], 1.3 * bins["seq_out"]
    bins["abs_s_median_lo"], bins["abs_s_median_hi"] = 0.5 * bins["abs_s_median"], 2 * bins["abs_s_median"]
    groups = pd.DataFrame(
        [
            {"scope": "pooled", "method": m, "seed": -1, "clip_column": "seq_out", "clip_rate": mean}
            for m, (mean, _) in rates.items()
        ]
    )
    return {"fairness_bins": bins, "fairness": groups}


def metrics_rows(methods_=("fspo", "ppo"), seeds=(0, 1), steps=6):
    """metrics.jsonl rows: reward = 0.1 * step + 0.2 * seed (+ 0.05 for ppo), step 3 a spike of 1."""
    rows = []
    for m in methods_:
        for seed in seeds:
            for step in range(steps):
                reward = 1.0 if step == 3 else 0.1 * step + 0.2 * seed + (0.05 if m == "ppo" else 0)
                rows.append(
                    {"method": m, "seed": seed, "step": step, "reward_mean": reward}
                    | {"clip_frac": 0.01 * (step + 1), "response_length_mean": 20.0 + step}
                )
    return pd.DataFrame(rows)


@pytest.fixture
def registry(monkeypatch):
    """The plot registry, restored after the test (so a test's plot does not leak into others)."""
    monkeypatch.setattr(plots, "PLOTS", dict(plots.PLOTS))
    return plots.PLOTS


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def by_gid(fig, gid):
    """Every artist of ``fig`` whose gid is ``gid``."""
    return fig.findobj(lambda artist: artist.get_gid() == gid)


def one(fig, gid):
    found = by_gid(fig, gid)
    assert len(found) == 1, (gid, found)
    return found[0]


def legend_names(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def tick_labels(fig, ax):
    fig.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def caption_text(fig):
    return " ".join(one(fig, "caption").get_text().split())


# --------------------------------------------------------------------------- the shared look


def test_each_method_has_one_colour_from_the_registry_order():
    registered = methods.available_methods()
    colours = plots.method_colours(["ppo", "fspo", "base", "not_a_rule"])
    # the i-th registered rule gets palette colour i, whatever else is drawn beside it
    assert colours["ppo"] == plots._PALETTE[registered.index("ppo")]
    assert colours["fspo"] == plots._PALETTE[registered.index("fspo")]
    assert plots.method_colours(["fspo"]) == {"fspo": colours["fspo"]}
    assert colours["base"] == plots.BASE_COLOUR
    assert colours["not_a_rule"] == plots._PALETTE[len(registered)]  # after every registered rule
    every = plots.method_colours(registered)
    assert len(set(every.values())) == len(registered)  # no two rules share a colour
    assert plots.method_order(["ppo", "not_a_rule", "base", "fspo"]) == ["base", "fspo", "ppo", "not_a_rule"]


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (14, 90, [16, 32, 64]),  # three powers of two inside: those
        (10, 1000, [16, 32, 64, 128, 256, 512]),
        (20, 60, [24, 32, 48]),  # two powers of two only: their 1.5 multiples too
        (40, 60, [32, 48, 64]),  # one tick inside: the nearest outside on either side
        (33, 47, [32, 48]),  # none inside
    ],
)
def test_length_ticks_are_powers_of_two(low, high, ticks):
    assert plots.length_ticks(low, high) == ticks


def test_smoothing_is_the_trailing_mean():
    assert plots.smooth([1, 2, 3, 4], 1).tolist() == [1, 2, 3, 4]
    assert plots.smooth([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert plots.smooth([1, 2, 3, 4], 3).tolist() == [1, 1.5, 2, 3]
    with pytest.raises(ValueError, match="window must be >= 1"):
        plots.smooth([1], 0)


# --------------------------------------------------------------------------- clip rate by length


def test_token_and_sequence_rules_are_drawn_in_separate_panels():
    fig = plots.draw("clip_by_length", fairness_inputs())
    token, sequence, s_panel = fig.axes
    assert token.get_title() == "Token-level rules" and sequence.get_title() == "Sequence-level rules"
    # registry order within a panel; each rule where its class's level puts it
    assert legend_names(token) == ["grpo", "ppo"] and legend_names(sequence) == ["fspo", "gspo"]
    assert legend_names(s_panel) == ["fspo", "grpo", "gspo", "ppo"]  # median |S|: every rule
    assert "share of tokens" in token.get_ylabel() and "share of responses" in sequence.get_ylabel()
    for m, ax in (("ppo", token), ("grpo", token), ("fspo", sequence), ("gspo", sequence)):
        assert one(fig, f"{m}/pooled").axes is ax


def test_every_registered_rule_lands_in_the_panel_of_its_level():
    # dapo, cispo, gmpo, sapo, powerband and any rule after them: no list of names in the plot code
    every = {m: (0.1, (0.1, 0.1, 0.1)) for m in methods.available_methods()}
    fig = plots.draw("clip_by_length", fairness_inputs(every))
    panels = dict(zip(("token", "sequence"), fig.axes[:2], strict=True))
    for m in every:
        assert one(fig, f"{m}/pooled").axes is panels[methods.get_method_class(m).level], m
    assert {"dapo", "cispo", "gmpo", "sapo"} <= set(legend_names(panels["token"]))
    assert "powerband" in legend_names(panels["sequence"])


@pytest.fixture
def new_token_rule(monkeypatch):
    """A rule registered under a new name, as a new file in clipbench/methods/ would; removed after."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))

    @methods.register("wide_tok")
    @dataclass(frozen=True)
    class WideTok(Method):
        """Token clip with half-width eps."""

        level = "token"
        eps: float = hparam(0.5, help="half-width", gt=0, lt=1)

        def compute(self, batch: RolloutBatch):
            return token_level_rule(batch, *log_band(self.eps, self.eps))

    return "wide_tok"


def test_a_newly_registered_rule_joins_its_levels_panel_with_no_edit(new_token_rule):
    fig = plots.draw("clip_by_length", fairness_inputs(RATES | {new_token_rule: (0.02, (0.01, 0.02, 0.03))}))
    assert legend_names(fig.axes[0]) == ["grpo", "ppo", "wide_tok"]
    assert legend_names(fig.axes[1]) == ["fspo", "gspo"]


def test_one_level_only_draws_one_rate_panel():
    token_only = {m: RATES[m] for m in ("ppo", "grpo")}
    frames = fairness_inputs(token_only)
    frames["fairness_bins"] = frames["fairness_bins"].drop(columns=["abs_s_median"])  # records without S
    fig = plots.draw("clip_by_length", frames)
    assert [ax.get_title() for ax in fig.axes] == ["Token-level rules"]


def test_the_dashed_reference_is_each_rules_mean_rate():
    fig = plots.draw("clip_by_length", fairness_inputs())
    for m, (mean, _) in RATES.items():
        line = one(fig, f"{m}/mean")
        assert line.get_linestyle() == "--"
        assert line.get_ydata().tolist() == [mean, mean]  # fairness.csv's clip_rate, not a bin's
        assert line.get_xdata().tolist() == [LENGTHS[0], LENGTHS[-1]]  # across the bins drawn


def test_the_band_is_the_interval_columns_and_the_lines_the_rates():
    frames = fairness_inputs()
    fig = plots.draw("clip_by_length", frames)
    pooled = frames["fairness_bins"].query("scope == 'pooled' and method == 'fspo'")
    band = one(fig, "fspo/interval").get_paths()[0].vertices
    expected = set(zip(pooled.length_mean, pooled.seq_out_lo, strict=True)) | set(
        zip(pooled.length_mean, pooled.seq_out_hi, strict=True)
    )
    assert {tuple(v) for v in np.round(band, 12)} == {tuple(np.round(v, 12)) for v in expected}
    line = one(fig, "fspo/pooled")
    assert line.get_xdata().tolist() == list(LENGTHS) and line.get_ydata().tolist() == list(RATES["fspo"][1])
    assert to_rgb(line.get_color()) == to_rgb(plots.method_colours(["fspo"])["fspo"])


def test_each_seed_is_a_thin_line_of_its_own_rates():
    frames = fairness_inputs()
    fig = plots.draw("clip_by_length", frames)
    for m in RATES:
        seeds = fig.findobj(lambda a, m=m: str(a.get_gid()).startswith(f"{m}/seed"))
        assert len(seeds) == 2
        for seed, line in zip((0, 1), seeds, strict=True):
            rows = frames["fairness_bins"].query(f"scope == 'seed' and method == '{m}' and seed == {seed}")
            assert line.get_gid() == f"{m}/seed{seed}"
            assert line.get_ydata().tolist() == rows.seq_out.tolist()
            assert line.get_linewidth() < one(fig, f"{m}/pooled").get_linewidth()


def test_length_ticks_are_plain_numbers():
    fig = plots.draw("clip_by_length", fairness_inputs())
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert tick_labels(fig, ax) == ["16", "32", "64"]


def test_the_caption_says_what_lines_and_bands_are():
    text = caption_text(plots.draw("clip_by_length", fairness_inputs()))
    assert "band: its 95% percentile bootstrap interval" in text
    assert "thin lines: each seed alone" in text and "dashed: the method's mean rate over all lengths" in text


# --------------------------------------------------------------------------- accuracy


def test_accuracy_shows_the_pooled_interval_and_each_seed():
    summary = summary_rows()
    fig = plots.draw("accuracy", {"summary": summary})
    [ax] = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "fspo", "ppo"]
    for x, m in enumerate(["base", "fspo", "ppo"]):
        row = summary.query(f"scope == 'pooled' and method == '{m}'").iloc[0]
        point = one(fig, f"{m}/pooled")
        assert point.get_xdata().tolist() == [x] and point.get_ydata().tolist() == [row.value]
        [segment] = one(fig, f"{m}/interval").get_segments()
        assert np.allclose(segment, [[x, row.lo], [x, row.hi]])  # summary.csv's lo and hi
        assert to_rgb(point.get_color()) == to_rgb(plots.method_colours([m])[m])
    seeds = one(fig, "ppo/seeds")
    assert seeds.get_ydata().tolist() == [0.5, 0.6]  # seed 0, then seed 1
    assert np.allclose(seeds.get_xdata(), 2 + np.array(plots.SEED_OFFSETS))
    assert by_gid(fig, "base/seeds") == []  # one run: its pooled point is its only value
    assert list(one(fig, "base/reference").get_ydata()) == [0.4, 0.4]
    assert "95% percentile bootstrap interval" in caption_text(fig)


def test_accuracy_panels_wrap_to_rows_when_many_methods_are_drawn():
    def panels(names):
        rows = [
            {"scope": scope, "method": m, "seed": -1, "value": 0.5, "lo": 0.4, "hi": 0.6, "benchmark": b}
            for m in names
            for b in ("one", "two")
            for scope in ("pooled", "seed")
        ]
        fig = plots.draw("accuracy", {"summary": pd.DataFrame(rows).assign(metric="avg@k", k=4)})
        return [(round(ax.get_position().x0, 3), round(ax.get_position().y0, 3)) for ax in fig.axes]

    (x1, y1), (x2, y2) = panels(["base", "ppo", "fspo"])
    assert y1 == y2 and x1 < x2  # side by side
    (x1, y1), (x2, y2) = panels(["base", *methods.available_methods()])
    assert x1 == x2 and y1 > y2  # one row per benchmark


def test_the_same_method_has_the_same_colour_in_every_plot():
    # each plot draws other methods beside fspo and ppo (base; grpo and gspo; none)
    frames = {"summary": summary_rows(), "metrics": metrics_rows(), **fairness_inputs()}
    figures = {name: plots.draw(name, frames) for name in plots.PLOTS}
    for m in ("fspo", "ppo"):
        colours = {
            name: to_rgb(
                by_gid(fig, f"{m}/{'mean' if name == 'training_curves' else 'pooled'}")[0].get_color()
            )
            for name, fig in figures.items()
        }
        assert set(colours.values()) == {to_rgb(plots.method_colours([m])[m])}, (m, colours)


# --------------------------------------------------------------------------- training curves


def test_training_curves_split_the_clip_fraction_by_level():
    fig = plots.draw("training_curves", {"metrics": metrics_rows(("fspo", "ppo", "grpo"))})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "Reward",
        "Response length",
        "Clip fraction, token-level rules",
        "Clip fraction, sequence-level rules",
    ]
    token, sequence = fig.axes[2], fig.axes[3]
    assert {line.get_gid() for line in token.get_lines()} == {"ppo/mean", "grpo/mean"}
    assert {line.get_gid() for line in sequence.get_lines()} == {"fspo/mean"}


def test_the_line_is_the_mean_of_the_seeds_and_the_band_their_range():
    metrics = metrics_rows()
    fig = plots.draw("training_curves", {"metrics": metrics})
    reward = fig.axes[0]
    line = next(line for line in reward.get_lines() if line.get_gid() == "fspo/mean")
    fspo = metrics[metrics.method == "fspo"].pivot(index="step", columns="seed", values="reward_mean")
    assert np.allclose(line.get_ydata(), fspo.mean(axis=1))
    [band] = [c for c in reward.collections if c.get_gid() == "fspo/range"]
    vertices = {tuple(v) for v in np.round(band.get_paths()[0].vertices, 12)}
    corners = {(s, round(v, 12)) for s in fspo.index for v in (fspo.loc[s].min(), fspo.loc[s].max())}
    assert vertices == corners
    assert "band: from the lowest to the highest seed at that step (min-max over the seeds" in caption_text(
        fig
    )
    assert fig.legends[0].get_title().get_text().endswith("band: min to max over its seeds)")


def test_one_seed_has_no_band():
    fig = plots.draw("training_curves", {"metrics": metrics_rows(seeds=(0,))})
    assert by_gid(fig, "fspo/range") == []


def test_a_smoothing_window_of_one_is_the_raw_series_and_larger_the_trailing_mean():
    metrics = metrics_rows(seeds=(0,))
    raw = metrics[metrics.method == "fspo"].sort_values("step")["reward_mean"].to_numpy()
    assert raw.tolist() == [0.0, 0.1, 0.2, 1.0, 0.4, 0.5]

    def drawn(**options):
        fig = plots.draw("training_curves", {"metrics": metrics}, options)
        return next(ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "fspo/mean").get_ydata(), fig

    unsmoothed, fig = drawn()  # the default: 1
    assert np.array_equal(unsmoothed, raw) and "Not smoothed (smoothing window 1)" in caption_text(fig)
    assert np.array_equal(drawn(smoothing_window=1)[0], raw)
    smoothed, fig = drawn(smoothing_window=3)
    assert np.allclose(smoothed, [0.0, 0.05, 0.1, 1.3 / 3, 1.6 / 3, 1.9 / 3])  # hand-computed
    assert "the trailing mean over 3 RL steps" in caption_text(fig)


def test_smoothing_comes_before_the_seeds_are_combined():
    metrics = metrics_rows(seeds=(0, 1), steps=3)
    spread = plots.seed_spread(metrics[metrics.method == "fspo"], "reward_mean", window=2)
    # seed 0: 0, 0.1, 0.2 -> 0, 0.05, 0.15; seed 1: 0.2, 0.3, 0.4 -> 0.2, 0.25, 0.35
    assert np.allclose(spread["mean"], [0.1, 0.15, 0.25])
    assert np.allclose(spread["min"], [0.0, 0.05, 0.15]) and np.allclose(spread["max"], [0.2, 0.25, 0.35])
    assert spread["n_seeds"].tolist() == [2, 2, 2]


# --------------------------------------------------------------------------- what each plot needs


def test_each_plot_says_what_its_inputs_lack(new_token_rule):
    frames = {"summary": summary_rows().assign(metric="pass@k"), **fairness_inputs()}
    assert plots.unmet_needs("accuracy", frames) == "--summary with avg@k rows (it has none)"
    frames["summary"] = summary_rows().query("not (scope == 'pooled' and method == 'ppo')")
    assert plots.unmet_needs("accuracy", frames) == (
        "--summary with a pooled avg@k row (the value and its interval) for ppo on synthetic_test"
    )
    assert plots.unmet_needs("clip_by_length", frames) is None
    bins = frames["fairness_bins"]
    frames["fairness_bins"] = bins.drop(columns="seq_out_hi")
    assert plots.unmet_needs("clip_by_length", frames) == (
        "--fairness-bins with the interval columns ['seq_out_hi'] "
        "(a fairness_bins.csv from `clipbench aggregate`)"
    )
    frames["fairness_bins"] = bins.assign(method=bins.method.replace("gspo", "gone_rule"))
    assert (
        plots.unmet_needs("clip_by_length", frames)
        == "--fairness with a pooled row (the mean clip rate) for gone_rule"
    )
    frames["fairness"] = frames["fairness"].assign(
        method=frames["fairness"].method.replace("gspo", "gone_rule")
    )
    assert plots.unmet_needs("clip_by_length", frames) == (
        "--fairness-bins whose methods are registered rules (a rule's level, token or sequence, picks its "
        "panel); not registered: gone_rule"
    )
    frames["fairness"] = frames["fairness"].assign(clip_column="seq_clip")
    assert plots.unmet_needs("clip_by_length", frames) == "--fairness-bins with its clip column 'seq_clip'"
    assert plots.unmet_needs("training_curves", {"metrics": metrics_rows(("fspo", new_token_rule))}) is None


# --------------------------------------------------------------------------- the registry


def test_plots_are_byte_reproducible(tmp_path):
    # A plot drawn twice from the same tidy data is the same file (no unseeded jitter, no
    # timestamps): a re-run of a study reproduces its figures as well as its tables.
    frames = {"summary": summary_rows(), "metrics": metrics_rows(), **fairness_inputs()}
    for name in plots.PLOTS:
        first = plots.write(name, frames, tmp_path / f"{name}-1.png").read_bytes()
        assert plots.write(name, frames, tmp_path / f"{name}-2.png").read_bytes() == first
    smoothed = plots.write(
        "training_curves", frames, tmp_path / "s.png", {"smoothing_window": 3}
    ).read_bytes()
    assert smoothed != (tmp_path / "training_curves-1.png").read_bytes()


def test_a_registered_function_is_a_plot_the_cli_draws(registry, tmp_path):
    @plots.plot("accuracy_by_seed", inputs=("summary",))
    def accuracy_by_seed(summary):
        """Accuracy per seed."""
        plt, sns = plots.pyplot()
        fig, ax = plt.subplots()
        sns.pointplot(data=summary, x="seed", y="value", ax=ax)
        return fig

    assert registry["accuracy_by_seed"].inputs == ("summary",)
    assert registry["accuracy_by_seed"].options == ()
    assert registry["accuracy_by_seed"].description == "Accuracy per seed."
    summary = tmp_path / "summary.csv"
    summary_rows().to_csv(summary, index=False)
    out = tmp_path / "plots"
    assert (
        cli.main(["report", "--summary", str(summary), "--plots", str(out), "--only", "accuracy_by_seed"])
        == 0
    )
    assert [p.name for p in out.iterdir()] == ["accuracy_by_seed.png"]


def test_an_option_reaches_the_plot_from_the_cli_and_the_study_config(registry, tmp_path):
    seen = []

    @plots.plot("windowed", inputs=("summary",), options=("smoothing_window",))
    def windowed(summary, smoothing_window):
        """Records its option."""
        seen.append(smoothing_window)
        plt, _ = plots.pyplot()
        return plt.subplots()[0]

    summary = tmp_path / "summary.csv"
    summary_rows().to_csv(summary, index=False)
    args = ["report", "--summary", str(summary), "--plots", str(tmp_path / "p"), "--only", "windowed"]
    assert cli.main(args) == 0 and cli.main([*args, "--smoothing-window", "5"]) == 0
    assert seen == [plots.OPTIONS["smoothing_window"].default, 5] == [1, 5]
    # the study's plot job gets the flag from report.smoothing_window, its default when not set
    assert study.plot_option_args({}, "windowed") == ["--smoothing-window", "1"]
    assert study.plot_option_args({"report": {"smoothing_window": 4}}, "windowed") == [
        "--smoothing-window",
        "4",
    ]
    assert study.plot_option_args({"report": {"smoothing_window": 4}}, "accuracy") == []
    with pytest.raises(ValueError, match=r"options \['window'\] must be some of \['smoothing_window'\]"):
        plots.plot("x", inputs=("summary",), options=("window",))(windowed)


def test_every_plot_option_is_a_key_of_the_configs_report_section():
    fields = {f.name: f for f in study.Report.__dataclass_fields__.values()}
    for name, option in plots.OPTIONS.items():
        assert name in fields and fields[name].default == option.default
        assert option.flag == "--" + name.replace("_", "-")


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
