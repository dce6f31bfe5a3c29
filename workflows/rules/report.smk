# Tidy result files, the main table, the plots.


rule aggregate:
    input:
        evals=expand("results/evals/{model}/{bench}.json", model=MODELS, bench=BENCHES),
        runs=[f"{run_dir(m, s)}/final/summary.json" for m, s in RUNS],
    output:
        summary="results/summary.csv",
        fairness="results/fairness.csv",
    params:
        runs=[run_dir(m, s) for m, s in RUNS],
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
        summary="results/summary.csv",
        fairness="results/fairness.csv",
    output:
        report("results/tables/main.md", category="Tables"),
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
        summary="results/summary.csv",
        fairness="results/fairness.csv",
        runs=[f"{run_dir(m, s)}/final/summary.json" for m, s in RUNS],
    output:
        accuracy=report("results/plots/accuracy.png", category="Plots"),
        clip=report("results/plots/clip_by_length.png", category="Plots"),
        curves=report("results/plots/training_curves.png", category="Plots"),
    params:
        runs=[run_dir(m, s) for m, s in RUNS],
    log:
        "results/logs/plots.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m clipbench.cli report --summary {input.summary:q} --fairness {input.fairness:q} "
        "--runs {params.runs:q} --plots results/plots > {log:q} 2>&1"
