"""Differential tests against verl 0.9.1's policy losses (verl.trainer.ppo.core_algos), issue 14.

On N_BATCHES seeded random float64 batches (2-8 rows of 1-12 tokens, rows of length 0 in about
half of them, per-token log-ratios of spread 0.05, 0.3 or 1.0 so that every band and dual-clip's
r > 3 are crossed, advantages of both signs and some 0, finite garbage off the mask), the loss
and its gradient w.r.t. logp of each clipbench rule equal verl's (rtol 1e-6, float64):

    clipbench                                         verl policy loss (loss_agg_mode)
    ppo, clip_ratio_c=3, each of the 4 aggregations   vanilla (token-mean, seq-mean-token-mean,
                                                      seq-mean-token-sum, -sum-norm + loss_scale_factor)
    dapo, clip_ratio_c=3                              vanilla, clip_ratio 0.2 / 0.28, token-mean
    cispo (eps_low None; 0.2), each aggregation       cispo (clip_ratio_low 10, i.e. none; 0.2)
    gmpo (0.4 / 0.4; 0.2 / 0.3)                       geo_mean, on batches without empty rows
    sapo (tau 1 / 1.05; 4 / 5)                        sapo (always seq-mean-token-mean)

Measured (N_BATCHES = 120 batches per case, 22 cases; relative difference: the loss's against the
sum of its rows' absolute shares, since its terms may cancel; the gradient's element by element):
ppo and dapo with dual-clip and cispo (both eps_low) in token_mean, seq_mean_token_sum and
seq_mean_token_sum_norm: 0 (bit-identical); in seq_mean_token_mean 1.0e-8, and sapo 1.0e-8 (verl's
+ 1e-8, below); gmpo 2.9e-8 (loss) and 4.5e-8 (gradient), from the same + 1e-8 in its exponent. `-s`
prints them per case.

Deliberate differences, each pinned exactly here and explained in docs/methods.md ("Against verl"):
  * dual-clip is an option here (off in ppo, grpo, dapo), always on in verl's vanilla (clip_ratio_c =
    3 by default): without it the losses differ by exactly sum over {A < 0, r > 3} of -A (r - 3) / N;
  * gmpo's mean is over the sequences with L > 0 (the minibatch's, `batch.totals.sequences`), verl's
    `torch.mean` over every row: verl * B = ours * (rows with L > 0);
  * seq_mean_token_mean divides each sequence by L, verl by L + 1e-8 (relative 1e-8 / L);
  * seq_mean_token_sum_norm needs a constant norm_tokens, verl's default is the padded width T;
  * verl's sapo ignores loss_agg_mode; ours has an aggregation (default: verl's).

Runs only where verl is importable (its own venv: `.ci/run`'s stage 4), with clipbench from the
checkout (PYTHONPATH=., no install: clipbench's transformers pin conflicts with verl's) and no
conftest (it imports clipbench's model code) nor the project's addopts (pytest-xdist is not there):

    python3 -m venv venv-verl && venv-verl/bin/pip install torch==2.13.0 verl==0.9.1 pytest
    PYTHONPATH=. venv-verl/bin/python -m pytest tests/test_verl_parity.py --noconftest -o addopts=""
"""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch

# Skipped where verl is not installed (the project's own venvs); CI's verl venv sets
# CLIPBENCH_REQUIRE_VERL=1, so that a broken verl install fails there instead of skipping.
if os.environ.get("CLIPBENCH_REQUIRE_VERL"):
    core_algos = importlib.import_module("verl.trainer.ppo.core_algos")
    actor_config = importlib.import_module("verl.workers.config.actor")
else:
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    actor_config = pytest.importorskip("verl.workers.config.actor")

from clipbench import methods  # noqa: E402  (after the skip: the import order is the point)

N_BATCHES = 120
RTOL = 1e-6
SEQ_MEAN_EPS = 1e-8  # verl's agg_loss and geo_mean: sum / (L + 1e-8)
AGGREGATIONS = {  # ours -> verl's loss_agg_mode
    "token_mean": "token-mean",
    "seq_mean_token_mean": "seq-mean-token-mean",
    "seq_mean_token_sum": "seq-mean-token-sum",
    "seq_mean_token_sum_norm": "seq-mean-token-sum-norm",
}
NORM_TOKENS = 16  # Dr. GRPO's constant: our norm_tokens, verl's loss_scale_factor


def random_batch(seed: int):
    """(logp, old_logp, advantages, mask), float64; see the module docstring."""
    g = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(2, 9, (1,), generator=g))
    width = int(torch.randint(1, 13, (1,), generator=g))
    lengths = torch.randint(0, width + 1, (rows,), generator=g)
    if seed % 2:
        lengths = lengths.clamp(min=1)  # half the batches have no empty row
    else:
        lengths[int(torch.randint(0, rows, (1,), generator=g))] = 0  # the other half at least one
    if not (lengths > 0).any():
        lengths[0] = width
    mask = torch.arange(width).expand(rows, width) < lengths.unsqueeze(1)
    scale = (0.05, 0.3, 1.0)[seed % 3]
    old = -torch.rand(rows, width, generator=g, dtype=torch.float64) * 3 - 0.01
    logp = old + scale * torch.randn(rows, width, generator=g, dtype=torch.float64)
    garbage = 30 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    logp = torch.where(mask, logp, garbage)
    old = torch.where(mask, old, -garbage)
    adv = torch.randn(rows, generator=g, dtype=torch.float64)
    adv[torch.rand(rows, generator=g) < 0.15] = 0.0
    return logp, old, adv, mask


def config(**fields):
    """verl's ActorConfig as its losses read it: one data-parallel rank, the batch's own totals."""
    loss_scale_factor = fields.pop("loss_scale_factor", None)
    return actor_config.ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        global_batch_info={
            "dp_size": 1,
            "batch_num_tokens": None,
            "global_batch_size": None,
            "loss_scale_factor": loss_scale_factor,
        },
        loss_scale_factor=loss_scale_factor,
        **fields,
    )


def ours(rule, logp, old, adv, mask):
    x = logp.clone().requires_grad_(True)
    loss = rule.loss(x, old, adv, mask).loss
    loss.backward()
    return loss.detach(), x.grad


def verls(name, cfg, logp, old, adv, mask, mode):
    x = logp.clone().requires_grad_(True)
    fn = core_algos.get_policy_loss_fn(name)
    advantages = adv.unsqueeze(-1).expand_as(logp)
    loss, _ = fn(old, x, advantages, mask.to(torch.float64), mode, cfg)
    loss.backward()
    return loss.detach(), x.grad


def loss_scale(rule, logp, old, adv, mask):
    """The size of the loss's terms: the sum over rows of |each row's share of the loss| (a row as a
    micro-batch with the batch's totals: the shares add up to the loss, tests/test_microbatch.py).
    The loss is their signed sum and may cancel to near 0, so its relative difference is taken
    against this; the gradient's elements each come from one row and are compared one by one."""
    totals = methods.BatchTotals.from_lengths(mask.sum(-1))
    shares = [
        rule.loss(logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], totals=totals).loss
        for i in range(len(adv))
    ]
    return float(sum(share.abs() for share in shares))


def relative_difference(got, want, scale):
    """(|loss difference| / scale, max over elements of |gradient difference| / |verl's element|)."""
    loss = float((got[0] - want[0]).abs()) / max(scale, 1e-300)
    nonzero = want[1] != 0
    assert torch.equal(got[1] == 0, ~nonzero), "the same elements of the gradient must be 0"
    grad = float(((got[1] - want[1]).abs()[nonzero] / want[1].abs()[nonzero]).max()) if nonzero.any() else 0.0
    return loss, grad


def assert_parity(got, want):
    """Loss and gradient equal to RTOL (for the pinned relations, whose terms do not cancel)."""
    torch.testing.assert_close(got[0], want[0], rtol=RTOL, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=RTOL, atol=1e-12)


def run_cases(rule, name, cfg, mode, batches=None):
    """Every batch: ours and verl's loss and gradient equal to RTOL (relative, as above); returns the
    largest relative differences (loss, gradient)."""
    worst, n = (0.0, 0.0), 0
    for seed in batches if batches is not None else range(N_BATCHES):
        batch = random_batch(seed)
        got, want = ours(rule, *batch), verls(name, cfg, *batch, mode)
        diff = relative_difference(got, want, loss_scale(rule, *batch))
        assert max(diff) <= RTOL, (seed, diff)
        worst, n = (max(worst[0], diff[0]), max(worst[1], diff[1])), n + 1
    print(
        f"\n{rule.name} {rule.hparams()} vs verl {name} ({mode}): {n} batches, max relative difference "
        f"loss {worst[0]:.1e}, gradient {worst[1]:.1e}"
    )
    return max(worst)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_ppo_with_dual_clip_is_verls_vanilla_in_every_aggregation(aggregation):
    norm = NORM_TOKENS if aggregation == "seq_mean_token_sum_norm" else None
    rule = methods.get_method("ppo", clip_ratio_c=3.0, aggregation=aggregation, norm_tokens=norm)
    cfg = config(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, loss_scale_factor=norm)
    worst = run_cases(rule, "vanilla", cfg, AGGREGATIONS[aggregation])
    assert worst < (2e-8 if aggregation == "seq_mean_token_mean" else 1e-12)


def test_dapo_with_dual_clip_is_verls_vanilla_with_clip_higher():
    rule = methods.get_method("dapo", clip_ratio_c=3.0)
    cfg = config(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    assert run_cases(rule, "vanilla", cfg, "token-mean") < 1e-12


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("eps_low", [None, 0.2])
def test_cispo_is_verls_cispo_in_every_aggregation(aggregation, eps_low):
    norm = NORM_TOKENS if aggregation == "seq_mean_token_sum_norm" else None
    rule = methods.get_method("cispo", eps_low=eps_low, aggregation=aggregation, norm_tokens=norm)
    # verl has no "no lower bound": a clip_ratio_low >= 1 puts the bound at 1 - 10 < 0 < every r.
    cfg = config(
        clip_ratio_low=10.0 if eps_low is None else eps_low, clip_ratio_high=0.2, loss_scale_factor=norm
    )
    worst = run_cases(rule, "cispo", cfg, AGGREGATIONS[aggregation])
    assert worst < (2e-8 if aggregation == "seq_mean_token_mean" else 1e-12)


@pytest.mark.parametrize(("tau_pos", "tau_neg"), [(1.0, 1.05), (4.0, 5.0)])
def test_sapo_is_verls_sapo(tau_pos, tau_neg):
    rule = methods.get_method("sapo", tau_pos=tau_pos, tau_neg=tau_neg)
    cfg = config(tau_pos=tau_pos, tau_neg=tau_neg)
    assert run_cases(rule, "sapo", cfg, "seq-mean-token-mean") < 2e-8


@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.4, 0.4), (0.2, 0.3)])
def test_gmpo_is_verls_geo_mean_without_empty_rows(eps_low, eps_high):
    rule = methods.get_method("gmpo", eps_low=eps_low, eps_high=eps_high)
    cfg = config(clip_ratio_low=eps_low, clip_ratio_high=eps_high)
    no_empty_rows = [seed for seed in range(2 * N_BATCHES) if seed % 2][:N_BATCHES]
    # verl's + 1e-8 enters the exponent (S / (L + 1e-8)) and the advantage: 1e-8 (1 + |S| / L).
    assert run_cases(rule, "geo_mean", cfg, "token-mean", no_empty_rows) < 1e-7


# --------------------------------------------------------------------------- pinned differences


def test_gmpo_divides_by_rows_with_tokens_verl_by_every_row():
    """verl's geo_mean takes torch.mean over all B rows (an empty row adds a 0 and counts); ours
    divides by the sequences with L > 0 (`batch.totals.sequences`, so that micro-batches add up):
    verl * B = ours * (rows with L > 0), loss and gradient."""
    rule = methods.get_method("gmpo")
    cfg = config(clip_ratio_low=0.4, clip_ratio_high=0.4)
    with_empty = [seed for seed in range(N_BATCHES) if seed % 2 == 0]
    for seed in with_empty:
        logp, old, adv, mask = random_batch(seed)
        rows, valid = mask.shape[0], int(mask.any(-1).sum())
        assert valid < rows
        (loss, grad), (v_loss, v_grad) = (
            ours(rule, logp, old, adv, mask),
            verls("geo_mean", cfg, logp, old, adv, mask, "token-mean"),
        )
        assert_parity((loss * valid, grad * valid), (v_loss * rows, v_grad * rows))
    assert len(with_empty) == N_BATCHES // 2


def test_vanilla_without_dual_clip_differs_by_the_dual_clipped_tokens_only():
    """ppo / grpo / dapo leave dual-clip off by default; verl's vanilla always applies it (c = 3).
    The token-mean losses then differ by exactly sum over {A < 0, r > 3} of -A (r - 3) / N (verl
    replaces -A r by -A c there), and the gradients on those tokens only (ours -A r / N, verl's 0)."""
    rule = methods.get_method("ppo")
    cfg = config(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0)
    differing = 0
    for seed in range(N_BATCHES):
        logp, old, adv, mask = random_batch(seed)
        (loss, grad), (v_loss, v_grad) = (
            ours(rule, logp, old, adv, mask),
            verls("vanilla", cfg, logp, old, adv, mask, "token-mean"),
        )
        r = torch.exp(torch.where(mask, logp - old, torch.zeros_like(logp)))
        a = adv.unsqueeze(-1).expand_as(r)
        dual = mask & (a < 0) & (r > 3.0)
        n = mask.sum()
        expected = (-a * (r - 3.0))[dual].sum() / n
        torch.testing.assert_close(loss - v_loss, expected, rtol=RTOL, atol=1e-12)
        torch.testing.assert_close(grad[~dual], v_grad[~dual], rtol=RTOL, atol=1e-12)
        torch.testing.assert_close(grad[dual], (-a * r / n)[dual], rtol=RTOL, atol=1e-12)
        assert (v_grad[dual] == 0).all()
        differing += bool(dual.any())
    assert differing >= 10, "the batches must reach r > 3 with A < 0 for this test to mean anything"


def test_seq_mean_token_mean_has_no_epsilon():
    """verl divides each sequence's token sum by L + 1e-8, we by L: on a one-token sequence verl's
    loss is exactly ours / (1 + 1e-8) (a relative 1e-8 / L, below the 1e-6 of the tests above)."""
    logp = torch.tensor([[-0.3]], dtype=torch.float64)
    old = torch.tensor([[-0.5]], dtype=torch.float64)
    adv, mask = torch.tensor([1.5], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool)
    for rule, name, cfg in (
        (methods.get_method("grpo", clip_ratio_c=3.0), "vanilla", config(clip_ratio_c=3.0)),
        (methods.get_method("sapo"), "sapo", config()),
    ):
        (loss, grad), (v_loss, v_grad) = (
            ours(rule, logp, old, adv, mask),
            verls(name, cfg, logp, old, adv, mask, "seq-mean-token-mean"),
        )
        assert loss != v_loss
        torch.testing.assert_close(v_loss * (1 + SEQ_MEAN_EPS), loss, rtol=1e-14, atol=0)
        torch.testing.assert_close(v_grad * (1 + SEQ_MEAN_EPS), grad, rtol=1e-14, atol=0)


def test_verls_default_sum_norm_constant_is_the_padded_width():
    """verl's seq-mean-token-sum-norm without loss_scale_factor divides by the batch's padded width T,
    which a micro-batch split changes; ours requires the constant norm_tokens: equal when it is T."""
    for seed in range(0, N_BATCHES, 7):
        logp, old, adv, mask = random_batch(seed)
        rule = methods.get_method(
            "ppo", clip_ratio_c=3.0, aggregation="seq_mean_token_sum_norm", norm_tokens=mask.shape[1]
        )
        assert_parity(
            ours(rule, logp, old, adv, mask),
            verls("vanilla", config(), logp, old, adv, mask, "seq-mean-token-sum-norm"),
        )


def test_verls_sapo_ignores_the_aggregation():
    """verl's sapo always aggregates seq-mean-token-mean, whatever loss_agg_mode says; ours has the
    aggregation as a hyperparameter (default seq_mean_token_mean): token_mean differs where lengths do."""
    differing = 0
    for seed in range(0, N_BATCHES, 5):
        batch = random_batch(seed)
        v_token_mean = verls("sapo", config(), *batch, "token-mean")
        assert_parity(v_token_mean, verls("sapo", config(), *batch, "seq-mean-token-mean"))
        lengths = batch[3].sum(-1)
        if lengths[lengths > 0].unique().numel() > 1:
            got = ours(methods.get_method("sapo", aggregation="token_mean"), *batch)
            differing += not math.isclose(float(got[0]), float(v_token_mean[0]), rel_tol=1e-6)
    assert differing > 0
