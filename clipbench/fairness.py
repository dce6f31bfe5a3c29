"""Length-fairness metrics: how evenly a clipping rule clips short and long responses.

Every metric of the suite about clip flatness is defined here and nowhere else. They act on
tidy per-sequence records: one row per sequence and update, with at least a `length` column (L,
the number of response tokens) and a clip indicator column (`seq_out`: the fraction of the
sequence's units outside the band; `seq_clip`: the fraction whose gradient the clip removed),
plus grouping columns such as `method` and `seed`.

Records with an `update` column (the trainer's) are first restricted to the off-policy updates
(`off_policy`): the first update of each step runs at ratio exactly 1 (S = 0) by construction,
so it cannot clip; kept, it would dilute every rate by 1/(M*E) and put exact zeros into m_b.

Definitions (DESIGN.md, "Length fairness metrics"), for one group and length bins b:

* clip rate r_b: the mean of the clip indicator over the sequences of bin b.
* bin edges: shared by every group compared (`length_bin_edges` on the pooled lengths):
  quantiles of the pooled lengths (5 bins by default), or given explicitly.
* clip spread: (max_b r_b - min_b r_b) / mean_b r_b (unweighted mean over non-empty bins);
  0 = perfectly flat. Defined as 0 when no bin is ever clipped (all r_b = 0).
* clip slope: least-squares slope of r_b against x_b = the mean of log L over bin b; positive
  means long responses are clipped more. 0 with fewer than two non-empty bins.
* LRE (this project's operationalisation of FSPO's Length Reweighting Error): with
  k_b = 1 - r_b the share of bin b's sequences that keep their gradient, p_b the bin's share of
  the group's sequences and k_bar = sum_b p_b k_b,  LRE = sum_b p_b |k_b / k_bar - 1|.
  0 when every bin keeps the same share; defined as 0 when k_bar = 0 (every bin fully clipped).
* S-growth exponent a (needs an `S` column, the sequence log-ratio sum_t l_t): least-squares
  slope of log m_b against x_b, with m_b the median |S| over bin b (bins with m_b = 0 left out;
  NaN with fewer than two). It says which band would clip every length alike: a = 1/2 is FSPO's
  random-walk model (i.i.d. per-token log-ratios, a sqrt(L) band is flat), a = 1 GSPO's (an
  S / L band is flat), a = 0 a fixed band on S (seq_ppo). a > 1/2 means the sqrt(L) band clips
  long responses more.
* prefix sums S_k (`prefix_sums`): for one sequence, the sum of l_t over its first k response
  tokens, for k on the ladder 8, 16, 32, ... (`prefix_ladder`); undefined (NaN) when L < k.
  S_L = S. A prefix's S_k is what its first k tokens contribute to S, so the same sequences
  measure how S grows with length within a response, free of the confound between length and
  difficulty (long responses may be different responses, not just longer ones).
* within-sequence exponent a_w (`within_sequence_exponent`): least-squares slope of
  log median |S_k| against log k, each median over the sequences with L >= k only (a shorter
  sequence has no S_k), rungs with a zero median or no sequence left out; NaN with fewer than
  two rungs. It is `s_growth_exponent` on (median |S_k|, log k): the same estimator with the
  rung k in place of a bin's mean log length. i.i.d. l_t give a_w = 1/2, like a; a per-token
  scale that decays along the response gives a_w < 1/2; a > a_w means that long responses carry
  larger per-token log-ratios than short ones over their common first tokens.
* the rungs a_w is fitted on (`reached_rungs`): those of the ladder that at least
  MIN_RUNG_SEQUENCES = 8 sequences reach (all of them must when there are fewer sequences): a
  median of fewer is mostly noise, and one rung counts as much as any other in the fit.

Clip records (`clipbench.artifacts.CLIP_RECORD_COLUMNS`) carry S_k for the records' constant ladder
8, 16, ..., 32768 (columns `S_8`, `S_16`, ...; NaN when L < k), taken by the training backends
from the l_t of S (`record_prefix_sums`). `fairness_summary` adds each group's a_w on the rungs
that the pooled off-policy records reach (`record_rungs`; shared by every group compared, like the
bin edges; a rung a group does not reach is left out of its fit): `s_exponent_within`, with
`n_rungs` the rungs its fit used. Records without prefix sums (written before they existed) give
a_w = NaN and n_rungs = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from clipbench import artifacts

DEFAULT_BINS = 5
CLIP_COLUMNS = ("seq_out", "seq_clip")


def length_bin_edges(
    lengths: Sequence[float] | np.ndarray | pd.Series, n_bins: int = DEFAULT_BINS
) -> np.ndarray:
    """Bin edges at the quantiles of the pooled lengths (duplicates merged, so a length never
    straddles two bins). Pool the lengths of every run compared, so all share the edges."""
    values = np.asarray(lengths, dtype=float)
    if values.size == 0:
        raise ValueError("length_bin_edges: no lengths given")
    if n_bins < 1:
        raise ValueError(f"length_bin_edges: n_bins={n_bins} must be >= 1")
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    return edges


def exact_length_edges(lengths: Sequence[int]) -> np.ndarray:
    """Edges that give every distinct length a bin of its own (for designed experiments such as
    the simulation, where the lengths are chosen rather than observed)."""
    values = np.unique(np.asarray(lengths, dtype=float))
    return np.append(values, values[-1] + 1)


def assign_bins(lengths: pd.Series | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The 0-based bin of each length: bin b holds edges[b] <= L < edges[b+1], the last bin is
    closed on the right; lengths outside [edges[0], edges[-1]] fall in the first or last bin."""
    inner = np.asarray(edges, dtype=float)[1:-1]
    return np.searchsorted(inner, np.asarray(lengths, dtype=float), side="right")


def off_policy(records: pd.DataFrame) -> pd.DataFrame:
    """The records of updates after the first of each step (all records when there is no
    `update` column, e.g. the simulation's)."""
    return records[records["update"] > 0] if "update" in records.columns else records


def clip_rate_by_bin(
    records: pd.DataFrame,
    edges: np.ndarray,
    by: Sequence[str] = ("method",),
    clip_columns: Sequence[str] = CLIP_COLUMNS,
) -> pd.DataFrame:
    """Per group and length bin: n, share (p_b), mean length, mean log length (x_b), the bin's
    edges, the clip rate of each clip column and, when records have them, the median |S| (m_b)
    and the mean of `entropy` (the sampling policy's mean per-token entropy of a sequence, which
    shows whether long responses are the uncertain ones). Empty bins are left out."""
    records = off_policy(records)
    missing = [c for c in (*by, "length", *clip_columns) if c not in records.columns]
    if missing:
        raise ValueError(f"clip_rate_by_bin: records lack columns {missing}; have {list(records.columns)}")
    frame = records[[*by, "length", *clip_columns]].copy()
    frame["bin"] = assign_bins(frame["length"], edges)
    frame["log_length"] = np.log(frame["length"].clip(lower=1).astype(float))
    extra = {}
    if "S" in records.columns:
        frame["abs_S"] = records["S"].abs().to_numpy()
        extra["abs_s_median"] = ("abs_S", "median")
    if "entropy" in records.columns:
        frame["entropy"] = records["entropy"].to_numpy()
        extra["entropy_mean"] = ("entropy", "mean")
    keys = [*by, "bin"]
    grouped = frame.groupby(keys, sort=True)
    table = grouped.agg(
        n=("length", "size"),
        length_mean=("length", "mean"),
        log_length_mean=("log_length", "mean"),
        **{c: (c, "mean") for c in clip_columns},
        **extra,
    ).reset_index()
    totals = table.groupby(list(by))["n"].transform("sum") if by else table["n"].sum()
    table["share"] = table["n"] / totals
    edges = np.asarray(edges, dtype=float)
    table["bin_lo"] = edges[table["bin"].to_numpy()]
    table["bin_hi"] = edges[table["bin"].to_numpy() + 1]
    return table


def clip_spread(rates: Sequence[float] | np.ndarray) -> float:
    """(max - min) / mean of the per-bin clip rates; 0 when nothing is clipped."""
    r = np.asarray(rates, dtype=float)
    mean = r.mean()
    return 0.0 if mean == 0 else float((r.max() - r.min()) / mean)


def clip_slope(rates: Sequence[float] | np.ndarray, log_lengths: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of the per-bin clip rate against the bins' mean log length."""
    r = np.asarray(rates, dtype=float)
    x = np.asarray(log_lengths, dtype=float)
    if r.size < 2 or np.ptp(x) == 0:
        return 0.0
    xc = x - x.mean()
    return float((xc * (r - r.mean())).sum() / (xc * xc).sum())


def s_growth_exponent(
    abs_s_medians: Sequence[float] | np.ndarray, log_lengths: Sequence[float] | np.ndarray
) -> float:
    """Least-squares slope of log median |S| against the bins' mean log length (bins with a zero
    median left out); NaN with fewer than two usable bins."""
    m = np.asarray(abs_s_medians, dtype=float)
    x = np.asarray(log_lengths, dtype=float)
    usable = m > 0
    if usable.sum() < 2 or np.ptp(x[usable]) == 0:
        return float("nan")
    return clip_slope(np.log(m[usable]), x[usable])


def length_reweighting_error(
    rates: Sequence[float] | np.ndarray, shares: Sequence[float] | np.ndarray
) -> float:
    """LRE = sum_b p_b |k_b / k_bar - 1| with k_b = 1 - r_b and k_bar = sum_b p_b k_b."""
    keep = 1.0 - np.asarray(rates, dtype=float)
    p = np.asarray(shares, dtype=float)
    p = p / p.sum()
    k_bar = float((p * keep).sum())
    return 0.0 if k_bar == 0 else float((p * np.abs(keep / k_bar - 1.0)).sum())


def summarize_bins(
    by_bin: pd.DataFrame, by: Sequence[str] = ("method",), clip_column: str = "seq_out"
) -> pd.DataFrame:
    """Per group: mean clip rate (over sequences), spread, slope and LRE of one clip column, and
    the S-growth exponent (NaN without `S`), from the output of `clip_rate_by_bin`."""

    def one(group: pd.DataFrame) -> pd.Series:
        rates = group[clip_column].to_numpy()
        shares = group["share"].to_numpy()
        return pd.Series(
            {
                "clip_rate": float((rates * shares).sum() / shares.sum()),
                "spread": clip_spread(rates),
                "slope": clip_slope(rates, group["log_length_mean"].to_numpy()),
                "lre": length_reweighting_error(rates, shares),
                "s_exponent": (
                    s_growth_exponent(group["abs_s_median"], group["log_length_mean"])
                    if "abs_s_median" in group
                    else float("nan")
                ),
                "n_bins": len(group),
            }
        )

    # Grouping by a list always yields tuple keys.
    rows = [{**dict(zip(by, key, strict=True)), **one(g)} for key, g in by_bin.groupby(list(by), sort=True)]
    out = pd.DataFrame(rows)
    out["n_bins"] = out["n_bins"].astype(int)
    return out


def fairness_summary(
    records: pd.DataFrame,
    by: Sequence[str] = ("method",),
    edges: np.ndarray | None = None,
    n_bins: int = DEFAULT_BINS,
    clip_column: str = "seq_out",
    ks: Sequence[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bins (shared edges from the pooled lengths unless given) and the per-group summary:
    `summarize_bins`' columns, then the within-sequence exponent `s_exponent_within` and `n_rungs`
    (`within_sequence_summary` on the rungs `ks`, shared by every group: `record_rungs` of the
    records unless given). Returns (per-bin table, per-group summary)."""
    if edges is None:
        edges = length_bin_edges(off_policy(records)["length"], n_bins)
    if ks is None:
        ks = record_rungs(records)
    by_bin = clip_rate_by_bin(records, edges, by=by)
    summary = summarize_bins(by_bin, by=by, clip_column=clip_column)
    within = within_sequence_summary(records, ks, by=by)
    return by_bin, summary.merge(within, on=list(by), how="left", validate="one_to_one")


# --------------------------------------------------------------------------- prefix sums

PREFIX_START = 8  # the first rung of the prefix ladder


def prefix_ladder(max_length: int, start: int = PREFIX_START) -> tuple[int, ...]:
    """The prefix lengths k = start, 2 start, 4 start, ... up to `max_length` (empty when
    max_length < start)."""
    if start < 1:
        raise ValueError(f"prefix_ladder: start={start} must be >= 1")
    ks, k = [], start
    while k <= max_length:
        ks.append(k)
        k *= 2
    return tuple(ks)


def prefix_sums(log_ratio: np.ndarray, mask: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """(B, len(ks)) float64: per sequence (row) and k, S_k = the sum of l_t over its first k response
    tokens (the positions where `mask` is true, in order; they need not be contiguous or start at
    0, e.g. the trainer's layout after the prompt), NaN when the sequence has fewer than k.
    `log_ratio` and `mask` are (B, T) array-likes (a CPU tensor works); values off the mask are
    ignored, NaN included. S_k for k = L is S."""
    values = np.asarray(log_ratio, dtype=np.float64)
    keep = np.asarray(mask).astype(bool)
    if values.ndim != 2 or keep.shape != values.shape:
        raise ValueError(
            f"prefix_sums: log_ratio and mask must be (B, T) of one shape, got {values.shape} and {keep.shape}"
        )
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"prefix_sums: every k must be >= 1, got {ks}")
    out = np.full((values.shape[0], len(ks)), np.nan)
    if values.shape[1] == 0:
        return out
    cumulative = np.cumsum(np.where(keep, values, 0.0), axis=1)
    count = np.cumsum(keep, axis=1)  # response tokens up to and including each position
    lengths = count[:, -1]
    rows = np.arange(values.shape[0])
    for j, k in enumerate(ks):
        has = lengths >= k
        at = np.argmax(count >= k, axis=1)  # the position of the k-th response token
        out[has, j] = cumulative[rows[has], at[has]]
    return out


def prefix_abs_medians(prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median |S_k| per rung over the sequences that reach it, their number) from `prefix_sums`'
    (B, K) output; NaN median for a rung no sequence reaches."""
    values = np.abs(np.asarray(prefix, dtype=np.float64))
    counts = np.isfinite(values).sum(axis=0)
    medians = np.full(values.shape[1], np.nan)
    for j in np.flatnonzero(counts):
        medians[j] = float(np.median(values[np.isfinite(values[:, j]), j]))
    return medians, counts


def within_sequence_exponent(abs_s_medians: Sequence[float] | np.ndarray, ks: Sequence[int]) -> float:
    """a_w: `s_growth_exponent` of the rungs' median |S_k| (over the sequences with L >= k)
    against log k; NaN with fewer than two usable rungs."""
    k = np.asarray(ks, dtype=float)
    return s_growth_exponent(abs_s_medians, np.log(k))


#: The fewest sequences a rung must reach to count in a fit of a_w (`reached_rungs`).
MIN_RUNG_SEQUENCES = 8


def reached_rungs(
    ks: Sequence[int],
    reach: Sequence[int] | np.ndarray,
    n_sequences: int,
    min_sequences: int = MIN_RUNG_SEQUENCES,
) -> tuple[int, ...]:
    """The rungs of `ks` that at least `min_sequences` sequences reach (`reach[j]`: how many reach
    ks[j]); every one of `n_sequences` must reach a rung when there are fewer than that, and a rung
    that none reaches never counts."""
    need = max(1, min(int(min_sequences), int(n_sequences)))
    return tuple(int(k) for k, count in zip(ks, reach, strict=True) if count >= need)


def record_prefix_sums(log_ratio: np.ndarray, mask: np.ndarray) -> list[dict[str, float]]:
    """The clip records' prefix-sum columns of a batch, one dict per sequence (row), in the
    records' column order: ``{"S_8": S_8, "S_16": S_16, ...}`` on the records' constant ladder
    (`clipbench.artifacts.RECORD_PREFIX_LADDER`), from `prefix_sums` (NaN when L < k). `log_ratio`
    and `mask` are the (B, T) l_t and response mask whose row sums are the records' S and L (a
    rule's ``LossOutput.log_ratio`` and ``mask``, moved to the CPU)."""
    prefix = prefix_sums(log_ratio, mask, artifacts.RECORD_PREFIX_LADDER)
    return [dict(zip(artifacts.PREFIX_COLUMNS, map(float, row), strict=True)) for row in prefix]


def record_rungs(records: pd.DataFrame, min_sequences: int = MIN_RUNG_SEQUENCES) -> tuple[int, ...]:
    """The rungs of the records' ladder (`clipbench.artifacts.RECORD_PREFIX_LADDER`) that the
    off-policy records reach (`reached_rungs`: at least `min_sequences` records with a finite S_k);
    () for records without prefix-sum columns."""
    records = off_policy(records)
    present = [
        (k, c)
        for k, c in zip(artifacts.RECORD_PREFIX_LADDER, artifacts.PREFIX_COLUMNS, strict=True)
        if c in records.columns
    ]
    reach = [int(np.isfinite(records[c].to_numpy(dtype=float)).sum()) for _, c in present]
    return reached_rungs([k for k, _ in present], reach, len(records), min_sequences)


def within_sequence_summary(
    records: pd.DataFrame, ks: Sequence[int], by: Sequence[str] = ("method",)
) -> pd.DataFrame:
    """Per group of the off-policy records: `s_exponent_within` (a_w: `within_sequence_exponent`
    of the medians `prefix_abs_medians` gives on the records' S_k columns of the rungs `ks`) and
    `n_rungs` (the rungs with a positive median, those the fit used). ValueError naming a rung whose
    column the records lack."""
    records = off_policy(records)
    ks = [int(k) for k in ks]
    columns = [artifacts.prefix_column(k) for k in ks]
    missing = [c for c in (*by, *columns) if c not in records.columns]
    if missing:
        raise ValueError(
            f"within_sequence_summary: records lack columns {missing}; have {list(records.columns)}"
        )
    rows = []
    for key, group in records.groupby(list(by), sort=True):
        medians, _ = prefix_abs_medians(group[columns].to_numpy(dtype=float).reshape(len(group), len(ks)))
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "s_exponent_within": within_sequence_exponent(medians, ks),
                "n_rungs": int((medians > 0).sum()),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "s_exponent_within", "n_rungs"])
