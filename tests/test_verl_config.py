"""`clipbench verl-config`, verl's reward function and the verl adapter's pure parts, without verl (issue 15).

The adapter's loss inside verl is tested in verl's venv (tests/test_verl_adapter.py); here, in the
project's venv:

* the config, data and settings `clipbench verl-config` writes for the default study: the mapped
  fields against values worked out by hand from workflows/config/default.yaml (P = 4 prompts, G = 8
  samples, M = 4 minibatches: verl's ppo_mini_batch_size P / M = 1 prompt, each GPU's micro-batch
  P G / M = 8 sequences; 12 steps of 4 prompts = 48 rows, in the native trainer's order);
* each rule's loss_agg_mode, and the refusals (a run outside the study's grid, what verl cannot do);
* that every registered rule's loss divides by the total its declared aggregation names (the
  adapter maps a rule without an `aggregation` hyperparameter to verl's seq-mean-token-mean);
* `compute_score` on right, wrong and pathological answers;
* the adapter's advantage check, mode check and settings file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from clipbench import benchmarks, cli, methods
from clipbench.benchmarks.prompts import render
from clipbench.config import load_yaml
from clipbench.integrations import verl as adapter
from clipbench.integrations import verl_config
from clipbench.integrations.verl_reward import compute_score
from clipbench.trainer import prompt_indices

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "workflows" / "config" / "default.yaml"


def run_cli(*args: str) -> int:
    return cli.main(["verl-config", *map(str, args)])


def study_with(tmp_path: Path, **train) -> Path:
    """The default study with some train fields replaced (dotted: optim.minibatches=8)."""
    study = load_yaml(DEFAULT.read_text())
    for key, value in train.items():
        node = study["train"]
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def default_fspo(tmp_path_factory):
    """`clipbench verl-config workflows/config/default.yaml fspo 0` run once, in a fresh folder."""
    where = tmp_path_factory.mktemp("study")
    cwd = Path.cwd()
    try:
        os.chdir(where)
        assert run_cli(DEFAULT, "fspo", 0) == 0
    finally:
        os.chdir(cwd)
    folder = where / "results" / "runs" / "fspo" / "seed0" / "verl"
    return where, folder


def test_verl_config_of_the_default_study_maps_the_run(default_fspo):
    where, folder = default_fspo
    text = (folder / "config.yaml").read_text()
    assert text.startswith("# verl 0.9.1 config of clipbench run fspo-seed0")
    assert "#   device: verl trains on its GPUs" in text
    config = yaml.safe_load(text)
    assert config["defaults"] == ["ppo_trainer", "_self_"]
    assert config["hydra"] == {"searchpath": ["pkg://verl.trainer.config"]}
    data, ref = config["data"], config["actor_rollout_ref"]
    actor, rollout, model = ref["actor"], ref["rollout"], ref["model"]
    # by hand from default.yaml: P 4, G 8, M 4, E 1, 12 steps, lr 1e-4, 128 new tokens
    assert (data["train_batch_size"], rollout["n"], actor["ppo_mini_batch_size"], actor["ppo_epochs"]) == (
        4,
        8,
        1,
        1,
    )
    assert actor["ppo_micro_batch_size_per_gpu"] == rollout["log_prob_micro_batch_size_per_gpu"] == 8
    assert actor["use_dynamic_bsz"] is False and actor["shuffle"] is False
    assert actor["policy_loss"] == {"loss_mode": "clipbench_fspo"}
    assert (actor["loss_agg_mode"], actor["loss_scale_factor"]) == ("seq-mean-token-mean", None)
    assert actor["optim"] == {
        "lr": 1e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "clip_grad": 1.0,
        "lr_scheduler_type": "constant",
        "lr_warmup_steps": 0,
    }
    assert (actor["use_kl_loss"], actor["entropy_coeff"]) == (False, 0)
    assert actor["fsdp_config"] == {
        "mixed_precision": {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    }
    assert (
        rollout["name"],
        rollout["dtype"],
        rollout["temperature"],
        rollout["top_p"],
        rollout["top_k"],
    ) == (
        "vllm",
        "float32",
        1.0,
        1.0,
        -1,
    )
    assert (data["seed"], rollout["seed"], actor["data_loader_seed"]) == (0, 0, 0)
    assert model == {
        "path": str(where / "results" / "base" / "model"),
        "external_lib": "clipbench.integrations.verl_plugin",
        "enable_gradient_checkpointing": False,
        "custom_chat_template": "{{ messages[0]['content'] }}",
    }
    assert config["algorithm"] == {
        "adv_estimator": "grpo",
        "norm_adv_by_std_in_grpo": True,
        "use_kl_in_reward": False,
    }
    assert config["reward"] == {
        "custom_reward_function": {
            "path": "pkg://clipbench.integrations.verl_reward",
            "name": "compute_score",
        }
    }
    trainer = config["trainer"]
    assert (trainer["total_training_steps"], trainer["total_epochs"], trainer["save_freq"]) == (12, 1, 4)
    assert (trainer["nnodes"], trainer["n_gpus_per_node"], trainer["resume_mode"]) == (1, 1, "disable")
    assert (trainer["test_freq"], trainer["val_before_train"], trainer["balance_batch"]) == (-1, False, False)
    assert trainer["experiment_name"] == "fspo-seed0"
    assert trainer["default_local_dir"] == str(folder / "checkpoints")
    assert data["max_response_length"] == 128 and data["truncation"] == "error" and data["shuffle"] is False
    env = config["ray_kwargs"]["ray_init"]["runtime_env"]["env_vars"]
    assert env == {
        "CLIPBENCH_VERL_RUN": str(folder / "clipbench.json"),
        "VERL_FILE_LOGGER_PATH": str(
            folder / "metrics.jsonl"
        ),  # verl's FileLogger: clipbench verl-finish reads it
        "PYTHONPATH": str(ROOT),
    }
    assert trainer["logger"] == ["console", "file"]

    settings = json.loads((folder / "clipbench.json").read_text())
    assert settings == {
        "method": "fspo",
        "params": {},
        "run_dir": str(where / "results" / "runs" / "fspo" / "seed0"),
        "rollout_batch": 32,
        "minibatches": 4,
        "epochs": 1,
    }
    assert adapter.load_settings(folder / "clipbench.json").method == "fspo"


def test_the_data_are_the_native_trainers_prompts_in_its_order(default_fspo):
    _, folder = default_fspo
    train = pd.read_parquet(folder / "train.parquet")
    assert len(train) == 12 * 4
    assert list(train.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    problems = benchmarks.load("synthetic", split="train", n=2000, seed=0)
    spec = benchmarks.get_spec("synthetic")
    for k, row in train.iterrows():
        step, slot = divmod(k, 4)
        index = prompt_indices(0, step, 4, 2000)[slot]
        assert row["extra_info"] == {"split": "train", "index": index, "step": step}
        assert list(row["prompt"]) == [
            {"role": "user", "content": render(problems[index], spec.prompt_template)}
        ]
        assert row["reward_model"] == {"style": "rule", "ground_truth": problems[index].answer}
        assert (row["data_source"], row["ability"]) == ("clipbench/synthetic", "math")
    val = pd.read_parquet(folder / "val.parquet")
    assert list(val["extra_info"]) == list(train["extra_info"][:4]) and len(val) == 4
    longest = max(len(p[0]["content"].encode()) for p in train["prompt"])
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["data"]["max_prompt_length"] == longest


def test_each_rule_gets_the_loss_agg_mode_it_computes(tmp_path):
    study = load_yaml(DEFAULT.read_text())
    modes = {}
    for method in methods.available_methods():
        cfg, _ = verl_config.study_run(study, method, 1)
        settings = verl_config.loss_settings(cfg)
        modes[method] = settings["loss_agg_mode"]
        assert settings["policy_loss"] == {"loss_mode": f"clipbench_{method}"}
        assert verl_config.adapter_settings(cfg, tmp_path).params == study.get("method_params", {}).get(
            method, {}
        )
    assert modes == {
        "cispo": "token-mean",
        "dapo": "token-mean",
        "fspo": "seq-mean-token-mean",
        "gmpo": "seq-mean-token-mean",
        "grpo": "seq-mean-token-mean",
        "gspo": "seq-mean-token-mean",
        "powerband": "seq-mean-token-mean",
        "ppo": "token-mean",
        "sapo": "seq-mean-token-mean",
        "seq_ppo": "seq-mean-token-mean",
    }


def test_dynamic_micro_batches_kl_and_sum_norm_map(tmp_path):
    study = load_yaml(DEFAULT.read_text())
    study["train"]["optim"]["max_tokens_per_microbatch"] = 4096
    study["train"]["kl_beta"] = 0.05
    study["train"]["dtype"] = "bfloat16"
    study["method_params"]["ppo"] = {"aggregation": "seq_mean_token_sum_norm", "norm_tokens": 128}
    cfg, _ = verl_config.study_run(study, "ppo", 0)
    files = verl_config.RunFiles(tmp_path / "config.yaml")
    config = verl_config.hydra_config(
        cfg, files, model="m", cluster=verl_config.Cluster(2, 4), max_prompt_length=9, repo_root="/r"
    )
    actor = config["actor_rollout_ref"]["actor"]
    assert (actor["use_dynamic_bsz"], actor["ppo_max_token_len_per_gpu"]) == (True, 4096)
    assert "ppo_micro_batch_size_per_gpu" not in actor
    assert (actor["loss_agg_mode"], actor["loss_scale_factor"]) == ("seq-mean-token-sum-norm", 128)
    assert (actor["use_kl_loss"], actor["kl_loss_coef"], actor["kl_loss_type"]) == (True, 0.05, "low_var_kl")
    assert config["actor_rollout_ref"]["ref"] == {"fsdp_config": {}}
    assert actor["fsdp_config"] == {} and config["actor_rollout_ref"]["rollout"]["dtype"] == "bfloat16"
    assert (config["trainer"]["nnodes"], config["trainer"]["n_gpus_per_node"]) == (2, 4)


REFUSED = [
    (
        {"optim__minibatches": 8},
        ["fspo", "0"],
        "optim.minibatches: 8 must divide rollout.prompts_per_step = 4",
    ),
    ({"optim__grad_clip": 0.0}, ["fspo", "0"], r"optim.grad_clip: 0 \(no clipping\) has no verl equivalent"),
    ({"advantage__eps": 1e-5}, ["fspo", "0"], r"advantage.eps: 1e-05; verl's grpo divides by std \+ 1e-06"),
    ({}, ["fspo", "0", "--gpus-per-node", "3"], "a minibatch of 8 sequences does not split over 3 GPUs"),
    ({}, ["powerband", "0", "--gpus-per-node", "2"], "powerband .* reads a statistic of the whole minibatch"),
    ({"backend": "trl"}, ["fspo", "0"], "backend: 'trl'; verl-config maps a native or verl run's settings"),
    (
        {},
        ["nosuch", "0"],
        "method 'nosuch' is not one of the study's methods .* not a registered rule either",
    ),
    ({}, ["fspo", "5"], r"seed 5 is not one of the study's seeds \[0, 1\]"),
]


@pytest.mark.parametrize(("train", "args", "message"), REFUSED, ids=[r[2][:40] for r in REFUSED])
def test_what_verl_cannot_run_is_refused_with_the_field_named(
    tmp_path, monkeypatch, capsys, train, args, message
):
    monkeypatch.chdir(tmp_path)
    study = study_with(tmp_path, **train)
    assert run_cli(study, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipbench verl-config: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "results").exists()  # nothing written


# --------------------------------------------------------------------------- the adapter's pure parts


def test_every_rules_loss_divides_by_the_total_its_aggregation_names():
    """A token-mean rule's loss halves when the minibatch's token count doubles and ignores its
    sequence count; a sequence-mean rule the reverse. The adapter reads a rule's aggregation from its
    `aggregation` hyperparameter, else takes it to be a mean over sequences: a new rule that is
    neither fails here."""
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(6).expand(4, 6) < torch.tensor([[6], [2], [4], [5]])
    old = -torch.rand(4, 6, generator=g, dtype=torch.float64)
    logp = old + 0.05 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2], dtype=torch.float64)
    tokens, sequences = torch.tensor(17.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    for name in methods.available_methods():
        rule = methods.get_method(name)
        stats = None
        if rule.needs_minibatch_statistics:
            stats = rule.minibatch_statistics(methods.prepare_batch(logp, old, adv, mask))

        def loss(t, s, rule=rule, stats=stats):
            return float(rule.loss(logp, old, adv, mask, totals=methods.BatchTotals(t, s, stats)).loss)

        base = loss(tokens, sequences)
        assert base != 0
        by_tokens = adapter.rule_aggregation(rule) == "token_mean"
        assert loss(2 * tokens, sequences) == pytest.approx(base / 2 if by_tokens else base, rel=1e-12), name
        assert loss(tokens, 2 * sequences) == pytest.approx(base if by_tokens else base / 2, rel=1e-12), name


def test_sequence_advantages_take_each_responses_one_value():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    advantages = torch.tensor([[0.5, 0.5, 9.0], [-1.0, -1.0, -1.0], [3.0, 3.0, 3.0]])
    assert adapter.sequence_advantages(advantages, mask).tolist() == [0.5, -1.0, 0.0]
    advantages[1, 2] = -0.9
    with pytest.raises(
        ValueError, match="advantages of response row 1 vary over its tokens .from -1 to -0.9"
    ):
        adapter.sequence_advantages(advantages, mask)


def test_the_mode_check_names_rule_aggregation_and_mode():
    assert adapter.accepted_mode(methods.get_method("ppo")) == ("token-mean", None)
    assert adapter.accepted_mode(methods.get_method("gspo")) == ("seq-mean-token-mean", None)
    adapter.check_mode(methods.get_method("gspo"), "seq-mean-token-mean")
    with pytest.raises(ValueError) as err:
        adapter.check_mode(methods.get_method("dapo"), "seq-mean-token-mean")
    assert str(err.value) == (
        "clipbench_dapo: actor.loss_agg_mode='seq-mean-token-mean' is not what the rule computes (its aggregation "
        "hyperparameter is 'token_mean'); it takes loss_agg_mode='token-mean' only; or set its aggregation "
        "hyperparameter to one of token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm"
    )
    half = methods.get_method("ppo", aggregation="seq_mean_token_sum_norm", norm_tokens=12.5)
    with pytest.raises(ValueError, match="norm_tokens=12.5; verl's loss_scale_factor is an integer"):
        adapter.accepted_mode(half)


def test_the_settings_file_is_checked(tmp_path):
    good = adapter.Settings("fspo", {"c_low": 0.1}, str(tmp_path), 32, 4, 2)
    path = adapter.write_settings(tmp_path / "s.json", good)
    assert adapter.load_settings(path) == good
    bad = [
        ({**good.to_dict(), "extra": 1}, "unknown keys \\['extra'\\]"),
        ({**good.to_dict(), "method": "nosuch"}, "method 'nosuch' is not a registered rule"),
        ({**good.to_dict(), "params": {"c_low": -1}}, "params: fspo.c_low=-1"),
        (
            {**good.to_dict(), "epochs": None},
            "run_dir is set, so the records need the schedule: \\['epochs'\\]",
        ),
        ({**good.to_dict(), "minibatches": 5}, "minibatches=5 must divide rollout_batch=32"),
    ]
    for data, message in bad:
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            adapter.load_settings(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        adapter.load_settings(path)
    assert dataclasses.replace(good, run_dir=None).run_dir is None


def test_register_all_needs_verl():
    if importlib.util.find_spec("verl") is not None:
        pytest.skip("verl is installed here: tests/test_verl_adapter.py registers the rules")
    with pytest.raises(ImportError):
        adapter.register_all()


# --------------------------------------------------------------------------- the reward


def test_compute_score_is_the_verifiers_verdict():
    source = "clipbench/synthetic"
    assert compute_score(source, "so the result is \\boxed{42}", "42") == 1.0
    assert compute_score(source, "so the result is \\boxed{41}", "42", {"index": 3}) == 0.0
    assert compute_score(source, "the answer is 42", "42") == 0.0  # synthetic: \boxed{} only, no fallback
    assert compute_score("clipbench/gsm8k", "#### 42", "42") == 1.0  # gsm8k's fallbacks
    assert compute_score(source, "", "42") == 0.0
    assert compute_score(source, "\\boxed{" * 5000 + "42", "42") == 0.0  # unbalanced, long: no answer
    assert compute_score(source, "x" * 100_000 + "\\boxed{42}", "42", reward_router_address=None) == 1.0
    with pytest.raises(
        ValueError, match="data_source 'openai/gsm8k': clipbench's reward scores rows of clipbench's"
    ):
        compute_score("openai/gsm8k", "\\boxed{42}", "42")
    with pytest.raises(ValueError, match="unknown benchmark 'nosuch'"):
        compute_score("clipbench/nosuch", "\\boxed{42}", "42")


def test_report_to_is_refused_not_dropped(tmp_path, monkeypatch, capsys):
    """verl logs through its own trainer.logger: a run's report_to is refused, naming it, rather
    than silently left out (the tracker's package need not be installed for the check)."""
    from clipbench import tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: object())
    monkeypatch.chdir(tmp_path)
    study = study_with(tmp_path, report_to=["tensorboard"])
    assert run_cli(study, "fspo", "0") == 2
    err = capsys.readouterr().err
    assert re.search(r"report_to: \['tensorboard'\] is not mapped to verl's trainer.logger", err), err


# --------------------------------------------------------------------------- train.backend verl in a study


def verl_study(**changes) -> dict:
    """The default study with train.backend verl and `changes` (train__x__y: a train field; else top level)."""
    study = load_yaml(DEFAULT.read_text())
    study["train"]["backend"] = "verl"
    for key, value in changes.items():
        if key.startswith("train__"):
            node = study["train"]
            *parents, leaf = key.split("__")[1:]
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        else:
            study[key] = value
    return study


def test_a_verl_study_passes_the_dag_check():
    from clipbench.study import check_study, verl_cluster_args, verl_launcher

    study = verl_study()
    assert check_study(study).methods == methods.available_methods()
    root = Path(__file__).resolve().parents[1]
    assert (verl_cluster_args(study), verl_launcher(study, root)) == (
        ["--nodes", "1", "--gpus-per-node", "1"],
        "",
    )
    two = verl_study(resources={"train": {"gpu": 4, "nodes": 2}}, methods=["fspo", "grpo"])
    check_study(two)  # 8 sequences per minibatch over 8 GPUs
    script = root / "workflows/scripts/verl_ray_slurm.sh"
    assert script.is_file()
    assert verl_launcher(two, root / "tests" / "..") == f"bash {script} 2 4 "  # absolute, resolved


VERL_STUDY_REFUSED = [
    ({"train__processes": 2}, r"config train\.processes: 2 is not supported by backend verl \(verl's ranks"),
    (
        {"train__report_to": ["tensorboard"]},
        r"config train\.report_to: \['tensorboard'\] is not supported by backend verl",
    ),
    (
        {"train__optim__logprob_chunk_tokens": 64},
        r"config train\.optim\.logprob_chunk_tokens: 64 is not supported",
    ),
    (
        {"resources": {"train": {"gpu": 3}}},
        r"config train\.optim\.minibatches: a minibatch of 8 sequences does not split over 3 GPUs",
    ),
    (
        {"resources": {"train": {"gpu": 2}}, "methods": ["grpo", "powerband"]},
        r"config train\.method_params: powerband .* reads a statistic of the whole minibatch",
    ),
    (
        {"resources": {"train": {"nodes": 0}}},
        r"config resources\.train\.nodes: 0; verl needs a positive integer",
    ),
    (
        {"resources": {"train": {"gpu_model": "h100-80gb"}}},
        r"config resources\.train\.gpu_model: plans the native trainer on one GPU",
    ),
    (
        {"train__optim__grad_clip": 0},
        r"config train\.optim\.grad_clip: 0 \(no clipping\) has no verl equivalent",
    ),
]


@pytest.mark.parametrize(
    ("changes", "message"), VERL_STUDY_REFUSED, ids=[m[:40] for _, m in VERL_STUDY_REFUSED]
)
def test_a_verl_study_that_verl_cannot_run_fails_the_dag_check_naming_the_key(changes, message):
    from clipbench.study import StudyConfigError, check_study

    with pytest.raises(StudyConfigError, match=message):
        check_study(verl_study(**changes))


def test_the_same_settings_pass_with_the_native_backend():
    # what backend verl refuses is not refused natively (the native path is unchanged)
    from clipbench.study import check_study

    study = verl_study(train__optim__logprob_chunk_tokens=64, resources={"train": {"gpu": 3}})
    study["train"]["backend"] = "native"
    check_study(study)


def test_clipbench_train_refuses_backend_verl(tmp_path, capsys):
    fields = {"model": "m", "method": "fspo", "backend": "verl", "optim": {"minibatches": 2}}
    assert cli.main(["train", "--config-json", json.dumps(fields), "--out", str(tmp_path / "run")]) == 2
    assert "backend: 'verl' runs through a study" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_verl_config_of_a_run_config_json_is_the_study_commands(tmp_path, monkeypatch):
    """The study's verl_config job (--config-json, --run-dir) writes what STUDY METHOD SEED writes."""
    from clipbench.study import run_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "base" / "model").mkdir(parents=True)  # the job's input: the base model
    study = load_yaml(DEFAULT.read_text())
    assert run_cli(DEFAULT, "grpo", 1, "--out", tmp_path / "a" / "config.yaml") == 0
    fields = {**run_config(study, "grpo", 1), "backend": "verl"}
    args = [
        "--config-json",
        json.dumps(fields),
        "--run-dir",
        "results/runs/grpo/seed1",
        "--out",
        tmp_path / "b" / "config.yaml",
    ]
    assert cli.main(["verl-config", *map(str, args)]) == 0
    a, b = (yaml.safe_load((tmp_path / x / "config.yaml").read_text()) for x in "ab")
    for name in ("clipbench.json",):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert pd.read_parquet(tmp_path / "a" / "train.parquet").equals(
        pd.read_parquet(tmp_path / "b" / "train.parquet")
    )
    strip = lambda c: {k: v for k, v in c.items() if k not in ("data", "trainer", "ray_kwargs")}  # noqa: E731
    assert strip(a) == strip(b)
    assert a["data"]["train_batch_size"] == b["data"]["train_batch_size"] == 4


def test_a_study_files_cluster_is_the_one_its_own_jobs_use(tmp_path, monkeypatch):
    """`clipbench verl-config STUDY METHOD SEED` takes nodes and GPUs per node from the study's
    resources.train, as its verl_config jobs do (`verl_config.study_cluster`); --nodes and
    --gpus-per-node override them."""
    monkeypatch.chdir(tmp_path)
    study = load_yaml(DEFAULT.read_text())
    study["resources"] = {"train": {"nodes": 2, "gpu": 2}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert run_cli(path, "grpo", 0, "--out", tmp_path / "a" / "config.yaml") == 0
    trainer = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["trainer"]
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (2, 2)
    assert run_cli(path, "grpo", 0, "--nodes", 1, "--out", tmp_path / "b" / "config.yaml") == 0
    trainer = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["trainer"]
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (1, 2)
