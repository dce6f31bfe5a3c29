"""Golden values: small hand-written batches with the loss, seq_clip, seq_out, metrics and the
gradient of every rule worked out by hand in the comments (float64, so the arithmetic is exact
up to rounding).

Notation: l = logp - old_logp per token, S = sum of l over the response, L its length, A the
advantage. A unit is clip-active when above the band with A > 0 or below it with A < 0.
"""

import math

import pytest
import torch

from clipbench import methods

NAN, INF = float("nan"), float("inf")
LOG_12 = math.log1p(0.2)  # exactly the upper bound log(1 + 0.2) that the rules compute


def run(rule, logp, old_logp, adv, mask):
    x = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    out = rule.loss(
        x,
        torch.tensor(old_logp, dtype=torch.float64),
        torch.tensor(adv, dtype=torch.float64),
        torch.tensor(mask),
    )
    out.loss.backward()
    return out, x.grad


def assert_close(actual, expected):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    )


# Token-rule batch, band [0.8, 1.2] on r = exp(l). old_logp = 0, so l = logp.
#   row 0, A = +1, r = [1, 1.2 (on the edge: inside), 1.5 (above, A > 0: active, clipped to 1.2)]
#          objective [1, 1.2, 1.2], token losses [-1, -1.2, -1.2]
#   row 1, A = -2, r = [0.5 (below, A < 0: active, clipped to 0.8), 1.5 (above, A < 0: min keeps
#          1.5 * -2 = -3, not active), masked NaN]; objective [-1.6, -3], losses [1.6, 3.0]
#   row 2, A = 0, r = [2 (above: out, not active), 1, 1]; losses [0, 0, 0]
#   row 3, all masked, garbage inf / NaN.
TOKEN_LOGP = [
    [0.0, LOG_12, math.log(1.5)],
    [math.log(0.5), math.log(1.5), NAN],
    [math.log(2.0), 0.0, 0.0],
    [INF, -INF, NAN],
]
TOKEN_OLD = [[0.0] * 3, [0.0, 0.0, INF], [0.0] * 3, [NAN, 0.0, INF]]
TOKEN_ADV = [1.0, -2.0, 0.0, 3.0]
TOKEN_MASK = [[True] * 3, [True, True, False], [True] * 3, [False] * 3]
# Shared by ppo and grpo (same band, same units):
TOKEN_SEQ_CLIP = [1 / 3, 1 / 2, 0.0, 0.0]
TOKEN_SEQ_OUT = [1 / 3, 1.0, 1 / 3, 0.0]
# 8 response tokens: active = {row0 t2 (high), row1 t0 (low)}; out = {r0t2, r1t0, r1t1, r2t0};
# sum of l = log(1.2 * 1.5 * 0.5 * 1.5 * 2) = log(2.7).
TOKEN_METRICS = {
    "clip_frac": 2 / 8,
    "clip_frac_low": 1 / 8,
    "clip_frac_high": 1 / 8,
    "out_frac": 4 / 8,
    "ppo_kl": -math.log(2.7) / 8,
}


def test_ppo_golden():
    out, grad = run(methods.get_method("ppo"), TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK)
    # token-mean: (-1 - 1.2 - 1.2 + 1.6 + 3.0 + 0) / 8 = 1.2 / 8
    assert_close(out.loss, 1.2 / 8)
    assert_close(out.seq_clip, TOKEN_SEQ_CLIP)
    assert_close(out.seq_out, TOKEN_SEQ_OUT)
    assert out.metrics == pytest.approx(TOKEN_METRICS)
    # d loss / d logp_t = -A r_t / 8 on unclipped tokens, 0 on active or masked ones:
    # row0 [-1/8, -1.2/8, 0]; row1 [0, -(-2)(1.5)/8 = 0.375, 0]; rows 2, 3 zero.
    assert_close(grad, [[-0.125, -0.15, 0.0], [0.0, 0.375, 0.0], [0.0] * 3, [0.0] * 3])


def test_grpo_golden():
    out, grad = run(methods.get_method("grpo"), TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK)
    # per sequence: row0 -3.4 / 3, row1 4.6 / 2 = 2.3, row2 0; mean over the 3 non-empty rows.
    assert_close(out.loss, (-3.4 / 3 + 2.3 + 0.0) / 3)
    assert_close(out.seq_clip, TOKEN_SEQ_CLIP)
    assert_close(out.seq_out, TOKEN_SEQ_OUT)
    assert out.metrics == pytest.approx(TOKEN_METRICS)
    # d loss / d logp_t = -A r_t / (L_i * 3): row0 [-1/9, -1.2/9, 0]; row1 [0, 3/(2*3) = 0.5, 0].
    assert_close(grad, [[-1 / 9, -1.2 / 9, 0.0], [0.0, 0.5, 0.0], [0.0] * 3, [0.0] * 3])


@pytest.mark.parametrize("rule", ["ppo", "grpo"])
def test_token_sum_aggregations_golden(rule):
    # seq_mean_token_sum: token sums per sequence (row0 -3.4, row1 4.6, row2 0) averaged over the 3
    # non-empty rows: 1.2 / 3; d loss / d logp_t = -A r_t / 3: row0 [-1/3, -0.4, 0], row1 [0, 1, 0].
    out, grad = run(
        methods.get_method(rule, aggregation="seq_mean_token_sum"),
        TOKEN_LOGP,
        TOKEN_OLD,
        TOKEN_ADV,
        TOKEN_MASK,
    )
    assert_close(out.loss, 0.4)
    assert_close(grad, [[-1 / 3, -0.4, 0.0], [0.0, 1.0, 0.0], [0.0] * 3, [0.0] * 3])
    assert out.metrics == pytest.approx(TOKEN_METRICS)  # the indicators do not depend on it
    # Dr. GRPO: the same divided by the constant 4 (no 1 / L_i anywhere).
    sum_norm = methods.get_method(rule, aggregation="seq_mean_token_sum_norm", norm_tokens=4)
    out, grad = run(sum_norm, TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK)
    assert_close(out.loss, 0.1)
    assert_close(grad, [[-1 / 12, -0.1, 0.0], [0.0, 0.25, 0.0], [0.0] * 3, [0.0] * 3])


def test_dual_clip_golden():
    # c = 1.4: row1 token1 (A = -2, r = 1.5 > 1.4) now gets the constant 1.4 * -2 = -2.8 (loss +2.8,
    # not 3.0) and no gradient; row2 token0 (r = 2 > 1.4 but A = 0) and the A > 0 tokens are as
    # before. token-mean: (-1 - 1.2 - 1.2 + 1.6 + 2.8 + 0) / 8 = 1.0 / 8.
    out, grad = run(methods.get_method("ppo", clip_ratio_c=1.4), TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK)
    assert_close(out.loss, 1.0 / 8)
    assert_close(grad, [[-0.125, -0.15, 0.0], [0.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3])
    # Active: row0 t2 (high), row1 t0 (low), row1 t1 (dual: above the band, high side).
    assert_close(out.seq_clip, [1 / 3, 1.0, 0.0, 0.0])
    assert_close(out.seq_out, TOKEN_SEQ_OUT)
    assert out.metrics == pytest.approx(
        {**TOKEN_METRICS, "clip_frac": 3 / 8, "clip_frac_high": 2 / 8, "clip_frac_dual": 1 / 8}
    )
    # c = 1 + eps_high exactly (the smallest allowed; in log space it may round just below the
    # band's edge): every A < 0 token above the band is dual-clipped, none inside it.
    out12, _ = run(methods.get_method("ppo", clip_ratio_c=1.2), TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK)
    assert out12.metrics["clip_frac_dual"] == pytest.approx(
        1 / 8
    )  # row1 t1 only (row0 t1 is on the edge, A > 0)
    # c = 3 is beyond every ratio here: the same as no dual-clip (plus its zero metric).
    out3, grad3 = run(
        methods.get_method("ppo", clip_ratio_c=3.0), TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK
    )
    assert_close(out3.loss, 1.2 / 8)
    assert out3.metrics == pytest.approx({**TOKEN_METRICS, "clip_frac_dual": 0.0})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"aggregation": "seq_mean_token_sum_norm"},
            "ppo.norm_tokens: required by aggregation='seq_mean_token_sum_norm'",
        ),
        ({"norm_tokens": 4}, "ppo.norm_tokens=4.0: only aggregation='seq_mean_token_sum_norm' uses it"),
        ({"clip_ratio_c": 1.1}, r"ppo.clip_ratio_c=1.1: must be >= 1 \+ eps_high = 1.2"),
        ({"clip_ratio_c": 1.0}, r"ppo.clip_ratio_c=1.0: must be in \(1, inf\)"),
        ({"aggregation": "token_sum"}, "ppo.aggregation='token_sum': must be one of 'token_mean'"),
    ],
)
def test_token_rule_options_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        methods.get_method("ppo", **params)


def test_grpo_clip_higher_moves_only_the_upper_bound():
    # eps_high = 0.6: r = 1.5 is now inside on the high side; r = 0.5 stays clipped below.
    out, _ = run(methods.get_method("grpo", eps_high=0.6), TOKEN_LOGP, TOKEN_OLD, TOKEN_ADV, TOKEN_MASK)
    assert_close(out.seq_out, [0.0, 1 / 2, 1 / 3, 0.0])  # r=2 in row 2 is still above 1.6
    assert_close(out.seq_clip, [0.0, 1 / 2, 0.0, 0.0])
    # row0 objective [1, 1.2, 1.5] -> -3.7/3; row1 [-1.6, -3] -> 4.6/2; row2 0.
    assert_close(out.loss, (-3.7 / 3 + 2.3) / 3)


# seq_ppo: band [log 0.8, log 1.2] = [-0.2231, 0.1823] on S; w = exp(S).
#   row 0, A = +1, l = [0.1, 0.1]: S = 0.2 above, A > 0: active, w clipped to 1.2, loss -1.2
#   row 1, A = -1, l = [-0.3, 0, masked NaN]: S = -0.3 below, A < 0: active, clipped to 0.8,
#          objective -0.8, loss +0.8
#   row 2, A = +2, l = [log 1.2, 0]: S on the upper edge: inside, objective 2.4, loss -2.4;
#          gradient -(1.2 * 2) / 4 = -0.6 on each of its tokens
#   row 3, A = 0, l = [1, 1]: S = 2 out, not active, loss 0
#   row 4, length 0 with garbage: ignored. Mean over 4 rows: (-1.2 + 0.8 - 2.4 + 0) / 4 = -0.7.
SEQ_LOGP = [[0.1, 0.1, 0.0], [-0.3, 0.0, NAN], [LOG_12, 0.0, 0.0], [1.0, 1.0, 0.0], [NAN, INF, -INF]]
SEQ_OLD = [[0.0] * 3, [0.0, 0.0, -INF], [0.0] * 3, [0.0] * 3, [INF, NAN, 0.0]]
SEQ_MASK = [[True, True, False], [True, True, False], [True, True, False], [True, True, False], [False] * 3]


def test_seq_ppo_golden():
    out, grad = run(methods.get_method("seq_ppo"), SEQ_LOGP, SEQ_OLD, [1.0, -1.0, 2.0, 0.0, 5.0], SEQ_MASK)
    assert_close(out.loss, -0.7)
    assert_close(out.seq_clip, [1.0, 1.0, 0.0, 0.0, 0.0])
    assert_close(out.seq_out, [1.0, 1.0, 0.0, 1.0, 0.0])
    assert out.metrics == pytest.approx(
        {
            "clip_frac": 0.5,
            "clip_frac_low": 0.25,
            "clip_frac_high": 0.25,
            "out_frac": 0.75,
            "ppo_kl": -(0.2 - 0.3 + LOG_12 + 2) / 8,
        }
    )
    assert_close(grad, [[0.0] * 3, [0.0] * 3, [-0.6, -0.6, 0.0], [0.0] * 3, [0.0] * 3])


def test_gspo_golden():
    # eps 0.1: band [log 0.9, log 1.1] = [-0.1054, 0.0953] on S / L; s = exp(S / L).
    #   row 0, A = +1, l = [0.3, 0.1]: S/L = 0.2 above, active, s clipped to 1.1, loss -1.1
    #   row 1, A = +1, l = [-0.3, -0.1, 0]: S/L = -2/15 below, A > 0: not active, objective
    #          e^(-2/15), gradient -(e^(-2/15) / 3) / 3 on each of its 3 tokens
    #   row 2, A = -1, l = [0.05]: inside, objective -e^0.05, gradient +(e^0.05 / 1) / 3
    #   row 3, length 0 (garbage): ignored.
    logp = [[0.3, 0.1, 0.0], [-0.3, -0.1, 0.0], [0.05, NAN, NAN], [INF, INF, INF]]
    mask = [[True, True, False], [True, True, True], [True, False, False], [False] * 3]
    out, grad = run(
        methods.get_method("gspo", eps_low=0.1, eps_high=0.1),
        logp,
        [[0.0] * 3] * 4,
        [1.0, 1.0, -1.0, 1.0],
        mask,
    )
    s1, s2 = math.exp(-2 / 15), math.exp(0.05)
    assert_close(out.loss, (-1.1 - s1 + s2) / 3)
    assert_close(out.seq_clip, [1.0, 0.0, 0.0, 0.0])
    assert_close(out.seq_out, [1.0, 1.0, 0.0, 0.0])
    assert out.metrics["clip_frac"] == pytest.approx(1 / 3)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 3)
    assert out.metrics["out_frac"] == pytest.approx(2 / 3)
    assert_close(grad, [[0.0] * 3, [-s1 / 9] * 3, [s2 / 3, 0.0, 0.0], [0.0] * 3])


def test_gspo_defaults_are_the_paper_band():
    rule = methods.get_method("gspo")
    assert (rule.eps_low, rule.eps_high) == (3e-4, 4e-4)
    # S/L = 3.5e-4 (L = 2) is inside [log(1 - 3e-4), log(1 + 4e-4)]; 4.5e-4 is above.
    out, _ = run(rule, [[3.5e-4, 3.5e-4], [4.5e-4, 4.5e-4]], [[0.0, 0.0]] * 2, [1.0, 1.0], [[True, True]] * 2)
    assert_close(out.seq_out, [0.0, 1.0])


def test_fspo_golden():
    # c = 0.1: band [-0.1 sqrt(L), 0.1 sqrt(L)] on S; w = exp(S).
    #   row 0, L = 4, A = +1, l = 0.1 each: S = 0.4 > 0.2: active, w clipped to e^0.2, loss -e^0.2
    #   row 1, L = 1, A = -1, l = [-0.15]: S < -0.1: below, A < 0: active, objective -e^-0.1
    #   row 2, L = 4, A = +1, l = [0.2, 0, 0, 0]: S = 0.2 = 0.1 * sqrt(4): on the edge, inside,
    #          objective e^0.2, gradient -e^0.2 / 4 on each of its 4 tokens
    #   row 3, L = 4, A = 0, l = 1 each: out, not active
    #   row 4, length 0: ignored.
    logp = [[0.1] * 4, [-0.15, NAN, NAN, NAN], [0.2, 0.0, 0.0, 0.0], [1.0] * 4, [NAN] * 4]
    mask = [[True] * 4, [True, False, False, False], [True] * 4, [True] * 4, [False] * 4]
    out, grad = run(
        methods.get_method("fspo", c_low=0.1, c_high=0.1),
        logp,
        [[0.0] * 4] * 5,
        [1.0, -1.0, 1.0, 0.0, 1.0],
        mask,
    )
    e2 = math.exp(0.2)
    assert_close(out.loss, (-e2 + math.exp(-0.1) - e2 + 0.0) / 4)
    assert_close(out.seq_clip, [1.0, 1.0, 0.0, 0.0, 0.0])
    assert_close(out.seq_out, [1.0, 1.0, 0.0, 1.0, 0.0])
    assert out.metrics["clip_frac_low"] == pytest.approx(0.25)
    assert out.metrics["clip_frac_high"] == pytest.approx(0.25)
    assert_close(grad, [[0.0] * 4, [0.0] * 4, [-e2 / 4] * 4, [0.0] * 4, [0.0] * 4])


def test_fspo_kl_drift_recentres_the_band():
    # Two rows, c = 0.1, all l negative: mu = (-1 - 1.8) / 6 = -0.4667 per token.
    #   row 0, L = 2, A = +1, S = -1.0: centre 2 mu = -0.9333, |S - centre| = 0.0667 < 0.1414
    #   row 1, L = 4, A = -1, S = -1.8: centre 4 mu = -1.8667, |S - centre| = 0.0667 < 0.2
    # drift="kl": both inside; loss (-e^-1 + e^-1.8) / 2.
    # drift="none": both below the zero-centred band. Row 0 (A > 0) keeps the unclipped term
    # -e^-1; row 1 (A < 0) is active, clipped to e^-0.2: loss (-e^-1 + e^-0.2) / 2.
    logp = [[-0.5, -0.5, 0.0, 0.0], [-0.5, -0.5, -0.5, -0.3]]
    mask = [[True, True, False, False], [True] * 4]
    old, adv = [[0.0] * 4] * 2, [1.0, -1.0]
    kl, grad = run(methods.get_method("fspo", c_low=0.1, c_high=0.1, drift="kl"), logp, old, adv, mask)
    assert_close(kl.loss, (-math.exp(-1.0) + math.exp(-1.8)) / 2)
    assert_close(kl.seq_out, [0.0, 0.0])
    # mu is detached: the gradient flows through S only, -A e^S / 2 per token.
    assert_close(grad, [[-math.exp(-1.0) / 2] * 2 + [0.0, 0.0], [math.exp(-1.8) / 2] * 4])
    none, _ = run(methods.get_method("fspo", c_low=0.1, c_high=0.1), logp, old, adv, mask)
    assert_close(none.loss, (-math.exp(-1.0) + math.exp(-0.2)) / 2)
    assert_close(none.seq_out, [1.0, 1.0])
    assert_close(none.seq_clip, [0.0, 1.0])


def test_sequence_rules_clamp_s_before_exp():
    # S = 100 would overflow exp in float32 (and give inf * 0 = NaN gradients). Clamped to 20:
    # finite loss and gradients, and still clip-active (A > 0, far above every band).
    logp = torch.full((1, 4), 25.0)
    for name in ("seq_ppo", "fspo", "gspo"):
        x = logp.clone().requires_grad_(True)
        out = methods.get_method(name).loss(
            x, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4, dtype=torch.bool)
        )
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all(), name
        assert out.seq_clip.tolist() == [1.0], name
    # Unclipped (c huge) and beyond the clamp: e^20, with zero gradient (documented behaviour).
    x = logp.clone().requires_grad_(True)
    out = methods.get_method("fspo", c_low=1e6, c_high=1e6).loss(
        x, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4)
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-math.exp(20.0), rel=1e-6)
    assert x.grad.abs().sum().item() == 0.0


def test_lower_band_edges_are_inside():
    # l (token rules) or S (seq_ppo) exactly on log(1 - 0.2), with A < 0: inside the band, so the
    # unclipped term is kept and the gradient is -A e^l / n (0.8 / n on that token, not 0).
    low = math.log1p(-0.2)
    for name, expected_grad in (
        ("ppo", [0.8 / 2, 1 / 2]),
        ("grpo", [0.8 / 2, 1 / 2]),
        ("seq_ppo", [0.8, 0.8]),
    ):
        out, grad = run(methods.get_method(name), [[low, 0.0]], [[0.0, 0.0]], [-1.0], [[True, True]])
        assert out.seq_out.tolist() == [0.0], name
        assert_close(grad, [expected_grad])
    # FSPO: S = -0.2 = -0.1 * sqrt(4), on the lower edge.
    out, grad = run(
        methods.get_method("fspo", c_low=0.1, c_high=0.1),
        [[-0.2, 0.0, 0.0, 0.0]],
        [[0.0] * 4],
        [-1.0],
        [[True] * 4],
    )
    assert out.seq_out.tolist() == [0.0]
    assert_close(grad, [[math.exp(-0.2)] * 4])


def test_fspo_kl_drift_clipped_rows_have_zero_gradient():
    # The band centre is computed from the batch; it must not leak a gradient into clipped rows.
    #   mu = (-0.5 * 2 + 0.5 * 2) / 4 = 0: row 0 (A = +1, S = 1 > 0.1 sqrt(2)) is active.
    logp = [[0.5, 0.5], [-0.5, -0.5]]
    out, grad = run(
        methods.get_method("fspo", c_low=0.1, c_high=0.1, drift="kl"),
        logp,
        [[0.0] * 2] * 2,
        [1.0, 1.0],
        [[True] * 2] * 2,
    )
    assert out.seq_clip.tolist() == [1.0, 0.0]
    # row 1 is below (A > 0: unclipped), gradient -e^-1 / 2 per token; row 0 none.
    assert_close(grad, [[0.0, 0.0], [-math.exp(-1.0) / 2] * 2])


# --------------------------------------------------------------------------- cispo, gmpo, sapo

LOG_08 = math.log1p(-0.2)  # exactly the lower bound log(1 - 0.2) that the rules compute
LN2, LN15 = math.log(2.0), math.log(1.5)

# CISPO batch: old_logp != 0, so the loss's log pi_t (= logp) differs from l_t. Per token
# loss -w A logp, w = r clipped to the band and held constant; gradient -w A / N.
#   row 0, A = +1, logp [-1, -2, -0.5], r = [1, 1.2 (upper edge: inside), 1.5 (above: w = 1.2)]
#          losses [1 * 1, 1.2 * 2, 1.2 * 0.5] = [1, 2.4, 0.6]
#   row 1, A = -2, logp [-1, -0.5, masked NaN], r = [0.5 (below: w = 0.8 with eps_low = 0.2, 0.5 with
#          no lower bound), 1.5 (above, A < 0: still truncated to 1.2, unlike PPO's min)]
#          losses [-0.8 * -2 * -1 = -1.6 (or -0.5 * 2 = -1.0), -1.2 * -2 * -0.5 = -1.2]
#   row 2, A = 0, r = [2 (outside, A = 0: not clipped), 1, 1]: losses 0
#   row 3, length 0, garbage. N = 8 response tokens; sum of l = log(2.7) as in TOKEN_METRICS.
CISPO_LOGP = [[-1.0, -2.0, -0.5], [-1.0, -0.5, NAN], [-3.0, -1.0, -1.0], [INF, NAN, -INF]]
CISPO_OLD = [
    [-1.0, -2.0 - LOG_12, -0.5 - LN15],
    [-1.0 + LN2, -0.5 - LN15, INF],
    [-3.0 - LN2, -1.0, -1.0],
    [NAN, INF, 0.0],
]
CISPO_ADV = [1.0, -2.0, 0.0, 5.0]


def test_cispo_golden_with_both_bounds():
    rule = methods.get_method("cispo", eps_low=0.2, eps_high=0.2)
    out, grad = run(rule, CISPO_LOGP, CISPO_OLD, CISPO_ADV, TOKEN_MASK)
    # token-mean: (1 + 2.4 + 0.6 - 1.6 - 1.2 + 0) / 8 = 1.2 / 8
    assert_close(out.loss, 1.2 / 8)
    # -w A / 8: row0 [-1, -1.2, -1.2] / 8; row1 [0.8 * 2, 1.2 * 2] / 8 = [0.2, 0.3]: every token keeps a
    # gradient, the truncated ones with the capped weight.
    assert_close(grad, [[-0.125, -0.15, -0.15], [0.2, 0.3, 0.0], [0.0] * 3, [0.0] * 3])
    # "clipped": weight truncated and A != 0: r0t2 (high), r1t0 (low), r1t1 (high); r2t0 only outside.
    assert_close(out.seq_clip, [1 / 3, 1.0, 0.0, 0.0])
    assert_close(out.seq_out, [1 / 3, 1.0, 1 / 3, 0.0])
    assert out.metrics == pytest.approx(
        {
            "clip_frac": 3 / 8,
            "clip_frac_low": 1 / 8,
            "clip_frac_high": 2 / 8,
            "out_frac": 4 / 8,
            "ppo_kl": -math.log(2.7) / 8,
        }
    )


def test_cispo_golden_defaults_no_lower_bound():
    rule = methods.get_method("cispo")
    assert (rule.eps_low, rule.eps_high, rule.aggregation) == (None, 0.2, "token_mean")
    out, grad = run(rule, CISPO_LOGP, CISPO_OLD, CISPO_ADV, TOKEN_MASK)
    # r = 0.5 keeps its weight 0.5: row1 t0 loss -0.5 * -2 * -1 = -1.0, gradient 0.5 * 2 / 8 = 0.125.
    assert_close(out.loss, (1 + 2.4 + 0.6 - 1.0 - 1.2) / 8)
    assert_close(grad, [[-0.125, -0.15, -0.15], [0.125, 0.3, 0.0], [0.0] * 3, [0.0] * 3])
    assert_close(out.seq_clip, [1 / 3, 1 / 2, 0.0, 0.0])
    assert_close(out.seq_out, [1 / 3, 1 / 2, 1 / 3, 0.0])
    assert out.metrics == pytest.approx(
        {
            "clip_frac": 2 / 8,
            "clip_frac_low": 0.0,
            "clip_frac_high": 2 / 8,
            "out_frac": 3 / 8,
            "ppo_kl": -math.log(2.7) / 8,
        }
    )
    # seq_mean_token_sum: token sums row0 4.0, row1 -2.2, row2 0 over 3 rows; gradient -w A / 3.
    out, grad = run(
        methods.get_method("cispo", aggregation="seq_mean_token_sum"),
        CISPO_LOGP,
        CISPO_OLD,
        CISPO_ADV,
        TOKEN_MASK,
    )
    assert_close(out.loss, (4.0 - 2.2) / 3)
    assert_close(grad, [[-1 / 3, -0.4, -0.4], [1 / 3, 0.8, 0.0], [0.0] * 3, [0.0] * 3])


# GMPO batch, band [-0.4, 0.4] on l (the defaults), old_logp = 0 so l = logp; w = exp(mean l'),
# l' = l with the bound replacing l where the clip is active (A > 0 above, A < 0 below).
#   row 0, A = +1, l = [0.5 (above, A > 0: l' = 0.4, no gradient), 0.1, -0.6 (below, A > 0: kept)]:
#          mean l' = (0.4 + 0.1 - 0.6) / 3 = -1/30, objective e^(-1/30)
#   row 1, A = -2, l = [-0.5 (below, A < 0: l' = -0.4), 0.6 (above, A < 0: kept), masked NaN]:
#          mean l' = 0.1, objective -2 e^0.1
#   row 2, A = 0, l = [1 (outside, not active), 0, 0]: objective 0
#   row 3, length 0 (garbage). Mean over the 3 rows with L > 0 (verl divides by all 4: pinned in
#   tests/test_verl_parity.py).
GMPO_LOGP = [[0.5, 0.1, -0.6], [-0.5, 0.6, NAN], [1.0, 0.0, 0.0], [NAN, INF, -INF]]
GMPO_OLD = [[0.0] * 3, [0.0, 0.0, -INF], [0.0] * 3, [INF, 0.0, NAN]]


def test_gmpo_golden():
    rule = methods.get_method("gmpo")
    assert (rule.eps_low, rule.eps_high) == (0.4, 0.4)
    out, grad = run(rule, GMPO_LOGP, GMPO_OLD, [1.0, -2.0, 0.0, 7.0], TOKEN_MASK)
    w0, w1 = math.exp(-1 / 30), math.exp(0.1)
    assert_close(out.loss, (-w0 + 2 * w1 + 0.0) / 3)
    # d / d logp_t = -A w / (L * 3) on unclipped tokens: row0 [0, -w0/9, -w0/9]; row1 [0, 2 w1 / 6, 0].
    assert_close(grad, [[0.0, -w0 / 9, -w0 / 9], [0.0, w1 / 3, 0.0], [0.0] * 3, [0.0] * 3])
    assert_close(out.seq_clip, [1 / 3, 1 / 2, 0.0, 0.0])
    assert_close(out.seq_out, [2 / 3, 1.0, 1 / 3, 0.0])
    # Token fractions over 8 tokens: active r0t0 (high), r1t0 (low); outside r0t0, r0t2, r1t0, r1t1,
    # r2t0; sum of l = 0 + 0.1 + 1.0.
    assert out.metrics == pytest.approx(
        {
            "clip_frac": 2 / 8,
            "clip_frac_low": 1 / 8,
            "clip_frac_high": 1 / 8,
            "out_frac": 5 / 8,
            "ppo_kl": -1.1 / 8,
        }
    )


# SAPO batch with a sharp gate, tau_pos = 4, tau_neg = 5 (4 / tau = 1 and 0.8); x = tau (r - 1);
# "clipped": |x| > 2 ln(1 + sqrt 2) = 1.7627 with A != 0. s = sigmoid; s(2) + s(-2) = 1.
#   row 0, A = +1 (tau 4), r = [1 (x 0), 1.5 (x 2: above), 0.5 (x -2: below)]: objective f A =
#          s(x) * 1 = [0.5, s(2), s(-2)], token sum 1.5, token mean 0.5; loss term -0.5
#          gradient -A 4 s(x) s(-x) r / (L n) = -[1, 4 s(2) s(-2) 1.5, 4 s(2) s(-2) 0.5] / 9
#   row 1, A = -2 (tau 5), r = [1.2 (x 1), 0.6 (x -2: below), masked]: objective 0.8 s(x) (-2);
#          token mean of the losses 0.8 (s(1) + s(-2)); gradient 2 * 4 s(x) s(-x) r / (2 * 3):
#          [4.8 s(1) s(-1), 2.4 s(2) s(-2)] / 3
#   row 2, A = 0 (tau_neg 5), r = [2 (x 5: outside, A = 0: not clipped), 1, 1]: 0
#   row 3, length 0 (garbage). n = 3 sequences with L > 0.
SAPO_LOGP = [[0.0, LN15, -LN2], [math.log(1.2), math.log(0.6), NAN], [LN2, 0.0, 0.0], [INF, INF, NAN]]


def _s(x):
    return 1 / (1 + math.exp(-x))


def test_sapo_golden():
    rule = methods.get_method("sapo", tau_pos=4.0, tau_neg=5.0)
    out, grad = run(rule, SAPO_LOGP, [[0.0] * 3] * 4, [1.0, -2.0, 0.0, 1.0], TOKEN_MASK)
    assert_close(out.loss, (-0.5 + 0.8 * (_s(1) + _s(-2)) + 0.0) / 3)
    g2 = 4 * _s(2) * _s(-2)
    assert_close(
        grad,
        [
            [-1 / 9, -g2 * 1.5 / 9, -g2 * 0.5 / 9],
            [4.8 * _s(1) * _s(-1) / 3, 2.4 * _s(2) * _s(-2) / 3, 0.0],
            [0.0] * 3,
            [0.0] * 3,
        ],
    )
    assert_close(out.seq_clip, [2 / 3, 1 / 2, 0.0, 0.0])
    assert_close(out.seq_out, [2 / 3, 1 / 2, 1 / 3, 0.0])
    # active r0t1 (high), r0t2 (low), r1t1 (low); outside those and r2t0; sum of l = log(1.08).
    assert out.metrics == pytest.approx(
        {
            "clip_frac": 3 / 8,
            "clip_frac_low": 2 / 8,
            "clip_frac_high": 1 / 8,
            "out_frac": 4 / 8,
            "ppo_kl": -math.log(1.08) / 8,
        }
    )


def test_sapo_defaults_and_the_half_gradient_threshold():
    rule = methods.get_method("sapo")
    assert (rule.tau_pos, rule.tau_neg, rule.aggregation) == (1.0, 1.05, "seq_mean_token_mean")
    # The threshold: 4 s(h) s(-h) = 1/2 at h = 2 ln(1 + sqrt 2), by hand s(h) = (1 + 1/sqrt 2) / 2.
    h = 2 * math.log(1 + math.sqrt(2))
    assert _s(h) == pytest.approx((1 + 1 / math.sqrt(2)) / 2, rel=1e-15)
    assert 4 * _s(h) * _s(-h) == pytest.approx(0.5, rel=1e-15)
    # On policy (r = 1): f = 4 s(0) / tau = 2 / tau, so the loss of one token is -2 A / tau: tau_pos
    # for A > 0, tau_neg for A <= 0 (the wrong side would swap them). One-token rows, mean of 2.
    out, grad = run(rule, [[0.0], [0.0]], [[0.0], [0.0]], [1.0, -1.0], [[True], [True]])
    # To float64 precision (tau_neg = 1.05 held in float32 would be off by 5e-8, relative).
    assert out.loss.item() == pytest.approx((-2 / 1.0 + 2 / 1.05) / 2, rel=1e-13)
    assert_close(grad, [[-0.5], [0.5]])  # f'(1) = 1: REINFORCE, -A / 2
    # Default gate: r = 2.76 has x = 1.76 (inside), r = 2.77 has x = 1.77 (clipped) for A > 0.
    out, _ = run(rule, [[math.log(2.76), math.log(2.77)]], [[0.0, 0.0]], [1.0], [[True, True]])
    assert_close(out.seq_clip, [0.5])


def test_new_rules_band_edges_for_both_advantage_signs_are_inside():
    # Tokens exactly on a bound (or just inside the gate's threshold) with A = +1 and A = -1: not
    # outside, not clipped, and the unclipped gradient.
    for adv in (1.0, -1.0):
        # cispo, band [0.8, 1.2]: weight r itself; gradient -A r / 2.
        out, grad = run(
            methods.get_method("cispo", eps_low=0.2, eps_high=0.2),
            [[LOG_08, LOG_12]],
            [[0.0, 0.0]],
            [adv],
            [[True, True]],
        )
        assert out.seq_out.tolist() == [0.0] and out.metrics["clip_frac"] == 0
        assert_close(grad, [[-adv * 0.8 / 2, -adv * 1.2 / 2]])
        # gmpo, l = -0.4 and 0.4 (mean 0, w = 1): both keep the gradient -A w / L = -A / 2.
        out, grad = run(methods.get_method("gmpo"), [[-0.4, 0.4]], [[0.0, 0.0]], [adv], [[True, True]])
        assert out.seq_out.tolist() == [0.0] and out.metrics["clip_frac"] == 0
        assert_close(grad, [[-adv / 2, -adv / 2]])
        # sapo, tau 4: r = 1 -+ 0.44 gives x = -+1.76, inside; r = 1 -+ 0.4425 gives x = -+1.77, clipped.
        sapo = methods.get_method("sapo", tau_pos=4.0, tau_neg=4.0)
        out, _ = run(sapo, [[math.log(0.56), math.log(1.44)]], [[0.0, 0.0]], [adv], [[True, True]])
        assert out.seq_out.tolist() == [0.0] and out.metrics["clip_frac"] == 0
        out, _ = run(sapo, [[math.log(0.5575), math.log(1.4425)]], [[0.0, 0.0]], [adv], [[True, True]])
        assert out.seq_clip.tolist() == [1.0]
        assert out.metrics["clip_frac_low"] == out.metrics["clip_frac_high"] == 0.5


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("cispo", {"aggregation": "seq_mean_token_sum_norm"}, "cispo.norm_tokens: required by"),
        (
            "sapo",
            {"norm_tokens": 4},
            "sapo.norm_tokens=4.0: only aggregation='seq_mean_token_sum_norm' uses it",
        ),
        ("cispo", {"eps_low": 1.0}, r"cispo.eps_low=1.0: must be in \(0, 1\)"),
        ("gmpo", {"eps_high": 0.0}, r"gmpo.eps_high=0.0: must be in \(0, inf\)"),
        ("sapo", {"tau_neg": -1.0}, r"sapo.tau_neg=-1.0: must be in \(0, inf\)"),
    ],
)
def test_new_rules_options_are_checked(rule, params, message):
    with pytest.raises(ValueError, match=message):
        methods.get_method(rule, **params)
