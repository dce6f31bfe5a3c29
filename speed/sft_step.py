"""Seconds per SFT warm-up step: the packed loss clipbench uses against the padded reference.

`clipbench.sft.sft_loss` runs the batch packed back to back (the RL trainer's `token_logprobs`);
the reference is transformers' own causal-LM loss on the right-padded batch with the prompt
masked by -100, which the warm-up used before. Both train a fresh model of the default SFT shape
on the same synthetic batches (64 worked solutions each), alternating, and the ratio is of the
medians measured in this run. The losses are printed too: the same to about four decimals.

    python speed/sft_step.py [--steps 20 --rounds 2 --threads 2]
"""

import argparse
import random
import statistics
import time

import torch

from clipbench import benchmarks
from clipbench.models import build_tiny_model, build_tokenizer
from clipbench.sft import SFTConfig, _encode, padded_sft_loss, sft_loss


def time_steps(loss_fn, batches, tokenizer, config) -> tuple[float, float]:
    """(seconds per step, last loss) over `batches` on a fresh model (same seed every time)."""
    model = build_tiny_model(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        intermediate_size=config.intermediate_size,
        seed=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = loss_fn(model, batch, tokenizer.pad_token_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(batches), loss.item()


def warmup_batches(config: SFTConfig, steps: int) -> tuple:
    """(tokenizer, `steps` batches of `config.batch_size` encoded worked solutions), seeded."""
    spec = benchmarks.get_spec("synthetic")
    tokenizer = build_tokenizer()
    problems = benchmarks.load("synthetic", split="train", n=config.n_problems, seed=0)
    examples = [
        _encode(tokenizer, benchmarks.build_prompt(p, template=spec.prompt_template), p.solution)
        for p in problems
    ]
    rng = random.Random(0)
    batches = [
        [examples[i] for i in rng.sample(range(len(examples)), config.batch_size)] for _ in range(steps)
    ]
    return tokenizer, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = SFTConfig()
    tokenizer, batches = warmup_batches(config, args.steps)
    times = {"packed (sft_loss)": [], "padded reference": []}
    for _ in range(args.rounds):
        for name, fn in (("padded reference", padded_sft_loss), ("packed (sft_loss)", sft_loss)):
            seconds, loss = time_steps(fn, batches, tokenizer, config)
            times[name].append(seconds)
            print(f"{name:18s} {seconds:.3f} s/step, loss after {args.steps} steps {loss:.4f}", flush=True)
    packed = statistics.median(times["packed (sft_loss)"])
    padded = statistics.median(times["padded reference"])
    print(
        f"padded / packed: {padded / packed:.2f}x (medians of {args.rounds} rounds, {args.threads} threads)"
    )


if __name__ == "__main__":
    main()
