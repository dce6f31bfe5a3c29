# Tidy result files, the main table, the plots.


rule aggregate:
    input:
        evals=expand(artifacts.EVAL_SUMMARY, model=MODELS, bench=BENCHES),
        runs=[run.final_summary for run in RUNS],
    output:
        summary=artifacts.SUMMARY_CSV,
        fairness=artifacts.FAIRNESS_CSV,
    params:
        runs=[run.run_dir for run in RUNS],
        bins=config.get("fairness", {}).get("bins", 5),
        column=config.get("fairness", {}).get("clip_column", "seq_out"),
    log:
        "results/logs/aggregate.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m clipbench.cli aggregate --evals {input.evals:q} --runs {params.runs:q} --bins {params.bins:q} "
        "--clip-column {params.column:q} --summary {output.summary:q} --fairness {output.fairness:q} > {log:q} 2>&1"


rule main_table:
    input:
        summary=artifacts.SUMMARY_CSV,
        fairness=artifacts.FAIRNESS_CSV,
    output:
        report(artifacts.MAIN_TABLE, category="Tables"),
    params:
        name=config["name"],
        hash=CONFIG_HASH,
    log:
        "results/logs/main_table.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m clipbench.cli report --summary {input.summary:q} --fairness {input.fairness:q} "
        "--config-name {params.name:q} --config-hash {params.hash:q} --table {output:q} > {log:q} 2>&1"


rule plots:
    input:
        summary=artifacts.SUMMARY_CSV,
        fairness=artifacts.FAIRNESS_CSV,
        runs=[run.final_summary for run in RUNS],
    output:
        accuracy=report(artifacts.plot_path("accuracy"), category="Plots"),
        clip=report(artifacts.plot_path("clip_by_length"), category="Plots"),
        curves=report(artifacts.plot_path("training_curves"), category="Plots"),
    params:
        runs=[run.run_dir for run in RUNS],
        plots_dir=lambda w, output: str(Path(output.accuracy).parent),
    log:
        "results/logs/plots.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m clipbench.cli report --summary {input.summary:q} --fairness {input.fairness:q} "
        "--runs {params.runs:q} --plots {params.plots_dir:q} > {log:q} 2>&1"
