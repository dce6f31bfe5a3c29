"""Matched clip budgets (clipbench/calibration.py, `clipbench calibrate`, the study's probe and
calibrate rules): each sequence rule's band hits the target out-of-band rate on synthetic
log-ratios, by hand on a few, through the simulation's code path; a new rule joins with its own
file only; hand-set method_params win; calibration.json round-trips with its provenance; the study
config's sections fail naming the key; the DAG runs probe -> calibrate -> train."""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import snakemake_run
import yaml

from clipbench import artifacts, calibration, cli, fairness, methods, probe, report, simulate, study
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, sequence_level_rule

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflows" / "config" / "smoke.yaml"
TARGET = 0.15


def synthetic(n_groups=100, group=4, seed=0, sigma=0.05, exponent=0.3):
    """A measurement of known structure: lengths 8-256, l_t ~ N(-0.002, (sigma (L/32)^exponent)^2),
    so |S| grows faster than sqrt(L) and drifts, as on the default study's model; random signs."""
    rng = np.random.default_rng(seed)
    n = n_groups * group
    lengths = rng.integers(8, 257, size=n)
    seqs = [rng.normal(-0.002, sigma * (L / 32) ** exponent, size=L) for L in lengths]
    return probe.Measurement.from_sequences(seqs, np.arange(n) // group, rng.choice([-1.0, 1.0], n))


@pytest.fixture(scope="module")
def measured():
    return synthetic()


def rate_through_the_probe(m, rule):
    """The rule's clip rate on the measurement as the probe and the study's table compute it:
    probe.rule_records (simulate.rule_records) summarised by clipbench.fairness."""
    records = probe.rule_records(m, {"r": rule})
    _, summary = fairness.fairness_summary(records, edges=fairness.length_bin_edges(m.lengths))
    return float(summary["clip_rate"].iloc[0])


# --------------------------------------------------------------------------- the rules' bands


def test_every_rule_with_a_hard_band_declares_it():
    declared = {n: methods.get_method_class(n).band_fields for n in methods.available_methods()}
    assert declared == {
        "cispo": ("eps_high",),  # eps_low may be null (no lower bound)
        "dapo": ("eps_low", "eps_high"),
        "fspo": ("c_low", "c_high"),
        "gmpo": ("eps_low", "eps_high"),
        "grpo": ("eps_low", "eps_high"),
        "gspo": ("eps_low", "eps_high"),
        "powerband": ("c_low", "c_high"),
        "ppo": ("eps_low", "eps_high"),
        "sapo": (),  # soft gates: no band
        "seq_ppo": ("eps_low", "eps_high"),
    }
    assert "band (set by `clipbench calibrate`): c_low, c_high" in methods.get_method_class("fspo").describe()


@pytest.mark.parametrize("name", calibration.sequence_rules())
def test_each_sequence_rule_hits_the_target_through_the_simulations_path(measured, name):
    rules = calibration.calibrate(measured, TARGET, [name])
    result = rules[name]
    assert abs(result.rate - TARGET) <= 0.02
    fields = methods.get_method_class(name).band_fields
    assert set(result.calibrated) == set(fields) and len(set(result.calibrated.values())) == 1  # symmetric
    assert result.source == "calibrated" and result.hand == {}
    rule = methods.get_method(name, **result.calibrated)
    assert result.hparams == rule.hparams()
    # the rate is the rule's seq_out through simulate.rule_outputs, and the probe's (and the table's) clip rate
    out = simulate.rule_outputs({name: rule}, *calibration.measurement_tensors(measured))[name]
    assert result.rate == float(out.seq_out.double().mean())
    assert result.rate == pytest.approx(rate_through_the_probe(measured, rule), abs=1e-12)
    # every value of the plateau gives that rate; beyond it, another
    low, high = result.plateau
    value = result.calibrated[fields[0]]
    assert low <= value <= high
    for v in (low, high):
        assert (
            calibration.out_of_band_rate(
                methods.get_method(name, **{f: v for f in fields}), calibration.measurement_tensors(measured)
            )
            == result.rate
        )


def test_fspo_by_hand():
    # L = 1 (sqrt(L) = 1): fspo puts S out of band when |S| > c. S = 1/8, 2/8, ..., 10/8 (exact floats).
    s = [i / 8 for i in range(1, 11)]
    m = probe.Measurement.from_sequences([np.array([x]) for x in s], range(10), np.ones(10))
    tensors = calibration.measurement_tensors(m)
    # target 0.3: 3 out (S = 1, 1.125, 1.25) for c in [0.875, 1), a bound on the band inside it;
    # the shortest decimal of that range with the rate: 0.9
    result = calibration.calibrate_rule("fspo", tensors, 0.3)
    assert result.calibrated == {"c_low": 0.9, "c_high": 0.9} and result.rate == 0.3
    assert result.plateau == pytest.approx((0.875, 1.0), abs=1e-12)
    # target 0.25, halfway between the steps 0.2 and 0.3: the one not above the target, c in [1, 1.125): 1
    result = calibration.calibrate_rule("fspo", tensors, 0.25)
    assert result.calibrated == {"c_low": 1.0, "c_high": 1.0} and result.rate == 0.2
    # target 0.28: 0.3 is nearer than 0.2
    assert calibration.calibrate_rule("fspo", tensors, 0.28).rate == 0.3


def test_gspo_by_hand():
    # gspo's band is on S / L: a response is above it when S / L > log(1 + eps_high). Four responses of
    # L = 1 with S = log 1.01, log 1.02, log 1.03, log 1.04 and target 0.5: two out for eps in
    # [0.02, 0.03); the shortest decimal there is 0.02, both sides alike.
    s = [math.log1p(e) for e in (0.01, 0.02, 0.03, 0.04)]
    m = probe.Measurement.from_sequences([np.array([x]) for x in s], [0, 0, 1, 1], np.ones(4))
    result = calibration.calibrate_rule("gspo", calibration.measurement_tensors(m), 0.5)
    assert result.calibrated == {"eps_low": 0.02, "eps_high": 0.02} and result.rate == 0.5
    assert result.plateau[0] == pytest.approx(0.02, abs=1e-12) and result.plateau[1] == pytest.approx(
        0.03, abs=1e-12
    )


def test_an_out_of_reach_target_is_an_error_naming_the_rule():
    # every response identical: the rate jumps from 1 to 0 at one value; 0.5 is 0.5 from both
    m = probe.Measurement.from_sequences([np.full(16, 0.01)] * 8, np.arange(8) // 2, np.ones(8))
    with pytest.raises(
        calibration.CalibrationError,
        match=r"no band puts 0.5 ± 0.02 of the probe's 8 responses.*fspo reaches",
    ):
        calibration.calibrate(m, 0.5, ["fspo"])
    zero = probe.Measurement.from_sequences([np.zeros(16)] * 8, np.arange(8) // 2, np.ones(8))
    with pytest.raises(calibration.CalibrationError, match="narrowest band .* not more than the target"):
        calibration.calibrate(zero, 0.15, ["seq_ppo"])
    # seq_ppo's upper bound is at most log 2 on S (eps_high < 1): S = 1 stays out at any band
    far = probe.Measurement.from_sequences([np.full(4, 0.25)] * 8, np.arange(8) // 2, np.ones(8))
    with pytest.raises(calibration.CalibrationError, match="widest band"):
        calibration.calibrate(far, 0.15, ["seq_ppo"])


# --------------------------------------------------------------------------- a new rule, hand-set values


@pytest.fixture
def new_rules():
    """Two rules registered for one test: one declaring its band, one not."""

    @methods.register("linear_band")
    @dataclass(frozen=True)
    class LinearBand(Method):
        """S clipped to [-k L, k L] (test rule). Reference: none, arXiv 0000.00000."""

        level = "sequence"
        band_fields = ("k",)
        k: float = hparam(0.001, help="half-width per token", gt=0)

        def compute(self, batch: RolloutBatch) -> LossOutput:
            return sequence_level_rule(
                batch, batch.seq_log_ratio, -self.k * batch.lengths, self.k * batch.lengths
            )

    @methods.register("bandless")
    @dataclass(frozen=True)
    class Bandless(Method):
        """S clipped to [-w, w] (test rule, no declared band). Reference: none, arXiv 0000.00000."""

        level = "sequence"
        w: float = hparam(0.1, help="half-width", gt=0)

        def compute(self, batch: RolloutBatch) -> LossOutput:
            return sequence_level_rule(batch, batch.seq_log_ratio, -self.w, self.w)

    yield
    methods._REGISTRY.pop("linear_band", None)
    methods._REGISTRY.pop("bandless", None)


def test_a_new_sequence_rule_joins_with_its_own_file_only(measured, new_rules):
    assert "linear_band" in calibration.sequence_rules()
    result = calibration.calibrate(measured, TARGET, ["linear_band"])["linear_band"]
    assert abs(result.rate - TARGET) <= 0.02 and set(result.calibrated) == {"k"}
    with pytest.raises(
        calibration.CalibrationError,
        match=r"--methods\[1\]: bandless \(.*test_calibration.py\) declares no band: add `band_fields",
    ):
        calibration.check_rules(["linear_band", "bandless"], {})
    with pytest.raises(calibration.CalibrationError, match=r"--methods: bandless .* declares no band"):
        calibration.check_rules([], {})  # every registered sequence rule: bandless among them


def test_band_fields_must_name_float_hyperparameters():
    with pytest.raises(
        TypeError, match="band_fields names 'drift', which is not one of its float hyperparameters"
    ):

        @methods.register("bad_band")
        @dataclass(frozen=True)
        class BadBand(Method):
            """Test rule. Reference: none, arXiv 0000.00000."""

            level = "sequence"
            band_fields = ("drift",)
            drift: str = hparam("none", help="not a width")

            def compute(self, batch: RolloutBatch) -> LossOutput:  # pragma: no cover
                raise NotImplementedError

    assert "bad_band" not in methods.available_methods()


def test_a_token_rule_is_calibrated_when_listed_on_the_share_of_tokens():
    # ppo's seq_out is the share of a response's tokens outside [1 - eps, 1 + eps]: the rate is the mean
    # of those shares. Two responses, ratios (1, 1, 1, 1.3) and (1.3), at eps 0.2: 1/4 and 1 -> 0.625
    # (not 2/5, the tokens pooled).
    two = probe.Measurement.from_sequences([np.log([1.0, 1.0, 1.0, 1.3]), np.log([1.3])], [0, 1], np.ones(2))
    rule = methods.get_method("ppo")
    assert calibration.out_of_band_rate(rule, calibration.measurement_tensors(two)) == pytest.approx(0.625)
    # Ten one-token responses with ratios 1.015, 1.025, ..., 1.105 and target 0.3: three out (1.085,
    # 1.095, 1.105) for eps in [0.075, 0.085); its shortest decimal 0.08. cispo: its cap only.
    ratios = [1.005 + 0.01 * i for i in range(1, 11)]
    ten = probe.Measurement.from_sequences([np.log([r]) for r in ratios], range(10), np.ones(10))
    result = calibration.calibrate_rule("ppo", calibration.measurement_tensors(ten), 0.3)
    assert result.calibrated == {"eps_low": 0.08, "eps_high": 0.08} and result.rate == 0.3
    assert result.plateau == pytest.approx((0.075, 0.085), abs=1e-12)
    cispo = calibration.calibrate_rule("cispo", calibration.measurement_tensors(ten), 0.3)
    assert cispo.calibrated == {"eps_high": 0.08} and cispo.rate == 0.3
    # listed, a token rule is checked like a sequence rule; not listed, only sequence rules are chosen
    assert calibration.check_rules(["ppo", "fspo"], {}) == ["ppo", "fspo"]
    assert "ppo" not in calibration.check_rules([], {})
    # sapo's gates are soft: no band to calibrate, refused naming its file
    with pytest.raises(
        calibration.CalibrationError, match=r"--methods\[0\]: sapo \(.*sapo.py\) declares no band"
    ):
        calibration.check_rules(["sapo"], {})
    with pytest.raises(calibration.CalibrationError, match=r"--set: ppo is not calibrated here"):
        calibration.check_rules(["fspo"], {"ppo": {"eps_low": 0.1}})
    with pytest.raises(calibration.CalibrationError, match=r"--set.fspo: fspo.c_low=-1"):
        calibration.check_rules(["fspo"], {"fspo": {"c_low": -1}})


def test_the_footer_says_a_token_rules_rate_counts_tokens():
    rules = {
        "ppo": {
            "band_fields": ["eps_low", "eps_high"],
            "calibrated": {"eps_low": 0.08, "eps_high": 0.08},
            "hand": {},
            "rate": 0.3,
            "source": "calibrated",
        },
        "fspo": {
            "band_fields": ["c_low", "c_high"],
            "calibrated": {"c_low": 0.9, "c_high": 0.9},
            "hand": {},
            "rate": 0.3,
            "source": "calibrated",
        },
    }
    data = {
        "target_rate": 0.3,
        "tolerance": 0.02,
        "rules": rules,
        "probe": {
            "sequences": "results/probe/sequences.parquet",
            "responses": 10,
            "groups": 5,
            "prompts": 10,
            "samples": 2,
            "seed": 0,
        },
    }
    text = report.calibration_footer(data)
    assert "ppo eps_low = eps_high = 0.08 (rate 0.300 of tokens)" in text
    assert "fspo c_low = c_high = 0.9 (rate 0.300)" in text


def test_hand_set_values_override_and_are_reported_as_hand(measured):
    hand = {"gspo": {"eps_low": 0.005, "eps_high": 0.005}, "fspo": {"c_low": 0.5, "drift": "kl"}}
    rules = calibration.calibrate(measured, TARGET, ["gspo", "fspo", "seq_ppo"], hand)
    tensors = calibration.measurement_tensors(measured)
    gspo = rules["gspo"]
    assert gspo.source == "hand" and gspo.calibrated == {} and gspo.hand == hand["gspo"]
    assert gspo.rate == calibration.out_of_band_rate(methods.get_method("gspo", **hand["gspo"]), tensors)
    assert gspo.plateau is None  # no search: the hand band's rate, whatever it is
    fspo = rules["fspo"]  # c_low by hand: only c_high calibrated, drift kept
    assert fspo.source == "partly hand" and set(fspo.calibrated) == {"c_high"} and fspo.hand == {"c_low": 0.5}
    assert fspo.hparams["c_low"] == 0.5 and fspo.hparams["drift"] == "kl"
    assert abs(fspo.rate - TARGET) <= 0.02
    assert rules["seq_ppo"].source == "calibrated"
    # a train job's method_params: the calibrated values, the hand-set ones over them
    data = {"rules": {n: r.to_dict() for n, r in rules.items()}}
    assert calibration.run_params(data, "fspo", hand["fspo"]) == {
        "c_high": fspo.calibrated["c_high"],
        **hand["fspo"],
    }
    assert calibration.run_params(data, "gspo", hand["gspo"]) == hand["gspo"]
    assert calibration.run_params(data, "seq_ppo", {}) == rules["seq_ppo"].calibrated
    assert calibration.run_params(data, "ppo", {"eps_low": 0.1}) == {"eps_low": 0.1}
    assert calibration.run_params(None, "seq_ppo", {}) == {}
    # a stale file cannot override the config: hand wins in run_params itself
    stale = {"rules": {"seq_ppo": {"calibrated": {"eps_low": 0.3, "eps_high": 0.3}}}}
    assert calibration.run_params(stale, "seq_ppo", {"eps_high": 0.1}) == {"eps_low": 0.3, "eps_high": 0.1}


# --------------------------------------------------------------------------- the file


def write_probe_output(m, folder: Path, seed=7) -> Path:
    """A probe's sequences.parquet for measurement `m`, as probe.write_outputs writes it."""
    from clipbench.provenance import provenance

    config = {"model": "results/base/model", "n_prompts": 2 * m.n_groups, "samples": 4, "seed": seed}
    frame = pd.DataFrame(
        {
            "seq": range(len(m.lengths)),
            "group": m.group,
            "advantage": m.advantages,
            "length": m.lengths,
            "log_ratio": [m.log_ratio[i, : m.lengths[i]] for i in range(len(m.lengths))],
        }
    )
    path = artifacts.probe_paths(folder)["sequences"]
    probe.write_sequences(frame, path, provenance(config, seed=seed))
    return path


def test_the_probe_file_gives_back_its_measurement(measured, tmp_path):
    path = write_probe_output(measured, tmp_path)
    again, prov = probe.read_measurement(path)
    np.testing.assert_array_equal(again.log_ratio, measured.log_ratio)
    np.testing.assert_array_equal(again.group, measured.group)
    np.testing.assert_array_equal(again.advantages, measured.advantages)
    assert prov["seed"] == 7 and prov["config"]["n_prompts"] == 200
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a clipbench probe file"):
        probe.read_measurement(tmp_path / "other.parquet")


def test_calibrate_command_writes_a_file_that_round_trips_with_its_provenance(measured, tmp_path, capsys):
    sequences = write_probe_output(measured, tmp_path / "probe")
    out = tmp_path / "calibration.json"
    argv = [
        "calibrate",
        "--probe",
        str(tmp_path / "probe"),
        "--target-rate",
        "0.15",
        "--methods",
        "fspo",
        "gspo",
    ]
    argv += ["--set", "gspo.eps_low=0.005", "--set", "gspo.eps_high=0.005", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    data = calibration.read_calibration(out)
    assert data == json.loads(out.read_text())
    assert data["format"] == calibration.FORMAT and data["target_rate"] == 0.15 and data["tolerance"] == 0.02
    probe_info = data["probe"]
    assert probe_info["sha256"] == calibration.file_sha256(sequences) and probe_info["sequences"] == str(
        sequences
    )
    assert (probe_info["responses"], probe_info["groups"], probe_info["prompts"], probe_info["samples"]) == (
        400,
        100,
        200,
        4,
    )
    assert probe_info["seed"] == 7 and probe_info["provenance"]["seed"] == 7
    prov = data["provenance"]
    assert prov["commit"] and prov["config"]["probe_sha256"] == probe_info["sha256"]
    assert prov["config"]["method_params"] == {"gspo": {"eps_low": 0.005, "eps_high": 0.005}}
    assert list(data["rules"]) == ["fspo", "gspo"]
    fspo, gspo = data["rules"]["fspo"], data["rules"]["gspo"]
    assert fspo["source"] == "calibrated" and abs(fspo["rate"] - 0.15) <= 0.02
    assert gspo["source"] == "hand" and gspo["hand"] == {"eps_low": 0.005, "eps_high": 0.005}
    # the same as the library's, value for value
    direct = calibration.calibrate(measured, 0.15, ["fspo"])["fspo"]
    assert fspo["calibrated"] == direct.calibrated and fspo["rate"] == direct.rate
    assert (
        f"fspo: c_low = {direct.calibrated['c_low']:g}" in printed
        and "gspo: eps_low = 0.005, eps_high = 0.005 (hand)" in printed
    )
    # refused: another format, a missing key, a rule's missing key
    for broken, message in (
        ({**data, "format": "x"}, "not a calibration file of format"),
        ({k: v for k, v in data.items() if k != "probe"}, r"lacks the keys \['probe'\]"),
        ({**data, "rules": {"fspo": {"rate": 0.1}}}, "rules.fspo lacks the keys"),
    ):
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            calibration.read_calibration(path)
    with pytest.raises(FileNotFoundError) as missing:
        calibration.read_calibration("no/such/calibration.json")
    assert missing.value.filename == "no/such/calibration.json"  # what Snakemake's deferral looks for


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--target-rate", "1"], "--target-rate: must be in (0, 1)"),
        (["--target-rate", "0.1", "--tolerance", "0"], "--tolerance: must be in (0, 1)"),
        (["--target-rate", "0.1", "--methods", "sapo"], "--methods[0]: sapo ("),
        (
            ["--target-rate", "0.1", "--set", "fspo.nope=1"],
            "--set.fspo: method 'fspo' has no hyperparameter 'nope'",
        ),
        (["--target-rate", "0.1", "--set", "fspo"], "--set 'fspo': expected METHOD.FIELD=VALUE"),
    ],
)
def test_calibrate_options_fail_before_anything_is_read(options, message, tmp_path, capsys):
    out = tmp_path / "calibration.json"
    assert cli.main(["calibrate", "--probe", str(tmp_path / "none"), *options, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipbench calibrate: error: ") and message in err, err
    assert not out.exists()


def test_calibrate_names_a_folder_without_a_probe(tmp_path, capsys):
    assert (
        cli.main(
            ["calibrate", "--probe", str(tmp_path), "--target-rate", "0.1", "--out", str(tmp_path / "c.json")]
        )
        == 2
    )
    assert "no sequences.parquet (give the --out folder of `clipbench probe`)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the study config


def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def test_the_smoke_study_probes_and_calibrates_every_sequence_rule():
    config = smoke()
    assert "probe" in config and config["calibration"]["target_rate"] == TARGET
    grid = study.check_study(config)
    assert grid.probe and grid.calibrated == ["fspo", "gspo"]
    default = yaml.safe_load((ROOT / "workflows" / "config" / "default.yaml").read_text())
    grid = study.check_study(default)  # the lead turns it on: the default study stays as it was
    assert not grid.probe and grid.calibrated == [] and "calibration" not in default
    run = study.run_config(default, "fspo", 0)
    assert (
        run["method_params"] == {}
        and study.run_config(default, "gspo", 0)["method_params"] == default["method_params"]["gspo"]
    )


def test_the_run_config_takes_the_calibrated_band_and_the_hand_set_values_over_it():
    config = smoke()
    config["method_params"] = {"gspo": {"eps_low": 0.005, "eps_high": 0.005}, "fspo": {"drift": "kl"}}
    data = {"rules": {"fspo": {"calibrated": {"c_low": 0.4, "c_high": 0.4}}, "gspo": {"calibrated": {}}}}
    assert study.run_config(config, "fspo", 0, data)["method_params"] == {
        "c_low": 0.4,
        "c_high": 0.4,
        "drift": "kl",
    }
    assert study.run_config(config, "gspo", 0, data)["method_params"] == {"eps_low": 0.005, "eps_high": 0.005}
    config["method_params"]["fspo"]["c_high"] = 0.1
    assert study.run_config(config, "fspo", 0, data)["method_params"] == {
        "c_low": 0.4,
        "c_high": 0.1,
        "drift": "kl",
    }


def test_the_probe_job_gets_the_train_sections_settings_unless_its_own():
    config = smoke()
    config["probe"] = {"n_prompts": 8, "lr": 0.001, "methods": ["fspo"]}
    config["method_params"]["grpo"] = {"eps_high": 0.28}
    options = study.probe_options(config)
    assert options["lr"] == 0.001 and options["n_prompts"] == 8  # the section's
    assert options["max_new_tokens"] == config["train"]["rollout"]["max_new_tokens"]  # the train section's
    assert (
        options["samples"] == config["train"]["rollout"]["samples_per_prompt"]
        and options["benchmark"] == "synthetic"
    )
    args = study.probe_args(config)
    parsed = cli.build_parser().parse_args(["probe", *args, "--out", "o"])
    assert parsed.model == study.base_model_dir(config) and parsed.n_prompts == 8 and parsed.lr == 0.001
    assert parsed.max_new_tokens == 48 and parsed.methods == ["fspo"] and parsed.set == ["grpo.eps_high=0.28"]
    assert parsed.data_dir is None and "--data-dir" not in args  # null: not given


def test_a_gpu_studys_probe_is_checked_without_its_gpu():
    # The DAG may be built on a machine without the GPU the jobs run on (a login node): the probe's
    # device is checked where the probe job runs, as the train job's is.
    paper = yaml.safe_load((ROOT / "workflows" / "config" / "paper.yaml").read_text())
    paper["probe"] = {}
    assert study.check_study(paper).probe
    assert study.probe_options(paper)["device"] == paper["train"]["device"] != "cpu"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"probe": None}, "config calibration: needs the probe of the base model"),
        ({"calibration": {"methods": ["fspo"]}}, "config calibration.target_rate: required"),
        (
            {"calibration": {"target_rate": 1.5}},
            "config calibration.target_rate: must be finite and in (0, 1), got 1.5",
        ),
        (
            {"calibration": {"target_rate": 0.1, "tolerance": 0}},
            "config calibration.tolerance: must be finite and in (0, 1)",
        ),
        ({"calibration": {"target_rate": 0.1, "nope": 1}}, "config calibration.nope: unknown field"),
        (
            {"calibration": {"target_rate": 0.1, "methods": ["seq_ppo"]}},
            "config calibration.methods[0]: 'seq_ppo' is not a method of this study (fspo, gspo)",
        ),
        (
            {"calibration": {"target_rate": 0.1, "methods": ["fsop"]}},
            "config calibration.methods[0]: unknown",
        ),
        (
            {"methods": ["ppo", "grpo"]},
            "config calibration: the study has no sequence-level rule to calibrate (methods: ppo, grpo)",
        ),
        (
            {"methods": ["sapo", "fspo"], "calibration": {"target_rate": 0.1, "methods": ["sapo"]}},
            "config calibration.methods[0]: sapo (",
        ),
        ({"probe": {"n_prompts": 1}}, "config probe.n_prompts: must be >= 2, got 1"),
        ({"probe": {"nope": 1}}, "config probe.nope: unknown field; valid: benchmark, split"),
        ({"probe": {"model": "x"}}, "config probe.model: unknown field"),
        ({"probe": {"methods": ["ppo"]}}, "config probe.methods: ppo clip tokens, not sequences"),
        ({"probe": {"split": "tset"}}, "config probe.split: synthetic has no split 'tset'"),
        (
            {"probe": {"method": "gmpo"}, "method_params": {"gmpo": {"eps_low": -1}}},
            "config method_params.gmpo: gmpo.eps_low=-1",
        ),
        ({"probe": []}, "config probe: expected a mapping"),
    ],
)
def test_the_sections_fail_naming_the_key(changes, message):
    config = smoke()
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    with pytest.raises(study.StudyConfigError) as raised:
        study.check_study(config)
    assert message in str(raised.value), str(raised.value)


def test_a_sequence_rule_without_a_band_is_refused_naming_it(new_rules):
    config = smoke()
    config["methods"] = ["fspo", "bandless"]
    with pytest.raises(
        study.StudyConfigError,
        match=r"config calibration.methods: bandless \(.*\) declares no band.*calibration.methods is empty",
    ):
        study.check_study(config)
    config["calibration"]["methods"] = ["fspo"]  # naming the rules to calibrate leaves it out
    assert study.check_study(config).calibrated == ["fspo"]


def test_the_schema_takes_the_sections_and_snakemake_inserts_no_default():
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflows" / "config" / "schema.yaml").read_text())
    config = smoke()
    jsonschema.validate(config, schema)
    for bad, message in (
        ({"probe": {"n_prompts": 1}}, "1 is less than the minimum of 2"),
        ({"probe": {"nope": 1}}, "Additional properties are not allowed"),
        ({"calibration": {"methods": []}}, "'target_rate' is a required property"),
        ({"calibration": {"target_rate": 0}}, "0 is less than or equal to the minimum of 0"),
    ):
        with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
            jsonschema.validate({**config, **bad}, schema)

    def defaults(node):  # Snakemake's validate() would write each into the config (and its hash)
        if isinstance(node, dict):
            return ("default" in node) + sum(defaults(v) for k, v in node.items() if k != "description")
        return 0

    assert defaults(schema["properties"]["probe"]) == defaults(schema["properties"]["calibration"]) == 0
    assert (
        "(default: train.rollout.max_new_tokens)"
        in schema["properties"]["probe"]["properties"]["max_new_tokens"]["description"]
    )


# --------------------------------------------------------------------------- the DAG


def dry_run(tmp_path, config, *targets):
    """A dry run of the study `config` in this process (tests/snakemake_run.py), jobs printed."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [*targets, "-n", "-p", "--forceall", "--cores", "2", "--snakefile", ROOT / "Snakefile"]
    args += ["--directory", tmp_path / "work", "--configfile", path]
    return snakemake_run.snakemake(*args, cwd=ROOT)


def jobs(stdout: str) -> list[dict]:
    """Each job of a dry run: its rule, input and shell command."""
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", stdout):
        match = re.match(r"(?:local)?rule (\w+):", block)
        if match:
            inputs = re.search(r"^\s+input: (.*)$", block, re.M)
            shell = re.search(r"^Shell command: (.*)$", block, re.M)
            out.append(
                {
                    "rule": match.group(1),
                    "input": inputs.group(1).split(", ") if inputs else [],
                    "shell": shell.group(1) if shell else "",
                }
            )
    return out


def test_the_dag_probes_calibrates_then_trains_at_the_calibrated_bands(tmp_path):
    """The smoke study's dry run: one probe job on the base model, one calibrate job on its
    sequences, every train job and the main table waiting on calibration.json; the probe's plot is
    a target of the study. With a calibration.json in place, each train job's config holds its
    calibrated band, the hand-set method_params over it."""
    result = dry_run(tmp_path, smoke())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = jobs(result.stdout)
    by_rule = {}
    for job in found:
        by_rule.setdefault(job["rule"], []).append(job)
    assert len(by_rule["probe"]) == 1 and len(by_rule["calibrate"]) == 1 and len(by_rule["train"]) == 2
    [probe_job], [calibrate_job] = by_rule["probe"], by_rule["calibrate"]
    assert probe_job["input"] == [artifacts.BASE_MODEL_MARKER]
    assert "clipbench.cli probe --model results/base/model " in probe_job["shell"]
    assert (
        "--n-prompts 16 --samples 8 --max-new-tokens 48" in probe_job["shell"]
        and "--out results/probe" in probe_job["shell"]
    )
    assert calibrate_job["input"] == [artifacts.PROBE_SEQUENCES]
    assert (
        "clipbench.cli calibrate --probe results/probe --target-rate 0.15 --tolerance 0.02 --methods fspo gspo "
        in calibrate_job["shell"]
    )
    assert (
        "--set gspo.eps_low=0.005 " in calibrate_job["shell"]
        and "--set gspo.eps_high=0.005 " in calibrate_job["shell"]
    )
    assert " --out results/calibration.json " in calibrate_job["shell"]
    for job in by_rule["train"]:
        assert artifacts.CALIBRATION_JSON in job["input"]
        assert "--config-json '<TBD>'" in job["shell"] or "<TBD>" in job["shell"]  # read when the job starts
    [table] = by_rule["main_table"]
    assert (
        artifacts.CALIBRATION_JSON in table["input"]
        and "--calibration results/calibration.json" in table["shell"]
    )
    assert "results/probe/probe.png" in result.stdout  # a target of `rule all`
    # without the sections: no probe, no calibration, the train jobs as before
    config = smoke()
    del config["probe"], config["calibration"]
    plain = dry_run(tmp_path, config)
    assert plain.returncode == 0, plain.stderr[-3000:]
    rules = [job["rule"] for job in jobs(plain.stdout)]
    assert "probe" not in rules and "calibrate" not in rules and "calibration.json" not in plain.stdout


def test_the_train_jobs_read_calibration_json(tmp_path, measured):
    """With results/calibration.json present (made by `clipbench calibrate` on a synthetic probe),
    the dry run's train commands carry its bands: fspo calibrated, gspo set by hand."""
    work = tmp_path / "work"
    write_probe_output(measured, work / artifacts.PROBE_DIR)
    argv = [
        "calibrate",
        "--probe",
        str(work / artifacts.PROBE_DIR),
        "--target-rate",
        "0.15",
        "--methods",
        "fspo",
        "gspo",
    ]
    argv += [
        "--set",
        "gspo.eps_low=0.005",
        "--set",
        "gspo.eps_high=0.005",
        "--out",
        str(work / artifacts.CALIBRATION_JSON),
    ]
    assert cli.main(argv) == 0
    calibrated = calibration.read_calibration(work / artifacts.CALIBRATION_JSON)["rules"]["fspo"][
        "calibrated"
    ]
    result = dry_run(
        tmp_path,
        smoke(),
        "results/runs/fspo/seed0/final/summary.json",
        "results/runs/gspo/seed0/final/summary.json",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    configs = {}
    for job in jobs(result.stdout):
        if job["rule"] == "train":
            cfg = json.loads(re.search(r"--config-json '(\{.*\})' --out", job["shell"]).group(1))
            configs[cfg["method"]] = cfg["method_params"]
    assert configs == {"fspo": calibrated, "gspo": {"eps_low": 0.005, "eps_high": 0.005}}
