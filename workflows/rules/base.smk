# The shared base checkpoint every method starts from.


rule base_model_sft:
    output:
        artifacts.BASE_MODEL_MARKER,
    params:
        out=lambda w, output: str(Path(output[0]).parent),
        sets=sft_args(),
    log:
        artifacts.BASE_MODEL_LOG,
    threads: 2
    resources:
        gpu=resources_of("base").get("gpu", 0),
    conda:
        "../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m clipbench.cli sft --out {params.out:q} {params.sets:q} > {log:q} 2>&1"


if config["base"]["kind"] == "smollm2":

    ruleorder: base_model_smollm2 > base_model_sft

    rule base_model_smollm2:
        output:
            artifacts.BASE_MODEL_MARKER,
        params:
            out=lambda w, output: str(Path(output[0]).parent),
        log:
            artifacts.BASE_MODEL_LOG,
        conda:
            "../envs/smollm2.yaml"
        shell:
            "python -c 'from clipbench.models import smollm2_to_hf; smollm2_to_hf(\"{params.out}\")' > {log:q} 2>&1"
