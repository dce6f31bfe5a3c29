"""DAPO's clip (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv 2503.14476): the token-level PPO clip with a raised upper bound ("clip-higher", sec. 3.1:
eps_low = 0.2, eps_high = 0.28, so low-probability tokens can grow) and the token-level mean over
the batch (sec. 3.3, "token-level policy gradient loss": every token weighs the same, so long
responses are not diluted as in GRPO's per-sequence mean).

    loss = sum_{i,t} -min(r_t A_i, clip(r_t, 1 - 0.2, 1 + 0.28) A_i) / sum_i L_i,   r_t = exp(l_t)

DAPO's other parts (dynamic sampling of groups with mixed rewards, the overlong reward shaping,
no KL term) are not clipping rules and are not part of this rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import Method, TokenClipRule, hparam


@register("dapo")
@dataclass(frozen=True)
class DAPO(TokenClipRule, Method):
    """DAPO: token-level clip-higher, r_t = exp(l_t) clipped to [1 - 0.2, 1 + 0.28], token-mean loss.

    Reference: Yu et al. 2025, arXiv 2503.14476, sec. 3.1 (clip-higher, eps_low 0.2, eps_high 0.28)
    and sec. 3.3 (token-level loss).
    """

    level = "token"

    eps_low: float = hparam(
        0.2, help="lower half-width of the ratio band, r_t >= 1 - eps_low (DAPO sec. 3.1: 0.2)", gt=0, lt=1
    )
    eps_high: float = hparam(
        0.28, help="upper half-width, r_t <= 1 + eps_high: clip-higher (DAPO sec. 3.1: 0.28)", gt=0, lt=1
    )
