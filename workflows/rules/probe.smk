# The probe of the base model and the matched clip budgets (docs/probe.md, "In a study"). With a
# probe: section, `clipbench probe` measures how the base model's per-token log-ratios grow with
# length after a few updates (results/probe/: probe.json, sequences.parquet, probe.png, the plot in
# the report). With a calibration: section, `clipbench calibrate` sets each calibrated rule's band
# so that it puts calibration.target_rate of the probe's responses out of band
# (results/calibration.json); every train job waits on that file and trains at those bands.


if PROBE:

    rule probe:
        input:
            base=base_model_input(),
        output:
            summary=artifacts.PROBE_SUMMARY,
            sequences=artifacts.PROBE_SEQUENCES,
            plot=report(artifacts.PROBE_PLOT, category="Plots"),
        params:
            args=probe_args(),
            out=artifacts.PROBE_DIR,
        log:
            artifacts.PROBE_LOG,
        threads: 2
        resources:
            gpu=resources_of("probe").get("gpu", resources_of("train").get("gpu", 0)),
        conda:
            "../envs/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} python -m clipbench.cli probe {params.args:q} --out {params.out:q} "
            "> {log:q} 2>&1"


if CALIBRATED:

    rule calibrate:
        input:
            artifacts.PROBE_SEQUENCES,
        output:
            artifacts.CALIBRATION_JSON,
        params:
            probe=artifacts.PROBE_DIR,
            args=calibrate_args(),
        log:
            artifacts.CALIBRATION_LOG,
        conda:
            "../envs/report.yaml"
        shell:
            "python -m clipbench.cli calibrate --probe {params.probe:q} {params.args:q} --out {output:q} "
            "> {log:q} 2>&1"
