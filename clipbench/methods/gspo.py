"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): the
length-normalised sequence ratio s = exp(S / L), clipped to a narrow band.

    s = exp(S / L), clipped to [1 - eps_low, 1 + eps_high],
    loss = mean_i -min(s_i A_i, clip(s_i) A_i)

The band on S / L is constant, i.e. a band on S that grows linearly in L while the spread of S
grows as sqrt(L): short responses are clipped more. S / L is clamped to +-20 before exp.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, log_band, sequence_level_rule


@register("gspo")
@dataclass(frozen=True)
class GSPO(Method):
    """GSPO: s = exp(S / L) clipped to [1 - eps_low, 1 + eps_high]; loss is the mean over sequences.
    S / L is clamped to +-20 before exp.

    Reference: Zheng et al. 2025, arXiv 2507.18071, eq. 5-7; defaults from its sec. 5.1.
    """

    level = "sequence"
    # The band's half-widths on exp(S / L): what `clipbench calibrate` sets
    band_fields = ("eps_low", "eps_high")

    eps_low: float = hparam(
        3e-4, help="lower half-width of the band on s = exp(S/L) (GSPO paper sec. 5.1: 3e-4)", gt=0, lt=1
    )
    eps_high: float = hparam(
        4e-4, help="upper half-width of the band on s = exp(S/L) (GSPO paper sec. 5.1: 4e-4)", gt=0, lt=1
    )

    def compute(self, batch: RolloutBatch) -> LossOutput:
        per_token = batch.seq_log_ratio / batch.lengths.clamp(min=1)
        return sequence_level_rule(batch, per_token, *log_band(self.eps_low, self.eps_high))
