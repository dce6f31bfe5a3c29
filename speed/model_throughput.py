"""Throughput of the tiny policy model: training tokens/s and greedy generation tokens/s.

Prints absolute numbers and, as the comparison that travels between machines, the ratio of
the default attention (sdpa) to the eager reference measured in the same run.

    python speed/model_throughput.py [--hidden 128 --layers 4 --batch 64 --seq 128 --new 64]
"""

import argparse
import time

import torch

from clipbench.models import build_tiny_model, build_tokenizer, count_parameters


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_tokens_per_s(model, batch: int, seq: int, repeats: int) -> float:
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch * seq / _best_of(step, repeats)


def generate_tokens_per_s(model, tokenizer, batch: int, new: int, repeats: int) -> float:
    prompts = [f"What is {i}+{2 * i}?" for i in range(batch)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    model.eval()

    def run():
        with torch.no_grad():
            # min_new_tokens: every row generates exactly `new` tokens.
            model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    return batch * new / _best_of(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = build_tokenizer()
    results = {}
    for attn in ("eager", "sdpa"):
        model = build_tiny_model(
            tokenizer, hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.intermediate
        )
        model.set_attn_implementation(attn)
        results[attn] = (
            train_tokens_per_s(model, args.batch, args.seq, args.repeats),
            generate_tokens_per_s(model, tokenizer, args.batch, args.new, args.repeats),
        )
    print(f"tiny Qwen2: {count_parameters(model):,} parameters, torch threads {torch.get_num_threads()}")
    print(f"{'attention':<10} {'train tok/s':>12} {'generate tok/s':>15}")
    for attn, (train, gen) in results.items():
        print(f"{attn:<10} {train:>12,.0f} {gen:>15,.0f}")
    (ref_train, ref_gen), (train, gen) = results["eager"], results["sdpa"]
    print(f"sdpa / eager: train x{train / ref_train:.2f}, generate x{gen / ref_gen:.2f}")


if __name__ == "__main__":
    main()
