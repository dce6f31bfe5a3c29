"""Aggregation and reporting of a study: the tidy result files and the main table.

* `collect_evals` -> results/summary.csv: one row per (model, method, seed, benchmark, metric),
  from the evaluation summaries (`clipbench evaluate`); the base model has method "base". Each row
  also says whether the local data file had the registry's sha256 and which summary it came from.
* `collect_fairness` -> results/fairness.csv and results/fairness_bins.csv, on the training runs'
  per-sequence clip records with bin edges shared by every run (`clipbench.fairness`): per method
  (scope "pooled", seeds pooled, seed -1) and per run (scope "seed"), the clip rate, spread, slope,
  LRE and S-growth exponent (fairness.csv), and each length bin's size, share, mean length, clip
  rates and median |S| (fairness_bins.csv). Each file has one row per what it describes.
* `main_table` -> results/tables/main.md: a row per method plus the base model, with its clipping
  level; per benchmark the accuracy as mean +- std over seeds; clip rate, spread, LRE and S growth;
  the footer names every evaluation whose data file's sha256 differs from the registry's.
* `unmet_needs`: what the main table needs from its inputs and they lack, so that a report checks
  every requested output before it writes any. The plots: `clipbench.plots`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from clipbench import artifacts, fairness, methods

BASE = artifacts.BASE
SUMMARY_COLUMNS = ["model", "method", "seed", "benchmark", "metric", "k", "value"]
# Also in summary.csv, after those: whether the evaluation's local data file had the registry's
# sha256 (empty for hub and generated sets), and the evaluation summary each row comes from.
PROVENANCE_COLUMNS = ["data_sha256_ok", "eval_file"]
#: fairness.csv's columns: a group (scope, method, seed), then its metrics (clipbench.fairness).
FAIRNESS_COLUMNS = [
    "scope",
    "method",
    "seed",
    "clip_column",
    "clip_rate",
    "spread",
    "slope",
    "lre",
    "s_exponent",
    "n_bins",
]
#: fairness_bins.csv's first columns: the group and the bin; then the bin's values.
FAIRNESS_BIN_KEYS = ["scope", "method", "seed", "bin", "bin_lo", "bin_hi", "n", "share", "length_mean"]
#: What each clip indicator counts, as the main table's footer says it.
CLIP_COLUMN_MEANING = {"seq_out": "out-of-band rate", "seq_clip": "clipped-gradient rate"}


# --------------------------------------------------------------------------- tidy files


def collect_evals(eval_files: Iterable[str | Path]) -> pd.DataFrame:
    """summary.csv rows from evaluation summaries at results/evals/{model}/{benchmark}.json,
    where model is "base" or "{method}-seed{seed}"; ValueError for a summary whose recorded sibling
    files (samples, prompts) are missing or changed (:func:`clipbench.evaluate.read_outputs`)."""
    from clipbench.evaluate import read_outputs  # the owner of the evaluation files

    rows = []
    for path in map(Path, eval_files):
        summary = read_outputs(path)  # refuses a summary whose samples or prompts file changed
        model, bench = artifacts.eval_model_and_bench(path)
        run = artifacts.parse_model(model)
        method, seed = (BASE, -1) if run is None else (run.method, run.seed)
        for metric in ("avg@k", "pass@k"):
            rows.append(
                {
                    "model": model,
                    "method": method,
                    "seed": seed,
                    "benchmark": bench,
                    "metric": metric,
                    "k": summary["k"],
                    "value": float(summary[metric]),
                    "data_sha256_ok": (summary.get("source") or {}).get("sha256_ok"),
                    "eval_file": str(path),
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS + PROVENANCE_COLUMNS)


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
    records: pd.DataFrame, n_bins: int = fairness.DEFAULT_BINS, clip_column: str = "seq_out"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fairness.csv, fairness_bins.csv): per group, its metrics; per group and bin, the bin's
    values. scope "pooled" pools the seeds (seed = -1); scope "seed" is per run. Bin edges are
    shared by every row."""
    edges = fairness.length_bin_edges(fairness.off_policy(records)["length"], n_bins)
    groups, bins = [], []
    for scope, by in (("pooled", ("method",)), ("seed", ("method", "seed"))):
        by_bin, summary = fairness.fairness_summary(records, by=by, edges=edges, clip_column=clip_column)
        if scope == "pooled":
            by_bin["seed"] = summary["seed"] = -1
        groups.append(summary.assign(scope=scope, clip_column=clip_column))
        bins.append(by_bin.assign(scope=scope))
    groups = pd.concat(groups, ignore_index=True)[FAIRNESS_COLUMNS]
    bins = pd.concat(bins, ignore_index=True)
    return groups, bins[FAIRNESS_BIN_KEYS + [c for c in bins.columns if c not in FAIRNESS_BIN_KEYS]]


# --------------------------------------------------------------------------- the main table


def _mean_std(values: pd.Series) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _level(method: str) -> str:
    """A registered rule's clipping level ("token" or "sequence"); "–" for the base model."""
    return methods.get_method_class(method).level if method in methods.available_methods() else "–"


def main_table(
    summary: pd.DataFrame,
    fairness_table: pd.DataFrame,
    *,
    config_name: str,
    config_hash: str,
    seeds: list[int],
    commit: str | None,
    date: str | None = None,
) -> str:
    """Markdown: a row per method (plus base) with its clipping level, accuracy (avg@k) mean +- std
    over seeds per benchmark, then clip rate, spread, LRE and the S-growth exponent (pooled over
    seeds). Bold: the highest accuracy, and the lowest spread and LRE within each level, only where
    that value separates from every other row of its comparison (:func:`_separated_best`)."""
    acc = summary[summary.metric == "avg@k"]
    benches = sorted(acc.benchmark.unique())
    ks = {b: int(acc[acc.benchmark == b].k.iloc[0]) for b in benches}
    pooled = fairness_table[fairness_table.scope == "pooled"].set_index("method")
    clip_column = str(pooled["clip_column"].iloc[0])
    names = [BASE] + sorted(m for m in acc.method.unique() if m != BASE)
    cells: dict[str, dict[str, tuple[float, str]]] = {m: {} for m in names}
    level = {m: _level(m) for m in names}
    for m in names:
        for b in benches:
            values = acc[(acc.method == m) & (acc.benchmark == b)].value
            if len(values):
                mean, std = _mean_std(values)
                cells[m][b] = (mean, f"{mean:.3f} ± {std:.3f}" if m != BASE else f"{mean:.3f}")
        if m in pooled.index:
            row = pooled.loc[m]
            cells[m]["clip"] = (float(row["clip_rate"]), f"{row['clip_rate']:.3f}")
            cells[m]["spread"] = (float(row["spread"]), f"{row['spread']:.3f}")
            cells[m]["lre"] = (float(row["lre"]), f"{row['lre']:.4f}")
            if np.isfinite(row["s_exponent"]):  # NaN when fewer than two bins have S != 0
                cells[m]["growth"] = (float(row["s_exponent"]), f"{row['s_exponent']:.2f}")
    # (key, title, best-of, compared within a clipping level)
    columns = [(b, f"{b} (avg@{ks[b]})", max, False) for b in benches]
    columns += [
        ("clip", "clip rate", None, False),
        ("spread", "clip spread", min, True),
        ("lre", "LRE", min, True),
        ("growth", "S growth a", None, False),
    ]
    spans = _seed_spans(acc, fairness_table, names, benches)
    bold = set()
    for key, _, pick, per_level in columns:
        if pick is None:
            continue
        for lvl in set(level.values()) if per_level else [None]:
            group = [m for m in names if key in cells[m] and (lvl is None or level[m] == lvl)]
            winner = _separated_best(group, key, cells, spans, pick)
            if winner is not None:
                bold.add((winner, key))
    lines = ["| method | level | " + " | ".join(title for _, title, _, _ in columns) + " |"]
    lines.append("|---|---|" + "---:|" * len(columns))
    for m in names:
        row = []
        for key, _, _, _ in columns:
            if key not in cells[m]:
                row.append("–")
                continue
            text = cells[m][key][1]
            row.append(f"**{text}**" if (m, key) in bold else text)
        lines.append(f"| {m} | {level[m]} | " + " | ".join(row) + " |")
    date = date or _dt.date.today().isoformat()
    lines += [
        "",
        f"Accuracy: avg@k (mean over k samples per problem, then over problems), mean ± std over seeds {seeds}. "
        f"Clip rate, spread and LRE: {CLIP_COLUMN_MEANING.get(clip_column, 'rate')} (`{clip_column}`) by response-length bin over the off-policy training "
        "updates (the first update of each step, at ratio 1, left out), seeds pooled; a token-level rule's rate counts tokens, a sequence-level rule's whole responses, so spread "
        "and LRE are compared (bold: lowest) within a level. S growth a: median |S| ~ L^a over the same bins "
        "(1/2: the sqrt(L) band of FSPO is flat; 1: GSPO's S/L band; 0: a fixed band). "
        "Bold: the best accuracy, or the lowest spread or LRE within a level, only where it separates from every "
        "other row: its mean ± std over seeds (accuracy) or its range over seeds (spread, LRE) does not overlap "
        "theirs (the base model counts as its one value); no bold means no such separation. "
        "Definitions: `clipbench/fairness.py`.",
        f"Config `{config_name}` (hash {config_hash}), commit {commit}, {date}.",
    ]
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


def _seed_spans(
    acc: pd.DataFrame, fairness_table: pd.DataFrame, names: list[str], benches: list[str]
) -> dict[tuple[str, str], tuple[float, float]]:
    """``(method, column) -> (low, high)`` for the columns the table bolds, from two or more seeds:
    accuracy mean - std .. mean + std over seeds; spread and LRE their range over the per-seed rows
    of fairness.csv. A method with one seed (or the base model) has no span."""
    spans = {}
    per_seed = fairness_table[fairness_table.scope == "seed"]
    for m in names:
        for b in benches:
            values = acc[(acc.method == m) & (acc.benchmark == b)].value
            if m != BASE and len(values) >= 2:
                mean, std = _mean_std(values)
                spans[m, b] = (mean - std, mean + std)
        seeds = per_seed[per_seed.method == m]
        for key, column in (("spread", "spread"), ("lre", "lre")):
            values = seeds[column].dropna() if column in seeds.columns else pd.Series(dtype=float)
            if len(values) >= 2:
                spans[m, key] = (float(values.min()), float(values.max()))
    return spans


def _separated_best(group: list[str], key: str, cells, spans, pick) -> str | None:
    """The row of ``group`` whose span lies wholly beyond every other row's in the better direction
    (``pick`` max: above, min: below), or None. A row without a span (one seed, the base model)
    counts as its value and is never the one bolded. At most one row can separate so."""
    if len(group) < 2:
        return None
    for best in group:
        if (best, key) not in spans:
            continue
        low, high = spans[best, key]
        separated = True
        for other in group:
            if other == best:
                continue
            value = cells[other][key][0]
            other_low, other_high = spans.get((other, key), (value, value))
            if (pick is max and not low > other_high) or (pick is min and not high < other_low):
                separated = False
                break
        if separated:
            return best
    return None


# --------------------------------------------------------------------------- what each output needs


def missing_columns(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The ``columns`` that ``frame`` lacks, in their order."""
    return [c for c in columns if c not in frame.columns]


def unmet_needs(summary: pd.DataFrame, fairness_table: pd.DataFrame) -> str | None:
    """What the main table needs from summary.csv and fairness.csv and they lack, as a phrase that
    completes "the main table needs ..."; None when it can be made."""
    lacking = missing_columns(summary, SUMMARY_COLUMNS[1:])
    if lacking:
        return f"--summary with the columns {lacking} (a summary.csv from `clipbench aggregate`)"
    lacking = missing_columns(
        fairness_table, ["scope", "method", "clip_column", "clip_rate", "spread", "lre", "s_exponent"]
    )
    if lacking:
        return f"--fairness with the columns {lacking} (a fairness.csv from `clipbench aggregate`)"
    return None
