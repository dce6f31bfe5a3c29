"""Gradient checks, invariances and equivalences of every registered rule, on random batches.

Rules added later are picked up by the parametrisation automatically (only the rule-specific
equivalences name rules)."""

import math

import pytest
import torch

from clipbench import methods
from clipbench.methods.base import BatchTotals, prepare_batch, sequence_level_rule

ALL = methods.available_methods()
CORE = ["fspo", "grpo", "gspo", "ppo", "seq_ppo"]

# The analytic d(surrogate)/d(log-weight) factor: tokens of a sequence feed its log-weight with
# coefficient 1 (S, and l_t itself for token rules) or 1/L (S / L for GSPO).
LOG_WEIGHT_PER_TOKEN = {"ppo": "token", "grpo": "token", "seq_ppo": "S", "fspo": "S", "gspo": "S/L"}


def random_batch(seed=0, batch=6, tokens=9, scale=0.15, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, tokens, generator=gen, dtype=dtype) * 2
    logp = old + scale * torch.randn(batch, tokens, generator=gen, dtype=dtype)
    lengths = torch.randint(1, tokens + 1, (batch,), generator=gen)
    lengths[-1] = 0  # one empty row in every batch
    mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)
    adv = torch.randn(batch, generator=gen, dtype=dtype)
    adv[0] = 0.0
    return logp, old, adv, mask


def loss_and_grad(rule, logp, old, adv, mask):
    x = logp.detach().clone().requires_grad_(True)
    out = rule.loss(x, old, adv, mask)
    out.loss.backward()
    return out, x.grad


def narrow(name):
    """Each rule with a band narrow enough that a random batch has clipped and unclipped units."""
    overrides = {
        "fspo": {"c_low": 0.1, "c_high": 0.1},
        "gspo": {"eps_low": 0.05, "eps_high": 0.05},
        "ppo": {"eps_low": 0.1, "eps_high": 0.1},
        "grpo": {"eps_low": 0.1, "eps_high": 0.15},
        "dapo": {"eps_low": 0.1, "eps_high": 0.15},
        "cispo": {"eps_low": 0.1, "eps_high": 0.1},
        "gmpo": {"eps_low": 0.1, "eps_high": 0.1},
        "sapo": {"tau_pos": 10.0, "tau_neg": 12.0},  # |tau (r - 1)| > 1.76 "clips": r outside ~[0.85, 1.17]
        "powerband": {"c_low": 0.1, "c_high": 0.1},
    }
    return methods.get_method(name, **overrides.get(name, {}))


def analytic_grad(name, rule, logp, old, adv, mask):
    """-A * w * (1 - clip_active) * d(log w)/d(logp_t) / normaliser, from first principles."""
    b = prepare_batch(logp, old, adv, mask)
    out = rule.loss(logp, old, adv, mask)
    maskf = mask.to(logp.dtype)
    lengths = b.lengths.clamp(min=1).unsqueeze(-1)
    n_valid = b.valid.sum().clamp(min=1)
    kind = LOG_WEIGHT_PER_TOKEN[name]
    if kind == "token":
        ratio = torch.exp(b.log_ratio)
        low, high = math.log1p(-rule.eps_low), math.log1p(rule.eps_high)
        a = adv.unsqueeze(-1)
        active = ((b.log_ratio > high) & (a > 0)) | ((b.log_ratio < low) & (a < 0))
        per_token = -a * ratio * (~active) * maskf
        norm = maskf.sum() if name == "ppo" else lengths * n_valid
        return per_token / norm
    keep = 1.0 - out.seq_clip.unsqueeze(-1)
    a = adv.unsqueeze(-1)
    if kind == "S":
        w = torch.exp(b.seq_log_ratio).unsqueeze(-1)
        return -a * w * keep * maskf / n_valid
    w = torch.exp(b.seq_log_ratio / b.lengths.clamp(min=1)).unsqueeze(-1)
    return -a * w * keep * maskf / lengths / n_valid


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autograd_matches_analytic_gradient(name, seed):
    logp, old, adv, mask = random_batch(seed, batch=12)
    rule = narrow(name)
    out, grad = loss_and_grad(rule, logp, old, adv, mask)
    assert 0 < out.metrics["clip_frac"] < 1, "the case must have clipped and unclipped units"
    torch.testing.assert_close(grad, analytic_grad(name, rule, logp, old, adv, mask))


# Rules whose gradient is, by design, not the derivative of their loss's value along logp, with the
# reason. CISPO's weight sg(clip(r_t)) is a constant of the gradient (stop-gradient, MiniMax-M1) but
# moves with logp in a finite difference. For these the finite differences move old_logp along with
# logp, which holds every l_t (so the weight) still: they must then match the gradient exactly.
GRADIENT_WITH_FROZEN_WEIGHTS = {"cispo": "stop-gradient importance weight (arXiv 2506.13585, sec. 3.1)"}


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_against_finite_differences(name):
    logp, old, adv, mask = random_batch(3)
    rule = narrow(name)
    x0 = logp.clone()
    if name in GRADIENT_WITH_FROZEN_WEIGHTS:
        # old_logp is detached by the interface: the analytic side is the rule's own gradient.
        loss = lambda x: rule.loss(x, old + (x - x0), adv, mask).loss  # noqa: E731
    elif rule.needs_minibatch_statistics:
        # Minibatch statistics are detached by contract (no gradient flows through the band they
        # set): finite differences with them frozen at x0, as the analytic gradient has them.
        frozen = BatchTotals.from_lengths(
            mask.sum(-1), rule.minibatch_statistics(prepare_batch(logp, old, adv, mask))
        )
        loss = lambda x: rule.loss(x, old, adv, mask, totals=frozen).loss  # noqa: E731
    else:
        loss = lambda x: rule.loss(x, old, adv, mask).loss  # noqa: E731
    assert torch.autograd.gradcheck(loss, (logp.clone().requires_grad_(True),))


def test_cispo_gradient_is_not_the_derivative_of_its_value():
    """Why cispo is in GRADIENT_WITH_FROZEN_WEIGHTS: with the weight moving, plain finite differences
    disagree with its gradient (where some r_t is inside the band); the exclusion is not vacuous."""
    logp, old, adv, mask = random_batch(3)
    rule = narrow("cispo")
    x = logp.clone().requires_grad_(True)
    assert not torch.autograd.gradcheck(
        lambda x: rule.loss(x, old, adv, mask).loss, (x,), raise_exception=False
    )


def analytic_grad_of_new_rule(name, rule, logp, old, adv, mask):
    """d loss / d logp_t of cispo, gmpo and sapo at their default aggregation, from the papers' formulas
    (not from the rule's code): n_tok tokens, n_seq sequences with L > 0 in the batch."""
    maskf = mask.to(logp.dtype)
    log_ratio = torch.where(mask, logp - old, torch.zeros_like(logp))
    r = torch.exp(log_ratio)
    a = adv.unsqueeze(-1)
    lengths = maskf.sum(-1, keepdim=True)
    n_tok, n_seq = maskf.sum(), (lengths > 0).sum()
    if name == "cispo":  # -sg(clip(r)) A log pi, token mean: the clipped weight times -A
        weight = r.clamp(min=1 - rule.eps_low, max=1 + rule.eps_high)
        return -a * weight * maskf / n_tok
    if name == "gmpo":  # -A exp(mean l'), l' the pessimistic per-token clip; clipped l' are constants
        active = ((log_ratio > rule.eps_high) & (a > 0)) | ((log_ratio < -rule.eps_low) & (a < 0))
        clipped = torch.where(active, log_ratio.clamp(-rule.eps_low, rule.eps_high), log_ratio)
        w = torch.exp(clipped.sum(-1, keepdim=True) / lengths.clamp(min=1))
        return -a * w * (~active) * maskf / lengths.clamp(min=1) / n_seq
    assert name == "sapo"  # -f(r) A, f' = 4 s(x)(1 - s(x)), x = tau (r - 1); d r / d logp = r
    tau = torch.where(
        a > 0, torch.tensor(rule.tau_pos, dtype=r.dtype), torch.tensor(rule.tau_neg, dtype=r.dtype)
    )
    s = torch.sigmoid(tau * (r - 1))
    return -a * 4 * s * (1 - s) * r * maskf / lengths.clamp(min=1) / n_seq


@pytest.mark.parametrize("name", ["cispo", "gmpo", "sapo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_rules_autograd_matches_analytic_gradient(name, seed):
    logp, old, adv, mask = random_batch(seed, batch=12, scale=0.3)
    rule = narrow(name)
    out, grad = loss_and_grad(rule, logp, old, adv, mask)
    assert 0 < out.metrics["clip_frac"] < 1, "the case must have clipped and unclipped units"
    torch.testing.assert_close(grad, analytic_grad_of_new_rule(name, rule, logp, old, adv, mask))


@pytest.mark.parametrize("name", ALL)
def test_clipped_units_get_zero_gradient(name):
    logp, old, adv, mask = random_batch(4, scale=0.6)
    out, grad = loss_and_grad(narrow(name), logp, old, adv, mask)
    if methods.get_method_class(name).level == "sequence":
        clipped_rows = out.seq_clip == 1
        assert clipped_rows.any()
        assert (grad[clipped_rows] == 0).all()
    assert (grad[~mask] == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_masked_garbage_changes_nothing(name):
    logp, old, adv, mask = random_batch(5)
    rule = narrow(name)
    clean, clean_grad = loss_and_grad(rule, logp, old, adv, mask)
    for garbage in (float("nan"), float("inf"), -float("inf"), 1e30):
        dirty_logp = torch.where(mask, logp, torch.full_like(logp, garbage))
        dirty_old = torch.where(mask, old, torch.full_like(old, -garbage))
        dirty, dirty_grad = loss_and_grad(rule, dirty_logp, dirty_old, adv, mask)
        assert torch.equal(dirty.loss, clean.loss)
        assert torch.equal(dirty_grad, clean_grad)
        assert torch.equal(dirty.seq_clip, clean.seq_clip) and torch.equal(dirty.seq_out, clean.seq_out)
        assert dirty.metrics == clean.metrics


@pytest.mark.parametrize("name", ALL)
def test_permuting_sequences_changes_nothing(name):
    logp, old, adv, mask = random_batch(6)
    rule = narrow(name)
    out, grad = loss_and_grad(rule, logp, old, adv, mask)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    p_out, p_grad = loss_and_grad(rule, logp[perm], old[perm], adv[perm], mask[perm])
    torch.testing.assert_close(p_out.loss, out.loss)
    torch.testing.assert_close(p_grad, grad[perm])
    assert torch.equal(p_out.seq_clip, out.seq_clip[perm]) and torch.equal(p_out.seq_out, out.seq_out[perm])
    assert p_out.metrics == pytest.approx(out.metrics)


@pytest.mark.parametrize("name", ALL)
def test_empty_rows_and_empty_batches_give_no_nan(name):
    rule = methods.get_method(name)
    logp = torch.full((2, 3), float("nan"))
    out, grad = loss_and_grad(
        rule, logp, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3, dtype=torch.bool)
    )
    assert out.loss.item() == 0.0 and (grad == 0).all()
    assert out.seq_clip.tolist() == [0.0, 0.0] and out.seq_out.tolist() == [0.0, 0.0]
    assert all(math.isfinite(v) for v in out.metrics.values())
    # An empty row next to real ones does not change their loss.
    logp, old, adv, mask = random_batch(7)
    full = rule.loss(logp, old, adv, mask).loss
    trimmed = rule.loss(logp[:-1], old[:-1], adv[:-1], mask[:-1]).loss
    torch.testing.assert_close(full, trimmed)


@pytest.mark.parametrize("name", ALL)
def test_float32_and_float64_agree(name):
    logp, old, adv, mask = random_batch(8)
    rule = narrow(name)
    out64 = rule.loss(logp, old, adv, mask)
    out32 = rule.loss(logp.float(), old.float(), adv.float(), mask)
    torch.testing.assert_close(out32.loss.double(), out64.loss, rtol=1e-5, atol=1e-6)
    assert out32.loss.dtype == torch.float32


@pytest.mark.parametrize("name", ALL)
def test_metrics_are_complete_and_consistent(name):
    logp, old, adv, mask = random_batch(9, scale=0.5)
    out = narrow(name).loss(logp, old, adv, mask)
    assert set(methods.base.REQUIRED_METRICS) <= set(out.metrics)
    assert all(isinstance(v, float) for v in out.metrics.values())
    m = out.metrics
    assert m["clip_frac"] == pytest.approx(m["clip_frac_low"] + m["clip_frac_high"])
    assert m["clip_frac"] <= m["out_frac"]
    assert out.seq_clip.shape == out.seq_out.shape == adv.shape
    assert ((out.seq_clip >= 0) & (out.seq_clip <= out.seq_out) & (out.seq_out <= 1)).all()


def test_bad_shapes_are_reported():
    rule = methods.get_method("ppo")
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages must be"):
        rule.loss(logp, logp, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="share a shape"):
        rule.loss(logp, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        rule.loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.ones(3))


# --------------------------------------------------------------------------- equivalences


def reinforce_loss(name, logp, adv, mask):
    """REINFORCE (-A log pi) under the aggregation of rule `name`."""
    maskf = mask.to(logp.dtype)
    lengths = maskf.sum(-1)
    valid = lengths > 0
    per_token = -adv.unsqueeze(-1) * torch.where(mask, logp, torch.zeros_like(logp))
    if name in ("ppo", "dapo", "cispo"):
        return per_token.sum() / maskf.sum()
    if (
        name in ("grpo", "gspo", "gmpo", "sapo")
    ):  # GMPO: d e^{S/L} / d logp_t = e^{S/L} / L; SAPO: f'(1) = 1  # GSPO's d s / d logp_t = s / L: the token mean of each sequence
        return (per_token.sum(-1)[valid] / lengths[valid]).mean()
    return per_token.sum(-1)[valid].mean()  # seq_ppo, fspo: d e^S / d logp_t = e^S


@pytest.mark.parametrize("name", [*CORE, "dapo", "cispo", "gmpo", "sapo"])
def test_at_ratio_one_every_rule_is_reinforce(name):
    logp, _, adv, mask = random_batch(10)
    out, grad = loss_and_grad(methods.get_method(name), logp, logp.detach(), adv, mask)
    assert out.metrics["clip_frac"] == 0 and out.metrics["out_frac"] == 0
    x = logp.detach().clone().requires_grad_(True)
    reinforce_loss(name, x, adv, mask).backward()
    torch.testing.assert_close(grad, x.grad)


def test_fspo_with_huge_c_is_unclipped_sequence_importance_sampling():
    logp, old, adv, mask = random_batch(11, scale=0.3)
    out, grad = loss_and_grad(methods.get_method("fspo", c_low=1e6, c_high=1e6), logp, old, adv, mask)
    assert out.metrics["out_frac"] == 0
    x = logp.detach().clone().requires_grad_(True)
    valid = mask.any(-1)
    s = torch.where(mask, x - old, torch.zeros_like(x)).sum(-1)
    expected = -(torch.exp(s) * adv)[valid].mean()
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(grad, x.grad)


def test_fspo_sqrt_band_on_s_is_a_band_on_s_over_l():
    # |S| <= c sqrt(L)  <=>  |S / L| <= c / sqrt(L): FSPO's indicators equal those of a band of
    # half-width c / sqrt(L) on S / L (GSPO's log-weight with a length-dependent band).
    c = 0.05
    for seed in range(5):
        logp, old, adv, mask = random_batch(seed, batch=64, tokens=40, scale=0.05)
        fspo = methods.get_method("fspo", c_low=c, c_high=c).loss(logp, old, adv, mask)
        b = prepare_batch(logp, old, adv, mask)
        root = b.lengths.clamp(min=1).sqrt()
        per_token = sequence_level_rule(b, b.seq_log_ratio / b.lengths.clamp(min=1), -c / root, c / root)
        assert 0 < fspo.seq_out.mean() < 1
        assert torch.equal(fspo.seq_out, per_token.seq_out)
        assert torch.equal(fspo.seq_clip, per_token.seq_clip)


def test_gspo_gradient_is_that_of_exp_s_over_l_times_a():
    logp, old, adv, mask = random_batch(12, scale=0.05)
    out, grad = loss_and_grad(methods.get_method("gspo", eps_low=0.9, eps_high=0.9), logp, old, adv, mask)
    assert out.metrics["out_frac"] == 0
    x = logp.detach().clone().requires_grad_(True)
    valid = mask.any(-1)
    s = torch.where(mask, x - old, torch.zeros_like(x)).sum(-1) / mask.sum(-1).clamp(min=1)
    (-(torch.exp(s) * adv)[valid].mean()).backward()
    torch.testing.assert_close(grad, x.grad)


def test_ppo_and_grpo_differ_only_in_aggregation():
    # With every sequence of the same length, token-mean and seq-mean-token-mean coincide.
    logp, old, adv, _ = random_batch(13, scale=0.3)
    mask = torch.ones_like(logp, dtype=torch.bool)
    ppo, ppo_grad = loss_and_grad(methods.get_method("ppo"), logp, old, adv, mask)
    grpo, grpo_grad = loss_and_grad(methods.get_method("grpo"), logp, old, adv, mask)
    torch.testing.assert_close(ppo.loss, grpo.loss)
    torch.testing.assert_close(ppo_grad, grpo_grad)


@pytest.mark.parametrize("name", ALL)
def test_every_rule_reports_the_s_and_l_it_saw(name):
    """LossOutput.seq_log_ratio and lengths are S = sum of l_t over the mask and L, per sequence,
    detached, for every rule (the trainer's clip records take them from here). A NaN off the mask
    must not leak into S, and a (B,) misalignment (another row's S) must show."""
    logp, old, adv, mask = random_batch(11)
    logp = logp.masked_fill(~mask, float("nan"))
    out, _ = loss_and_grad(methods.get_method(name), logp, old, adv, mask)
    expected_s = [
        sum(float(logp[i, t] - old[i, t]) for t in range(mask.shape[1]) if mask[i, t]) for i in range(6)
    ]
    assert out.seq_log_ratio.tolist() == pytest.approx(expected_s, abs=1e-12)
    assert out.lengths.tolist() == mask.sum(-1).tolist()
    assert not out.seq_log_ratio.requires_grad
    # ... and the per-token l_t those sums are made of (0 off the mask, NaN never), with the mask:
    # the clip records' prefix sums come from them.
    assert torch.equal(out.mask, mask.bool()) and not out.log_ratio.requires_grad
    assert torch.equal(out.log_ratio, torch.where(mask.bool(), logp - old, torch.zeros(())))
    assert out.log_ratio.sum(-1).tolist() == pytest.approx(out.seq_log_ratio.tolist(), abs=1e-12)
