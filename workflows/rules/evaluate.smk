# Every model (the base and each run) on every configured benchmark.


rule evaluate:
    input:
        model_input,
    output:
        artifacts.EVAL_SUMMARY,
    params:
        model=lambda w: model_dir(w.model),
        args=lambda w: eval_args(w.bench),
    log:
        artifacts.EVAL_LOG,
    threads: 1
    resources:
        gpu=resources_of("evaluate").get("gpu", 0),
    conda:
        "../envs/evaluate.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m clipbench.cli evaluate --model {params.model:q} {params.args:q} "
        "--out {output:q} > {log:q} 2>&1"
