# The base and each run, evaluated on every configured benchmark: one job per model, the
# benchmarks one after another in one process (clipbench.study.eval_plan), so that the model's
# job pays the interpreter's, lm-eval's and the verifier workers' start-up once.


rule evaluate:
    input:
        model_input,
    output:
        expand(artifacts.EVAL_SUMMARY, bench=BENCHES, allow_missing=True),
    params:
        model=lambda w: model_dir(w.model),
        plan=lambda w: json.dumps(study.eval_plan(config, w.model)),
    log:
        artifacts.EVAL_LOG,
    threads: 1
    resources:
        gpu=resources_of("evaluate").get("gpu", 0),
    conda:
        "../envs/evaluate.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m clipbench.cli evaluate --model {params.model:q} "
        "--plan-json {params.plan:q} > {log:q} 2>&1"
