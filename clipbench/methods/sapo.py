"""SAPO, soft adaptive policy optimisation (Gao et al. 2025, "Soft Adaptive Policy Optimization",
arXiv 2511.20347; verl's `sapo` policy loss): PPO's hard clip replaced by a smooth gate on each
token's ratio r_t = exp(l_t),

    f(r) = sigmoid(tau (r - 1)) 4 / tau,   tau = tau_pos if A > 0 else tau_neg,
    loss = -f(r_t) A, a token mean per sequence, then the mean over sequences (seq_mean_token_mean),

whose gradient d f / d log r = 4 sigmoid'(tau (r - 1)) r is the unclipped r (REINFORCE with the
importance weight) times the gate 4 sigmoid'(tau (r - 1)): 1 at r = 1, decaying smoothly as r moves
away on either side, faster for the larger tau (tau_neg > tau_pos: tokens with negative advantage
are damped sooner). No token's gradient is ever removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from clipbench.methods import register
from clipbench.methods.base import (
    LOG_WEIGHT_CLAMP,
    TOKEN_AGGREGATIONS,
    ClippedUnits,
    LossOutput,
    Method,
    RolloutBatch,
    aggregate_tokens,
    check_aggregation,
    hparam,
    token_level_output,
)

# The gate 4 s(x)(1 - s(x)) (s the sigmoid, x = tau (r - 1)) is 1/2 where s(x) (1 - s(x)) = 1/8, i.e.
# s(x) = (1 +- 1/sqrt(2)) / 2, e^x = s / (1 - s) = (sqrt(2) + 1)^(+-2), |x| = 2 ln(1 + sqrt(2)) ~ 1.7627;
# it decreases in |x|, so the gate is below 1/2 exactly where |x| exceeds this.
HALF_GATE_X = 2.0 * math.log1p(math.sqrt(2.0))


@register("sapo")
@dataclass(frozen=True)
class SAPO(Method):
    """SAPO: a soft gate instead of a clip, each token's loss -sigmoid(tau (r_t - 1)) (4 / tau) A with tau =
    tau_pos for A > 0 and tau_neg otherwise; seq_mean_token_mean by default. r_t is clamped to e^+-20.

    A soft gate has no hard clip, so "clipped" (seq_clip, clip_frac) is defined here as: the gate has damped
    the token's gradient below half of the unclipped one's, 4 sigmoid'(tau (r_t - 1)) < 1/2, i.e.
    |tau (r_t - 1)| > 2 ln(1 + sqrt 2) ~ 1.7627, with A != 0; low/high by the side of r_t (below or
    above 1). "Outside the band" (seq_out, out_frac) is the same test whatever A (tau_neg when A = 0, as
    verl's gate). With tau ~ 1 only r_t > 2.76 (or, for tau > 1.76, r_t < 1 - 1.76 / tau) counts: the
    default gate rarely "clips".

    Reference: Gao et al. 2025, arXiv 2511.20347 (the gate and its aggregation). tau_pos = 1.0 and
    tau_neg = 1.05 are verl's defaults (ActorConfig.tau_pos/tau_neg), which ms-swift's and Trinity-RFT's
    docs attribute to the paper (not checked against the paper's text here).
    """

    level = "token"

    tau_pos: float = hparam(
        1.0,
        help="gate temperature for tokens with A > 0 (SAPO, arXiv 2511.20347; verl ActorConfig.tau_pos default "
        "1.0): the larger, the sooner the gradient decays as r_t leaves 1",
        gt=0,
    )
    tau_neg: float = hparam(
        1.05,
        help="gate temperature for tokens with A <= 0 (SAPO: tau_neg > tau_pos; verl ActorConfig.tau_neg "
        "default 1.05)",
        gt=0,
    )
    aggregation: str = hparam(
        "seq_mean_token_mean",
        help="how token losses become the loss (clipbench.methods.base.aggregate_tokens): seq_mean_token_mean "
        "(SAPO's objective; verl's sapo always uses it), token_mean, seq_mean_token_sum, seq_mean_token_sum_norm",
        choices=TOKEN_AGGREGATIONS,
    )
    norm_tokens: float | None = hparam(
        None,
        help="Dr. GRPO's constant for seq_mean_token_sum_norm (arXiv 2503.20783); required by that aggregation, "
        "refused by the others",
        gt=0,
    )

    def validate(self) -> None:
        check_aggregation(self.name, self.aggregation, self.norm_tokens)

    def compute(self, batch: RolloutBatch) -> LossOutput:
        log_ratio = batch.log_ratio
        zero = torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device)
        adv = torch.where(batch.mask, batch.advantages.unsqueeze(-1), zero)
        # The temperatures in the batch's dtype (a Python float in torch.where would be float32).
        tau_pos, tau_neg = (
            torch.tensor(t, dtype=log_ratio.dtype, device=log_ratio.device)
            for t in (self.tau_pos, self.tau_neg)
        )
        tau = torch.where(adv > 0, tau_pos, tau_neg)
        ratio = torch.exp(log_ratio.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))
        x = tau * (ratio - 1)  # 0 off the mask (l_t = 0 there): no indicator survives
        objective = torch.sigmoid(x) * (4.0 / tau) * adv
        loss = aggregate_tokens(objective, batch, self.aggregation, self.norm_tokens)
        with torch.no_grad():
            outside = x.abs() > HALF_GATE_X
            units = ClippedUnits(
                objective=objective,
                clip_active=outside & (adv != 0),
                below=outside & (x < 0),
                above=outside & (x > 0),
            )
        return token_level_output(loss, units, batch)
