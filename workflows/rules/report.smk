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
        "python -m clipbench.cli aggregate --evals {input.evals} --runs {params.runs} --bins {params.bins} "
        "--clip-column {params.column} --summary {output.summary} --fairness {output.fairness} > {log} 2>&1"


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
        "python -m clipbench.cli report --summary {input.summary} --fairness {input.fairness} "
        "--config-name {params.name:q} --config-hash {params.hash} --table {output} > {log} 2>&1"


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
        "python -m clipbench.cli report --summary {input.summary} --fairness {input.fairness} "
        "--runs {params.runs} --plots results/plots > {log} 2>&1"
