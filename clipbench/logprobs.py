"""The policy's log-probabilities of sampled tokens: what a clipping rule consumes.

* `TokenBatch` and `collate`: prompt + completion sequences in the right-padded (B, T) layout of
  every tensor a rule consumes, and packed back to back (1, N) for the forward.
* `token_logprobs`: log-probs (and entropies) of the response tokens under the policy at the
  sampling temperature. The forward runs on the packed layout
  (`clipbench.attention.packed_sdpa_attention`): no linear layer or LM head computes a padding
  token. The trainer's old and new log-probs, the KL reference's and the SFT loss all come from
  here (vLLM's own log-probs are of the raw logits and are never used for ratios). With
  `chunk_tokens` the LM head and log-softmax run a chunk of response positions at a time, each
  recomputed in backward: no (tokens, vocabulary) tensor at any point.

Every forward here runs under the model's precision (`clipbench.precision.autocast`: nothing for
a float32 model) and, for a model with transformers' gradient checkpointing enabled
(`model.gradient_checkpointing_enable()`) and gradients being recorded, with each checkpointed
decoder layer recomputed in backward on the attention its forward ran on (`_checkpointed_layers`),
so checkpointing keeps the packed layout.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, fields

import torch
import torch.utils.checkpoint

from clipbench.attention import PACKED_SDPA, attention_as, use_attention
from clipbench.precision import autocast


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
    chunked attention. Gradient checkpointing packs too (`_checkpointed_layers`)."""
    config = model.config
    return (
        config._attn_implementation == "sdpa"
        and getattr(config, "attn_logit_softcapping", None) is None
        and getattr(config, "attention_chunk_size", None) is None
    )


def enable_gradient_checkpointing(model):
    """transformers' gradient checkpointing of `model`'s decoder layers, as `token_logprobs` runs it
    (`_checkpointed_layers`: non-reentrant, packed, in eval mode too); returns `model`. The input
    embeddings' hook transformers adds is dropped: only reentrant checkpointing needs it."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()
    return model


def _recompute_on_the_same_attention(model):
    """`context_fn` of a checkpointed layer: called at its forward, it captures the attention
    implementation the layer runs on; its recomputation in backward runs on that one again. The
    packed forward's `use_attention` has put the model back on plain "sdpa" by the time backward
    runs, where the packed row would attend across sequences; the layer's keyword arguments
    (`unpack_index`, `pack_index`) are kept by the checkpoint and reach the packed attention."""
    return contextlib.nullcontext(), attention_as(model, model.config._attn_implementation)


@contextlib.contextmanager
def _checkpointed_layers(model):
    """Under transformers' gradient checkpointing (`model.is_gradient_checkpointing`) and with
    gradients recorded: each decoder layer that transformers would checkpoint (its
    `gradient_checkpointing` flag, so `every_n_layers` holds) runs under non-reentrant activation
    checkpointing for the duration of the block, recomputed in backward on the attention its
    forward ran on (`_recompute_on_the_same_attention`). Else nothing changes.

    transformers' own checkpointing of a layer cannot do this (its recomputation runs on whatever
    attention the model is on during backward) and runs only in training mode, while the trainer's
    policy is in eval mode (no dropout): so the layers' own checkpointing is switched off inside
    the block and each layer's forward wrapped instead (both restored after)."""
    if not (getattr(model, "is_gradient_checkpointing", False) and torch.is_grad_enabled()):
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [
        m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]
    if not layers:
        raise NotImplementedError(
            f"gradient checkpointing: {type(model).__name__} has no layer transformers checkpoints"
        )
    checkpoint = functools.partial(
        torch.utils.checkpoint.checkpoint,
        use_reentrant=False,
        context_fn=functools.partial(_recompute_on_the_same_attention, model),
    )
    own = [layer.__dict__.get("forward") for layer in layers]  # an instance's forward (hooks), if any
    for layer in layers:
        layer.gradient_checkpointing = False
        layer.forward = functools.partial(checkpoint, layer.forward)  # an instance attribute
    try:
        yield
    finally:
        for layer, forward in zip(layers, own, strict=True):
            if forward is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = forward
            layer.gradient_checkpointing = True


@contextlib.contextmanager
def _forward(model, packed: bool):
    """The context of a policy forward: the model's precision (`autocast`), the packed attention
    when `packed`, and checkpointing of its decoder layers when enabled (`_checkpointed_layers`).
    For a float32 model without checkpointing, only the attention switch."""
    with autocast(model), use_attention(model, PACKED_SDPA) if packed else contextlib.nullcontext():
        with _checkpointed_layers(model):
            yield


ENTROPY_CHUNK = 1024  # response positions per chunk of the entropy computation


def token_logprobs(
    model, batch: TokenBatch, temperature: float, with_entropy: bool = False, chunk_tokens: int | None = None
):
    """Log-probs (B, T - 1) of each next token under softmax(logits / temperature), and the
    per-position entropy of that distribution when asked (else None); both are computed at the
    response positions only (zero elsewhere).

    Models on "sdpa" attention run on the packed layout (`packed_sdpa_attention`, see `_packs`):
    the linear layers see no padding (attention itself runs per sequence, padded), and logits
    are computed only where a response token is predicted. Others run on the padded layout.

    `chunk_tokens=None` computes the (K response positions, V) logits and their float32
    log-softmax at once. A chunk size runs the model's decoder to its final hidden states instead
    and computes the LM head, log-probs and entropies `chunk_tokens` positions at a time, each
    chunk recomputed in backward rather than kept (`_chunked_logprobs`): the memory beyond the
    decoder's own is two (chunk_tokens, V) tensors at most, whatever K. Same values and gradients
    (tests/test_logprobs_chunked.py); the log-probs are computed in float32 (float64 for a
    float64 model) either way."""
    if chunk_tokens is not None:
        return _chunked_logprobs(model, batch, temperature, with_entropy, chunk_tokens)
    if _packs(model):
        with _forward(model, packed=True):
            logits = model(**_packed_inputs(batch), logits_to_keep=batch.predict_at).logits[0]
        targets = batch.packed_ids[0, batch.predict_at + 1]
    else:
        with _forward(model, packed=False):
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
        logits = logits[:, :-1][batch.response_mask]
        targets = batch.input_ids[:, 1:][batch.response_mask]
    logp_all = torch.log_softmax(logits.to(_compute_dtype(logits.dtype)) / temperature, dim=-1)  # (K, V)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    zeros = torch.zeros(batch.response_mask.shape, dtype=logp.dtype, device=logp.device)
    entropy = None
    if with_entropy:
        with torch.no_grad():  # in chunks: no (K, V) temporaries beside the logits
            entropy = torch.cat([-(c.exp() * c).sum(-1) for c in logp_all.split(ENTROPY_CHUNK)])
        entropy = zeros.masked_scatter(batch.response_mask, entropy)
    return zeros.masked_scatter(batch.response_mask, logp), entropy


def _packed_inputs(batch: TokenBatch) -> dict[str, torch.Tensor | bool]:
    """The keyword arguments of a forward on the packed layout (`packed_sdpa_attention` reads
    `unpack_index` and `pack_index`)."""
    return {
        "input_ids": batch.packed_ids,
        "position_ids": batch.position_ids,
        "unpack_index": batch.unpack_index,
        "pack_index": batch.pack_index,
        "use_cache": False,
    }


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype log-probs are computed in: float32, or float64 for a float64 model (the same as
    `.float()` for every other dtype, so float32 and bfloat16 models get the same bits)."""
    return torch.promote_types(dtype, torch.float32)


_ENTROPY_ROWS = 64  # rows per block of the chunked path's entropy

# Config fields of models whose causal-LM head transforms lm_head's output (Gemma's soft-capping,
# Cohere's and Granite's scales), which the chunked path, computing lm_head(hidden) itself, skips.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _response_hidden_states(model, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's final hidden states (K, H) at the K positions that predict a response token
    (in `response_mask`'s row-major order), and those tokens (K,): what
    `model(...).logits[...]` computes the LM head of, without the LM head."""
    config = model.config
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            raise NotImplementedError(
                f"chunked log-probs compute the logits as the output embeddings of the final hidden "
                f"states; {type(model).__name__} transforms them further ({name}={value})"
            )
    decoder = model.get_decoder()
    if decoder is model:
        raise NotImplementedError(f"chunked log-probs: no decoder found under {type(model).__name__}")
    if _packs(model):
        with _forward(model, packed=True):
            hidden = decoder(**_packed_inputs(batch)).last_hidden_state[0]
        return hidden.index_select(0, batch.predict_at), batch.packed_ids[0, batch.predict_at + 1]
    with _forward(model, packed=False):
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = hidden.last_hidden_state[:, :-1][batch.response_mask]
    return hidden, batch.input_ids[:, 1:][batch.response_mask]


class _SelectedLogProb(torch.autograd.Function):
    """log softmax(logits / T)[target] per row, and the entropy of softmax(logits / T) when asked
    (without gradient: a metric), in `_compute_dtype`. Backward recomputes the softmax from the
    saved logits and log-sum-exp into one tensor: (onehot - softmax) * grad / T."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, with_entropy):
        shifted = logits.to(_compute_dtype(logits.dtype), copy=True).div_(temperature)
        top = shifted.amax(-1, keepdim=True)
        shifted.sub_(top)  # logits / T - max <= 0
        selected = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = None
        if with_entropy:  # -sum p log p = log(total) - sum(exp * shifted) / total, with p = exp / total
            totals, dots = [], []
            for rows in shifted.split(_ENTROPY_ROWS):  # no second (chunk, V) tensor beside `shifted`
                exp = rows.exp()
                totals.append(exp.sum(-1))
                dots.append(torch.linalg.vecdot(exp, rows))
            total = torch.cat(totals)
            log_total = total.log()
            entropy = log_total - torch.cat(dots) / total
            ctx.mark_non_differentiable(entropy)
        else:
            log_total = shifted.exp_().sum(-1).log()
        ctx.save_for_backward(logits, targets, log_total + top.squeeze(-1))
        ctx.temperature = temperature
        return selected - log_total, entropy

    @staticmethod
    def backward(ctx, grad, _):
        logits, targets, logsumexp = ctx.saved_tensors
        temperature = ctx.temperature
        dtype = _compute_dtype(logits.dtype)
        softmax = logits.to(dtype, copy=True).div_(temperature).sub_(logsumexp.unsqueeze(-1)).exp_()
        scale = (grad / temperature).unsqueeze(-1)
        grad_logits = softmax.mul_(-scale).scatter_add_(-1, targets.unsqueeze(-1), scale)
        return grad_logits.to(logits.dtype), None, None, None


def _chunked_logprobs(model, batch: TokenBatch, temperature: float, with_entropy: bool, chunk_tokens: int):
    """`token_logprobs` with the LM head, log-softmax and entropy computed `chunk_tokens`
    response positions at a time. Where a gradient is recorded, each chunk runs under
    non-reentrant activation checkpointing: its forward keeps only its input hidden states, and
    backward recomputes that chunk's logits, so no (K, V) tensor exists at any point."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive int or None, got {chunk_tokens!r}")
    hidden, targets = _response_hidden_states(model, batch)
    head = model.get_output_embeddings()
    logps, entropies = [], []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        pending = [with_entropy]  # the entropy on the first run only, not on backward's rerun

        def chunk(h, t, pending=pending):
            with autocast(model):  # the LM head in the model's precision, the log-softmax in float32
                logits = head(h)
            logp, entropy = _SelectedLogProb.apply(logits, t, temperature, pending[0])
            if pending[0]:
                entropies.append(entropy)
                pending[0] = False
            return logp

        if torch.is_grad_enabled():
            logps.append(torch.utils.checkpoint.checkpoint(chunk, h, t, use_reentrant=False))
        else:
            logps.append(chunk(h, t))
    logp = torch.cat(logps)
    zeros = torch.zeros(batch.response_mask.shape, dtype=logp.dtype, device=logp.device)
    entropy = zeros.masked_scatter(batch.response_mask, torch.cat(entropies)) if with_entropy else None
    return zeros.masked_scatter(batch.response_mask, logp), entropy
