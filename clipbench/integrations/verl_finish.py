"""`clipbench verl-finish`: a finished verl run turned into the run directory clipbench reads.

A study with `train.backend: verl` runs each (method, seed) as three jobs (workflows/rules/verl.smk):
`clipbench verl-config` writes `RUN_DIR/verl/` (`clipbench.integrations.verl_config`); verl 0.9.1's
`main_ppo` trains there, its policy loss the clipbench rule, whose adapter writes the clip records
`RUN_DIR/records/step_NNNNNN.rankR.parquet` (`clipbench.integrations.verl`), and verl's model merger
turns the last FSDP checkpoint into an HF model in `RUN_DIR/verl/hf/`; then `finish` (this module, in
clipbench's env) writes what the native trainer writes and `clipbench aggregate`, `report` and
`evaluate` read:

* `config.yaml` (the run's TrainConfig) and `provenance.json` (`clipbench.provenance`, with the verl
  files it was made from);
* `metrics.jsonl`, one line per step, from verl's per-step metrics (`RUN_DIR/verl/metrics.jsonl`,
  written by verl's `file` logger, `verl.utils.tracking.FileLogger`: one `{"step": N, "data":
  {...}}` line per step, N counted from 1) through `METRIC_MAP` (`metrics_rows`);
* `final/`: the merged model (its files hard-linked, else copied, so verl's folder stays whole) with
  `clipbench_model.json` (its dtype: verl 0.9.1's merger writes bfloat16, the float32 weights rounded;
  tests/test_verl_finish.py), then `final/summary.json` last (`artifacts.RUN_FINAL_SUMMARY`, the file the
  study's DAG waits on).

Each input is checked first, and nothing is written unless every check passes: verl's metric lines
(one per step 1..steps, each with the keys of `REQUIRED`; an error names the file, the line and
the key), the clip records (steps 0..steps-1, every rank's part: `artifacts.read_clip_records`) and
the merged model (`config.json` and safetensors weights).

**The metrics mapping** (verl 0.9.1 keys: `verl.trainer.ppo.metric_utils.compute_data_metrics`, the
actor's `verl.workers.utils.losses.ppo_loss` and `engine_workers._postprocess_output`, prefixed
`actor/` by `ray_trainer._update_actor`; the rule's own metrics come from the adapter as
`actor/clipbench_<key>`, each the mean over the step's micro-batches, minibatches, epochs and ranks):

  step                 verl's step - 1 (the native trainer and the clip records count from 0)
  reward_mean          critic/score/mean (the reward function's score per response: the verifier's 1/0)
  accuracy             critic/score/mean (the same number, as natively with 0/1 rewards)
  response_length_mean response_length/mean
  response_length_max  response_length/max
  truncated_frac       response_length/clip_ratio (responses of exactly max_new_tokens: one that ends
                       with EOS at the limit counts too, where the native trainer counts unfinished ones)
  entropy              actor/entropy (the old-log-prob pass's; absent when verl does not compute it)
  grad_norm            actor/grad_norm
  kl_ref               actor/kl_loss (kl_beta > 0: verl's low_var_kl, not the native k3 token mean)
  <key>                actor/clipbench_<key>: clip_frac, clip_frac_low, clip_frac_high, ppo_kl and every
                       other metric of the rule
  updates              optim.minibatches x optim.epochs (the schedule, not a verl metric)

Native keys with no verl counterpart (`NOT_IN_VERL`): `response_length_p90`, the verifier's status
counts `verifier_<status>`, `loss` (verl logs the policy term `actor/pg_loss` and the KL term apart,
each aggregated its own way), and `perf.jsonl` (verl's `timing_s/*` and `perf/*` stay in its file).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from clipbench import artifacts
from clipbench.config import ConfigError, TrainConfig
from clipbench.integrations.verl_config import CONFIG_FILE, VERL_DIR, RunFiles

#: clipbench metrics.jsonl key -> verl 0.9.1's key in its per-step metrics (module docstring).
METRIC_MAP = {
    "reward_mean": "critic/score/mean",
    "accuracy": "critic/score/mean",
    "response_length_mean": "response_length/mean",
    "response_length_max": "response_length/max",
    "truncated_frac": "response_length/clip_ratio",
    "entropy": "actor/entropy",
    "grad_norm": "actor/grad_norm",
    "kl_ref": "actor/kl_loss",
}
#: The rule's metrics, as the adapter names them in verl (clipbench.integrations.verl.compute_policy_loss).
RULE_PREFIX = "actor/clipbench_"
#: The keys every step must have: what the report's training curves read (clipbench.plots).
REQUIRED = ("reward_mean", "response_length_mean", "clip_frac")
#: Native metrics.jsonl keys verl has no counterpart for, and why.
NOT_IN_VERL = {
    "response_length_p90": "verl logs the mean, max and min of the lengths only",
    "verifier_<status>": "verl's reward manager keeps the score, not the verifier's status",
    "loss": "verl logs the policy term (actor/pg_loss) and the KL term (actor/kl_loss) apart",
    "perf.jsonl": "verl's timing_s/* and perf/* keys stay in its own metrics file",
}


class VerlRunError(ValueError):
    """A verl run directory that is not (yet) a finished run; the message names the file."""


# ---------------------------------------------------------------------------- the metrics


def map_step(data: dict[str, Any]) -> dict[str, Any]:
    """One step's native metrics from verl's metric dict `data` (without `step` and `updates`): the
    keys of `METRIC_MAP` verl logged, then each `actor/clipbench_<key>` as `<key>`."""
    row = {ours: data[theirs] for ours, theirs in METRIC_MAP.items() if theirs in data}
    if "response_length_max" in row:
        row["response_length_max"] = int(row["response_length_max"])
    row.update({key[len(RULE_PREFIX) :]: value for key, value in data.items() if key.startswith(RULE_PREFIX)})
    return row


def metrics_rows(path: str | Path, cfg: TrainConfig) -> list[dict[str, Any]]:
    """clipbench's metrics.jsonl rows of the verl run whose per-step metrics are `path` (FileLogger
    lines): one per step 0..cfg.steps-1, each with `REQUIRED`; VerlRunError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise VerlRunError(f"{path}: no verl metrics (trainer.logger: file); did verl run to its end?")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise VerlRunError(f"{where}: not JSON ({err})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            raise VerlRunError(f'{where}: not a verl FileLogger line {{"step": N, "data": {{...}}}}')
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step != len(rows) + 1:
            raise VerlRunError(f"{where}: step {step!r}, expected {len(rows) + 1} (verl counts steps from 1)")
        row = map_step(entry["data"])
        for key in REQUIRED:
            if key not in row:
                source = METRIC_MAP.get(key, RULE_PREFIX + key)
                raise VerlRunError(f"{where}: no {source!r} in verl's metrics (clipbench's {key!r})")
            if not isinstance(row[key], (int, float)) or not math.isfinite(row[key]):
                raise VerlRunError(f"{where}: {key!r} is {row[key]!r}, not a finite number")
        rows.append({"step": step - 1, **row, "updates": cfg.optim.minibatches * cfg.optim.epochs})
    if len(rows) != cfg.steps:
        raise VerlRunError(
            f"{path}: {len(rows)} steps of metrics, the run has {cfg.steps} (an unfinished run?)"
        )
    return rows


# ---------------------------------------------------------------------------- the run directory


def check_records(run_dir: Path, steps: int) -> int:
    """The number of clip records of the run, checked complete (steps 0..steps-1, every rank's part)."""
    found = list(artifacts.step_records_files(run_dir))
    if found != list(range(steps)):
        raise VerlRunError(
            f"{artifacts.records_dir(run_dir)}: clip records of steps {found}, not 0..{steps - 1} "
            "(the adapter writes them: clipbench.integrations.verl)"
        )
    return len(artifacts.read_clip_records(run_dir))


def read_versions(path: Path) -> dict[str, str]:
    """{distribution: version} from `pip freeze --all` output (`name==version` lines; a direct
    reference, `name @ URL`, keeps its URL); VerlRunError naming the file when it is missing or holds
    no such line."""
    if not path.is_file():
        raise VerlRunError(
            f"{path}: no package versions of verl's env (the train job writes it with "
            "`python -m pip freeze --all` before verl starts)"
        )
    versions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if not sep:
            name, sep, version = line.strip().partition(" @ ")
        if sep and name:
            versions[name.strip().lower()] = version.strip()
    if not versions:
        raise VerlRunError(f"{path}: no `name==version` line; expected `pip freeze --all` output")
    return versions


def check_merged(folder: Path) -> None:
    """VerlRunError unless `folder` holds an HF model: config.json, safetensors weights and the
    tokenizer (verl's merger copies it from the checkpoint's huggingface/; the evaluate job needs it)."""
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        raise VerlRunError(
            f"{folder}: no tokenizer (tokenizer.json or tokenizer_config.json); verl's merger copies it from "
            "the checkpoint's huggingface/ folder: merge again, or copy it there"
        )
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise VerlRunError(
            f"{folder}: no HF model (config.json and *.safetensors); merge the last checkpoint first: "
            "python -m verl.model_merger merge --backend fsdp --local_dir CHECKPOINT/actor --target_dir "
            f"{folder}"
        )


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def write_final(merged: Path, final: Path, model_info: dict[str, Any]) -> Path:
    """`final/`: the merged model's files (hard links, else copies) and `clipbench_model.json`, built
    beside it and moved into place (`clipbench.provenance.replace_dir`)."""
    from clipbench.provenance import replace_dir

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        target = tmp / final.name
        shutil.copytree(merged, target, copy_function=_link_or_copy)
        info = json.dumps(model_info, indent=2, sort_keys=True) + "\n"
        (target / artifacts.MODEL_PROVENANCE_FILE).write_text(info)
        replace_dir(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def finish(cfg: TrainConfig, run_dir: str | Path) -> Path:
    """Turn the verl run of `cfg` in `run_dir` (its `verl/` folder and clip records) into clipbench's
    run directory (module docstring); returns `final/`. Every input is checked before anything is
    written; `final/summary.json` is written last."""
    from clipbench.provenance import atomic_write_json, atomic_write_text, provenance

    run_dir = Path(run_dir)
    files = RunFiles(run_dir / VERL_DIR / CONFIG_FILE)
    rows = metrics_rows(files.metrics, cfg)
    n_records = check_records(run_dir, cfg.steps)
    check_merged(files.merged)
    verl_versions = read_versions(files.versions)
    rule = cfg.build_method()

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=True))
    record = provenance(cfg.to_dict(), seed=cfg.seed)
    record["verl"] = {
        "config": str(files.config),
        "metrics": str(files.metrics),
        "checkpoint": str(files.actor_checkpoint(cfg.steps)),
        "merged": str(files.merged),
        "versions": verl_versions,  # the env that trained; record["versions"] is this job's env
    }
    atomic_write_json(run_dir / "provenance.json", record)
    atomic_write_text(
        run_dir / artifacts.METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    )
    final = write_final(
        files.merged,
        run_dir / artifacts.FINAL_DIR,
        {
            "kind": "verl",
            "merged_from": str(files.actor_checkpoint(cfg.steps)),
            "method": rule.name,
            "steps_done": cfg.steps,
            "dtype": json.loads((files.merged / "config.json").read_text()).get("dtype"),
            "versions": verl_versions,  # the weights come from verl's env
        },
    )
    summary = {
        "method": rule.name,
        "hparams": rule.hparams(),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "last": rows[-1],
        "records": n_records,
        "backend": "verl",
    }
    atomic_write_json(final / artifacts.FINAL_SUMMARY_FILE, summary)
    return final


def load_run(source: dict[str, Any]) -> TrainConfig:
    """The run's TrainConfig from its fields (the study's run config), validated; backend must be verl."""
    from clipbench.config import load_config

    cfg = load_config(source)
    if cfg.backend != "verl":
        raise ConfigError(f"backend: {cfg.backend!r}; verl-finish finishes a run of backend verl")
    return cfg


__all__ = [
    "METRIC_MAP",
    "NOT_IN_VERL",
    "REQUIRED",
    "RULE_PREFIX",
    "VerlRunError",
    "check_merged",
    "check_records",
    "finish",
    "load_run",
    "map_step",
    "metrics_rows",
    "write_final",
]
