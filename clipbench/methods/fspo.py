"""FSPO (arXiv 2509.09177, "Clip Your Sequences Fairly: Enforcing Length Fairness for
Sequence-Level RL"): the sequence log-ratio S is clipped in a band whose half-width grows as
sqrt(L), the way the spread of S grows, so every length is clipped at the same rate.

    w = exp(S), S clipped to [mu L - c_low sqrt(L), mu L + c_high sqrt(L)],
    loss = mean_i -min(w_i A_i, clip(w_i) A_i)

mu = 0 (drift="none", the paper's final version) or the minibatch's detached mean per-token l_t
(drift="kl", the "KL-corrected drift" of the paper's first version: an estimate of
-KL(pi_old || pi_theta) per token, which centres the band where S drifts). Under a Gaussian
model S ~ N(mu L, sigma^2 L) the out-of-band probability is the same at every L.
S is clamped to +-20 before exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, sequence_level_rule


@register("fspo")
@dataclass(frozen=True)
class FSPO(Method):
    """FSPO: w = exp(S) with S clipped to [mu L - c_low sqrt(L), mu L + c_high sqrt(L)]; loss is the mean
    over sequences. S is clamped to +-20 before exp.

    Reference: arXiv 2509.09177 (FSPO), sec. 4. The paper does not fix c; 0.03 is this project's
    default for large models (per-token sigma ~ 0.01-0.05); small models need c of 1-2 sigma.
    """

    level = "sequence"
    # The band's half-widths per sqrt(token): what `clipbench calibrate` sets
    band_fields = ("c_low", "c_high")

    c_low: float = hparam(
        0.03, help="lower half-width per sqrt(token): S >= mu L - c_low sqrt(L) (FSPO, sec. 4)", gt=0
    )
    c_high: float = hparam(
        0.03, help="upper half-width per sqrt(token): S <= mu L + c_high sqrt(L) (FSPO, sec. 4)", gt=0
    )
    drift: str = hparam(
        "none",
        help="band centre mu: 'none' (mu = 0, the paper's final version) or 'kl' (mu = detached minibatch mean of "
        "l_t, the KL-corrected drift of the paper's first version)",
        choices=("none", "kl"),
    )

    @property
    def needs_minibatch_statistics(self) -> bool:
        return self.drift == "kl"  # mu is the minibatch's mean l_t

    def minibatch_statistics(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        return {"log_ratio": batch.log_ratio.detach().sum()}  # sum of l_t over the response tokens

    def compute(self, batch: RolloutBatch) -> LossOutput:
        length = batch.lengths
        root = length.sqrt()
        if self.drift == "kl":
            totals = batch.totals
            centre = totals.statistics["log_ratio"] / totals.tokens.clamp(min=1) * length
        else:
            centre = length.new_zeros(())
        low = centre - self.c_low * root
        high = centre + self.c_high * root
        return sequence_level_rule(batch, batch.seq_log_ratio, low, high)
