"""The policy's precision (`clipbench.precision`, `TrainConfig.dtype`): float32 is untouched;
bfloat16 runs every forward (log-probs, packed or padded or chunked, and the HF sampler) under
autocast while the weights, gradients and AdamW state stay float32; a bfloat16 update is close to
the float32 one; updates far below bfloat16's resolution are kept; the no-grad forward of the old
log-probs equals the update's forward bit for bit, so ratios start at exactly 1; gradient
checkpointing gives the same gradients under bfloat16 too."""

import contextlib
import copy

import pytest
import torch
from tiny_policy import PROMPTS, engine

from clipbench.logprobs import collate, enable_gradient_checkpointing, token_logprobs
from clipbench.methods import available_methods, get_method
from clipbench.precision import DTYPES, autocast, compute_dtype, set_precision
from clipbench.trainer import kl_to_reference


def random_batch(vocab: int, seed: int = 0):
    """Eight rows of random token ids, prompts of 1-7 and completions of 2-20 tokens."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 9), (7, 2), (1, 14), (5, 3), (4, 20), (6, 8), (2, 11), (5, 5)]
    prompts = [torch.randint(5, vocab, (p,), generator=gen).tolist() for p, _ in shapes]
    completions = [torch.randint(5, vocab, (c,), generator=gen).tolist() for _, c in shapes]
    return collate(prompts, completions, pad_id=0)


def test_set_precision(policy):
    model = copy.deepcopy(policy[0])
    assert DTYPES == ("float32", "bfloat16")
    assert compute_dtype(model) is None and isinstance(autocast(model), contextlib.nullcontext)
    assert set_precision(model, "bfloat16") is model and compute_dtype(model) == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights stay float32
    set_precision(model, "float32")
    assert compute_dtype(model) is None and not hasattr(model, "clipbench_autocast_dtype")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        set_precision(model, "float16")
    with pytest.raises(ValueError, match="float32 master weights; this model's are bfloat16"):
        set_precision(copy.deepcopy(model).bfloat16(), "bfloat16")


def output_dtypes(model, run) -> set[torch.dtype]:
    """The dtypes of the LM head's and the first query projection's outputs during `run()`."""
    seen = set()
    modules = [model.get_output_embeddings(), model.model.layers[0].self_attn.q_proj]
    hooks = [m.register_forward_hook(lambda m, i, out: seen.add(out.dtype)) for m in modules]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_forward_computes_in_the_models_precision(policy, dtype):
    # The sampler, the packed and padded log-probs and the chunked LM head: matmuls in bfloat16
    # under autocast, float32 without; log-probs in float32 either way.
    model = set_precision(copy.deepcopy(policy[0]), dtype)
    expected = {getattr(torch, dtype)}
    batch = random_batch(model.config.vocab_size)
    assert output_dtypes(model, lambda: engine((model, policy[1])).generate(PROMPTS, 2, seed=1)) == expected
    for chunk in (None, 5):
        logp = []

        def log_probs(chunk=chunk, logp=logp):
            logp.append(token_logprobs(model, batch, 0.7, chunk_tokens=chunk)[0])

        assert output_dtypes(model, log_probs) == expected
        assert logp[0].dtype == torch.float32
    model.set_attn_implementation("eager")  # the padded layout
    assert output_dtypes(model, lambda: token_logprobs(model, batch, 0.7)) == expected


def test_bfloat16_no_grad_and_grad_forwards_agree(policy):
    # The old log-probs of later minibatches come from a no-grad forward, the update's from a
    # grad-mode one (and the first minibatch's are its update's own): on the same weights they
    # must agree bit for bit in bfloat16 too, so every step's first update runs at ratio 1.
    model = set_precision(copy.deepcopy(policy[0]), "bfloat16")
    batch = random_batch(model.config.vocab_size)
    for chunk in (None, 5):
        with torch.no_grad():
            old, _ = token_logprobs(model, batch, 0.7, chunk_tokens=chunk)
        new, _ = token_logprobs(model, batch, 0.7, chunk_tokens=chunk)
        assert torch.equal(old, new.detach())


def one_fp32_step(model, batch):
    """`model` after one float32 AdamW step (lr 3e-4) on the responses' mean negative log-prob."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    (-token_logprobs(model, batch, 1.0)[0][batch.response_mask].mean()).backward()
    optimizer.step()
    return model


def update(base, moved, dtype, batch, method, advantages):
    """One update as the trainer makes it, in `dtype`: old log-probs of `base` (the weights that
    sampled), the loss (rule + 0.1 * KL to `base`) and its gradient at `moved`, an AdamW step."""
    old_model, model = (set_precision(copy.deepcopy(m), dtype) for m in (base, moved))
    with torch.no_grad():
        old = token_logprobs(old_model, batch, 1.0)[0]
    logp, _ = token_logprobs(model, batch, 1.0)
    loss = method.loss(logp, old, advantages, batch.response_mask).loss
    loss = loss + 0.1 * kl_to_reference(logp, old, batch.response_mask)
    loss.backward()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
    optimizer.step()
    return loss.item(), gradient, model, optimizer


def test_a_bfloat16_update_is_close_to_the_float32_one(policy):
    # The same update (same weights, same minibatch, old log-probs of the weights one AdamW step
    # before: off-policy, the rule acting) in both precisions, for every rule. Where the loss is
    # not near 0 (|loss| > 0.1: FSPO, PPO, seq_ppo here) it is within 1e-2 relative (measured: 7e-4
    # to 4e-3); every rule's gradient points the same way (cosine > 0.9999) with the same norm to
    # 1e-2. Near 0 (GRPO's 0.002 here) a relative difference says little: docs/training.md.
    base = copy.deepcopy(policy[0])
    batch = random_batch(base.config.vocab_size)
    moved = one_fp32_step(base, batch)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    compared = []
    for name in available_methods():
        method = get_method(name)
        loss32, grad32, _, _ = update(base, moved, "float32", batch, method, advantages)
        loss16, grad16, model, optimizer = update(base, moved, "bfloat16", batch, method, advantages)
        if abs(loss32) > 0.1:
            assert abs(loss16 - loss32) < 1e-2 * abs(loss32), (name, loss16, loss32)
            compared.append(name)
        assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.9999, name
        assert abs(grad16.norm() - grad32.norm()) < 1e-2 * grad32.norm(), name
        assert grad16.dtype == torch.float32
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert {t.dtype for s in optimizer.state.values() for t in s.values() if t.dim()} == {torch.float32}
    assert {"fspo", "ppo"} <= set(compared)


def test_bfloat16_keeps_updates_below_its_resolution(policy):
    # An AdamW step moves a weight by about lr. bfloat16 weights would round a step of 1e-6 away
    # for any weight above ~5e-4 in size (8 significant bits); autocast's float32 master weights
    # keep it.
    model = set_precision(copy.deepcopy(policy[0]), "bfloat16")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    batch = random_batch(model.config.vocab_size)
    (-token_logprobs(model, batch, 1.0)[0][batch.response_mask].mean()).backward()
    optimizer.step()
    moved = [(p != b) & (p.grad != 0) for p, b in zip(model.parameters(), before, strict=True)]
    with_gradient = sum(int((p.grad != 0).sum()) for p in model.parameters())
    big = sum(
        int(((b.abs() > 1e-2) & (p.grad != 0)).sum()) for p, b in zip(model.parameters(), before, strict=True)
    )
    assert big > 0.5 * with_gradient  # most of them are far above bfloat16's step of 1e-6
    assert sum(int(m.sum()) for m in moved) > 0.99 * with_gradient


def test_gradient_checkpointing_under_bfloat16(policy):
    # The recomputation in backward runs under the forward's autocast (torch's checkpoint restores
    # it), on the packed attention: the same log-probs and gradients as without checkpointing.
    plain = set_precision(copy.deepcopy(policy[0]), "bfloat16")
    model = enable_gradient_checkpointing(set_precision(copy.deepcopy(policy[0]), "bfloat16"))
    batch = random_batch(plain.config.vocab_size)
    results = []
    for m in (plain, model):
        logp, _ = token_logprobs(m, batch, 0.7)
        weights = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)
        results.append((logp.detach(), torch.autograd.grad((logp * weights).sum(), list(m.parameters()))))
    (logp, grads), (checkpointed_logp, checkpointed) = results
    assert torch.equal(logp, checkpointed_logp)
    assert all(torch.equal(a, b) for a, b in zip(grads, checkpointed, strict=True))
