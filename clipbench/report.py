"""Aggregation and reporting of a study: tidy result files, the main table and the plots.

* `collect_evals` -> results/summary.csv: one row per (model, method, seed, benchmark, metric),
  from the evaluation summaries (`clipbench evaluate`); the base model has method "base". Each row
  also says whether the local data file had the registry's sha256 and which summary it came from.
* `collect_fairness` -> results/fairness.csv: per method (pooled over seeds) and per (method, seed),
  the clip rate and median |S| of every length bin plus spread, slope, LRE and the S-growth
  exponent (`clipbench.fairness`), on the training runs' per-sequence clip records with bin edges
  shared by every run.
* `main_table` -> results/tables/main.md: a row per method plus the base model, with its clipping
  level; per benchmark the accuracy as mean +- std over seeds; clip rate, spread, LRE and S growth;
  the footer names every evaluation whose data file's sha256 differs from the registry's.
* `plot_accuracy`, `plot_clip_by_length`, `plot_training_curves` -> results/plots/*.png.
* `unmet_needs`: what an output needs from its inputs and they lack, so that a report checks every
  requested output before it writes any.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

import methods
from clipbench import artifacts, fairness

BASE = artifacts.BASE
SUMMARY_COLUMNS = ["model", "method", "seed", "benchmark", "metric", "k", "value"]
# Also in summary.csv, after those: whether the evaluation's local data file had the registry's
# sha256 (empty for hub and generated sets), and the evaluation summary each row comes from.
PROVENANCE_COLUMNS = ["data_sha256_ok", "eval_file"]
TRAINING_CURVE_PANELS = [
    ("reward_mean", "reward"),
    ("clip_frac", "clip fraction"),
    ("response_length_mean", "response length"),
]
OUTPUTS = ("table", "accuracy", "clip_by_length", "training_curves")


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
    frames = []
    for (method, seed), run_dir in run_dirs.items():
        frame = artifacts.read_clip_records(artifacts.final_clip_records(run_dir))
        frames.append(frame.assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True)


def collect_fairness(
    records: pd.DataFrame, n_bins: int = fairness.DEFAULT_BINS, clip_column: str = "seq_out"
) -> pd.DataFrame:
    """fairness.csv: a row per (scope, method, seed, bin) with the bin's clip rates, and the
    group's spread, slope and LRE repeated on each of its rows. scope "pooled" pools the seeds
    (seed = -1); scope "seed" is per run. Bin edges are shared by every row."""
    edges = fairness.length_bin_edges(fairness.off_policy(records)["length"], n_bins)
    out = []
    for scope, by in (("pooled", ("method",)), ("seed", ("method", "seed"))):
        by_bin, summary = fairness.fairness_summary(records, by=by, edges=edges, clip_column=clip_column)
        merged = by_bin.merge(summary, on=list(by))
        if scope == "pooled":
            merged["seed"] = -1
        out.append(merged.assign(scope=scope, clip_column=clip_column))
    table = pd.concat(out, ignore_index=True)
    first = ["scope", "method", "seed", "bin", "bin_lo", "bin_hi", "n", "share", "length_mean"]
    return table[first + [c for c in table.columns if c not in first]]


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
    pooled = fairness_table[fairness_table.scope == "pooled"].drop_duplicates("method").set_index("method")
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
        "Clip rate, spread and LRE: out-of-band rate (`seq_out`) by response-length bin over the off-policy training "
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
            "from the registry's (`benchmarks/registry.py`), so their numbers may not be on the published set: "
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
    per_seed = fairness_table[fairness_table.scope == "seed"].drop_duplicates(["method", "seed"])
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


# --------------------------------------------------------------------------- plots


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def clip_rate_lines(sns, ax, data: pd.DataFrame, x: str, y: str) -> None:
    """One marked line per method: the shared look of every clip-rate-by-length plot."""
    sns.lineplot(data=data, x=x, y=y, hue="method", style="method", markers=True, dashes=False, ax=ax)


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    return path


def plot_accuracy(summary: pd.DataFrame, path: str | Path) -> Path:
    """Mean (bar) and per-seed points of avg@k per method, one panel per benchmark."""
    plt, sns = pyplot()
    acc = summary[summary.metric == "avg@k"]
    benches = sorted(acc.benchmark.unique())
    order = [BASE] + sorted(m for m in acc.method.unique() if m != BASE)
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
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def plot_clip_by_length(fairness_table: pd.DataFrame, path: str | Path) -> Path:
    """Left: clip rate against length bin (bin mean length, log x), a line per method (seeds
    pooled). Right, when the records had S: median |S| / sqrt(L) per bin, which is flat exactly
    when FSPO's sqrt(L) band clips every length alike (the S-growth exponent is 1/2)."""
    plt, sns = pyplot()
    pooled = fairness_table[fairness_table.scope == "pooled"]
    column = str(pooled.clip_column.iloc[0])
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
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def plot_training_curves(metrics: pd.DataFrame, path: str | Path) -> Path:
    """Reward, clip fraction and mean response length over steps (mean over seeds, band = range)."""
    plt, sns = pyplot()
    fig, axes = plt.subplots(1, len(TRAINING_CURVE_PANELS), figsize=(14, 3.8))
    for ax, (column, label) in zip(axes, TRAINING_CURVE_PANELS, strict=True):
        sns.lineplot(data=metrics, x="step", y=column, hue="method", errorbar=("pi", 100), ax=ax)
        ax.set_ylabel(label)
        if ax is not axes[-1]:
            ax.get_legend().remove()
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def read_metrics(run_dirs: Mapping[tuple[str, int], str | Path]) -> pd.DataFrame:
    frames = []
    for (method, seed), run_dir in run_dirs.items():
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        frames.append(pd.DataFrame([json.loads(line) for line in lines]).assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- what each output needs


def _lacking(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    return [c for c in columns if c not in frame.columns]


def unmet_needs(
    output: str,
    summary: pd.DataFrame | None = None,
    fairness_table: pd.DataFrame | None = None,
    metrics: pd.DataFrame | None = None,
) -> str | None:
    """What `output` (one of OUTPUTS) needs from its inputs and they lack, as a phrase that
    completes "the <output> needs ..."; None when it can be made. Inputs it does not read may be
    None. The table and the accuracy plot read summary.csv, the table and the clip-by-length plot
    fairness.csv, the training curves the runs' metrics."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown report output {output!r}; known: {', '.join(OUTPUTS)}")
    if output in ("table", "accuracy"):
        lacking = _lacking(summary, SUMMARY_COLUMNS[1:])
        if lacking:
            return f"--summary with the columns {lacking} (a summary.csv from `clipbench aggregate`)"
        if output == "accuracy" and not (summary["metric"] == "avg@k").any():
            return "--summary with avg@k rows (it has none)"
    if output == "table":
        lacking = _lacking(fairness_table, ["scope", "method", "clip_rate", "spread", "lre", "s_exponent"])
        if lacking:
            return f"--fairness with the columns {lacking} (a fairness.csv from `clipbench aggregate`)"
    if output == "clip_by_length":
        lacking = _lacking(fairness_table, ["scope", "method", "length_mean", "clip_column"])
        if lacking:
            return f"--fairness with the columns {lacking} (a fairness.csv from `clipbench aggregate`)"
        pooled = fairness_table[fairness_table["scope"] == "pooled"]
        if pooled.empty:
            return "--fairness with pooled rows (it has none)"
        column = str(pooled["clip_column"].iloc[0])
        if column not in fairness_table.columns:
            return f"--fairness with its clip column {column!r}"
    if output == "training_curves":
        needed = ["step", *(c for c, _ in TRAINING_CURVE_PANELS)]
        lacking = _lacking(metrics, needed)
        if lacking:
            return f"--runs whose metrics.jsonl have the columns {lacking}"
        runs = metrics.groupby(["method", "seed"])[needed]
        without = [f"{m}/seed{s}" for (m, s), frame in runs if frame.isna().all().any()]
        if without:
            return f"--runs whose metrics.jsonl have the columns {needed} (not in {', '.join(without)})"
    return None
