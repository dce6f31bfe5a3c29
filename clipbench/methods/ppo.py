"""PPO's token-level clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
arXiv 1707.06347), with token-mean aggregation over the batch.

    loss = sum_{i,t} -min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i) / sum_i L_i,
    r_t = exp(l_t)

Every response token of the batch weighs the same, so a long response weighs more in total.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, log_band, token_level_rule


@register("ppo")
@dataclass(frozen=True)
class PPO(Method):
    """Token-level PPO clip: each token's ratio r_t = exp(l_t) is clipped to [1 - eps_low, 1 + eps_high];
    the loss is the mean over all response tokens of the batch (token-mean).

    Reference: Schulman et al. 2017, arXiv 1707.06347, eq. 7.
    """

    level = "token"

    eps_low: float = hparam(
        0.2, help="lower half-width of the ratio band, r_t >= 1 - eps_low (PPO paper: 0.2)", gt=0, lt=1
    )
    eps_high: float = hparam(
        0.2, help="upper half-width of the ratio band, r_t <= 1 + eps_high (PPO paper: 0.2)", gt=0, lt=1
    )

    def compute(self, batch: RolloutBatch) -> LossOutput:
        return token_level_rule(batch, *log_band(self.eps_low, self.eps_high), aggregation="token_mean")
