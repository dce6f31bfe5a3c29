# train.backend verl (included by the Snakefile instead of train.smk): each (method, seed) run is
# three jobs, each in its own env (docs/training.md, "Training inside verl"):
#   verl_config  clipbench's env: `clipbench verl-config` writes RUN_DIR/verl/ (the Hydra config over
#                verl's ppo_trainer, the data, the adapter's settings) from the run's config;
#   verl_train   verl's env (workflows/envs/verl.yaml): its `pip freeze --all` into RUN_DIR/verl/versions.txt
#                (the versions that trained, into provenance.json), then verl 0.9.1's main_ppo on resources.train.nodes x
#                gpu GPUs (several nodes: a Ray cluster over the SLURM allocation, clipbench.study.
#                verl_launcher), the clip records going to RUN_DIR/records/; then verl's model merger
#                turns the last FSDP checkpoint into an HF model, RUN_DIR/verl/hf/;
#   verl_finish  clipbench's env: `clipbench verl-finish` checks all of it and writes the run directory
#                the evaluate and aggregate jobs read (config.yaml, provenance.json, metrics.jsonl,
#                final/, final/summary.json last).
# verl does not resume (trainer.resume_mode: disable): a rerun of verl_train starts over, its stale
# records and checkpoints removed first.


def verl_folder(w):
    """RUN_DIR/verl, absolute (Hydra's --config-path; verl's workers start elsewhere)."""
    return str(Path(RunId(w.method, int(w.seed)).fill(artifacts.RUN_VERL_DIR)).resolve())


def verl_steps(w):
    """The run's steps: verl's last checkpoint is global_step_<steps> (it counts from 1)."""
    return study.run_steps(run_config(w.method, w.seed))


rule verl_config:
    input:
        base=base_model_input(),
        calibration=calibration_input(),
    output:
        artifacts.RUN_VERL_CONFIG,
    params:
        cfg=lambda w, input: json.dumps(run_config(w.method, w.seed, input), sort_keys=True),
        run_dir=lambda w: RunId(w.method, int(w.seed)).run_dir,
        cluster=study.verl_cluster_args(config),
    log:
        artifacts.VERL_CONFIG_LOG,
    conda:
        "../envs/train.yaml"
    shell:
        "python -m clipbench.cli verl-config --config-json {params.cfg:q} --run-dir {params.run_dir:q} "
        "{params.cluster:q} > {log:q} 2>&1"


rule verl_train:
    input:
        artifacts.RUN_VERL_CONFIG,
    output:
        merged=artifacts.RUN_VERL_MERGED_CONFIG,
        metrics=artifacts.RUN_VERL_METRICS,
    params:
        folder=verl_folder,
        records=lambda w: str(artifacts.records_dir(RunId(w.method, int(w.seed)).run_dir)),
        checkpoints=lambda w: f"{verl_folder(w)}/checkpoints",
        actor=lambda w: f"{verl_folder(w)}/checkpoints/global_step_{verl_steps(w)}/actor",
        merged=lambda w: f"{verl_folder(w)}/{artifacts.VERL_MERGED_DIR}",
        versions=lambda w: f"{verl_folder(w)}/{artifacts.VERL_VERSIONS_FILE}",
        launch=study.verl_launcher(config, workflow.basedir),
    log:
        artifacts.TRAIN_LOG,
    resources:
        gpu=study.verl_gpus(config),
        nodes=study.verl_nodes(config),
    conda:
        "../envs/verl.yaml"
    shell:
        "rm -rf {params.records:q} {params.checkpoints:q} {params.merged:q} && "
        "python -m pip freeze --all > {params.versions:q} && "
        "{params.launch}python -m verl.trainer.main_ppo --config-path {params.folder:q} --config-name config "
        "> {log:q} 2>&1 && "
        "python -m verl.model_merger merge --backend fsdp --local_dir {params.actor:q} "
        "--target_dir {params.merged:q} >> {log:q} 2>&1"


rule verl_finish:
    input:
        merged=artifacts.RUN_VERL_MERGED_CONFIG,
        metrics=artifacts.RUN_VERL_METRICS,
        calibration=calibration_input(),
    output:
        artifacts.RUN_FINAL_SUMMARY,
    params:
        cfg=lambda w, input: json.dumps(run_config(w.method, w.seed, input), sort_keys=True),
        run_dir=lambda w: RunId(w.method, int(w.seed)).run_dir,
    log:
        artifacts.VERL_FINISH_LOG,
    conda:
        "../envs/train.yaml"
    shell:
        "python -m clipbench.cli verl-finish --config-json {params.cfg:q} --run-dir {params.run_dir:q} "
        "> {log:q} 2>&1"
