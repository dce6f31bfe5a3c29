"""The main table and the fairness files, built from hand-made tidy inputs."""

import copy
import json
import os

import numpy as np
import pandas as pd
import pytest
from eval_files import write_eval

from clipbench import artifacts, fairness, report, stats

# summary.csv's pooled avg@k rows, by hand: method -> (value, low, high); the differences against
# grpo (diff, low, high). fspo's interval (0.50-0.70) overlaps ppo's (0.45-0.62): a tie at the top;
# gspo (0.30-0.44) lies below both, the base model (0.25-0.40) too.
ACCURACY = {
    "base": (0.33, 0.25, 0.40),
    "fspo": (0.60, 0.50, 0.70),
    "gspo": (0.37, 0.30, 0.44),
    "grpo": (0.50, 0.40, 0.61),
    "ppo": (0.55, 0.45, 0.62),
}
DIFFERENCES = {
    "base": (-0.17, -0.25, -0.09),  # below grpo: the interval excludes 0
    "fspo": (0.10, -0.02, 0.21),
    "gspo": (-0.13, -0.20, 0.01),
    "grpo": (0.0, 0.0, 0.0),  # the reference against itself
    "ppo": (0.05, -0.06, 0.15),
}


def summary_rows(accuracy=None, differences=None):
    """summary.csv as `clipbench aggregate` writes it, for one benchmark: the pooled rows (avg@k from
    ACCURACY and DIFFERENCES, pass@k beside), then one row per evaluation (not read by the table)."""
    accuracy = ACCURACY if accuracy is None else accuracy
    differences = DIFFERENCES if differences is None else differences
    rows = []
    for method, (value, lo, hi) in accuracy.items():
        diff = differences.get(method, (np.nan,) * 3)
        common = {
            "scope": "pooled",
            "model": method,
            "method": method,
            "seed": -1,
            "benchmark": "synthetic_test",
        }
        common |= {"k": 4, "n_seeds": 1 if method == "base" else 2, "n_problems": 50, "reference": "grpo"}
        rows.append(common | {"metric": "avg@k", "value": value, "lo": lo, "hi": hi})
        rows[-1] |= {"diff": diff[0], "diff_lo": diff[1], "diff_hi": diff[2]}
        rows.append(common | {"metric": "pass@k", "value": 0.9, "lo": 0.8, "hi": 1.0, "diff": 0.0})
        rows[-1] |= {"diff_lo": -0.1, "diff_hi": 0.1}
    for method, (value, _, _) in accuracy.items():
        for seed in [-1] if method == "base" else [0, 1]:
            model = method if method == "base" else f"{method}-seed{seed}"
            rows.append(
                {
                    "scope": "seed",
                    "model": model,
                    "method": method,
                    "seed": seed,
                    "benchmark": "synthetic_test",
                }
                | {
                    "metric": "avg@k",
                    "k": 4,
                    "value": value + (0.3 if seed == 1 else 0.0),
                    "lo": 0.0,
                    "hi": 1.0,
                }
            )
    return pd.DataFrame(rows, columns=report.SUMMARY_COLUMNS)


def fairness_rows():
    # fairness.csv: one pooled row per method (what main_table reads) and one per method and seed.
    values = {  # (value, low, high) of clip_rate, spread, lre, s_exponent, s_exponent_within
        "ppo": [(0.005, 0.004, 0.007), (0.90, 0.80, 1.10), (0.0010, 0.0008, 0.0013), (2.5, 2.0, 3.0)],
        "grpo": [(0.006, 0.004, 0.008), (0.95, 0.85, 1.20), (0.0012, 0.0009, 0.0016), (2.4, 2.1, 2.8)],
        # sequence rules: gspo's spread interval lies below fspo's; their LRE intervals overlap
        "fspo": [(0.170, 0.150, 0.190), (1.40, 1.30, 1.55), (0.0800, 0.0600, 0.1000), (2.7, 2.2, 3.1)],
        "gspo": [(0.160, 0.140, 0.180), (1.10, 1.00, 1.20), (0.0600, 0.0500, 0.0700), (2.8, 2.5, 3.0)],
    }
    within = {
        "ppo": (0.55, 0.48, 0.61),
        "grpo": (0.52, 0.47, 0.6),
        "fspo": (0.6, 0.5, 0.7),
        "gspo": (0.58, 0.5, 0.66),
    }
    values = {method: [*metrics, within[method]] for method, metrics in values.items()}
    names = ("clip_rate", "spread", "lre", "s_exponent", "s_exponent_within")
    rows = []
    for method, metrics in values.items():
        for scope, seeds in (("pooled", [-1]), ("seed", [0, 1])):
            for seed in seeds:
                row = {"scope": scope, "method": method, "seed": seed, "clip_column": "seq_out"}
                for name, (value, lo, hi) in zip(names, metrics, strict=True):
                    shift = 0.0 if scope == "pooled" else (-1) ** seed * 0.01  # per-seed rows: not read
                    row |= {name: value + shift, f"{name}_lo": lo, f"{name}_hi": hi}
                rows.append(row | {"slope": 0.0, "slope_lo": 0.0, "slope_hi": 0.0, "n_bins": 5})
    return pd.DataFrame(rows)


def table(summary=None, fairness_table=None, **kwargs) -> str:
    summary = summary_rows() if summary is None else summary
    fairness_table = fairness_rows() if fairness_table is None else fairness_table
    return report.main_table(
        summary, fairness_table, config_name="t", config_hash="abc", seeds=[0, 1], commit="c0", **kwargs
    )


def rows_of(text: str) -> dict[str, str]:
    """The main table's rows by method (the first table only: the Δ block has its own rows)."""
    main = text.split("\n\n")[0]
    return {line.split(" | ")[0].strip("| "): line for line in main.splitlines() if line.startswith("| ")}


def delta_rows(text: str) -> dict[str, str]:
    block = next(part for part in text.split("\n\n") if part.startswith("| Δ"))
    return {line.split(" | ")[0].strip("| "): line for line in block.splitlines() if line.startswith("| ")}


# --------------------------------------------------------------------------- the main table


def test_main_table_rows_levels_values_and_intervals():
    text = table()
    rows = rows_of(text)
    assert rows["method"].startswith(
        "| method | level | synthetic_test (avg@4) | clip rate | clip spread | LRE | S growth a | S growth a_w |"
    )
    # The base model: its accuracy with its interval, no training metrics; below the tie: no mark.
    assert rows["base"] == "| base | – | 0.330 [0.250, 0.400] | – | – | – | – | – |"
    # fspo: the best accuracy, but its interval overlaps ppo's and grpo's: tied, not bold.
    assert rows["fspo"] == (
        "| fspo | sequence | 0.600 [0.500, 0.700] ≈ | 0.170 [0.150, 0.190] | 1.400 [1.300, 1.550] "
        "| 0.0800 [0.0600, 0.1000] ≈ | 2.70 [2.20, 3.10] | 0.60 [0.50, 0.70] |"
    )
    assert "Within a_w: median |S_k| ~ k^a_w" in text
    assert rows["ppo"].startswith("| ppo | token | 0.550 [0.450, 0.620] ≈ | 0.005 [0.004, 0.007] |")
    assert rows["gspo"].startswith("| gspo | sequence | 0.370 [0.300, 0.440] |")  # below fspo's: not tied
    assert "95% percentile bootstrap interval" in text
    assert "config `t` (hash abc), commit c0".lower() in text.lower()


def test_a_best_accuracy_is_bold_only_when_its_interval_separates_from_every_other_row():
    apart = dict(ACCURACY, fspo=(0.80, 0.63, 0.95))  # low 0.63 above every other high (ppo 0.62)
    text = table(summary_rows(apart))
    assert "| fspo | sequence | **0.800 [0.630, 0.950]** |" in text
    assert "≈" not in rows_of(text)["ppo"].split(" | ")[2]  # no tie where one separates
    touching = dict(ACCURACY, fspo=(0.80, 0.62, 0.95))  # low 0.62 = ppo's high: they overlap
    text = table(summary_rows(touching))
    assert "| fspo | sequence | 0.800 [0.620, 0.950] ≈ |" in text and "**0.800" not in text
    assert rows_of(text)["ppo"].split(" | ")[2] == "0.550 [0.450, 0.620] ≈"
    # the best point with a wide interval: every row it overlaps is tied with it
    wide = dict(ACCURACY, fspo=(0.80, 0.20, 0.99))
    text = table(summary_rows(wide))
    marked = {m for m, line in rows_of(text).items() if line.split(" | ")[2].endswith("≈")}
    assert marked == {"base", "fspo", "gspo", "grpo", "ppo"} and "**0.800" not in text


def test_spread_and_lre_are_compared_within_a_clipping_level():
    rows = rows_of(table())
    # gspo's spread interval (1.00-1.20) lies below fspo's (1.30-1.55): bold, though ppo's 0.90 is
    # lower: ppo counts tokens. Their LRE intervals overlap: both marked tied, none bold.
    assert "| **1.100 [1.000, 1.200]** | 0.0600 [0.0500, 0.0700] ≈ |" in rows["gspo"]
    assert "| 1.400 [1.300, 1.550] | 0.0800 [0.0600, 0.1000] ≈ |" in rows["fspo"]
    # the token rules: ppo's spread 0.90 and grpo's 0.95 overlap (0.80-1.10, 0.85-1.20): a tie
    assert "| 0.900 [0.800, 1.100] ≈ | 0.0010 [0.0008, 0.0013] ≈ |" in rows["ppo"]
    assert "| 0.950 [0.850, 1.200] ≈ | 0.0012 [0.0009, 0.0016] ≈ |" in rows["grpo"]
    # clip rate and S growth are shown with their intervals, never compared
    assert not any(line.split(" | ")[3].endswith(("≈", "**")) for line in rows.values())


def test_a_lone_row_of_its_level_is_neither_bold_nor_tied():
    fairness_table = fairness_rows()
    fairness_table = fairness_table[fairness_table.method != "grpo"]  # ppo alone among token rules
    rows = rows_of(table(fairness_table=fairness_table))
    assert "| 0.900 [0.800, 1.100] | 0.0010 [0.0008, 0.0013] |" in rows["ppo"]


def test_the_difference_block_shows_each_delta_against_the_reference():
    text = table()
    delta = delta_rows(text)
    assert delta["Δ avg@k vs grpo"] == "| Δ avg@k vs grpo | synthetic_test |"
    assert delta["grpo"] == "| grpo | 0 (reference) |"
    assert delta["base"] == "| base | -0.170 [-0.250, -0.090] * |"  # excludes 0: starred
    assert delta["fspo"] == "| fspo | +0.100 [-0.020, +0.210] |"
    assert delta["gspo"] == "| gspo | -0.130 [-0.200, +0.010] |"
    assert "avg@k minus grpo's, paired" in text
    # the design's power: half-widths fspo 0.115, gspo 0.105, ppo 0.105 (base and grpo left out),
    # median 0.105 = 1.96 standard errors, times 2.80: 0.150
    assert delta["detectable (80% power)"] == "| detectable (80% power) | ±0.150 |"
    assert "of 4 such intervals about 0.2 would exclude 0 by chance" in text
    wide_base = summary_rows(differences=dict(DIFFERENCES, base=(-0.17, -0.60, 0.26)))  # another design
    assert delta_rows(table(wide_base))["detectable (80% power)"] == "| detectable (80% power) | ±0.150 |"
    # without differences (a summary.csv whose reference had no evaluations): no block
    plain = summary_rows(differences={})
    assert "| Δ" not in table(plain) and "minus" not in table(plain)


def test_the_table_reads_only_the_pooled_rows():
    summary = summary_rows()
    changed = summary.copy()
    changed.loc[changed.scope == "seed", ["value", "lo", "hi"]] = [0.99, 0.98, 1.0]
    assert table(changed, date="d") == table(summary, date="d")


def test_an_undefined_s_growth_exponent_shows_as_a_dash():
    fairness_table = fairness_rows()
    fairness_table.loc[fairness_table.method == "gspo", "s_exponent"] = float("nan")
    text = table(fairness_table=fairness_table)
    assert rows_of(text)["gspo"].endswith("| 0.0600 [0.0500, 0.0700] ≈ | – | 0.58 [0.50, 0.66] |")
    assert "nan" not in text
    # a_w: NaN for records without prefix sums; absent from a fairness.csv made before it existed
    fairness_table.loc[fairness_table.method == "fspo", "s_exponent_within"] = float("nan")
    text = table(fairness_table=fairness_table)
    assert rows_of(text)["fspo"].endswith("| 2.70 [2.20, 3.10] | – |") and "nan" not in text
    within = [f"s_exponent_within{end}" for end in ("", "_lo", "_hi")]
    old = fairness_rows().drop(columns=within)
    assert report.unmet_needs(summary_rows(), old) is None
    rows = rows_of(table(fairness_table=old))
    assert all(line.endswith("| – |") for m, line in rows.items() if m != "method")
    assert rows["fspo"].endswith("| 2.70 [2.20, 3.10] | – |")


def test_the_table_needs_the_interval_columns():
    assert report.unmet_needs(summary_rows(), fairness_rows()) is None
    old = summary_rows().drop(columns=["lo", "hi"])  # a summary.csv from before the intervals
    assert report.unmet_needs(old, fairness_rows()) == (
        "--summary with the columns ['lo', 'hi'] (a summary.csv from `clipbench aggregate`)"
    )
    no_ci = fairness_rows().drop(columns=["spread_lo"])
    assert "--fairness with the columns ['spread_lo']" in report.unmet_needs(summary_rows(), no_ci)
    only_runs = summary_rows()
    only_runs = only_runs[only_runs.scope == "seed"]
    assert report.unmet_needs(only_runs, fairness_rows()) == "--summary with pooled avg@k rows (it has none)"


def test_data_hash_mismatch_is_named_in_the_footer(tmp_path):
    ok = summary_rows().assign(data_sha256_ok=True, eval_file="results/evals/x/synthetic_test.json")
    flagged = ok.astype({"data_sha256_ok": object})
    fspo0 = (flagged.model == "fspo-seed0") & (flagged.metric == "avg@k")
    flagged.loc[fspo0, "data_sha256_ok"] = False
    flagged.loc[fspo0, "eval_file"] = "results/evals/fspo-seed0/synthetic_test.json"
    flagged.loc[flagged.method == "base", "data_sha256_ok"] = None  # a hub or generated set: unknown
    # through summary.csv, as `clipbench report` reads it
    flagged.to_csv(tmp_path / "summary.csv", index=False)
    from_csv = pd.read_csv(tmp_path / "summary.csv")
    plain, warned = table(ok, date="d"), table(from_csv, date="d")
    assert (
        "mismatch" not in plain and table(summary_rows(), date="d") == plain
    )  # without the columns: as before
    body = [line for line in plain.splitlines() if line.startswith("|")]
    assert [line for line in warned.splitlines() if line.startswith("|")] == body  # the body is unchanged
    [warning] = [line for line in warned.splitlines() if "mismatch" in line]
    assert warning.startswith("⚠ data hash mismatch: 1 evaluation(s)")
    assert warning.endswith(": fspo-seed0/synthetic_test (results/evals/fspo-seed0/synthetic_test.json).")
    assert "ppo" not in warning and "base" not in warning


def test_the_footer_names_the_clip_column_the_metrics_used():
    text = table(fairness_table=fairness_rows().assign(clip_column="seq_clip"), date="d")
    assert "clipped-gradient rate (`seq_clip`)" in text and "seq_out" not in text
    text = table(date="d")
    assert "out-of-band rate (`seq_out`)" in text and "seq_clip" not in text


CALIBRATION = {  # calibration.json's content, as far as the footer reads it (tests/test_calibration.py: the file)
    "target_rate": 0.15,
    "tolerance": 0.02,
    "probe": {
        "sequences": "results/probe/sequences.parquet",
        "responses": 64,
        "groups": 8,
        "prompts": 16,
        "samples": 8,
        "seed": 0,
    },
    "rules": {
        "fspo": {
            "source": "calibrated",
            "calibrated": {"c_low": 0.04, "c_high": 0.04},
            "hand": {},
            "rate": 0.15625,
        },
        "powerband": {
            "source": "partly hand",
            "calibrated": {"c_high": 0.05},
            "hand": {"c_low": 0.1},
            "rate": 0.140625,
        },
        "gspo": {  # keys sorted, as the file has them: the band_fields give the order
            "source": "hand",
            "calibrated": {},
            "hand": {"eps_high": 0.01, "eps_low": 0.005},
            "band_fields": ["eps_low", "eps_high"],
            "rate": 0.234375,
        },
    },
}


def test_the_footer_gives_the_clip_budgets_which_were_calibrated_and_which_set_by_hand(tmp_path):
    text = table(date="d", calibration=CALIBRATION, table_dir="results/tables")
    [paragraph] = [part.strip() for part in text.split("\n\n") if part.startswith("Clip budgets")]
    assert paragraph == (
        "Clip budgets matched on the base model's probe ([probe.png](../probe/probe.png); `calibration.json`): "
        "64 responses to 8 prompts (the measured half of 16 prompts × 8 samples, seed 0), target out-of-band "
        "rate 0.15 on these responses (± 0.02; `clipbench/calibration.py`); the rates below are on them, the "
        "clip-rate column is training's. Calibrated: fspo c_low = c_high = 0.04 (rate 0.156). "
        "Calibrated with part of the band set by hand: powerband c_high = 0.05, by hand c_low = 0.1 (rate 0.141). "
        "Set by hand (method_params), not calibrated: gspo eps_low = 0.005, eps_high = 0.01 (rate 0.234)."
    )
    assert "Clip budgets" not in table(date="d")  # no calibration: no paragraph
    # through the command: --calibration reads the file (its owner's reader)
    from clipbench import calibration, cli

    summary, fairness_csv = tmp_path / "summary.csv", tmp_path / "fairness.csv"
    summary_rows().to_csv(summary, index=False)
    fairness_rows().to_csv(fairness_csv, index=False)
    data = copy.deepcopy(CALIBRATION) | {"format": calibration.FORMAT, "rate": "", "provenance": {}}
    for rule in data["rules"].values():  # the keys the reader asks for, not read by the footer
        for key, value in {"band_fields": [], "method_params": {}, "hparams": {}, "plateau": None}.items():
            rule.setdefault(key, value)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "tables" / "main.md"
    argv = ["report", "--summary", str(summary), "--fairness", str(fairness_csv), "--table", str(out)]
    assert cli.main([*argv, "--calibration", str(path)]) == 0
    link = os.path.relpath("results/probe/probe.png", out.parent)  # from the table's folder
    assert paragraph.replace("../probe/probe.png", link) in out.read_text()
    plots = ["--plots", str(tmp_path / "plots"), "--only", "accuracy"]
    assert cli.main([*argv[:5], *plots, "--calibration", str(path)]) == 2  # the footer is the table's


# --------------------------------------------------------------------------- summary.csv


def study_evals(root, n_problems=30, k=4):
    """Evaluations of the base model and of grpo, ppo and fspo with seeds 0 and 1; fspo's verdicts
    are grpo's, seed by seed (the same method twice, under two names)."""
    rng = np.random.default_rng(11)
    p = rng.random(n_problems)
    paths = [write_eval(root, "base", rng.random((n_problems, k)) < p[:, None] / 2)]
    for seed in (0, 1):
        grpo = rng.random((n_problems, k)) < p[:, None]
        paths.append(write_eval(root, f"grpo-seed{seed}", grpo))
        paths.append(write_eval(root, f"ppo-seed{seed}", rng.random((n_problems, k)) < p[:, None] * 0.8))
        paths.append(write_eval(root, f"fspo-seed{seed}", grpo))
    return paths


def test_summary_csv_has_each_evaluation_and_each_method_with_intervals(tmp_path):
    paths = study_evals(tmp_path)
    summary = report.collect_evals(paths, n_resamples=200)
    assert list(summary.columns) == report.SUMMARY_COLUMNS + report.PROVENANCE_COLUMNS
    pooled, runs = summary[summary.scope == "pooled"], summary[summary.scope == "seed"]
    # pooled first, one row per method and metric (base first); then one per evaluation and metric
    assert summary.scope.tolist() == ["pooled"] * 8 + ["seed"] * 14
    assert pooled.method.tolist() == [m for m in ("base", "fspo", "grpo", "ppo") for _ in range(2)]
    assert (pooled.seed == -1).all() and (pooled.model == pooled.method).all()
    assert runs.model.tolist() == [p.parent.name for p in paths for _ in range(2)]
    assert pooled.set_index("method").n_seeds.to_dict() == {"base": 1, "fspo": 2, "grpo": 2, "ppo": 2}
    # every value inside its interval; the pooled value the mean of its runs' values
    assert ((summary.lo <= summary.value) & (summary.value <= summary.hi)).all()
    assert (summary.hi - summary.lo > 0).all()
    for (method, metric), value in pooled.set_index(["method", "metric"]).value.items():
        of_runs = runs[(runs.method == method) & (runs.metric == metric)].value
        assert value == pytest.approx(of_runs.mean(), abs=1e-12)
    # the evaluation's standard error carried through (avg@k; the summary has none for pass@k)
    stated = json.loads(paths[1].read_text())["avg@k_stderr"]
    grpo0 = runs[(runs.model == "grpo-seed0")].set_index("metric")
    assert grpo0.loc["avg@k", "stderr"] == stated and np.isnan(grpo0.loc["pass@k", "stderr"])
    assert runs.eval_file.tolist() == [str(p) for p in paths for _ in range(2)]
    assert runs["diff"].isna().all() and pooled["diff"].notna().all() and (pooled.reference == "grpo").all()


def test_the_paired_difference_of_a_method_with_itself_is_zero_with_a_zero_width_interval(tmp_path):
    summary = report.collect_evals(study_evals(tmp_path), n_resamples=200)
    pooled = summary[summary.scope == "pooled"].set_index(["method", "metric"])
    for metric in ("avg@k", "pass@k"):
        # the reference against itself, and fspo, whose verdicts are grpo's on every seed and problem
        for method in ("grpo", "fspo"):
            assert pooled.loc[(method, metric), ["diff", "diff_lo", "diff_hi"]].tolist() == [0.0, 0.0, 0.0]
        ppo = pooled.loc[("ppo", metric)]
        assert ppo["diff"] == pytest.approx(ppo["value"] - pooled.loc[("grpo", metric), "value"], abs=1e-12)
        assert ppo["diff_lo"] < ppo["diff"] < ppo["diff_hi"]
    # the sign: method minus reference. ppo's problems are easier for grpo (p * 0.8): below it.
    assert pooled.loc[("ppo", "avg@k"), "diff"] < 0
    # another reference: differences against ppo, ppo's own row zero, grpo's the opposite of before
    against_ppo = report.collect_evals(study_evals(tmp_path / "again"), reference="ppo", n_resamples=200)
    again = against_ppo[against_ppo.scope == "pooled"].set_index(["method", "metric"])
    assert again.loc[("ppo", "avg@k"), ["diff", "diff_lo", "diff_hi"]].tolist() == [0.0, 0.0, 0.0]
    assert again.loc[("grpo", "avg@k"), "diff"] == pytest.approx(-pooled.loc[("ppo", "avg@k"), "diff"])
    with pytest.raises(ValueError, match="reference 'gspo' has no verdicts"):
        report.collect_evals(study_evals(tmp_path / "third"), reference="gspo", n_resamples=10)


def test_summary_csv_intervals_are_seeded(tmp_path):
    paths = study_evals(tmp_path)
    first = report.collect_evals(paths, n_resamples=100, seed=3)
    pd.testing.assert_frame_equal(
        first, report.collect_evals(paths, n_resamples=100, seed=3), check_exact=True
    )
    other = report.collect_evals(paths, n_resamples=100, seed=4)
    assert not first[["lo", "hi"]].equals(other[["lo", "hi"]])
    assert first.drop(columns=["lo", "hi", "diff_lo", "diff_hi"]).equals(
        other.drop(columns=["lo", "hi", "diff_lo", "diff_hi"])
    )  # the points do not depend on the resamples


def test_collect_evals_carries_the_data_hash_check(tmp_path):
    paths = []
    for model, ok in [("base", True), ("ppo-seed0", False), ("ppo-seed1", None)]:
        correct = np.array([[True, False, True, True], [False, False, True, False]])
        paths.append(write_eval(tmp_path, model, correct, bench="math500", source={"sha256_ok": ok}))
    summary = report.collect_evals(paths, reference="ppo", n_resamples=10)
    by_model = summary[summary.scope == "seed"].drop_duplicates("model").set_index("model")
    assert by_model.data_sha256_ok.to_dict() == {"base": True, "ppo-seed0": False, "ppo-seed1": None}
    assert by_model.eval_file["ppo-seed0"] == str(paths[1])
    assert summary[summary.scope == "pooled"].data_sha256_ok.isna().all()  # no one file to speak for


def test_collect_evals_refuses_a_summary_whose_samples_changed(tmp_path):
    """A table cell must come from the generations its summary describes: a samples file edited or
    replaced after the summary was written is refused, naming the file; so is a summary whose
    numbers its samples do not give."""
    path = write_eval(tmp_path, "base", np.array([[True]]), bench="math500")
    assert report.collect_evals([path], reference="base").value.tolist() == [1.0, 1.0, 1.0, 1.0]
    samples = path.with_name("math500.samples.jsonl")
    samples.write_text('{"correct": false, "problem_id": "syn-0", "sample": 0}\n')
    with pytest.raises(ValueError, match="math500.samples.jsonl is not the file this summary describes"):
        report.collect_evals([path], reference="base")
    samples.unlink()
    with pytest.raises(ValueError, match="samples file math500.samples.jsonl is missing"):
        report.collect_evals([path], reference="base")
    path = write_eval(tmp_path / "b", "base", np.array([[True, False]]), bench="math500")
    path.write_text(json.dumps(json.loads(path.read_text()) | {"avg@k": 0.75}))
    with pytest.raises(ValueError, match="its samples give avg@k = 0.5, but the summary says 0.75"):
        report.collect_evals([path], reference="base")


# --------------------------------------------------------------------------- fairness.csv


def s_growth_records(steps=10):
    """2000 records of two runs: S with sd proportional to L (a = 1), prefix sums S_k with sd
    proportional to sqrt(k) where k <= L (a_w = 1/2; drawn after the other columns)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 200, size=2000)
    frame = pd.DataFrame(
        {
            "method": "m",
            "seed": np.repeat([0, 1], 1000),
            "step": np.tile(np.repeat(np.arange(steps), 1000 // steps), 2),
            "length": lengths,
            "S": rng.normal(0.0, 0.01 * lengths.astype(float)),  # sd proportional to L: a = 1
            "seq_out": (rng.random(2000) < lengths / 400).astype(float),
            "seq_clip": 0.0,
        }
    )
    for k, column in zip(artifacts.RECORD_PREFIX_LADDER, artifacts.PREFIX_COLUMNS, strict=True):
        frame[column] = np.where(lengths >= k, rng.normal(0.0, 0.01 * np.sqrt(k), size=2000), np.nan)
    return frame


def test_collect_fairness_carries_the_s_growth_exponent():
    records = s_growth_records()
    groups, bins = report.collect_fairness(records, n_bins=5, n_resamples=50)
    pooled = groups[groups.scope == "pooled"]
    assert len(pooled) == 1 and pooled["s_exponent"].iloc[0] == pytest.approx(1.0, abs=0.1)
    assert list(groups.columns) == report.FAIRNESS_COLUMNS and len(groups) == 3  # pooled, seed 0, seed 1
    assert (groups.n_bins == 5).all() and (groups.clip_column == "seq_out").all()
    assert groups.seed.tolist() == [-1, 0, 1] and set(bins[bins.scope == "pooled"].seed) == {-1}
    assert groups.n_runs.tolist() == [2, 1, 1] and groups.n_steps.tolist() == [20, 10, 10]
    assert len(bins[bins.scope == "pooled"]) == 5
    assert (bins[bins.scope == "seed"].groupby("seed").size() == 5).all()
    assert list(bins.columns[: len(report.FAIRNESS_BIN_KEYS)]) == report.FAIRNESS_BIN_KEYS
    # One row per what each file describes: a group once, a (group, bin) once.
    assert not groups.duplicated(["scope", "method", "seed"]).any()
    assert not bins.duplicated(["scope", "method", "seed", "bin"]).any()


def test_fairness_csv_carries_the_within_sequence_exponent_with_its_interval():
    records = s_growth_records()
    groups, _ = report.collect_fairness(records, n_bins=5, n_resamples=200)
    columns = list(groups.columns)
    at = columns.index("s_exponent_hi")
    assert columns[at + 1 : at + 4] == ["s_exponent_within", "s_exponent_within_lo", "s_exponent_within_hi"]
    assert columns[columns.index("n_bins") + 1] == "n_rungs"
    # |S_k| ~ sqrt(k) on the rungs 8 ... 128 (lengths 4 ... 199), while |S| ~ L across sequences
    assert (groups.n_rungs == 5).all()
    for row in groups.itertuples():
        assert row.s_exponent_within == pytest.approx(0.5, abs=0.05), row
        assert row.s_exponent_within_lo < 0.5 < row.s_exponent_within_hi
        assert row.s_exponent_within_hi - row.s_exponent_within_lo < 0.2
        assert row.s_exponent_lo > row.s_exponent_within_hi  # a (about 1) above a_w: told apart
    # The point: clipbench.fairness's a_w on the pooled rungs, per run.
    ks = fairness.record_rungs(records)
    within = fairness.within_sequence_summary(records, ks, by=("method", "seed"))
    assert (
        groups[groups.scope == "seed"]["s_exponent_within"].tolist() == within["s_exponent_within"].tolist()
    )


def test_records_without_prefix_sums_give_a_nan_within_sequence_exponent():
    # Runs of an older clipbench: their records have no S_k columns (or all NaN, as
    # artifacts.read_clip_records fills them): everything else as before, a_w NaN, no rung.
    records = s_growth_records()
    for old in (
        records.drop(columns=list(artifacts.PREFIX_COLUMNS)),
        records.assign(**{c: np.nan for c in artifacts.PREFIX_COLUMNS}),
    ):
        groups, bins = report.collect_fairness(old, n_bins=5, n_resamples=50)
        new, new_bins = report.collect_fairness(records, n_bins=5, n_resamples=50)
        assert list(groups.columns) == report.FAIRNESS_COLUMNS
        within = ["s_exponent_within", "s_exponent_within_lo", "s_exponent_within_hi"]
        assert groups[within].isna().all().all() and (groups.n_rungs == 0).all()
        rest = [c for c in report.FAIRNESS_COLUMNS if c not in (*within, "n_rungs")]
        pd.testing.assert_frame_equal(groups[rest], new[rest], check_exact=True)
        pd.testing.assert_frame_equal(bins, new_bins, check_exact=True)


def test_fairness_files_have_seeded_intervals_beside_unchanged_points():
    records = s_growth_records()
    groups, bins = report.collect_fairness(records, n_bins=5, n_resamples=100, seed=1)
    # the points: clipbench.fairness's, as before the intervals
    edges = fairness.length_bin_edges(records["length"], 5)
    _, summary = fairness.fairness_summary(records, by=("method", "seed"), edges=edges)
    per_seed = groups[groups.scope == "seed"].reset_index(drop=True)
    for metric in stats.FAIRNESS_METRICS:
        assert per_seed[metric].tolist() == summary[metric].tolist()
        assert ((groups[f"{metric}_lo"] <= groups[metric]) & (groups[metric] <= groups[f"{metric}_hi"])).all()
        assert (groups[f"{metric}_hi"] > groups[f"{metric}_lo"]).all()
    # each interval right after its value; the bins' clip rate and median |S| have theirs
    columns = list(groups.columns)
    assert columns[columns.index("spread") : columns.index("spread") + 3] == [
        "spread",
        "spread_lo",
        "spread_hi",
    ]
    columns = list(bins.columns)
    for column in ("seq_out", "abs_s_median"):
        assert columns[columns.index(column) + 1 : columns.index(column) + 3] == [
            f"{column}_lo",
            f"{column}_hi",
        ]
    assert "seq_clip_lo" not in columns  # the configured clip column only
    again = report.collect_fairness(records, n_bins=5, n_resamples=100, seed=1)
    other = report.collect_fairness(records, n_bins=5, n_resamples=100, seed=2)
    pd.testing.assert_frame_equal(groups, again[0], check_exact=True)
    pd.testing.assert_frame_equal(bins, again[1], check_exact=True)
    assert not groups.equals(other[0]) and groups[list(report.FAIRNESS_COLUMNS[:4])].equals(
        other[0].iloc[:, :4]
    )
