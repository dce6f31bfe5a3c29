"""PPO's token-level clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
arXiv 1707.06347), with token-mean aggregation over the batch.

    loss = sum_{i,t} -min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i) / sum_i L_i,
    r_t = exp(l_t)

Every response token of the batch weighs the same, so a long response weighs more in total.
`aggregation` and `clip_ratio_c` (dual-clip) are options of every token rule
(`clipbench.methods.base.TokenClipRule`); their defaults here are PPO's (token_mean, off).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import Method, TokenClipRule


@register("ppo")
@dataclass(frozen=True)
class PPO(TokenClipRule, Method):
    """Token-level PPO clip: each token's ratio r_t = exp(l_t) is clipped to [1 - eps_low, 1 + eps_high];
    the loss is the mean over all response tokens of the batch (token-mean).

    Reference: Schulman et al. 2017, arXiv 1707.06347, eq. 7. Options shared by the token rules
    (`TokenClipRule`): the aggregation, dual-clip (`clip_ratio_c`).
    """

    level = "token"
