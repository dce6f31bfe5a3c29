"""The GPU check: two RL steps of the paper's settings, scaled to a few minutes, on one GPU with no
hub and no vLLM, and what they cost against `clipbench plan`'s prediction.

A randomly initialised model of Qwen3-1.7B-Base's shape (workflows/config/models/, the same
config.json fields `clipbench plan` reads; no download) is saved with the project's tokenizer and
loaded by a real `Trainer` with the paper config's training settings (workflows/config/paper.yaml:
bfloat16, gradient checkpointing, chunked log-probs, the micro-batch budget) and the `hf` engine.
Each step: the sampler (`clipbench.engines.sample_completions`, KV-cached decode) draws G
completions for each of P random prompts; then the trainer's own old-log-prob pass and updates
(`Trainer._old_logprobs`, `Trainer._update`) run on them with random advantages (a random model
earns no reward; the work of an update does not depend on the advantages' values). Printed:
tokens/s of generation and of the update, the peak GPU memory (torch.cuda.max_memory_allocated and
reserved) against the planner's predicted peak for the same settings, and the update's model-FLOPs
utilisation (6 x parameters x tokens per update, plus 2 x parameters x tokens of the old-log-prob
pass and 2 x of checkpointing's recomputation, over the GPU's dense bf16 peak).

    python speed/gpu_check.py                       # on the GPU machine (cuda:0), ~5 min
    python speed/gpu_check.py --tiny --device cpu   # the same code on a tiny shape, on a CPU

`--gpu` names the GPU kind for the planner (default h200-141gb). Nothing here downloads anything.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's clipbench

SHAPE = ROOT / "workflows" / "config" / "models" / "Qwen--Qwen3-1.7B-Base.json"
TINY = {
    "model_type": "qwen3",
    "vocab_size": 4096,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}


def build_model_dir(fields: dict, directory: Path, device: str) -> Path:
    """A random model of `fields`' shape (float32 weights: the trainer's autocast does bf16) saved
    with the project's byte-level tokenizer (its ids are a subset of any vocabulary here)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from clipbench.models import build_tokenizer, save_model

    tokenizer = build_tokenizer()
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}
    config = AutoConfig.for_model(**fields)
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return save_model(model, tokenizer, directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gpu", default="h200-141gb", help="the GPU kind the planner predicts for")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape (a CPU test of the script)")
    parser.add_argument("--prompts", type=int, default=16, help="P (the paper: 128)")
    parser.add_argument("--samples", type=int, default=8, help="G (the paper: 8)")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="(the paper: 4096)")
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import torch

    from clipbench import plan
    from clipbench.config import load_config
    from clipbench.engines import Samples, sample_completions
    from clipbench.trainer import Trainer, _EntropyTally

    paper = __import__("yaml").safe_load((ROOT / "workflows" / "config" / "paper.yaml").read_text())
    optim = dict(paper["train"]["optim"])
    optim["minibatches"] = args.minibatches
    fields = TINY if args.tiny else json.loads(SHAPE.read_text())
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(fields, Path(tmp) / "model", "cpu")
        config = load_config(
            {
                "model": str(model_dir),
                "method": "grpo",
                "steps": args.steps,
                "device": args.device,
                "dtype": paper["train"].get("dtype", "bfloat16"),
                "rollout": {
                    "prompts_per_step": args.prompts,
                    "samples_per_prompt": args.samples,
                    "max_new_tokens": args.max_new_tokens,
                },
                "optim": optim,
            }
        )
        trainer = Trainer(config, Path(tmp) / "run", progress=False)
        trainer._setup()
        model, tok = trainer.model, trainer.tokenizer
        shape = plan.ModelShape.from_config(fields, "gpu_check")
        run = plan.run_settings(config, prompt_tokens=args.prompt_tokens)
        gpu = plan.get_gpu(args.gpu)
        predicted = plan.memory(shape, run, gpu_memory=gpu.memory if cuda else 0)
        print(
            f"{shape.describe()}; {args.device}; dtype {config.dtype}; budget {config.optim.max_tokens_per_microbatch}"
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        gen = torch.Generator(device="cpu").manual_seed(0)
        rows = args.prompts * args.samples
        for step in range(args.steps):
            prompt_ids = torch.randint(
                5, min(fields["vocab_size"], 262), (args.prompts, args.prompt_tokens), generator=gen
            )
            start = time.perf_counter()
            completions, finished, _ = sample_completions(
                model,
                prompt_ids.to(args.device),
                torch.ones_like(prompt_ids).to(args.device),
                n=args.samples,
                max_new_tokens=args.max_new_tokens,
                temperature=1.0,
                top_p=1.0,
                eos_id=tok.eos_token_id,
                generator=torch.Generator(device=args.device).manual_seed(step),
            )
            if cuda:
                torch.cuda.synchronize()
            generate_s = time.perf_counter() - start
            generated = sum(len(c) for c in completions)
            prompts = [row for row in prompt_ids.tolist() for _ in range(args.samples)]
            samples = Samples(prompts, completions, [""] * rows, finished)
            advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
            order = torch.randperm(rows, generator=gen).view(args.minibatches, -1).tolist()
            entropy = _EntropyTally(rows)
            start = time.perf_counter()
            minibatches = trainer._old_logprobs(samples, order, entropy)
            for update, minibatch in enumerate(minibatches):
                trainer._update(step, update, minibatch, advantages, entropy)
            if cuda:
                torch.cuda.synchronize()
            update_s = time.perf_counter() - start
            tokens = sum(m.tokens for m in minibatches)
            # per token: 6 N for forward + backward, 2 N for the old-log-prob pass (all minibatches
            # but the first), 2 N more for checkpointing's recomputed forward
            passes = (
                6
                + 2 * (args.minibatches - 1) / args.minibatches
                + (2 if config.optim.gradient_checkpointing else 0)
            )
            flops = passes * shape.parameters() * tokens
            peak_tflops = gpu.tflops["bfloat16" if config.dtype == "bfloat16" else "float32"]
            print(
                f"step {step}: generation {generated / generate_s:,.0f} tokens/s ({generated} tokens, "
                f"{generate_s:.1f} s); update {tokens / update_s:,.0f} tokens/s ({tokens} tokens, "
                f"{sum(len(m.micro) for m in minibatches)} micro-batches, {update_s:.1f} s); "
                f"MFU {flops / update_s / (peak_tflops * 1e12):.1%} of {args.gpu}'s {peak_tflops:g} TFLOPS"
                + ("" if cuda else " (not a GPU: MFU meaningless)"),
                flush=True,
            )
        if cuda:
            allocated = torch.cuda.max_memory_allocated()
            reserved = torch.cuda.max_memory_reserved()
            print(
                f"peak GPU memory: {allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved; "
                f"clipbench plan predicts {predicted.peak / 2**30:.2f} GiB "
                f"(ratio reserved/predicted {reserved / predicted.peak:.2f})"
            )
        else:
            print(
                f"clipbench plan predicts {predicted.peak / 2**30:.2f} GiB on a GPU (no GPU here to compare)"
            )


if __name__ == "__main__":
    main()
