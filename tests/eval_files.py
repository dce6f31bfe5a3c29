"""Evaluation files for the tests of what reads them (summary.csv, the bootstrap intervals)."""

import hashlib
import json

import numpy as np


def write_eval(root, model, correct, bench="synthetic_test", **extra):
    """An evaluation as `clipbench evaluate` leaves it: the summary (metrics by
    clipbench.evaluate.score, the samples file's sha256) beside its samples, from a boolean
    (problems, k) array of verdicts."""
    from clipbench.evaluate import score

    path = root / "evals" / model / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = path.with_name(f"{bench}.samples.jsonl")
    lines = [
        {"problem_id": f"syn-{i}", "sample": j, "correct": bool(c)}
        for i, row in enumerate(correct)
        for j, c in enumerate(row)
    ]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    files = {"samples": samples.name, "samples_sha256": hashlib.sha256(samples.read_bytes()).hexdigest()}
    metrics = score(np.asarray(correct).tolist())
    path.write_text(json.dumps({"k": np.shape(correct)[1], **metrics, "files": files, **extra}))
    return path


def aggregate_runs(root, runs, bins):
    """`clipbench aggregate` of the run directories `runs` ({method: dir}, seed 0) with random
    evaluations of the base model and grpo and fspo (seeded): {summary, fairness, fairness_bins: path}
    of the csv files it wrote under `root` (20 resamples per interval)."""
    from clipbench import cli

    rng = np.random.default_rng(0)
    evals = [
        write_eval(root, name, rng.random((12, 2)) < 0.5) for name in ("base", "grpo-seed0", "fspo-seed0")
    ]
    out = {name: root / f"{name}.csv" for name in ("summary", "fairness", "fairness_bins")}
    files = [arg for name, path in out.items() for arg in (f"--{name.replace('_', '-')}", str(path))]
    args = ["aggregate", "--evals", *map(str, evals), "--runs", *map(str, runs.values()), "--bins", str(bins)]
    assert cli.main([*args, *files, "--resamples", "20"]) == 0
    return out
