"""The band-geometry simulation and the `clipbench simulate` command."""

import math

import pandas as pd
import pytest

from clipbench import cli, methods
from clipbench.simulate import DEFAULT_LENGTHS, SimulationConfig, simulate, write_outputs


def normal_two_sided_tail(z: float) -> float:
    return math.erfc(z / math.sqrt(2))


def test_band_geometry_fspo_flat_seq_ppo_rises_gspo_falls():
    # The property: l_t ~ N(0, 0.01^2), 8k sequences per length, L = 8 ... 4096,
    # FSPO at c = 0.015, seq_ppo and gspo at their defaults. Direct calculation: spreads about
    # 0.07 (FSPO, sampling noise only), 2.9 (seq_ppo) and 1.6 (gspo).
    config = SimulationConfig(
        sigma=0.01,
        lengths=DEFAULT_LENGTHS,
        n=8_000,  # 20k before: 2.5x the time for a binomial sd of 0.0024 instead of 0.0038
        methods=("fspo", "seq_ppo", "gspo"),
        method_params={"fspo": {"c_low": 0.015, "c_high": 0.015}},
    )
    result = simulate(config)
    summary = result.summary.set_index("method")
    assert summary.loc["fspo", "spread"] < 0.15
    assert summary.loc["seq_ppo", "spread"] > 1 and summary.loc["seq_ppo", "slope"] > 0
    assert summary.loc["gspo", "spread"] > 1 and summary.loc["gspo", "slope"] < 0
    # i.i.d. per-token log-ratios: median |S| grows as sqrt(L), the regime FSPO's band is built for.
    assert summary["s_exponent"].to_numpy() == pytest.approx(0.5, abs=0.02)
    # FSPO's rate at every length is the Gaussian tail at c / sigma = 1.5 (binomial sd ~0.0038: 3 sd).
    fspo = result.by_length[result.by_length.method == "fspo"]
    assert fspo["seq_out"].to_numpy() == pytest.approx(normal_two_sided_tail(1.5), abs=0.012)
    # seq_ppo rises and gspo falls monotonically with length.
    assert result.by_length[result.by_length.method == "seq_ppo"]["seq_out"].is_monotonic_increasing
    assert result.by_length[result.by_length.method == "gspo"]["seq_out"].is_monotonic_decreasing


def test_token_rules_clip_the_same_at_every_length():
    # Token rules clip tokens, not sequences: at sigma = 0.2 every length has the same share of
    # tokens outside [0.8, 1.2]; seq_out is that share, so its spread is sampling noise only.
    result = simulate(SimulationConfig(sigma=0.2, lengths=(8, 64, 512), n=400, methods=("ppo", "grpo")))
    expected = (1 - 0.5 * math.erfc(-math.log(1.2) / (0.2 * math.sqrt(2)))) + 0.5 * math.erfc(
        -math.log(0.8) / (0.2 * math.sqrt(2))
    )
    assert result.by_length["seq_out"].to_numpy() == pytest.approx(expected, abs=0.03)
    assert (result.summary["spread"] < 0.25).all()


def test_fspo_kl_drift_option_follows_a_drifting_mean():
    # With a negative drift mu = -0.0005 per token, a zero-centred band clips long responses
    # (mean S = mu L leaves it), while drift="kl" recentres the band and stays flat.
    config = SimulationConfig(
        sigma=0.01,
        mu=-0.0005,
        lengths=(16, 256, 2048),
        n=2000,
        methods=("fspo",),
        method_params={"fspo": {"c_low": 0.015, "c_high": 0.015}},
    )
    plain = simulate(config).summary.iloc[0]
    recentred = simulate(
        SimulationConfig(
            **{**config.__dict__, "method_params": {"fspo": {"c_low": 0.015, "c_high": 0.015, "drift": "kl"}}}
        )
    ).summary.iloc[0]
    assert plain["spread"] > 1 and plain["slope"] > 0
    assert recentred["spread"] < 0.3


def test_outputs_are_deterministic_and_traceable(tmp_path):
    config = SimulationConfig(lengths=(8, 64, 512), n=300, seed=3)
    first = write_outputs(simulate(config), tmp_path / "a")
    second = write_outputs(simulate(config), tmp_path / "b")
    for kind in ("csv", "table"):
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
    other = write_outputs(simulate(SimulationConfig(lengths=(8, 64, 512), n=300, seed=4)), tmp_path / "c")
    assert first["csv"].read_bytes() != other["csv"].read_bytes()
    table = pd.read_csv(first["csv"])
    assert list(table.columns) == ["method", "length", "n", "seq_out", "seq_clip"]
    assert set(table["method"]) == set(methods.available_methods())
    assert first["plot"].stat().st_size > 10_000
    import json

    prov = json.loads(first["provenance"].read_text())
    assert prov["seed"] == 3 and prov["config"]["n"] == 300 and prov["versions"]["torch"]
    assert prov["config_hash"] in first["table"].read_text()


def test_adding_a_length_does_not_change_the_others():
    base = simulate(SimulationConfig(lengths=(8, 64), n=500, methods=("fspo",))).by_length
    more = simulate(SimulationConfig(lengths=(8, 32, 64), n=500, methods=("fspo",))).by_length
    merged = base.merge(more, on=["method", "length"], suffixes=("", "_more"))
    assert (merged["seq_out"] == merged["seq_out_more"]).all()


def test_invalid_configs_fail_before_compute():
    with pytest.raises(ValueError, match="sigma"):
        SimulationConfig(sigma=0)
    with pytest.raises(ValueError, match="lengths"):
        SimulationConfig(lengths=(0, 8))
    with pytest.raises(ValueError, match="method_params names methods not simulated"):
        SimulationConfig(methods=("ppo",), method_params={"fspo": {"c_low": 0.1}})


def test_cli_simulate_writes_the_four_outputs(tmp_path, capsys):
    code = cli.main(
        [
            "simulate",
            "--lengths",
            "8,64",
            "--n",
            "200",
            "--methods",
            "fspo",
            "gspo",
            "--set",
            "fspo.c_low=0.02",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| fspo | sequence | c_low=0.02, c_high=0.03, drift=none |" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip_by_length.png",
        "provenance.json",
        "simulation.csv",
        "simulation.md",
    ]


def test_cli_reports_bad_parameters(tmp_path, capsys):
    assert cli.main(["simulate", "--n", "10", "--set", "fspo.c_low=-1", "--out", str(tmp_path)]) == 2
    assert "fspo.c_low=-1: must be in (0, inf)" in capsys.readouterr().err
    assert cli.main(["simulate", "--n", "10", "--methods", "fpso", "--out", str(tmp_path)]) == 2
    assert "unknown method 'fpso'" in capsys.readouterr().err
    assert cli.main(["simulate", "--set", "c_low=1", "--out", str(tmp_path)]) == 2
    assert "expected METHOD.FIELD=VALUE" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_lists_commands_and_methods(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    helptext = capsys.readouterr().out
    assert "simulate" in helptext and "methods" in helptext
    assert cli.main(["methods"]) == 0
    assert "fspo (sequence level)" in capsys.readouterr().out
