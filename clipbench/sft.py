"""SFT warm-up: the shared base checkpoint every method starts from.

A tiny Qwen2 model (clipbench.models) is trained with cross-entropy on the synthetic set's worked
solutions (prompt + solution + EOS, loss on the solution tokens only, computed by the RL trainer's
packed log-probs: :func:`sft_loss`) until its greedy accuracy on a
held-out dev slice of the train split reaches `target_accuracy` or `max_steps` run out. Stopping
short of perfect accuracy leaves RL room to improve, and the solutions' 1 to 12 steps give the
response lengths the fairness metrics bin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from clipbench import benchmarks
from clipbench.benchmarks import synthetic
from clipbench.logprobs import collate, token_logprobs
from clipbench.provenance import atomic_write_json, provenance
from clipbench.settings import ConfigError, check, setting


@dataclass(frozen=True)
class SFTConfig:
    seed: int = setting(0, help="model init, data order and the synthetic generator", ge=0)
    n_problems: int = setting(
        4000, help="synthetic train problems to learn from (the dev slice is taken after them)", ge=1
    )
    dev_problems: int = setting(
        128, help="held-out train-split problems for the early-stopping accuracy", ge=1
    )
    batch_size: int = setting(64, help="examples per optimizer step", ge=1)
    lr: float = setting(3e-3, help="AdamW learning rate (50 warm-up steps)", gt=0)
    max_steps: int = setting(600, help="optimizer steps at most", ge=1)
    eval_every: int = setting(50, help="steps between dev accuracy evaluations", ge=1)
    target_accuracy: float = setting(
        0.5, help="stop once greedy dev accuracy reaches this (imperfect on purpose)", gt=0, le=1
    )
    max_new_tokens: int = setting(
        128, help="greedy dev generation length (the longest train solution, 12 steps, is ~85 tokens)", ge=1
    )
    hidden_size: int = setting(
        128,
        help="model width",
        ge=8,
        multiple_of=8,
        why="4 attention heads of an even size, for rotary embeddings",
    )
    num_layers: int = setting(4, help="transformer layers", ge=1)
    intermediate_size: int = setting(512, help="MLP width", ge=1)

    def __post_init__(self) -> None:
        """Every field checked before any work (ConfigError naming it)."""
        check(self, "sft")
        if self.n_problems + self.dev_problems > synthetic.MAX_N:
            raise ConfigError(
                f"sft.n_problems + sft.dev_problems = {self.n_problems + self.dev_problems}: "
                f"the synthetic generator gives at most {synthetic.MAX_N} problems"
            )


def _encode(tokenizer, prompt: str, solution: str) -> tuple[list[int], list[int]]:
    """``(prompt ids, solution ids + EOS)``: the loss is on the second part only."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    solution_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, solution_ids


def sft_loss(model, examples: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the solution tokens of ``examples`` (prompt, solution) pairs.

    Computed with the RL trainer's own log-probs (:func:`clipbench.logprobs.token_logprobs` on a
    :func:`~clipbench.logprobs.collate` batch, temperature 1): the sequences run packed back to back,
    so no linear layer computes a padding token (1.43x faster per step than the padded layout on
    the default model in ``speed/sft_step.py``), and SFT and RL score a response the same way."""
    batch = collate([p for p, _ in examples], [c for _, c in examples], pad_id)
    logp, _ = token_logprobs(model, batch, 1.0)
    return -logp.sum() / batch.response_mask.sum()


def padded_sft_loss(model, examples: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """The reference for :func:`sft_loss`: transformers' own causal-LM loss on the right-padded
    batch, the prompt tokens masked with -100 (the warm-up's loss before it moved to the packed
    path; kept for the equivalence test and ``speed/sft_step.py``)."""
    width = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (prompt, completion) in enumerate(examples):
        row = prompt + completion
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        labels[i, len(prompt) : len(row)] = ids[i, len(prompt) : len(row)]
    return model(input_ids=ids, attention_mask=attention, labels=labels).loss


@torch.no_grad()
def greedy_accuracy(
    model, tokenizer, problems, template: str, max_new_tokens: int, batch_size: int = 64
) -> float:
    """Greedy accuracy through the real verifier (used for early stopping and reports)."""
    prompts = [benchmarks.build_prompt(p, template=template) for p in problems]
    texts = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    verdicts = benchmarks.verify(texts, [p.answer for p in problems])
    return sum(v.correct for v in verdicts) / len(verdicts)


def run_sft(config: SFTConfig, out_dir: str | Path, *, log=print) -> Path:
    """Build, warm up and save the base model; returns `out_dir`."""
    # Imported here: the study imports this module for SFTConfig when Snakemake builds its DAG, and
    # transformers (through clipbench.models) would add seconds to every DAG construction.
    from clipbench.models import build_tiny_model, build_tokenizer, save_model

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory; give a directory for the model")
    spec = benchmarks.get_spec("synthetic")
    pool = benchmarks.load(
        "synthetic", split="train", n=config.n_problems + config.dev_problems, seed=config.seed
    )
    train, dev = pool[: config.n_problems], pool[config.n_problems :]
    tokenizer = build_tokenizer()
    model = build_tiny_model(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        intermediate_size=config.intermediate_size,
        seed=config.seed,
    )
    examples = [
        _encode(tokenizer, benchmarks.build_prompt(p, template=spec.prompt_template), p.solution)
        for p in train
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    gen = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    history = []
    accuracy = 0.0
    step = 0
    model.train()
    while step < config.max_steps:
        if len(order) < config.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        chosen, order = order[: config.batch_size], order[config.batch_size :]
        loss = sft_loss(model, [examples[i] for i in chosen], tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % config.eval_every == 0 or step == config.max_steps:
            model.eval()
            accuracy = greedy_accuracy(model, tokenizer, dev, spec.prompt_template, config.max_new_tokens)
            model.train()
            history.append({"step": step, "loss": loss.item(), "dev_accuracy": accuracy})
            log(f"sft step {step}: loss {loss.item():.4f}, dev greedy accuracy {accuracy:.3f}")
            if accuracy >= config.target_accuracy:
                break
    model.eval()
    out_dir = Path(out_dir)
    save_model(
        model,
        tokenizer,
        out_dir,
        extra={"sft": {"config": asdict(config), "steps": step, "dev_accuracy": accuracy}},
    )
    atomic_write_json(
        out_dir / "sft_history.json", {"history": history, **provenance(asdict(config), seed=config.seed)}
    )
    return out_dir
