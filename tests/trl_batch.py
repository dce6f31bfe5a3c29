"""The fixed rollout batch of the TRL backend's checks and the two update paths compared on it
(tests/test_trl_backend.py; tests/trl_two_process.py runs them on two processes): the native
trainer's `_update` and TRL's own `training_step` through the backend, TRL's generation replaced
by the fixed batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from clipbench.config import load_config
from clipbench.integrations import trl as backend
from clipbench.logprobs import collate, token_logprobs
from clipbench.trainer import Trainer, _clip_records, _EntropyTally, _Microbatch, _Minibatch

TEMPERATURE = 0.7
PROMPTS = ["Compute: 1+2\n", "What is 3-1+4?\n"]  # two groups of G = 4 (different prompt lengths)
G = 4
COMPLETION_LENGTHS = [5, 1, 0, 7, 3, 6, 2, 4]  # row 2: length 0 (masked out, as TRL's truncation masking)
SCORES = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]

ALL = slice(None)


def dataset_rows(rows: slice = ALL) -> list[dict]:
    """The dataset rows (prompt, score) of the batch's rows `rows`, as TRL's dataloader gives them."""
    every = [
        {"prompt": p, "score": s} for p, s in zip([p for p in PROMPTS for _ in range(G)], SCORES, strict=True)
    ]
    return every[rows]


def fixed_batch(model, tokenizer) -> dict:
    """The fixed rollout batch in both layouts: `rows` (prompt and completion token lists),
    TRL's batch dict, the native trainer's old/reference log-probs (B, W - 1) and the sampling
    policy's entropy per row, as the native records hold it."""
    g = torch.Generator().manual_seed(0)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS for _ in range(G)]
    vocab = model.config.vocab_size
    specials = set(tokenizer.all_special_ids)
    allowed = torch.tensor([t for t in range(vocab) if t not in specials])
    completions = [
        allowed[torch.randint(len(allowed), (n,), generator=g)].tolist() for n in COMPLETION_LENGTHS
    ]
    native = collate(prompt_ids, completions, tokenizer.pad_token_id)
    with torch.no_grad():
        current, entropy = token_logprobs(model, native, TEMPERATURE, with_entropy=True)
    response = native.response_mask
    sampling_entropy = (entropy * response).sum(-1) / response.sum(-1).clamp(min=1)  # as the native records
    rows, width = len(completions), max(COMPLETION_LENGTHS)
    mask = torch.arange(width).expand(rows, width) < torch.tensor(COMPLETION_LENGTHS).unsqueeze(1)
    # Completion token k of row i is predicted at native position len(prompt_i) - 1 + k.
    where = torch.tensor([[len(p) - 1 + k for k in range(width)] for p in prompt_ids]).clamp(
        max=native.response_mask.shape[1] - 1
    )
    trl_current = torch.where(mask, current.gather(1, where), torch.zeros(()))
    old = trl_current + (-0.01 + 0.15 * torch.randn(rows, width, generator=g, dtype=torch.float64))
    ref = trl_current + 0.1 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    nan = torch.full_like(old, float("nan"))
    old, ref = torch.where(mask, old, nan), torch.where(mask, ref, nan)

    native_old = torch.zeros_like(current)
    native_ref = torch.zeros_like(current)
    for i, p in enumerate(prompt_ids):
        n = COMPLETION_LENGTHS[i]
        native_old[i, len(p) - 1 : len(p) - 1 + n] = old[i, :n]
        native_ref[i, len(p) - 1 : len(p) - 1 + n] = ref[i, :n]
    pad = tokenizer.pad_token_id
    longest = max(len(p) for p in prompt_ids)
    batch = {
        "prompt_ids": torch.tensor([[pad] * (longest - len(p)) + p for p in prompt_ids]),
        "prompt_mask": torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompt_ids]),
        "completion_ids": torch.tensor([c + [pad] * (width - len(c)) for c in completions]),
        "completion_mask": mask.long(),
        "advantages": torch.randn(rows, generator=g, dtype=torch.float64),
        "num_items_in_batch": mask.sum(),
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    return {
        "prompt_ids": prompt_ids,
        "completions": completions,
        "batch": batch,
        "native_old": native_old,
        "native_ref": native_ref,
        "entropy": sampling_entropy,
    }


def native_update(base_model, model, tokenizer, fixed, name, params, beta, out_dir: Path):
    """The native trainer's update (`Trainer._update`) on the fixed batch as one off-policy
    minibatch: its LossOutput, metrics and the gradients its clipping sees."""
    config = load_config(
        {
            "model": base_model,
            "method": name,
            "method_params": params,
            "kl_beta": beta,
            "rollout": {"prompts_per_step": 2, "samples_per_prompt": G, "temperature": TEMPERATURE},
            "optim": {"minibatches": 1, "epochs": 2, "grad_clip": 0.0},
        }
    )
    trainer = Trainer(config, out_dir / "native", progress=False)
    trainer.model = model
    trainer.optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    rows = list(range(len(COMPLETION_LENGTHS)))
    batch = collate(fixed["prompt_ids"], fixed["completions"], tokenizer.pad_token_id)
    micro = _Microbatch(rows, batch, int(batch.attention_mask.sum()), fixed["native_old"])
    if beta:
        micro.ref_logp = fixed["native_ref"]
    grads = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def watch(parameters, max_norm):
        parameters = list(parameters)
        grads.append({id(p): p.grad.clone() for p in parameters if p.grad is not None})
        return real_clip(parameters, max_norm)

    advantages = fixed["batch"]["advantages"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.utils, "clip_grad_norm_", watch)
        out, adv, metrics = trainer._update(
            0, 1, _Minibatch(rows, [micro]), advantages, _EntropyTally(len(rows))
        )
    names = {id(p): n for n, p in model.named_parameters()}
    records = _clip_records(0, 1, 0, 0, rows, out, adv, torch.tensor(SCORES), torch.zeros(len(rows)))
    return out, metrics, {names[k]: v for k, v in grads[0].items()}, records


def trl_trainer(model, tokenizer, rule, beta, out_dir: Path, rows: slice = ALL, **overrides):
    """The backend's trainer on `model`, one optimizer step of two micro-batches per epoch, over
    the dataset rows `rows` (a process's share of the rollout batch)."""
    args = {
        "output_dir": str(out_dir / "trl"),
        "use_cpu": True,
        "bf16": False,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 2,
        "num_iterations": 2,
        "num_generations": G,
        "max_completion_length": max(COMPLETION_LENGTHS),
        "temperature": TEMPERATURE,
        "beta": beta,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    } | overrides
    dataset = Dataset.from_list(dataset_rows(rows))

    def score(completions, score, **_):
        return list(score)

    return backend.trainer_class()(
        model=model,
        reward_funcs=score,
        args=GRPOConfig(**args),
        train_dataset=dataset,
        processing_class=tokenizer,
        method=rule,
    )


def fixed_generation(fixed: dict, rows: slice = ALL):
    """A stand-in for GRPOTrainer._generate_and_score_completions: the fixed batch's rows `rows`
    (a process's share), scored by the trainer's own reward path (which gathers every process's)."""

    def generate_and_score(self, inputs):
        completions = ["x" * n for n in COMPLETION_LENGTHS[rows]]
        prompts = [row["prompt"] for row in inputs]
        self._calculate_rewards(inputs, prompts, completions, fixed["completions"][rows])
        return {k: (v[rows] if v.dim() else v) for k, v in fixed["batch"].items()}

    return generate_and_score


def trl_update(trainer, rows: list[dict], model=None):
    """TRL's own training_step over the micro-batches of one optimizer step (on `model`: the
    trainer's, or its DDP wrapper); the backend's summed loss, the accumulated gradients, the
    update's metrics and its clip records."""
    model = trainer.model if model is None else model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = (
        trainer.args.gradient_accumulation_steps
    )  # as train() sets it
    losses = [
        trainer.training_step(model, rows, None) for _ in range(trainer.args.gradient_accumulation_steps)
    ]
    trainer._get_grad_norm(model)  # the end of the update (its metrics); clipping off: grads untouched
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = trainer._update_metrics[-1] if trainer._update_metrics else None  # None: the step ended
    return float(sum(losses)), grads, metrics, list(trainer._records)


DATASET_ROWS = dataset_rows()
