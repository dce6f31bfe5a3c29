"""The policy's log-probabilities of sampled tokens: what a clipping rule consumes.

* `TokenBatch` and `collate`: prompt + completion sequences in the right-padded (B, T) layout of
  every tensor a rule consumes, and packed back to back (1, N) for the forward.
* `token_logprobs`: log-probs (and entropies) of the response tokens under the policy at the
  sampling temperature. The forward runs on the packed layout
  (`clipbench.attention.packed_sdpa_attention`): no linear layer or LM head computes a padding
  token. The trainer's old and new log-probs, the KL reference's and the SFT loss all come from
  here (vLLM's own log-probs are of the raw logits and are never used for ratios).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from clipbench.attention import PACKED_SDPA, use_attention


@dataclass(frozen=True)
class TokenBatch:
    """Prompt + completion sequences in two layouts.

    Right-padded (B, T): `input_ids`, `attention_mask`, and `response_mask` aligned to the
    predicted tokens (position j of `response_mask` is token j + 1 of `input_ids`); this is the
    layout of every tensor a clipping rule consumes.

    Packed (1, N): the same sequences back to back without padding (`packed_ids`, positions
    restarting at 0 per sequence in `position_ids`), which the policy's forward runs on, so no
    linear layer computes a padding token. `unpack_index` (B, T) is each padded position's place
    in the packed row (0 where it is padding), `pack_index` (N,) each packed token's place in
    the flattened (B * T) padded layout, and `predict_at` (K,) the packed positions whose next
    token is a response token, in `response_mask`'s row-major order."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T - 1) bool
    packed_ids: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N)
    unpack_index: torch.Tensor  # (B, T)
    pack_index: torch.Tensor  # (N,)
    predict_at: torch.Tensor  # (K,)

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def collate(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> TokenBatch:
    """Both layouts of `TokenBatch`. Right padding keeps every sequence's positions at 0, 1, ...;
    causal attention means padding at the end never affects a real token."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, prompt) in enumerate(zip(rows, prompt_ids, strict=True)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
        response[i, len(prompt) : len(row)] = True
    real = attention.bool()
    starts = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)[:-1]
    unpack_index = torch.where(real, starts.unsqueeze(1) + torch.arange(width), 0)
    response = response[:, 1:]
    return TokenBatch(
        input_ids=ids,
        attention_mask=attention,
        response_mask=response,
        packed_ids=ids[real].unsqueeze(0),
        position_ids=(torch.arange(width).expand_as(ids)[real]).unsqueeze(0),
        unpack_index=unpack_index,
        pack_index=real.flatten().nonzero().squeeze(1),
        predict_at=unpack_index[:, :-1][response],
    )


def _packs(model) -> bool:
    """Whether `token_logprobs` runs `model` on the packed layout: models on "sdpa" attention
    (whose attention `packed_sdpa_attention` reproduces) without attention logit soft-capping or
    chunked attention, and not under gradient checkpointing (its recomputation in backward would
    run after `token_logprobs` has put the model back on plain "sdpa", across sequences)."""
    config = model.config
    return (
        config._attn_implementation == "sdpa"
        and getattr(config, "attn_logit_softcapping", None) is None
        and getattr(config, "attention_chunk_size", None) is None
        and not getattr(model, "is_gradient_checkpointing", False)
    )


ENTROPY_CHUNK = 1024  # response positions per chunk of the entropy computation


def token_logprobs(model, batch: TokenBatch, temperature: float, with_entropy: bool = False):
    """Log-probs (B, T - 1) of each next token under softmax(logits / temperature), and the
    per-position entropy of that distribution when asked (else None); both are computed at the
    response positions only (zero elsewhere).

    Models on "sdpa" attention run on the packed layout (`packed_sdpa_attention`, see `_packs`):
    the linear layers see no padding (attention itself runs per sequence, padded), and logits
    are computed only where a response token is predicted. Others run on the padded layout."""
    if _packs(model):
        with use_attention(model, PACKED_SDPA):
            logits = model(
                input_ids=batch.packed_ids,
                position_ids=batch.position_ids,
                unpack_index=batch.unpack_index,
                pack_index=batch.pack_index,
                logits_to_keep=batch.predict_at,
                use_cache=False,
            ).logits[0]
        targets = batch.packed_ids[0, batch.predict_at + 1]
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logits = logits[:, :-1][batch.response_mask]
        targets = batch.input_ids[:, 1:][batch.response_mask]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (K, V)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    zeros = torch.zeros(batch.response_mask.shape, dtype=logp.dtype, device=logp.device)
    entropy = None
    if with_entropy:
        with torch.no_grad():  # in chunks: no (K, V) temporaries beside the logits
            entropy = torch.cat([-(c.exp() * c).sum(-1) for c in logp_all.split(ENTROPY_CHUNK)])
        entropy = zeros.masked_scatter(batch.response_mask, entropy)
    return zeros.masked_scatter(batch.response_mask, logp), entropy
