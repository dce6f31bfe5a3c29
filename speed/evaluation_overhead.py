"""Overhead of evaluating through lm-eval: ``clipbench.evaluate.evaluate`` against a direct loop.

The reference is the shortest correct evaluation: load the model, batched ``transformers``
``generate`` (k copies of each prompt, sampled at temperature 1.0 with top-k off, as the lm-eval
task does), decode, and one ``benchmarks.verify`` call over all samples. Both paths run on the same
model, problems, k, max_new_tokens and batch size, in the same process, alternately; the best
of ``--repeats`` is reported (other jobs on the machine make single timings noisy). The "generate"
column is the time inside ``model.generate`` for the direct loop and inside lm-eval's
``HFLM.generate_until`` for ``evaluate``. Target: ``evaluate`` within 1.3x of the direct loop.

    python speed/evaluation_overhead.py [--benchmark synthetic --problems 100 --k 4 --max-new-tokens 160]
    python speed/evaluation_overhead.py --model results/models/base   # a trained model: EOS, real verdicts

By default the model is a freshly built (untrained) tiny Qwen2, which rarely emits EOS or a
``\\boxed{}``: every row runs to ``max_new_tokens`` and the verifier has little to do. ``--model``
takes a model directory instead (e.g. the SFT warm-up's), where both matter.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import torch

from clipbench import benchmarks
from clipbench.evaluate import evaluate
from clipbench.models import build_tiny_model, build_tokenizer, count_parameters, load_model, save_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def direct_loop(model_dir, problems, spec, *, k, max_new_tokens, batch_size, seed) -> dict:
    """Load, generate in batches of ``batch_size``, verify everything at once; returns timings and avg@k."""
    start = time.perf_counter()
    model, tokenizer = load_model(model_dir)
    prompts = [benchmarks.build_prompt(p, tokenizer, "base", template=spec.prompt_template) for p in problems]
    requests = [i for i in range(len(problems)) for _ in range(k)]
    torch.manual_seed(seed)
    generations, generate_s = [], 0.0
    for first in range(0, len(requests), batch_size):
        batch = requests[first : first + batch_size]
        enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
            )
        generate_s += time.perf_counter() - t
        generations += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    verdicts = benchmarks.verify(
        generations, [problems[i].answer for i in requests], fallbacks=spec.fallbacks
    )
    avg = sum(v.correct for v in verdicts) / len(verdicts)
    return {"total": time.perf_counter() - start, "generate": generate_s, "avg@k": avg}


def timed_generate_until(timer: dict):
    """Wrap lm-eval's HFLM.generate_until so that its time is recorded in ``timer["generate"]``."""
    from lm_eval.models.huggingface import HFLM

    original = HFLM.generate_until

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timer["generate"] += time.perf_counter() - t

    HFLM.generate_until = wrapper


def lm_eval_path(model_dir, benchmark, out, timer, **kwargs) -> dict:
    timer["generate"] = 0.0
    start = time.perf_counter()
    summary = evaluate(model_dir, benchmark, out=out, **kwargs)
    return {"total": time.perf_counter() - start, "generate": timer["generate"], "avg@k": summary["avg@k"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="synthetic")
    parser.add_argument("--data-dir", type=Path, help="local copies (not needed for synthetic)")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, help="a model directory (default: a new untrained tiny model)")
    args = parser.parse_args()

    spec = benchmarks.get_spec(args.benchmark)
    problems = benchmarks.load(args.benchmark, args.data_dir, n=args.problems)
    timer = {"generate": 0.0}
    timed_generate_until(timer)
    common = {"k": args.k, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            tokenizer = build_tokenizer()
            model_dir = save_model(build_tiny_model(tokenizer, seed=0), tokenizer, Path(tmp) / "tiny")
        else:
            model_dir = args.model
        n_params = count_parameters(load_model(model_dir)[0])
        out = Path(tmp) / "eval.json"

        def run_direct():
            return direct_loop(model_dir, problems, spec, seed=0, **common)

        def run_lm_eval():
            return lm_eval_path(
                model_dir, args.benchmark, out, timer, limit=args.problems, data_dir=args.data_dir, **common
            )

        run_direct(), run_lm_eval()  # warm-up: imports, verifier workers, file caches
        results = {"direct": [], "lm_eval": []}
        for repeat in range(args.repeats):
            order = [("direct", run_direct), ("lm_eval", run_lm_eval)]
            for name, fn in order if repeat % 2 == 0 else order[::-1]:
                results[name].append(fn())

    best = {name: min(runs, key=lambda r: r["total"]) for name, runs in results.items()}
    print(
        f"{args.benchmark}: {len(problems)} problems x k={args.k}, {args.max_new_tokens} new tokens, "
        f"batch {args.batch_size}; model {args.model or 'new tiny Qwen2'} ({n_params:,} params); "
        f"torch threads {torch.get_num_threads()}; best of {args.repeats}"
    )
    print(f"{'path':<40} {'total s':>8} {'generate s':>11} {'avg@k':>7} {'ratio':>6}")
    labels = {
        "direct": "direct: transformers generate + verify",
        "lm_eval": "clipbench.evaluate (lm-eval, hf)",
    }
    for name, r in best.items():
        ratio = r["total"] / best["direct"]["total"]
        print(
            f"{labels[name]:<40} {r['total']:>8.2f} {r['generate']:>11.2f} {r['avg@k']:>7.3f} {ratio:>5.2f}x"
        )
    print(f"all totals (s): direct {[round(r['total'], 2) for r in results['direct']]}, ", end="")
    print(f"lm_eval {[round(r['total'], 2) for r in results['lm_eval']]}")


if __name__ == "__main__":
    main()
