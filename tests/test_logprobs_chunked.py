"""`token_logprobs(..., chunk_tokens=n)`: the LM head and log-softmax computed n response positions
at a time, each chunk recomputed in backward. In float64 its log-probs, entropies and parameter
gradients equal the unchunked path's to 1e-10 (relative) for chunks of 1, 3, 7 and more than K,
packed and padded, tied and untied embeddings, with a row that has no response token; the
unchunked path (`chunk_tokens=None`) is still today's formula bit for bit; the chunked forward
saves no (tokens, vocab) tensor for backward."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from clipbench import logprobs
from clipbench.logprobs import _packs, collate, token_logprobs

TEMPERATURE = 0.7
CHUNKS = [1, 3, 7, 1000]  # 1000 > K


def random_batch(vocab: int, completion_lengths=(5, 0, 9, 1, 13), seed: int = 0):
    """Prompts of 1-6 and completions of the given lengths (one empty) of random token ids."""
    gen = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for length in completion_lengths:
        prompt_length = int(torch.randint(1, 7, (1,), generator=gen))
        prompts.append(torch.randint(4, vocab, (prompt_length,), generator=gen).tolist())
        completions.append(torch.randint(4, vocab, (length,), generator=gen).tolist())
    return collate(prompts, completions, pad_id=0)


@pytest.fixture(scope="module")
def tied64(policy):
    """The shared tiny Qwen2 policy (tied embeddings) in float64."""
    model = copy.deepcopy(policy[0]).double()
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


@pytest.fixture(scope="module")
def untied64():
    """A random tiny Llama with its own LM head, in float64."""
    config = LlamaConfig(
        vocab_size=262,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).double().eval()
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    return model


def log_probs_and_grads(model, batch, weights, chunk_tokens):
    """(log-probs, entropies, d(sum of weighted log-probs)/d every parameter)."""
    logp, entropy = token_logprobs(model, batch, TEMPERATURE, with_entropy=True, chunk_tokens=chunk_tokens)
    assert not entropy.requires_grad  # a metric
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((logp[batch.response_mask] * weights).sum(), params)
    return logp.detach(), entropy, grads


def assert_relative(ours, reference, what):
    """Equal to 1e-10 of the reference's scale (element-wise rtol 1e-10, atol 1e-10 * max |ref|)."""
    torch.testing.assert_close(
        ours, reference, rtol=1e-10, atol=1e-10 * float(reference.abs().max()), msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("which", ["tied64", "untied64"])
def test_chunked_equals_unchunked_values_entropies_and_gradients(which, layout, request, monkeypatch):
    monkeypatch.setattr(logprobs, "_ENTROPY_ROWS", 2)  # the entropy's blocks within a chunk tested too
    model = request.getfixturevalue(which)
    batch = random_batch(model.config.vocab_size)
    k = int(batch.response_mask.sum())
    assert not batch.response_mask[1].any() and 7 < k < 1000
    weights = torch.randn(k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if layout == "padded":
        model.set_attn_implementation("eager")
    try:
        assert _packs(model) == (layout == "packed")
        reference = log_probs_and_grads(model, batch, weights, None)
        assert reference[0].dtype == torch.float64  # not rounded to float32 on the way
        for chunk in CHUNKS:
            logp, entropy, grads = log_probs_and_grads(model, batch, weights, chunk)
            assert_relative(logp, reference[0], f"log-probs, chunk {chunk}")
            assert_relative(entropy, reference[1], f"entropies, chunk {chunk}")
            assert not logp[~batch.response_mask].any() and not entropy[~batch.response_mask].any()
            for (name, _), ours, theirs in zip(model.named_parameters(), grads, reference[2], strict=True):
                assert_relative(ours, theirs, f"gradient of {name}, chunk {chunk}")
    finally:
        model.set_attn_implementation("sdpa")


def test_no_response_token_at_all(tied64):
    batch = random_batch(tied64.config.vocab_size, completion_lengths=(0, 0))
    logp, entropy = token_logprobs(tied64, batch, TEMPERATURE, with_entropy=True, chunk_tokens=3)
    assert not logp.any() and not entropy.any() and logp.shape == batch.response_mask.shape
    logp.sum().backward()  # a graph to the parameters, with zero gradients
    assert not tied64.get_input_embeddings().weight.grad.any()
    tied64.zero_grad(set_to_none=True)


def todays_formula(model, batch, temperature):
    """token_logprobs before chunking existed (the packed path), verbatim: the default path must
    give these bits."""
    from clipbench.attention import PACKED_SDPA, use_attention

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
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = torch.cat([-(c.exp() * c).sum(-1) for c in logp_all.split(1024)])
    zeros = torch.zeros(batch.response_mask.shape, dtype=logp.dtype)
    return zeros.masked_scatter(batch.response_mask, logp), zeros.masked_scatter(batch.response_mask, entropy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_path_is_todays_bits(policy, dtype):
    model = copy.deepcopy(policy[0]).to(dtype)
    batch = random_batch(model.config.vocab_size)
    with torch.no_grad():
        logp, entropy = token_logprobs(model, batch, TEMPERATURE, with_entropy=True)
        old_logp, old_entropy = todays_formula(model, batch, TEMPERATURE)
    assert logp.dtype == torch.float32
    assert torch.equal(logp, old_logp) and torch.equal(entropy, old_entropy)


def test_float32_chunked_close_to_unchunked_and_no_grad_equals_grad(policy):
    model = policy[0]
    batch = random_batch(model.config.vocab_size, completion_lengths=(30, 0, 17, 41))
    with torch.no_grad():
        reference, reference_entropy = token_logprobs(model, batch, TEMPERATURE, with_entropy=True)
        no_grad, no_grad_entropy = token_logprobs(
            model, batch, TEMPERATURE, with_entropy=True, chunk_tokens=16
        )
    with_grad, with_grad_entropy = token_logprobs(
        model, batch, TEMPERATURE, with_entropy=True, chunk_tokens=16
    )
    assert with_grad.requires_grad and with_grad.dtype == torch.float32
    assert torch.equal(no_grad, with_grad.detach()) and torch.equal(no_grad_entropy, with_grad_entropy)
    torch.testing.assert_close(no_grad, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(no_grad_entropy, reference_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 8])
def test_chunked_forward_saves_no_vocab_sized_tensor(policy, chunk):
    # What a forward keeps for backward: unchunked, the (K, V) logits' log-softmax (and more);
    # chunked, nothing with a vocabulary dimension beyond the parameters themselves.
    model = policy[0]
    vocab = model.config.vocab_size
    batch = random_batch(vocab, completion_lengths=(30, 0, 17, 41))
    k = int(batch.response_mask.sum())
    params = {p.data_ptr() for p in model.parameters()}
    saved = []

    def pack(tensor):
        if tensor.data_ptr() not in params:
            saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp, _ = token_logprobs(model, batch, TEMPERATURE, chunk_tokens=chunk)
    vocab_sized = [shape for shape in saved if vocab in shape]
    if chunk is None:
        assert (k, vocab) in vocab_sized
    else:
        assert vocab_sized == []
    logp.sum().backward()
    model.zero_grad(set_to_none=True)


def test_bad_chunk_sizes_and_transformed_logits_are_refused(policy):
    model = policy[0]
    batch = random_batch(model.config.vocab_size)
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="chunk_tokens"):
            token_logprobs(model, batch, TEMPERATURE, chunk_tokens=bad)
    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        token_logprobs(capped, batch, TEMPERATURE, chunk_tokens=4)
