"""`clipbench probe` (clipbench/probe.py) and what it adds to clipbench.fairness and
clipbench.simulate: the prefix-sum ladder, the two S-growth exponents recovered from synthetic
log-ratios of known structure, the statistics against hand-computed values, the bootstrap's unit
(the prompt group), the split, the rules' clip indicators on real log-ratios, and the command on a
tiny model (outputs, fallback advantages, option errors before any compute)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm
from tiny_policy import load_policy

from clipbench import artifacts, cli, fairness, methods, probe, simulate
from clipbench.models import save_model

# --------------------------------------------------------------------------- the prefix ladder


def test_prefix_ladder_doubles_from_8_up_to_the_longest():
    assert fairness.prefix_ladder(7) == ()
    assert fairness.prefix_ladder(8) == (8,)
    assert fairness.prefix_ladder(40) == (8, 16, 32)
    assert fairness.prefix_ladder(256) == (8, 16, 32, 64, 128, 256)
    assert fairness.prefix_ladder(10, start=2) == (2, 4, 8)


def test_the_default_ladder_stops_where_fewer_than_8_sequences_reach():
    assert probe.default_ladder([10] * 10 + [20] * 8 + [70] * 3) == (8, 16)
    assert probe.default_ladder([20, 40]) == (8, 16)  # fewer than 8 sequences: all must reach


def test_prefix_sums_by_hand():
    # Two rows in the trainer's layout: the response after a prompt (mask off there), garbage
    # (NaN, 99) off the mask.
    log_ratio = np.array([[np.nan, 99.0, 1.0, -2.0, 4.0, 0.5], [3.0, 1.0, 1.0, np.nan, 7.0, 7.0]])
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=bool)
    out = fairness.prefix_sums(log_ratio, mask, (1, 2, 4))
    expected = np.array([[1.0, -1.0, 3.5], [3.0, 4.0, np.nan]])
    np.testing.assert_array_equal(out, expected)


def test_prefix_sums_equal_the_per_token_cumulative_sums():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=64)
    offsets = rng.integers(0, 40, size=64)  # a prompt before each response
    width = int((lengths + offsets).max()) + 5
    values = rng.normal(size=(64, width))
    mask = np.zeros((64, width), dtype=bool)
    for i, (off, n) in enumerate(zip(offsets, lengths, strict=True)):
        mask[i, off : off + n] = True
    values[~mask] = np.nan  # never read
    ks = fairness.prefix_ladder(int(lengths.max()))
    out = fairness.prefix_sums(values, torch.from_numpy(mask), ks)  # a tensor mask works
    for i in range(64):
        cumulative = np.cumsum(values[i][mask[i]])
        for j, k in enumerate(ks):
            if k <= lengths[i]:
                assert out[i, j] == pytest.approx(cumulative[k - 1], rel=1e-12, abs=1e-12)
            else:
                assert math.isnan(out[i, j])


def test_prefix_sums_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        fairness.prefix_sums(np.zeros((2, 3)), np.ones((2, 4), dtype=bool), (1,))


# --------------------------------------------------------------------------- the exponents

SIGMA, G = 0.05, 4
LENGTHS = (32, 64, 128, 256)


def draw(scale, per_length=1500, seed=0):
    """Sequences of the lengths LENGTHS, `per_length` each, l_t ~ N(0, (SIGMA scale(L, t))^2),
    in groups of G consecutive rows (shuffled lengths)."""
    rng = np.random.default_rng(seed)
    lengths = rng.permutation(np.repeat(LENGTHS, per_length))
    seqs = [SIGMA * scale(L, np.arange(L)) * rng.normal(size=L) for L in lengths]
    group = np.arange(len(seqs)) // G
    return probe.Measurement.from_sequences(seqs, group, rng.choice([-1.0, 1.0], len(seqs))), lengths


def slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def measure(m, lengths, ks=None):
    return probe.measurement_statistics(
        m, edges=fairness.exact_length_edges(lengths), ks=ks, n_resamples=20, seed=0
    )


def test_iid_log_ratios_give_one_half_for_both():
    m, lengths = draw(lambda L, t: np.ones_like(t, dtype=float))
    out = measure(m, lengths)
    assert out["a"]["value"] == pytest.approx(0.5, abs=0.05)
    assert out["a_within"]["value"] == pytest.approx(0.5, abs=0.05)
    assert out["lag1_autocorrelation"]["value"] == pytest.approx(0.0, abs=0.02)
    assert out["token_mean"]["value"] == pytest.approx(0.0, abs=0.002)
    # mean |l_t| = sigma sqrt(2 / pi) at every position
    for block in out["position"]:
        assert block["abs_l_mean"]["value"] == pytest.approx(SIGMA * math.sqrt(2 / math.pi), rel=0.03)


def test_a_scale_growing_with_length_gives_a_above_one_half():
    gamma = 0.3
    m, lengths = draw(lambda L, t: np.full(L, (L / 32) ** gamma))
    out = measure(m, lengths)
    # across: median |S| = 0.674 sigma (L/32)^gamma sqrt(L), so a = 1/2 + gamma exactly
    assert out["a"]["value"] == pytest.approx(0.5 + gamma, abs=0.05)
    # within, over the sequences with L >= k: the median of a mixture of N(0, sigma_L^2 k)
    ks = fairness.prefix_ladder(max(LENGTHS))

    def mixture_median(k):
        scales = [SIGMA * (L / 32) ** gamma * math.sqrt(k) for L in LENGTHS if L >= k]
        return brentq(lambda x: np.mean([2 * norm.cdf(x / s) - 1 for s in scales]) - 0.5, 1e-9, 100)

    truth = slope(ks, [mixture_median(k) for k in ks])
    assert truth > 0.55
    assert out["a_within"]["value"] == pytest.approx(truth, abs=0.05)
    # Up to the shortest length every rung sees every sequence: a random walk, 1/2 within.
    restricted = measure(m, lengths, ks=(8, 16, 32))
    assert restricted["a_within"]["value"] == pytest.approx(0.5, abs=0.05)


def test_a_scale_decaying_with_position_gives_both_below_one_half():
    delta = 0.35
    m, lengths = draw(lambda L, t: (t + 1.0) ** -delta)
    out = measure(m, lengths)

    def median(n):  # 0.674 sigma sqrt(sum_{t < n} (t + 1)^(-2 delta))
        return norm.ppf(0.75) * SIGMA * math.sqrt(np.sum((np.arange(n) + 1.0) ** (-2 * delta)))

    ks = fairness.prefix_ladder(max(LENGTHS))
    a_truth, a_w_truth = slope(LENGTHS, [median(L) for L in LENGTHS]), slope(ks, [median(k) for k in ks])
    assert a_truth < 0.45 and a_w_truth < 0.45
    assert out["a"]["value"] == pytest.approx(a_truth, abs=0.05)
    assert out["a_within"]["value"] == pytest.approx(a_w_truth, abs=0.05)
    # mean |l_t| falls along the response
    means = [b["abs_l_mean"]["value"] for b in out["position"]]
    assert means == sorted(means, reverse=True)


# --------------------------------------------------------------------------- the statistics


def hand_measurement():
    seqs = [[1.0, -1.0, 2.0], [0.5, 0.5], [-2.0, 1.0, 1.0, 1.0], [3.0]]
    return probe.Measurement.from_sequences([np.array(s) for s in seqs], [0, 0, 1, 1], [1.0, -1.0, 1.0, -1.0])


def test_statistics_by_hand():
    m = hand_measurement()
    out = probe.measurement_statistics(m, edges=np.array([1.0, 2.5, 5.0]), ks=(1, 2), n_resamples=10)
    # every l_t: mean 0.7; lag-1 pairs (1,-1) (-1,2) (.5,.5) (-2,1) (1,1) (1,1) about 0.7: -3.31 / 17.6
    assert out["token_mean"]["value"] == pytest.approx(0.7)
    assert out["lag1_autocorrelation"]["value"] == pytest.approx(-3.31 / 17.6)
    # bins L in {1, 2}: S = 1, 3; L in {3, 4}: S = 2, 1
    bins = out["by_length_bin"]
    assert [b["n"] for b in bins] == [2, 2]
    assert [b["abs_s_median"]["value"] for b in bins] == pytest.approx([2.0, 1.5])
    assert [b["s_mean"]["value"] for b in bins] == pytest.approx([2.0, 1.5])
    assert [b["s_std"]["value"] for b in bins] == pytest.approx([math.sqrt(2), math.sqrt(0.5)])
    x0, x1 = (math.log(1) + math.log(2)) / 2, (math.log(3) + math.log(4)) / 2
    assert out["a"]["value"] == pytest.approx((math.log(1.5) - math.log(2.0)) / (x1 - x0))
    # S_1 = 1, .5, -2, 3 (median |.| 1.5); S_2 = 0, 1, -1 (median 1; L = 1 has none)
    assert [p["n"] for p in out["prefix"]] == [4, 3]
    assert [p["abs_s_median"]["value"] for p in out["prefix"]] == pytest.approx([1.5, 1.0])
    assert out["a_within"]["value"] == pytest.approx(-math.log(1.5) / math.log(2))
    # |l_t| over positions [0, 1), [1, 2), [2, 4)
    assert [p["positions"] for p in out["position"]] == [[0, 1], [1, 2], [2, 4]]
    assert [p["abs_l_mean"]["value"] for p in out["position"]] == pytest.approx([6.5 / 4, 2.5 / 3, 4 / 3])


def test_the_across_exponent_is_fairness_s_growth_exponent():
    m, lengths = draw(lambda L, t: (t + 1.0) ** -0.2, per_length=200, seed=3)
    edges = fairness.length_bin_edges(m.lengths, 5)
    out = probe.measurement_statistics(m, edges=edges, n_resamples=10)
    records = probe.rule_records(m, {"fspo": methods.get_method("fspo")})
    _, summary = fairness.fairness_summary(records, edges=edges)
    assert out["a"]["value"] == pytest.approx(summary["s_exponent"].iloc[0], rel=1e-12)
    # rule_predictions checks the same, and refuses another value
    probe.rule_predictions(m, {"fspo": methods.get_method("fspo")}, edges, n_resamples=5, a=out["a"]["value"])
    with pytest.raises(RuntimeError, match="S-growth exponent"):
        probe.rule_predictions(m, {"fspo": methods.get_method("fspo")}, edges, n_resamples=5, a=0.123)


def test_fairness_prefix_functions_give_the_probes_within_exponent():
    # What the trainer can reuse on its records (prefix_sums, prefix_abs_medians,
    # within_sequence_exponent) gives the probe's point values.
    m, _ = draw(lambda L, t: (t + 1.0) ** -0.2, per_length=100, seed=4)
    out = probe.measurement_statistics(m, n_resamples=5)
    ks = [p["k"] for p in out["prefix"]]
    medians, counts = fairness.prefix_abs_medians(fairness.prefix_sums(m.log_ratio, m.mask, ks))
    assert counts.tolist() == [p["n"] for p in out["prefix"]]
    assert medians == pytest.approx([p["abs_s_median"]["value"] for p in out["prefix"]], rel=1e-12)
    assert fairness.within_sequence_exponent(medians, ks) == pytest.approx(
        out["a_within"]["value"], rel=1e-12
    )


def test_the_bootstrap_resamples_prompt_groups():
    # Each sequence repeated 3 times within its group is the same data at the group level: the
    # same points and intervals. A bootstrap over sequences would narrow them by about sqrt(3).
    rng = np.random.default_rng(1)
    seqs = [rng.normal(0, 0.1, int(n)) for n in rng.integers(8, 200, size=40)]
    single = probe.Measurement.from_sequences(seqs, range(40), np.ones(40))
    tripled = probe.Measurement.from_sequences(
        [s for s in seqs for _ in range(3)], np.repeat(np.arange(40), 3), np.ones(120)
    )
    edges = fairness.length_bin_edges(single.lengths, 4)
    a = probe.measurement_statistics(single, edges=edges, n_resamples=200)
    b = probe.measurement_statistics(tripled, edges=edges, n_resamples=200)
    for key in ("a", "a_within", "lag1_autocorrelation", "token_mean"):
        assert b[key] == pytest.approx(a[key], rel=1e-9), key
    assert a["a"]["hi"] - a["a"]["lo"] > 0


# --------------------------------------------------------------------------- the split and the rules


@pytest.mark.parametrize("n_prompts", [2, 3, 8, 17])
def test_the_split_never_puts_a_prompt_group_on_both_sides(n_prompts):
    for seed in range(20):
        update, measured = probe.split_groups(n_prompts, seed)
        assert not set(update) & set(measured)
        assert sorted(update + measured) == list(range(n_prompts))
        assert len(update) == n_prompts // 2 and measured
        rows_u, rows_m = probe.group_rows(update, 4), probe.group_rows(measured, 4)
        assert not set(rows_u) & set(rows_m)
        assert {r // 4 for r in rows_u} == set(update)
    assert probe.split_groups(8, 0) != probe.split_groups(8, 1)  # seeded, not fixed


def test_fallback_signs_are_seeded_signs():
    signs = probe.fallback_signs(1000, 0)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.mean()) < 0.1
    np.testing.assert_array_equal(signs, probe.fallback_signs(1000, 0))


def test_the_rules_see_the_measured_log_ratios_through_the_simulators_path():
    # Hand-placed S against each band: FSPO (c = 0.1) keeps |S| <= 0.1 sqrt(L); seq_ppo keeps
    # S in [log 0.8, log 1.2]. The per-token values spread S over the response.
    lengths = [4, 4, 16, 16]
    totals = [0.15, 0.25, 0.35, 0.45]  # FSPO bounds 0.2 (L = 4), 0.4 (L = 16)
    seqs = [np.full(L, s / L) for L, s in zip(lengths, totals, strict=True)]
    m = probe.Measurement.from_sequences(seqs, [0, 0, 1, 1], [1.0, 1.0, 1.0, 1.0])
    rules = {
        "fspo": methods.get_method("fspo", c_low=0.1, c_high=0.1),
        "seq_ppo": methods.get_method("seq_ppo"),
    }
    records = probe.rule_records(m, rules)
    fspo = records[records.method == "fspo"]
    assert fspo["seq_out"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert fspo["S"].to_numpy() == pytest.approx(totals)
    assert records[records.method == "seq_ppo"]["seq_out"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert records["step"].tolist() == [0, 0, 1, 1] * 2  # the prompt group, the resampling unit
    # the same outputs as the simulation's function on the same tensors
    direct = simulate.rule_outputs(rules, *probe._tensors(m))
    assert fspo["seq_out"].tolist() == direct["fspo"].seq_out.tolist()


def test_the_flattest_band_finds_the_power_law():
    # |S| = L^0.8 |z|: a band c L^b clips every length alike at b = 0.8.
    rng = np.random.default_rng(2)
    lengths = np.repeat([8, 32, 128, 512], 300)
    totals = lengths**0.8 * rng.normal(size=lengths.size)
    seqs = [np.full(L, s / L) for L, s in zip(lengths, totals, strict=True)]
    m = probe.Measurement.from_sequences(seqs, np.arange(lengths.size) // 4, np.ones(lengths.size))
    edges = fairness.exact_length_edges(lengths)
    grid, pick = probe.flattest_band(m, edges, target_rate=0.2)
    assert pick["b"] == pytest.approx(0.8, abs=0.1)
    assert grid["clip_rate"].to_numpy() == pytest.approx(0.2, abs=0.01)
    assert grid.set_index("b").loc[0.0, "spread"] > 1  # a fixed band clips long ones far more
    # each grid row is clipbench.fairness's summary of that powerband's clip records
    for row in grid.iloc[[0, 16, 40]].itertuples(index=False):
        rule = methods.get_method("powerband", c_low=row.c, c_high=row.c, b=row.b, fit=False)
        _, summary = fairness.fairness_summary(probe.rule_records(m, {"powerband": rule}), edges=edges)
        for key in ("clip_rate", "spread", "lre"):
            assert getattr(row, key) == pytest.approx(summary[key].iloc[0], rel=1e-12), (row.b, key)


def test_one_length_bin_gives_no_flattest_band():
    m = probe.Measurement.from_sequences([np.full(8, 0.1)] * 4, [0, 0, 1, 1], np.ones(4))
    grid, pick = probe.flattest_band(m, fairness.length_bin_edges(m.lengths))
    assert pick["b"] is None and "one length bin" in pick["reason"] and grid.empty


def test_the_reading_says_what_the_numbers_allow():
    def iv(value, lo, hi):
        return {"value": value, "lo": lo, "hi": hi}

    def rule(name, spread, rate):
        return {"method": name, "spread": spread, "clip_rate": rate}

    summary = {
        "exponents": {
            "a": iv(1.0, -0.2, 2.0),
            "a_within": iv(0.3, 0.2, 0.4),
            "token_mean": iv(0.0, 0.0, 0.0),
        },
        "bootstrap": {"level": 0.95, "units": 8},
        "by_length_bin": [{"bin_lo": 1, "bin_hi": 2}, {"bin_lo": 2, "bin_hi": 3}],
        "flattest_band": {"b": None},
        "rules": [
            rule("fspo", iv(0.0, 0.0, 0.0), iv(0.0, 0.0, 0.0)),
            rule("gspo", iv(0.2, 0.1, 0.3), iv(0.3, 0.2, 0.4)),
            rule("seq_ppo", iv(1.5, 1.0, 2.0), iv(0.3, 0.2, 0.4)),
        ],
        "advantages": {"source": "random_signs", "note": "NOTE"},
        "rollout": {"measured": 32},
        "config": {"updates": 2, "lr": 1e-6},
    }
    text = "\n".join(probe.recommendation(summary))
    assert "too wide to choose" in text  # a's interval holds 0, 1/2 and 1
    assert "fspo clip nothing here" in text  # a spread of 0 from no clipping is not flatness
    assert "gspo's spread interval lies below every other clipping rule's" in text
    assert "Advantages: NOTE" in text
    summary["exponents"]["a"] = iv(1.0, 0.7, 1.3)
    text = "\n".join(probe.recommendation(summary))
    assert "too wide" not in text and "a_w lies below a" in text
    assert "FSPO's sqrt(L) (b = 0.5) lies below a's interval: it clips long responses more" in text
    assert "GSPO's S/L band (b = 1) lies inside a's interval" in text


# --------------------------------------------------------------------------- the command

TINY = ["--benchmark", "synthetic", "--n-prompts", "6", "--samples", "4", "--max-new-tokens", "40"]
TINY += ["--resamples", "50", "--lr", "0.01", "--updates", "2"]


@pytest.fixture(scope="module")
def eos_model(base_model, tmp_path_factory):
    """The session's random model with EOS made likely, saved: responses of many lengths."""
    model, tokenizer = load_policy(base_model)
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("eos") / "model"))


@pytest.fixture(scope="module")
def parity_probe(eos_model, tmp_path_factory):
    """One probe run on the EOS model with the parity reward (rewards with a gradient): (its
    folder, what it printed)."""
    import contextlib
    import io

    from conftest import parity_reward

    from clipbench.trainer import Trainer

    out = tmp_path_factory.mktemp("parity") / "probe"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(Trainer, "_score", parity_reward)
        assert cli.main(["probe", "--model", eos_model, *TINY, "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_probe_on_a_tiny_model(parity_probe):
    out, printed = parity_probe
    paths = artifacts.probe_paths(out)
    summary = json.loads(paths["summary"].read_text())
    assert summary["advantages"]["source"] == "verifier"
    assert "random sign" not in printed
    assert summary["provenance"]["commit"] and summary["provenance"]["config"]["seed"] == 0
    rollout = summary["rollout"]
    assert not set(rollout["update_groups"]) & set(rollout["measure_groups"])
    assert len(summary["updates"]) == 2
    sequence_rules = [
        n for n in methods.available_methods() if methods.get_method_class(n).level == "sequence"
    ]
    assert [r["method"] for r in summary["rules"]] == sequence_rules
    assert summary["exponents"]["a"]["value"] is not None and len(summary["by_length_bin"]) >= 2
    for key in ("a", "a_within", "lag1_autocorrelation", "token_mean"):
        interval = summary["exponents"][key]
        assert interval["lo"] <= interval["value"] <= interval["hi"], key
    assert summary["recommendation"] and printed.startswith(summary["recommendation"][0])
    # the per-sequence file: S and every S_k are the cumulative sums of its log-ratios
    frame, prov = probe.read_sequences(paths["sequences"])
    assert prov["commit"] == summary["provenance"]["commit"]
    assert len(frame) == rollout["measured"] == 12
    assert set(frame["problem"]) == set(rollout["measure_problems"])
    assert frame["log_ratio"].map(lambda x: np.abs(x).sum()).sum() > 0  # the updates moved the policy
    for row in frame.itertuples(index=False):
        cumulative = np.cumsum(row.log_ratio)
        assert len(row.log_ratio) == row.length and row.S == pytest.approx(cumulative[-1])
        for k in probe.default_ladder(frame["length"]):
            value = getattr(row, f"S_{k}")
            assert math.isnan(value) if k > row.length else value == pytest.approx(cumulative[k - 1])
    assert {f"seq_out_{n}" for n in sequence_rules} <= set(frame.columns)
    assert paths["plot"].stat().st_size > 0


def test_the_probe_is_deterministic(eos_model, parity_probe, tmp_path, parity):
    out, _ = parity_probe
    summary = json.loads(artifacts.probe_paths(out)["summary"].read_text())
    frame, _ = probe.read_sequences(artifacts.probe_paths(out)["sequences"])
    again = tmp_path / "again"
    assert cli.main(["probe", "--model", eos_model, *TINY, "--out", str(again)]) == 0
    second = json.loads(artifacts.probe_paths(again)["summary"].read_text())
    for key in ("exponents", "rules", "by_length_bin", "prefix", "flattest_band", "updates"):
        assert second[key] == summary[key], key
    pd.testing.assert_frame_equal(probe.read_sequences(artifacts.probe_paths(again)["sequences"])[0], frame)


def test_calibrate_reads_the_probes_own_measurement(parity_probe, tmp_path, capsys):
    """`clipbench calibrate` on the tiny probe's folder: the measurement it reads back is the one the
    probe's numbers came from (S and each rule's seq_out as sequences.parquet holds them), and each
    calibrated band's rate is its seq_out recomputed on those log-ratios."""
    from clipbench import calibration

    out, _ = parity_probe
    sequences = artifacts.probe_paths(out)["sequences"]
    m, prov = probe.read_measurement(sequences)
    frame, _ = probe.read_sequences(sequences)
    assert prov["config"]["n_prompts"] == 6 and len(m.lengths) == len(frame) == 12
    np.testing.assert_allclose(m.seq_log_ratio, frame["S"], rtol=0, atol=1e-12)
    tensors = calibration.measurement_tensors(m)
    for name in probe.sequence_rules():  # at the bands the probe predicted (the defaults)
        rate = calibration.out_of_band_rate(methods.get_method(name), tensors)
        assert rate == pytest.approx(frame[f"seq_out_{name}"].mean(), abs=1e-12), name
    calibration_file = tmp_path / "calibration.json"
    argv = ["calibrate", "--probe", str(out), "--target-rate", "0.25", "--tolerance", "0.09"]
    assert cli.main([*argv, "--methods", "fspo", "seq_ppo", "--out", str(calibration_file)]) == 0
    data = json.loads(calibration_file.read_text())
    assert data["probe"]["responses"] == 12 and data["probe"]["seed"] == 0
    for name, rule in data["rules"].items():
        assert abs(rule["rate"] - 0.25) <= 0.09
        built = methods.get_method(name, **rule["calibrated"])
        assert calibration.out_of_band_rate(built, tensors) == rule["rate"], name


def test_probe_falls_back_to_random_signs_and_says_so(eos_model, tmp_path, capsys):
    # The random model never answers right: the real verifier gives every response 0.
    out = tmp_path / "probe"
    assert cli.main(["probe", "--model", eos_model, *TINY, "--resamples", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(artifacts.probe_paths(out)["summary"].read_text())
    assert summary["rollout"]["reward_mean"] == 0
    assert summary["advantages"]["source"] == "random_signs"
    assert summary["advantages"]["update_groups_with_signal"] == 0
    assert "random sign" in printed
    frame, _ = probe.read_sequences(artifacts.probe_paths(out)["sequences"])
    assert set(frame["advantage"]) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "options, message",
    [
        (["--n-prompts", "1"], "--n-prompts: must be >= 2"),
        (["--samples", "1"], "--samples: must be >= 2"),
        (["--updates", "0"], "--updates: must be >= 1"),
        (["--lr", "-1"], "--lr: must be finite and > 0"),
        (["--target-rate", "1"], "--target-rate: must be finite and in (0, 1)"),
        (["--benchmark", "nope"], "--benchmark: unknown benchmark 'nope'"),
        (["--split", "nope"], "--split: synthetic has no split 'nope'"),
        (["--method", "nope"], "--method: unknown method 'nope'"),
        (["--methods", "ppo"], "--methods: ppo clip tokens, not sequences"),
        (["--methods", "nope"], "--methods[0]: unknown"),
        (["--set", "fspo.c_low=-1"], "--set: fspo.c_low=-1: must be in (0"),
        (["--set", "ppo.eps_low=0.1"], "--set: ppo is neither predicted"),
        (["--set", "fspo.nope=1"], "--set: method 'fspo' has no hyperparameter 'nope'"),
        (["--set", "fspo"], "--set 'fspo': expected METHOD.FIELD=VALUE"),
        (["--device", "tpu"], "--device: must be"),
        (["--max-tokens-per-microbatch", "0"], "--max-tokens-per-microbatch: must be >= 1"),
        (["--benchmark", "gsm8k", "--data-dir", "/nonexistent"], "--data-dir: "),
    ],
)
def test_bad_options_fail_naming_the_option_before_any_compute(
    options, message, tmp_path, capsys, monkeypatch, base_model
):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("clipbench.trainer.load_model", no_loading)
    out = tmp_path / "probe"
    argv = ["probe", "--model", base_model, *TINY, *options, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipbench probe: error: ") and message in err, err
    assert not out.exists()


def test_the_options_reach_the_updates_config():
    config, carrier = probe.load_probe_config(
        {"model": "m", "benchmark": "synthetic", "updates": 1, "lr": 3e-6, "n_prompts": 5, "samples": 3}
        | {"max_tokens_per_microbatch": 64, "logprob_chunk_tokens": 16, "method": "fspo", "estimator": "rloo"}
        | {"method_params": {"fspo": {"c_low": 0.5}}}
    )
    # one step of P x G samples; the update half is one minibatch, K epochs over it (K = 1 allowed)
    assert (carrier.rollout.prompts_per_step, carrier.rollout.samples_per_prompt) == (5, 3)
    assert (carrier.optim.minibatches, carrier.optim.epochs, carrier.optim.lr) == (1, 1, 3e-6)
    assert (carrier.optim.max_tokens_per_microbatch, carrier.optim.logprob_chunk_tokens) == (64, 16)
    assert carrier.build_method().c_low == 0.5 and carrier.advantage.estimator == "rloo"
    assert config.rule_names() == probe.sequence_rules()


def test_a_missing_model_is_named_as_the_model_option(tmp_path, capsys):
    out = tmp_path / "probe"
    assert cli.main(["probe", "--model", str(tmp_path / "none"), *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--model: " in err and "no such model directory" in err, err
