"""CISPO, the clipped IS-weight policy optimisation of MiniMax-M1 (MiniMax 2025, "MiniMax-M1: Scaling
Test-Time Compute Efficiently with Lightning Attention", arXiv 2506.13585, sec. 3.1): the token's
importance weight r_t = exp(l_t) is clipped and held constant (stop-gradient) and multiplies the
REINFORCE term A log pi_t, so a token outside the band keeps its gradient, with a capped weight,
instead of losing it as under PPO's min.

    loss = sum_{i,t} -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_i log pi_t / sum_i L_i   (token_mean)
    d loss / d log pi_t = -clip(r_t) A_i / sum_i L_i

The paper normalises by the batch's token count (its 1 / sum_i |o_i|, our token_mean, also verl's
default for `cispo`) and, in practice, imposed no lower bound on the weight (a large eps_low) and
tuned only eps_high. The loss's value depends on log pi_t itself, not only on l_t (its gradient
does not).
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


@register("cispo")
@dataclass(frozen=True)
class CISPO(Method):
    """CISPO: each token's loss is -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A log pi_t (the weight r_t =
    exp(l_t) clipped and detached), token-mean by default; no token loses its gradient, its weight is capped.

    "Clipped" (seq_clip, clip_frac) means here: the token's weight was truncated (r_t outside the band)
    and its advantage is non-zero, so its gradient was rescaled (above the band: shrunk to 1 + eps_high;
    below it: raised to 1 - eps_low); low/high by the side of the band. Outside the band (seq_out,
    out_frac): r_t outside it whatever A. Unlike PPO's clip, a clipped token keeps a gradient.

    Reference: MiniMax 2025, arXiv 2506.13585, sec. 3.1 (the objective; no lower bound used in practice,
    only eps_high tuned). The paper states no value of eps_high: the default 0.2 is verl's CISPO example
    (examples/cispo_trainer: clip_ratio_high=0.2, clip_ratio_low=10, i.e. no lower bound) and PPO's upper
    bound, so that cispo and ppo differ only in what the clip does (and cispo's missing lower bound).
    """

    level = "token"
    band_fields = ("eps_high",)  # the cap; eps_low may be null (no lower bound): not a band field

    eps_low: float | None = hparam(
        None,
        help="lower half-width of the weight's band, r_t >= 1 - eps_low; null: no lower bound (MiniMax-M1, "
        "arXiv 2506.13585, sec. 3.1: no lower bound in practice, a large eps_low; verl's examples/cispo_trainer: "
        "clip_ratio_low=10)",
        gt=0,
        lt=1,
    )
    eps_high: float = hparam(
        0.2,
        help="upper half-width, the weight is capped at 1 + eps_high (MiniMax-M1 tunes it and states no value; "
        "0.2 is verl's examples/cispo_trainer, clip_ratio_high=0.2, and PPO's band)",
        gt=0,
    )
    aggregation: str = hparam(
        "token_mean",
        help="how token losses become the loss (clipbench.methods.base.aggregate_tokens): token_mean (MiniMax-M1's "
        "1 / sum_i |o_i|; verl's default), seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm",
        choices=TOKEN_AGGREGATIONS,
    )
    norm_tokens: float | None = hparam(
        None,
        help="Dr. GRPO's constant for seq_mean_token_sum_norm (arXiv 2503.20783; verl's loss_scale_factor); "
        "required by that aggregation, refused by the others",
        gt=0,
    )

    def validate(self) -> None:
        check_aggregation(self.name, self.aggregation, self.norm_tokens)

    def compute(self, batch: RolloutBatch) -> LossOutput:
        low = -math.inf if self.eps_low is None else math.log1p(-self.eps_low)
        high = math.log1p(self.eps_high)
        zero = torch.zeros((), dtype=batch.log_ratio.dtype, device=batch.log_ratio.device)
        adv = torch.where(batch.mask, batch.advantages.unsqueeze(-1), zero)
        log_ratio = batch.log_ratio.detach()
        # The weight: r_t clipped to the band (in log space, so a token on a bound is inside it),
        # a constant. l_t = 0 off the mask lies inside the band: no indicator survives there.
        below = log_ratio < low
        above = log_ratio > high
        weight = torch.exp(log_ratio.clamp(min=max(low, -LOG_WEIGHT_CLAMP), max=min(high, LOG_WEIGHT_CLAMP)))
        logp = torch.where(batch.mask, batch.logp, zero)  # the caller's tensor: the gradient's path
        objective = weight * adv * logp
        loss = aggregate_tokens(objective, batch, self.aggregation, self.norm_tokens)
        units = ClippedUnits(
            objective=objective, clip_active=(below | above) & (adv != 0), below=below, above=above
        )
        return token_level_output(loss, units, batch)
