"""clipbench's attention kernels for transformers models, and switching a model onto them.

* `grouped_sdpa_attention` (`GROUPED_SDPA`): transformers' "sdpa" attention without per-head
  copies of grouped K/V; the sampler decodes with it on a CPU (`clipbench.engines`).
* `packed_sdpa_attention` (`PACKED_SDPA`): attention over sequences packed back to back in one
  row, each attending causally to itself only; the policy's training forward runs on it
  (`clipbench.logprobs`).
* `use_attention`: a model on one of them for the duration of a `with` block (registered with
  transformers on first use), back on "sdpa" after; `attention_as`: on any implementation, back on
  the previous one after (what a recomputation in backward runs under).

The bottom floor of the sampling and log-prob modules: it imports no other clipbench module.
"""

from __future__ import annotations

import contextlib

import torch

GROUPED_SDPA = "clipbench_grouped_sdpa"


def grouped_sdpa_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' "sdpa" attention without copying K/V once per query head: torch's kernel takes
    grouped K/V together with a mask (`enable_gqa`). transformers copies them whenever a mask is
    given (CUDA's fast kernels need that), which on a CPU costs a third of a decode step with a
    left-padded batch. Same outputs (tests/test_attention.py)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


PACKED_SDPA = "clipbench_packed_sdpa"


def packed_sdpa_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    unpack_index=None,
    pack_index=None,
    **kwargs,
):
    """Attention over a packed row (1, H, N, D) of sequences: each sequence attends causally to
    itself only. The projections around it run on the N real tokens; here the packed heads are
    gathered into a right-padded (B, H, T, D) batch (`unpack_index`), where a plain causal
    kernel is exact for every real query (its padding keys all come after it), and the real
    positions are gathered back (`pack_index`). Sliding-window layers get a banded causal mask.
    The indices are those of a `clipbench.logprobs.TokenBatch`."""
    if unpack_index is None or pack_index is None or query.shape[0] != 1:
        raise ValueError(f"{PACKED_SDPA} needs one packed row and its `TokenBatch` indices")
    if attention_mask is not None or not getattr(module, "is_causal", True):
        raise NotImplementedError(f"{PACKED_SDPA} implements plain causal attention only (no extra mask)")
    for name in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"{PACKED_SDPA} does not implement attention {name}")

    def unpack(x):  # (1, H, N, D) -> (B, H, T, D); index_select, whose backward (index_add) is cheap
        return x[0].index_select(1, unpack_index.flatten()).unflatten(1, unpack_index.shape).transpose(0, 1)

    mask = None
    if sliding_window is not None:  # transformers' sliding_window_overlay: key > query - window
        position = torch.arange(unpack_index.shape[1], device=query.device)
        distance = position.unsqueeze(1) - position.unsqueeze(0)  # query minus key position
        mask = (distance >= 0) & (distance < sliding_window)
    grouped = query.shape[1] != key.shape[1]
    if grouped and mask is not None and query.device.type == "cuda":
        # CUDA's fused kernels take grouped K/V only without a mask (as transformers' sdpa path).
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        grouped = False
    out = torch.nn.functional.scaled_dot_product_attention(
        unpack(query),
        unpack(key),
        unpack(value),
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=mask is None,
        enable_gqa=grouped,
    )
    return out.transpose(1, 2).flatten(0, 1).index_select(0, pack_index).unsqueeze(0), None


def _no_mask(*args, **kwargs):
    """The mask function of `packed_sdpa_attention`: it needs none (the packing says it all)."""
    return None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, _no_mask)


@contextlib.contextmanager
def use_attention(model, implementation: str):
    """`model` on one of clipbench's attention implementations, back on "sdpa" after."""
    _register_attention()
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


@contextlib.contextmanager
def attention_as(model, implementation: str):
    """`model` on `implementation` for the duration of a `with` block, back on the one it was on
    before; nothing is switched when it already is on it. Activation checkpointing's
    recomputation in backward enters this with the implementation its forward ran on
    (`clipbench.logprobs`), since `use_attention` has put the model back on "sdpa" by then."""
    previous = model.config._attn_implementation
    if previous == implementation:
        yield
        return
    _register_attention()
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
