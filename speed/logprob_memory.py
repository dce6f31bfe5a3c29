"""Peak memory of `token_logprobs` (forward + backward) at Qwen2's vocabulary of 151,936: the
chunked path (`chunk_tokens`) against the unchunked one (`chunk_tokens=None`), in the same run.

Each measurement runs in a fresh subprocess, one at a time: a randomly initialised float32 Qwen2
(tied embeddings, 2 layers, hidden size 128, vocabulary 151,936), a packed batch of S sequences of
a 32-token prompt and an L-token completion (K = S * L response tokens), then
`token_logprobs(..., with_entropy=True)` (the trainer's heaviest call) and the backward of a
weighted sum of the log-probs. Printed: the process's resident memory before the call and its
peak during forward + backward (VmHWM, reset just before the call; ru_maxrss, the whole process's
peak, besides), and seconds. The unchunked path at 16k tokens needs about 10 GB for its float32
(K, V) logits alone and as much again for their log-softmax, more than this machine shares out, so
it is measured at smaller K and its per-token slope printed and extrapolated; the chunked path is
measured at both.

    python speed/logprob_memory.py [--tokens 16384 --chunks 1024 256 --reference-tokens 1024 2048]
"""

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's clipbench, not an installed one

VOCAB = 151_936
PROMPT = 32
MB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(sequences: int, length: int, chunk: int | None, threads: int) -> dict:
    """One forward + backward in this process; the numbers as a dict."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipbench.logprobs import collate, token_logprobs

    assert Path(sys.modules["clipbench"].__file__).parent.parent == ROOT

    torch.set_num_threads(threads)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=PROMPT + length,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB, (sequences, PROMPT + length), generator=gen).tolist()
    batch = collate([r[:PROMPT] for r in ids], [r[PROMPT:] for r in ids], pad_id=0)
    tokens = int(batch.response_mask.sum())
    weights = torch.randn(tokens, generator=gen)
    try:  # reset the peak resident set (VmHWM) to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    logp, _ = token_logprobs(model, batch, 1.0, with_entropy=True, chunk_tokens=chunk)
    (logp[batch.response_mask] * weights).sum().backward()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "tokens": tokens,
        "chunk": chunk,
        "before": before,
        "peak": peak if reset else maxrss,
        "maxrss": maxrss,
        "seconds": seconds,
        "peak_reset": reset,
    }


@functools.cache
def run_one(sequences: int, length: int, chunk: int | None, threads: int) -> dict:
    """`measure` in a fresh interpreter (the repository root first on its path), once per setting."""
    command = [
        sys.executable,
        __file__,
        "--measure",
        str(sequences),
        str(length),
        str(chunk),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    extra = (result["peak"] - result["before"]) / MB
    print(
        f"K={result['tokens']:6d} chunk_tokens={str(chunk):>5s}: RSS before {result['before'] / MB:7.0f} MB, "
        f"peak {result['peak'] / MB:7.0f} MB (+{extra:.0f} MB for token_logprobs), "
        f"ru_maxrss {result['maxrss'] / MB:.0f} MB, {result['seconds']:.1f} s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="response tokens of the chunked runs")
    parser.add_argument("--length", type=int, default=1024, help="completion tokens per sequence")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--reference-tokens", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--measure", nargs=3, metavar=("SEQUENCES", "LENGTH", "CHUNK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.measure:
        sequences, length, chunk = args.measure
        chunk = None if chunk == "None" else int(chunk)
        print(json.dumps(measure(int(sequences), int(length), chunk, args.threads)))
        return

    def extra(r):
        return r["peak"] - r["before"]

    print(f"vocabulary {VOCAB}, float32, {args.threads} threads; one fresh process per line")
    reference = [
        run_one(max(1, k // args.length), min(k, args.length), None, args.threads)
        for k in args.reference_tokens
    ]
    same_k = {
        c: run_one(
            max(1, reference[-1]["tokens"] // args.length),
            min(reference[-1]["tokens"], args.length),
            c,
            args.threads,
        )
        for c in args.chunks
    }
    full = {c: run_one(args.tokens // args.length, args.length, c, args.threads) for c in args.chunks}
    low, high = reference[0], reference[-1]
    slope = (
        (extra(high) - extra(low)) / (high["tokens"] - low["tokens"])
        if high is not low
        else extra(low) / low["tokens"]
    )
    predicted = extra(low) + slope * (args.tokens - low["tokens"])
    print(
        f"unchunked: {slope / 1024:.0f} kB per response token -> about {predicted / 2**30:.1f} GiB extra at K={args.tokens} (extrapolated)"
    )
    for c in args.chunks:
        print(
            f"chunk_tokens={c}: unchunked / chunked extra memory at K={high['tokens']}: "
            f"{extra(high) / extra(same_k[c]):.1f}x measured; at K={args.tokens}: "
            f"{predicted / extra(full[c]):.1f}x (unchunked extrapolated); chunked peak at K={args.tokens} "
            f"{full[c]['peak'] / 2**30:.2f} GiB in all, +{extra(full[c]) / 2**30:.2f} GiB for token_logprobs"
        )


if __name__ == "__main__":
    main()
