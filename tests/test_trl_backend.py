"""The TRL backend (clipbench/integrations/trl.py): same loss, same gradient as the native trainer.

One fixed rollout batch (8 rows: prompts of different lengths, completions of 0 to 7 tokens,
advantages of both signs, old log-probs off by N(-0.01, 0.15^2) per token, NaN off the mask), a
float64 copy of the tiny base model, for every registered rule (and the variants whose totals or
statistics matter): the native trainer's `_update` on the batch as one minibatch, and TRL's own
`training_step` (no generation: TRL's `_generate_and_score_completions` returns the fixed batch)
over the two micro-batches of one optimizer step (gradient_accumulation_steps = 2, TRL's shuffled
halves of the batch), must give the same loss and the same parameter gradients to 1e-6 (float64),
the same update metrics and the same clip records. Offline: no hub access."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from clipbench import artifacts, methods  # noqa: E402
from clipbench.config import load_config  # noqa: E402
from clipbench.integrations import trl as backend  # noqa: E402
from clipbench.logprobs import collate, token_logprobs  # noqa: E402
from clipbench.models import load_model  # noqa: E402
from clipbench.trainer import Trainer, _clip_records, _EntropyTally, _Microbatch, _Minibatch  # noqa: E402

TEMPERATURE = 0.7
PROMPTS = ["Compute: 1+2\n", "What is 3-1+4?\n"]  # two groups of G = 4 (different prompt lengths)
G = 4
COMPLETION_LENGTHS = [5, 1, 0, 7, 3, 6, 2, 4]  # row 2: length 0 (masked out, as TRL's truncation masking)
SCORES = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]

# Every registered rule at its defaults, plus the variants whose minibatch totals or statistics
# matter (FSPO's drift, the fitted power band), a band wide enough to keep some GSPO sequences
# inside, the token rules' other aggregations, and one with the KL penalty (TRL's beta).
CASES = [(name, {}, 0.0) for name in methods.available_methods()] + [
    ("fspo", {"drift": "kl", "c_low": 0.1, "c_high": 0.1}, 0.0),
    ("powerband", {"c_low": 0.1, "c_high": 0.1}, 0.0),
    ("gspo", {"eps_low": 0.05, "eps_high": 0.05}, 0.0),
    ("ppo", {"aggregation": "seq_mean_token_sum"}, 0.0),
    ("grpo", {"aggregation": "seq_mean_token_sum_norm", "norm_tokens": 16}, 0.0),
    ("grpo", {}, 0.5),
]


def case_id(case) -> str:
    name, params, beta = case
    return name + "".join(f"-{k}={v}" for k, v in params.items()) + (f"-beta={beta}" if beta else "")


@pytest.fixture(scope="module")
def model64(base_model):
    model, tokenizer = load_model(base_model, dtype=torch.float64)
    return model, tokenizer


@pytest.fixture(scope="module")
def fixed(model64):
    """The fixed rollout batch in both layouts: `rows` (prompt and completion token lists),
    TRL's batch dict, and the native trainer's old/reference log-probs (B, W - 1)."""
    model, tokenizer = model64
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


def native_update(base_model, model, tokenizer, fixed, name, params, beta, tmp_path):
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
    trainer = Trainer(config, tmp_path / "native", progress=False)
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


def trl_trainer(model, tokenizer, rule, beta, tmp_path, **overrides):
    args = {
        "output_dir": str(tmp_path / "trl"),
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
    dataset = Dataset.from_dict({"prompt": [p for p in PROMPTS for _ in range(G)], "score": SCORES})

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


@pytest.fixture
def no_generation(monkeypatch, fixed):
    """TRL's generation replaced by the fixed batch, scored by the trainer's own reward path."""

    def generate_and_score(self, inputs):
        completions = ["x" * n for n in COMPLETION_LENGTHS]
        self._calculate_rewards(inputs, [row["prompt"] for row in inputs], completions, fixed["completions"])
        return dict(fixed["batch"])

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", generate_and_score)


def trl_update(trainer, dataset_rows):
    """TRL's own training_step over the micro-batches of one optimizer step; the backend's summed
    loss, the accumulated gradients, the update's metrics and its clip records."""
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = (
        trainer.args.gradient_accumulation_steps
    )  # as train() sets it
    losses = [
        trainer.training_step(model, dataset_rows, None)
        for _ in range(trainer.args.gradient_accumulation_steps)
    ]
    trainer._get_grad_norm(model)  # the end of the update (its metrics); clipping off: grads untouched
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    metrics = trainer._update_metrics[-1] if trainer._update_metrics else None  # None: the step ended
    return float(sum(losses)), grads, metrics, list(trainer._records)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_same_loss_same_gradient_as_the_native_trainer(
    case, base_model, model64, fixed, no_generation, tmp_path
):
    name, params, beta = case
    model, tokenizer = model64
    rule = methods.get_method(name, **params)
    native_out, native_metrics, native_grads, native_records = native_update(
        base_model, copy.deepcopy(model), tokenizer, fixed, name, params, beta, tmp_path
    )
    trainer = trl_trainer(copy.deepcopy(model), tokenizer, rule, beta, tmp_path)
    rows = [
        {"prompt": p, "score": s} for p, s in zip([p for p in PROMPTS for _ in range(G)], SCORES, strict=True)
    ]
    loss, grads, metrics, records = trl_update(trainer, rows)

    # The case is worth testing: the rule clips some units (SAPO's soft gate at its defaults: none).
    assert 0 < native_metrics["clip_frac"] < 1 or (name, params) == ("sapo", {}), native_metrics
    assert loss == pytest.approx(native_metrics["loss"], rel=1e-6, abs=1e-12)
    assert grads.keys() == native_grads.keys()
    total = sum(float(g.abs().sum()) for g in native_grads.values())
    assert total > 0 and all(torch.isfinite(g).all() for g in grads.values())
    for key, want in native_grads.items():
        torch.testing.assert_close(grads[key], want, rtol=1e-6, atol=1e-12, msg=key)
    for key, want in native_metrics.items():
        assert metrics[key] == pytest.approx(want, rel=1e-6, abs=1e-12), key
    # The clip records: one per row, matched by the row's place in the rollout batch.
    got = sorted(records, key=lambda r: r["seq"])
    assert [r["seq"] for r in got] == list(range(len(COMPLETION_LENGTHS)))
    for mine, theirs in zip(got, native_records, strict=True):
        assert (mine["step"], mine["update"], mine["epoch"], mine["minibatch"]) == (0, 0, 0, 0)
        assert mine["length"] == theirs["length"] == COMPLETION_LENGTHS[mine["seq"]]
        assert mine["reward"] == SCORES[mine["seq"]]
        assert mine["entropy"] == pytest.approx(float(fixed["entropy"][mine["seq"]]), rel=1e-9)
        for column in ("S", "advantage", "seq_clip", "seq_out"):
            assert mine[column] == pytest.approx(theirs[column], rel=1e-6, abs=1e-12), column


DATASET_ROWS = [
    {"prompt": p, "score": s} for p, s in zip([p for p in PROMPTS for _ in range(G)], SCORES, strict=True)
]


def test_trls_fused_log_probs_give_the_same_update_to_float32_precision(
    model64, fixed, no_generation, tmp_path
):
    """The production path (TRL's fused LM head, float32 accumulators, TRL's positions) on the
    same float64 batch: the same loss and gradient to its float32 precision."""
    model, tokenizer = model64
    rule = methods.get_method("grpo")
    exact = trl_update(trl_trainer(copy.deepcopy(model), tokenizer, rule, 0.0, tmp_path / "a"), DATASET_ROWS)
    trainer = trl_trainer(copy.deepcopy(model), tokenizer, rule, 0.0, tmp_path / "b")
    trainer.fused_logprobs = True
    fused = trl_update(trainer, DATASET_ROWS)
    assert fused[0] == pytest.approx(exact[0], rel=5e-6)
    want = torch.cat([g.flatten() for g in exact[1].values()])
    got = torch.cat([fused[1][k].flatten() for k in exact[1]])
    assert 0 < float((got - want).norm() / want.norm()) < 5e-6  # not float64's 1e-16: TRL's kernel is float32


def test_a_step_writes_its_rank_tagged_records_and_metrics_line(model64, fixed, no_generation, tmp_path):
    """Both updates of an RL step (2 epochs x 1 minibatch of 2 micro-batches): after the last one,
    rank 0's records file and the step's metrics.jsonl line; clipbench's advantages replace TRL's."""
    model, tokenizer = model64
    trainer = trl_trainer(copy.deepcopy(model), tokenizer, methods.get_method("ppo"), 0.0, tmp_path)
    trainer.run_dir, trainer.advantage = tmp_path / "run", ("grpo", 1e-6)
    trl_update(trainer, DATASET_ROWS)
    assert not (tmp_path / "run").exists()  # mid-step: nothing written yet
    trl_update(trainer, DATASET_ROWS)
    files = artifacts.step_records_files(tmp_path / "run")
    assert {step: [f.name for f in parts] for step, parts in files.items()} == {
        0: ["step_000000.rank0.parquet"]
    }
    records = artifacts.read_clip_records(tmp_path / "run")
    rows = len(COMPLETION_LENGTHS)
    assert (
        records["update"].tolist() == [0] * rows + [1] * rows
        and records.epoch.tolist() == [0] * rows + [1] * rows
    )
    assert records.seq.tolist() == list(range(rows)) * 2 and (records.minibatch == 0).all()
    assert records.length.tolist() == COMPLETION_LENGTHS * 2
    # GRPO's advantages of the scores, by hand: each group [1, 0, 0, 1] / [1, 1, 0, 0] has mean 1/2 and
    # unbiased std sqrt(1/3), so A = +-(1/2) / (sqrt(1/3) + 1e-6).
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert records.advantage.tolist() == pytest.approx([a if s else -a for s in SCORES] * 2, rel=1e-6)
    assert (
        records["S"][records["length"] > 0] != 0
    ).all()  # the fixed old log-probs are off by N(-0.01, 0.15^2)
    (line,) = [json.loads(x) for x in (tmp_path / "run" / artifacts.METRICS_FILE).read_text().splitlines()]
    assert line["step"] == 0 and line["updates"] == 2
    assert line["reward_mean"] == line["accuracy"] == 0.5
    assert line["response_length_mean"] == sum(COMPLETION_LENGTHS) / rows and line["response_length_max"] == 7
    assert line["truncated_frac"] == 1.0  # no completion holds EOS
    tokens = sum(COMPLETION_LENGTHS)
    weights = torch.tensor(COMPLETION_LENGTHS, dtype=torch.float64)
    assert line["entropy"] == pytest.approx(float((fixed["entropy"] * weights).sum()) / tokens, rel=1e-9)
    for key in ("loss", "grad_norm", "clip_frac", "clip_frac_low", "clip_frac_high", "out_frac", "ppo_kl"):
        assert math.isfinite(line[key]), key


def test_schedule_positions_by_hand():
    # M = 4 slices per rollout batch, 2 epochs, 2 micro-batches per optimizer step: 2 minibatches.
    positions = [backend.schedule_position(i, 4, 2, 2) for i in range(9)]
    assert [(p.step, p.update, p.epoch, p.minibatch, p.slot, p.first) for p in positions] == [
        (0, 0, 0, 0, 0, True),
        (0, 0, 0, 0, 1, False),
        (0, 1, 0, 1, 2, True),
        (0, 1, 0, 1, 3, False),
        (0, 2, 1, 0, 0, True),
        (0, 2, 1, 0, 1, False),
        (0, 3, 1, 1, 2, True),
        (0, 3, 1, 1, 3, False),
        (1, 0, 0, 0, 0, True),
    ]
    assert positions[3].window == (2, 3) and positions[4].window == (0, 1)
    with pytest.raises(
        ValueError, match="steps_per_generation=3 must be a multiple of gradient_accumulation_steps=2"
    ):
        backend.schedule_position(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_entropy_quantile", 0.2),
        ("off_policy_mask_threshold", 0.5),
        ("delta", 2.0),
        ("entropy_coef", 0.01),
    ],
)
def test_trl_options_that_change_the_loss_are_refused(field, value, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: value})
    with pytest.raises(ValueError, match=rf"GRPOConfig.{field}={value!r}: .*the rule's alone"):
        backend.check_arguments(args)
    backend.check_arguments(GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
