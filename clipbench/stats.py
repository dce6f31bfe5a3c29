"""Uncertainty: percentile bootstrap intervals for accuracy, paired accuracy differences and the
length-fairness metrics, each defined here once.

Every interval is a percentile bootstrap interval: the statistic is recomputed on
``n_resamples`` resamples drawn with replacement from the data's independent units, and the
interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of those values (``level`` 0.95 by
default; numpy's linear quantile; resamples on which a metric is undefined, NaN, are left out).
The point estimate is always the statistic on the data as observed, never a bootstrap mean.
The resamples come from a numpy Generator seeded by ``seed`` and the group's name
(:func:`group_rng`), so the same inputs and seed give identical intervals, and a group's interval
does not depend on which other groups are in the input.

The intervals (resampling unit; statistic):

* Accuracy, scope "pooled" (a method on a benchmark, its seeds together): the units are seeds
  (training runs) and problems, crossed: each resample draws the seeds with replacement and,
  once, the problems with replacement, and every drawn seed is scored on the same drawn problems
  (a problem's k samples move together, as one unit). Every run answers the same problems, so a
  problem's difficulty is shared by the seeds: drawing problems afresh for each seed would
  average that shared effect over the seeds and narrow the interval by up to sqrt(seeds).
  Statistic: avg@k (mean over seeds and problems of the fraction of a problem's k samples that
  are correct) and pass@k (mean of "any of the k correct"), per problem as
  ``benchmarks.lm_eval_tasks.problem_metrics`` defines them; with every seed on the same
  problems this is the mean over seeds of each run's own avg@k, as in summary.csv. The base model
  (one run) and scope "seed" (one run alone): problems only. Coverage, simulated (4 seeds, 40
  problems with p ~ Uniform(0, 1), k = 4; tests/test_stats.py): 0.95 for avg@k; 0.97 for pass@k,
  whose seed-by-problem noise the crossed draw counts more than once (wide, never narrow);
  problems drawn afresh per seed covered avg@k only 0.77 of the time.
* Paired accuracy difference, method minus a reference method (default "grpo") on one
  benchmark: the seeds both methods have and the problems both answered; one draw of seeds and of
  problems per resample is applied to both methods (the same indices), and the statistic is the
  difference of the two means, so shared seed and problem effects cancel. A method against itself
  gives exactly 0 on every resample: a zero-width interval. The base model (seed -1, one run) is
  paired with every seed of the other method: its one run is the start of every seed's training.
* Fairness metrics (``clipbench.fairness``: clip rate, clip spread, slope, LRE, S-growth exponent
  and within-sequence exponent per group; the clip rate and median |S| per length bin), scope
  "seed" (one run): the units are the run's RL steps (every off-policy record of a step moves
  with it: the sequences of one rollout batch and their updates share the policy and the batch,
  so they are not independent).
  Scope "pooled" (a method, seeds together): runs drawn with replacement, then each drawn run's
  steps drawn with replacement (nested: a run's step t has nothing to do with another run's
  step t). The bin edges are computed once on the real pooled lengths (as
  ``clipbench.report.collect_fairness`` does), or given, and every resample is binned with them;
  a bin that a resample leaves empty is left out, as ``clip_rate_by_bin`` leaves out an empty bin.
  Likewise the rungs of the within-sequence exponent are chosen once on the real pooled records
  (``fairness.record_rungs``), and a rung that no record of a resample reaches is left out of its
  fit, as ``fairness.within_sequence_exponent`` leaves out a rung with no sequence.

Why not ``scipy.stats.bootstrap``: it resamples the observations of one or more samples at one
level (independently, or paired by position); it cannot express a two-level draw (runs, then
steps within each drawn run), a crossed draw (seeds and problems at once), or one resample shared
by two methods and by several statistics of a pipeline; and it calls the statistic on resampled
data, where here a resample is a vector of counts per unit applied to precomputed per-unit sums
(per step and length bin: sequence count, clip count, summed log length), so that 1,000
resamples of every run's records cost a few matrix products; only the per-bin median |S| and the
per-rung median |S_k| need the records (a weighted median over them). The metrics are then
computed on each resample's per-bin values by ``clipbench.fairness``'s own functions (:func:`group_metrics` combines them as
``fairness.summarize_bins`` does), never defined a second time, and :func:`fairness_intervals`
raises if this path does not reproduce ``fairness.fairness_summary`` on the data as observed.

:func:`detectable_difference` turns a paired difference's interval into the design's power: the
smallest true difference that would be detected (its interval excluding 0) with probability 0.8, a
normal approximation (the interval's half-width read as 1.96 standard errors): the statement to
make when no pair of methods separates.

:func:`separated_best` says which of several groups' intervals lies wholly beyond every other's;
:func:`tied_best`, where none does, which groups are tied with the best point estimate.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from clipbench import artifacts, fairness

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_REFERENCE = "grpo"
#: The per-sample verdicts :func:`read_verdicts` returns, one row per (evaluation, problem, sample).
VERDICT_COLUMNS = ["model", "method", "seed", "benchmark", "problem", "sample", "correct"]
ACCURACY_METRICS = ("avg@k", "pass@k")
#: The per-group fairness metrics (columns of ``fairness.fairness_summary``) that get an interval:
#: those of the length bins (``fairness.summarize_bins``), then the within-sequence exponent a_w.
FAIRNESS_METRICS = ("clip_rate", "spread", "slope", "lre", "s_exponent", "s_exponent_within")
#: The group a row describes, as in fairness.csv: scope "pooled" (seeds together, seed -1) or "seed".
SCOPES = (("pooled", ("method",)), ("seed", ("method", "seed")))
#: Largest (resamples x values) block the weighted median works on at once.
_MEDIAN_BLOCK = 4_000_000


# --------------------------------------------------------------------------- the resampler


def group_rng(seed: int, *key: Hashable) -> np.random.Generator:
    """The Generator of one group's resamples: seeded by ``seed`` (a non-negative int) and the
    group's key (e.g. ``("fairness", "pooled", "grpo", -1)``) through a CRC-32 of its text, so it
    is the same in every process and does not depend on the other groups."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(repr(tuple(map(str, key))).encode())])


def _check_resamples(n_resamples: int, level: float) -> None:
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an int >= 1, got {n_resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


def resample_counts(n_units: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_units) int: how often each of ``n_units`` units is drawn when ``n_units``
    draws are made with replacement, per resample."""
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    offsets = np.arange(n_resamples)[:, None] * n_units
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_units).reshape(
        n_resamples, n_units
    )


def nested_counts(cluster_sizes: Sequence[int], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, sum(cluster_sizes)) int: two-level draws. The clusters (e.g. runs) are drawn
    with replacement; each drawn cluster's units (e.g. its steps, ``cluster_sizes[c]`` of them,
    columns in cluster order) are drawn with replacement afresh, and the counts of every draw add
    up. One cluster: its units only."""
    sizes = np.asarray(cluster_sizes, dtype=int)
    if sizes.size == 0 or (sizes < 1).any():
        raise ValueError(f"nested_counts: every cluster needs units, got sizes {sizes.tolist()}")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    counts = np.zeros((n_resamples, int(sizes.sum())), dtype=np.int64)
    picks = rng.integers(0, sizes.size, size=(n_resamples, sizes.size))
    for slot in range(sizes.size):
        for c in range(sizes.size):
            rows = np.flatnonzero(picks[:, slot] == c)
            if rows.size:
                counts[rows, starts[c] : starts[c] + sizes[c]] += resample_counts(
                    int(sizes[c]), rows.size, rng
                )
    return counts


def crossed_counts(
    n_rows: int, n_cols: int, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crossed draws: (row counts (n_resamples, n_rows), column counts (n_resamples, n_cols)),
    rows (e.g. seeds) and columns (e.g. problems) each drawn with replacement; cell (i, j) of a
    resample is drawn rows[i] * cols[j] times."""
    return resample_counts(n_rows, n_resamples, rng), resample_counts(n_cols, n_resamples, rng)


def percentile_interval(
    replicates: np.ndarray, level: float = DEFAULT_LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentile interval along axis 0 of the bootstrap replicates; NaN replicates
    are left out, and a column with none finite gives NaN."""
    values = np.asarray(replicates, dtype=float)
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN, said above
        low, high = np.nanquantile(values, [alpha, 1.0 - alpha], axis=0)
    return low, high


def bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    cluster_sizes: Sequence[int],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    key: Sequence[Hashable] = (),
    level: float = DEFAULT_LEVEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) of a statistic of weighted units under nested resampling.

    ``statistic(counts)`` maps a (resamples, units) count array to a (resamples, ...) array; the
    point is its value at counts of one per unit, the interval its percentiles over
    ``n_resamples`` draws of :func:`nested_counts` (clusters ``cluster_sizes``, one cluster for a
    one-level bootstrap) from :func:`group_rng` ``(seed, *key)``."""
    _check_resamples(n_resamples, level)
    point = np.asarray(statistic(np.ones((1, int(np.sum(cluster_sizes))), dtype=np.int64)))[0]
    counts = nested_counts(cluster_sizes, n_resamples, group_rng(seed, *key))
    low, high = percentile_interval(statistic(counts), level)
    return point, low, high


# --------------------------------------------------------------------------- accuracy


def read_verdicts(eval_files: Iterable[str | Path]) -> pd.DataFrame:
    """The per-sample verdicts of evaluation summaries at ``.../{model}/{bench}.json``
    (:data:`VERDICT_COLUMNS`): method and seed from the model name as summary.csv has them (base:
    "base", -1), benchmark the file's stem, problem the sample's ``problem_id``. Each summary is
    read with :func:`clipbench.evaluate.read_outputs`, which refuses one whose samples file is
    missing or changed."""
    from clipbench.evaluate import output_paths, read_outputs  # the owner of the evaluation files

    frames = []
    for path in map(Path, eval_files):
        summary = read_outputs(path)
        samples = path.with_name(summary.get("files", {}).get("samples", output_paths(path)["samples"].name))
        model, bench = artifacts.eval_model_and_bench(path)
        run = artifacts.parse_model(model)
        method, seed = (artifacts.BASE, -1) if run is None else (run.method, run.seed)
        rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{samples}: no samples")
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "method": method,
                    "seed": seed,
                    "benchmark": bench,
                    "problem": [str(r["problem_id"]) for r in rows],
                    "sample": [int(r["sample"]) for r in rows],
                    "correct": [bool(r["correct"]) for r in rows],
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    return pd.concat(frames, ignore_index=True)[VERDICT_COLUMNS]


def _check_verdicts(verdicts: pd.DataFrame) -> None:
    missing = [
        c for c in ("method", "seed", "benchmark", "problem", "sample", "correct") if c not in verdicts
    ]
    if missing:
        raise ValueError(f"verdicts lack columns {missing}; have {list(verdicts.columns)}")


def _per_problem(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, seed, problem): k and each problem's avg@k and pass@k
    (``benchmarks.lm_eval_tasks.problem_metrics``, the metrics' one definition)."""
    from clipbench.benchmarks.lm_eval_tasks import problem_metrics

    keys = ["benchmark", "method", "seed", "problem"]
    frame = verdicts.sort_values([*keys, "sample"], kind="stable")
    starts = np.flatnonzero(~frame.duplicated(keys).to_numpy())
    chunks = np.split(frame["correct"].to_numpy(dtype=bool), starts[1:])
    metrics = [problem_metrics(chunk.tolist()) for chunk in chunks]
    cells = frame.iloc[starts][keys].reset_index(drop=True)
    cells["k"] = [len(chunk) for chunk in chunks]
    cells["avg@k"] = [m["avg_at_k"] for m in metrics]
    cells["pass@k"] = [m["pass_at_k"] for m in metrics]
    return cells


class _Table:
    """One method's per-problem values on one benchmark (cells of :func:`_per_problem`): per
    metric a (seeds, problems) array, seeds and problems sorted. ValueError when its seeds
    answered different problems: the crossed draw needs every seed on the same problems."""

    def __init__(self, cells: pd.DataFrame, where: str):
        self.seeds = sorted(cells["seed"].unique().tolist())
        self.problems = pd.Index(sorted(cells["problem"].unique().tolist()))
        per_seed = cells.groupby("seed")["problem"].nunique()
        if (per_seed != len(self.problems)).any():
            raise ValueError(
                f"{where}: the seeds answered different problems ({per_seed.to_dict()} of "
                f"{len(self.problems)}); the crossed bootstrap needs every seed on the same problems"
            )
        rows = np.searchsorted(self.seeds, cells["seed"].to_numpy())
        cols = self.problems.get_indexer(cells["problem"])
        self.values = {}
        for metric in ACCURACY_METRICS:
            table = np.full((len(self.seeds), len(self.problems)), np.nan)
            table[rows, cols] = cells[metric].to_numpy(dtype=float)
            self.values[metric] = table
        self.k = int(cells["k"].max())

    def select(self, metric: str, seeds: Sequence[int], problems: Sequence[str]) -> np.ndarray:
        """(seeds, problems) values of ``metric``."""
        rows = np.searchsorted(self.seeds, seeds)
        return self.values[metric][np.ix_(rows, self.problems.get_indexer(problems))]


def _crossed_mean(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per resample, the mean of ``values`` (seeds, problems) with cell weights rows[i] * cols[j]."""
    return np.einsum("bi,ij,bj->b", rows, values, cols) / (rows.sum(1) * cols.sum(1))


def accuracy_intervals(
    verdicts: pd.DataFrame,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """avg@k and pass@k with their intervals (module docstring: "Accuracy"), per benchmark and
    method (scope "pooled", seed -1) and per run (scope "seed"; the base model has its pooled row
    only). Columns: scope, benchmark, method, seed, k, n_seeds, n_problems, then ``avg@k``,
    ``avg@k_lo``, ``avg@k_hi``, ``pass@k``, ``pass@k_lo``, ``pass@k_hi``."""
    _check_verdicts(verdicts)
    _check_resamples(n_resamples, level)
    out = []
    for (bench, method), cells in _per_problem(verdicts).groupby(["benchmark", "method"], sort=True):
        table = _Table(cells, f"{method} on {bench}")
        runs = [("pooled", -1, table.seeds)]
        if method != artifacts.BASE:
            runs += [("seed", s, [s]) for s in table.seeds]
        for scope, run_seed, seeds in runs:
            rng = group_rng(seed, "accuracy", scope, bench, method, run_seed)
            rows, cols = crossed_counts(len(seeds), len(table.problems), n_resamples, rng)
            row = {"scope": scope, "benchmark": bench, "method": method, "seed": run_seed, "k": table.k}
            row.update({"n_seeds": len(seeds), "n_problems": len(table.problems)})
            for metric in ACCURACY_METRICS:
                values = table.select(metric, seeds, table.problems)
                low, high = percentile_interval(_crossed_mean(values, rows, cols), level)
                row.update(
                    {metric: float(values.mean()), f"{metric}_lo": float(low), f"{metric}_hi": float(high)}
                )
            out.append(row)
    return pd.DataFrame(out)


def accuracy_differences(
    verdicts: pd.DataFrame,
    reference: str = DEFAULT_REFERENCE,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """Each method's avg@k and pass@k minus ``reference``'s, paired (module docstring: "Paired
    accuracy difference"), per benchmark; the reference's own row is 0 with a zero-width interval.
    Columns: benchmark, method, reference, n_seeds, n_problems, then ``avg@k_diff``,
    ``avg@k_diff_lo``, ``avg@k_diff_hi`` and the same for pass@k. ValueError when ``reference``
    has no verdicts on a benchmark; a method sharing no seed or no problem with it is left out."""
    _check_verdicts(verdicts)
    _check_resamples(n_resamples, level)
    out = []
    for bench, on_bench in _per_problem(verdicts).groupby("benchmark", sort=True):
        tables = {m: _Table(cells, f"{m} on {bench}") for m, cells in on_bench.groupby("method", sort=True)}
        if reference not in tables:
            raise ValueError(f"accuracy_differences: the reference {reference!r} has no verdicts on {bench}")
        ref = tables[reference]
        for method, table in tables.items():
            problems = ref.problems.intersection(table.problems).sort_values().tolist()
            if table.seeds == [-1] or ref.seeds == [-1]:  # a one-run model is paired with every seed
                seeds = ref.seeds if table.seeds == [-1] else table.seeds
            else:
                seeds = sorted(set(table.seeds) & set(ref.seeds))
            if not seeds or not problems:
                continue
            rng = group_rng(seed, "difference", bench, method, reference)
            rows, cols = crossed_counts(len(seeds), len(problems), n_resamples, rng)  # one draw for both
            row = {"benchmark": bench, "method": method, "reference": reference}
            row.update({"n_seeds": len(seeds), "n_problems": len(problems)})
            for metric in ACCURACY_METRICS:
                mine = table.select(metric, [-1] * len(seeds) if table.seeds == [-1] else seeds, problems)
                theirs = ref.select(metric, [-1] * len(seeds) if ref.seeds == [-1] else seeds, problems)
                diff = mine - theirs
                low, high = percentile_interval(_crossed_mean(diff, rows, cols), level)
                row[f"{metric}_diff"] = float(diff.mean())
                row.update({f"{metric}_diff_lo": float(low), f"{metric}_diff_hi": float(high)})
            out.append(row)
    return pd.DataFrame(out)


def detectable_difference(low: float, high: float, level: float = DEFAULT_LEVEL, power: float = 0.8) -> float:
    """The smallest true paired difference that this design detects with probability ``power``
    (two-sided, at ``level``), read off a bootstrap interval [low, high] of the difference: the
    standard error is taken as the half-width over z = Φ⁻¹(1 - (1 - level) / 2) (1.96 at 95%), and
    a difference of (z + Φ⁻¹(power)) standard errors puts the interval's near end beyond 0 with
    probability ``power`` (normal approximation; 2.80 standard errors at 95% and 0.8). NaN when
    the interval is not finite; 0 for a zero-width interval (a method against itself). With few
    seeds it is optimistic: a percentile bootstrap over n seeds shrinks their variance by
    (n - 1) / n (the standard error about 11% small at 5 seeds, 29% at 2)."""
    if not 0 < level < 1 or not 0 < power < 1:
        raise ValueError(f"detectable_difference: level and power must be in (0, 1), got {level}, {power}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return math.nan
    if high < low:
        raise ValueError(f"detectable_difference: the interval [{low}, {high}] has high < low")
    normal = statistics.NormalDist()
    z = normal.inv_cdf(1 - (1 - level) / 2)
    standard_error = (high - low) / (2 * z)
    return (z + normal.inv_cdf(power)) * standard_error


# --------------------------------------------------------------------------- fairness


def weighted_medians(values: np.ndarray, units: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample (row of ``counts``, (resamples, n_units)), the median of the multiset in which
    ``values[i]`` (sorted ascending) appears counts[:, units[i]] times: the middle value, or the
    mean of the two middle ones (pandas' median of the resampled records); NaN when empty."""
    out = np.full(counts.shape[0], np.nan)
    n = values.size
    if n == 0:
        return out
    block = max(1, _MEDIAN_BLOCK // n)
    for start in range(0, counts.shape[0], block):
        cum = np.cumsum(counts[start : start + block][:, units], axis=1)
        total = cum[:, -1]
        rows = np.arange(cum.shape[0])
        span = int(total.max()) + 1
        flat = (cum + rows[:, None] * span).ravel()  # one ascending array, row r in [r*span, (r+1)*span)
        # the value at 0-based rank q of row r: the first position whose cumulative count exceeds q
        lower, upper = (
            values[np.minimum(np.searchsorted(flat, rank + rows * span, side="right") - rows * n, n - 1)]
            for rank in ((total - 1) // 2, total // 2)
        )
        median = (lower + upper) / 2.0
        out[start : start + cum.shape[0]] = np.where(total > 0, median, np.nan)
    return out


def _check_records(records: pd.DataFrame, clip_column: str) -> None:
    missing = [c for c in ("method", "seed", "step", "length", clip_column) if c not in records.columns]
    if missing:
        raise ValueError(f"fairness_intervals: records lack columns {missing}; have {list(records.columns)}")


def group_metrics(
    rates: np.ndarray,
    shares: np.ndarray,
    log_lengths: np.ndarray,
    abs_s_medians: np.ndarray | None,
    rung_medians: np.ndarray | None = None,
    ks: Sequence[int] = (),
) -> dict[str, float]:
    """One group's :data:`FAIRNESS_METRICS` from its non-empty bins' clip rates, shares, mean log
    lengths and median |S| (None without S), through ``clipbench.fairness``'s functions, as
    ``fairness.summarize_bins`` combines them (it builds a pandas Series per group, too slow for
    thousands of resamples; :func:`fairness_intervals` checks the two agree on the data); and the
    within-sequence exponent from the median |S_k| of the rungs ``ks`` (NaN for a rung no record
    reaches; ``rung_medians`` None: NaN), as ``fairness.within_sequence_summary`` computes it."""
    return {
        "clip_rate": float((rates * shares).sum() / shares.sum()),  # summarize_bins' clip_rate
        "spread": fairness.clip_spread(rates),
        "slope": fairness.clip_slope(rates, log_lengths),
        "lre": fairness.length_reweighting_error(rates, shares),
        "s_exponent": (
            float("nan") if abs_s_medians is None else fairness.s_growth_exponent(abs_s_medians, log_lengths)
        ),
        "s_exponent_within": (
            float("nan") if rung_medians is None else fairness.within_sequence_exponent(rung_medians, ks)
        ),
    }


class _StepSums:
    """The off-policy records reduced to units (run, step): per unit and length bin the sequence
    count and the sums of the clip indicator and of the log length (from ``clip_rate_by_bin``'s
    per-step means: its binning, its log length), per record its unit, bin and |S| (for the
    bins' medians), and per rung k of ``ks`` the records with a finite S_k, their |S_k| and unit
    (for the rungs' medians)."""

    def __init__(self, records: pd.DataFrame, edges: np.ndarray, clip_column: str, ks: Sequence[int] = ()):
        keys = ["method", "seed", "step"]
        per_step = fairness.clip_rate_by_bin(records, edges, by=keys, clip_columns=(clip_column,))
        self.units = per_step[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
        index = pd.MultiIndex.from_frame(self.units)
        unit = index.get_indexer(pd.MultiIndex.from_frame(per_step[keys]))
        bin_ = per_step["bin"].to_numpy()
        shape = (len(self.units), len(edges) - 1)
        self.n, self.clip, self.log_length = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        n = per_step["n"].to_numpy(dtype=float)
        self.n[unit, bin_] = n
        self.clip[unit, bin_] = n * per_step[clip_column].to_numpy(dtype=float)
        self.log_length[unit, bin_] = n * per_step["log_length_mean"].to_numpy(dtype=float)
        self.has_s = "S" in records.columns
        if self.has_s:
            self.record_unit = index.get_indexer(pd.MultiIndex.from_frame(records[keys]))
            self.record_bin = fairness.assign_bins(records["length"], edges)
            self.record_abs_s = records["S"].abs().to_numpy(dtype=float)
        self.ks = tuple(int(k) for k in ks)
        self.rungs = []  # per rung: (|S_k| ascending, their records' units)
        units = index.get_indexer(pd.MultiIndex.from_frame(records[keys])) if self.ks else None
        for k in self.ks:
            values = np.abs(records[artifacts.prefix_column(k)].to_numpy(dtype=float))
            reached = np.isfinite(values)
            order = np.argsort(values[reached], kind="stable")
            self.rungs.append((values[reached][order], units[reached][order]))

    def groups(self, scope: str):
        """((method, seed), unit positions, steps per run) of each group of ``scope``: a method's
        runs (seed -1) or one run."""
        by = ["method"] if scope == "pooled" else ["method", "seed"]
        for key, group in self.units.groupby(by, sort=True):
            method, run_seed = (key[0], -1) if scope == "pooled" else key
            sizes = group.groupby("seed", sort=True).size().to_numpy()
            yield (method, int(run_seed)), group.index.to_numpy(), sizes

    def resample(self, units: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Per resample (row of ``counts``, one column per unit of ``units``) and bin: n, share,
        clip rate, mean log length, median |S| (NaN where a bin is empty or without S); and per
        resample and rung of ``ks``, ``rung_median``: the median |S_k| (NaN where no drawn record
        reaches the rung)."""
        n = counts @ self.n[units]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "n": n,
                "share": n / n.sum(axis=1, keepdims=True),
                "rate": (counts @ self.clip[units]) / n,
                "log_length": (counts @ self.log_length[units]) / n,
            }
        out["median"] = np.full(n.shape, np.nan)
        if self.has_s:
            local = np.full(len(self.units), -1)
            local[units] = np.arange(len(units))
            in_group = local[self.record_unit] >= 0
            for bin_ in range(n.shape[1]):
                take = in_group & (self.record_bin == bin_)
                order = np.argsort(self.record_abs_s[take], kind="stable")
                values, owners = self.record_abs_s[take][order], local[self.record_unit[take]][order]
                out["median"][:, bin_] = weighted_medians(values, owners, counts)
        local = np.full(len(self.units), -1)
        local[units] = np.arange(len(units))
        out["rung_median"] = np.full((counts.shape[0], len(self.ks)), np.nan)
        for j, (values, owners) in enumerate(self.rungs):
            take = local[owners] >= 0
            out["rung_median"][:, j] = weighted_medians(values[take], local[owners[take]], counts)
        return out


def fairness_intervals(
    records: pd.DataFrame,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    n_bins: int = fairness.DEFAULT_BINS,
    edges: np.ndarray | None = None,
    clip_column: str = "seq_out",
    level: float = DEFAULT_LEVEL,
    ks: Sequence[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fairness metrics with their intervals (module docstring: "Fairness metrics"), per
    method (scope "pooled", seed -1) and per run (scope "seed"), on clip records with method,
    seed and step columns (``clipbench.report.read_clip_records``). Point estimates are
    ``clipbench.fairness.fairness_summary``'s with the shared edges and rungs ``ks`` (those of
    ``report.collect_fairness``; ``fairness.record_rungs`` of the records when None); RuntimeError
    if the resampling path, run on the data as observed, does not reproduce them (a definition
    changed in ``clipbench.fairness``).

    Returns (groups, bins). groups: scope, method, seed, clip_column, n_runs, n_steps, then per
    metric of :data:`FAIRNESS_METRICS` ``<metric>``, ``<metric>_lo``, ``<metric>_hi``, then n_bins
    and n_rungs.
    bins: scope, method, seed, bin, bin_lo, bin_hi, n, share, length_mean, ``<clip_column>`` and
    (with an S column) ``abs_s_median``, each with ``_lo`` and ``_hi``."""
    _check_records(records, clip_column)
    _check_resamples(n_resamples, level)
    records = fairness.off_policy(records)
    if records.empty:
        raise ValueError("fairness_intervals: no off-policy records")
    if edges is None:
        edges = fairness.length_bin_edges(records["length"], n_bins)
    edges = np.asarray(edges, dtype=float)
    ks = fairness.record_rungs(records) if ks is None else tuple(int(k) for k in ks)

    # Points: what report.collect_fairness computes, with the same edges and rungs.
    point_groups, point_bins = [], []
    for scope, by in SCOPES:
        by_bin, summary = fairness.fairness_summary(
            records, by=by, edges=edges, clip_column=clip_column, ks=ks
        )
        if scope == "pooled":
            by_bin["seed"] = summary["seed"] = -1
        point_groups.append(summary.assign(scope=scope))
        point_bins.append(by_bin.assign(scope=scope))
    keys = ["scope", "method", "seed"]
    point_groups = pd.concat(point_groups, ignore_index=True).set_index(keys)
    point_bins = pd.concat(point_bins, ignore_index=True)

    sums = _StepSums(records, edges, clip_column, ks)
    group_rows, bin_rows = [], []
    for scope, _ in SCOPES:
        for (method, run_seed), units, sizes in sums.groups(scope):
            rng = group_rng(seed, "fairness", clip_column, scope, method, run_seed)
            # row 0: every unit once (the data as observed), the check; then the resamples
            counts = np.vstack(
                [np.ones((1, len(units)), dtype=np.int64), nested_counts(sizes, n_resamples, rng)]
            )
            per_bin = sums.resample(units, counts)
            metrics = {m: np.empty(len(counts)) for m in FAIRNESS_METRICS}
            for r in range(len(counts)):
                full = per_bin["n"][r] > 0  # empty bins left out, as clip_rate_by_bin does
                values = group_metrics(
                    per_bin["rate"][r, full],
                    per_bin["share"][r, full],
                    per_bin["log_length"][r, full],
                    per_bin["median"][r, full] if sums.has_s else None,
                    per_bin["rung_median"][r],
                    ks,
                )
                for m in FAIRNESS_METRICS:
                    metrics[m][r] = values[m]
            point = point_groups.loc[(scope, method, run_seed)]
            _check_reproduces(
                f"{scope} {method} seed {run_seed}", {m: metrics[m][0] for m in FAIRNESS_METRICS}, point
            )
            row = {"scope": scope, "method": method, "seed": run_seed, "clip_column": clip_column}
            row.update({"n_runs": len(sizes), "n_steps": int(sizes.sum())})
            for m in FAIRNESS_METRICS:
                low, high = percentile_interval(metrics[m][1:], level)
                row.update({m: point[m], f"{m}_lo": float(low), f"{m}_hi": float(high)})
            row["n_bins"], row["n_rungs"] = int(point["n_bins"]), int(point["n_rungs"])
            group_rows.append(row)
            rates = np.where(per_bin["n"] > 0, per_bin["rate"], np.nan)
            rate_lo, rate_hi = percentile_interval(rates[1:], level)
            median_lo, median_hi = percentile_interval(per_bin["median"][1:], level)
            for bin_ in range(len(edges) - 1):
                row = {"scope": scope, "method": method, "seed": run_seed, "bin": bin_}
                row.update(
                    {
                        "_rate": rates[0, bin_],
                        f"{clip_column}_lo": rate_lo[bin_],
                        f"{clip_column}_hi": rate_hi[bin_],
                    }
                )
                if sums.has_s:
                    row.update({"_median": per_bin["median"][0, bin_]})
                    row.update({"abs_s_median_lo": median_lo[bin_], "abs_s_median_hi": median_hi[bin_]})
                bin_rows.append(row)

    bins = point_bins.merge(pd.DataFrame(bin_rows), on=[*keys, "bin"], how="left", validate="one_to_one")
    checks = [(clip_column, "_rate")] + ([("abs_s_median", "_median")] if sums.has_s else [])
    for column, check in checks:
        if not np.allclose(bins[column], bins[check], rtol=1e-9, atol=1e-12, equal_nan=True):
            raise RuntimeError(
                f"fairness_intervals: the per-step sums do not reproduce fairness's per-bin {column}"
            )
    order = [*keys, "bin", "bin_lo", "bin_hi", "n", "share", "length_mean"]
    order += [c for column, _ in checks for c in (column, f"{column}_lo", f"{column}_hi")]
    return pd.DataFrame(group_rows), bins[order]


def _check_reproduces(group: str, values: Mapping[str, float], point: pd.Series) -> None:
    for m, value in values.items():
        if not np.isclose(value, point[m], rtol=1e-9, atol=1e-12, equal_nan=True):
            raise RuntimeError(
                f"fairness_intervals: on the data as observed, {group}: {m} = {value!r} by the resampling path "
                f"but {point[m]!r} by clipbench.fairness.summarize_bins; a definition there changed"
            )


# --------------------------------------------------------------------------- separation


def separated_best(
    intervals: Mapping[Hashable, tuple[float, float]], better: str = "higher"
) -> Hashable | None:
    """The group whose interval (low, high) lies wholly beyond every other group's in the better
    direction (``better`` "higher": its low above every other high; "lower": its high below every
    other low; touching intervals overlap), or None: a tie. None also with fewer than two groups,
    and whenever a bound involved is NaN. At most one group can separate so."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if len(intervals) < 2:
        return None
    for best, (low, high) in intervals.items():
        others = [bounds for name, bounds in intervals.items() if name != best]
        if better == "higher" and all(low > other_high for _, other_high in others):
            return best
        if better == "lower" and all(high < other_low for other_low, _ in others):
            return best
    return None


def tied_best(
    intervals: Mapping[Hashable, tuple[float, float]],
    points: Mapping[Hashable, float],
    better: str = "higher",
) -> list[Hashable]:
    """The groups tied for best where none separates (:func:`separated_best` gives None): the
    group with the best point estimate (the first, on equal points) and every group whose interval
    overlaps its interval (touching counts), in the order of ``intervals``. Empty when one group
    separates, with fewer than two groups, or when the best group's interval has a NaN bound."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if len(intervals) < 2 or separated_best(intervals, better) is not None:
        return []
    finite = [name for name in intervals if np.isfinite(points[name])]
    if not finite:
        return []
    pick = max if better == "higher" else min
    best = pick(finite, key=lambda name: points[name])
    low, high = intervals[best]
    if not (np.isfinite(low) and np.isfinite(high)):
        return []
    return [name for name, (lo, hi) in intervals.items() if name == best or (lo <= high and low <= hi)]


def intervals_of(
    frame: pd.DataFrame, metric: str, key: str = "method"
) -> dict[Hashable, tuple[float, float]]:
    """``{frame[key]: (<metric>_lo, <metric>_hi)}`` of a frame of this module, for :func:`separated_best`."""
    return {
        name: (float(low), float(high))
        for name, low, high in zip(frame[key], frame[f"{metric}_lo"], frame[f"{metric}_hi"], strict=True)
    }
