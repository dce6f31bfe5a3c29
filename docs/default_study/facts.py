"""Print every number docs/default_study/README.md quotes, read from a study's tidy files.

Usage, from the repository root after the study: `python docs/default_study/facts.py results`
(or `docs/default_study` for the committed copies). The SFT warm-up's history is in
results/base/model/sft_history.json; the entropy quintiles come from entropy_quintiles.py.
Each value is followed by its 95% bootstrap interval [lo, hi] where the files have one.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from clipbench.methods import available_methods, get_method_class

pd.set_option("display.width", 200)
d = sys.argv[1]
s = pd.read_csv(f"{d}/summary.csv")
f = pd.read_csv(f"{d}/fairness.csv")  # per method (scope pooled) and per run (scope seed)
bins = pd.read_csv(f"{d}/fairness_bins.csv")  # the same groups, per length bin
acc = s[s.metric == "avg@k"]
runs, pooled_acc = acc[acc.scope == "seed"], acc[acc.scope == "pooled"]
print("== accuracy avg@k per model")
print(runs.pivot_table(index=["method", "seed"], columns="benchmark", values="value").to_string())
print("== accuracy avg@k per method, seeds pooled, with its interval, and the difference to the reference")
cols = ["method", "benchmark", "value", "lo", "hi", "reference", "diff", "diff_lo", "diff_hi"]
print(pooled_acc[cols].round(3).to_string(index=False))
for b in acc.benchmark.unique():
    on_b = pooled_acc[pooled_acc.benchmark == b]
    m = on_b[on_b.method != "base"]
    dd = on_b[on_b.method != on_b.reference]  # every method but the reference, the base model too
    print(
        b,
        "RL range",
        round(m.value.min(), 3),
        "-",
        round(m.value.max(), 3),
        "base",
        on_b[on_b.method == "base"].value.iloc[0],
        "| differences excluding 0:",
        dd[(dd.diff_lo > 0) | (dd.diff_hi < 0)].method.tolist(),
        "| difference interval widths",
        round((dd.diff_hi - dd.diff_lo).min(), 3),
        "-",
        round((dd.diff_hi - dd.diff_lo).max(), 3),
    )
    r = runs[runs.benchmark == b]
    print(
        b,
        "one run's interval width",
        round((r.hi - r.lo).min(), 3),
        "-",
        round((r.hi - r.lo).max(), 3),
        "stderr",
        round(r.stderr.min(), 3),
        "-",
        round(r.stderr.max(), 3),
        "| methods whose two seeds' intervals do not overlap:",
        [m for m, g in r[r.seed >= 0].groupby("method") if g.lo.max() > g.hi.min()],
    )
print("== pooled per method (value, lo, hi)")
first = f[f.scope == "pooled"].set_index("method")
metrics = ["clip_rate", "spread", "lre", "slope", "s_exponent"]
print(first[[f"{m}{e}" for m in metrics for e in ("", "_lo", "_hi")]].round(4).to_string())
print("== per seed (value, lo, hi)")
ps = f[f.scope == "seed"].set_index(["method", "seed"])
print(
    ps[[f"{m}{e}" for m in ("clip_rate", "spread", "lre", "s_exponent") for e in ("", "_lo", "_hi")]]
    .round(4)
    .to_string()
)
SEQUENCE = [m for m in available_methods() if get_method_class(m).level == "sequence" and m in first.index]
seq = first.loc[SEQUENCE]
print(
    "s_exponent pooled range",
    first.s_exponent.min().round(2),
    first.s_exponent.max().round(2),
    "sequence rules",
    seq.s_exponent.min().round(2),
    seq.s_exponent.max().round(2),
    "their intervals",
    seq.s_exponent_lo.min().round(2),
    seq.s_exponent_hi.max().round(2),
    "per seed range",
    ps.s_exponent.min().round(2),
    ps.s_exponent.max().round(2),
    "sequence-rule runs' lowest lower end",
    ps.loc[SEQUENCE].s_exponent_lo.min().round(2),
)
widths = ps.loc[SEQUENCE].eval("spread_hi - spread_lo")
print("== within-sequence exponent a_w (prefix sums; issue 17): pooled (value, lo, hi), per-run range")
print(first[["s_exponent_within", "s_exponent_within_lo", "s_exponent_within_hi", "n_rungs"]].round(2).to_string())
print(
    "a_w pooled lower ends >=",
    first.s_exponent_within_lo.min().round(2),
    "; per run",
    ps.s_exponent_within.min().round(2),
    "-",
    ps.s_exponent_within.max().round(2),
)
overlap = (first[["s_exponent_lo", "s_exponent_within_lo"]].max(axis=1)) <= (
    first[["s_exponent_hi", "s_exponent_within_hi"]].min(axis=1)
)
print("a and a_w intervals overlap for every rule:", bool(overlap.all()))
print("sequence-rule runs' spread interval widths", widths.min().round(2), "-", widths.max().round(2))
print("== by bin (pooled): seq_out [lo, hi], length_mean, abs_s_median, entropy_mean")
for m, grp in bins[bins.scope == "pooled"].groupby("method"):
    grp = grp.sort_values("bin")
    ratio = grp.abs_s_median / np.sqrt(grp.length_mean)
    print(
        m,
        "seq_out",
        [
            f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(grp.seq_out, grp.seq_out_lo, grp.seq_out_hi, strict=True)
        ],
        "len",
        grp.length_mean.round(1).tolist(),
        "|S|/sqrtL growth",
        round(ratio.iloc[-1] / ratio.iloc[0], 1),
        "entropy",
        grp.entropy_mean.round(3).tolist(),
    )
print("== sequence rules' clip spread, pooled and per seed (issue 14: powerband's fitted band beside the others)")
for m in SEQUENCE:
    row = first.loc[m]
    per_seed = ps.loc[m]
    print(
        m,
        f"pooled {row.spread:.3f} [{row.spread_lo:.3f}, {row.spread_hi:.3f}]",
        "per seed",
        [
            f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(per_seed.spread, per_seed.spread_lo, per_seed.spread_hi, strict=True)
        ],
    )
for i, a in enumerate(SEQUENCE):
    for b in SEQUENCE[i + 1 :]:
        x, y = first.loc[a], first.loc[b]
        separated = x.spread_hi < y.spread_lo or y.spread_hi < x.spread_lo
        print(f"  {a} vs {b}: pooled spread intervals {'separate' if separated else 'overlap'}")
runs_dir = Path(d) / "runs" / "powerband"
if runs_dir.is_dir():  # the study's results directory (not the committed copies): the fitted exponents
    for metrics_file in sorted(runs_dir.glob("seed*/metrics.jsonl")):
        fitted = [json.loads(line).get("band_exponent") for line in metrics_file.read_text().splitlines()]
        fitted = np.array([v for v in fitted if v is not None], dtype=float)
        print(
            "powerband",
            metrics_file.parent.name,
            "band_exponent per step (mean over the step's updates):",
            np.round(fitted, 2).tolist(),
            f"mean {fitted.mean():.2f}",
        )
