"""One validation path (issue 12): the config dataclasses declare every field once; the study's
schema is generated from them and agrees with the jobs' validators; the DAG-time check calls the
jobs' own functions; a run builds its method once. No Snakemake here (test_workflow.py and
test_hostile_workflow.py run it)."""

import copy
import dataclasses
import json
import math
from pathlib import Path

import jsonschema
import pytest
import yaml

from clipbench import evaluate, methods, study
from clipbench.config import (
    AdvantageConfig,
    DataConfig,
    OptimConfig,
    RolloutConfig,
    TrainConfig,
    load_config,
)
from clipbench.settings import ConfigError, check, from_dict
from clipbench.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflows" / "config"
SCHEMA = CONFIGS / "schema.yaml"


def smoke() -> dict:
    return yaml.safe_load((CONFIGS / "smoke.yaml").read_text())


# --------------------------------------------------------------------------- the schema


def test_the_committed_schema_is_the_generated_one():
    committed = SCHEMA.read_text()
    assert committed == study.schema_text(), (
        f"{SCHEMA.relative_to(ROOT)} differs from the config dataclasses it is generated from: "
        f"run `{study.REGENERATE}` and commit the result"
    )


def test_the_only_defaults_snakemake_inserts_are_the_study_level_ones():
    # Snakemake's validate() writes each schema `default` into the config, which enters the config
    # hash and every job's parameters: a TrainConfig default there would rerun finished studies.
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            if "default" in node and path and path[-2] == "properties":
                found[".".join(p for p in path if p != "properties")] = node["default"]
            for key, value in node.items():
                walk(value, (*path, key))

    walk(yaml.safe_load(SCHEMA.read_text()), ())
    assert found == {
        "methods": [],
        "method_params": {},
        "evaluate.backend": "hf",
        "evaluate.prompt_style": "base",
        "fairness.bins": 5,
        "fairness.clip_column": "seq_out",
        "report.resamples": 1000,  # not report.reference: the DAG check must see whether it is set
    }


@pytest.mark.parametrize("name", ["default", "smoke", "paper", "paper_trl"])
def test_every_shipped_study_passes_the_schema_and_the_check(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # paper_trl's launch.accelerate_config is relative to the working directory
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    jsonschema.validate(config, yaml.safe_load(SCHEMA.read_text()))
    grid = study.check_study(config)
    assert grid.seeds and grid.methods and grid.benchmarks


SECTIONS = [
    (DataConfig, ("train", "data")),
    (RolloutConfig, ("train", "rollout")),
    (AdvantageConfig, ("train", "advantage")),
    (OptimConfig, ("train", "optim")),
    (TrainConfig, ("train",)),
    (SFTConfig, ("base", "sft")),
    (study.Report, ("report",)),
]


def _probes(meta: dict, kind: type) -> list:
    """Values at and beside each bound of a numeric field."""
    values = []
    for key in ("gt", "ge", "lt", "le"):
        bound = meta.get(key)
        if bound is not None:
            step = 1 if kind is int else 1e-9
            values += [bound - step, bound, bound + step]
    if meta.get("multiple_of"):
        values += [meta["multiple_of"] * 3, meta["multiple_of"] * 3 + 1]
    return values


@pytest.mark.parametrize(("cls", "where"), SECTIONS, ids=[c.__name__ for c, _ in SECTIONS])
def test_the_schema_and_the_dataclass_accept_the_same_values(cls, where):
    """For each numeric bound and each choice of every section: a value the job's reader accepts
    passes the generated schema, and one it refuses the schema refuses too (finite numbers: the
    schema cannot say "finite", the DAG-time check does)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    node = schema
    for key in where:
        node = node["properties"][key]
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    probed = 0
    for f in dataclasses.fields(cls):
        if f.name not in node["properties"]:
            continue
        kind = {"int": int, "float": float, "str": str, "int | None": int}.get(hints[f.name])
        values = _probes(dict(f.metadata), kind)
        choices = f.metadata.get("choices")
        if isinstance(choices, tuple):
            values += [*choices, "no_such_choice"]
        for value in values:
            try:
                from_dict(cls, {f.name: value})
                python_ok = True
            except ConfigError:
                python_ok = False
            schema_ok = jsonschema.Draft202012Validator(node["properties"][f.name]).is_valid(value)
            assert python_ok == schema_ok, (cls.__name__, f.name, value, python_ok, schema_ok)
            probed += 1
    assert probed > 0


@pytest.mark.parametrize(
    "instance",
    [
        TrainConfig(model="m"),
        DataConfig(),
        RolloutConfig(),
        AdvantageConfig(),
        OptimConfig(),
        SFTConfig(),
        evaluate.Settings(benchmark="synthetic"),
        study.Fairness(),
        study.Report(),
    ],
    ids=lambda obj: type(obj).__name__,
)
def test_every_declared_default_is_valid(instance):
    assert check(instance) is instance


def test_the_study_dataclasses_declare_every_top_level_key():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert list(schema["properties"]) == [f.name for f in dataclasses.fields(study.Study)]
    assert schema["required"] == ["name", "seeds", "base", "train", "evaluate"]


# --------------------------------------------------------------------------- the DAG-time check


def with_changes(**changes) -> dict:
    config = smoke()
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train__data__split": "tset"}, "config train.data.split: synthetic has no split 'tset'"),
        (
            {"train__data": {"benchmark": "math_train", "data_dir": "/nonexistent"}},
            "config train.data.data_dir: math_train/train: /nonexistent/math_train/train.json not found",
        ),
        ({"train__optim__lr": math.inf}, "config train.optim.lr: must be finite and > 0, got inf"),
        ({"train__steps": "many"}, "config train.steps: expected an integer, got 'many'"),
        (
            {"train__optim": {"minibatches": 3}},
            "config train.optim.minibatches: must divide the rollout batch",
        ),
        ({"base__sft__lr": math.nan}, "config base.sft.lr: must be finite and > 0, got nan"),
        ({"base": {"kind": "path"}}, "config base.path: required when base.kind is path"),
        ({"base": {"kind": "vm"}}, "config base.kind: unknown kind 'vm'; available: sft, path, smollm2"),
        (
            {"method_params__fspo": {"c_low": math.inf}},
            "config method_params.fspo: fspo.c_low=inf: must be finite",
        ),
        ({"methods": ["fsop"]}, "config methods: unknown method 'fsop'"),
        ({"methods": ["../x"]}, "config methods: '../x' is not a valid name"),
        (
            {"evaluate__benchmarks__synthetic_test__k": 0},
            "config evaluate.benchmarks.synthetic_test.k: must be >= 1 or null, got 0",
        ),
        (
            {"evaluate__benchmarks__synthetic_test__split": "dev"},
            "config evaluate.benchmarks.synthetic_test.split: synthetic has no split 'dev'",
        ),
        (
            {"evaluate__backend": "tgi"},
            "config evaluate.backend: unknown backend 'tgi'; available: hf, vllm (for evaluate.benchmarks.synthetic_test)",
        ),
        ({"fairness__bins": 0}, "config fairness.bins: must be >= 1, got 0"),
        ({"seeds": [-1]}, "config seeds[0]: must be >= 0, got -1"),
        (
            {"report__reference": "grpo"},
            "config report.reference: 'grpo' is not a method of this study (fspo, gspo): the paired "
            "differences need its evaluations; name one of these",
        ),
        ({"report__reference": "../x"}, "config report.reference: must be a method name"),
        ({"report__resamples": 0}, "config report.resamples: must be >= 1, got 0"),
        ({"report__smoothing_window": 0}, "config report.smoothing_window: must be >= 1, got 0"),
    ],
)
def test_check_study_names_the_key(changes, message):
    with pytest.raises(study.StudyConfigError) as raised:
        study.check_study(with_changes(**changes))
    assert message in str(raised.value)


def test_the_reference_method_is_the_configured_one_or_grpo_or_the_first():
    default = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    assert study.check_study(default).reference == "grpo"
    default["report"] = {"reference": "ppo"}
    assert study.check_study(default).reference == "ppo"
    del default["report"]
    default["methods"] = ["ppo", "grpo"]
    assert study.check_study(default).reference == "grpo"  # not set: grpo, wherever it is listed
    assert smoke()["methods"] == ["fspo", "gspo"] and "report" not in smoke()
    assert study.check_study(smoke()).reference == "fspo"  # not set and no grpo: the first method
    assert study.check_study(with_changes(report__reference="gspo")).reference == "gspo"
    # the aggregate job's flags, as the rule writes them
    assert study.report_args(smoke(), "fspo") == ["--reference", "fspo", "--resamples", "1000"]
    config = with_changes(report__resamples=2000)
    assert study.report_args(config, "gspo") == ["--reference", "gspo", "--resamples", "2000"]


def test_the_dag_builds_each_configured_method_once_and_runs_none(monkeypatch):
    calls = []
    real = methods.get_method
    monkeypatch.setattr(methods, "get_method", lambda name, **kw: calls.append(name) or real(name, **kw))
    config = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    grid = study.check_study(config)
    assert len(grid.methods) * len(grid.seeds) == 2 * len(methods.available_methods())  # every rule, 2 seeds
    assert calls == sorted(config["method_params"])  # gspo, once (not once per run)


def test_a_run_builds_its_method_once(monkeypatch, tmp_path):
    from clipbench.trainer import Trainer

    calls = []
    real = methods.get_method
    monkeypatch.setattr(methods, "get_method", lambda name, **kw: calls.append(name) or real(name, **kw))
    config = load_config({"model": "m", "method": "gspo", "method_params": {"eps_low": 0.01}})
    trainer = Trainer(config, tmp_path / "run", progress=False)  # validates again, builds the method
    assert calls == ["gspo"] and trainer.method is config.build_method()
    assert trainer.method.eps_low == 0.01
    again = dataclasses.replace(config, method_params={"eps_low": 0.02})  # a new config: a new build
    assert again.build_method().eps_low == 0.02 and calls == ["gspo", "gspo"]
    # The built method is kept beside the config, not in it: its fields stay its whole state.
    assert set(vars(config)) == {f.name for f in dataclasses.fields(TrainConfig)} and again != config


def test_the_workflow_evaluate_plan_reads_the_same_settings_as_the_dag_check():
    """eval_plan (the study's evaluate job: every benchmark of one model), read by `clipbench
    evaluate --plan-json`, gives for each benchmark the Settings the DAG-time check validated, and
    its summary path: one declaration, no hand-kept field list."""
    config = copy.deepcopy(yaml.safe_load((CONFIGS / "paper.yaml").read_text()))
    config["evaluate"]["data_dir"] = "some/dir"
    plan = evaluate.read_plan(json.dumps(study.eval_plan(config, "fspo-seed2")))
    assert [out for _, out in plan] == [
        Path(f"results/evals/fspo-seed2/{key}.json") for key in config["evaluate"]["benchmarks"]
    ]
    for (settings, _), (key, entry) in zip(plan, config["evaluate"]["benchmarks"].items(), strict=True):
        section = {
            name: config["evaluate"][name] for name in study.SECTION_FIELDS if name in config["evaluate"]
        }
        assert settings == evaluate.check_settings(from_dict(evaluate.Settings, {**section, **entry})), key


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("[", "plan: not valid JSON"),
        ("[]", "plan: expected a non-empty JSON list"),
        ('[{"benchmark": "synthetic"}]', "plan[0].out: required"),
        ('[{"benchmark": "synthetic", "out": "a.json", "kk": 2}]', "plan[0].kk: unknown field"),
        ('[{"out": "a.json"}]', "plan[0].benchmark: required"),
        ('[{"benchmark": "synthetic", "out": "a.json", "k": 0}]', "plan[0].k: must be"),
        (
            '[{"benchmark": "synthetic", "out": "a.json"}, {"benchmark": "synthetic", "split": "test_ood", '
            '"out": "a.json"}]',
            "plan[1].out: a.json is also plan[0]'s",
        ),
    ],
)
def test_a_bad_evaluation_plan_names_the_entry_and_field(plan, message):
    with pytest.raises(ConfigError) as err:
        evaluate.read_plan(plan)
    assert message in str(err.value)


def test_the_evaluate_command_takes_one_evaluation_or_a_plan_not_both(tmp_path, capsys):
    from clipbench.cli import main

    plan = json.dumps([{"benchmark": "synthetic", "out": str(tmp_path / "a.json")}])
    assert main(["evaluate", "--model", str(tmp_path), "--plan-json", plan, "--k", "2"]) == 2
    assert "--k is not taken with it" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--benchmark", "synthetic"]) == 2
    assert "give --benchmark and --out" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
