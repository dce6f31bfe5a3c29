"""Aggregation and reporting of a study: the tidy result files and the main table.

* `collect_evals` -> results/summary.csv: accuracy (avg@k, pass@k) from the evaluation summaries
  (`clipbench evaluate`) and their per-sample verdicts. Scope "seed": one row per evaluation (a
  run, or the base model with method "base", seed -1), with the summary's standard error and
  whether its local data file had the registry's sha256; scope "pooled": one row per method (its
  seeds together, seed -1), with the paired difference against a reference method (default
  grpo). Every value has its 95% bootstrap interval (`clipbench.stats`).
* `collect_fairness` -> results/fairness.csv and results/fairness_bins.csv, on the training runs'
  per-sequence clip records with bin edges shared by every run (`clipbench.fairness`): per method
  (scope "pooled", seeds pooled, seed -1) and per run (scope "seed"), the clip rate, spread, slope,
  LRE, S-growth exponent a (across sequences) and within-sequence exponent a_w (prefix sums) with
  their intervals (fairness.csv), and each length bin's size, share,
  mean length, clip rates and median |S| (fairness_bins.csv; the clip rate of the configured clip
  column and the median |S| with intervals). Each file has one row per what it describes.
* `main_table` -> results/tables/main.md: a row per method plus the base model, with its clipping
  level; per benchmark the pooled accuracy, then clip rate, spread, LRE, S growth a and a_w, each
  with its interval; bold only for a best value whose interval separates, else the tie marked; a block of
  paired differences against the reference; the footer names every evaluation whose data file's
  sha256 differs from the registry's.
* `unmet_needs`: what the main table needs from its inputs and they lack, so that a report checks
  every requested output before it writes any. The plots: `clipbench.plots`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from clipbench import artifacts, fairness, methods, stats

BASE = artifacts.BASE
#: summary.csv's columns. One row per scope, model, benchmark and metric (avg@k, pass@k): scope
#: "seed", one per evaluation (a run, or the base model with seed -1), its value as the evaluation
#: summary has it, the summary's standard error (avg@k only) and a bootstrap interval over the
#: problems; scope "pooled", one per method (its seeds together, seed -1, model the method's name;
#: the base model its one evaluation), the value with an interval over seeds and problems, and the
#: paired difference against the reference method with its interval (clipbench.stats).
SUMMARY_COLUMNS = [
    "scope",
    "model",
    "method",
    "seed",
    "benchmark",
    "metric",
    "k",
    "value",
    "lo",
    "hi",
    "stderr",
    "n_seeds",
    "n_problems",
    "reference",
    "diff",
    "diff_lo",
    "diff_hi",
]
# Also in summary.csv, after those: whether the evaluation's local data file had the registry's
# sha256 (empty for hub and generated sets), and the evaluation summary each row comes from.
PROVENANCE_COLUMNS = ["data_sha256_ok", "eval_file"]
#: What the main table reads from summary.csv.
TABLE_SUMMARY_NEEDS = ["scope", "method", "seed", "benchmark", "metric", "k", "value", "lo", "hi"]
TABLE_SUMMARY_NEEDS += ["reference", "diff", "diff_lo", "diff_hi"]
#: fairness.csv's columns: a group (scope, method, seed), then its metrics (clipbench.fairness),
#: each followed by its interval's bounds (clipbench.stats), then the bins, the prefix rungs the
#: within-sequence exponent was fitted on (0: the records have no prefix sums), runs and RL steps.
FAIRNESS_COLUMNS = [
    "scope",
    "method",
    "seed",
    "clip_column",
    *(f"{m}{end}" for m in stats.FAIRNESS_METRICS for end in ("", "_lo", "_hi")),
    "n_bins",
    "n_rungs",
    "n_runs",
    "n_steps",
]
#: fairness_bins.csv's first columns: the group and the bin; then the bin's values.
FAIRNESS_BIN_KEYS = ["scope", "method", "seed", "bin", "bin_lo", "bin_hi", "n", "share", "length_mean"]
#: What the main table reads from fairness.csv. The within-sequence exponent's columns are read when
#: there ("–" otherwise): a fairness.csv made before they existed still gives a table.
TABLE_FAIRNESS_NEEDS = ["scope", "method", "clip_column"]
TABLE_FAIRNESS_NEEDS += [
    f"{m}{end}" for m in ("clip_rate", "spread", "lre", "s_exponent") for end in ("", "_lo", "_hi")
]
#: What each clip indicator counts, as the main table's footer says it.
CLIP_COLUMN_MEANING = {"seq_out": "out-of-band rate", "seq_clip": "clipped-gradient rate"}


# --------------------------------------------------------------------------- tidy files


def evaluation_rows(eval_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per evaluation summary (results/evals/{model}/{benchmark}.json, model "base" or
    "{method}-seed{seed}") and metric: model, method, seed, benchmark, metric, k, value, the
    summary's standard error (``avg@k_stderr``; none for pass@k) and the provenance columns.
    ValueError for a summary whose recorded sibling files (samples, prompts) are missing or changed
    (:func:`clipbench.evaluate.read_outputs`)."""
    from clipbench.evaluate import read_outputs  # the owner of the evaluation files

    rows = []
    for path in map(Path, eval_files):
        summary = read_outputs(path)  # refuses a summary whose samples or prompts file changed
        model, bench = artifacts.eval_model_and_bench(path)
        run = artifacts.parse_model(model)
        method, seed = (BASE, -1) if run is None else (run.method, run.seed)
        for metric in stats.ACCURACY_METRICS:
            stderr = summary.get(f"{metric}_stderr")
            rows.append(
                {
                    "scope": "seed",
                    "model": model,
                    "method": method,
                    "seed": seed,
                    "benchmark": bench,
                    "metric": metric,
                    "k": summary["k"],
                    "value": float(summary[metric]),
                    "stderr": float("nan") if stderr is None else float(stderr),
                    "data_sha256_ok": (summary.get("source") or {}).get("sha256_ok"),
                    "eval_file": str(path),
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS + PROVENANCE_COLUMNS)


def collect_evals(
    eval_files: Iterable[str | Path],
    *,
    reference: str = stats.DEFAULT_REFERENCE,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """summary.csv (:data:`SUMMARY_COLUMNS` then :data:`PROVENANCE_COLUMNS`): the pooled rows (one
    per method, benchmark and metric, base first, then by method name), then the evaluations' rows
    (:func:`evaluation_rows`, in the order of ``eval_files``), each with its 95% bootstrap interval
    from the per-sample verdicts (:func:`clipbench.stats.read_verdicts`): scope "seed" over the
    run's problems, scope "pooled" over its seeds and problems (crossed), and on the pooled rows the
    paired difference against ``reference`` (:func:`clipbench.stats.accuracy_differences`; the
    reference's own row 0 with a zero-width interval). The resamples are seeded by ``seed``.

    ValueError when ``reference`` has no evaluations on a benchmark, or when an evaluation's
    samples do not give the avg@k or pass@k its summary states."""
    eval_files = [Path(p) for p in eval_files]
    evals = evaluation_rows(eval_files)
    verdicts = stats.read_verdicts(eval_files)
    intervals = stats.accuracy_intervals(verdicts, n_resamples=n_resamples, seed=seed)
    differences = stats.accuracy_differences(verdicts, reference, n_resamples=n_resamples, seed=seed)

    # Each evaluation's own row: the base model has its pooled row only (one run).
    runs = intervals[(intervals.scope == "seed") | (intervals.method == BASE)].set_index(
        ["benchmark", "method", "seed"]
    )
    for i, row in evals.iterrows():
        run = runs.loc[(row.benchmark, row.method, row.seed)]
        if not np.isclose(run[row.metric], row.value, rtol=0, atol=1e-9):
            raise ValueError(
                f"{row.eval_file}: its samples give {row.metric} = {float(run[row.metric])!r}, but the summary "
                f"says {row.value!r}; re-evaluate {row.model} on {row.benchmark}"
            )
        evals.loc[i, ["lo", "hi"]] = [run[f"{row.metric}_lo"], run[f"{row.metric}_hi"]]
        evals.loc[i, ["n_seeds", "n_problems"]] = [1, run["n_problems"]]

    diffs = differences.set_index(["benchmark", "method"])
    pooled = []
    for _, row in intervals[intervals.scope == "pooled"].iterrows():
        diff = diffs.loc[(row.benchmark, row.method)] if (row.benchmark, row.method) in diffs.index else None
        for metric in stats.ACCURACY_METRICS:
            out = {"scope": "pooled", "model": row.method, "method": row.method, "seed": -1}
            out |= {"benchmark": row.benchmark, "metric": metric, "k": row.k, "value": row[metric]}
            out |= {"lo": row[f"{metric}_lo"], "hi": row[f"{metric}_hi"]}
            out |= {"n_seeds": row.n_seeds, "n_problems": row.n_problems, "reference": reference}
            if diff is not None:  # a method sharing no seed or problem with the reference has none
                out |= {end: diff[f"{metric}_{end}"] for end in ("diff", "diff_lo", "diff_hi")}
            pooled.append(out)
    pooled = pd.DataFrame(pooled, columns=SUMMARY_COLUMNS + PROVENANCE_COLUMNS)
    pooled["_order"] = pooled.method.ne(BASE)
    pooled = pooled.sort_values(["_order", "method", "benchmark", "metric"], kind="stable").drop(
        columns="_order"
    )
    out = pd.concat([pooled, evals], ignore_index=True)
    return out.astype({"seed": int, "k": int, "n_seeds": int, "n_problems": int})


def _hash_mismatches(summary: pd.DataFrame) -> list[str]:
    """``model/benchmark (eval file)`` of every evaluation whose local data file's sha256 differs
    from the registry's (``data_sha256_ok`` false; a summary.csv without that column has none)."""
    if "data_sha256_ok" not in summary.columns:
        return []
    flagged = summary[summary["data_sha256_ok"].astype(str).str.strip().str.lower() == "false"]
    files = flagged["eval_file"] if "eval_file" in flagged.columns else pd.Series("?", index=flagged.index)
    found = {f"{m}/{b} ({f})" for m, b, f in zip(flagged["model"], flagged["benchmark"], files, strict=True)}
    return sorted(found)


def read_clip_records(run_dirs: Mapping[tuple[str, int], str | Path]) -> pd.DataFrame:
    """Every run's per-sequence clip records, with method and seed columns."""
    if not run_dirs:
        raise ValueError("read_clip_records: no run directories given")
    frames = []
    for (method, seed), run_dir in run_dirs.items():
        frames.append(artifacts.read_clip_records(run_dir).assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True)


def collect_fairness(
    records: pd.DataFrame,
    n_bins: int = fairness.DEFAULT_BINS,
    clip_column: str = "seq_out",
    *,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fairness.csv, fairness_bins.csv): per group, its metrics; per group and bin, the bin's
    values. scope "pooled" pools the seeds (seed = -1); scope "seed" is per run. Bin edges, and the
    prefix rungs of the within-sequence exponent (``fairness.record_rungs``), are shared by every
    row. Each metric, and each bin's clip rate and median |S|, is followed by its
    95% bootstrap interval (``_lo``, ``_hi``; :func:`clipbench.stats.fairness_intervals`: a run's RL
    steps resampled, and for a pooled row its runs first; seeded by ``seed``)."""
    edges = fairness.length_bin_edges(fairness.off_policy(records)["length"], n_bins)
    ks = fairness.record_rungs(records)
    groups, bins = [], []
    for scope, by in stats.SCOPES:
        by_bin, summary = fairness.fairness_summary(
            records, by=by, edges=edges, clip_column=clip_column, ks=ks
        )
        if scope == "pooled":
            by_bin["seed"] = summary["seed"] = -1
        groups.append(summary.assign(scope=scope, clip_column=clip_column))
        bins.append(by_bin.assign(scope=scope))
    groups = pd.concat(groups, ignore_index=True)
    bins = pd.concat(bins, ignore_index=True)
    bins = bins[FAIRNESS_BIN_KEYS + [c for c in bins.columns if c not in FAIRNESS_BIN_KEYS]]

    # The intervals, joined on the group (and bin); stats checks that its points are these.
    group_ci, bin_ci = stats.fairness_intervals(
        records, n_resamples=n_resamples, seed=seed, edges=edges, clip_column=clip_column, ks=ks
    )
    keys = ["scope", "method", "seed"]
    bounds = [f"{m}{end}" for m in stats.FAIRNESS_METRICS for end in ("_lo", "_hi")]
    groups = groups.merge(
        group_ci[[*keys, *bounds, "n_runs", "n_steps"]], on=keys, how="left", validate="1:1"
    )
    with_ci = [c for c in (clip_column, "abs_s_median") if f"{c}_lo" in bin_ci.columns]
    bin_bounds = [f"{c}{end}" for c in with_ci for end in ("_lo", "_hi")]
    bins = bins.merge(bin_ci[[*keys, "bin", *bin_bounds]], on=[*keys, "bin"], how="left", validate="1:1")
    order = []
    for column in bins.columns:
        if column not in bin_bounds:
            order += [column] + ([f"{column}_lo", f"{column}_hi"] if column in with_ci else [])
    return groups[FAIRNESS_COLUMNS], bins[order]


# --------------------------------------------------------------------------- the main table


def _level(method: str) -> str:
    """A registered rule's clipping level ("token" or "sequence"); "–" for the base model."""
    return methods.get_method_class(method).level if method in methods.available_methods() else "–"


def _number(value: float, digits: int, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (a leading + with ``sign``); never "-0.000"."""
    return f"{round(float(value), digits) + 0.0:{'+' if sign else ''}.{digits}f}"


def _with_interval(value: float, low: float, high: float, digits: int, sign: bool = False) -> str:
    """``value [low, high]``, the compact form of a point and its interval; the point alone when the
    interval is undefined (NaN)."""
    text = _number(value, digits, sign)
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{_number(low, digits, sign)}, {_number(high, digits, sign)}]"
    return text


#: The main table's columns after the accuracy ones: key, title, fairness.csv column, decimals,
#: which value is best (None: not compared), compared within a clipping level.
FAIRNESS_TABLE_COLUMNS = [
    ("clip", "clip rate", "clip_rate", 3, None, False),
    ("spread", "clip spread", "spread", 3, "lower", True),
    ("lre", "LRE", "lre", 4, "lower", True),
    ("growth", "S growth a", "s_exponent", 2, None, False),
    ("within", "S growth a_w", "s_exponent_within", 2, None, False),
]
#: The mark of a value tied for best (clipbench.stats.tied_best).
TIE_MARK = "≈"


def main_table(
    summary: pd.DataFrame,
    fairness_table: pd.DataFrame,
    *,
    config_name: str,
    config_hash: str,
    seeds: list[int],
    commit: str | None,
    date: str | None = None,
    calibration: Mapping | None = None,
    table_dir: str | Path | None = None,
) -> str:
    """Markdown: a row per method (plus base) with its clipping level, accuracy (avg@k) per
    benchmark, then clip rate, spread, LRE, the S-growth exponent a and the within-sequence exponent
    a_w ("–" where NaN or where fairness.csv lacks it), each as its pooled value (seeds together)
    with its 95% interval (summary.csv's and fairness.csv's pooled rows). Bold: the
    highest accuracy, and the lowest spread and LRE within each level, only where its interval
    separates from every other row's of that comparison (:func:`clipbench.stats.separated_best`);
    else :data:`TIE_MARK` marks the rows tied for best (:func:`clipbench.stats.tied_best`). Then a
    block of paired differences of avg@k against the reference method, with their intervals. With
    `calibration` (calibration.json's content), a footer paragraph on the clip budgets
    (:func:`calibration_footer`; `table_dir`: where the table goes, for the link to the probe's plot)."""
    pooled_acc = summary[(summary.scope == "pooled") & (summary.metric == "avg@k")]
    benches = sorted(pooled_acc.benchmark.unique())
    ks = {b: int(pooled_acc[pooled_acc.benchmark == b].k.iloc[0]) for b in benches}
    pooled = fairness_table[fairness_table.scope == "pooled"].set_index("method")
    clip_column = str(pooled["clip_column"].iloc[0])
    names = [BASE] + sorted(m for m in pooled_acc.method.unique() if m != BASE)
    level = {m: _level(m) for m in names}
    # cells[method][key] = (point, low, high, decimals)
    cells: dict[str, dict[str, tuple[float, float, float, int]]] = {m: {} for m in names}
    for row in pooled_acc.itertuples():
        cells[row.method][row.benchmark] = (float(row.value), float(row.lo), float(row.hi), 3)
    for m in names:
        if m not in pooled.index:
            continue
        row = pooled.loc[m]
        for key, _, column, digits, _, _ in FAIRNESS_TABLE_COLUMNS:
            # An exponent is NaN when fewer than two bins (rungs) have a median |S| (|S_k|) > 0; a_w
            # also for records without prefix sums, and a fairness.csv from before a_w lacks it.
            if column in row.index and np.isfinite(row[column]):
                cells[m][key] = (
                    float(row[column]),
                    float(row[f"{column}_lo"]),
                    float(row[f"{column}_hi"]),
                    digits,
                )
    # (key, title, better, compared within a clipping level)
    columns = [(b, f"{b} (avg@{ks[b]})", "higher", False) for b in benches]
    columns += [
        (key, title, better, per_level) for key, title, _, _, better, per_level in FAIRNESS_TABLE_COLUMNS
    ]
    bold, tied = set(), set()
    for key, _, better, per_level in columns:
        if better is None:
            continue
        for lvl in sorted(set(level.values())) if per_level else [None]:
            group = [m for m in names if key in cells[m] and (lvl is None or level[m] == lvl)]
            intervals = {m: cells[m][key][1:3] for m in group}
            winner = stats.separated_best(intervals, better)
            if winner is not None:
                bold.add((winner, key))
            points = {m: cells[m][key][0] for m in group}
            tied.update((m, key) for m in stats.tied_best(intervals, points, better))
    lines = ["| method | level | " + " | ".join(title for _, title, _, _ in columns) + " |"]
    lines.append("|---|---|" + "---:|" * len(columns))
    for m in names:
        row = []
        for key, _, _, _ in columns:
            if key not in cells[m]:
                row.append("–")
                continue
            text = _with_interval(*cells[m][key])
            row.append(
                f"**{text}**" if (m, key) in bold else f"{text} {TIE_MARK}" if (m, key) in tied else text
            )
        lines.append(f"| {m} | {level[m]} | " + " | ".join(row) + " |")
    reference, delta, n_delta = _difference_block(pooled_acc, names, benches)
    lines += ["", *delta] if delta else []
    date = date or _dt.date.today().isoformat()
    level_pct = f"{stats.DEFAULT_LEVEL:.0%}"
    lines += [
        "",
        f"Each value: the point estimate on the data as observed, then its {level_pct} percentile bootstrap interval "
        "[low, high], seeded (the same files give the same intervals; `clipbench/stats.py`). "
        f"Accuracy: avg@k (mean over k samples per problem, then over problems and seeds {seeds}); its interval "
        "resamples seeds and problems together (crossed: every drawn seed on the same drawn problems), the base "
        "model's (one run) problems only. "
        f"Clip rate, spread and LRE: {CLIP_COLUMN_MEANING.get(clip_column, 'rate')} (`{clip_column}`) by response-length bin over the off-policy training "
        "updates (the first update of each step, at ratio 1, left out), seeds pooled; a token-level rule's rate counts tokens, a sequence-level rule's whole responses, so spread "
        "and LRE are compared (bold: lowest) within a level. S growth a: median |S| ~ L^a over the same bins, "
        "across responses of different lengths (1/2: the sqrt(L) band of FSPO is flat; 1: GSPO's S/L band; 0: a "
        "fixed band). Within a_w: median |S_k| ~ k^a_w, S_k the sum over a response's first k tokens (k = 8, "
        "16, 32, ...), within the same responses as they grow; a above a_w: long responses carry larger "
        "per-token log-ratios than short ones. Their intervals resample runs, then each drawn run's RL steps. "
        "Bold: the best accuracy, or the lowest spread or LRE within a level, only where its interval lies wholly "
        f"beyond every other row's of that comparison; otherwise {TIE_MARK} marks the rows tied for best: the best "
        "value's row and every row whose interval overlaps its interval. "
        + (
            f"Δ: avg@k minus {reference}'s, paired (the same seeds and problems, one draw for both; the base model "
            f"against every seed of {reference}); * marks an interval that excludes 0; of {n_delta} such intervals about "
            f"{n_delta * (1 - stats.DEFAULT_LEVEL):.1f} would exclude 0 by chance at {level_pct} if no row differed from "
            f"{reference}. Detectable: the "
            "smallest true difference this design finds with probability 0.8 (its interval excluding 0), 2.8 standard "
            "errors, the standard error read off each interval as its half-width over 1.96, the median over the trained "
            "methods (`stats.detectable_difference`). "
            if delta
            else ""
        )
        + "Definitions: `clipbench/fairness.py`, `clipbench/stats.py`.",
        f"Config `{config_name}` (hash {config_hash}), commit {commit}, {date}.",
    ]
    if calibration is not None:
        lines += ["", calibration_footer(calibration, table_dir)]
    mismatches = _hash_mismatches(summary)
    if mismatches:  # a paragraph of its own, so that it cannot be read past
        lines += [
            "",
            f"⚠ data hash mismatch: {len(mismatches)} evaluation(s) read a local data file whose sha256 differs "
            "from the registry's (`clipbench/benchmarks/registry.py`), so their numbers may not be on the published set: "
            + "; ".join(mismatches)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _band_text(values: Mapping[str, float], order: list[str] | None = None) -> str:
    """``c_low = c_high = 0.041`` for equal values, else ``eps_low = 0.005, eps_high = 0.01``; the
    fields in `order` (the rule's band_fields: calibration.json's keys are sorted), then the others."""
    rank = {name: i for i, name in enumerate(order or [])}
    values = dict(sorted(values.items(), key=lambda kv: rank.get(kv[0], len(rank))))  # stable
    if len(set(values.values())) == 1 and len(values) > 1:
        return " = ".join(values) + f" = {next(iter(values.values())):g}"
    return ", ".join(f"{k} = {v:g}" for k, v in values.items())


def _rate_text(name: str, rule: Mapping) -> str:
    """ "rate 0.148", with " of tokens" for a token-level rule (its rate counts tokens)."""
    return f"rate {rule['rate']:.3f}" + (" of tokens" if _level(name) == "token" else "")


def calibration_footer(calibration: Mapping, table_dir: str | Path | None = None) -> str:
    """The main table's paragraph on the clip budgets: the probe they were matched on (responses,
    prompts x samples, seed; a link to its plot, relative to `table_dir`), the target and its
    tolerance, each calibrated rule's band and achieved rate, and the bands set by hand (method_params)
    with the rate they give on the same responses."""
    import os

    probe = calibration["probe"]
    plot = Path(probe["sequences"]).parent / artifacts.PROBE_FILES["plot"]
    link = os.path.relpath(plot, table_dir) if table_dir is not None else str(plot)
    groups = {"calibrated": [], "partly hand": [], "hand": []}
    for name, rule in calibration["rules"].items():
        groups[rule["source"]].append((name, rule))
    parts = [
        f"Clip budgets matched on the base model's probe ([probe.png]({link}); `calibration.json`): "
        f"{probe['responses']} responses to {probe['groups']} prompts (the measured half of {probe['prompts']} "
        f"prompts × {probe['samples']} samples, seed {probe['seed']}), target out-of-band rate "
        f"{calibration['target_rate']:g} on these responses (± {calibration['tolerance']:g}; "
        "`clipbench/calibration.py`); the rates below are on them, the clip-rate column is training's."
    ]
    if groups["calibrated"]:
        parts.append(
            "Calibrated: "
            + "; ".join(
                f"{n} {_band_text(r['calibrated'], r.get('band_fields'))} ({_rate_text(n, r)})"
                for n, r in groups["calibrated"]
            )
            + "."
        )
    if groups["partly hand"]:
        parts.append(
            "Calibrated with part of the band set by hand: "
            + "; ".join(
                f"{n} {_band_text(r['calibrated'], r.get('band_fields'))}, by hand "
                f"{_band_text(r['hand'], r.get('band_fields'))} ({_rate_text(n, r)})"
                for n, r in groups["partly hand"]
            )
            + "."
        )
    if groups["hand"]:
        parts.append(
            "Set by hand (method_params), not calibrated: "
            + "; ".join(
                f"{n} {_band_text(r['hand'], r.get('band_fields'))} ({_rate_text(n, r)})"
                for n, r in groups["hand"]
            )
            + "."
        )
    return " ".join(parts)


def _difference_block(
    pooled_acc: pd.DataFrame, names: list[str], benches: list[str]
) -> tuple[str, list[str], int]:
    """(the reference, the lines of the paired-difference table, the number of intervals in it):
    a row per method, Δ avg@k with its interval per benchmark, the reference's own cell
    "0 (reference)", then the design's detectable difference per benchmark; no lines without
    differences."""
    with_diff = pooled_acc[pooled_acc["diff"].notna()]
    references = sorted(with_diff["reference"].dropna().astype(str).unique())
    if not references:
        return "", [], 0
    if len(references) > 1:
        raise ValueError(f"summary.csv: differences against several references {references}; expected one")
    [reference] = references
    diffs = with_diff.set_index(["method", "benchmark"])
    lines = [f"| Δ avg@k vs {reference} | " + " | ".join(benches) + " |", "|---|" + "---:|" * len(benches)]
    n_intervals = 0
    for m in names:
        row = []
        for b in benches:
            if m == reference and (m, b) in diffs.index:
                row.append("0 (reference)")
            elif (m, b) in diffs.index:
                d = diffs.loc[(m, b)]
                text = _with_interval(d["diff"], d["diff_lo"], d["diff_hi"], 3, sign=True)
                row.append(text + (" *" if d["diff_lo"] > 0 or d["diff_hi"] < 0 else ""))
                n_intervals += 1
            else:
                row.append("–")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines.append(
        "| detectable (80% power) | "
        + " | ".join(_detectable_text(diffs, reference, b) for b in benches)
        + " |"
    )
    return reference, lines, n_intervals


def _detectable_text(diffs: pd.DataFrame, reference: str, benchmark: str) -> str:
    """The design's power on one benchmark: ``stats.detectable_difference`` of each trained method's
    paired interval against the reference (not the base model's: one run, another design), the
    median over methods, as "±0.052"; "–" when there is none."""
    values = [
        stats.detectable_difference(d["diff_lo"], d["diff_hi"])
        for (method, bench), d in diffs.iterrows()
        if bench == benchmark and method not in (reference, BASE)
    ]
    values = [v for v in values if math.isfinite(v)]
    return f"±{float(np.median(values)):.3f}" if values else "–"


# --------------------------------------------------------------------------- what each output needs


def missing_columns(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The ``columns`` that ``frame`` lacks, in their order."""
    return [c for c in columns if c not in frame.columns]


def unmet_needs(summary: pd.DataFrame, fairness_table: pd.DataFrame) -> str | None:
    """What the main table needs from summary.csv and fairness.csv and they lack, as a phrase that
    completes "the main table needs ..."; None when it can be made."""
    lacking = missing_columns(summary, TABLE_SUMMARY_NEEDS)
    if lacking:
        return f"--summary with the columns {lacking} (a summary.csv from `clipbench aggregate`)"
    if not ((summary["scope"] == "pooled") & (summary["metric"] == "avg@k")).any():
        return "--summary with pooled avg@k rows (it has none)"
    lacking = missing_columns(fairness_table, TABLE_FAIRNESS_NEEDS)
    if lacking:
        return f"--fairness with the columns {lacking} (a fairness.csv from `clipbench aggregate`)"
    if not (fairness_table["scope"] == "pooled").any():
        return "--fairness with pooled rows (it has none)"
    return None
