"""Config validation of every numeric field, the device and the overrides: each bad value is
refused by `load_config` with a message naming the field (issue 11, "Hostile and careless input").
No model is loaded here; test_run_safety.py checks that the command writes nothing for them."""

import math

import pytest

from clipbench.config import ConfigError, load_config
from clipbench.sft import SFTConfig

INF, NAN = math.inf, math.nan

# (section, field, bad value, the message). Every numeric field is finite and in range; values
# that the optimiser or sampler would take without complaint are the point (temperature inf ran
# to the end with reward 0 and clip 0; advantage.eps -1 ran to the end).
BAD = [
    ("optim", "lr", INF, "optim.lr: must be finite and > 0, got inf"),
    ("optim", "lr", 0.0, "optim.lr: must be finite and > 0, got 0.0"),
    ("optim", "lr", NAN, "optim.lr: must be finite and > 0, got nan"),
    ("optim", "beta1", 5, r"optim.beta1: must be finite and in \[0, 1\), got 5.0"),
    ("optim", "beta1", 1.0, r"optim.beta1: must be finite and in \[0, 1\), got 1.0"),
    ("optim", "beta2", -0.1, r"optim.beta2: must be finite and in \[0, 1\), got -0.1"),
    ("optim", "weight_decay", -1, "optim.weight_decay: must be finite and >= 0, got -1.0"),
    ("optim", "weight_decay", INF, "optim.weight_decay: must be finite and >= 0, got inf"),
    ("optim", "grad_clip", INF, "optim.grad_clip: must be finite and >= 0, got inf"),
    ("optim", "grad_clip", -1, "optim.grad_clip: must be finite and >= 0, got -1.0"),
    ("rollout", "temperature", INF, "rollout.temperature: must be finite and > 0, got inf"),
    ("rollout", "temperature", NAN, "rollout.temperature: must be finite and > 0, got nan"),
    ("rollout", "top_p", NAN, r"rollout.top_p: must be finite and in \(0, 1\], got nan"),
    (
        "rollout",
        "gpu_memory_utilization",
        0,
        r"rollout.gpu_memory_utilization: must be finite and in \(0, 1\]",
    ),
    (
        "rollout",
        "gpu_memory_utilization",
        1.5,
        r"rollout.gpu_memory_utilization: must be finite and in \(0, 1\]",
    ),
    ("rollout", "max_new_tokens", 0, "rollout.max_new_tokens: must be >= 1, got 0"),
    ("advantage", "eps", -1, "advantage.eps: must be finite and >= 0, got -1.0"),
    ("advantage", "eps", NAN, "advantage.eps: must be finite and >= 0, got nan"),
    ("advantage", "eps", INF, "advantage.eps: must be finite and >= 0, got inf"),
    ("data", "seed", -1, "data.seed: must be >= 0, got -1"),
    ("data", "n", 0, "data.n: must be >= 1 or null, got 0"),
    ("data", "split", "tset", "data.split: synthetic has no split 'tset'; splits: test, test_ood, train"),
    (None, "kl_beta", INF, "kl_beta: must be finite and >= 0, got inf"),
    (None, "kl_beta", -0.5, "kl_beta: must be finite and >= 0, got -0.5"),
    (None, "device", "tpu", "device: must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    (None, "device", "cuda:x", "device: must be cpu, cuda, cuda:N or mps, got 'cuda:x'"),
    (None, "device", "CPU", "device: must be cpu, cuda, cuda:N or mps, got 'CPU'"),
    (None, "keep_checkpoints", 0, "keep_checkpoints: must be >= 1, got 0"),
    (None, "dtype", "float16", "dtype: unknown dtype 'float16'; available: float32, bfloat16"),
    (
        "optim",
        "gradient_checkpointing",
        "yes",
        "optim.gradient_checkpointing: expected true or false, got 'yes'",
    ),
    (None, "checkpoint_every", 0, "checkpoint_every: must be >= 1, got 0"),
    (None, "method_params", {"c_low": INF}, "method_params: fspo.c_low=inf: must be finite"),
    # An integer beyond float range:
    ("optim", "lr", 10**400, "optim.lr: must be finite, got an integer of 401 digits"),
]


def config_with(section, name, value):
    data = {"model": "some/dir"}
    if section is None:
        data[name] = value
    else:
        data[section] = {name: value}
    return data


@pytest.mark.parametrize(
    ("section", "name", "value", "message"), BAD, ids=[f"{s}.{n}={v!r}"[:40] for s, n, v, _ in BAD]
)
def test_each_bad_value_is_refused_naming_the_field(section, name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_with(section, name, value))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_device_names_pass_validation(device):
    assert load_config({"model": "m", "device": device}).device == device


def test_edges_that_are_valid():
    config = load_config(
        {
            "model": "m",
            "optim": {"beta1": 0.0, "beta2": 0.0, "weight_decay": 0.0, "grad_clip": 0.0},
            "advantage": {"eps": 0.0},
            "rollout": {"top_p": 1.0, "gpu_memory_utilization": 1.0},
            "kl_beta": 0.0,
        }
    )
    assert config.optim.beta1 == 0.0 and config.advantage.eps == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.x": 1}, r"model.x: model is a value \('some/dir'\), not a section; sections: data, rollout"),
        ({"optim.lr.x": 1}, r"optim.lr.x: optim.lr is a value \(0.0001\), not a section"),
        ({"optim..lr": 1}, r"optim..lr: not a field name"),
    ],
)
def test_an_override_through_a_value_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"model": "some/dir", "optim": {"lr": 1e-4}}, overrides=overrides)


def test_overrides_do_not_edit_the_callers_mapping():
    data = {"model": "m", "optim": {"lr": 1e-4}}
    assert load_config(data, overrides={"optim.lr": 1e-3, "rollout.top_p": 0.5}).optim.lr == 1e-3
    assert data == {"model": "m", "optim": {"lr": 1e-4}}
    # A section given as null in YAML takes overrides like an absent one.
    assert load_config({"model": "m", "optim": None}, overrides={"optim.lr": 1e-3}).optim.lr == 1e-3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ([1], "config: expected a mapping of TrainConfig fields, got list"),
        ("missing.yaml", "config file missing.yaml: no such file"),
    ],
)
def test_a_source_that_is_not_a_mapping_or_file(source, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(source)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n- 2\n", "expected a mapping of TrainConfig fields, got list"),
        ("model: [\n", "not valid YAML"),
        (b"\xff\xfe\x00", "cannot read it"),
    ],
)
def test_a_config_file_that_is_not_a_mapping(text, message, tmp_path):
    path = tmp_path / "run.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=f"config file {path}: {message}"):
        load_config(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "hidden_size",
            0,
            r"sft.hidden_size: must be >= 8 and a multiple of 8 \(4 attention heads .*\), got 0",
        ),
        ("hidden_size", 12, r"sft.hidden_size: must be >= 8 and a multiple of 8 .*, got 12"),
        ("num_layers", 0, "sft.num_layers: must be >= 1, got 0"),
        ("intermediate_size", 0, "sft.intermediate_size: must be >= 1, got 0"),
        ("lr", INF, "sft.lr: must be finite and > 0, got inf"),
        ("target_accuracy", NAN, r"sft.target_accuracy: must be finite and in \(0, 1\], got nan"),
        ("seed", -1, "sft.seed: must be >= 0, got -1"),
        ("n_problems", 10**9, r"sft.n_problems \+ sft.dev_problems = 1000000128: .* at most 200000"),
    ],
)
def test_sft_config_checks_every_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SFTConfig(**{field: value})


def test_a_generated_training_set_is_capped_before_any_work():
    with pytest.raises(
        ConfigError, match="data.n: a generated set gives at most 200000 problems, got 1000000000"
    ):
        load_config({"model": "m", "data": {"benchmark": "synthetic", "n": 10**9}})
    assert load_config({"model": "m", "data": {"benchmark": "synthetic", "n": 200_000}}).data.n == 200_000


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "deepspeed"}, "backend: unknown backend 'deepspeed'; available: native, trl, verl"),
        (
            {"backend": "verl", "processes": 2},
            r"processes: 2 is not supported by backend verl \(verl's ranks are resources.train.nodes x "
            r"resources.train.gpu\); leave it at 1",
        ),
        (
            {"backend": "verl", "rollout": {"vllm_weight_sync": "disk"}},
            r"rollout.vllm_weight_sync: 'disk' is not supported by backend verl .*; leave it at 'memory'",
        ),
        ({"processes": 0}, "processes: must be >= 1, got 0"),
        ({"processes": 2}, r"processes: 2, but the native trainer runs one process \(backend: trl\)"),
        (
            {"backend": "trl", "rollout": {"engine": "vllm"}},
            r"rollout.engine: 'vllm' is not supported by backend trl \(only 'hf'\)",
        ),
        (
            {"backend": "trl", "optim": {"max_tokens_per_microbatch": 512}},
            r"optim.max_tokens_per_microbatch: 512 is not supported by backend trl \(only None\)",
        ),
        (
            {"backend": "trl", "report_to": ["tensorboard"]},
            r"report_to: \['tensorboard'\] is not supported by backend trl \(only \[\]\)",
        ),
        (
            {"backend": "trl", "keep_checkpoints": 1},
            r"keep_checkpoints: 1; backend trl keeps at least 2 \(transformers deletes the older checkpoint",
        ),
        (
            {"backend": "trl", "processes": 3},  # the default batch: 8 prompts x 8 samples, 4 minibatches
            r"processes: the rollout batch prompts_per_step \* samples_per_prompt = 64 must split into "
            r"optim.minibatches x processes = 4 x 3 equal parts \(backend trl\)",
        ),
    ],
)
def test_the_backend_and_its_processes_are_checked(fields, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"model": "m", **fields})
    assert load_config({"model": "m", "backend": "trl", "processes": 2}).processes == 2
