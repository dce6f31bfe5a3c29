"""GRPO's token-level clip (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3), with
the clip-higher option of DAPO (Yu et al. 2025, arXiv 2503.14476) through `eps_high`.

    loss = mean_i [ (1 / L_i) sum_t -min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i) ],
    r_t = exp(l_t)

Each sequence weighs the same whatever its length (mean over its tokens, then over sequences).
The KL penalty of the GRPO paper is not part of the clipping rule: the trainer adds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import TOKEN_AGGREGATIONS, Method, TokenClipRule, hparam


@register("grpo")
@dataclass(frozen=True)
class GRPO(TokenClipRule, Method):
    """Token-level GRPO clip: r_t = exp(l_t) clipped to [1 - eps_low, 1 + eps_high]; loss averaged over
    each sequence's tokens, then over sequences (seq-mean-token-mean).

    Reference: Shao et al. 2024, arXiv 2402.03300, eq. 3; clip-higher (eps_high > eps_low) from DAPO,
    arXiv 2503.14476, sec. 3.1.
    """

    level = "token"

    eps_low: float = hparam(
        0.2, help="lower half-width of the ratio band, r_t >= 1 - eps_low (GRPO paper: 0.2)", gt=0, lt=1
    )
    eps_high: float = hparam(
        0.2,
        help="upper half-width, r_t <= 1 + eps_high; DAPO's clip-higher raises it (DAPO: 0.28)",
        gt=0,
        lt=1,
    )
    aggregation: str = hparam(
        "seq_mean_token_mean",
        help="how token losses become the loss (clipbench.methods.base.aggregate_tokens); GRPO's is "
        "seq_mean_token_mean (arXiv 2402.03300, eq. 3)",
        choices=TOKEN_AGGREGATIONS,
    )
