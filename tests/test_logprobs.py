"""The policy's log-probs (`token_logprobs`) and the batch layouts they run on (`collate`): the
packed forward equals each sequence run alone (values and gradients) and the padded fallback,
grad and no-grad forwards agree, and gradient checkpointing keeps the packed layout (same
log-probs and gradients, the recomputation in backward packed too)."""

import copy

import pytest
import torch
from tiny_policy import PROMPTS, TOLERANCE, engine

from clipbench import attention
from clipbench.attention import packed_sdpa_attention
from clipbench.logprobs import _packs, collate, enable_gradient_checkpointing, token_logprobs


def test_no_grad_and_grad_forwards_give_the_same_log_probs(policy):
    # The trainer's old log-probs of minibatches after the first come from a no-grad forward and
    # are compared with the update's grad-mode forward: on the same weights they must agree, or
    # ratios would be off before any update.
    model, tokenizer = policy
    samples = engine(policy).generate(PROMPTS, 2, seed=5)
    batch = collate(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        no_grad, entropy = token_logprobs(model, batch, 0.7, with_entropy=True)
    with_grad, _ = token_logprobs(model, batch, 0.7)
    assert with_grad.requires_grad
    assert torch.equal(no_grad[batch.response_mask], with_grad.detach()[batch.response_mask])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp_all = torch.log_softmax(logits.float() / 0.7, -1)
    expected = -(logp_all.exp() * logp_all).sum(-1)
    assert torch.allclose(entropy[batch.response_mask], expected[batch.response_mask], atol=1e-5)


def test_collate_packs_sequences_back_to_back():
    batch = collate([[5, 6], [9]], [[7, 8, 3], [10]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 3], [9, 10, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[False, True, True, True], [True, False, False, False]]
    assert batch.packed_ids.tolist() == [[5, 6, 7, 8, 3, 9, 10]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert batch.unpack_index.tolist() == [[0, 1, 2, 3, 4], [5, 6, 0, 0, 0]]
    assert batch.pack_index.tolist() == [0, 1, 2, 3, 4, 5, 6]  # flat (B * T) positions: 5 = row 1, col 0
    assert batch.predict_at.tolist() == [1, 2, 3, 5]  # positions whose next token is a response token
    assert batch.packed_ids[0, batch.predict_at + 1].tolist() == [7, 8, 3, 10]
    assert torch.equal(batch.input_ids.flatten()[batch.pack_index], batch.packed_ids[0])


def one_at_a_time_logprobs(model, prompt_ids, completion_ids, temperature):
    """The reference: each sequence run through the model alone (no padding, no packing)."""
    out = []
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        ids = torch.tensor([prompt + completion], device=model.device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        logp_all = torch.log_softmax(logits.float() / temperature, -1)
        out.append(logp_all.gather(-1, ids[0, len(prompt) :].unsqueeze(-1)).squeeze(-1))
    return torch.cat(out)


def test_packed_forward_equals_each_sequence_alone_values_and_gradients(device_policy, monkeypatch):
    # `token_logprobs` runs the packed layout: positions restart per sequence and no sequence
    # attends to another. Both are checked against each sequence run alone (a packing that let
    # tokens see the previous sequence changes these numbers; RoPE makes a position offset
    # invisible here, so the restart is pinned by test_collate_packs_sequences_back_to_back).
    model, tokenizer = device_policy
    tolerance = TOLERANCE[model.device.type]
    samples = engine(device_policy).generate(PROMPTS, 3, seed=2)
    batch = collate(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id).to(model.device)
    weights = torch.linspace(-1.0, 1.0, int(batch.response_mask.sum()), device=model.device)
    params = [p for p in model.parameters() if p.requires_grad]
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return packed_sdpa_attention(*args, **kwargs)

    monkeypatch.setattr(attention, "packed_sdpa_attention", counted)
    assert _packs(model)
    packed, _ = token_logprobs(model, batch, 0.7)
    assert len(calls) == model.config.num_hidden_layers  # the packed path ran, once per layer
    assert model.config._attn_implementation == "sdpa"  # and the model is back on sdpa
    assert not packed[~batch.response_mask].any()  # zero off the response positions
    packed_grads = torch.autograd.grad((packed[batch.response_mask] * weights).sum(), params)
    alone = one_at_a_time_logprobs(model, samples.prompt_ids, samples.completion_ids, 0.7)
    alone_grads = torch.autograd.grad((alone * weights).sum(), params)

    assert torch.allclose(packed[batch.response_mask], alone, atol=tolerance)
    for ours, reference in zip(packed_grads, alone_grads, strict=True):
        assert torch.allclose(ours, reference, atol=tolerance, rtol=10 * tolerance)


def test_padded_fallback_equals_packed(policy):
    # Models not on "sdpa" attention run on the padded layout; both layouts give the same numbers.
    model, tokenizer = policy
    samples = engine(policy).generate(PROMPTS, 2, seed=3)
    batch = collate(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        packed, packed_entropy = token_logprobs(model, batch, 0.7, with_entropy=True)
        model.set_attn_implementation("eager")
        try:
            padded, padded_entropy = token_logprobs(model, batch, 0.7, with_entropy=True)
        finally:
            model.set_attn_implementation("sdpa")
    assert torch.allclose(packed, padded, atol=1e-5)
    assert torch.allclose(packed_entropy, padded_entropy, atol=1e-5)


def checkpointing_batch(vocab: int):
    """Rows of different lengths (one without a response token) of random token ids."""
    gen = torch.Generator().manual_seed(11)
    shapes = [(3, 9), (7, 2), (1, 14), (5, 0), (2, 6)]
    prompts = [torch.randint(5, vocab, (p,), generator=gen).tolist() for p, _ in shapes]
    completions = [torch.randint(5, vocab, (c,), generator=gen).tolist() for _, c in shapes]
    return collate(prompts, completions, pad_id=0)


def logprobs_and_grads(model, batch, chunk_tokens=None):
    logp, _ = token_logprobs(model, batch, 0.7, chunk_tokens=chunk_tokens)
    weights = torch.linspace(-1.0, 1.0, logp.numel(), dtype=logp.dtype).view_as(logp)
    return logp.detach(), torch.autograd.grad((logp * weights).sum(), list(model.parameters()))


@pytest.mark.parametrize("chunk_tokens", [None, 4])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gradient_checkpointing_keeps_the_packed_forward(policy, monkeypatch, mode, chunk_tokens):
    # Checkpointing recomputes each decoder layer in backward, after token_logprobs has put the
    # model back on plain sdpa: the recomputation must run on the packed attention again (else it
    # attends across sequences), in eval mode (the trainer's) and in train mode (where
    # transformers' own checkpointing would run). Same log-probs and gradients as without
    # checkpointing, bit for bit in float64; the packed attention runs once per layer forward
    # and once per layer recomputation, and the model is left as it was.
    plain = copy.deepcopy(policy[0]).double()
    getattr(plain, mode)()
    batch = checkpointing_batch(plain.config.vocab_size)
    logp, grads = logprobs_and_grads(plain, batch, chunk_tokens)

    model = enable_gradient_checkpointing(copy.deepcopy(plain))
    assert model.is_gradient_checkpointing and _packs(model)
    calls = []

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return packed_sdpa_attention(*args, **kwargs)

    monkeypatch.setattr(attention, "packed_sdpa_attention", counted)
    layers = model.config.num_hidden_layers
    checkpointed_logp, _ = token_logprobs(model, batch, 0.7, chunk_tokens=chunk_tokens)
    assert len(calls) == layers  # the forward: packed
    weights = torch.linspace(-1.0, 1.0, logp.numel(), dtype=logp.dtype).view_as(logp)
    checkpointed = torch.autograd.grad((checkpointed_logp * weights).sum(), list(model.parameters()))
    assert len(calls) == 2 * layers  # backward recomputed every layer, packed
    assert torch.equal(checkpointed_logp.detach(), logp)
    for ours, reference in zip(checkpointed, grads, strict=True):
        assert torch.equal(ours, reference)
    assert model.config._attn_implementation == "sdpa" and model.training == (mode == "train")
    for layer in model.model.layers:
        assert "forward" not in vars(layer) and layer.gradient_checkpointing


def test_gradient_checkpointing_leaves_no_grad_forwards_and_sampling_alone(policy, monkeypatch):
    # Old and reference log-probs (no gradient) run no checkpoint, and the sampler's KV cache
    # is untouched (transformers drops the cache of a layer it checkpoints): same samples.
    model = enable_gradient_checkpointing(copy.deepcopy(policy[0]))
    tokenizer = policy[1]
    checkpoints = []
    real = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        checkpoints.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    assert engine((model, tokenizer)).generate(PROMPTS, 2, seed=5) == engine(policy).generate(
        PROMPTS, 2, seed=5
    )
    batch = checkpointing_batch(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(token_logprobs(model, batch, 0.7)[0], token_logprobs(policy[0], batch, 0.7)[0])
    assert checkpoints == []
    token_logprobs(model, batch, 0.7)
    assert len(checkpoints) == model.config.num_hidden_layers


def test_gradient_checkpointing_on_the_padded_layout(policy):
    # A model that does not pack (here eager attention) is checkpointed as well: its layers'
    # recomputation runs on its own attention, same gradients.
    plain = copy.deepcopy(policy[0]).double()
    plain.set_attn_implementation("eager")
    batch = checkpointing_batch(plain.config.vocab_size)
    logp, grads = logprobs_and_grads(plain, batch)
    model = enable_gradient_checkpointing(copy.deepcopy(plain))
    assert not _packs(model)
    checkpointed_logp, checkpointed = logprobs_and_grads(model, batch)
    assert torch.equal(checkpointed_logp, logp)
    for ours, reference in zip(checkpointed, grads, strict=True):
        assert torch.equal(ours, reference)
