"""The main table and the fairness files, built from hand-made tidy inputs."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from clipbench import report


def summary_rows():
    rows = []
    for method, seed, value in [
        ("base", -1, 0.40),
        ("ppo", 0, 0.50),
        ("ppo", 1, 0.60),
        ("fspo", 0, 0.70),
        ("fspo", 1, 0.50),
        ("gspo", 0, 0.45),
        ("gspo", 1, 0.45),
    ]:
        rows.append(
            {
                "model": "x",
                "method": method,
                "seed": seed,
                "benchmark": "synthetic_test",
                "metric": "avg@k",
                "k": 4,
            }
            | {"value": value}
        )
    return pd.DataFrame(rows)


def fairness_rows():
    # fairness.csv: one pooled row per method, and one per method and seed: all main_table reads.
    values = {  # clip_rate, spread, lre, s_exponent
        "ppo": (0.005, 0.90, 0.0010, 2.5),
        "fspo": (0.170, 1.40, 0.0800, 2.7),
        "gspo": (0.160, 1.10, 0.0600, 2.8),
    }
    per_seed = {  # (spread, lre) of seeds 0 and 1: gspo's spreads lie below fspo's, their LREs overlap
        "ppo": [(0.85, 0.0009), (0.95, 0.0011)],
        "fspo": [(1.30, 0.0600), (1.50, 0.1000)],
        "gspo": [(1.00, 0.0500), (1.20, 0.0700)],
    }
    pooled = [
        {"scope": "pooled", "method": m, "seed": -1, "clip_column": "seq_out", "clip_rate": c, "spread": s}
        | {"lre": e, "s_exponent": a}
        for m, (c, s, e, a) in values.items()
    ]
    seeds = [
        {"scope": "seed", "method": m, "seed": seed, "clip_column": "seq_out", "clip_rate": values[m][0]}
        | {"spread": s, "lre": e}
        for m, rows in per_seed.items()
        for seed, (s, e) in enumerate(rows)
    ]
    return pd.DataFrame(pooled + seeds)


def table_lines():
    text = report.main_table(
        summary_rows(), fairness_rows(), config_name="t", config_hash="abc", seeds=[0, 1], commit="c0"
    )
    return {
        line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")
    }, text


def test_main_table_rows_levels_and_values():
    rows, text = table_lines()
    assert rows["method"].startswith(
        "| method | level | synthetic_test (avg@4) | clip rate | clip spread | LRE |"
    )
    assert rows["base"] == "| base | – | 0.400 | – | – | – | – |"
    # fspo: mean 0.6, std (ddof 1) of (0.7, 0.5) = 0.1414: the best accuracy, but 0.459-0.741 overlaps
    # ppo's 0.55 +- 0.071 (0.479-0.621): not bold. ppo is the only token rule: nothing to beat, not bold.
    assert rows["fspo"].startswith("| fspo | sequence | 0.600 ± 0.141 | 0.170 | 1.400 | 0.0800 | 2.70 |")
    assert rows["ppo"].startswith("| ppo | token | 0.550 ± 0.071 | 0.005 | 0.900 | 0.0010 | 2.50 |")
    assert "**" not in rows["fspo"] + rows["ppo"] + rows["base"]
    assert "config `t` (hash abc), commit c0".lower() in text.lower()


def test_a_best_accuracy_is_bold_only_when_it_separates_from_every_other_row():
    summary = summary_rows()
    fspo = summary.method == "fspo"
    summary.loc[fspo, "value"] = [0.80, 0.76]  # 0.78 +- 0.028: above ppo's 0.621 and the base's 0.4
    bold = report.main_table(
        summary, fairness_rows(), config_name="t", config_hash="a", seeds=[0, 1], commit="c"
    )
    assert "| fspo | sequence | **0.780 ± 0.028** |" in bold
    summary.loc[fspo, "value"] = [0.80, 0.46]  # 0.63 +- 0.24: the best mean, but not separated
    tie = report.main_table(
        summary, fairness_rows(), config_name="t", config_hash="a", seeds=[0, 1], commit="c"
    )
    assert "| fspo | sequence | 0.630 ± 0.240 |" in tie
    one_seed = summary[(summary.seed != 1)].copy()
    one_seed.loc[one_seed.method == "fspo", "value"] = 0.99  # far ahead, but one seed has no spread
    lone = report.main_table(
        one_seed, fairness_rows(), config_name="t", config_hash="a", seeds=[0], commit="c"
    )
    assert "| fspo | sequence | 0.990 ± 0.000 |" in lone
    assert "only where it separates from every other row" in lone


def test_data_hash_mismatch_is_named_in_the_footer(tmp_path):
    ok = summary_rows().assign(data_sha256_ok=True, eval_file="results/evals/x/synthetic_test.json")
    flagged = ok.astype({"data_sha256_ok": object})
    fspo0 = (flagged.method == "fspo") & (flagged.seed == 0)
    flagged.loc[fspo0, "model"] = "fspo-seed0"
    flagged.loc[fspo0, "data_sha256_ok"] = False
    flagged.loc[fspo0, "eval_file"] = "results/evals/fspo-seed0/synthetic_test.json"
    flagged.loc[flagged.method == "base", "data_sha256_ok"] = None  # a hub or generated set: unknown
    # through summary.csv, as `clipbench report` reads it
    flagged.to_csv(tmp_path / "summary.csv", index=False)
    from_csv = pd.read_csv(tmp_path / "summary.csv")

    def table(summary: pd.DataFrame) -> str:
        return report.main_table(
            summary, fairness_rows(), config_name="t", config_hash="abc", seeds=[0, 1], commit="c0", date="d"
        )

    plain, warned = table(ok), table(from_csv)
    assert "mismatch" not in plain and table(summary_rows()) == plain  # without the columns: as before
    body = [line for line in plain.splitlines() if line.startswith("|")]
    assert [line for line in warned.splitlines() if line.startswith("|")] == body  # the body is unchanged
    [warning] = [line for line in warned.splitlines() if "mismatch" in line]
    assert warning.startswith("⚠ data hash mismatch: 1 evaluation(s)")
    assert warning.endswith(": fspo-seed0/synthetic_test (results/evals/fspo-seed0/synthetic_test.json).")
    assert "ppo" not in warning and "base" not in warning


def test_collect_evals_carries_the_data_hash_check(tmp_path):
    paths = []
    for model, ok in [("base", True), ("ppo-seed0", False), ("ppo-seed1", None)]:
        path = tmp_path / "evals" / model / "math500.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"k": 4, "avg@k": 0.5, "pass@k": 0.75, "source": {"sha256_ok": ok}}))
        paths.append(path)
    summary = report.collect_evals(paths)
    assert list(summary.columns) == report.SUMMARY_COLUMNS + report.PROVENANCE_COLUMNS
    by_model = summary.drop_duplicates("model").set_index("model")
    assert by_model.data_sha256_ok.to_dict() == {"base": True, "ppo-seed0": False, "ppo-seed1": None}
    assert by_model.eval_file["ppo-seed0"] == str(paths[1])


def test_collect_evals_refuses_a_summary_whose_samples_changed(tmp_path):
    """A table cell must come from the generations its summary describes: a samples file edited or
    replaced after the summary was written is refused, naming the file."""
    path = tmp_path / "evals" / "base" / "math500.json"
    path.parent.mkdir(parents=True)
    samples = path.with_name("math500.samples.jsonl")
    samples.write_text('{"correct": true}\n')
    recorded = {"samples": samples.name, "samples_sha256": hashlib.sha256(samples.read_bytes()).hexdigest()}
    path.write_text(json.dumps({"k": 1, "avg@k": 1.0, "pass@k": 1.0, "files": recorded}))
    assert report.collect_evals([path]).value.tolist() == [1.0, 1.0]
    samples.write_text('{"correct": false}\n')
    with pytest.raises(ValueError, match="math500.samples.jsonl is not the file this summary describes"):
        report.collect_evals([path])
    samples.unlink()
    with pytest.raises(ValueError, match="samples file math500.samples.jsonl is missing"):
        report.collect_evals([path])


def test_an_undefined_s_growth_exponent_shows_as_a_dash():
    fairness_table = fairness_rows()
    fairness_table.loc[fairness_table.method == "gspo", "s_exponent"] = float("nan")
    text = report.main_table(
        summary_rows(), fairness_table, config_name="t", config_hash="abc", seeds=[0, 1], commit="c0"
    )
    gspo = next(line for line in text.splitlines() if line.startswith("| gspo |"))
    assert gspo.endswith("| 0.0600 | – |") and "nan" not in text


def test_spread_and_lre_are_compared_within_a_clipping_level():
    rows, _ = table_lines()
    # ppo has the lowest spread overall, but it counts tokens: among sequence rules gspo's 1.10 wins,
    # and its seeds (1.0, 1.2) lie below fspo's (1.3, 1.5). Its LRE is lower too, but the seeds overlap.
    assert "| **1.100** | 0.0600 |" in rows["gspo"]
    assert "**" not in rows["fspo"]


def test_collect_fairness_carries_the_s_growth_exponent():
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 200, size=2000)
    records = pd.DataFrame(
        {
            "method": "m",
            "seed": np.repeat([0, 1], 1000),
            "length": lengths,
            "S": rng.normal(0.0, 0.01 * lengths.astype(float)),  # sd proportional to L: a = 1
            "seq_out": 0.0,
            "seq_clip": 0.0,
        }
    )
    groups, bins = report.collect_fairness(records, n_bins=5)
    pooled = groups[groups.scope == "pooled"]
    assert len(pooled) == 1 and pooled["s_exponent"].iloc[0] == pytest.approx(1.0, abs=0.1)
    assert list(groups.columns) == report.FAIRNESS_COLUMNS and len(groups) == 3  # pooled, seed 0, seed 1
    assert (groups.n_bins == 5).all() and (groups.clip_column == "seq_out").all()
    assert groups.seed.tolist() == [-1, 0, 1] and set(bins[bins.scope == "pooled"].seed) == {-1}
    assert len(bins[bins.scope == "pooled"]) == 5
    assert (bins[bins.scope == "seed"].groupby("seed").size() == 5).all()
    assert list(bins.columns[: len(report.FAIRNESS_BIN_KEYS)]) == report.FAIRNESS_BIN_KEYS
    # One row per what each file describes: a group once, a (group, bin) once.
    assert not groups.duplicated(["scope", "method", "seed"]).any()
    assert not bins.duplicated(["scope", "method", "seed", "bin"]).any()


def test_the_footer_names_the_clip_column_the_metrics_used():
    groups = fairness_rows().assign(clip_column="seq_clip")
    text = report.main_table(
        summary_rows(), groups, config_name="t", config_hash="a", seeds=[0, 1], commit="c", date="d"
    )
    assert "clipped-gradient rate (`seq_clip`)" in text and "seq_out" not in text
    text = report.main_table(
        summary_rows(), fairness_rows(), config_name="t", config_hash="a", seeds=[0, 1], commit="c", date="d"
    )
    assert "out-of-band rate (`seq_out`)" in text and "seq_clip" not in text
