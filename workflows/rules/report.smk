# Tidy result files, the main table, and one job per plot registered in clipbench.plots. The
# aggregate job computes every interval and the paired differences against report.reference
# (clipbench.stats); the table and the plots read them from summary.csv, fairness.csv and
# fairness_bins.csv. A plot job gets the options its plot declares from the config's report
# section (report.smoothing_window for the training curves: common.smk's plot_args). In a calibrated
# study the table's footer gives the clip budgets (calibration.json).


rule aggregate:
    input:
        evals=expand(artifacts.EVAL_SUMMARY, model=MODELS, bench=BENCHES),
        runs=[run.final_summary for run in RUNS],
    output:
        summary=artifacts.SUMMARY_CSV,
        fairness=artifacts.FAIRNESS_CSV,
        fairness_bins=artifacts.FAIRNESS_BINS_CSV,
    params:
        runs=[run.run_dir for run in RUNS],
        bins=config.get("fairness", {}).get("bins", fairness.DEFAULT_BINS),
        column=config.get("fairness", {}).get("clip_column", fairness.CLIP_COLUMNS[0]),
        intervals=report_args(),
    log:
        artifacts.AGGREGATE_LOG,
    conda:
        "../envs/report.yaml"
    shell:
        "python -m clipbench.cli aggregate --evals {input.evals:q} --runs {params.runs:q} --bins {params.bins:q} "
        "--clip-column {params.column:q} --summary {output.summary:q} --fairness {output.fairness:q} "
        "--fairness-bins {output.fairness_bins:q} {params.intervals:q} > {log:q} 2>&1"


rule main_table:
    input:
        summary=artifacts.SUMMARY_CSV,
        fairness=artifacts.FAIRNESS_CSV,
        calibration=calibration_input(),
    output:
        report(artifacts.MAIN_TABLE, category="Tables"),
    params:
        name=config["name"],
        hash=CONFIG_HASH,
    log:
        artifacts.MAIN_TABLE_LOG,
    conda:
        "../envs/report.yaml"
    # The command of an uncalibrated study is the one it always was (no new parameter): no rerun.
    shell:
        "python -m clipbench.cli report --summary {input.summary:q} --fairness {input.fairness:q} "
        "--config-name {params.name:q} --config-hash {params.hash:q} "
        + ("--calibration {input.calibration:q} " if CALIBRATED else "")
        + "--table {output:q} > {log:q} 2>&1"


rule plot:
    input:
        plot_inputs,
    output:
        report(artifacts.PLOT_PATH, category="Plots"),
    params:
        args=plot_args,
    wildcard_constraints:
        plot="|".join(map(re.escape, plots.PLOTS)) or "NONE",
    log:
        artifacts.PLOT_LOG,
    conda:
        "../envs/report.yaml"
    shell:
        "python -m clipbench.cli report {params.args:q} > {log:q} 2>&1"
