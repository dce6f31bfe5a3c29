"""Power band: the sequence log-ratio S clipped in a band whose half-width grows as L^b, with b a
hyperparameter or fitted to the minibatch. clipbench's own rule, from its own measurement: on the
default study's model median |S| grows like L^a with a well above 1/2 (docs/default_study), so
FSPO's sqrt(L) band (arXiv 2509.09177) is not the one that clips every length alike there.

    w = exp(S), S clipped to [-c_low W(L), c_high W(L)],   loss = mean_i -min(w_i A_i, clip(w_i) A_i)

    fixed:  W(L) = L^b          b = 1/2 is FSPO (drift "none") exactly, b = 0 a fixed band on S
                                (seq_ppo's shape), b = 1 a band on S / L (GSPO's shape)
    fit:    W(L) = sqrt(Lbar) (L / Lbar)^bhat
            bhat: the least-squares slope of log|S_i| on log L_i over the minibatch's sequences
            with L_i > 0 and S_i != 0 (under |S| ~ s L^a, log|S| = log s + a log L + noise of
            constant mean, so the slope estimates a), clamped to [b_min, b_max]; the fixed `b`
            when it is undefined (fewer than two such sequences, or one length only: e.g. on
            policy, where every S = 0);
            Lbar: the geometric mean length of the minibatch's sequences with L > 0. The band
            pivots at Lbar, where its half-width is FSPO's (c sqrt(Lbar)): c keeps FSPO's meaning
            at the typical length, and bhat = 1/2 gives FSPO's band at every length.

What fitting b does to the objective: the band becomes a function of the minibatch itself (bhat
and Lbar, both detached: no gradient flows through them, as through FSPO's drift), so each
sequence's loss depends on the other sequences of its minibatch, and the objective changes
from minibatch to minibatch. When |S| follows a power law the fitted band clips every length at
the same rate by construction, so it equalises clipping across lengths but can no longer prefer
short or long responses; a sequence is clipped for deviating from the minibatch's own fitted
law. With few sequences or a narrow range of lengths the slope is noisy: the clamp bounds it.
Micro-batched, the fit needs the minibatch's S under the current weights: one extra forward pass
without gradients per split off-policy update (`needs_minibatch_statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, sequence_level_rule

# log|S| of a sequence whose S is exactly 0 is undefined: such sequences stay out of the fit.
_ZERO_S = 0.0


@register("powerband")
@dataclass(frozen=True)
class PowerBand(Method):
    """Power band: w = exp(S) with S clipped to [-c_low W(L), c_high W(L)], W(L) = L^b (fixed b) or
    sqrt(Lbar) (L / Lbar)^bhat with bhat fitted to the minibatch's log|S| against log L; loss is the
    mean over sequences. b = 1/2 is FSPO. S is clamped to +-20 before exp.

    Reference: clipbench (docs/methods.md, "powerband"); FSPO (arXiv 2509.09177, sec. 4) is its
    b = 1/2 case.
    """

    level = "sequence"
    # The band's half-widths per W(L): what `clipbench calibrate` sets
    band_fields = ("c_low", "c_high")

    c_low: float = hparam(
        0.03,
        help="lower half-width per L^b: S >= -c_low W(L) (FSPO's c at b = 1/2; FSPO sec. 4; this project's default)",
        gt=0,
    )
    c_high: float = hparam(0.03, help="upper half-width per L^b: S <= c_high W(L) (as c_low)", gt=0)
    b: float = hparam(
        0.5,
        help="the band's exponent: W(L) = L^b (1/2: FSPO; 0: a fixed band on S; 1: a band on S / L); with "
        "fit, the fallback when the minibatch cannot fit one",
        ge=0,
    )
    fit: bool = hparam(
        True,
        help="estimate the exponent per minibatch: the least-squares slope of log|S| on log L, the band "
        "pivoting at the geometric mean length (docs/methods.md); false: W(L) = L^b with the given b",
    )
    b_min: float = hparam(0.0, help="with fit: the fitted exponent is clamped to [b_min, b_max]", ge=0)
    b_max: float = hparam(3.0, help="with fit: the fitted exponent is clamped to [b_min, b_max]", ge=0)

    def validate(self) -> None:
        if self.b_min > self.b_max:
            raise ValueError(f"powerband.b_min={self.b_min!r}: must be <= b_max={self.b_max!r}")
        if not self.fit and (self.b_min, self.b_max) != (0.0, 3.0):
            raise ValueError("powerband.b_min/b_max: only fit=true uses them")

    @property
    def needs_minibatch_statistics(self) -> bool:
        return self.fit

    def minibatch_statistics(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """Sums for the fit: x = log L over sequences with L > 0 (n_all, x_all), and over those
        with S != 0 also y = log|S| (n, x, y, xx, xy)."""
        with torch.no_grad():
            valid = batch.valid
            x = torch.log(batch.lengths.clamp(min=1)).double()
            s = batch.seq_log_ratio.detach().double()
            used = valid & (s.abs() > _ZERO_S)
            y = torch.log(torch.where(used, s.abs(), torch.ones_like(s)))
            zero = torch.zeros_like(x)
            xu = torch.where(used, x, zero)
            return {
                "n_all": valid.sum().double(),
                "x_all": torch.where(valid, x, zero).sum(),
                "n": used.sum().double(),
                "x": xu.sum(),
                "y": torch.where(used, y, zero).sum(),
                "xx": (xu * xu).sum(),
                "xy": (xu * torch.where(used, y, zero)).sum(),
            }

    def fitted_exponent(self, statistics: dict[str, torch.Tensor]) -> float:
        """bhat from the minibatch's sums, clamped; the fixed b where the fit is undefined."""
        n, x, y = float(statistics["n"]), float(statistics["x"]), float(statistics["y"])
        spread = n * float(statistics["xx"]) - x * x
        if n < 2 or spread <= 1e-12 * max(n * n, 1.0):
            return self.b
        slope = (n * float(statistics["xy"]) - x * y) / spread
        return min(max(slope, self.b_min), self.b_max)

    def compute(self, batch: RolloutBatch) -> LossOutput:
        length = batch.lengths
        if self.fit:
            statistics = batch.totals.statistics
            exponent = self.fitted_exponent(statistics)
            log_mean_length = float(statistics["x_all"]) / max(float(statistics["n_all"]), 1.0)
            # W(L) = sqrt(Lbar) (L / Lbar)^bhat = exp(log Lbar / 2 + bhat (log L - log Lbar))
            log_width = 0.5 * log_mean_length + exponent * (torch.log(length.clamp(min=1)) - log_mean_length)
            width = torch.exp(log_width)
        else:
            exponent = self.b
            width = length.pow(self.b) if self.b != 0.5 else length.sqrt()
        out = sequence_level_rule(batch, batch.seq_log_ratio, -self.c_low * width, self.c_high * width)
        # The exponent used, as every micro-batch's share of it (the metrics add up over a split).
        share = float(batch.valid.sum()) / max(float(batch.totals.sequences), 1.0)
        return LossOutput(
            loss=out.loss,
            seq_clip=out.seq_clip,
            seq_out=out.seq_out,
            metrics={**out.metrics, "band_exponent": exponent * share},
        )
