# One RL run per (method, seed); a restarted study resumes each run from its last checkpoint
# (the run directory is not an output, so Snakemake never deletes it). The run's config travels as
# a parameter: changing it reruns the run (the trainer then refuses the old run directory). A run
# of train.backend: trl with a launch section starts through `accelerate launch --config_file
# <launch.accelerate_config> --num_processes <train.processes>` (clipbench.study.train_launcher,
# clipbench/launch.py), one thread per process, in the trl conda env (the trl extra). In a
# calibrated study every run waits on results/calibration.json and its config takes the calibrated
# bands (common.smk's run_config).


rule train:
    input:
        base=base_model_input(),
        calibration=calibration_input(),
    output:
        artifacts.RUN_FINAL_SUMMARY,
    params:
        cfg=lambda w, input: json.dumps(run_config(w.method, w.seed, input), sort_keys=True),
        run_dir=lambda w: RunId(w.method, int(w.seed)).run_dir,
        launch=lambda w: study.train_launcher(config, run_config(w.method, w.seed)),
    log:
        artifacts.TRAIN_LOG,
    threads: lambda w: study.train_threads(run_config(w.method, w.seed))
    resources:
        gpu=resources_of("train").get("gpu", 0),
    conda:
        "../envs/trl.yaml" if config["train"].get("backend") == "trl" else "../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS=1 {params.launch:q} -m clipbench.cli train --config-json {params.cfg:q} "
        "--out {params.run_dir:q} --no-progress > {log:q} 2>&1"
