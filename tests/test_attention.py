"""The attention kernels: `grouped_sdpa_attention` against transformers' own sdpa attention, and
`packed_sdpa_attention` against eager attention run one sequence at a time."""

import pytest
import torch
from transformers.masking_utils import and_masks, causal_mask_function, sliding_window_overlay

from clipbench.attention import grouped_sdpa_attention, packed_sdpa_attention
from clipbench.logprobs import collate


def test_grouped_sdpa_equals_transformers_sdpa_with_a_padding_mask():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, h, t, 8, generator=g) for h, t in ((4, 1), (2, 9), (2, 9)))
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., :4] = False  # a left-padded row

    class Layer(torch.nn.Module):
        num_key_value_groups = 2
        is_causal = True

    ours, _ = grouped_sdpa_attention(Layer(), query, key, value, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(Layer(), query, key, value, mask, scaling=0.3)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("window", [None, 2])
def test_packed_attention_equals_attention_per_sequence(window):
    lengths = [5, 1, 3]
    g = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, sum(lengths), 8, generator=g)
    key, value = (torch.randn(1, 2, sum(lengths), 8, generator=g) for _ in range(2))
    batch = collate([[1] * n for n in lengths], [[] for _ in lengths], pad_id=0)

    ours, _ = packed_sdpa_attention(
        None,
        query,
        key,
        value,
        None,
        scaling=0.3,
        sliding_window=window,
        unpack_index=batch.unpack_index,
        pack_index=batch.pack_index,
    )
    allows = (
        causal_mask_function
        if window is None
        else and_masks(causal_mask_function, sliding_window_overlay(window))
    )
    expected, start = [], 0
    for n in lengths:  # eager attention, one sequence at a time, with transformers' mask
        q = query[0, :, start : start + n]
        k, v = (x[0, :, start : start + n].repeat_interleave(2, dim=0) for x in (key, value))
        i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
        allowed = allows(torch.tensor(0), torch.tensor(0), i, j).expand(n, n)
        scores = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~allowed, float("-inf"))
        expected.append((scores.softmax(-1) @ v).transpose(0, 1))  # (n, H, D)
        start += n
    assert ours.shape == (1, sum(lengths), 4, 8)
    assert torch.allclose(ours[0], torch.cat(expected), atol=1e-5)


def test_packed_attention_refuses_what_it_does_not_implement():
    x = torch.zeros(1, 2, 3, 4)
    batch = collate([[1, 2, 3]], [[]], pad_id=0)
    indices = {"unpack_index": batch.unpack_index, "pack_index": batch.pack_index}
    with pytest.raises(ValueError, match="packed row"):
        packed_sdpa_attention(None, x, x, x, None)
    with pytest.raises(NotImplementedError, match="softcap"):
        packed_sdpa_attention(None, x, x, x, None, softcap=30.0, **indices)
    with pytest.raises(NotImplementedError, match="no extra mask"):
        packed_sdpa_attention(None, x, x, x, torch.ones(1, 1, 3, 3, dtype=torch.bool), **indices)
