"""Print every number docs/default_study/README.md quotes, read from a study's tidy files.

Usage, from the repository root after the study: `python docs/default_study/facts.py results`
(or `docs/default_study` for the committed copies). The SFT warm-up's history is in
results/base/model/sft_history.json; the entropy quintiles come from entropy_quintiles.py.
"""

import sys

import numpy as np
import pandas as pd

d = sys.argv[1]
s = pd.read_csv(f"{d}/summary.csv")
f = pd.read_csv(f"{d}/fairness.csv")  # per method (scope pooled) and per run (scope seed)
bins = pd.read_csv(f"{d}/fairness_bins.csv")  # the same groups, per length bin
acc = s[s.metric == "avg@k"]
print("== accuracy avg@k per model")
print(acc.pivot_table(index=["method", "seed"], columns="benchmark", values="value").to_string())
g = acc[acc.method != "base"].groupby(["method", "benchmark"]).value.agg(["mean", "std"])
print(g.round(3).to_string())
for b in acc.benchmark.unique():
    m = g.xs(b, level="benchmark")["mean"]
    print(
        b,
        "RL range",
        round(m.min(), 3),
        "-",
        round(m.max(), 3),
        "base",
        acc[(acc.method == "base") & (acc.benchmark == b)].value.iloc[0],
    )
print("== pooled per method")
first = f[f.scope == "pooled"].set_index("method")
print(first[["clip_rate", "spread", "lre", "slope", "s_exponent"]].round(4).to_string())
print("== per seed")
ps = f[f.scope == "seed"].set_index(["method", "seed"])
print(ps[["clip_rate", "spread", "lre", "s_exponent"]].round(4).to_string())
print(
    "s_exponent pooled range",
    first.s_exponent.min().round(2),
    first.s_exponent.max().round(2),
    "per seed range",
    ps.s_exponent.min().round(2),
    ps.s_exponent.max().round(2),
)
print("== by bin (pooled): seq_out, length_mean, abs_s_median, entropy_mean")
for m, grp in bins[bins.scope == "pooled"].groupby("method"):
    grp = grp.sort_values("bin")
    ratio = grp.abs_s_median / np.sqrt(grp.length_mean)
    print(
        m,
        "seq_out",
        grp.seq_out.round(3).tolist(),
        "len",
        grp.length_mean.round(1).tolist(),
        "|S|/sqrtL growth",
        round(ratio.iloc[-1] / ratio.iloc[0], 1),
        "entropy",
        grp.entropy_mean.round(3).tolist(),
    )
