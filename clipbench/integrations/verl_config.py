"""`clipbench verl-config`: the verl 0.9.1 config of one run of a study, and the files it reads.

For a study config, a method and a seed (a run of the study's grid), `write_run` writes, into one
folder (default `RUN_DIR/verl/`, `RunFiles`):

* `config.yaml`: a Hydra primary config on top of verl's own `ppo_trainer` (its `defaults` list
  and `hydra.searchpath: pkg://verl.trainer.config`), launched with
  `python -m verl.trainer.main_ppo --config-path DIR --config-name config` (`RunFiles.command`);
* `train.parquet`, `val.parquet`: the prompts in verl's RLHFDataset layout (`data_source` =
  `clipbench/<benchmark>`, `prompt` = one user message, `ability`, `reward_model` = {style: rule,
  ground_truth}, `extra_info` = {split, index, step}); the training rows in the native trainer's
  order (`clipbench.trainer.prompt_indices`: P rows per step, read in order, `data.shuffle: false`);
  the validation rows, which verl needs as a file but never runs here (`trainer.test_freq: -1`;
  clipbench evaluates the final model itself), are the first step's;
* `clipbench.json`: the adapter's settings (`clipbench.integrations.verl.Settings`): the rule's
  hyperparameters, the run directory for the clip records, the update schedule.

verl's own outputs go into the same folder: its checkpoints (`checkpoints/global_step_N/actor/`,
`trainer.default_local_dir`) and its per-step metrics, `metrics.jsonl` (verl's `file` logger,
`verl.utils.tracking.FileLogger`, named by `VERL_FILE_LOGGER_PATH` in every Ray worker's
environment); a study's train job merges the last checkpoint into `hf/` with verl's model merger
(`RunFiles.merged`), and `clipbench verl-finish` (`clipbench.integrations.verl_finish`) turns them into
the run directory clipbench reads.

What is mapped (`hydra_config`), TrainConfig field -> verl key:

  model                      actor_rollout_ref.model.path (absolute where it is a local folder)
  method, method_params      actor.policy_loss.loss_mode = clipbench_<method>; the hyperparameters
                             through clipbench.json (verl's config refuses unknown keys)
                             actor.loss_agg_mode (and loss_scale_factor): the one the rule honours
  seed                       data.seed, rollout.seed, actor.data_loader_seed
  steps                      trainer.total_training_steps (total_epochs 1: the rows hold every step)
  data.*                     the parquet files; data.prompt_style base -> a chat template that is the
                             prompt itself (model.custom_chat_template), chat -> the tokenizer's
  rollout.prompts_per_step   data.train_batch_size (P)
  rollout.samples_per_prompt rollout.n (G)
  rollout.temperature, top_p rollout.temperature, rollout.top_p (top_k -1: off)
  rollout.max_new_tokens     data.max_response_length
  rollout.gpu_memory_util.   rollout.gpu_memory_utilization
  advantage                  algorithm.adv_estimator: grpo (eps 1e-6, verl's fixed epsilon), drgrpo
                             (grpo without the std: norm_adv_by_std_in_grpo false), rloo
  optim.lr, weight_decay,    actor.optim.lr, weight_decay, betas, clip_grad; constant schedule,
  beta1, beta2, grad_clip    no warm-up
  optim.minibatches (M)      actor.ppo_mini_batch_size = P / M prompts (verl counts prompts)
  optim.epochs (E)           actor.ppo_epochs
  optim.max_tokens_per_mb.   actor.use_dynamic_bsz with ppo_max_token_len_per_gpu (null: each
                             GPU's share of a minibatch in one micro-batch)
  optim.gradient_checkpoint. model.enable_gradient_checkpointing
  kl_beta                    actor.use_kl_loss, kl_loss_coef (verl's low_var_kl: k3 clamped to
                             +-10, aggregated by loss_agg_mode; the native trainer's k3 is a token
                             mean: close, not equal)
  dtype                      float32: FSDP mixed precision fp32 and rollout.dtype float32;
                             bfloat16: verl's default (bf16 compute over fp32 weights), as autocast
  checkpoint_every, keep_..  trainer.save_freq, trainer.max_actor_ckpt_to_keep

Not mapped (`NOT_MAPPED`, printed in the file's header): `device`, `rollout.engine`,
`rollout.vllm_weight_sync`, `rollout.vllm_sleep_level`, `optim.logprob_chunk_tokens`, `processes`
(verl's ranks are `--nodes` x `--gpus-per-node`). Fixed: the actor keeps verl's row order
(`actor.shuffle: false`, `trainer.balance_batch: false`), so a minibatch is P / M whole prompt
groups where the native trainer draws a seeded permutation of rows; vLLM samples (`rollout.name:
vllm`, one GPU per engine); no resume (`trainer.resume_mode: disable`: the clip records count
steps from the process's start); no validation; rollout correction off (verl's default).

Refused (ConfigError naming the field): `backend` trl; `optim.minibatches` not
dividing `rollout.prompts_per_step`; a minibatch that does not split evenly over the GPUs;
`optim.grad_clip: 0` (verl always clips); a grpo `advantage.eps` other than verl's 1e-6, or an
estimator verl lacks; a rule that reads minibatch statistics (FSPO `drift: kl`, powerband's fit)
on more than one GPU or with micro-batches (the adapter sees one micro-batch); seq_mean_token_sum_norm
with a non-integral `norm_tokens`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from clipbench import artifacts, benchmarks, methods
from clipbench.config import ConfigError, TrainConfig
from clipbench.integrations import verl as adapter
from clipbench.integrations.verl_reward import source_of

#: Where `clipbench verl-config` writes a run's files by default, inside its run directory.
VERL_DIR = artifacts.VERL_DIR
CONFIG_FILE = artifacts.VERL_CONFIG_FILE
SETTINGS_FILE = "clipbench.json"
TRAIN_FILE = "train.parquet"
VAL_FILE = "val.parquet"
CHECKPOINT_DIR = "checkpoints"
#: verl's per-step metrics (its file logger, trainer.logger: file) and the merged final model, in the folder.
METRICS_FILE = artifacts.VERL_METRICS_FILE
MERGED_DIR = artifacts.VERL_MERGED_DIR
VERSIONS_FILE = artifacts.VERL_VERSIONS_FILE
#: The environment variable verl's FileLogger (verl/utils/tracking.py) writes to when set.
FILE_LOGGER_ENV = "VERL_FILE_LOGGER_PATH"
#: The module verl's workers import (actor_rollout_ref.model.external_lib): it registers the rules.
PLUGIN = "clipbench.integrations.verl_plugin"
#: The reward function (reward.custom_reward_function).
REWARD_PATH = "pkg://clipbench.integrations.verl_reward"
REWARD_NAME = "compute_score"
#: prompt_style base: the rendered prompt, as is (no special tokens, as the native trainer tokenizes it).
BASE_CHAT_TEMPLATE = "{{ messages[0]['content'] }}"
#: verl's GRPO divides by std + 1e-6, a constant of its code (compute_grpo_outcome_advantage).
VERL_GRPO_EPS = 1e-6
#: data.max_prompt_length by default: the longest prompt in UTF-8 bytes (a byte-level BPE token is at
#: least one byte), plus this many tokens for a chat template's markup (prompt_style chat).
CHAT_TEMPLATE_TOKENS = 256
#: TrainConfig fields verl-config does not carry into verl's config, and why.
NOT_MAPPED = {
    "device": "verl trains on its GPUs (trainer.device: cuda)",
    "rollout.engine": "verl samples with vLLM (rollout.name: vllm)",
    "rollout.vllm_weight_sync": "verl syncs the weights to vLLM itself",
    "rollout.vllm_sleep_level": "verl frees vLLM's memory during updates itself (rollout.free_cache_engine)",
    "optim.logprob_chunk_tokens": "memory only; verl computes log-probs its own way",
    "processes": "verl's ranks are trainer.nnodes x trainer.n_gpus_per_node (--nodes, --gpus-per-node)",
}


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of one verl run of clipbench, in `folder` (the config file's)."""

    config: Path

    @property
    def folder(self) -> Path:
        return self.config.parent

    @property
    def settings(self) -> Path:
        return self.folder / SETTINGS_FILE

    @property
    def train(self) -> Path:
        return self.folder / TRAIN_FILE

    @property
    def val(self) -> Path:
        return self.folder / VAL_FILE

    @property
    def checkpoints(self) -> Path:
        return self.folder / CHECKPOINT_DIR

    @property
    def metrics(self) -> Path:
        """verl's per-step metrics: one `{"step": N, "data": {...}}` line per step (FileLogger)."""
        return self.folder / METRICS_FILE

    @property
    def versions(self) -> Path:
        """`pip freeze --all` of the env verl trained in, written by the train job before verl starts:
        the package versions that made the run (clipbench's own env is another)."""
        return self.folder / VERSIONS_FILE

    @property
    def merged(self) -> Path:
        """The final model in HF format, as verl's model merger writes it from the last checkpoint."""
        return self.folder / MERGED_DIR

    def actor_checkpoint(self, step: int) -> Path:
        """verl's FSDP checkpoint of the actor after step `step` (counted from 1, as verl counts):
        `global_step_N/actor/` (verl.trainer.ppo.ray_trainer._save_checkpoint) with the shards
        `model_world_size_W_rank_R.pt`, `fsdp_config.json` and `huggingface/` (config, tokenizer)."""
        return self.checkpoints / f"global_step_{step}" / "actor"

    def command(self) -> str:
        """The line that starts verl on this config."""
        return f"python -m verl.trainer.main_ppo --config-path {self.folder} --config-name {self.config.stem}"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """verl's ranks: `nodes` x `gpus_per_node` GPUs, one data-parallel rank each."""

    nodes: int = 1
    gpus_per_node: int = 1

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


# ---------------------------------------------------------------------------- the mapping


def advantage_settings(cfg: TrainConfig) -> dict[str, Any]:
    """verl's `algorithm` keys for the run's advantage estimator; ConfigError for one verl lacks."""
    a = cfg.advantage
    if a.estimator == "grpo":
        if a.eps != VERL_GRPO_EPS:
            raise ConfigError(
                f"advantage.eps: {a.eps!r}; verl's grpo divides by std + {VERL_GRPO_EPS:g}, a constant of its code"
            )
        return {"adv_estimator": "grpo", "norm_adv_by_std_in_grpo": True}
    if a.estimator == "drgrpo":
        return {"adv_estimator": "grpo", "norm_adv_by_std_in_grpo": False}
    if a.estimator == "rloo":
        return {"adv_estimator": "rloo"}
    raise ConfigError(
        f"advantage.estimator: {a.estimator!r} has no verl equivalent here (grpo, drgrpo, rloo)"
    )


def minibatch_rows_per_gpu(cfg: TrainConfig, cluster: Cluster) -> int:
    """Sequences of one minibatch on each GPU; ConfigError when verl cannot split it so."""
    r, o = cfg.rollout, cfg.optim
    if r.prompts_per_step % o.minibatches:
        raise ConfigError(
            f"optim.minibatches: {o.minibatches} must divide rollout.prompts_per_step = {r.prompts_per_step} "
            "(verl's actor.ppo_mini_batch_size counts prompts, each with its rollout.n samples)"
        )
    rows = r.prompts_per_step // o.minibatches * r.samples_per_prompt
    if rows % cluster.gpus:
        raise ConfigError(
            f"optim.minibatches: a minibatch of {rows} sequences does not split over {cluster.gpus} GPUs "
            f"({cluster.nodes} node(s) x {cluster.gpus_per_node}: resources.train.nodes x resources.train.gpu "
            "in a study, --nodes x --gpus-per-node for verl-config); change either"
        )
    return rows // cluster.gpus


def loss_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The actor's policy-loss keys: the loss name, the rule's loss_agg_mode (and loss_scale_factor)."""
    rule = cfg.build_method()
    try:
        mode, scale = adapter.accepted_mode(rule)
    except ValueError as err:
        raise ConfigError(f"method_params: {err}") from None
    return {
        "policy_loss": {"loss_mode": adapter.loss_name(cfg.method)},
        "loss_agg_mode": mode,
        "loss_scale_factor": scale,
    }


def microbatch_settings(cfg: TrainConfig, cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """(actor keys, log-prob keys of rollout and ref) of the micro-batching: verl's dynamic batches of
    `optim.max_tokens_per_microbatch` tokens, or each GPU's share of a minibatch at once."""
    rows = minibatch_rows_per_gpu(cfg, cluster)
    budget = cfg.optim.max_tokens_per_microbatch
    rule = cfg.build_method()
    if rule.needs_minibatch_statistics and (budget is not None or cluster.gpus > 1):
        raise ConfigError(
            f"method_params: {cfg.method} {rule.hparams()} reads a statistic of the whole minibatch, and verl hands "
            "the policy loss one micro-batch of one GPU: it runs under verl only on one GPU with "
            "optim.max_tokens_per_microbatch null"
        )
    if budget is not None:
        return {"use_dynamic_bsz": True, "ppo_max_token_len_per_gpu": budget}, {}
    return (
        {"use_dynamic_bsz": False, "ppo_micro_batch_size_per_gpu": rows},
        {"log_prob_micro_batch_size_per_gpu": rows},
    )


def check_mappable(cfg: TrainConfig, cluster: Cluster) -> None:
    """ConfigError naming the field for what verl cannot run as the run `cfg` asks (module
    docstring, "Refused"), before any data is read."""
    if cfg.backend not in ("native", "verl"):
        raise ConfigError(f"backend: {cfg.backend!r}; verl-config maps a native or verl run's settings")
    if cfg.optim.grad_clip == 0:
        raise ConfigError(
            "optim.grad_clip: 0 (no clipping) has no verl equivalent: verl always clips (optim.clip_grad)"
        )
    if cfg.report_to:
        raise ConfigError(
            f"report_to: {cfg.report_to} is not mapped to verl's trainer.logger; set that in the overrides"
        )
    advantage_settings(cfg)
    loss_settings(cfg)
    microbatch_settings(cfg, cluster)


def hydra_config(
    cfg: TrainConfig,
    files: RunFiles,
    *,
    model: str,
    cluster: Cluster,
    max_prompt_length: int,
    repo_root: str | Path,
) -> dict[str, Any]:
    """verl's config for the run `cfg` (validated) as a Hydra primary config over verl's ppo_trainer
    (module docstring: the mapping). `model`: the base model (a path or hub id, as verl gets it)."""
    check_mappable(cfg, cluster)
    r, o = cfg.rollout, cfg.optim
    actor_batches, logprob_batches = microbatch_settings(cfg, cluster)
    kl = cfg.kl_beta > 0
    model_section: dict[str, Any] = {
        "path": model,
        "external_lib": PLUGIN,
        "enable_gradient_checkpointing": o.gradient_checkpointing,
    }
    if cfg.data.prompt_style == "base":
        model_section["custom_chat_template"] = BASE_CHAT_TEMPLATE
    precision = {}
    if cfg.dtype == "float32":
        precision = {
            "mixed_precision": {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
        }
    actor = {
        "strategy": "fsdp",
        "ppo_mini_batch_size": r.prompts_per_step // o.minibatches,
        "ppo_epochs": o.epochs,
        "shuffle": False,
        **actor_batches,
        **loss_settings(cfg),
        "entropy_coeff": 0,
        "use_kl_loss": kl,
        "kl_loss_coef": cfg.kl_beta,
        "kl_loss_type": "low_var_kl",
        "data_loader_seed": cfg.seed,
        "optim": {
            "lr": o.lr,
            "weight_decay": o.weight_decay,
            "betas": [o.beta1, o.beta2],
            "clip_grad": o.grad_clip,
            "lr_scheduler_type": "constant",
            "lr_warmup_steps": 0,
        },
        "fsdp_config": dict(precision),
    }
    rollout = {
        "name": "vllm",
        "n": r.samples_per_prompt,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": -1,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "gpu_memory_utilization": r.gpu_memory_utilization,
        "tensor_model_parallel_size": 1,
        **logprob_batches,
    }
    section = {"model": model_section, "actor": actor, "rollout": rollout}
    if kl:
        section["ref"] = {**logprob_batches, "fsdp_config": dict(precision)}
    return {
        "hydra": {"searchpath": ["pkg://verl.trainer.config"]},
        "defaults": ["ppo_trainer", "_self_"],
        "data": {
            "train_files": str(files.train),
            "val_files": str(files.val),
            "train_batch_size": r.prompts_per_step,
            "max_prompt_length": max_prompt_length,
            "max_response_length": r.max_new_tokens,
            "shuffle": False,
            "seed": cfg.seed,
            "truncation": "error",
            "filter_overlong_prompts": False,
        },
        "actor_rollout_ref": section,
        "algorithm": {**advantage_settings(cfg), "use_kl_in_reward": False},
        "reward": {"custom_reward_function": {"path": REWARD_PATH, "name": REWARD_NAME}},
        "trainer": {
            "total_epochs": 1,
            "total_training_steps": cfg.steps,
            "nnodes": cluster.nodes,
            "n_gpus_per_node": cluster.gpus_per_node,
            "device": "cuda",
            "save_freq": cfg.checkpoint_every,
            "max_actor_ckpt_to_keep": cfg.keep_checkpoints,
            "test_freq": -1,
            "val_before_train": False,
            "resume_mode": "disable",
            "balance_batch": False,
            "logger": ["console", "file"],
            "project_name": "clipbench",
            "experiment_name": artifacts.RunId(cfg.method, cfg.seed).model,
            "default_local_dir": str(files.checkpoints),
        },
        "ray_kwargs": {
            "ray_init": {
                "runtime_env": {
                    "env_vars": {
                        adapter.SETTINGS_ENV: str(files.settings),
                        FILE_LOGGER_ENV: str(files.metrics),
                        "PYTHONPATH": str(repo_root),
                    }
                }
            }
        },
    }


def adapter_settings(cfg: TrainConfig, run_dir: str | Path) -> adapter.Settings:
    """The adapter's settings for the run: the rule's hyperparameters, where its clip records go, the
    schedule (P x G sequences per step, M minibatches, E epochs)."""
    r = cfg.rollout
    return adapter.Settings(
        method=cfg.method,
        params=dict(cfg.method_params),
        run_dir=str(run_dir),
        rollout_batch=r.prompts_per_step * r.samples_per_prompt,
        minibatches=cfg.optim.minibatches,
        epochs=cfg.optim.epochs,
    )


def header(cfg: TrainConfig, files: RunFiles) -> str:
    """The YAML comment on top of the config: what it is, how to start it, what it leaves out."""
    lines = [
        f"verl 0.9.1 config of clipbench run {artifacts.RunId(cfg.method, cfg.seed).model}, written by clipbench verl-config",
        f"(clipbench/integrations/verl_config.py; docs/training.md, 'Training inside verl'). Start: {files.command()}",
        "Not mapped from the run's TrainConfig:",
        *(f"  {field}: {why}" for field, why in NOT_MAPPED.items()),
    ]
    return "".join(f"# {line}\n" for line in lines)


# ---------------------------------------------------------------------------- the data


def data_rows(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The training rows in verl's RLHFDataset layout, P per step in the native trainer's order."""
    from clipbench.benchmarks.prompts import render
    from clipbench.trainer import prompt_indices

    d = cfg.data
    spec = benchmarks.get_spec(d.benchmark)
    problems = benchmarks.load(
        d.benchmark, data_dir=d.data_dir, split=d.split, n=d.n, **({"seed": d.seed} if spec.generated else {})
    )
    p = cfg.rollout.prompts_per_step
    rows = []
    for step in range(cfg.steps):
        for index in prompt_indices(cfg.seed, step, p, len(problems)):
            problem = problems[index]
            rows.append(
                {
                    "data_source": source_of(d.benchmark),
                    "prompt": [{"role": "user", "content": render(problem, spec.prompt_template)}],
                    "ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": problem.answer},
                    "extra_info": {"split": d.split, "index": index, "step": step},
                }
            )
    return rows


def default_max_prompt_length(cfg: TrainConfig, rows: list[dict[str, Any]]) -> int:
    """The longest prompt in UTF-8 bytes (an upper bound on its tokens for a byte-level tokenizer),
    plus `CHAT_TEMPLATE_TOKENS` for prompt_style chat. verl stops on a longer one (truncation: error)."""
    longest = max(len(row["prompt"][0]["content"].encode("utf-8")) for row in rows)
    return longest + (CHAT_TEMPLATE_TOKENS if cfg.data.prompt_style == "chat" else 0)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` as a parquet file, atomically."""
    import os

    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- one run of a study


def repo_root() -> Path:
    """The checkout clipbench is imported from (verl's workers get it on PYTHONPATH)."""
    import clipbench

    return Path(clipbench.__file__).resolve().parents[1]


def write_run(
    cfg: TrainConfig,
    *,
    model: str,
    run_dir: str | Path,
    out: str | Path | None = None,
    cluster: Cluster = Cluster(),
    max_prompt_length: int | None = None,
) -> RunFiles:
    """Write the verl config, the data and the adapter's settings of run `cfg` (validated), the clip
    records going to `run_dir/records`; `out`: the config file (default `run_dir/verl/config.yaml`)."""
    run_dir = Path(run_dir).resolve()
    files = RunFiles(Path(out).resolve() if out is not None else run_dir / VERL_DIR / CONFIG_FILE)
    check_mappable(cfg, cluster)  # before the data are read
    rows = data_rows(cfg)
    length = max_prompt_length or default_max_prompt_length(cfg, rows)
    config = hydra_config(
        cfg, files, model=model, cluster=cluster, max_prompt_length=length, repo_root=repo_root()
    )
    from clipbench.provenance import atomic_write_text

    write_parquet(files.train, rows)
    write_parquet(files.val, rows[: cfg.rollout.prompts_per_step])
    adapter.write_settings(files.settings, adapter_settings(cfg, run_dir))
    atomic_write_text(files.config, header(cfg, files) + yaml.safe_dump(config, sort_keys=False))
    return files


def model_for_verl(model: str) -> str:
    """The run's base model as verl gets it: an existing local folder made absolute (verl's workers
    start elsewhere), anything else (a hub id) as it is."""
    local = Path(model)
    return str(local.resolve()) if local.exists() else model


def study_cluster(config: dict[str, Any]) -> Cluster:
    """verl's ranks for a study's train jobs: `resources.train.nodes` (default 1) x
    `resources.train.gpu` GPUs per node (default 1); ConfigError naming the key otherwise."""
    train = (config.get("resources") or {}).get("train") or {}
    sizes = {}
    for key, field in (("nodes", "nodes"), ("gpu", "gpus_per_node")):
        value = train.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"resources.train.{key}: {value!r}; verl needs a positive integer here")
        sizes[field] = value
    return Cluster(**sizes)


def study_run(config: dict[str, Any], method: str, seed: int) -> tuple[TrainConfig, str]:
    """(the run's TrainConfig, validated; its base model as verl gets it) for `method` and `seed` of a
    study config (checked as the DAG check does); StudyConfigError for a run outside its grid."""
    from clipbench.config import from_dict, validate
    from clipbench.study import StudyConfigError, base_model_dir, check_study, run_config

    grid = check_study(config)
    if method not in grid.methods:
        raise StudyConfigError(
            f"method {method!r} is not one of the study's methods ({', '.join(grid.methods)})"
            + ("" if method in methods.available_methods() else "; it is not a registered rule either")
        )
    if seed not in grid.seeds:
        raise StudyConfigError(f"seed {seed} is not one of the study's seeds {grid.seeds}")
    cfg = validate(from_dict(TrainConfig, run_config(config, method, seed)))
    base = base_model_dir(config)
    local = Path(base)
    model = str(local.resolve()) if config["base"]["kind"] != "path" or local.exists() else base
    return cfg, model


__all__ = [
    "CONFIG_FILE",
    "NOT_MAPPED",
    "PLUGIN",
    "REWARD_NAME",
    "REWARD_PATH",
    "SETTINGS_FILE",
    "VERL_DIR",
    "FILE_LOGGER_ENV",
    "MERGED_DIR",
    "METRICS_FILE",
    "Cluster",
    "RunFiles",
    "adapter_settings",
    "advantage_settings",
    "check_mappable",
    "data_rows",
    "default_max_prompt_length",
    "hydra_config",
    "loss_settings",
    "microbatch_settings",
    "minibatch_rows_per_gpu",
    "model_for_verl",
    "study_cluster",
    "study_run",
    "write_run",
]
