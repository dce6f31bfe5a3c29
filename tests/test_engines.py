"""The HF sampling engine: the KV-cached sampler whose finished rows leave the batch.

The central check: the log-prob the sampler used for each sampled token equals the policy's
teacher-forced log-prob of that token (`token_logprobs` on the collated batch), for left-padded
prompts of different lengths and rows that finish at different steps, so cache, positions and
masks stay right after rows are dropped.
"""

import pytest
import torch
from tiny_policy import PROMPTS, engine

from clipbench.engines import _nucleus, _sample, sample_completions
from clipbench.logprobs import collate, token_logprobs


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


def test_weights_cross_to_vllms_process_as_bytes_and_come_back_equal():
    """vLLM's engine process gets the policy's tensors as (name, dtype, shape, bytes) records (its
    RPC pickles arguments and cannot pickle tensor buffers); the worker rebuilds them exactly."""
    from clipbench.engines import VLLMWorkerExtension, _dtype_name, _tensor_bytes

    received = []

    class Worker(VLLMWorkerExtension):
        def clipbench_load_weights(self, weights):
            received.extend(weights)

    g = torch.Generator().manual_seed(0)
    state = {
        "a.weight": torch.randn(3, 5, generator=g),
        "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.t": torch.randn(4, 6, generator=g).t(),  # not contiguous
        "d.empty": torch.zeros(0, 3),
    }
    Worker().clipbench_load_weight_bytes(
        [(n, _dtype_name(x), list(x.shape), _tensor_bytes(x)) for n, x in state.items()]
    )
    assert [name for name, _ in received] == list(state)
    for (_, got), want in zip(received, state.values(), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_tied_lm_head_crosses_once():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipbench.engines import _unshared

    def model(tied):
        config = Qwen2Config(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=tied,
        )
        return Qwen2ForCausalLM(config).state_dict()

    tied, untied = model(True), model(False)
    assert "lm_head.weight" in tied and "lm_head.weight" not in _unshared(tied)
    assert list(_unshared(tied)) == [k for k in tied if k != "lm_head.weight"]
    assert list(_unshared(untied)) == list(untied)  # nothing shared: everything crosses


def test_a_sleeping_vllm_wakes_its_weights_for_the_sync_and_its_cache_after(tmp_path):
    """The calls a VLLMEngine with a sleep level makes (on a stand-in for vLLM's LLM: sleep mode
    needs CUDA): release -> sleep(level); resume -> wake the weights only; sync -> load them, then
    wake the KV cache, then reset the prefix cache. Without a sleep level: no sleep, no wake."""
    import tempfile

    from clipbench.engines import VLLMEngine

    calls = []

    class LLM:
        def sleep(self, level):
            calls.append(("sleep", level))

        def wake_up(self, tags=None):
            calls.append(("wake_up", tuple(tags)))

        def collective_rpc(self, method, **kwargs):
            calls.append(("rpc", method))

        def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache",))

    class Model:
        def save_pretrained(self, path, safe_serialization):
            calls.append(("save",))

    def engine(sleep_level):
        e = object.__new__(VLLMEngine)  # no vLLM here: only the methods under test
        e.llm, e.weight_sync, e.sleep_level, e._asleep = LLM(), "disk", sleep_level, False
        e._scratch = tempfile.TemporaryDirectory(dir=tmp_path)
        return e

    e = engine(2)
    e.release(), e.resume(), e.sync(Model())
    assert calls == [
        ("sleep", 2),
        ("wake_up", ("weights",)),
        ("save",),
        ("rpc", "clipbench_reload_weights"),
        ("wake_up", ("kv_cache",)),
        ("reset_prefix_cache",),
    ]
    calls.clear()
    e = engine(None)
    e.release(), e.resume(), e.sync(Model())
    assert calls == [("save",), ("rpc", "clipbench_reload_weights"), ("reset_prefix_cache",)]
