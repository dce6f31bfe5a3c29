"""Peak memory of one training update as the minibatch grows 8x: with micro-batches of a fixed
token budget (`optim.max_tokens_per_microbatch`) against one forward per minibatch (the default),
in the same run.

The update runs through the trainer's own code (`Trainer._old_logprobs` then `Trainer._update`,
an off-policy update: the old log-prob pass without gradients, then forward + backward + AdamW)
on a randomly initialised float32 Qwen2 of about 53M parameters with a 32,768-token vocabulary
(12 layers, hidden size 512, tied embeddings), saved as a model directory and loaded by a real
`Trainer`. The minibatch holds S sequences of a 32-token prompt and a completion of random
tokens. Each measurement runs in a fresh subprocess, one at a time: a first update on two rows
allocates AdamW's state, then the peak resident set (VmHWM) is reset and the measured update
runs. Printed per line: the resident memory before the update, its peak during it, and seconds;
then, per setting, the update's extra memory at 8x the sequences over that at 1x (the issue's
target: under 1.15 with a budget).

The default small minibatch (16 sequences of 128 tokens at a 1,024-token budget) already holds two
micro-batches: going from one micro-batch to two adds gradient accumulation's buffers once (the
largest gradients materialised beside the ones they are added to: ~210 MB here), which does not grow
with more. The subprocesses run with glibc told to serve allocations over 64 KiB by mmap
(MALLOC_MMAP_THRESHOLD_=65536), so freed memory leaves the resident set: with glibc's defaults the
peak RSS also counts freed heap blocks it keeps (fragmentation), which grew with the number of
micro-batches here (`--glibc-defaults` measures that way).

    python speed/microbatch_memory.py [--sequences 16 --growth 8 --length 96 --budget 1024]
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's clipbench, not an installed one

from logprob_memory import MB, _status_kib  # noqa: E402 (the same VmRSS/VmHWM reader)

VOCAB = 32_768
PROMPT = 32


#: The model of this script: ~53M parameters (speed/plan_accuracy.py builds others).
SHAPE = {"vocab": VOCAB, "hidden": 512, "intermediate": 1536, "layers": 12, "heads": 8, "kv_heads": 2}


def build_model(directory: Path, shape: dict | None = None) -> Path:
    """A random float32 Qwen2 of `shape` (default SHAPE: ~53M parameters) with the project's
    tokenizer, saved as a model directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipbench.models import build_tokenizer, save_model

    shape = shape or SHAPE
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return save_model(Qwen2ForCausalLM(config).float(), tokenizer, directory)


def measure(
    model_dir: str, sequences: int, length: int, budget: int | None, threads: int, chunk: int | None = None
) -> dict:
    """One off-policy update of `sequences` rows in this process (log-probs in chunks of `chunk`
    response tokens, or all at once); the numbers as a dict, `start` the resident memory before
    the model loads (the interpreter and its libraries)."""
    import torch

    from clipbench.config import load_config
    from clipbench.engines import Samples
    from clipbench.trainer import Trainer, _EntropyTally

    assert Path(sys.modules["clipbench"].__file__).parent.parent == ROOT
    torch.set_num_threads(threads)
    resident = _status_kib("VmRSS") * 1024  # the interpreter and its libraries
    config = load_config(
        {
            "model": model_dir,
            "method": "grpo",
            "steps": 1,
            "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": length},
            "optim": {"minibatches": 2, "max_tokens_per_microbatch": budget, "logprob_chunk_tokens": chunk},
        }
    )
    trainer = Trainer(config, Path(tempfile.mkdtemp()) / "run", progress=False)
    trainer._setup()
    rows = 2 + sequences
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (rows, PROMPT + length), generator=gen).tolist()
    samples = Samples([r[:PROMPT] for r in ids], [r[PROMPT:] for r in ids], [""] * rows, [False] * rows)
    advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
    warm, main = [0, 1], list(range(2, rows))
    entropy = _EntropyTally(rows)
    first = trainer._old_logprobs(samples, [warm], entropy)[0]
    trainer._update(0, 0, first, advantages, entropy)  # allocates AdamW's state
    try:  # reset the peak resident set (VmHWM) to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:
        raise SystemExit(f"cannot reset the peak resident set here: {err}") from err
    before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    minibatch = trainer._old_logprobs(samples, [warm, main], entropy)[1]
    trainer._update(0, 1, minibatch, advantages, entropy)
    seconds = time.perf_counter() - start
    return {
        "sequences": sequences,
        "tokens": minibatch.tokens,
        "micro_batches": len(minibatch.micro),
        "budget": budget,
        "start": resident,
        "before": before,
        "peak": _status_kib("VmHWM") * 1024,
        "seconds": seconds,
    }


#: glibc: allocations over 64 KiB by mmap, returned to the system when freed (see the docstring).
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@functools.cache
def run_one(
    model_dir: str,
    sequences: int,
    length: int,
    budget: int | None,
    threads: int,
    glibc_defaults: bool = False,
) -> dict:
    """`measure` in a fresh interpreter, once per setting."""
    command = [sys.executable, __file__, "--measure", model_dir, str(sequences), str(length), str(budget)]
    command += ["--threads", str(threads)]
    env = dict(os.environ) if glibc_defaults else {**os.environ, **MMAP_ENV}
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(
        f"S={r['sequences']:4d} ({r['tokens']:6d} tokens) budget={str(budget):>5s}: {r['micro_batches']:3d} "
        f"micro-batches; RSS before {r['before'] / MB:6.0f} MB, peak {r['peak'] / MB:6.0f} MB "
        f"(+{(r['peak'] - r['before']) / MB:.0f} MB for the update), {r['seconds']:.1f} s",
        flush=True,
    )
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=16, help="sequences of the small minibatch")
    parser.add_argument(
        "--growth", type=int, default=8, help="the large minibatch holds this many times more"
    )
    parser.add_argument("--length", type=int, default=96, help="completion tokens per sequence")
    parser.add_argument("--budget", type=int, default=1024, help="max_tokens_per_microbatch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--glibc-defaults", action="store_true", help="no MALLOC_MMAP_THRESHOLD_ (docstring)")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        model_dir, sequences, length, budget = args.measure
        budget = None if budget == "None" else int(budget)
        print(json.dumps(measure(model_dir, int(sequences), int(length), budget, args.threads)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model(Path(tmp) / "model"))
        print(
            f"random Qwen2, vocabulary {VOCAB}, float32, {args.threads} threads; {PROMPT}-token prompts, "
            f"{args.length}-token completions; one fresh process per line"
        )
        small, large = args.sequences, args.sequences * args.growth
        for budget in (args.budget, None):
            a = run_one(model_dir, small, args.length, budget, args.threads, args.glibc_defaults)
            b = run_one(model_dir, large, args.length, budget, args.threads, args.glibc_defaults)
            ratio = (b["peak"] - b["before"]) / (a["peak"] - a["before"])
            total = b["peak"] / a["peak"]
            print(
                f"budget={budget}: {args.growth}x the sequences -> {ratio:.2f}x the update's extra memory "
                f"({total:.2f}x the process's peak)"
            )


if __name__ == "__main__":
    main()
