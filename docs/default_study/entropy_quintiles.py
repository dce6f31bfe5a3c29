"""Write entropy_quintiles.csv beside this file from a finished default study's clip records.

The records of the off-policy updates (update > 0, first epoch) of every run, cut into five
quintiles of the response's mean per-token entropy; per quintile: mean entropy, mean length,
median |S| / L and mean S / L. Run from the repository root after `snakemake --cores all`:

    python docs/default_study/entropy_quintiles.py
"""

import glob
from pathlib import Path

import pandas as pd

from clipbench import artifacts

records = pd.concat(artifacts.read_clip_records(run) for run in sorted(glob.glob("results/runs/*/seed*")))
records = records[(records["update"] > 0) & (records["epoch"] == 0)]
records = records.assign(s_per_l=records["S"] / records["length"], abs_s_per_l=lambda d: d["s_per_l"].abs())
table = records.groupby(pd.qcut(records["entropy"], 5), observed=True).agg(
    entropy=("entropy", "mean"),
    length=("length", "mean"),
    median_abs_s_per_l=("abs_s_per_l", "median"),
    mean_s_per_l=("s_per_l", "mean"),
    n=("length", "size"),
)
table.index = table.index.astype(str)
out = Path(__file__).with_name("entropy_quintiles.csv")
table.rename_axis("entropy_quintile").to_csv(out, float_format="%.6g")
print(table.to_string())
