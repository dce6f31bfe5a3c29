"""Forward + backward time of every registered rule against a minimal token-level PPO loss
written inline here, timed in the same run on the same batch.

    python speed/methods_loss.py [--batch 256] [--tokens 2048] [--repeats 7] [--threads N]

Prints, per rule, the median time of `loss` + `backward` and its ratio to the reference.
Target (issue 2): every rule within 1.5x of the reference. Timings interleave the rules and the
reference in each repeat, so a burst of load on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clipbench import methods


def reference_ppo_loss(logp, old_logp, advantages, mask, eps=0.2):
    """The minimal token-mean PPO clip loss (no sanitising, no metrics)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    per_token = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
    maskf = mask.to(logp.dtype)
    return (per_token * maskf).sum() / maskf.sum()


def make_batch(batch: int, tokens: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    old_logp = -torch.rand(batch, tokens, generator=gen) * 3
    logp = old_logp + 0.05 * torch.randn(batch, tokens, generator=gen)
    lengths = torch.randint(tokens // 8, tokens + 1, (batch,), generator=gen)
    mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)
    advantages = torch.randn(batch, generator=gen)
    return logp, old_logp, advantages, mask


def time_once(fn, logp, *rest) -> float:
    x = logp.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(x, *rest)
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, args.tokens)
    candidates = {"reference (inline PPO)": reference_ppo_loss}
    for name in methods.available_methods():
        rule = methods.get_method(name)
        candidates[name] = lambda *a, rule=rule: rule.loss(*a).loss
    for fn in candidates.values():  # warm-up
        time_once(fn, *batch)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            times[name].append(time_once(fn, *batch))
    ref = statistics.median(times["reference (inline PPO)"])
    print(
        f"batch {args.batch} x {args.tokens} tokens, float32, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}, torch {torch.__version__}"
    )
    print(f"| {'rule':<22} | {'ms (fwd+bwd)':>12} | {'ratio to reference':>18} |")
    print(f"|{'-' * 24}|{'-' * 14}:|{'-' * 20}:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name:<22} | {med * 1e3:>12.1f} | {med / ref:>18.2f} |")


if __name__ == "__main__":
    main()
