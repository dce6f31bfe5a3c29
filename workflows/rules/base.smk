# The shared base checkpoint every method starts from.


rule base_model_sft:
    output:
        "results/base/model/clipbench_model.json",
    params:
        sets=sft_args(),
    log:
        "results/logs/base_model.log",
    threads: 2
    resources:
        gpu=resources_of("base").get("gpu", 0),
    conda:
        "../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m clipbench.cli sft --out results/base/model {params.sets:q} > {log:q} 2>&1"


if config["base"]["kind"] == "smollm2":

    ruleorder: base_model_smollm2 > base_model_sft

    rule base_model_smollm2:
        output:
            "results/base/model/clipbench_model.json",
        log:
            "results/logs/base_model.log",
        conda:
            "../envs/train.yaml"
        shell:
            "python -c 'from clipbench.models import smollm2_to_hf; smollm2_to_hf(\"results/base/model\")' > {log:q} 2>&1"
