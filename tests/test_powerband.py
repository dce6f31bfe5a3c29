"""The power band (clipbench/methods/powerband.py): its fixed exponents are FSPO (b = 1/2, bit for
bit, in training and in the simulation), a fixed band on S (b = 0) and a band on S / L (b = 1);
its fitted exponent recovers a power law by hand; its options are checked."""

import math

import pytest
import torch

from clipbench import methods
from clipbench.simulate import SimulationConfig, simulate


def batch(seed=0, rows=32, width=40):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (rows,), generator=g)
    lengths[0] = 0
    mask = torch.arange(width).expand(rows, width) < lengths.unsqueeze(1)
    old = -torch.rand(rows, width, generator=g, dtype=torch.float64)
    logp = old + 0.05 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    adv = torch.randn(rows, generator=g, dtype=torch.float64)
    return logp, old, adv, mask


def run(rule, logp, old, adv, mask):
    leaf = logp.clone().requires_grad_(True)
    out = rule.loss(leaf, old, adv, mask)
    out.loss.backward()
    return out, leaf.grad


@pytest.mark.parametrize("seed", range(5))
def test_b_one_half_is_fspo_bit_for_bit(seed):
    data = batch(seed)
    fspo = run(methods.get_method("fspo", c_low=0.04, c_high=0.05), *data)
    band = run(methods.get_method("powerband", c_low=0.04, c_high=0.05, b=0.5, fit=False), *data)
    assert torch.equal(fspo[0].loss, band[0].loss) and torch.equal(fspo[1], band[1])
    assert torch.equal(fspo[0].seq_out, band[0].seq_out) and torch.equal(fspo[0].seq_clip, band[0].seq_clip)
    assert 0 < fspo[0].metrics["out_frac"] < 1
    assert {k: v for k, v in band[0].metrics.items() if k != "band_exponent"} == fspo[0].metrics
    assert band[0].metrics["band_exponent"] == 0.5


def test_b_one_half_simulates_fspos_rates_exactly():
    config = SimulationConfig(
        sigma=0.02,
        lengths=(8, 64, 512),
        n=2000,
        methods=("fspo", "powerband"),
        method_params={"fspo": {"c_low": 0.03, "c_high": 0.03}, "powerband": {"b": 0.5, "fit": False}},
    )
    by_length = simulate(config).by_length.set_index(["method", "length"])
    for column in ("seq_out", "seq_clip"):
        assert by_length.loc["powerband", column].tolist() == by_length.loc["fspo", column].tolist()


def test_b_zero_and_one_are_the_bands_of_seq_ppo_and_gspo():
    logp, old, adv, mask = batch(3)
    # b = 0: S in [-c_low, c_high], seq_ppo's band [log(1 - eps_low), log(1 + eps_high)] on S.
    fixed = methods.get_method("powerband", fit=False, b=0.0, c_low=-math.log(0.9), c_high=math.log(1.1))
    seq_ppo = methods.get_method("seq_ppo", eps_low=0.1, eps_high=0.1)
    a, b = fixed.loss(logp, old, adv, mask), seq_ppo.loss(logp, old, adv, mask)
    assert 0 < a.metrics["out_frac"] < 1 and torch.equal(a.seq_out, b.seq_out)
    # b = 1: S in [-c L, c L], i.e. S / L in [-c, c]: GSPO's band on S / L (GSPO weighs by
    # exp(S / L), so only the indicators are shared).
    linear = methods.get_method("powerband", fit=False, b=1.0, c_low=0.01, c_high=0.01)
    gspo = methods.get_method("gspo", eps_low=-math.expm1(-0.01), eps_high=math.expm1(0.01))
    a, b = linear.loss(logp, old, adv, mask), gspo.loss(logp, old, adv, mask)
    assert 0 < a.metrics["out_frac"] < 1 and torch.equal(a.seq_out, b.seq_out)


# A minibatch whose |S| follows |S| = 0.01 L^1.5 exactly: L = 4, 16, 64 give S = 0.08, -0.64,
# 5.12; a row with S = 0 (L = 16: out of the fit, in the mean length) and an empty row. The fit:
# the slope of log|S| on log L is exactly 1.5; Lbar = (4 * 16 * 64 * 16)^(1/4) = 16. The band's
# half-width per unit of c: W(L) = sqrt(16) (L / 16)^1.5 = 0.5, 4, 32 (and 4 for the S = 0 row), so
# every |S| / W(L) = 0.16: c = 0.2 keeps all inside, c = 0.1 puts all outside, at every length.
POWER_S = [0.08, -0.64, 5.12, 0.0, 0.0]
POWER_L = [4, 16, 64, 16, 0]


def power_batch():
    width = max(POWER_L)
    mask = torch.arange(width).expand(len(POWER_L), width) < torch.tensor(POWER_L).unsqueeze(1)
    # the whole S on each row's first token, 0 on the others
    logp = torch.zeros(len(POWER_L), width, dtype=torch.float64)
    logp[:, 0] = torch.tensor(POWER_S, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    return logp, torch.zeros_like(logp), adv, mask


def test_the_fit_recovers_a_power_law_and_clips_every_length_alike():
    rule = methods.get_method("powerband", fit=True, c_low=0.1, c_high=0.1)
    statistics = rule.minibatch_statistics(methods.prepare_batch(*power_batch()))
    assert rule.fitted_exponent(statistics) == pytest.approx(1.5, abs=1e-12)
    assert math.exp(float(statistics["x_all"]) / float(statistics["n_all"])) == pytest.approx(16.0)
    out = rule.loss(*power_batch())
    assert out.metrics["band_exponent"] == pytest.approx(1.5)
    assert out.seq_out.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # all three of the law outside; S = 0 in
    # A > 0 above (rows 0, 2) and A < 0 below (row 1): every out-of-band row is clip-active.
    assert out.seq_clip.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    wide = methods.get_method("powerband", fit=True, c_low=0.2, c_high=0.2).loss(*power_batch())
    assert wide.seq_out.tolist() == [0.0] * 5
    # FSPO at the same c clips only the longest: W = sqrt(L) = 2, 4, 8 -> |S| / W = 0.04, 0.16, 0.64.
    fspo = methods.get_method("fspo", c_low=0.2, c_high=0.2).loss(*power_batch())
    assert fspo.seq_out.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_the_fit_falls_back_and_clamps():
    logp, old, adv, mask = power_batch()
    rule = methods.get_method("powerband", fit=True, b=0.7, b_max=1.2)
    # On policy every S = 0: nothing to fit, the fixed b.
    on_policy = rule.loss(old.clone(), old, adv, mask)
    assert on_policy.metrics["band_exponent"] == pytest.approx(0.7)
    # The 1.5 power law, clamped to b_max = 1.2.
    assert rule.loss(logp, old, adv, mask).metrics["band_exponent"] == pytest.approx(1.2)
    # One length only (rows of length 16): no slope, the fixed b.
    same = methods.prepare_batch(logp[[1, 3]], old[[1, 3]], adv[[1, 3]], mask[[1, 3]])
    assert rule.fitted_exponent(rule.minibatch_statistics(same)) == 0.7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fit": True, "b_min": 2.0, "b_max": 1.0}, "powerband.b_min=2.0: must be <= b_max=1.0"),
        ({"fit": False, "b_max": 2.0}, "powerband.b_min/b_max: only fit=true uses them"),
        ({"b": -0.5}, r"powerband.b=-0.5: must be in \[0, inf\)"),
    ],
)
def test_options_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        methods.get_method("powerband", **params)
