"""The planner: a training run's peak memory per device, the largest micro-batch token budget that
fits a GPU, and the time of a step and of a whole study, predicted from the model's shape and the
run's settings before any GPU is booked (`clipbench plan`; the study's DAG-time check,
`clipbench.study.check_study`).

Nothing here was measured on a GPU. The memory terms are counted from what the trainer's code keeps
(`clipbench.trainer`, `clipbench.logprobs`): the activation formula is the count of the tensors
autograd saves in one decoder layer of the packed forward, checked against `torch`'s saved-tensor
hooks on small Qwen2 and Qwen3 models (tests/test_plan.py), and the whole peak was compared with
the measured peak resident memory of the same update on a CPU (`speed/plan_accuracy.py`,
docs/training.md "Planning a GPU run"). The time terms are a roofline: FLOPs at an assumed share of
the GPU's datasheet peak, decoding at an assumed share of its memory bandwidth. Every assumption is
a named constant below, with where its number comes from.

Memory model, per device (`Memory`): what lives through the whole run (the CUDA runtime, the
float32 weights, AdamW's two float32 moments, a KL reference's weights, vLLM's share of the GPU)
plus the largest of the transient phases: an update's micro-batch (its gradients, saved
activations, log-prob chunk and backward working set) or, with the HF sampler, a rollout's KV cache.

Model shapes: a local model directory's ``config.json``, or for a hub id (not downloadable
offline) a shipped copy of the fields the planner reads, ``workflows/config/models/ORG--NAME.json``
(`shape_file`): add one to plan another hub model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clipbench.errors import UserError
from clipbench.precision import DTYPES  # what TrainConfig.dtype may be (bfloat16: autocast)

MIB = 1024**2
GIB = 1024**3
SHAPES_DIR = Path(__file__).resolve().parents[1] / "workflows" / "config" / "models"


class PlanError(UserError, ValueError):
    """A run or study the planner cannot plan (an unknown GPU kind, a model without a shape)."""


# --------------------------------------------------------------------------- the GPUs


@dataclass(frozen=True)
class Gpu:
    """One GPU kind: the memory the driver reports and the datasheet peaks the time estimate scales."""

    name: str
    label: str
    memory: int  # bytes: nvidia-smi's total ("81559MiB" on an H100 80GB HBM3)
    tflops: dict[str, float]  # dense peak by compute dtype; float32 is CUDA-core FP32, not TF32
    bandwidth: float  # HBM bytes per second
    source: str


# memory: nvidia-smi's memory.total on each kind (H100 80GB HBM3 81559 MiB, H200 143771 MiB,
# A100-SXM4-80GB 81920 MiB, A100-SXM4-40GB 40960 MiB); CUDA reports programs a little less (an A100
# 40GB's totalGlobalMem is 40,442 MiB), within HEADROOM. Peaks and HBM bandwidth: the datasheets
# (A100 SXM 1,555 GB/s for 40GB, 2,039 for 80GB; H100 SXM 3.35 TB/s; H200 4.8 TB/s).
_HOPPER = "NVIDIA H100/H200 datasheets: FP32 67, BF16 Tensor Core 1,979 TFLOPS with sparsity (989 dense)"
_AMPERE = "NVIDIA A100 datasheet: FP32 19.5, BF16 Tensor Core 312 TFLOPS dense"
GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu(
            "a100-40gb",
            "NVIDIA A100-SXM4-40GB",
            40960 * MIB,
            {"float32": 19.5, "bfloat16": 312.0},
            1.555e12,
            _AMPERE,
        ),
        Gpu(
            "a100-80gb",
            "NVIDIA A100-SXM4-80GB",
            81920 * MIB,
            {"float32": 19.5, "bfloat16": 312.0},
            2.039e12,
            _AMPERE,
        ),
        Gpu(
            "h100-80gb",
            "NVIDIA H100 80GB HBM3 (SXM)",
            81559 * MIB,
            {"float32": 66.9, "bfloat16": 989.4},
            3.35e12,
            _HOPPER,
        ),
        Gpu(
            "h200-141gb",
            "NVIDIA H200 (SXM)",
            143771 * MIB,
            {"float32": 66.9, "bfloat16": 989.4},
            4.8e12,
            _HOPPER,
        ),
    )
}


def get_gpu(name: str) -> Gpu:
    if name not in GPUS:
        raise PlanError(f"unknown GPU kind {name!r}; known: {', '.join(GPUS)}")
    return GPUS[name]


# --------------------------------------------------------------------------- assumptions

#: The CUDA context, cuBLAS workspace and kernels of the trainer's process. Assumed, not measured
#: (a CUDA context alone takes some 300-600 MiB on recent GPUs).
CUDA_RUNTIME_BYTES = 1 * GIB
#: Share of the GPU's memory a plan leaves free for what the terms do not model: blocks the caching
#: allocator holds but cannot reuse (fragmentation; variable-length micro-batches make it worse).
#: A run "fits" when its predicted peak is at most (1 - HEADROOM) of the GPU. Assumed: on a CPU,
#: glibc's malloc kept up to 29% above the live peak (speed/plan_accuracy.py); CUDA's caching
#: allocator is usually said to waste less, which nothing here measured.
HEADROOM = 0.10
#: The attention tensors of a micro-batch are padded to its longest sequence (clipbench.attention:
#: rows x longest); assumed twice its packed tokens, RL responses being of very unequal lengths
#: (1 when every sequence has the same length, as in speed/plan_accuracy.py).
ATTENTION_PADDING = 2.0
#: The longest prompt, in tokens, when the caller does not say (`clipbench plan --prompt-tokens`).
#: MATH train's problems are ~150 characters at the median and 4,309 at most (~1,400 tokens).
PROMPT_TOKENS = 512
#: Mean response length as a share of max_new_tokens: time only (memory takes the longest).
RESPONSE_FILL = 0.5
#: Model FLOPs utilisation of the training passes: the share of the datasheet peak they reach.
#: Assumed; well-tuned large-model training reports 40-50% (PaLM: 46%), and an eager transformers
#: model on micro-batches of a few thousand tokens likely reaches less, so times are optimistic.
MFU = 0.40
#: Share of the HBM bandwidth a decode step reaches (it reads the weights and every active
#: sequence's KV cache once). Assumed; it also absorbs vLLM's per-step scheduling, unmodelled.
DECODE_BANDWIDTH_EFFICIENCY = 0.5
#: What vLLM keeps inside its share besides the weights and the KV cache (activation profile, CUDA
#: graphs, its own CUDA context). Assumed.
VLLM_OTHER_BYTES = 2 * GIB
#: Disk throughput of the weight sync to vLLM after each step (the policy saved, then reloaded).
SYNC_BYTES_PER_SECOND = 1e9
#: The HF sampler's rows decoded together (clipbench.engines.HFEngine's default batch_size).
HF_BATCH_ROWS = 64


# --------------------------------------------------------------------------- the model's shape

# Decoder-only models of the Llama layout (RMSNorm, GQA attention with RoPE, SwiGLU MLP) the
# planner counts: model_type -> (q/k/v bias unless config.attention_bias says, q/k norms).
_LAYOUTS = {
    "qwen2": (True, False),
    "qwen3": (False, True),
    "llama": (False, False),
    "mistral": (False, False),
}


@dataclass(frozen=True)
class ModelShape:
    """What the planner reads of a model's config.json."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    attention_bias: bool = False  # biases on q, k, v (Qwen2: always)
    qk_norm: bool = False  # RMSNorm of each query and key head (Qwen3)
    max_positions: int | None = None  # max_position_embeddings: vLLM's max_model_len when none is given

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "config.json") -> ModelShape:
        """The shape of an HF `config.json` mapping; PlanError naming `where` for a layout the
        planner does not count or a missing field."""
        kind = config.get("model_type")
        if kind not in _LAYOUTS:
            raise PlanError(
                f"{where}: model_type {kind!r} is not one the planner counts ({', '.join(_LAYOUTS)}: "
                "decoder-only, RMSNorm, grouped-query attention, SwiGLU)"
            )
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            bias, qk_norm = _LAYOUTS[kind]
            return cls(
                model_type=kind,
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                attention_bias=bool(config.get("attention_bias", bias)) if kind != "qwen2" else True,
                qk_norm=qk_norm,
                max_positions=int(config["max_position_embeddings"])
                if config.get("max_position_embeddings")
                else None,
            )
        except KeyError as err:
            raise PlanError(f"{where}: no {err.args[0]!r} field") from None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_parameters(self) -> int:
        """One decoder layer: q, k, v, o projections (and biases), the MLP, two norms (and q/k norms)."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        if self.attention_bias and self.model_type != "qwen2":
            attention += h  # o_proj's bias too, outside Qwen2
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return attention + 3 * h * i + norms

    def parameters(self) -> int:
        """Every parameter (a tied LM head counts once): embeddings, layers, final norm, LM head."""
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tied_embeddings else embeddings
        return embeddings + self.num_layers * self.layer_parameters() + self.hidden_size + head

    def kv_bytes_per_token(self, dtype: str) -> int:
        """KV cache of one token: keys and values of every layer."""
        return 2 * self.num_layers * self.kv_dim * dtype_bytes(dtype)

    def describe(self) -> str:
        tied = "tied" if self.tied_embeddings else "untied"
        return (
            f"{self.model_type}, {self.parameters():,} parameters, {self.num_layers} layers, hidden "
            f"{self.hidden_size}, MLP {self.intermediate_size}, {self.num_heads}/{self.num_kv_heads} "
            f"heads of {self.head_dim}, vocabulary {self.vocab_size:,}, {tied} embeddings"
        )


def shape_file(model: str) -> Path:
    """The shipped shape of hub id ORG/NAME: workflows/config/models/ORG--NAME.json."""
    return SHAPES_DIR / (model.strip("/").replace("/", "--") + ".json")


def load_shape(model: str, shape: str | Path | None = None) -> tuple[ModelShape, str]:
    """The shape of `model` and where it came from: `shape` (a config.json file) when given, the
    model directory's config.json when `model` is one, else the shipped shape of the hub id."""
    if shape is not None:
        path = Path(shape)
    elif Path(model).is_dir():
        path = Path(model) / "config.json"
    else:
        path = shape_file(model)
    if not path.is_file():
        raise PlanError(
            f"model {model!r}: no shape to plan with ({path} does not exist); give a model directory, "
            f"--shape CONFIG_JSON, or add the hub model's config.json fields as {shape_file(model)}"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlanError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict):
        raise PlanError(f"{path}: expected a JSON object of config.json fields")
    return ModelShape.from_config(config, str(path)), str(path)


# --------------------------------------------------------------------------- memory terms (bytes)


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPES:
        raise PlanError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return 4 if dtype == "float32" else 2


def weight_bytes(parameters: int) -> int:
    """The policy's weights: float32 in both dtypes (bfloat16 is autocast over float32 master
    weights, as clipbench/precision.py implements it): 4 bytes per parameter."""
    return 4 * parameters


def autocast_copy_bytes(parameters: int, dtype: str) -> int:
    """bfloat16 autocast's copies of the weights a micro-batch's forward casts and its backward
    keeps: 2 bytes per parameter (an upper bound: norms are not cast); nothing in float32."""
    return 2 * parameters if dtype == "bfloat16" else 0


def gradient_bytes(parameters: int) -> int:
    """float32 gradients, accumulated over a minibatch's micro-batches: 4 bytes per parameter."""
    return 4 * parameters


def adamw_state_bytes(parameters: int) -> int:
    """AdamW's exp_avg and exp_avg_sq, float32: 8 bytes per parameter (its per-tensor step counts
    are negligible)."""
    return 8 * parameters


def layer_activation_bytes(shape: ModelShape, dtype: str) -> tuple[int, int]:
    """(bytes per packed token, bytes per padded attention position) one decoder layer keeps for
    its backward, counted tensor by tensor from the packed forward (tests/test_plan.py checks the
    count against torch's saved-tensor hooks).

    float32, in 4-byte elements per token: each RMSNorm keeps its input, the normalised input and
    its output (3h, + 1 for the inverse RMS; two norms: 6h + 2); o_proj keeps its input (q); the
    MLP keeps gate, up, silu(gate) and their product (4i); Qwen3's q/k norms keep the projections
    and their normalised values (2q + 2kv + the heads' inverse RMS). The attention kernel keeps q,
    k, v, its output and log-sum-exp (2q + 2kv + heads) at the padded (rows x longest) positions.

    bfloat16 autocast: the norms compute in float32 (their 2 x (8h + 4) bytes stay); each linear
    keeps a bfloat16 cast of its input, made once per projection (q, k, v: 3 x 2h; gate, up: 2 x 2h;
    o: 2q); the MLP's four tensors are bfloat16 (8i); the attention's are bfloat16 but its
    log-sum-exp (4q + 4kv + 4 x heads); Qwen3's q/k norms 6(q + kv) + 4 x (heads + kv heads)."""
    h, q, kv, i, heads = (
        shape.hidden_size,
        shape.q_dim,
        shape.kv_dim,
        shape.intermediate_size,
        shape.num_heads,
    )
    if dtype_bytes(dtype) == 4:
        packed = 4 * (6 * h + 2 + q + 4 * i)
        padded = 4 * (2 * q + 2 * kv + heads)
        qk = 4 * (2 * q + 2 * kv + heads + shape.num_kv_heads)
    else:
        packed = 2 * (8 * h + 4) + 3 * 2 * h + 2 * 2 * h + 2 * q + 2 * 4 * i
        padded = 2 * (2 * q + 2 * kv) + 4 * heads
        qk = 6 * (q + kv) + 4 * (heads + shape.num_kv_heads)
    return packed + (qk if shape.qk_norm else 0), padded


def activation_bytes(
    shape: ModelShape,
    tokens: int,
    response_tokens: int,
    dtype: str,
    *,
    checkpointing: bool = False,
    padding: float = ATTENTION_PADDING,
    chunked: bool = True,
) -> int:
    """What one micro-batch of `tokens` packed tokens (`response_tokens` of them predicted) keeps
    for its backward: every layer's activations (`layer_activation_bytes`, attention at `padding` x
    the tokens), or with gradient checkpointing each layer's float32 input (4h per token) plus one
    layer recomputed in backward; then the final norm (2h + 1 float32 elements per token), the
    rotary tables (2 x head_dim), the index tensors (~32 bytes per token) and the response
    positions' hidden states (h float32 each; + a bfloat16 cast for autocast's unchunked LM head).
    Unchunked log-probs also keep the (response tokens x vocabulary) float32 log-softmax."""
    packed, padded = layer_activation_bytes(shape, dtype)
    layer = packed * tokens + math.ceil(padded * tokens * padding)
    h = shape.hidden_size
    layers = shape.num_layers * 4 * h * tokens + layer if checkpointing else shape.num_layers * layer
    rest = 4 * tokens * (2 * h + 1 + 2 * shape.head_dim) + 32 * tokens + 4 * response_tokens * h
    if not chunked:
        rest += 4 * response_tokens * shape.vocab_size
        rest += 2 * response_tokens * h if dtype == "bfloat16" else 0
    return layers + rest


def backward_working_bytes(
    shape: ModelShape, tokens: int, dtype: str, padding: float = ATTENTION_PADDING
) -> int:
    """The gradients of one layer's activations while its backward runs: taken as that layer's own
    saved activations (`layer_activation_bytes`), an assumption."""
    packed, padded = layer_activation_bytes(shape, dtype)
    return packed * tokens + math.ceil(padded * tokens * padding)


def head_gradient_copies(response_tokens: int, chunk: int | None) -> int:
    """How many (vocabulary x hidden) float32 gradients of the LM head's weight exist at once at the
    start of a backward, while every activation does. Autograd sums the gradients of a weight used
    several times (once per log-prob chunk) in a buffer before adding them to .grad, out of place:
    the buffer, a new chunk's gradient and their sum, 3. One chunk (or none) gives one gradient, 1.
    Measured on a CPU (a 65,536 x 1,024 head: 2.7-3.0 x its size with several chunks)."""
    chunks = math.ceil(response_tokens / chunk) if chunk else 1
    return 3 if chunks > 1 else 1


def logprob_bytes(shape: ModelShape, response_tokens: int, chunk: int | None, dtype: str) -> int:
    """The log-probs' transient (tokens x vocabulary) tensors beyond what is saved (clipbench.logprobs),
    and the LM head's weight gradients before autograd adds them to .grad (`head_gradient_copies`
    x vocabulary x hidden x 4 bytes).

    Chunked (`chunk` positions at a time): float32, the chunk's logits and its shifted copy (later
    the softmax of backward), 8 bytes per entry; bfloat16, the bfloat16 logits and their gradient
    besides the two float32 tensors, 12. Unchunked, over every response position: float32, the
    scaled logits and the log-softmax's gradient beside the saved log-softmax, 8 bytes per entry;
    bfloat16 10 (the bfloat16 logits, then their float32 copy)."""
    rows = min(chunk, response_tokens) if chunk else response_tokens
    per_entry = {(True, "float32"): 8, (True, "bfloat16"): 12, (False, "float32"): 8, (False, "bfloat16"): 10}
    dtype_bytes(dtype)
    head = head_gradient_copies(response_tokens, chunk) * 4 * shape.vocab_size * shape.hidden_size
    return rows * shape.vocab_size * per_entry[(chunk is not None, dtype)] + head


def backward_end_bytes(shape: ModelShape) -> int:
    """The end of a backward, once the activations are gone: a tied embedding's dense gradient
    meets the LM head's waiting in autograd's buffer, and their out-of-place sum, three (vocabulary
    x hidden) float32 tensors; an untied embedding's gradient alone, one (measured on a CPU)."""
    return (3 if shape.tied_embeddings else 1) * 4 * shape.vocab_size * shape.hidden_size


def hf_rollout_bytes(shape: ModelShape, rows: int, length: int, dtype: str) -> int:
    """The HF sampler's rollout (clipbench.engines): the KV cache of `rows` sequences of `length`
    tokens, twice (the cache grows by concatenation), and three (rows x vocabulary) float32 tensors
    of the sampling step."""
    return 2 * rows * length * shape.kv_bytes_per_token(dtype) + 3 * 4 * rows * shape.vocab_size


def vllm_cache_tokens(shape: ModelShape, share: int, dtype: str) -> int:
    """Tokens of KV cache vLLM has in `share` bytes: the share less its weights (in `dtype`, the
    precision clipbench's VLLMEngine loads them in) and VLLM_OTHER_BYTES."""
    cache = share - shape.parameters() * dtype_bytes(dtype) - VLLM_OTHER_BYTES
    return max(0, cache // shape.kv_bytes_per_token(dtype))


def vllm_start_problem(shape: ModelShape, share: int, dtype: str) -> str | None:
    """Why vLLM would refuse to start in `share` bytes, or None. vLLM needs room for the KV cache of
    one sequence of its max_model_len, which clipbench's VLLMEngine leaves at the model's
    max_position_embeddings (it passes no max_model_len)."""
    tokens = vllm_cache_tokens(shape, share, dtype)
    if shape.max_positions and tokens < shape.max_positions:
        return (
            f"vLLM's KV cache would hold {tokens:,} tokens ({dtype}: its share {share / GIB:.1f} GiB less "
            f"{shape.parameters() * dtype_bytes(dtype) / GIB:.1f} GiB of weights and {VLLM_OTHER_BYTES / GIB:g} GiB), "
            f"fewer than one sequence of the model's max_position_embeddings ({shape.max_positions:,}), which "
            "VLLMEngine leaves as vLLM's max_model_len: vLLM would refuse to start; raise "
            "rollout.gpu_memory_utilization"
        )
    return None


def vllm_bytes(gpu_memory: int, utilization: float) -> int:
    """vLLM's share: `gpu_memory_utilization` x the GPU's memory. vLLM takes (and checks it can
    take) that share of the total for its weights, activations and KV cache; in releases where the
    share was a limit on the whole GPU's use instead, it took less, so this is an upper bound."""
    return int(utilization * gpu_memory)


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSettings:
    """What the planner needs of one training run (`run_settings` reads a TrainConfig)."""

    prompts_per_step: int
    samples_per_prompt: int
    minibatches: int
    epochs: int
    steps: int
    prompt_tokens: int  # the longest prompt
    max_new_tokens: int
    budget: int | None  # optim.max_tokens_per_microbatch
    chunk: int | None  # optim.logprob_chunk_tokens
    dtype: str = "float32"
    checkpointing: bool = False
    engine: str | None = "hf"  # None: no rollout (speed/plan_accuracy.py plans one update)
    vllm_utilization: float = 0.3
    reference: bool = False  # kl_beta > 0
    extra_forward: bool = (
        False  # the rule needs minibatch statistics (FSPO drift=kl): a no-grad pass per update
    )
    padding: float = ATTENTION_PADDING
    mean_response_tokens: float | None = None  # time only; None: RESPONSE_FILL x max_new_tokens

    @property
    def longest(self) -> int:
        return self.prompt_tokens + self.max_new_tokens

    @property
    def minibatch_sequences(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt // self.minibatches

    def micro_batches(self, budget: int | None = None) -> list[tuple[int, float]]:
        """The largest micro-batches the trainer can form, as (packed tokens, attention padding):
        without a budget, the whole minibatch with every sequence at its longest (padded by
        `padding`); with a budget (default: the run's), a full budget of several sequences (at most
        the whole minibatch; padded) and the longest sequence alone (unpadded; a sequence longer
        than the budget forms a micro-batch by itself)."""
        budget = self.budget if budget is None else budget
        whole = self.minibatch_sequences * self.longest
        if budget is None:
            return [(whole, self.padding)]
        return [(min(budget, whole), self.padding), (self.longest, 1.0)]

    def response_share(self) -> float:
        return self.max_new_tokens / self.longest


def run_settings(
    config,
    *,
    prompt_tokens: int = PROMPT_TOKENS,
    dtype: str | None = None,
    checkpointing: bool | None = None,
    budget: int | None = None,
    padding: float = ATTENTION_PADDING,
    mean_response_tokens: float | None = None,
) -> RunSettings:
    """`RunSettings` of a `clipbench.config.TrainConfig`. `dtype` and gradient checkpointing come
    from the config's `dtype` and `optim.gradient_checkpointing`; the arguments override them, and
    `budget` the config's."""
    r, o = config.rollout, config.optim
    try:
        extra = bool(config.build_method().needs_minibatch_statistics)
    except ValueError:
        extra = False
    return RunSettings(
        prompts_per_step=r.prompts_per_step,
        samples_per_prompt=r.samples_per_prompt,
        minibatches=o.minibatches,
        epochs=o.epochs,
        steps=config.steps,
        prompt_tokens=prompt_tokens,
        max_new_tokens=r.max_new_tokens,
        budget=o.max_tokens_per_microbatch if budget is None else budget,
        chunk=o.logprob_chunk_tokens,
        dtype=dtype or getattr(config, "dtype", "float32"),
        checkpointing=getattr(o, "gradient_checkpointing", False) if checkpointing is None else checkpointing,
        engine=r.engine,
        vllm_utilization=r.gpu_memory_utilization,
        reference=config.kl_beta > 0,
        extra_forward=extra,
        padding=padding,
        mean_response_tokens=mean_response_tokens,
    )


@dataclass(frozen=True)
class Memory:
    """A run's predicted peak memory on one device, by term (bytes)."""

    runtime: int
    weights: int
    optimizer: int
    reference: int
    vllm: int
    gradients: int
    autocast_copies: int
    activations: int
    working: int
    logprobs: int
    rollout: int  # the HF sampler's KV cache (0 with vLLM)
    backward_end: int  # the embedding's gradients at the end of a backward (`backward_end_bytes`)
    micro_tokens: int  # the largest micro-batch's packed tokens
    padding: float = 1.0  # its attention padding

    @property
    def update(self) -> int:
        """The transient of an update's micro-batch: at the start of its backward (every activation,
        the log-prob chunk and the LM head's gradients), or at its end (`backward_end`)."""
        start = self.activations + self.working + self.logprobs
        return self.gradients + self.autocast_copies + max(start, self.backward_end)

    @property
    def peak(self) -> int:
        persistent = self.runtime + self.weights + self.optimizer + self.reference + self.vllm
        return persistent + max(self.update, self.rollout)


def memory(
    shape: ModelShape,
    run: RunSettings,
    *,
    runtime: int = CUDA_RUNTIME_BYTES,
    gpu_memory: int = 0,
    budget: int | None = None,
) -> Memory:
    """The run's predicted peak (`Memory`) for micro-batches of `budget` tokens (default: the
    run's own). `gpu_memory` sizes vLLM's share; `runtime` is the process's own (CUDA; on a CPU the
    resident memory of the interpreter and its libraries)."""
    params = shape.parameters()
    rollout = 0
    if run.engine == "hf":
        rows = min(run.prompts_per_step * run.samples_per_prompt, max(HF_BATCH_ROWS, run.samples_per_prompt))
        rollout = hf_rollout_bytes(shape, rows, run.longest, run.dtype)
    candidates = []
    for tokens, padding in run.micro_batches(budget):
        responses = math.ceil(tokens * run.response_share())
        candidates.append(
            Memory(
                runtime=runtime,
                weights=weight_bytes(params),
                optimizer=adamw_state_bytes(params),
                reference=weight_bytes(params) if run.reference else 0,
                vllm=vllm_bytes(gpu_memory, run.vllm_utilization) if run.engine == "vllm" else 0,
                gradients=gradient_bytes(params),
                autocast_copies=autocast_copy_bytes(params, run.dtype),
                activations=activation_bytes(
                    shape,
                    tokens,
                    responses,
                    run.dtype,
                    checkpointing=run.checkpointing,
                    padding=padding,
                    chunked=run.chunk is not None,
                ),
                working=backward_working_bytes(shape, tokens, run.dtype, padding),
                logprobs=logprob_bytes(shape, responses, run.chunk, run.dtype),
                rollout=rollout,
                backward_end=backward_end_bytes(shape),
                micro_tokens=tokens,
                padding=padding,
            )
        )
    return max(candidates, key=lambda m: m.update)


def usable_bytes(gpu: Gpu) -> int:
    """What a run may use of `gpu`: its memory less the HEADROOM share."""
    return int(gpu.memory * (1 - HEADROOM))


def largest_budget(shape: ModelShape, run: RunSettings, gpu: Gpu) -> int | None:
    """The largest micro-batch token budget whose predicted peak fits `gpu` (`usable_bytes`): at
    most the whole minibatch's tokens (then any larger budget fits too); None when not even the
    longest sequence alone fits (what every budget must hold). The peak never shrinks as the
    budget grows, so a bisection finds it."""
    limit = usable_bytes(gpu)

    def fits(budget: int) -> bool:
        return memory(shape, run, gpu_memory=gpu.memory, budget=budget).peak <= limit

    low, high = 1, run.minibatch_sequences * run.longest
    if not fits(low):
        return None
    if fits(high):
        return high
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


# --------------------------------------------------------------------------- time


@dataclass(frozen=True)
class StepTime:
    """Seconds of one RL step by phase (`step_time`), and what they were computed from."""

    rollout: float
    sync: float
    training: float
    training_flops: float
    decode_tokens_per_second: float
    concurrent_sequences: int

    @property
    def total(self) -> float:
        return self.rollout + self.sync + self.training


def forward_flops(shape: ModelShape, tokens: float, response_tokens: float, sequence: float) -> float:
    """FLOPs of one forward over `tokens` tokens in sequences of `sequence` tokens: 2 per weight of
    the decoder's matmuls per token, the LM head at the response positions only (2 x vocab x h
    each), causal attention 2 x q_dim x sequence per token per layer (QK^T and AV, half masked)."""
    matmul = shape.num_layers * (shape.layer_parameters() - 2 * shape.hidden_size)
    head = 2 * shape.vocab_size * shape.hidden_size * response_tokens
    attention = 2 * shape.num_layers * shape.q_dim * sequence * tokens
    return 2 * matmul * tokens + head + attention


def decode_rate(
    shape: ModelShape, gpu: Gpu, dtype: str, memory_share: int, sequence: float, sequences: int
) -> tuple[float, int]:
    """(tokens per second, concurrent sequences) of a memory-bound decode: each step reads the
    weights (in `dtype`) and the KV cache of every active sequence once, at
    DECODE_BANDWIDTH_EFFICIENCY x the HBM bandwidth. The active sequences are as many of
    `sequences` as the KV cache left in `memory_share` (less the weights and VLLM_OTHER_BYTES)
    holds at `sequence` tokens each."""
    weights = shape.parameters() * dtype_bytes(dtype)
    per_sequence = sequence * shape.kv_bytes_per_token(dtype)
    cache = memory_share - weights - VLLM_OTHER_BYTES
    active = min(sequences, int(cache // per_sequence)) if cache > 0 else 0
    if active < 1:
        return 0.0, 0
    step = (weights + active * per_sequence) / (gpu.bandwidth * DECODE_BANDWIDTH_EFFICIENCY)
    return active / step, active


def step_time(shape: ModelShape, run: RunSettings, gpu: Gpu) -> StepTime:
    """One RL step's estimated seconds: the rollout (a memory-bound decode, `decode_rate`, at
    least max_new_tokens decode steps), the weight sync (vLLM), and the training passes at MFU x
    the peak FLOPs of the run's dtype: the old log-probs (a forward of every minibatch but the
    first), each update's forward and backward (3 forwards; 4 with gradient checkpointing; the
    chunked LM head once more), the rule's extra no-grad pass, the reference's forward."""
    sequences = run.prompts_per_step * run.samples_per_prompt
    response = run.mean_response_tokens or RESPONSE_FILL * run.max_new_tokens
    sequence = run.prompt_tokens + response
    if run.engine == "vllm":
        share = vllm_bytes(gpu.memory, run.vllm_utilization)
        rate, active = decode_rate(shape, gpu, run.dtype, share, sequence, sequences)
        sync = 2 * weight_bytes(shape.parameters()) / SYNC_BYTES_PER_SECOND
    else:
        rows = min(sequences, max(HF_BATCH_ROWS, run.samples_per_prompt))
        rate, active = decode_rate(shape, gpu, run.dtype, 10**18, sequence, rows)
        sync = 0.0
    generated = sequences * response
    rollout = max(generated / rate, run.max_new_tokens * active / rate) if rate else math.inf
    tokens = sequences * sequence
    responses = sequences * response
    one = forward_flops(shape, tokens, responses, sequence)
    head = 2 * shape.vocab_size * shape.hidden_size * responses
    passes = one * (run.minibatches - 1) / run.minibatches  # old log-probs
    update = 3 * one + (one if run.checkpointing else 0) + (head if run.chunk else 0)
    passes += run.epochs * update
    if run.extra_forward:
        updates = run.minibatches * run.epochs
        passes += one * run.epochs * (updates - 1) / updates
    if run.reference:
        passes += one
    training = passes / (gpu.tflops[run.dtype] * 1e12 * MFU)
    return StepTime(rollout, sync, training, passes, rate, active)


# --------------------------------------------------------------------------- a report


@dataclass
class Plan:
    """A run's plan: its shape and settings, the predicted memory, and (on a GPU kind) the fit, the
    largest budget that fits and the time."""

    title: str
    model: str
    shape: ModelShape
    shape_source: str
    run: RunSettings
    gpu: Gpu | None
    memory: Memory
    budget: int | None = None  # the largest that fits
    time: StepTime | None = None
    runs: list[tuple[str, int, StepTime]] = field(default_factory=list)  # (method, seeds, step time)
    evaluation_hours: float | None = None
    evaluation_note: str = ""

    @property
    def fits(self) -> bool | None:
        """The peak fits the GPU and vLLM (if any) can start in its share."""
        if self.gpu is None:
            return None
        return self.memory.peak <= usable_bytes(self.gpu) and self.vllm_problem is None

    @property
    def vllm_problem(self) -> str | None:
        if self.gpu is None or self.run.engine != "vllm":
            return None
        return vllm_start_problem(self.shape, self.memory.vllm, self.run.dtype)

    def train_hours(self) -> float:
        return sum(seeds * self.run.steps * t.total for _, seeds, t in self.runs) / 3600


def plan_run(
    title: str,
    model: str,
    shape: ModelShape,
    source: str,
    run: RunSettings,
    gpu: Gpu | None,
    extra_forward_by_method: dict[str, tuple[bool, int]] | None = None,
) -> Plan:
    """The `Plan` of `run` on `gpu` (None: memory only). `extra_forward_by_method`: for a study,
    each method's (needs the extra pass, seeds), to total the study's training time."""
    gpu_memory = gpu.memory if gpu else 0
    plan = Plan(title, model, shape, source, run, gpu, memory(shape, run, gpu_memory=gpu_memory))
    if gpu is None:
        return plan
    plan.budget = largest_budget(shape, run, gpu)
    plan.time = step_time(shape, run, gpu)
    for method, (extra, seeds) in (extra_forward_by_method or {"": (run.extra_forward, 1)}).items():
        plan.runs.append((method, seeds, step_time(shape, replace(run, extra_forward=extra), gpu)))
    return plan


def _gib(value: float) -> str:
    return f"{value / GIB:7.2f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never (nothing fits the KV cache)"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _micro(m: Memory, run: RunSettings) -> str:
    if run.budget is not None and m.padding == 1 and m.micro_tokens == run.longest:
        return f"{m.micro_tokens:,} tokens: the longest sequence alone"
    return f"{m.micro_tokens:,} tokens, attention padded {m.padding:g}x"


def _shown(path: str) -> str:
    """`path` relative to the checkout when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(SHAPES_DIR.parents[2]))
    except ValueError:
        return path


def format_plan(plan: Plan) -> str:
    """The plan as `clipbench plan` prints it."""
    m, run, gpu, shape = plan.memory, plan.run, plan.gpu, plan.shape
    budget = f"{run.budget:,} tokens" if run.budget else "none (each minibatch in one forward)"
    chunk = f"chunks of {run.chunk}" if run.chunk else "all at once (no chunks)"
    lines = [
        f"clipbench plan: {plan.title}"
        + (f", on one {gpu.name} ({gpu.label}, {gpu.memory / GIB:.1f} GiB)" if gpu else ""),
        f"model: {plan.model}; shape from {_shown(plan.shape_source)}",
        f"  {shape.describe()}",
        f"run: {run.dtype}, gradient checkpointing {'on' if run.checkpointing else 'off'}; minibatch of "
        f"{run.minibatch_sequences} sequences of at most {run.prompt_tokens} + {run.max_new_tokens} tokens; "
        f"micro-batch budget {budget}; log-probs {chunk}; rollout {run.engine}"
        + (f" at gpu_memory_utilization {run.vllm_utilization}" if run.engine == "vllm" else ""),
        "",
        f"{'predicted peak memory per device':<80}GiB",
    ]
    rows: list[tuple[str, int]] = [
        ("CUDA context and workspace (assumed)", m.runtime),
        ("weights (float32 master weights, 4 B/param)", m.weights),
        ("AdamW state (exp_avg + exp_avg_sq, float32, 8 B/param)", m.optimizer),
    ]
    if m.reference:
        rows.append(("KL reference weights (float32, 4 B/param)", m.reference))
    if run.engine == "vllm":
        share = f"{run.vllm_utilization} x {gpu.memory / GIB:.1f} GiB" if gpu else "no GPU given"
        rows.append((f"vLLM share ({share})", m.vllm))
    copies = head_gradient_copies(math.ceil(m.micro_tokens * run.response_share()), run.chunk)
    start = [
        (f"activations of one micro-batch ({_micro(m, run)})", m.activations),
        ("backward working set (one layer's activations)", m.working),
        (
            f"log-prob {'chunk' if run.chunk else 'logits'} and LM-head weight gradients (x{copies})",
            m.logprobs,
        ),
    ]
    end = [("end of backward: the embedding's gradients (larger than the start)", m.backward_end)]
    update = [("gradients (float32, 4 B/param)", m.gradients)]
    if m.autocast_copies:
        update.append(("bfloat16 autocast weight copies (2 B/param)", m.autocast_copies))
    update += start if m.activations + m.working + m.logprobs >= m.backward_end else end
    lines += [f"  {name:<76}{_gib(value)}" for name, value in rows]
    phase = "update (the larger phase)" if m.update >= m.rollout else "update"
    lines.append(f"  {phase}:")
    lines += [f"    {name:<74}{_gib(value)}" for name, value in update]
    if m.rollout:
        which = "rollout (the larger phase)" if m.rollout > m.update else "rollout (smaller: not in the peak)"
        lines.append(f"  {which + ': HF sampler KV cache and logits':<76}{_gib(m.rollout)}")
    lines.append(f"  {'total (peak)':<76}{_gib(m.peak)}")
    if gpu is None:
        lines += [
            "",
            "no GPU kind given (--gpu, or the study's resources.train.gpu_model): no fit check, no time",
        ]
        return "\n".join(lines)
    usable = usable_bytes(gpu)
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(
        f"  {verdict} one {gpu.name}: {m.peak / GIB:.1f} of {usable / GIB:.1f} GiB usable "
        f"({gpu.memory / GIB:.1f} GiB less {HEADROOM:.0%} headroom for allocator fragmentation)"
    )
    if plan.vllm_problem:
        lines.append(f"  and {plan.vllm_problem}")
    elif run.engine == "vllm":
        tokens = vllm_cache_tokens(shape, m.vllm, run.dtype)
        lines.append(
            f"  vLLM's KV cache: {tokens:,} tokens ({run.dtype}), at least one sequence of max_model_len "
            f"{shape.max_positions or 0:,} (the model's max_position_embeddings): vLLM can start"
        )
    if plan.budget is None:
        lines.append(
            f"largest micro-batch budget that fits: none; the longest sequence alone ({run.longest:,} "
            "tokens) does not fit: lower rollout.gpu_memory_utilization, chunk the log-probs, use "
            "bfloat16 or gradient checkpointing, or shorten max_new_tokens"
        )
    elif plan.budget >= run.minibatch_sequences * run.longest:
        lines.append(
            f"largest micro-batch budget that fits: any (a whole minibatch, {plan.budget:,} tokens, fits)"
        )
    else:
        lines.append(
            f"largest micro-batch budget that fits: {plan.budget:,} tokens (optim.max_tokens_per_microbatch)"
        )
    t = plan.time
    response = run.mean_response_tokens or RESPONSE_FILL * run.max_new_tokens
    lines += [
        "",
        f"estimated time per step (not measured; mean response {response:,.0f} tokens assumed)",
        f"  rollout: {_duration(t.rollout)} ({t.decode_tokens_per_second:,.0f} tokens/s decoding, "
        f"{t.concurrent_sequences} sequences at once)",
    ]
    if t.sync:
        lines.append(f"  weight sync to vLLM: {_duration(t.sync)}")
    lines += [
        f"  training passes: {_duration(t.training)} ({t.training_flops / 1e15:,.1f} PFLOP at {MFU:.0%} of "
        f"{gpu.tflops[run.dtype]:g} TFLOPS {run.dtype})",
        f"  step: {_duration(t.total)}; a run of {run.steps} steps: {_duration(run.steps * t.total)}",
    ]
    if len(plan.runs) > 1 or plan.runs and plan.runs[0][0]:
        runs = sum(seeds for _, seeds, _ in plan.runs)
        lines.append(f"study: {runs} training runs, {plan.train_hours():,.0f} GPU-hours of training")
        if plan.evaluation_hours is not None:
            total = plan.train_hours() + plan.evaluation_hours
            lines.append(f"  evaluation: {plan.evaluation_hours:,.0f} GPU-hours ({plan.evaluation_note})")
            lines.append(f"  whole study: {total:,.0f} GPU-hours on {gpu.name}")
    lines += [
        "",
        "assumptions (clipbench/plan.py): " + _assumptions(gpu, run),
    ]
    return "\n".join(lines)


def _assumptions(gpu: Gpu, run: RunSettings) -> str:
    return (
        f"datasheet peaks of the {gpu.name} ({gpu.source}; HBM {gpu.bandwidth / 1e12:g} TB/s); "
        f"training at MFU {MFU:.0%}; decoding at {DECODE_BANDWIDTH_EFFICIENCY:.0%} of HBM bandwidth "
        f"(weights + KV cache read once per step); vLLM keeps {VLLM_OTHER_BYTES / GIB:g} GiB besides "
        f"weights and KV cache; weight sync at {SYNC_BYTES_PER_SECOND / 1e9:g} GB/s each way; "
        f"CUDA runtime {CUDA_RUNTIME_BYTES / GIB:g} GiB; attention padding {run.padding:g}x; longest "
        f"prompt {run.prompt_tokens} tokens; float32 matmuls without TF32 (PyTorch's default)"
    )


# --------------------------------------------------------------------------- studies and configs


def _tiny_shape(sft: dict[str, Any]) -> ModelShape:
    """The shape of the study's SFT base model (clipbench.sft: build_tiny_model's layout)."""
    from clipbench.models import build_tokenizer
    from clipbench.settings import from_dict
    from clipbench.sft import SFTConfig

    config = from_dict(SFTConfig, sft, "base.sft")
    return ModelShape(
        model_type="qwen2",
        vocab_size=len(build_tokenizer()),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=config.hidden_size // 4,
        tied_embeddings=True,
        attention_bias=True,
    )


def _evaluation(config: dict[str, Any], shape: ModelShape, gpu: Gpu, models: int) -> tuple[float, str]:
    """GPU-hours of the study's evaluations: every model on every benchmark entry, k samples per
    problem, RESPONSE_FILL x max_new_tokens each, decoded at `decode_rate` with vLLM's share
    (clipbench.evaluate) of float32 weights (trained checkpoints are saved float32)."""
    from clipbench import benchmarks
    from clipbench.evaluate import VLLM_GPU_MEMORY_UTILIZATION

    evaluate = config.get("evaluate") or {}
    seconds = 0.0
    sizes = []
    for key, entry in (evaluate.get("benchmarks") or {}).items():
        spec = benchmarks.get_spec(entry["benchmark"])
        split = entry.get("split") or spec.default_split
        rows = entry.get("limit") or (spec.local[split].rows if split in spec.local else None) or 0
        k = entry.get("k") or spec.k
        new = entry.get("max_new_tokens") or spec.max_new_tokens
        response = RESPONSE_FILL * new
        share = int(VLLM_GPU_MEMORY_UTILIZATION * gpu.memory)
        rate, _ = decode_rate(shape, gpu, "float32", share, PROMPT_TOKENS + response, rows * k)
        seconds += rows * k * response / rate if rate else math.inf
        sizes.append(f"{key} {rows}x{k}")
    note = f"{models} models x ({', '.join(sizes)}) samples, decoding as above, float32 weights"
    return models * seconds / 3600, note


def is_study(data: dict[str, Any]) -> bool:
    return "train" in data and "base" in data


def plan_config(
    data: dict[str, Any],
    *,
    name: str,
    gpu: str | None = None,
    shape: str | None = None,
    prompt_tokens: int = PROMPT_TOKENS,
    dtype: str | None = None,
    checkpointing: bool | None = None,
    budget: int | None = None,
    padding: float = ATTENTION_PADDING,
    mean_response_tokens: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> Plan:
    """The plan of a study config (its train job: one run of the grid, the memory is the same for
    every method; the time summed over the grid) or of a TrainConfig mapping, with dotted
    TrainConfig `overrides` (e.g. {"rollout.gpu_memory_utilization": 0.35}; a study's train
    section). The GPU kind: `gpu`, else the study's resources.train.gpu_model, else none."""
    from clipbench import methods
    from clipbench.config import TrainConfig, apply_overrides
    from clipbench.settings import from_dict

    study = is_study(data)
    if overrides:
        data = dict(data)
        if study:
            data["train"] = apply_overrides(dict(data["train"]), overrides)
        else:
            data = apply_overrides(data, overrides)
    if study and gpu is None:
        gpu = ((data.get("resources") or {}).get("train") or {}).get("gpu_model")
    spec = get_gpu(gpu) if gpu else None
    if study:
        from clipbench.study import run_config

        names = list(data.get("methods") or methods.available_methods())
        seeds = list(data.get("seeds") or [0])
        config = from_dict(TrainConfig, run_config(data, names[0], seeds[0]))
        base = data["base"]
        if base.get("kind") == "sft" and shape is None:
            model_shape, source = (
                _tiny_shape(base.get("sft") or {}),
                "base.sft (the SFT model's build settings)",
            )
            model = "the study's SFT base model"
        elif base.get("kind") == "smollm2" and shape is None:
            raise PlanError("base.kind smollm2: no shipped shape; give --shape CONFIG_JSON")
        else:
            model = config.model
            model_shape, source = load_shape(config.model, shape)
        title = f"{name} (study {data.get('name', '?')!r}: its train job, {len(names)} methods x {len(seeds)} seeds)"
    else:
        config = from_dict(TrainConfig, data)
        names, seeds = [config.method], [config.seed]
        model = config.model
        model_shape, source = load_shape(config.model, shape)
        title = name
    run = run_settings(
        config,
        prompt_tokens=prompt_tokens,
        dtype=dtype,
        checkpointing=checkpointing,
        budget=budget,
        padding=padding,
        mean_response_tokens=mean_response_tokens,
    )
    per_method: dict[str, tuple[bool, int]] | None = None
    if study:
        per_method = {}
        for method in names:
            params = (data.get("method_params") or {}).get(method, {})
            per_method[method] = (
                bool(methods.get_method(method, **params).needs_minibatch_statistics),
                len(seeds),
            )
    plan = plan_run(title, model, model_shape, source, run, spec, per_method)
    if study and spec is not None:
        plan.evaluation_hours, plan.evaluation_note = _evaluation(
            data, model_shape, spec, 1 + len(names) * len(seeds)
        )
    return plan


def check_fits(data: dict[str, Any], key: str = "resources.train.gpu_model") -> Plan | None:
    """For a study declaring resources.train.gpu_model: its plan, or PlanError (starting with `key`)
    naming the numbers when the train job's predicted peak does not fit one GPU of that kind.
    Nothing (None) without the key: the default CPU study is not checked."""
    gpu = ((data.get("resources") or {}).get("train") or {}).get("gpu_model")
    if gpu is None:
        return None
    if gpu not in GPUS:
        raise PlanError(f"{key}: unknown GPU kind {gpu!r}; known: {', '.join(GPUS)}")
    try:
        plan = plan_config(data, name="the study")
    except PlanError as err:
        raise PlanError(f"{key}: cannot plan the train job: {err}") from None
    m, g = plan.memory, plan.gpu
    if m.peak <= usable_bytes(g) and plan.vllm_problem:
        raise PlanError(f"{key}: the train job cannot run on one {g.name}: {plan.vllm_problem}")
    if not plan.fits:
        advice = (
            f"the largest micro-batch budget that fits is {plan.budget:,} tokens (train.optim.max_tokens_per_microbatch)"
            if plan.budget
            else "not even the longest sequence alone fits: lower train.rollout.gpu_memory_utilization, chunk the "
            "log-probs (train.optim.logprob_chunk_tokens), use bfloat16 or gradient checkpointing "
            "or shorten max_new_tokens"
        )
        raise PlanError(
            f"{key}: the train job does not fit one {g.name}: predicted peak {m.peak / GIB:.1f} GiB > "
            f"{usable_bytes(g) / GIB:.1f} GiB usable (weights {m.weights / GIB:.1f}, AdamW state "
            f"{m.optimizer / GIB:.1f}, gradients {m.gradients / GIB:.1f}, activations {m.activations / GIB:.1f} for "
            f"{m.micro_tokens:,} tokens, log-probs and LM-head gradients {m.logprobs / GIB:.1f}, vLLM {m.vllm / GIB:.1f} GiB); {advice}; "
            "`clipbench plan CONFIG` prints the whole plan"
        )
    return plan


def read_config(path: Path) -> dict[str, Any]:
    """A study or TrainConfig YAML file, as clipbench reads YAML (`clipbench.config.load_yaml`)."""
    from clipbench.config import load_yaml

    if not path.is_file():
        raise PlanError(f"{path}: no such file; give a study config or a TrainConfig YAML")
    data = load_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise PlanError(f"{path}: expected a mapping (a study config or TrainConfig fields)")
    return data
