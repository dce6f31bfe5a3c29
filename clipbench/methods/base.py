"""The method interface and the maths every clipping rule shares.

What lives here:

* `Method`: the base class of every rule. A rule is a frozen dataclass whose fields are its
  hyperparameters (declared with `hparam`, which carries the field's documentation and its valid
  range); `Method.loss` validates and sanitises the inputs once, then calls the rule's `compute`.
* `RolloutBatch`: the sanitised inputs a rule sees (log-ratios zeroed off the mask, lengths, S),
  with the `BatchTotals` of the minibatch it is part of.
* `BatchTotals`: the counts a rule normalises by, over the whole minibatch of one optimizer step.
* `LossOutput`: what every rule returns; `combine_outputs` joins the outputs of micro-batches.
* Shared maths: masked sums and means, the PPO pessimistic min with its clip-active and
  out-of-band indicators, and the two rule skeletons (`token_level_rule`, `sequence_level_rule`)
  with their aggregations.

Notation (DESIGN.md): l_t = logp_t - old_logp_t on response tokens, L = sum_t mask_t,
S = sum_t l_t (the sequence log importance ratio), A = the sequence's advantage. Every rule
minimises -min(w * A, clip(w) * A) per unit (token or sequence).

Normalisation contract (micro-batching): the trainer may split a minibatch into micro-batches
and accumulate their gradients before one optimizer step. A rule's loss and every metric it
reports must then be a sum over the units of the batch it is given divided by a total of the
whole minibatch, read from `batch.totals` (never from the batch's own counts): the micro-batch
losses, gradients and metrics then add up to exactly those of the unsplit minibatch, whatever
the split. Unsplit (`totals` not given), the totals are the batch's own, so nothing changes.
A rule whose band needs a statistic of the current policy over the whole minibatch (FSPO's
`drift="kl"`: the mean l_t) declares it with `needs_minibatch_statistics` and computes it, as
sums that add over micro-batches, in `minibatch_statistics`; the trainer gathers them over the
minibatch before the first micro-batch's loss (`batch.totals.statistics`).
tests/test_microbatch.py checks every registered rule split 1, 2, 3 and 7 ways.

Numerical guard: every log-weight is clamped to [-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP] (= +-20)
before `exp`, so e^S never overflows (float32 overflows past e^88). The clamp sits far outside
every band, so it never changes which units are clipped; it only zeroes the gradient of a unit
whose log-weight is already beyond +-20 (such a unit is clipped by every band anyway).

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

LOG_WEIGHT_CLAMP = 20.0

REQUIRED_METRICS = ("clip_frac", "clip_frac_low", "clip_frac_high", "ppo_kl")


# --------------------------------------------------------------------------- hyperparameters


def hparam(
    default: Any,
    *,
    help: str,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Declare a hyperparameter field: its default, what it means (`help`, with its source) and its
    valid values (open bounds `gt`/`lt`, closed bounds `ge`/`le`, or a tuple of `choices`; a float
    must also be finite). These declarations are the only check of a rule's hyperparameters: a
    config, a study and the simulator all build the rule with `get_method`, which runs them."""
    meta = {"help": help, "gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


def _range_text(meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo = (
        f"({meta['gt']}"
        if meta.get("gt") is not None
        else (f"[{meta['ge']}" if meta.get("ge") is not None else "(-inf")
    )
    hi = (
        f"{meta['lt']})"
        if meta.get("lt") is not None
        else (f"{meta['le']}]" if meta.get("le") is not None else "inf)")
    )
    return f"in {lo}, {hi}"


def _check_value(owner: str, name: str, kind: type, meta: dict, value: Any) -> Any:
    """Type-check and range-check one hyperparameter; return it coerced (int -> float). A field
    typed `X | None` accepts None (the option is off) or a valid X."""
    where = f"{owner}.{name}={value!r}"
    args = typing.get_args(kind)
    if type(None) in args:
        if value is None:
            return None
        (kind,) = [a for a in args if a is not type(None)]
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: must be a number")
        value = float(value)
        if not math.isfinite(value):  # NaN or inf: no band, no rule
            raise ValueError(f"{where}: must be finite")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: must be an integer")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string")
    checks = (
        ("choices", lambda v, c: v in c),
        ("gt", lambda v, b: v > b),
        ("ge", lambda v, b: v >= b),
        ("lt", lambda v, b: v < b),
        ("le", lambda v, b: v <= b),
    )
    for key, ok in checks:
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ValueError(f"{where}: must be {_range_text(meta)}")
    return value


# --------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class BatchTotals:
    """Totals over the whole minibatch of one optimizer step: what a rule divides by.

    tokens:     () response tokens of the minibatch (the denominator of a token mean).
    sequences:  () sequences with L > 0 (the denominator of a mean over sequences).
    statistics: the minibatch's sums that the rule's `minibatch_statistics` computes (under the
                current weights, detached); gathered only for a rule that declares
                `needs_minibatch_statistics` (reading them otherwise raises, so a rule cannot use
                a micro-batch's own by mistake).

    `from_lengths` makes them from a minibatch's response lengths (and its statistics), for
    micro-batches; `Method.loss` makes them from the batch itself when none are given, and
    `prepare_batch` casts given ones to the log-ratio dtype and device.
    """

    tokens: torch.Tensor
    sequences: torch.Tensor
    _statistics: dict[str, torch.Tensor] | None = None

    @property
    def statistics(self) -> dict[str, torch.Tensor]:
        if self._statistics is None:
            raise RuntimeError(
                "BatchTotals.statistics were not gathered: a rule that reads statistics of the whole "
                "minibatch must declare needs_minibatch_statistics (see clipbench/methods/base.py)"
            )
        return self._statistics

    @classmethod
    def from_lengths(
        cls, lengths: torch.Tensor, statistics: dict[str, torch.Tensor] | None = None
    ) -> BatchTotals:
        """The totals of a minibatch from its (B,) response lengths L and its statistics (sums)."""
        lengths = lengths.to(torch.float64)
        return cls(
            tokens=lengths.sum(),
            sequences=(lengths > 0).sum().to(torch.float64),
            _statistics=None if statistics is None else {k: v.detach() for k, v in statistics.items()},
        )

    def to(self, dtype: torch.dtype, device: torch.device) -> BatchTotals:
        def cast(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype=dtype, device=device)

        statistics = None if self._statistics is None else {k: cast(v) for k, v in self._statistics.items()}
        return BatchTotals(cast(self.tokens), cast(self.sequences), statistics)


@dataclass(frozen=True)
class RolloutBatch:
    """The inputs of one loss call, validated and sanitised (nothing off the mask survives).

    `logp` is the caller's tensor itself (gradients flow through it); `log_ratio` is l_t with
    masked positions set to exactly 0, so any sum over tokens is a sum over response tokens.
    `totals` are the minibatch's (the batch's own when it is not a micro-batch): divide by them.
    """

    logp: torch.Tensor  # (B, T)
    log_ratio: torch.Tensor  # (B, T), l_t on the mask, 0 elsewhere
    advantages: torch.Tensor  # (B,)
    mask: torch.Tensor  # (B, T) bool
    lengths: torch.Tensor  # (B,) L, in the log-ratio dtype
    totals: BatchTotals

    @functools.cached_property
    def seq_log_ratio(self) -> torch.Tensor:
        """(B,) S = sum_t l_t over the response tokens."""
        return self.log_ratio.sum(dim=-1)

    @property
    def valid(self) -> torch.Tensor:
        """(B,) bool: sequences with at least one response token (L > 0)."""
        return self.lengths > 0


#: What ``seq_clip`` and ``seq_out`` count for a rule with a hard clip, by level (printed by
#: ``clipbench methods``; a rule whose clip removes no gradient defines its own in its docstring).
CLIP_RECORDS_MEANING = {
    "token": "seq_clip is the share of a sequence's tokens whose gradient the clip removed (the clipped "
    "branch of the min selected), seq_out the share outside the band whatever the advantage's sign",
    "sequence": "seq_clip is 1 when the clip removed the sequence's gradient (the clipped branch of the min "
    "selected), else 0; seq_out is 1 when its weight lies outside the band, whatever the advantage's sign",
}


@dataclass(frozen=True)
class LossOutput:
    """What a rule returns for one batch.

    loss:     scalar to backpropagate (the rule's own aggregation).
    seq_clip: (B,) per sequence, the fraction of its units whose gradient the clip removed
              (clip active: the clipped branch of the min is selected). Token rules give a
              token fraction, sequence rules 0 or 1; 0 for a row of length 0. A rule that removes
              no gradient (cispo's capped weight, sapo's soft gate) defines its indicator in its
              class docstring.
    seq_out:  (B,) per sequence, the fraction of its units outside the band, whatever the sign
              of the advantage.
    metrics:  floats; at least clip_frac, clip_frac_low, clip_frac_high (clip active, by side of
              the band; low + high = clip_frac) and ppo_kl (token mean of -l_t, the k1 estimate of
              KL(pi_old || pi_theta)); also out_frac (fraction of units outside the band).
    seq_log_ratio, lengths: (B,) S = sum_t l_t (detached) and L per sequence, exactly as the rule
              saw them; filled in by :meth:`Method.loss` (a rule's ``compute`` leaves them None),
              so the trainer's clip records need no second pass over the batch.
    log_ratio, mask: (B, T) the per-token l_t (detached; exactly 0 off the mask) whose row sums are
              `seq_log_ratio`, and the response mask (bool) that counts `lengths`: the tensors the
              clip records' prefix sums S_k are taken from (filled in by :meth:`Method.loss` too).
    """

    loss: torch.Tensor
    seq_clip: torch.Tensor
    seq_out: torch.Tensor
    metrics: dict[str, float]
    seq_log_ratio: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    log_ratio: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def _pad_cat(parts: list[torch.Tensor], fill: float | bool) -> torch.Tensor:
    """(B, T) tensors of different widths T concatenated along rows, each padded on the right with
    `fill` to the widest: a micro-batch is collated to its own longest sequence."""
    width = max(part.shape[1] for part in parts)
    out = parts[0].new_full((sum(part.shape[0] for part in parts), width), fill)
    row = 0
    for part in parts:
        out[row : row + part.shape[0], : part.shape[1]] = part
        row += part.shape[0]
    return out


def combine_outputs(outputs: list[LossOutput]) -> LossOutput:
    """One minibatch's output from its micro-batches' (in row order), each computed with the
    minibatch's totals: the loss (detached) and every metric summed, the per-sequence tensors
    concatenated (the (B, T) per-token ones padded on the right: l_t = 0 and mask false, so
    sums and prefix sums over the mask are unchanged). A single output is returned as it is."""
    if len(outputs) == 1:
        return outputs[0]
    keys = list(outputs[0].metrics)
    if any(list(out.metrics) != keys for out in outputs):
        raise ValueError("micro-batch outputs report different metrics")

    def cat(name: str) -> torch.Tensor | None:
        parts = [getattr(out, name) for out in outputs]
        return None if any(part is None for part in parts) else torch.cat(parts)

    def padded(name: str, fill: float | bool) -> torch.Tensor | None:
        parts = [getattr(out, name) for out in outputs]
        return None if any(part is None for part in parts) else _pad_cat(parts, fill)

    return LossOutput(
        loss=sum(out.loss.detach() for out in outputs),
        seq_clip=cat("seq_clip"),
        seq_out=cat("seq_out"),
        metrics={key: sum(out.metrics[key] for out in outputs) for key in keys},
        seq_log_ratio=cat("seq_log_ratio"),
        lengths=cat("lengths"),
        log_ratio=padded("log_ratio", 0.0),
        mask=padded("mask", False),
    )


def sum_statistics(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A minibatch's statistics from its micro-batches' (`Method.minibatch_statistics`): each
    summed, in float64 on the CPU."""
    keys = list(parts[0]) if parts else []
    if any(list(part) != keys for part in parts):
        raise ValueError("micro-batches' statistics have different names")
    return {key: sum(part[key].detach().double().cpu() for part in parts) for key in keys}


def prepare_batch(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    totals: BatchTotals | None = None,
) -> RolloutBatch:
    """Validate shapes and dtypes and zero everything off the mask (NaN and inf included).
    Without `totals` the batch is a whole minibatch: its totals are its own counts (statistics
    not gathered: `Method.loss` adds the rule's); given, they must cover at least the batch's own
    tokens and sequences."""
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    if old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp, old_logp and mask must share a shape, got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (B,) = ({logp.shape[0]},), got {tuple(advantages.shape)}")
    if not logp.is_floating_point():
        raise ValueError(f"logp must be a float tensor, got {logp.dtype}")
    mask = mask.bool() if mask.dtype == torch.bool else mask > 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # torch.where, not multiplication: NaN * 0 is NaN, and its gradient would be NaN too.
    log_ratio = torch.where(mask, logp - old_logp.detach().to(logp.dtype), zero)
    lengths = mask.sum(dim=-1).to(logp.dtype)
    advantages = advantages.detach().to(logp.dtype)
    if totals is None:
        totals = BatchTotals(tokens=lengths.sum(), sequences=(lengths > 0).sum().to(logp.dtype))
    else:
        totals = totals.to(logp.dtype, logp.device)
        own_tokens, own_sequences = float(lengths.sum()), float((lengths > 0).sum())
        if float(totals.tokens) < own_tokens or float(totals.sequences) < own_sequences:
            raise ValueError(
                f"totals cover {float(totals.tokens):g} tokens and {float(totals.sequences):g} sequences, "
                f"fewer than this batch's own {own_tokens:g} and {own_sequences:g}: they must be the whole "
                "minibatch's"
            )
    return RolloutBatch(
        logp=logp,
        log_ratio=log_ratio,
        advantages=advantages,
        mask=mask,
        lengths=lengths,
        totals=totals,
    )


# --------------------------------------------------------------------------- shared maths


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over the positions where `mask` is true (values elsewhere never leak)."""
    kept = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the masked positions; 0 where the mask is empty (never NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


@dataclass(frozen=True)
class ClippedUnits:
    """The pessimistic PPO min evaluated on a set of units (tokens or sequences).

    objective:   min(w * A, clip(w) * A) per unit (to be maximised; the loss is its negative).
    below/above: the log-weight lies strictly outside the band, on the low or the high side.
    clip_active: the clipped branch of the min is selected, so the unit's gradient is removed:
                 above the band with A > 0, or below it with A < 0.
    """

    objective: torch.Tensor
    clip_active: torch.Tensor
    below: torch.Tensor
    above: torch.Tensor

    @property
    def outside(self) -> torch.Tensor:
        return self.below | self.above


def _exp_bound(bound: torch.Tensor | float) -> torch.Tensor | float:
    """exp of a band bound, as a constant: the clipped branch never carries a gradient, even
    when a rule computes its bounds from the batch (FSPO's drift)."""
    if isinstance(bound, torch.Tensor):
        return torch.exp(bound.detach().clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))
    return math.exp(max(-LOG_WEIGHT_CLAMP, min(LOG_WEIGHT_CLAMP, bound)))


def clipped_objective(
    log_w: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float, adv: torch.Tensor
) -> ClippedUnits:
    """PPO's pessimistic objective for weight w = exp(log_w) with the band [low, high] on log_w.

    The band is tested in log space, so a unit whose log-weight equals a bound is inside it.
    min(w A, clip(w) A) selects the clipped branch exactly when w is above the band and A > 0, or
    below it and A < 0: those units get the constant clip(w) A (gradient 0); every other unit
    gets w A (inside the band, or outside on the side where the min keeps the unclipped term).
    `adv` must broadcast against `log_w`; where it is 0 the unit contributes nothing.
    """
    below = log_w < low
    above = log_w > high
    active = (above & (adv > 0)) | (below & (adv < 0))
    weight = torch.exp(log_w.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))
    clipped_weight = weight.detach().clamp(min=_exp_bound(low), max=_exp_bound(high))
    objective = torch.where(active, clipped_weight, weight) * adv
    return ClippedUnits(objective=objective, clip_active=active, below=below, above=above)


def _fraction(indicator: torch.Tensor, count: torch.Tensor) -> float:
    return float(indicator.sum()) / max(float(count), 1.0)


def clip_metrics(units: ClippedUnits, n_units: torch.Tensor, batch: RolloutBatch) -> dict[str, float]:
    """The metrics every rule reports, as fractions of its units (tokens or sequences): counts in
    this batch over `n_units`, the minibatch's number of units (from `batch.totals`), so that
    micro-batches' metrics add up to the minibatch's. The indicators must already be false on
    units that do not count (off the mask, empty rows)."""
    with torch.no_grad():
        return {
            "clip_frac": _fraction(units.clip_active, n_units),
            "clip_frac_low": _fraction(units.clip_active & units.below, n_units),
            "clip_frac_high": _fraction(units.clip_active & units.above, n_units),
            "out_frac": _fraction(units.outside, n_units),
            "ppo_kl": -float(batch.log_ratio.detach().sum()) / max(float(batch.totals.tokens), 1.0),
        }


TOKEN_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def aggregate_tokens(
    objective: torch.Tensor, batch: RolloutBatch, aggregation: str, norm_tokens: float | None = None
) -> torch.Tensor:
    """The loss, to minimise, from a (B, T) per-token objective to maximise (zero off the mask):
    minus its aggregate, kept apart from every rule (verl's `agg_loss`; the sign applied to the
    sums, as the rules did before it existed, so a zero objective gives -0.0 as it always did).
    Every denominator is the minibatch's (`batch.totals`):

      token_mean:              sum over all response tokens / their number (PPO, DAPO;
                               verl "token-mean"): a long response weighs more in total.
      seq_mean_token_mean:     each sequence's token mean, then the mean over the sequences with
                               L > 0 (GRPO; verl "seq-mean-token-mean"): every response weighs the same.
      seq_mean_token_sum:      each sequence's token sum, then the mean over the sequences with
                               L > 0 (verl "seq-mean-token-sum").
      seq_mean_token_sum_norm: seq_mean_token_sum divided by the constant `norm_tokens` (Dr. GRPO,
                               Liu et al. 2025, arXiv 2503.20783, sec. 3.1: the 1/|o_i| of GRPO
                               replaced by a constant, e.g. the generation budget; verl
                               "seq-mean-token-sum-norm" with `loss_scale_factor`). Required here,
                               never the batch's padded width (which a micro-batch changes).
    """
    totals = batch.totals
    if aggregation == "token_mean":
        return -objective.sum() / totals.tokens.clamp(min=1)
    if aggregation == "seq_mean_token_mean":
        per_seq = -objective.sum(dim=-1) / batch.lengths.clamp(min=1)
        return per_seq.sum() / totals.sequences.clamp(min=1)
    if aggregation in ("seq_mean_token_sum", "seq_mean_token_sum_norm"):
        loss = -objective.sum(dim=-1).sum() / totals.sequences.clamp(min=1)
        if aggregation == "seq_mean_token_sum":
            return loss
        if norm_tokens is None:
            raise ValueError("aggregation='seq_mean_token_sum_norm' needs norm_tokens (Dr. GRPO's constant)")
        return loss / norm_tokens
    raise ValueError(f"aggregation={aggregation!r}: must be one of {', '.join(TOKEN_AGGREGATIONS)}")


def check_aggregation(owner: str, aggregation: str, norm_tokens: float | None) -> None:
    """The cross-field check of a rule with `aggregation` and `norm_tokens` hyperparameters (the
    token rules, cispo, sapo): norm_tokens is required by seq_mean_token_sum_norm and refused by
    the other aggregations. ValueError naming the field otherwise."""
    sum_norm = aggregation == "seq_mean_token_sum_norm"
    if sum_norm and norm_tokens is None:
        raise ValueError(f"{owner}.norm_tokens: required by aggregation='seq_mean_token_sum_norm'")
    if not sum_norm and norm_tokens is not None:
        raise ValueError(
            f"{owner}.norm_tokens={norm_tokens!r}: only aggregation='seq_mean_token_sum_norm' uses it "
            f"(aggregation is {aggregation!r})"
        )


def token_level_rule(
    batch: RolloutBatch,
    low: float,
    high: float,
    aggregation: str,
    *,
    clip_ratio_c: float | None = None,
    norm_tokens: float | None = None,
) -> LossOutput:
    """A rule that clips each token's ratio r_t = exp(l_t) to [exp(low), exp(high)] (low < 0 < high),
    aggregated by `aggregate_tokens(..., aggregation, norm_tokens)`.

    clip_ratio_c: dual-clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    RL", arXiv 1912.09729, eq. 4; verl's `clip_ratio_c`): for A < 0 the objective is also bounded
    below by c A, so a token with r_t > c (far above the band, where PPO's min keeps the
    unbounded r_t A) gets the constant c A and no gradient: it counts as clip-active, on the high
    side. Must be >= exp(high) (verl asks only c > 1; a c inside the band would clip in-band
    tokens). None: off.
    """
    if not low < 0 < high:
        raise ValueError(f"token_level_rule: the band [{low}, {high}] on l_t must contain 0")
    # Advantages are zeroed off the mask, and l_t = 0 there lies inside the band, so no
    # indicator or objective term survives off the mask.
    zero = torch.zeros((), dtype=batch.log_ratio.dtype, device=batch.log_ratio.device)
    adv = torch.where(batch.mask, batch.advantages.unsqueeze(-1), zero)
    units = clipped_objective(batch.log_ratio, low, high, adv)
    extra = {}
    if clip_ratio_c is not None:
        if clip_ratio_c < math.exp(high) * (1 - 1e-12):
            raise ValueError(
                f"clip_ratio_c={clip_ratio_c} must be >= the band's upper ratio {math.exp(high):g}"
            )
        # c = exp(high) (allowed) may sit one rounding below `high` in log space: never inside the band.
        dual = (adv < 0) & (batch.log_ratio > max(math.log(clip_ratio_c), high))
        units = ClippedUnits(
            objective=torch.where(dual, clip_ratio_c * adv, units.objective),
            clip_active=units.clip_active | dual,
            below=units.below,
            above=units.above,
        )
        extra["clip_frac_dual"] = _fraction(dual, batch.totals.tokens)
    loss = aggregate_tokens(units.objective, batch, aggregation, norm_tokens)
    out = token_level_output(loss, units, batch)
    return dataclasses.replace(out, metrics={**out.metrics, **extra})


def token_level_output(loss: torch.Tensor, units: ClippedUnits, batch: RolloutBatch) -> LossOutput:
    """The `LossOutput` of a rule whose units are tokens: `loss` with seq_clip and seq_out the
    fractions of each sequence's tokens that are clip-active and outside the band (0 for a row of
    length 0), and the metrics over the minibatch's tokens. The indicators must be false off the
    mask."""
    lengths = batch.lengths
    with torch.no_grad():
        seq_clip = units.clip_active.sum(dim=-1).to(lengths.dtype) / lengths.clamp(min=1)
        seq_out = units.outside.sum(dim=-1).to(lengths.dtype) / lengths.clamp(min=1)
    metrics = clip_metrics(units, batch.totals.tokens, batch)
    return LossOutput(loss=loss, seq_clip=seq_clip, seq_out=seq_out, metrics=metrics)


@dataclass(frozen=True)
class TokenClipRule:
    """The hyperparameters and `compute` of the PPO-style token rules (ppo, grpo, dapo: presets
    of one rule that differ only in their defaults). A subclass of `Method` mixes it in and
    redeclares a field to change its default or cite its paper."""

    band_fields = ("eps_low", "eps_high")  # the ratio band, set by `clipbench calibrate` when listed

    eps_low: float = hparam(
        0.2, help="lower half-width of the ratio band, r_t >= 1 - eps_low (PPO paper: 0.2)", gt=0, lt=1
    )
    eps_high: float = hparam(
        0.2, help="upper half-width of the ratio band, r_t <= 1 + eps_high (PPO paper: 0.2)", gt=0, lt=1
    )
    aggregation: str = hparam(
        "token_mean",
        help="how token losses become the loss (clipbench.methods.base.aggregate_tokens): token_mean (PPO), "
        "seq_mean_token_mean (GRPO), seq_mean_token_sum, seq_mean_token_sum_norm (Dr. GRPO, arXiv 2503.20783)",
        choices=TOKEN_AGGREGATIONS,
    )
    norm_tokens: float | None = hparam(
        None,
        help="Dr. GRPO's constant for seq_mean_token_sum_norm (arXiv 2503.20783: the generation budget, "
        "e.g. max_new_tokens); required by that aggregation, refused by the others",
        gt=0,
    )
    clip_ratio_c: float | None = hparam(
        None,
        help="dual-clip bound (Ye et al. 2020, arXiv 1912.09729; verl default 3.0): for A < 0, r_t > c gets "
        "the constant c A; must be >= 1 + eps_high; null: off",
        gt=1,
    )

    def validate(self) -> None:
        check_aggregation(self.name, self.aggregation, self.norm_tokens)
        if self.clip_ratio_c is not None and self.clip_ratio_c < 1 + self.eps_high:
            raise ValueError(
                f"{self.name}.clip_ratio_c={self.clip_ratio_c!r}: must be >= 1 + eps_high = {1 + self.eps_high:g}"
            )

    def compute(self, batch: RolloutBatch) -> LossOutput:
        return token_level_rule(
            batch,
            *log_band(self.eps_low, self.eps_high),
            self.aggregation,
            clip_ratio_c=self.clip_ratio_c,
            norm_tokens=self.norm_tokens,
        )


def sequence_level_rule(
    batch: RolloutBatch,
    log_w: torch.Tensor,
    low: torch.Tensor | float,
    high: torch.Tensor | float,
) -> LossOutput:
    """A rule with one weight per sequence, w = exp(log_w), clipped to [exp(low), exp(high)]
    (bounds may differ per sequence). The loss is the mean of -min(w A, clip(w) A) over the
    sequences with L > 0 (of the minibatch: `batch.totals.sequences`); rows of length 0
    contribute nothing and report seq_clip = seq_out = 0."""
    valid = batch.valid
    zero = torch.zeros((), dtype=batch.log_ratio.dtype, device=batch.log_ratio.device)
    units = clipped_objective(log_w, low, high, torch.where(valid, batch.advantages, zero))
    units = ClippedUnits(
        objective=units.objective,
        clip_active=units.clip_active,
        below=units.below & valid,
        above=units.above & valid,
    )
    loss = -units.objective.sum() / batch.totals.sequences.clamp(min=1)
    dtype = batch.log_ratio.dtype
    metrics = clip_metrics(units, batch.totals.sequences, batch)
    return LossOutput(
        loss=loss, seq_clip=units.clip_active.to(dtype), seq_out=units.outside.to(dtype), metrics=metrics
    )


def log_band(eps_low: float, eps_high: float) -> tuple[float, float]:
    """The ratio band [1 - eps_low, 1 + eps_high] in log space."""
    return math.log1p(-eps_low), math.log1p(eps_high)


# --------------------------------------------------------------------------- the base class


@dataclass(frozen=True)
class Method:
    """Base class of every clipping rule.

    Subclasses are frozen dataclasses registered with `@register("name")`; their fields are
    hyperparameters declared with `hparam` (validated on construction, so an invalid value fails
    before any compute, with a message naming the field and the value). A subclass sets `level`
    ("token" or "sequence") and implements `compute(batch) -> LossOutput`.
    """

    name: ClassVar[str] = ""
    level: ClassVar[str] = ""
    #: The hyperparameters that set the band's half-widths (float fields, each widening the band
    #: as it grows, so the share of units outside the band never rises with it): what the study's
    #: matched clip budgets set (`clipbench calibrate`, clipbench.calibration; all of them to one
    #: value, a symmetric band). A sequence-level rule declares them to be calibrated (a study's
    #: calibration calibrates every sequence-level rule unless it lists some); a token-level rule
    #: declares them to be calibrated when listed, its rate a share of tokens; empty: the rule cannot
    #: be calibrated (a calibration that names it is refused). `register` checks them.
    band_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def needs_minibatch_statistics(self) -> bool:
        """Whether `compute` reads `batch.totals.statistics` (sums over the whole minibatch under
        the current weights, from `minibatch_statistics`); a micro-batching trainer then gathers
        them with an extra forward pass without gradients. Override to return True where the
        rule needs them (and implement `minibatch_statistics`)."""
        return False

    def minibatch_statistics(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """The sums over `batch` (detached () tensors; the minibatch's is the sum of its
        micro-batches') that the rule's `compute` reads from `batch.totals.statistics`. A
        function of `log_ratio`, `mask`, `lengths` and `advantages` only (on policy the trainer
        gives it l_t = 0 without a forward pass), never of `batch.totals`."""
        raise NotImplementedError(f"{type(self).__name__} declares no minibatch statistics")

    def __post_init__(self) -> None:
        owner = type(self).name or type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _check_value(owner, f.name, hints[f.name], dict(f.metadata), getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override to add some. Per-field ranges come from `hparam`."""

    def loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        totals: BatchTotals | None = None,
    ) -> LossOutput:
        """The rule's loss on a batch.

        logp, old_logp: (B, T) log-probs of the sampled tokens under the current and the
        behaviour policy (old_logp is treated as a constant); advantages: (B,) one per sequence;
        mask: (B, T) response tokens (bool or 0/1). Values off the mask are ignored, even NaN/inf.
        totals: for a micro-batch, the whole minibatch's (`BatchTotals.from_lengths`, with the
        rule's `minibatch_statistics` when it `needs_minibatch_statistics`); the micro-batches'
        losses, gradients and metrics then sum to the minibatch's. None: the batch is the whole
        minibatch.
        """
        batch = prepare_batch(logp, old_logp, advantages, mask, totals)
        if totals is None and self.needs_minibatch_statistics:
            own = dataclasses.replace(batch.totals, _statistics=self.minibatch_statistics(batch))
            batch = dataclasses.replace(batch, totals=own)
        out = self.compute(batch)
        return dataclasses.replace(
            out,
            seq_log_ratio=batch.seq_log_ratio.detach(),
            lengths=batch.lengths,
            log_ratio=batch.log_ratio.detach(),
            mask=batch.mask,
        )

    def compute(self, batch: RolloutBatch) -> LossOutput:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (for configs and result files)."""
        return dataclasses.asdict(self)

    @classmethod
    def clip_records_meaning(cls) -> str:
        """What the rule's per-sequence clip records (``seq_clip``, ``seq_out``) count: the class
        docstring's paragraph that defines them (a rule that removes no gradient, such as a capped
        weight or a soft gate, must have one), else its level's hard-clip meaning."""
        paragraphs = (cls.__doc__ or "").strip().split("\n\n")
        own = [p for p in paragraphs[1:] if "seq_clip" in p]
        return " ".join(own[0].split()) if own else CLIP_RECORDS_MEANING[cls.level]

    @classmethod
    def describe(cls) -> str:
        """A human-readable description: the docstring's first paragraph, what its clip records
        count (:meth:`clip_records_meaning`) and every hyperparameter."""
        summary = (cls.__doc__ or "").strip().split("\n\n")[0]
        lines = [
            f"{cls.name} ({cls.level} level): {' '.join(summary.split())}",
            f"  clip records: {cls.clip_records_meaning()}",
        ]
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            lines.append(f"  {f.name} = {f.default!r} ({_range_text(meta)}): {meta.get('help', '')}")
        if cls.band_fields:
            lines.append(f"  band (set by `clipbench calibrate`): {', '.join(cls.band_fields)}")
        return "\n".join(lines)
