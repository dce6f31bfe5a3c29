# clipbench study: base model -> train {method} x {seed} -> evaluate every model on every
# benchmark -> summary.csv, fairness.csv, fairness_bins.csv -> results/tables/main.md and one
# results/plots/{name}.png per plot registered in clipbench/plots.py. Optional: the probe of the
# base model (probe: section) and the bands calibrated on it before training (calibration: section).
#
#   snakemake --cores all                                   the default study (offline, CPU)
#   snakemake results/tables/main.md                        just the main table (and what it needs)
#   snakemake --cores all --configfile workflows/config/paper.yaml --profile profiles/slurm

from snakemake.utils import min_version, validate

from clipbench import cpu_kernels

# Before anything imports torch (clipbench.config does): every job inherits this process's
# environment, so on an x86 CPU with AVX2 torch, MKL and oneDNN run their AVX2 kernels in all of
# them, and a CPU study gives the same files on such machines (clipbench/cpu_kernels.py).
cpu_kernels.pin()

from clipbench.config import exponent_numbers

min_version("9.0")


# The default study unless --configfile names another one (Snakemake would otherwise deep-merge
# the two, e.g. adding the default's synthetic benchmarks to the paper's).
if not workflow.overwrite_configfiles:

    configfile: "workflows/config/default.yaml"


# `lr: 1e-5` is text to YAML 1.1 (Snakemake's loader); clipbench reads it as the number it means.
config.update(exponent_numbers(config))
# The schema is generated from the config dataclasses (python -m clipbench.study --write-schema);
# workflows/rules/common.smk then checks what no schema can say (clipbench.study.check_study).
validate(config, "workflows/config/schema.yaml")


include: "workflows/rules/common.smk"
include: "workflows/rules/base.smk"
include: "workflows/rules/probe.smk"
# train.backend verl: each run is verl-config, verl's main_ppo and verl-finish (verl.smk); else train.smk.
if VERL:

    include: "workflows/rules/verl.smk"

else:

    include: "workflows/rules/train.smk"


include: "workflows/rules/evaluate.smk"
include: "workflows/rules/report.smk"


rule all:
    default_target: True
    input:
        artifacts.MAIN_TABLE,
        [artifacts.plot_path(name) for name in plots.PLOTS],
        [artifacts.PROBE_PLOT] if PROBE else [],
