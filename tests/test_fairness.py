"""Length-fairness metrics: hand-computed values on small tidy records."""

import math

import numpy as np
import pandas as pd
import pytest

from clipbench import artifacts, fairness


def records(method, lengths_and_flags):
    return pd.DataFrame(
        [
            {"method": method, "length": L, "seq_out": out, "seq_clip": clip}
            for L, out, clip in lengths_and_flags
        ]
    )


def test_two_equal_bins():
    # Bin 0 (L = 10): 10 sequences, 1 out  -> r = 0.1; bin 1 (L = 100): 10 sequences, 3 out -> 0.3.
    # spread = (0.3 - 0.1) / 0.2 = 1; k = (0.9, 0.7), k_bar = 0.8,
    # LRE = 0.5 |0.9/0.8 - 1| + 0.5 |0.7/0.8 - 1| = 0.125; slope = 0.2 / (log 100 - log 10).
    rows = [(10, float(i < 1), 0.0) for i in range(10)] + [
        (100, float(i < 3), float(i < 1)) for i in range(10)
    ]
    by_bin, summary = fairness.fairness_summary(records("m", rows), edges=np.array([10, 50, 100]))
    assert by_bin["seq_out"].tolist() == pytest.approx([0.1, 0.3])
    assert by_bin["seq_clip"].tolist() == pytest.approx([0.0, 0.1])
    assert by_bin["share"].tolist() == [0.5, 0.5]
    row = summary.iloc[0]
    assert row["clip_rate"] == pytest.approx(0.2)
    assert row["spread"] == pytest.approx(1.0)
    assert row["lre"] == pytest.approx(0.125)
    assert row["slope"] == pytest.approx(0.2 / math.log(10))
    _, on_clip = fairness.fairness_summary(
        records("m", rows), edges=np.array([10, 50, 100]), clip_column="seq_clip"
    )
    assert on_clip.iloc[0]["spread"] == pytest.approx(2.0)  # (0.1 - 0) / 0.05


def test_lre_with_unequal_shares():
    # p = (0.25, 0.75), r = (0, 0.4): k = (1, 0.6), k_bar = 0.25 + 0.45 = 0.7,
    # LRE = 0.25 |1/0.7 - 1| + 0.75 |0.6/0.7 - 1| = 0.25 * 3/7 + 0.75 * 1/7 = 1.5/7.
    assert fairness.length_reweighting_error([0.0, 0.4], [0.25, 0.75]) == pytest.approx(1.5 / 7)
    # Shares are normalised: counts work as well as fractions.
    assert fairness.length_reweighting_error([0.0, 0.4], [1, 3]) == pytest.approx(1.5 / 7)


def test_summary_weights_bins_by_their_share_of_sequences():
    # Off-policy updates only (update > 0): bin 0 (L = 10) holds 5 sequences, none out -> r = 0;
    # bin 1 (L = 100) holds 15, 6 out -> r = 0.4. Shares p = (0.25, 0.75).
    # clip rate = sum p_b r_b = 0.3 (= 6 / 20; the unweighted mean of the bins would be 0.2);
    # k = (1, 0.6), k_bar = 0.25 * 1 + 0.75 * 0.6 = 0.7,
    # LRE = 0.25 |1 / 0.7 - 1| + 0.75 |0.6 / 0.7 - 1| = 0.25 * 3/7 + 0.75 * 1/7 = 1.5 / 7 = 0.2143
    # (equal shares would give k_bar = 0.8 and LRE = 0.25); spread = (0.4 - 0) / 0.2 = 2 (by definition
    # over the bins, unweighted). The update-0 rows (20 never-clipped short ones) are left out: kept,
    # they would make the shares (25/40, 15/40).
    rows = [(10, 0.0, 0.0)] * 5 + [(100, float(i < 6), 0.0) for i in range(15)]
    frame = pd.concat(
        [records("m", rows).assign(update=1), records("m", [(10, 0.0, 0.0)] * 20).assign(update=0)]
    )
    by_bin, summary = fairness.fairness_summary(frame, edges=np.array([10, 50, 100]))
    assert by_bin["n"].tolist() == [5, 15]
    assert by_bin["share"].tolist() == [0.25, 0.75]
    assert by_bin["seq_out"].tolist() == pytest.approx([0.0, 0.4])
    row = summary.iloc[0]
    assert row["clip_rate"] == pytest.approx(0.3)
    assert row["lre"] == pytest.approx(1.5 / 7)
    assert row["spread"] == pytest.approx(2.0)


def test_flat_and_degenerate_cases():
    assert fairness.clip_spread([0.2, 0.2, 0.2]) == 0.0
    assert fairness.length_reweighting_error([0.2, 0.2], [0.5, 0.5]) == 0.0
    assert fairness.clip_slope([0.2, 0.2, 0.2], [1.0, 2.0, 3.0]) == 0.0
    assert fairness.clip_spread([0.0, 0.0]) == 0.0  # nothing clipped: flat by definition
    assert fairness.length_reweighting_error([1.0, 1.0], [0.5, 0.5]) == 0.0  # everything clipped
    assert fairness.clip_slope([0.3], [1.0]) == 0.0  # one bin: no slope


def test_slope_sign_says_which_lengths_are_clipped_more():
    x = np.log([8, 64, 512])
    assert fairness.clip_slope([0.0, 0.1, 0.5], x) > 0
    assert fairness.clip_slope([0.5, 0.1, 0.0], x) < 0
    # Exact least squares on a line: r = 0.1 + 0.05 x.
    assert fairness.clip_slope(0.1 + 0.05 * x, x) == pytest.approx(0.05)


def test_quantile_edges_are_shared_and_bins_are_half_open():
    lengths = np.arange(1, 101)
    edges = fairness.length_bin_edges(lengths, 4)
    assert edges.tolist() == pytest.approx([1, 25.75, 50.5, 75.25, 100])
    bins = fairness.assign_bins(lengths, edges)
    assert np.bincount(bins).tolist() == [25, 25, 25, 25]
    # Edges merge when lengths repeat; a length never straddles two bins.
    edges = fairness.length_bin_edges([5] * 50 + [9] * 50, 5)
    assert edges.tolist() == [5, 9]
    assert fairness.assign_bins([5, 9, 9], edges).tolist() == [0, 0, 0]
    # Lengths outside the edges fall in the first or last bin.
    assert fairness.assign_bins([1, 1000], np.array([5, 10, 20])).tolist() == [0, 1]
    assert fairness.exact_length_edges([8, 16, 8]).tolist() == [8, 16, 17]


def test_groups_share_edges_and_shares_sum_to_one():
    rng = np.random.default_rng(0)
    frames = []
    for method, bias in (("a", 0.0), ("b", 1.0)):
        lengths = rng.integers(5, 500, size=400)
        out = (rng.random(400) < (0.1 + bias * lengths / 1000)).astype(float)
        frames.append(
            pd.DataFrame(
                {"method": method, "seed": 0, "length": lengths, "seq_out": out, "seq_clip": out / 2}
            )
        )
    data = pd.concat(frames)
    by_bin, summary = fairness.fairness_summary(data, by=("method", "seed"))
    assert by_bin.groupby("method")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert set(by_bin.groupby("method")["bin_lo"].apply(tuple)) == {
        tuple(by_bin[by_bin.method == "a"]["bin_lo"])
    }
    slopes = dict(zip(summary["method"], summary["slope"], strict=True))
    assert slopes["b"] > slopes["a"]
    assert list(summary.columns) == [
        "method",
        "seed",
        "clip_rate",
        "spread",
        "slope",
        "lre",
        "s_exponent",
        "n_bins",
        "s_exponent_within",
        "n_rungs",
    ]
    assert summary["s_exponent"].isna().all()  # records without S
    # ... nor prefix sums (records written before they existed): a_w NaN, fitted on no rung
    assert summary["s_exponent_within"].isna().all() and (summary["n_rungs"] == 0).all()


def test_s_growth_exponent_recovers_the_power_of_length():
    # m_b = 0.01 L^a exactly: the fitted slope of log m on log L is a.
    L = np.array([8.0, 64.0, 512.0])
    for a in (0.0, 0.5, 1.0, 2.0):
        assert fairness.s_growth_exponent(0.01 * L**a, np.log(L)) == pytest.approx(a)
    # Hand-computed: medians 1 and 4 at L = 1 and 16 -> log 4 / log 16 = 0.5; a zero median is left out.
    assert fairness.s_growth_exponent([1.0, 0.0, 4.0], np.log([1, 4, 16])) == pytest.approx(0.5)
    assert math.isnan(fairness.s_growth_exponent([0.0, 4.0], np.log([1, 16])))  # one usable bin


def test_s_growth_exponent_from_records_uses_the_median_of_abs_s():
    # Bin L = 4: S = (-1, 0.5, 2) -> median |S| = 1; bin L = 64: S = (4, -4, 100) -> 4 (the outlier
    # does not move a median). a = log(4 / 1) / log(64 / 4) = 0.5.
    frame = pd.DataFrame(
        {
            "method": "m",
            "length": [4, 4, 4, 64, 64, 64],
            "S": [-1.0, 0.5, 2.0, 4.0, -4.0, 100.0],
            "seq_out": 0.0,
            "seq_clip": 0.0,
        }
    )
    by_bin, summary = fairness.fairness_summary(
        frame.assign(entropy=[1, 2, 3, 4, 5, 9]), edges=np.array([4, 10, 64])
    )
    assert by_bin["abs_s_median"].tolist() == [1.0, 4.0]
    assert by_bin["entropy_mean"].tolist() == [2.0, 6.0]
    assert summary.iloc[0]["s_exponent"] == pytest.approx(0.5)


def test_missing_columns_and_empty_input_are_reported():
    with pytest.raises(ValueError, match=r"lack columns \['seq_clip'\]"):
        fairness.clip_rate_by_bin(
            pd.DataFrame({"method": ["a"], "length": [3], "seq_out": [0.0]}), np.array([1, 5])
        )
    with pytest.raises(ValueError, match="no lengths"):
        fairness.length_bin_edges([])


def test_the_first_update_of_a_step_is_left_out():
    # Update 0 runs at ratio 1 (S = 0, never clipped): with it, bin L = 4 would have median |S| 0
    # and both rates would halve. Without it: rates 0.5 and 1.0, medians 2 and 8 -> a = 1.
    frame = pd.DataFrame(
        {
            "method": "m",
            "update": [0, 0, 1, 1, 0, 0, 1, 1],
            "length": [4, 4, 4, 4, 16, 16, 16, 16],
            "S": [0.0, 0.0, 2.0, -2.0, 0.0, 0.0, 8.0, 8.0],
            "seq_out": [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
            "seq_clip": 0.0,
        }
    )
    by_bin, summary = fairness.fairness_summary(frame, edges=np.array([4, 8, 16]))
    assert by_bin["n"].tolist() == [2, 2]
    assert by_bin["seq_out"].tolist() == [0.5, 1.0]
    assert by_bin["abs_s_median"].tolist() == [2.0, 8.0]
    assert summary.iloc[0]["s_exponent"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- prefix sums in the records


def test_record_prefix_sums_by_hand():
    # The trainer's layout: row 0 has 3 prompt positions (off the mask, NaN there: ignored), then
    # 20 response tokens l_t = 0.1 t (t = 1 .. 20): S_8 = 0.1 * 36 = 3.6, S_16 = 0.1 * 136 = 13.6,
    # no S_32. Row 1: 7 tokens, shorter than every rung: all NaN. Row 2: 16 tokens, l_t = (-1)^t 0.5
    # from t = 1, every pair sums to 0 (S_8 = S_16 = 0), and a gap in its mask (position 5 off:
    # the prefix counts response tokens, not positions).
    width = 24
    log_ratio = np.full((3, width), np.nan)
    mask = np.zeros((3, width), dtype=bool)
    log_ratio[0, 3:23] = 0.1 * np.arange(1, 21)
    mask[0, 3:23] = True
    log_ratio[1, :7] = 1.0
    mask[1, :7] = True
    positions = [p for p in range(width) if p != 5][:16]
    log_ratio[2, positions] = 0.5 * (-1.0) ** np.arange(1, 17)
    mask[2, positions] = True
    rows = fairness.record_prefix_sums(log_ratio, mask)
    assert [list(row) for row in rows] == [list(artifacts.PREFIX_COLUMNS)] * 3  # the records' column order
    assert rows[0]["S_8"] == pytest.approx(3.6, abs=1e-12) and rows[0]["S_16"] == pytest.approx(
        13.6, abs=1e-12
    )
    assert all(math.isnan(rows[0][c]) for c in artifacts.PREFIX_COLUMNS[2:])  # L = 20 < 32
    assert all(math.isnan(v) for v in rows[1].values())  # L = 7 < 8
    assert rows[2]["S_8"] == pytest.approx(0.0, abs=1e-12) and rows[2]["S_16"] == pytest.approx(
        0.0, abs=1e-12
    )
    # S_k is the masked cumulative sum of l_t at the k-th response token, for every rung up to L.
    values = np.where(mask, log_ratio, 0.0)
    for i, row in enumerate(rows):
        response = values[i, mask[i]]
        for k, column in zip(artifacts.RECORD_PREFIX_LADDER, artifacts.PREFIX_COLUMNS, strict=True):
            want = np.cumsum(response)[k - 1] if k <= len(response) else np.nan
            assert row[column] == pytest.approx(want, abs=1e-12, nan_ok=True), (i, k)


def test_rungs_need_eight_records_and_come_from_the_records_columns():
    assert fairness.reached_rungs((8, 16, 32), [20, 8, 7], 20) == (8, 16)
    assert fairness.reached_rungs((8, 16, 32), [3, 3, 2], 3) == (8, 16)  # fewer than 8: all must reach
    assert fairness.reached_rungs((8, 16), [0, 0], 0) == ()  # no records: no rung
    frame = pd.DataFrame({"update": [0] * 9 + [1] * 9, "S_8": [1.0] * 18, "S_16": [1.0] * 9 + [np.nan] * 9})
    assert fairness.record_rungs(frame) == (8,)  # the 9 on-policy records reaching 16 do not count
    assert fairness.record_rungs(frame.drop(columns=["S_8", "S_16"])) == ()  # records without prefix sums


def power_law_records(gamma, copies=2):
    """Off-policy records whose median |S_k| is 2 k^gamma exactly on every rung: lengths 16, 64 and
    256, each with the scales 1, 2, 3 (`copies` records each): whichever lengths reach a rung, its
    median scale is 2. S_k = +-scale k^gamma where k <= L, NaN beyond; one on-policy record (S = 0)
    per length that must be left out."""
    rows = []
    for length in (16, 64, 256):
        for scale in (1.0, 2.0, 3.0):
            for copy in range(copies):
                sign = (-1.0) ** copy
                prefix = {
                    c: (sign * scale * k**gamma if k <= length else np.nan)
                    for k, c in zip(artifacts.RECORD_PREFIX_LADDER, artifacts.PREFIX_COLUMNS, strict=True)
                }
                rows.append(
                    {"method": "m", "update": 1, "length": length, "seq_out": 0.0, "seq_clip": 0.0}
                    | {"S": prefix[artifacts.prefix_column(length)]}
                    | prefix
                )
        rows.append({**rows[-1], "update": 0, "S": 0.0} | {c: 0.0 for c in artifacts.PREFIX_COLUMNS[:3]})
    return pd.DataFrame(rows)


def test_the_within_sequence_exponent_of_records_with_a_known_exponent():
    for gamma in (0.25, 0.5, 1.0):
        records = power_law_records(gamma)
        ks = fairness.record_rungs(records)
        assert ks == (8, 16, 32, 64)  # 18 records reach 8 and 16, 12 reach 32 and 64, 6 reach 128 and 256
        _, summary = fairness.fairness_summary(records, edges=np.array([16, 64, 256]))
        row = summary.iloc[0]
        assert row["s_exponent_within"] == pytest.approx(gamma, abs=1e-12) and row["n_rungs"] == 4
    # Every rung, 128 and 256 included (6 records each): still 2 k^gamma.
    within = fairness.within_sequence_summary(power_law_records(0.75), artifacts.RECORD_PREFIX_LADDER[:6])
    assert within["s_exponent_within"].iloc[0] == pytest.approx(0.75, abs=1e-12)
    assert within["n_rungs"].iloc[0] == 6  # 512 ... 32768: no record, left out
    # By hand: medians |S_8| = 1 (of 1, -1, 3) and |S_16| = 4 -> a_w = log 4 / log 2 = 2.
    frame = pd.DataFrame({"method": "m", "S_8": [1.0, -1.0, 3.0], "S_16": [4.0, np.nan, -4.0]})
    assert fairness.within_sequence_summary(frame, (8, 16))["s_exponent_within"].iloc[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"records lack columns \['S_32'\]"):
        fairness.within_sequence_summary(frame, (8, 32))
