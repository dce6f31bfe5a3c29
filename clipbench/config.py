"""The configuration of one training run (`clipbench train`, `clipbench sft`): typed sections,
read from YAML or a dict, validated before any compute with messages that name the field.

Each field's comment says what it means; the defaults are the tiny offline profile.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import methods
from clipbench.advantages import available_estimators
from clipbench.errors import UserError

ENGINES = ("hf", "vllm")
PROMPT_STYLES = ("base", "chat")
DEVICE = re.compile(r"cpu|mps|cuda(?::\d+)?")  # what `device` may be (torch device strings)


class ConfigError(UserError, ValueError):
    """An invalid configuration; the message names the field."""


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


@dataclass(frozen=True)
class DataConfig:
    benchmark: str = "synthetic"  # a name from benchmarks.available(): the training prompts
    split: str = "train"
    n: int | None = 2000  # number of training problems (None: the whole split)
    data_dir: str | None = None  # local copies (e.g. ../shared/data); None: the hub or the generator
    prompt_style: str = "base"  # "base": the benchmark's template; "chat": the tokenizer's chat template
    seed: int = 0  # the synthetic generator's seed (not the run seed: every method sees the same problems)


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"  # "hf" (KV-cached sampling on the transformers model, CPU or GPU) or "vllm"
    prompts_per_step: int = 8  # P
    samples_per_prompt: int = 8  # G, the group size of the advantage estimator
    temperature: float = 1.0  # sampling temperature; the policy's log-probs use the same one
    top_p: float = 1.0
    max_new_tokens: int = 256
    gpu_memory_utilization: float = 0.3  # vllm only


@dataclass(frozen=True)
class AdvantageConfig:
    estimator: str = "grpo"  # clipbench.advantages: grpo, drgrpo, rloo
    eps: float = 1e-6  # added to the group std (grpo)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # max global grad norm (0 disables clipping)
    # The rollout batch (P * G sequences) is split into `minibatches` parts and swept `epochs`
    # times, one optimizer step per part: minibatches * epochs must be > 1, or every update
    # runs at ratio exactly 1 (the policy has not moved since the rollout) and no rule clips.
    minibatches: int = 4
    epochs: int = 1


@dataclass(frozen=True)
class TrainConfig:
    model: str = ""  # base checkpoint: an HF model directory (or hub id)
    method: str = "fspo"  # a name from methods.available_methods()
    method_params: dict[str, Any] = field(default_factory=dict)  # hyperparameter overrides
    seed: int = 0  # sampling seeds derive from (seed, step) only
    steps: int = 20  # RL steps (one rollout batch each)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    kl_beta: float = 0.0  # weight of the k3 KL to the base model (0: no reference model)
    checkpoint_every: int = 5  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "mps"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build_method(self) -> methods.Method:
        return methods.get_method(self.method, **self.method_params)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _coerce(path: str, kind: Any, value: Any) -> Any:
    """Check `value` against the annotation `kind`; sections recurse through `from_dict`."""
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, path)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (kind,) = [o for o in options if o is not type(None)]
        origin = typing.get_origin(kind)
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError(f"{path}: must be finite, got an integer of {len(str(value))} digits") from None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(kind)}")  # pragma: no cover


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown field; valid: {', '.join(names)}"
        )
    values = {k: _coerce(f"{prefix + '.' if prefix else ''}{k}", hints[k], v) for k, v in data.items()}
    return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _number(
    path: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` must be finite and within the given bounds (closed unless `*_open`); the message
    names `path`, the rule and the value, e.g. "rollout.temperature: must be finite and > 0, got inf"."""
    ok = math.isfinite(value)
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if ok:
        return
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        rule = f"{'<' if high_open else '<='} {high:g}"
    else:
        raise ConfigError(f"{path}: must be finite, got {value}")
    raise ConfigError(f"{path}: must be finite and {rule}, got {value}")


def validate(config: TrainConfig) -> TrainConfig:
    """Every check that can fail before compute; returns the config unchanged.

    Every numeric field is checked for finiteness and range (an infinite temperature or learning
    rate would otherwise run to the end on garbage), and the device must be one torch names."""
    import benchmarks
    from benchmarks import synthetic

    _require(bool(config.model), "model: required (an HF model directory or hub id)")
    if config.method not in methods.available_methods():
        raise ConfigError(
            f"method: unknown method {config.method!r}; available: {', '.join(methods.available_methods())}"
        )
    try:
        method = config.build_method()
    except ValueError as err:
        raise ConfigError(f"method_params: {err}") from None
    for name, value in method.hparams().items():
        if isinstance(value, float):
            _number(f"method_params.{name}", value)
    _require(config.steps >= 1, f"steps: must be >= 1, got {config.steps}")
    _require(config.seed >= 0, f"seed: must be >= 0, got {config.seed}")
    _require(
        bool(DEVICE.fullmatch(config.device)),
        f"device: must be cpu, cuda, cuda:N or mps, got {config.device!r}",
    )
    d = config.data
    if d.benchmark not in benchmarks.available():
        raise ConfigError(
            f"data.benchmark: unknown benchmark {d.benchmark!r}; available: {', '.join(benchmarks.available())}"
        )
    _require(d.prompt_style in PROMPT_STYLES, f"data.prompt_style: must be one of {PROMPT_STYLES}")
    _require(d.n is None or d.n >= 1, f"data.n: must be >= 1 or null, got {d.n}")
    if benchmarks.get_spec(d.benchmark).generated:
        _require(
            d.n is None or d.n <= synthetic.MAX_N,
            f"data.n: a generated set gives at most {synthetic.MAX_N} problems, got {d.n}",
        )
    _require(d.seed >= 0, f"data.seed: must be >= 0, got {d.seed}")
    splits = benchmarks.get_spec(d.benchmark).splits
    _require(
        d.split in splits, f"data.split: {d.benchmark} has no split {d.split!r}; splits: {', '.join(splits)}"
    )
    r = config.rollout
    _require(
        r.engine in ENGINES, f"rollout.engine: unknown engine {r.engine!r}; available: {', '.join(ENGINES)}"
    )
    _require(r.prompts_per_step >= 1, f"rollout.prompts_per_step: must be >= 1, got {r.prompts_per_step}")
    _require(
        r.samples_per_prompt >= 2,
        f"rollout.samples_per_prompt: must be >= 2 (group-relative advantages), got {r.samples_per_prompt}",
    )
    _number("rollout.temperature", r.temperature, 0, low_open=True)
    _number("rollout.top_p", r.top_p, 0, 1, low_open=True)
    _require(r.max_new_tokens >= 1, f"rollout.max_new_tokens: must be >= 1, got {r.max_new_tokens}")
    _number("rollout.gpu_memory_utilization", r.gpu_memory_utilization, 0, 1, low_open=True)
    if config.advantage.estimator not in available_estimators():
        raise ConfigError(
            f"advantage.estimator: unknown estimator {config.advantage.estimator!r}; "
            f"available: {', '.join(available_estimators())}"
        )
    # grpo divides by std + eps: a negative eps can make that 0 (inf advantages) or flip signs.
    _number("advantage.eps", config.advantage.eps, 0)
    o = config.optim
    _number("optim.lr", o.lr, 0, low_open=True)
    _number("optim.weight_decay", o.weight_decay, 0)
    _number("optim.beta1", o.beta1, 0, 1, high_open=True)
    _number("optim.beta2", o.beta2, 0, 1, high_open=True)
    _number("optim.grad_clip", o.grad_clip, 0)
    _require(o.minibatches >= 1 and o.epochs >= 1, "optim.minibatches and optim.epochs: must be >= 1")
    _require(
        o.minibatches * o.epochs > 1,
        "optim.minibatches * optim.epochs: must be > 1 (with one minibatch and one epoch every update runs at "
        "ratio 1, so no clipping rule ever acts)",
    )
    batch = r.prompts_per_step * r.samples_per_prompt
    _require(
        batch % o.minibatches == 0,
        f"optim.minibatches: must divide the rollout batch prompts_per_step * samples_per_prompt = {batch}",
    )
    _number("kl_beta", config.kl_beta, 0)
    _require(config.checkpoint_every >= 1, f"checkpoint_every: must be >= 1, got {config.checkpoint_every}")
    _require(config.keep_checkpoints >= 1, f"keep_checkpoints: must be >= 1, got {config.keep_checkpoints}")
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
