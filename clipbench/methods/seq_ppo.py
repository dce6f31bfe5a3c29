"""Sequence-level PPO with a fixed band on S: the naive transplant of PPO's token band to the
sequence ratio, the baseline FSPO (arXiv 2509.09177) argues against.

    w = exp(S), S clipped to [log(1 - eps_low), log(1 + eps_high)],
    loss = mean_i -min(w_i A_i, clip(w_i) A_i)

The band is constant in L while Var(S) grows with L, so long responses are clipped more.
S is clamped to +-20 before exp (methods.base.LOG_WEIGHT_CLAMP).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, log_band, sequence_level_rule


@register("seq_ppo")
@dataclass(frozen=True)
class SeqPPO(Method):
    """Sequence-level PPO: w = exp(S) clipped to [1 - eps_low, 1 + eps_high], a band constant in length;
    loss is the mean over sequences. S is clamped to +-20 before exp.

    Reference: the fixed-band sequence baseline discussed in FSPO, arXiv 2509.09177 (sec. 3).
    """

    level = "sequence"
    # The band's half-widths on exp(S): what `clipbench calibrate` sets
    band_fields = ("eps_low", "eps_high")

    eps_low: float = hparam(
        0.2, help="lower half-width of the band on exp(S), exp(S) >= 1 - eps_low", gt=0, lt=1
    )
    eps_high: float = hparam(
        0.2, help="upper half-width of the band on exp(S), exp(S) <= 1 + eps_high", gt=0, lt=1
    )

    def compute(self, batch: RolloutBatch) -> LossOutput:
        return sequence_level_rule(batch, batch.seq_log_ratio, *log_band(self.eps_low, self.eps_high))
