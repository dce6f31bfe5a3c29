"""The HF rollout engine: the KV-cached sampler whose finished rows leave the batch.

The central check: the log-prob the sampler used for each sampled token equals the policy's
teacher-forced log-prob of that token (`token_logprobs` on the collated batch), for left-padded
prompts of different lengths and rows that finish at different steps, so cache, positions and
masks stay right after rows are dropped.
"""

import pytest
import torch
from transformers.masking_utils import and_masks, causal_mask_function, sliding_window_overlay

from clipbench import rollout
from clipbench.models import load_model
from clipbench.rollout import (
    HFEngine,
    _nucleus,
    _packs,
    _sample,
    collate,
    grouped_sdpa_attention,
    packed_sdpa_attention,
    sample_completions,
    token_logprobs,
)

PROMPTS = ["Compute: 1+2\n", "Compute: 3-1+4-1+5-9+2-6\n", "What?\n"]


# The central checks also run on a GPU where there is one (unverified here: no CUDA device).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]
TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}


def load_policy(base_model, device: str = "cpu"):
    """The shared random base model, with EOS made likely (its tied embedding row scaled up) so
    rows finish at many different steps."""
    model, tokenizer = load_model(base_model, device=device)
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 16.0
    return model, tokenizer


@pytest.fixture(scope="module")
def policy(base_model):
    return load_policy(base_model)


@pytest.fixture(scope="module", params=DEVICES)
def device_policy(base_model, request):
    return load_policy(base_model, request.param)


def engine(policy, **overrides):
    model, tokenizer = policy
    settings = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 24} | overrides
    return HFEngine(model, tokenizer, **settings)


def test_sampler_log_probs_equal_the_policy_teacher_forced(device_policy):
    model, tokenizer = device_policy
    samples, logprobs = engine(device_policy).generate_with_logprobs(PROMPTS, 8, seed=0)
    lengths = [len(ids) for ids in samples.completion_ids]
    assert any(samples.finished) and not all(samples.finished)  # rows left the batch at
    assert len(set(lengths)) > 4  # ... many different steps
    batch = collate(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id).to(model.device)
    with torch.no_grad():
        reference, _ = token_logprobs(model, batch, 0.7)
    for row, mask, values in zip(reference.cpu(), batch.response_mask.cpu(), logprobs, strict=True):
        assert row[mask].tolist() == pytest.approx(values, abs=1e-4)


def test_layout_eos_and_prompt_ids(policy):
    _, tokenizer = policy
    samples = engine(policy).generate(PROMPTS, 4, seed=1)
    assert len(samples.completion_ids) == len(samples.texts) == len(samples.finished) == 12
    for i, prompt in enumerate(PROMPTS):  # prompt-major, unpadded ids as the tokenizer gives them
        expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert samples.prompt_ids[4 * i : 4 * i + 4] == [expected] * 4
    eos = tokenizer.eos_token_id
    for ids, done in zip(samples.completion_ids, samples.finished, strict=True):
        if done:
            assert ids[-1] == eos and eos not in ids[:-1]
        else:
            assert eos not in ids and len(ids) == 24
    assert samples.texts == tokenizer.batch_decode(samples.completion_ids, skip_special_tokens=True)


def test_seeded_reproducible_and_global_rng_untouched(policy):
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = engine(policy).generate(PROMPTS, 4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert engine(policy).generate(PROMPTS, 4, seed=3) == first
    assert engine(policy).generate(PROMPTS, 4, seed=4).completion_ids != first.completion_ids
    # A batch split into chunks (batch_size) keeps the prompt-major layout and is reproducible.
    chunked = engine(policy, batch_size=5).generate(PROMPTS, 4, seed=3)
    assert chunked.prompt_ids == first.prompt_ids
    assert engine(policy, batch_size=5).generate(PROMPTS, 4, seed=3) == chunked


def first_token_frequencies(policy, top_p: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    model, tokenizer = policy
    samples = engine(policy, top_p=top_p, max_new_tokens=1, temperature=1.0).generate(
        ["Compute: 1+2\n"], n, 0
    )
    counts = torch.bincount(torch.tensor([ids[0] for ids in samples.completion_ids]), minlength=262)
    ids = torch.tensor([samples.prompt_ids[0]])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    return counts / n, probs


def chi_square_bound(categories: int) -> float:
    """Mean + 6 sd of a chi-square with categories - 1 degrees of freedom."""
    df = categories - 1
    return df + 6 * (2 * df) ** 0.5


def test_samples_follow_the_softmax_distribution(policy):
    n = 4000
    freq, probs = first_token_frequencies(policy, top_p=1.0, n=n)
    chi2 = float(n * ((freq - probs) ** 2 / probs).sum())
    assert chi2 < chi_square_bound(len(probs))
    # The test has power: the same samples against the distribution at temperature 0.25 fail it.
    sharper = torch.softmax(probs.log() / 0.25, -1)
    assert float(n * ((freq - sharper) ** 2 / sharper).sum()) > chi_square_bound(len(probs))


def test_top_p_never_samples_outside_the_nucleus(policy):
    n = 2000
    freq, probs = first_token_frequencies(policy, top_p=0.3, n=n)
    nucleus = _nucleus(probs.unsqueeze(0), 0.3)[0]
    inside = nucleus > 0
    assert 1 < int(inside.sum()) < len(probs) and (freq[~inside] == 0).all()
    chi2 = float(n * ((freq[inside] - nucleus[inside]) ** 2 / nucleus[inside]).sum())
    assert chi2 < chi_square_bound(int(inside.sum()))


def test_nucleus_golden_values():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    # top_p 0.7: 0.5 (mass before 0) and 0.3 (mass before 0.5 < 0.7) stay; 0.15 has 0.8 before it.
    assert _nucleus(probs, 0.7)[0].tolist() == pytest.approx([0.0, 0.625, 0.0, 0.375])
    # top_p 0.5: 0.3 has exactly 0.5 before it -> dropped; the top token alone.
    assert _nucleus(probs, 0.5)[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert _nucleus(probs, 0.01)[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])  # top token always kept
    assert torch.equal(_nucleus(probs, 1.0), probs)


def test_grouped_decode_attention_changes_nothing_but_speed(policy):
    # On a CPU the sampler decodes with grouped K/V (no per-head copies); the samples and log-probs
    # are those of transformers' own sdpa path, and the model's attention setting is restored.
    model, tokenizer = policy
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    settings = {
        "n": 3,
        "max_new_tokens": 16,
        "temperature": 0.7,
        "top_p": 1.0,
        "eos_id": tokenizer.eos_token_id,
    }
    grouped = sample_completions(
        model, enc["input_ids"], enc["attention_mask"], generator=torch.Generator().manual_seed(0), **settings
    )
    assert model.config._attn_implementation == "sdpa"
    plain = _sample(
        model, enc["input_ids"], enc["attention_mask"], generator=torch.Generator().manual_seed(0), **settings
    )
    assert grouped[0] == plain[0] and grouped[1] == plain[1]
    assert [v for row in grouped[2] for v in row] == pytest.approx(
        [v for row in plain[2] for v in row], abs=1e-6
    )


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

    monkeypatch.setattr(rollout, "packed_sdpa_attention", counted)
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


def test_gradient_checkpointing_runs_padded(base_model):
    # Checkpointing recomputes the forward during backward, after token_logprobs has put the
    # model back on plain sdpa: packed, that recomputation would attend across sequences.
    model, _ = load_model(base_model)
    assert _packs(model)
    model.gradient_checkpointing_enable()
    assert not _packs(model)
