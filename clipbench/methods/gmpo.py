"""GMPO, geometric-mean policy optimisation (Zhao et al. 2025, "Geometric-Mean Policy Optimization",
arXiv 2507.20673; verl's `geo_mean` policy loss): GRPO's arithmetic mean of the token terms
r_t A replaced by their geometric mean, a sequence weight exp(mean_t l_t) that one outlier token
moves far less, with PPO's pessimistic clip applied to each token in log space before the mean.

    l'_t = min(l_t, eps_high)  if A > 0  (only the side the advantage pushes is clipped)
    l'_t = max(l_t, -eps_low)  if A < 0
    w = exp(sum_t l'_t / L),   loss = mean over the sequences with L > 0 of -A w

A clipped token contributes the constant bound (no gradient); every other token of the sequence
gets d loss / d logp_t = -A w / (L n), n the number of sequences with L > 0. The mean of l'_t is
clamped to +-20 before exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipbench.methods import register
from clipbench.methods.base import (
    LOG_WEIGHT_CLAMP,
    ClippedUnits,
    LossOutput,
    Method,
    RolloutBatch,
    hparam,
    token_level_output,
)


@register("gmpo")
@dataclass(frozen=True)
class GMPO(Method):
    """GMPO: w = exp(mean_t l'_t), l'_t = l_t clipped to [-eps_low, eps_high] on the side the advantage
    pushes (PPO's min per token, in log space); the loss is the mean of -A w over the sequences.

    The clip acts on tokens, so the level is "token": seq_clip is the fraction of a sequence's tokens
    whose l_t was replaced by the bound (above eps_high with A > 0, below -eps_low with A < 0: no
    gradient through them), seq_out the fraction outside [-eps_low, eps_high] whatever A; clip_frac and
    out_frac are fractions of the minibatch's tokens. The loss is a mean over sequences.

    Reference: Zhao et al. 2025, arXiv 2507.20673, sec. 3 (the objective, per-token clipping in log space)
    and sec. 4 (the range (e^-0.4, e^0.4)); verl's `geo_mean` (clip_ratio_low/high taken in log space).
    """

    level = "token"
    band_fields = ("eps_low", "eps_high")  # set by `clipbench calibrate` when listed

    eps_low: float = hparam(
        0.4,
        help="lower clip of l_t in log space, l_t >= -eps_low, i.e. r_t >= e^-eps_low (GMPO, arXiv 2507.20673, "
        "sec. 4: (e^-0.4, e^0.4); verl geo_mean's clip_ratio_low)",
        gt=0,
    )
    eps_high: float = hparam(
        0.4,
        help="upper clip of l_t in log space, l_t <= eps_high, i.e. r_t <= e^eps_high (GMPO sec. 4: 0.4; "
        "verl geo_mean's clip_ratio_high)",
        gt=0,
    )

    def compute(self, batch: RolloutBatch) -> LossOutput:
        log_ratio = batch.log_ratio
        zero = torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device)
        adv = torch.where(batch.mask, batch.advantages.unsqueeze(-1), zero)
        # l_t = 0 off the mask: inside the band, so no indicator survives there and it adds 0 below.
        below = log_ratio < -self.eps_low
        above = log_ratio > self.eps_high
        active = (above & (adv > 0)) | (below & (adv < 0))
        bound = log_ratio.detach().clamp(min=-self.eps_low, max=self.eps_high)
        clipped = torch.where(active, bound, log_ratio)
        mean = clipped.sum(dim=-1) / batch.lengths.clamp(min=1)
        weight = torch.exp(mean.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))
        objective = torch.where(batch.valid, weight * batch.advantages, zero)
        loss = -objective.sum() / batch.totals.sequences.clamp(min=1)
        # Per token, the min of PPO in log space: l'_t A (token_level_output reads only the indicators).
        units = ClippedUnits(objective=clipped * adv, clip_active=active, below=below, above=above)
        return token_level_output(loss, units, batch)
