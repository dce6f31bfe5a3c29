"""The configuration of one training run (`clipbench train`, `clipbench sft`): typed sections,
read from YAML or a dict, validated before any compute with messages that name the field.

Each field is declared once with `clipbench.settings.setting`: its type, default (the tiny offline
profile), valid values and meaning. `from_dict` reads and checks a mapping by those declarations,
`validate` adds the rules that tie fields together and builds the method, and the study's schema
(`workflows/config/schema.yaml`) is generated from the same declarations (`clipbench.study`).
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipbench import methods, tracking
from clipbench.advantages import available_estimators
from clipbench.precision import DTYPES
from clipbench.settings import ConfigError, check, from_dict, setting

__all__ = [
    "AdvantageConfig",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "RolloutConfig",
    "TrainConfig",
    "apply_overrides",
    "check_device",
    "check_run",
    "exponent_numbers",
    "from_dict",
    "load_config",
    "load_yaml",
    "validate",
]

ENGINES = ("hf", "vllm")
#: The trainer: clipbench.trainer, TRL's (clipbench.integrations.trl), or verl's (a study's three jobs:
#: clipbench verl-config, verl's main_ppo, clipbench verl-finish; clipbench.integrations.verl_config).
BACKENDS = ("native", "trl", "verl")
PROMPT_STYLES = ("base", "chat")
DEVICE = re.compile(r"cpu|mps|cuda(?::\d+)?")  # what `device` may be (torch device strings)
# TrainConfig.build_method's methods, by config object (not in the object: its fields are its state).
_BUILT: dict[int, methods.Method] = {}


_EXPONENT_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def exponent_numbers(value: Any) -> Any:
    """`value` (a parsed YAML document) with every string like "1e-5" read as the number it is.

    PyYAML (and so Snakemake's config loading) follows YAML 1.1, where a float needs a dot:
    `lr: 1e-5` arrives as the string "1e-5" while `lr: 1.0e-5` is a number. Every config
    clipbench reads goes through here (`load_yaml`, the Snakefile), so both spellings work."""
    if isinstance(value, dict):
        return {k: exponent_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exponent_numbers(v) for v in value]
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        return float(value)
    return value


def load_yaml(text: str) -> Any:
    """YAML as clipbench reads it: `yaml.safe_load`, then `exponent_numbers`."""
    return exponent_numbers(yaml.safe_load(text))


def _benchmarks() -> list[str]:
    from clipbench import benchmarks

    return benchmarks.available()


@dataclass(frozen=True)
class DataConfig:
    benchmark: str = setting(
        "synthetic",
        help="a name from clipbench.benchmarks.available(): the training prompts",
        choices=_benchmarks,
    )
    split: str = setting("train", help="the split of `benchmark` to train on")
    n: int | None = setting(2000, help="number of training problems (null: the whole split)", ge=1)
    data_dir: str | None = setting(
        None, help="local copies (e.g. ../shared/data); null: the hub or the generator"
    )
    prompt_style: str = setting(
        "base",
        help='"base": the benchmark\'s template; "chat": the tokenizer\'s chat template',
        choices=PROMPT_STYLES,
    )
    seed: int = setting(
        0,
        help="the synthetic generator's seed (not the run seed: every method sees the same problems)",
        ge=0,
    )


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = setting(
        "hf",
        help='"hf" (KV-cached sampling on the transformers model, CPU or GPU) or "vllm"',
        choices=ENGINES,
    )
    prompts_per_step: int = setting(8, help="P, prompts per RL step", ge=1)
    samples_per_prompt: int = setting(
        8, help="G, the group size of the advantage estimator", ge=2, why="group-relative advantages"
    )
    temperature: float = setting(
        1.0, help="sampling temperature; the policy's log-probs use the same one", gt=0
    )
    top_p: float = setting(1.0, help="nucleus sampling: the smallest top set of this probability", gt=0, le=1)
    max_new_tokens: int = setting(256, help="the longest response, in tokens", ge=1)
    gpu_memory_utilization: float = setting(
        0.3, help="vllm only: the share of GPU memory the engine may take", gt=0, le=1
    )
    vllm_weight_sync: str = setting(
        "memory",
        help="vllm only: how the policy's weights reach vLLM after each step: 'memory' (the state dict "
        "through vLLM's in-place reload, no file; in-process engines get the tensors themselves) or "
        "'disk' (saved to a scratch directory, then reloaded)",
        choices=("memory", "disk"),
    )
    vllm_sleep_level: int | None = setting(
        None,
        help="vllm on CUDA only: put vLLM to sleep during each update so its KV cache (level 1: and "
        "weights, offloaded to CPU; level 2: discarded, the sync reloads them) free GPU memory; null: "
        "it keeps its memory",
        ge=1,
        le=2,
    )


@dataclass(frozen=True)
class AdvantageConfig:
    estimator: str = setting(
        "grpo", help="the advantage estimator (clipbench.advantages)", choices=available_estimators
    )
    # grpo divides by std + eps: a negative eps can make that 0 (inf advantages) or flip signs.
    eps: float = setting(1e-6, help="added to the group std (grpo)", ge=0)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = setting(1e-4, help="AdamW learning rate", gt=0)
    weight_decay: float = setting(0.0, help="AdamW weight decay", ge=0)
    beta1: float = setting(0.9, help="AdamW beta1", ge=0, lt=1)
    beta2: float = setting(0.999, help="AdamW beta2", ge=0, lt=1)
    grad_clip: float = setting(1.0, help="max global grad norm (0 disables clipping)", ge=0)
    # minibatches * epochs must be > 1 (checked by `check_run`), or every update runs at ratio
    # exactly 1 (the policy has not moved since the rollout) and no rule clips.
    minibatches: int = setting(
        4,
        help="the rollout batch (P * G sequences) is split into this many parts, one optimizer step "
        "each; must divide P * G, and minibatches * epochs must be > 1",
        ge=1,
    )
    epochs: int = setting(1, help="sweeps over the rollout batch per step", ge=1)
    logprob_chunk_tokens: int | None = setting(
        None,
        help="compute log-probs over this many response tokens at a time, the LM head recomputed in "
        "backward, so no (tokens x vocabulary) tensor is kept (clipbench.logprobs; 256 suits a "
        "150k vocabulary); null: all at once, today's bits",
        ge=1,
    )
    max_tokens_per_microbatch: int | None = setting(
        None,
        help="split each minibatch into micro-batches of at most this many packed tokens (prompt + "
        "response), gradients accumulated, one optimizer step per minibatch; every rule divides by "
        "the minibatch's totals, so the update is that of the unsplit minibatch (a sequence longer than "
        "the budget forms a micro-batch alone); also bounds the old and reference log-prob passes; "
        "null: each minibatch in one forward",
        ge=1,
    )
    gradient_checkpointing: bool = setting(
        False,
        help="recompute each decoder layer's activations in backward instead of keeping them (less "
        "memory, one more forward per update); the packed forward is kept (clipbench.logprobs)",
    )


@dataclass(frozen=True)
class TrainConfig:
    model: str = setting("", help="base checkpoint: an HF model directory (or hub id)")
    method: str = setting(
        "fspo", help="a name from clipbench.methods.available_methods()", choices=methods.available_methods
    )
    method_params: dict[str, Any] = setting(
        default_factory=dict,
        help="hyperparameter overrides of `method` (checked by the method's own hparam declarations)",
    )
    seed: int = setting(0, help="sampling seeds derive from (seed, step) only", ge=0)
    steps: int = setting(20, help="RL steps (one rollout batch each)", ge=1)
    data: DataConfig = setting(default_factory=DataConfig, help="the training problems")
    rollout: RolloutConfig = setting(default_factory=RolloutConfig, help="sampling the responses")
    advantage: AdvantageConfig = setting(default_factory=AdvantageConfig, help="the advantage estimator")
    optim: OptimConfig = setting(default_factory=OptimConfig, help="the optimizer and the update schedule")
    kl_beta: float = setting(0.0, help="weight of the k3 KL to the base model (0: no reference model)", ge=0)
    checkpoint_every: int = setting(5, help="steps between checkpoints (the last step is always saved)", ge=1)
    keep_checkpoints: int = setting(2, help="checkpoints kept on disk (older ones are deleted)", ge=1)
    device: str = setting(
        "cpu",
        help='"cpu", "cuda", "cuda:N" or "mps"',
        pattern=DEVICE.pattern,
        means="cpu, cuda, cuda:N or mps",
    )
    dtype: str = setting(
        "float32",
        help="the precision of every policy forward (sampling, old, update and reference log-probs): "
        '"float32", or "bfloat16" autocast over float32 weights, gradients and optimizer state '
        "(clipbench.precision)",
        choices=DTYPES,
    )
    backend: str = setting(
        "native",
        help="the trainer: native (clipbench.trainer), trl (TRL's GRPOTrainer with the rule as its loss, "
        "clipbench.integrations.trl; pip install -e '.[trl]'; hf sampling only) or verl (a study "
        "only: verl 0.9.1's main_ppo with the rule as its policy loss, in its own env, workflows/envs/verl.yaml; "
        "vLLM sampling on GPUs, ranks from resources.train: nodes x gpu; clipbench.integrations.verl_config)",
        choices=BACKENDS,
    )
    processes: int = setting(
        1,
        help="training processes (data parallel, the minibatch split evenly over them; backend trl only; a study "
        "starts them by accelerate launch --num_processes N with its launch.accelerate_config)",
        ge=1,
    )
    report_to: list[str] = setting(
        default_factory=list,
        help="experiment trackers each step's metrics also go to, written locally: tensorboard (event files in "
        "the run directory), wandb (offline mode), trackio (its local database); each needs its package "
        "(clipbench.tracking). Not part of the run's identity: a run resumes with other trackers",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build_method(self) -> methods.Method:
        """The run's method, built once per config object (`methods.get_method` checks its
        hyperparameters by the rule's own `hparam` declarations)."""
        built = _BUILT.get(id(self))
        if built is None:
            built = methods.get_method(self.method, **self.method_params)
            _BUILT[id(self)] = built
            weakref.finalize(self, _BUILT.pop, id(self), None)  # forgotten with the config
        return built


def check_run(config: TrainConfig, *, schedule: bool = True) -> TrainConfig:
    """Every check of `validate` except building the method: each field's type and declared range
    (every number finite), then the rules that tie fields together. Returns the config unchanged.
    `schedule=False` leaves out the rules of the update schedule (optim.minibatches * epochs > 1,
    minibatches dividing the rollout batch), for a caller that runs its own updates (`clipbench
    probe`: K updates on half the batch).

    The study checks every run's config with this when the DAG is built (and each method's
    hyperparameters once, with `methods.get_method`)."""
    from clipbench.benchmarks import get_spec, local_file, synthetic

    if not config.model:
        raise ConfigError("model: required (an HF model directory or hub id)")
    check(config)
    d = config.data
    spec = get_spec(d.benchmark)
    if spec.generated:
        if d.n is not None and d.n > synthetic.MAX_N:
            raise ConfigError(f"data.n: a generated set gives at most {synthetic.MAX_N} problems, got {d.n}")
    if d.split not in spec.splits:
        raise ConfigError(
            f"data.split: {d.benchmark} has no split {d.split!r}; splits: {', '.join(spec.splits)}"
        )
    if d.data_dir is not None and not spec.generated:
        try:
            local_file(d.benchmark, d.split, d.data_dir)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"data.data_dir: {err}") from None
    r, o = config.rollout, config.optim
    if schedule and o.minibatches * o.epochs <= 1:
        raise ConfigError(
            "optim.minibatches * optim.epochs: must be > 1 (with one minibatch and one epoch every update runs "
            "at ratio 1, so no clipping rule ever acts)"
        )
    if r.vllm_sleep_level is not None and (r.engine != "vllm" or not config.device.startswith("cuda")):
        raise ConfigError(
            f"rollout.vllm_sleep_level: vLLM's sleep mode needs rollout.engine=vllm on a CUDA device "
            f"(engine {r.engine!r}, device {config.device!r})"
        )
    batch = r.prompts_per_step * r.samples_per_prompt
    if schedule and batch % o.minibatches:
        raise ConfigError(
            f"optim.minibatches: must divide the rollout batch prompts_per_step * samples_per_prompt = {batch}"
        )
    _check_backend(config)
    try:
        tracking.check_available(config.report_to)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return config


#: Native-trainer settings a verl run would silently ignore: refused away from their defaults under
#: backend verl (field -> why). `device` and `rollout.engine` are not among them: verl always trains
#: on its GPUs and samples with vLLM, whatever they say (clipbench.integrations.verl_config.NOT_MAPPED).
VERL_REFUSED = {
    "processes": "verl's ranks are resources.train.nodes x resources.train.gpu",
    "report_to": "verl logs through its own trainer.logger (clipbench.integrations.verl_config)",
    "optim.logprob_chunk_tokens": "verl computes log-probs its own way",
    "rollout.vllm_weight_sync": "verl syncs the weights to vLLM itself",
    "rollout.vllm_sleep_level": "verl frees vLLM's memory during updates itself (rollout.free_cache_engine)",
}


def _check_verl(config: TrainConfig) -> None:
    """The native-only settings of `VERL_REFUSED` set under backend verl, named; what verl itself
    cannot run is `clipbench.integrations.verl_config.check_mappable`'s (it needs the cluster)."""
    defaults = TrainConfig()
    for name, why in VERL_REFUSED.items():
        value, default = config, defaults
        for part in name.split("."):
            value, default = getattr(value, part), getattr(default, part)
        if value != default:
            raise ConfigError(
                f"{name}: {value!r} is not supported by backend verl ({why}); leave it at {default!r}"
            )


def _check_backend(config: TrainConfig) -> None:
    """What the TRL backend does not take (clipbench.integrations.trl), what backend verl would ignore
    (`_check_verl`), and processes > 1 without TRL."""
    if config.backend == "verl":
        _check_verl(config)
        return
    if config.backend == "native":
        if config.processes != 1:
            raise ConfigError(
                f"processes: {config.processes}, but the native trainer runs one process (backend: trl)"
            )
        return
    r, o = config.rollout, config.optim
    unsupported = {
        "report_to": (config.report_to, []),  # TRL's own report_to is set to "none"
        "rollout.engine": (r.engine, "hf"),
        "optim.max_tokens_per_microbatch": (o.max_tokens_per_microbatch, None),
        "optim.logprob_chunk_tokens": (o.logprob_chunk_tokens, None),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ConfigError(f"{name}: {value!r} is not supported by backend trl (only {supported!r})")
    if config.keep_checkpoints < 2:
        raise ConfigError(
            f"keep_checkpoints: {config.keep_checkpoints}; backend trl keeps at least 2 (transformers deletes "
            "the older checkpoint before clipbench's manifest marks the new one complete)"
        )
    batch = r.prompts_per_step * r.samples_per_prompt
    if batch % (o.minibatches * config.processes):
        raise ConfigError(
            f"processes: the rollout batch prompts_per_step * samples_per_prompt = {batch} must split into "
            f"optim.minibatches x processes = {o.minibatches} x {config.processes} equal parts (backend trl)"
        )


def validate(config: TrainConfig, *, schedule: bool = True) -> TrainConfig:
    """Every check that can fail before compute (`check_run`, with or without the update
    schedule's rules), and the method built from its hyperparameters (once: `build_method` keeps
    it); returns the config unchanged."""
    check_run(config, schedule=schedule)
    try:
        config.build_method()
    except ValueError as err:
        raise ConfigError(f"method_params: {err}") from None
    return config


SECTIONS = ("data", "rollout", "advantage", "optim", "method_params")  # TrainConfig's mappings


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data` with each dotted key of `overrides` set (e.g. "optim.lr"); a key that goes through
    a field which is not a section (e.g. "model.x") raises ConfigError naming it."""
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        if not all(parents) or not leaf:
            raise ConfigError(f"{key}: not a field name (expected e.g. optim.lr)")
        for depth, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"{key}: {where} is a value ({node[part]!r}), not a section; "
                    f"sections: {', '.join(SECTIONS)}"
                )
            else:
                node[part] = dict(node[part])  # never edit the caller's mapping
            node = node[part]
        node[leaf] = value
    return data


def load_config(source: str | Path | dict, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A validated TrainConfig from a YAML file or a dict, with dotted `overrides`
    (e.g. {"optim.lr": 1e-3})."""
    if isinstance(source, dict):
        data = dict(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            why = "is a directory" if path.is_dir() else "no such file"
            raise ConfigError(f"config file {path}: {why}; give a YAML file of TrainConfig fields")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            reason = " ".join(str(err).split())
            raise ConfigError(f"config file {path}: not valid YAML ({reason})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path}: cannot read it ({err})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {path}: expected a mapping of TrainConfig fields, got {type(data).__name__} {data!r:.80}"
            )
    else:
        raise ConfigError(
            f"config: expected a mapping of TrainConfig fields, got {type(source).__name__} {source!r:.80}"
        )
    data = apply_overrides(data, overrides or {})
    return validate(from_dict(TrainConfig, data))


def check_device(device: str) -> None:
    """ConfigError unless `device` (already a valid name) exists on this machine. Here, not in the
    trainer, so that checking a config (the probe's, a study's at DAG construction) does not import
    transformers."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"device: {device!r}, but CUDA is not available here ({why}); use device=cpu")
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device: {device!r}, but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps', but MPS is not available here; use device=cpu")
