"""The normalisation contract of the method interface (clipbench/methods/base.py): a minibatch
split into micro-batches, each given the minibatch's `BatchTotals`, has losses, gradients,
metrics and per-sequence outputs that add up to exactly those of the unsplit minibatch, for every
registered rule, whatever the split (1, 2, 3 and 7 micro-batches; rows of length 0; a micro-batch
holding a single one-token row). A rule that normalises by its micro-batch's own counts fails."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from conftest import parity_reward

from clipbench import artifacts, methods
from clipbench.config import load_config
from clipbench.methods import (
    BatchTotals,
    LossOutput,
    Method,
    RolloutBatch,
    combine_outputs,
    hparam,
    prepare_batch,
    sum_statistics,
)
from clipbench.trainer import Trainer, split_by_tokens

# Every registered rule at its defaults, plus FSPO with the drift that needs the minibatch's l_t,
# GSPO with a band wide enough to keep some sequences inside it (its default puts all outside),
# SAPO with a sharp gate (below), the token rules' dual-clip and token-sum aggregations, and the
# power band (exponent fitted to the minibatch) with a band wide enough to keep some inside.
CASES = [(name, {}) for name in methods.available_methods()] + [
    ("fspo", {"drift": "kl"}),
    ("gspo", {"eps_low": 0.05, "eps_high": 0.05}),
    ("sapo", {"tau_pos": 10.0, "tau_neg": 12.0}),
    ("ppo", {"clip_ratio_c": 1.3, "aggregation": "seq_mean_token_sum"}),
    ("grpo", {"aggregation": "seq_mean_token_sum_norm", "norm_tokens": 16}),
    ("powerband", {"c_low": 0.1, "c_high": 0.1}),
]
# Default cases exempt from "the rule clips some units" (and only from that), with the reason.
# SAPO's soft gate at its defaults (tau ~ 1) counts a token as clipped only at r_t > 2.7 (l_t > 0.98,
# 6 sigma in this minibatch): none is. Its loss and gradient are still checked at the defaults;
# the sharp-gate case above checks the clip indicators split across micro-batches.
CLIPS_NOTHING_AT_DEFAULTS = {"sapo": "soft gate: 'clipped' needs |tau (r - 1)| > 1.76"}

# Row lengths of the test minibatch: long and short rows, two empty rows, a one-token row that
# the 7-way split puts alone in a micro-batch (rows 9 | 10 | 11: 1-token row 10 alone).
LENGTHS = [17, 3, 0, 9, 25, 1, 12, 0, 6, 14, 1, 8, 20, 2]
# Contiguous splits as the trainer makes them (row order kept): sizes of each micro-batch.
SPLITS = {1: [14], 2: [7, 7], 3: [5, 4, 5], 7: [3, 2, 2, 2, 1, 1, 3]}


def minibatch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (logp, old_logp, advantages, mask): per-token log-ratios ~ N(-0.01, 0.15^2), wide
    enough that every rule's default band clips some units and keeps others; advantages of both
    signs; NaN and inf off the mask (ignored by contract)."""
    g = torch.Generator().manual_seed(seed)
    rows, width = len(LENGTHS), max(LENGTHS) + 2
    mask = torch.arange(width).expand(rows, width) < torch.tensor(LENGTHS).unsqueeze(1)
    old = -torch.rand(rows, width, generator=g, dtype=torch.float64) * 3
    logp = old + (-0.01 + 0.15 * torch.randn(rows, width, generator=g, dtype=torch.float64))
    logp = torch.where(mask, logp, torch.full_like(logp, float("nan")))
    old = torch.where(mask, old, torch.full_like(old, float("inf")))
    adv = torch.randn(rows, generator=g, dtype=torch.float64)
    return logp, old, adv, mask


def unsplit(rule: Method, logp, old, adv, mask) -> tuple[LossOutput, torch.Tensor]:
    leaf = logp.clone().requires_grad_(True)
    out = rule.loss(leaf, old, adv, mask)
    out.loss.backward()
    return out, leaf.grad


def split(rule: Method, logp, old, adv, mask, sizes: list[int]) -> tuple[LossOutput, torch.Tensor]:
    """The micro-batch path as the trainer takes it: totals from the whole minibatch (with the
    rule's statistics, summed over the micro-batches, when it declares it needs them), then one
    loss and backward per micro-batch."""
    assert sum(sizes) == logp.shape[0]
    leaf = logp.clone().requires_grad_(True)
    statistics = None
    if rule.needs_minibatch_statistics:
        parts, start = [], 0
        for size in sizes:
            rows = slice(start, start + size)
            parts.append(
                rule.minibatch_statistics(prepare_batch(logp[rows], old[rows], adv[rows], mask[rows]))
            )
            start += size
        statistics = sum_statistics(parts)
    totals = BatchTotals.from_lengths(mask.sum(-1), statistics)
    outputs, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        out = rule.loss(leaf[rows], old[rows], adv[rows], mask[rows], totals=totals)
        out.loss.backward()
        outputs.append(out)
        start += size
    return combine_outputs(outputs), leaf.grad


def assert_same(got: tuple[LossOutput, torch.Tensor], want: tuple[LossOutput, torch.Tensor]) -> None:
    (out, grad), (ref, ref_grad) = got, want
    close = {"rtol": 1e-6, "atol": 1e-12}
    torch.testing.assert_close(out.loss.detach(), ref.loss.detach(), **close)
    torch.testing.assert_close(torch.nan_to_num(grad), torch.nan_to_num(ref_grad), **close)
    for name in ("seq_clip", "seq_out", "seq_log_ratio", "lengths", "log_ratio", "mask"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), **close, msg=name)
    assert out.metrics.keys() == ref.metrics.keys()
    for key, value in ref.metrics.items():
        assert out.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}{'-' + str(p) if p else ''}" for n, p in CASES])
@pytest.mark.parametrize("parts", sorted(SPLITS))
def test_every_rule_split_into_microbatches_equals_the_unsplit_minibatch(name, params, parts):
    rule = methods.get_method(name, **params)
    batch = minibatch()
    want = unsplit(rule, *batch)
    # The case is worth testing: the rule clips some units and keeps the gradient of others.
    if params or name not in CLIPS_NOTHING_AT_DEFAULTS:
        assert 0 < want[0].metrics["clip_frac"] < 1, want[0].metrics
    else:
        assert want[0].metrics["clip_frac"] == 0, "it clips now: drop it from CLIPS_NOTHING_AT_DEFAULTS"
    assert torch.isfinite(want[1]).all() and want[1].abs().sum() > 0
    assert_same(split(rule, *batch, SPLITS[parts]), want)


@dataclass(frozen=True)
class PerMicrobatchMean(Method):
    """The bug the contract forbids: a token mean over the micro-batch's own tokens."""

    level = "token"
    eps: float = hparam(0.2, help="half-width", gt=0, lt=1)

    def compute(self, batch: RolloutBatch) -> LossOutput:
        ratio = torch.exp(batch.log_ratio)
        objective = torch.minimum(
            ratio * batch.advantages[:, None], ratio.clamp(0.8, 1.2) * batch.advantages[:, None]
        )
        loss = -(objective * batch.mask).sum() / batch.lengths.sum().clamp(min=1)  # own count: wrong
        zeros = torch.zeros_like(batch.lengths)
        return LossOutput(loss=loss, seq_clip=zeros, seq_out=zeros, metrics={})


def test_a_rule_normalising_by_its_microbatch_fails_the_check():
    rule = PerMicrobatchMean()
    batch = minibatch()
    assert_same(split(rule, *batch, SPLITS[1]), unsplit(rule, *batch))  # unsplit, it agrees
    with pytest.raises(AssertionError):
        assert_same(split(rule, *batch, SPLITS[3]), unsplit(rule, *batch))


def test_minibatch_statistics_must_be_declared_to_be_read():
    logp, old, adv, mask = minibatch()
    totals = BatchTotals.from_lengths(mask.sum(-1))  # statistics not gathered
    with pytest.raises(RuntimeError, match="needs_minibatch_statistics"):
        methods.get_method("fspo", drift="kl").loss(logp[:5], old[:5], adv[:5], mask[:5], totals=totals)
    assert methods.get_method("fspo", drift="kl").needs_minibatch_statistics
    assert not methods.get_method("fspo").needs_minibatch_statistics
    methods.get_method("fspo").loss(logp[:5], old[:5], adv[:5], mask[:5], totals=totals)  # mu = 0: fine


def test_totals_smaller_than_the_batch_are_refused():
    logp, old, adv, mask = minibatch()
    small = BatchTotals.from_lengths(mask[:3].sum(-1))
    with pytest.raises(ValueError, match="whole minibatch"):
        methods.get_method("ppo").loss(logp, old, adv, mask, totals=small)


def test_totals_of_a_minibatch_by_hand():
    totals = BatchTotals.from_lengths(torch.tensor([2, 0, 1]), {"x": torch.tensor(-0.5)})
    assert (float(totals.tokens), float(totals.sequences), float(totals.statistics["x"])) == (3.0, 2.0, -0.5)
    parts = [
        {"x": torch.tensor(1.0), "y": torch.tensor(2.0)},
        {"x": torch.tensor(0.5), "y": torch.tensor(-1.0)},
    ]
    assert {k: float(v) for k, v in sum_statistics(parts).items()} == {"x": 1.5, "y": 1.0}
    with pytest.raises(ValueError, match="different names"):
        sum_statistics([{"x": torch.tensor(1.0)}, {"y": torch.tensor(1.0)}])


def test_combining_outputs():
    one = LossOutput(torch.tensor(1.0), torch.tensor([0.5]), torch.tensor([1.0]), {"m": -0.0})
    assert combine_outputs([one]) is one  # unsplit: untouched (-0.0 stays -0.0 in metrics.jsonl)
    two = LossOutput(torch.tensor(2.0), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), {"m": 0.25})
    both = combine_outputs([one, two])
    assert float(both.loss) == 3.0 and both.metrics == {"m": 0.25}
    assert both.seq_clip.tolist() == [0.5, 0.0, 1.0] and both.seq_out.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="different metrics"):
        combine_outputs([one, LossOutput(torch.tensor(0.0), one.seq_clip, one.seq_out, {"n": 1.0})])
    # The per-token l_t and masks of micro-batches of different widths: padded on the right (l_t 0,
    # mask false), so every row keeps its tokens in order; absent from one part: absent.
    assert both.log_ratio is None and both.mask is None
    narrow = dataclasses.replace(
        one, log_ratio=torch.tensor([[0.5, 0.25]]), mask=torch.tensor([[True, True]])
    )
    wide = dataclasses.replace(
        two,
        log_ratio=torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 0.0]]),
        mask=torch.tensor([[1, 1, 1], [0, 1, 0]]).bool(),
    )
    joined = combine_outputs([narrow, wide])
    assert joined.log_ratio.tolist() == [[0.5, 0.25, 0.0], [1.0, 2.0, 3.0], [0.0, 4.0, 0.0]]
    assert joined.mask.tolist() == [[True, True, False], [True, True, True], [False, True, False]]


# --------------------------------------------------------------------------- the trainer's split


def test_split_by_tokens_by_hand():
    assert split_by_tokens([5, 3, 9], None) == [[0, 1, 2]]
    assert split_by_tokens([5, 3, 9], 100) == [[0, 1, 2]]
    # 5 + 3 fit in 8; 9 is over the budget: alone; 2 + 4 fit; order kept throughout.
    assert split_by_tokens([5, 3, 9, 2, 4], 8) == [[0, 1], [2], [3, 4]]
    assert split_by_tokens([4, 4, 4], 4) == [[0], [1], [2]]
    assert split_by_tokens([], 8) == []


def run_config(base_model: str, method: str, params: dict, budget: int | None, kl_beta: float = 0.0):
    return load_config(
        {
            "model": base_model,
            "method": method,
            "method_params": params,
            "steps": 1,
            "data": {"n": 40},
            "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24},
            "optim": {"lr": 3e-3, "minibatches": 2, "epochs": 2, "max_tokens_per_microbatch": budget},
            "kl_beta": kl_beta,
        }
    )


def loss_calls(monkeypatch, method: Method) -> list[BatchTotals | None]:
    """The `totals` of every call of the rule's loss."""
    cls, seen = type(method), []
    real = cls.loss

    def spy(self, *args, totals=None):
        seen.append(totals)
        return real(self, *args, totals=totals)

    monkeypatch.setattr(cls, "loss", spy)
    return seen


@pytest.mark.parametrize(
    ("method", "params", "kl_beta"),
    [("grpo", {}, 0.0), ("ppo", {}, 0.5), ("fspo", {"c_low": 0.05, "c_high": 0.05, "drift": "kl"}, 0.0)],
)
def test_a_step_split_into_microbatches_is_the_unsplit_step(
    tmp_path, base_model, parity, monkeypatch, method, params, kl_beta
):
    """One RL step (2 minibatches x 2 epochs: on- and off-policy updates) with every minibatch
    split into micro-batches of at most 40 packed tokens gives the metrics, clip records and
    gradients of the same step unsplit, for a token mean, a sequence mean of token means with the
    KL penalty, and FSPO's drift (the minibatch's mean l_t, gathered before the first loss)."""
    runs, grads = {}, {}
    real_clip = torch.nn.utils.clip_grad_norm_
    for budget in (None, 40):
        config = run_config(base_model, method, params, budget, kl_beta)
        calls = loss_calls(monkeypatch, config.build_method())
        grads[budget] = []

        def watch(parameters, max_norm, seen=grads[budget]):
            parameters = list(parameters)
            seen.append(torch.cat([p.grad.flatten() for p in parameters if p.grad is not None]).clone())
            return real_clip(parameters, max_norm)

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", watch)
        trainer = Trainer(config, tmp_path / f"run_{budget}", progress=False)
        trainer.run()
        monkeypatch.undo()
        monkeypatch.setattr(Trainer, "_score", parity_reward)
        runs[budget] = (trainer, calls)
    (whole, whole_calls), (split_run, split_calls) = runs[None], runs[40]
    updates = 2 * 2
    assert len(whole_calls) == updates and all(t is None for t in whole_calls)
    assert len(split_calls) >= 3 * updates, "the budget should split each minibatch at least 3 ways"
    assert all(isinstance(t, BatchTotals) for t in split_calls)
    if params.get("drift") == "kl":
        assert all(t._statistics is not None for t in split_calls)

    def metrics(trainer):
        return json.loads((trainer.run_dir / "metrics.jsonl").read_text())

    want, got = metrics(whole), metrics(split_run)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    if kl_beta:
        assert want["kl_ref"] > 0
    records = [artifacts.read_clip_records(trainer.run_dir) for trainer in (whole, split_run)]
    sums = ["S", *artifacts.PREFIX_COLUMNS]  # S and its prefix sums: float32 sums of l_t, rounded differently
    pd.testing.assert_frame_equal(
        records[0].drop(columns=sums), records[1].drop(columns=sums), check_exact=False, rtol=1e-4, atol=1e-6
    )
    for column in sums:
        assert records[0][column].isna().equals(records[1][column].isna()), column
        assert not ((records[0][column] - records[1][column]).abs() >= 1e-4).any(), column
    # Gradients, update by update, as clipping saw them (the two runs round differently in float32,
    # and later updates start from weights that differ by as much through AdamW).
    for update, (a, b) in enumerate(zip(grads[None], grads[40], strict=True)):
        assert float((a - b).norm() / a.norm()) < 1e-4, update
