"""The SFT warm-up: its loss against transformers' own cross-entropy, and a short deterministic run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clipbench import benchmarks
from clipbench.models import build_tiny_model, build_tokenizer
from clipbench.sft import SFTConfig, _encode, padded_sft_loss, run_sft, sft_loss


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def examples(tokenizer):
    spec = benchmarks.get_spec("synthetic")
    problems = benchmarks.load("synthetic", split="train", n=6, seed=3)
    return [
        _encode(tokenizer, benchmarks.build_prompt(p, template=spec.prompt_template), p.solution)
        for p in problems
    ]


def test_the_packed_loss_is_transformers_cross_entropy_on_the_solution_tokens(tokenizer, examples):
    """Value and gradient equal the padded reference: the mean over solution tokens (not over
    sequences, not including the prompt), each token scored at its own position."""
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, intermediate_size=64, seed=1)
    lengths = {len(p) + len(c) for p, c in examples}
    assert len(lengths) > 1  # rows of different lengths: padding and packing both matter
    ours = sft_loss(model, examples, tokenizer.pad_token_id)
    (grad_ours,) = torch.autograd.grad(ours, model.model.embed_tokens.weight)
    reference = padded_sft_loss(model, examples, tokenizer.pad_token_id)
    (grad_reference,) = torch.autograd.grad(reference, model.model.embed_tokens.weight)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-4, atol=1e-7)
    # a token mean over the whole batch: each sequence weighs by its solution length
    n_solution = sum(len(c) for _, c in examples)
    per_sequence_mean = torch.stack(
        [sft_loss(model, [example], tokenizer.pad_token_id) for example in examples]
    ).mean()
    weighted = sum(sft_loss(model, [e], tokenizer.pad_token_id) * len(e[1]) for e in examples) / n_solution
    torch.testing.assert_close(ours, weighted, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(ours, per_sequence_mean, rtol=1e-4)


def test_a_short_run_is_deterministic_and_records_its_history(tmp_path):
    config = SFTConfig(
        n_problems=64,
        dev_problems=4,
        batch_size=8,
        max_steps=3,
        eval_every=2,
        max_new_tokens=16,
        hidden_size=32,
        num_layers=1,
        intermediate_size=64,
    )
    a = run_sft(config, tmp_path / "a", log=lambda _: None)
    b = run_sft(config, tmp_path / "b", log=lambda _: None)
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    history = json.loads((a / "sft_history.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 3]  # every eval_every steps, and the last
    assert history == json.loads((b / "sft_history.json").read_text())["history"]
    fresh = build_tiny_model(build_tokenizer(), hidden_size=32, num_layers=1, intermediate_size=64, seed=0)
    assert not torch.equal(fresh.model.embed_tokens.weight, weights_a["model.embed_tokens.weight"])
