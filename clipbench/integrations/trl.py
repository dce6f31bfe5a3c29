"""TRL backend: any registered clipping rule as the loss of TRL's GRPOTrainer (trl 1.16).

TRL 1.16 has no documented extension point for the policy loss (`loss_type` picks one of its own;
transformers' `compute_loss_func` is bypassed by GRPOTrainer's `compute_loss`), so the backend is
a GRPOTrainer subclass (`trainer_class()`, built on first use: trl is imported only then, and the
rest of clipbench imports without it). It overrides:

* `_compute_loss(model, inputs)` (what `compute_loss` calls): TRL's per-token log-probs of the
  completion (its own `_get_per_token_logps_and_entropies`, at the sampling temperature), its
  `old_per_token_logps` (or the log-probs themselves, detached, where TRL skips them because
  every update is on policy), `advantages` and `completion_mask` go to
  `get_method(name, **params).loss(..., totals=...)`; the rule's loss is the loss, in the rule's
  own aggregation: TRL's `loss_type` and `importance_sampling_level` are not used (nothing of
  TRL's loss runs, so nothing re-aggregates it), and with `beta > 0` the KL penalty is the native
  trainer's (`clipbench.trainer.kl_to_reference`, k3 over the minibatch's tokens).
* `_prepare_inputs`: at the first micro-batch of each optimizer step, the `BatchTotals` every
  micro-batch of that step divides by (below).
* `_generate_and_score_completions` (and `_calculate_rewards`, to keep the rewards): each row's
  place in the step's rollout batch, its reward, the sampling policy's entropy (one extra forward
  pass without gradients per rollout batch) and, when an estimator is given, clipbench's
  advantages (`clipbench.advantages`) in place of TRL's.
* `_get_grad_norm`: the end of an optimizer update (its metrics are summed over processes there;
  after the last update of a rollout batch the step's records and metrics are written).

**Normalisation (the totals).** Every rule divides by totals of the minibatch of one optimizer
step (`clipbench.methods.base`); the micro-batches of a step then add up to the unsplit
minibatch. In TRL an optimizer step is `gradient_accumulation_steps` micro-batches on each of
`num_processes` processes, and DDP *averages* the processes' gradients. The totals are the whole
*global* minibatch's: the response tokens and non-empty sequences of the step's micro-batches
(TRL's buffered slices of the rollout batch) summed over every process (an all-reduce), with the
rule's minibatch statistics (FSPO `drift="kl"`, powerband's fit) summed the same way under the
current weights (one forward pass without gradients per micro-batch, as the native trainer's);
each process's loss is multiplied by `num_processes` to undo DDP's average. The update is then
the native trainer's on the same global minibatch, however TRL splits it over processes and
accumulation steps; a per-process normaliser (each rank dividing by its own tokens) would weigh a
token on a rank with short responses more than one on a rank with long ones. TRL's
`steps_per_generation` must be a multiple of `gradient_accumulation_steps` (an optimizer step
never spans two rollout batches). Checked in float64 against the native trainer's loss and
gradients, every registered rule: tests/test_trl_backend.py.

**What a run writes** (`train_trl`), as the native trainer: `config.yaml`, `provenance.json`,
`metrics.jsonl` (one line per RL step, written by rank 0, the update metrics summed over the
processes), `records/step_NNNNNN.rankR.parquet` (each process its own rows of the clip records,
`clipbench.artifacts`), `final/` (the model in HF format, then `summary.json`), and TRL's own
output under `trl/`. One RL step is one TRL rollout batch: P x G completions, `M` minibatches
(`steps_per_generation`) x `E` epochs (`num_iterations`), one optimizer step each.

Refused (a `ValueError` naming the GRPOConfig field), as they would change the loss behind the
rule's back: `top_entropy_quantile < 1`, `off_policy_mask_threshold`, `delta`, an entropy bonus,
vLLM (its importance-sampling correction), a MoE router loss, multimodal inputs. Unused, since
none of TRL's loss runs: `loss_type`, `importance_sampling_level`, `epsilon`, `epsilon_high`
(the rule's hyperparameters are its band) and `use_bias_correction_kl` (the KL is the native
k3).

**Resume.** Every `checkpoint_every` RL steps TRL saves a checkpoint (`trl/checkpoint-N`, N its
optimizer steps: model, optimizer, scheduler, each process's RNG states, trainer state); once every
process has saved its part, rank 0 writes clipbench's manifest into it (`clipbench.trainer.write_manifest`,
the size and sha256 of each file), so a checkpoint cut by a kill is never resumed from. Rerunning the
same run resumes from the newest intact one (`prepare_run_dir`): the steps after it are dropped
from metrics.jsonl and the clip records (`clipbench.trainer.truncate_run_logs`, as the native
trainer's resume), TRL restores the weights, optimizer, data position and RNG states, and the RL step
count continues from it (`resume_micro_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from clipbench import artifacts, fairness
from clipbench.errors import UserError
from clipbench.methods import BatchTotals, LossOutput, Method, prepare_batch, sum_statistics

#: Keys this backend adds to TRL's batch dicts (TRL's own keys are left as they are).
ROW_KEY = "clipbench_seq"  # (B,) the row's place in the step's rollout batch, over all processes
REWARD_KEY = "clipbench_reward"  # (B,) the row's reward (TRL's reward functions, weighted)
ENTROPY_KEY = "clipbench_entropy"  # (B,) the sampling policy's mean per-token entropy of the row
TOTALS_KEY = "clipbench_totals"  # the BatchTotals of the micro-batch's optimizer step

#: Where TRL's own output (its output_dir) goes inside a run directory.
TRL_DIR = "trl"


# ---------------------------------------------------------------------------- pure helpers


@dataclasses.dataclass(frozen=True)
class Position:
    """Where micro-batch `micro_step` (TRL's `_step`, counted from 0) sits in the schedule: one RL
    step (a rollout batch) is `steps_per_generation` micro-batches x `num_iterations` epochs, an
    optimizer update every `accumulation` micro-batches.

    step: the RL step; update: the optimizer update within it (epoch * M + minibatch, as the
    native trainer counts, M = steps_per_generation / accumulation); epoch, minibatch: as the
    clip records name them; slot: the micro-batch's index among TRL's buffered slices of the
    rollout batch; first: whether it opens its update; window: the slots of its update."""

    step: int
    update: int
    epoch: int
    minibatch: int
    slot: int
    first: bool
    window: tuple[int, ...]


def schedule_position(
    micro_step: int, steps_per_generation: int, num_iterations: int, accumulation: int
) -> Position:
    """The `Position` of a micro-batch (see there); ValueError unless `accumulation` divides
    `steps_per_generation`."""
    if steps_per_generation % accumulation:
        raise ValueError(
            f"steps_per_generation={steps_per_generation} must be a multiple of gradient_accumulation_steps="
            f"{accumulation}: an optimizer step must not span two rollout batches"
        )
    cycle = steps_per_generation * num_iterations
    step, within = divmod(micro_step, cycle)
    epoch, slot = divmod(within, steps_per_generation)
    minibatch, offset = divmod(slot, accumulation)
    per_epoch = steps_per_generation // accumulation
    start = slot - offset
    return Position(
        step=step,
        update=epoch * per_epoch + minibatch,
        epoch=epoch,
        minibatch=minibatch,
        slot=slot,
        first=offset == 0,
        window=tuple(range(start, start + accumulation)),
    )


# GRPOConfig fields that change TRL's loss; the backend's loss is the rule's alone, so each must be
# at the value that leaves the loss alone. (field, is it at that value?, why)
_REFUSED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("top_entropy_quantile", lambda v: v == 1.0, "masks the loss to high-entropy tokens"),
    ("off_policy_mask_threshold", lambda v: v is None, "drops off-policy sequences from the loss"),
    ("delta", lambda v: v is None, "caps the importance ratio (two-sided clipping)"),
    ("entropy_coef", lambda v: v == 0.0, "adds an entropy bonus to the loss"),
    ("use_adaptive_entropy", lambda v: not v, "adds an adaptive entropy bonus to the loss"),
    (
        "use_vllm",
        lambda v: not v,
        "vLLM's importance-sampling correction multiplies the loss (not supported yet)",
    ),
)


def check_arguments(args: Any) -> None:
    """ValueError naming the GRPOConfig field when `args` asks TRL for something that would change
    the rule's loss (see `_REFUSED`) or for a schedule whose optimizer steps span rollout batches."""
    for name, ok, why in _REFUSED:
        value = getattr(args, name, None)
        if not ok(value):
            raise ValueError(
                f"GRPOConfig.{name}={value!r}: {why}; the clipbench TRL backend's loss is the rule's alone"
            )
    schedule_position(0, args.steps_per_generation, args.num_iterations, args.gradient_accumulation_steps)


def loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
    """(B, T) bool: the completion tokens the loss counts (TRL's `completion_mask`, times its
    `tool_mask` when there is one)."""
    mask = inputs["completion_mask"]
    if "tool_mask" in inputs:
        mask = mask * inputs["tool_mask"]
    return mask > 0


def microbatch_records(position: Position, inputs: dict[str, Any], out: LossOutput) -> list[dict[str, Any]]:
    """The clip records (`clipbench.artifacts.CLIP_RECORD_COLUMNS`) of one micro-batch: one per row,
    S, L and the prefix sums S_k as the rule saw them (from its LossOutput, as the native trainer's)."""
    prefix = fairness.record_prefix_sums(out.log_ratio.detach().double().cpu(), out.mask.cpu())
    columns = zip(
        inputs[ROW_KEY].tolist(),
        out.lengths.long().tolist(),
        out.seq_log_ratio.tolist(),
        inputs["advantages"].double().tolist(),
        inputs[REWARD_KEY].tolist(),
        inputs[ENTROPY_KEY].tolist(),
        out.seq_clip.tolist(),
        out.seq_out.tolist(),
        prefix,
        strict=True,
    )
    return [
        {
            "step": position.step,
            "update": position.update,
            "epoch": position.epoch,
            "minibatch": position.minibatch,
            "seq": row,
            "length": length,
            "S": seq_s,
            "advantage": adv,
            "reward": reward,
            "entropy": entropy,
            "seq_clip": clip,
            "seq_out": out_of_band,
            **prefix_sums,
        }
        for row, length, seq_s, adv, reward, entropy, clip, out_of_band, prefix_sums in columns
    ]


def step_metrics(step: int, stats: dict[str, Any], updates: list[dict[str, float]]) -> dict[str, Any]:
    """The step's line of metrics.jsonl, the native trainer's keys (`clipbench.trainer`): the
    rollout batch's rewards, response lengths, truncation and sampling entropy (over every
    process), and the mean over the step's updates of each update metric."""
    import numpy as np

    lengths = stats["lengths"]
    return {
        "step": step,
        "reward_mean": float(np.mean(stats["rewards"])),
        "accuracy": float(np.mean(stats["rewards"])),
        "response_length_mean": float(np.mean(lengths)),
        "response_length_p90": float(np.percentile(lengths, 90)),
        "response_length_max": int(max(lengths)),
        "truncated_frac": float(np.mean(stats["truncated"])),
        "entropy": stats["entropy_sum"] / max(sum(lengths), 1),
        **{k: float(np.mean([m[k] for m in updates])) for k in updates[0]},
        "updates": len(updates),
    }


# ---------------------------------------------------------------------------- the trainer


class BackendMissing(UserError, ImportError):
    """trl or accelerate is not installed; the message gives the install line."""


def require_trl() -> None:
    """BackendMissing unless trl and accelerate import (both come with the `trl` extra)."""
    for name in ("trl", "accelerate"):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise BackendMissing(
                f'backend trl needs {name} ({err}); install it with: pip install -e ".[trl]"'
            ) from err


@functools.cache
def trainer_class() -> type:
    """`ClipbenchGRPOTrainer`, a subclass of trl's GRPOTrainer (imports trl; BackendMissing, an
    ImportError, with the install line when it is missing)."""
    require_trl()
    from trl import GRPOTrainer

    from clipbench.advantages import compute_advantages
    from clipbench.trainer import kl_to_reference

    class ClipbenchGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer whose policy loss is a clipbench rule (module docstring).

        method: the rule (`clipbench.methods.get_method(...)`); run_dir: where the clip records and
        metrics.jsonl go (None: none are written); advantage: `(estimator, eps)` of
        `clipbench.advantages` to replace TRL's advantages with (None: TRL's own)."""

        def __init__(
            self,
            *args,
            method: Method,
            run_dir: str | Path | None = None,
            advantage: tuple[str, float] | None = None,
            **kwargs,
        ):
            if kwargs.get("args") is not None:
                check_arguments(kwargs["args"])  # before TRL loads anything
            super().__init__(*args, **kwargs)
            check_arguments(self.args)
            if self.aux_loss_enabled:
                raise ValueError(
                    "GRPOConfig.router_aux_loss_coef: a MoE router loss would be added to the rule's loss; "
                    "set model_init_kwargs output_router_logits=False or router_aux_loss_coef=0"
                )
            self.method = method
            self.run_dir = None if run_dir is None else Path(run_dir)
            self.advantage = advantage
            self._rewards_per_func: torch.Tensor | None = None
            self._totals: BatchTotals | None = None
            self._update_sums: dict[str, float] = {}
            self._update_metrics: list[dict[str, float]] = []
            self._records: list[dict[str, Any]] = []
            self._step_stats: dict[str, Any] | None = None

        # -------------------------------------------------------------- rollout batch

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._rewards_per_func = rewards_per_func  # every process's rows (TRL gathers them)
            return rewards_per_func

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if self.model.training:
                batch = self._annotate(batch)
            return batch

        def _annotate(self, batch: dict[str, Any]) -> dict[str, Any]:
            """The rollout batch with each row's place, reward and sampling entropy (and clipbench's
            advantages, when asked), and the step's statistics for metrics.jsonl."""
            rows = batch["completion_ids"].size(0)
            start = self.accelerator.process_index * rows  # TRL's process_slice
            local = slice(start, start + rows)
            weights = self.reward_weights.to(self._rewards_per_func.device)
            rewards = (
                (self._rewards_per_func * weights.unsqueeze(0)).nansum(dim=1).double()
            )  # every process's
            mask = loss_mask(batch)
            batch = dict(batch)
            if self.advantage is not None:
                estimator, eps = self.advantage
                advantages = compute_advantages(rewards.view(-1, self.num_generations).cpu(), estimator, eps)
                batch["advantages"] = advantages.view(-1)[local].to(batch["advantages"])
            with torch.no_grad():
                _, entropies, _ = self._logps(self.model, batch, compute_entropy=True)
            per_row = (entropies * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            device = batch["completion_ids"].device
            batch[ROW_KEY] = torch.arange(start, start + rows, device=device)
            batch[REWARD_KEY] = rewards[local].to(device)
            batch[ENTROPY_KEY] = per_row.double()
            eos = torch.tensor(self.eos_token_ids, device=device)
            truncated = ~torch.isin(batch["completion_ids"], eos).any(-1)
            gathered = self.accelerator.gather(
                torch.stack([mask.sum(-1).double(), truncated.double(), (entropies * mask).sum(-1).double()])
            )
            gathered = gathered.view(-1, 3, rows).permute(1, 0, 2).reshape(3, -1)  # rows in rank order
            self._step_stats = {
                "rewards": rewards.cpu().tolist(),
                "lengths": [int(v) for v in gathered[0].tolist()],
                "truncated": gathered[1].tolist(),
                "entropy_sum": float(gathered[2].sum()),
            }
            return batch

        #: Whether the log-probs come from TRL's fused LM head (`_get_per_token_logps_and_entropies`,
        #: tiles of the vocabulary, no (tokens x vocabulary) logits, float32 accumulators); None: yes,
        #: unless the model is float64, where its float32 accumulation would cap the precision at
        #: ~1e-7 and the log-softmax runs in float64 on the model's own logits instead.
        fused_logprobs: bool | None = None

        def _logps(self, model, inputs: dict[str, Any], compute_entropy: bool = False):
            """Per-token log-probs (B, T) of the completion tokens of `inputs` at the sampling
            temperature, the entropies (B, T) when asked (else None), and None (no MoE loss)."""
            if "pixel_values" in inputs:
                raise ValueError("the clipbench TRL backend takes text-only batches (pixel_values given)")
            completion_ids = inputs["completion_ids"]
            input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            fused = self.fused_logprobs
            if fused is None:
                fused = next(self.model.parameters()).dtype != torch.float64
            if fused:
                return self._get_per_token_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    completion_ids.size(1),
                    batch_size=self.args.per_device_train_batch_size,  # a rollout batch in micro-batch chunks
                    compute_entropy=compute_entropy,
                )
            keep = completion_ids.size(1)
            # Positions from each row's first real token, as generate numbers them (left padding).
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            with self.accelerator.autocast():
                logits = model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    logits_to_keep=keep + 1,
                    use_cache=False,
                ).logits
            logp_all = torch.log_softmax(logits[:, :-1] / self.temperature, dim=-1)
            logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
            entropy = None
            if compute_entropy:
                with torch.no_grad():
                    entropy = -(logp_all.exp() * logp_all).sum(-1)
            return logp, entropy, None

        # -------------------------------------------------------------- one optimizer step

        def _position(self) -> Position:
            return schedule_position(
                self._step,
                self.args.steps_per_generation,
                self.num_iterations,
                self.args.gradient_accumulation_steps,
            )

        def _prepare_inputs(self, generation_batch):
            inputs = super()._prepare_inputs(generation_batch)
            if not self.model.training:
                return inputs
            # Set by transformers' training loop (absent when training_step is called outside it).
            current = getattr(
                self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
            )
            if current != self.args.gradient_accumulation_steps:
                raise RuntimeError(
                    f"an optimizer step of {current} micro-batches, not "
                    f"gradient_accumulation_steps={self.args.gradient_accumulation_steps}: the rollout batches "
                    "do not fill whole optimizer steps"
                )
            position = self._position()
            if position.first:
                self._totals = self.minibatch_totals([self._buffered_inputs[i] for i in position.window])
                self._update_sums = {}
            return {**inputs, TOTALS_KEY: self._totals}

        @torch.no_grad()
        def minibatch_totals(self, window: Sequence[dict[str, Any]]) -> BatchTotals:
            """The totals every micro-batch of an optimizer step divides by: the response tokens and
            non-empty sequences of `window` (this process's micro-batches of the step) and, for a rule
            that needs them, its minibatch statistics under the current weights (l_t = 0 where TRL
            has no old log-probs: every update on policy), each summed over every process."""
            lengths = torch.cat([loss_mask(micro).sum(-1) for micro in window]).double()
            sums = {"tokens": lengths.sum(), "sequences": (lengths > 0).sum().double()}
            if self.method.needs_minibatch_statistics:
                parts = []
                for micro in window:
                    mask = loss_mask(micro)
                    old = micro.get("old_per_token_logps")
                    if old is None:
                        logp = old = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
                    else:
                        logp = self._logps(self.model, micro)[0]
                    batch = prepare_batch(logp, old, micro["advantages"].to(logp.dtype), mask)
                    parts.append(self.method.minibatch_statistics(batch))
                sums.update({f"statistic:{k}": v for k, v in sum_statistics(parts).items()})
            names = list(sums)
            local = torch.stack([sums[k].double().cpu() for k in names]).to(self.accelerator.device)
            total = dict(zip(names, self.accelerator.reduce(local, reduction="sum").cpu(), strict=True))
            statistics = {k.split(":", 1)[1]: v for k, v in total.items() if k.startswith("statistic:")}
            return BatchTotals(total["tokens"], total["sequences"], statistics if statistics else None)

        def _compute_loss(self, model, inputs):
            logp, _, _ = self._logps(model, inputs)
            mask = loss_mask(inputs)
            old = inputs.get("old_per_token_logps")
            old = logp.detach() if old is None else old  # TRL skips them when every update is on policy
            advantages = inputs["advantages"]
            if advantages.dim() != 1:
                raise ValueError(
                    f"advantages of shape {tuple(advantages.shape)}: the rules take one per sequence"
                )
            totals = inputs.get(TOTALS_KEY)
            out = self.method.loss(logp, old, advantages.to(logp.dtype), mask, totals=totals)
            loss, kl = out.loss, None
            if self.beta != 0.0:
                tokens = None if totals is None else totals.tokens
                kl = kl_to_reference(logp, inputs["ref_per_token_logps"].to(logp.dtype), mask, tokens)
                loss = loss + self.beta * kl
            if not self.model.training:
                return loss
            self._note(inputs, out, loss, kl)
            # DDP averages the processes' gradients; the totals are the global minibatch's already.
            return loss * self.accelerator.num_processes

        def _note(self, inputs: dict[str, Any], out: LossOutput, loss: torch.Tensor, kl) -> None:
            """Add a micro-batch's loss and metrics to its update's sums, its clip records to the step's."""
            values = {**out.metrics, "loss": float(loss.detach())}
            if kl is not None:
                values["kl_ref"] = float(kl.detach())
            for key, value in values.items():
                self._update_sums[key] = self._update_sums.get(key, 0.0) + value
            if ROW_KEY in inputs:
                self._records += microbatch_records(self._position(), inputs, out)

        def _get_grad_norm(self, model, grad_norm=None):
            grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
            self._end_update(float(grad_norm))
            return grad_norm

        def _end_update(self, grad_norm: float) -> None:
            """After an update's last micro-batch: its metrics summed over the processes (each a sum
            over units divided by the global totals); after a step's last update, its records and
            metrics written."""
            names = sorted(self._update_sums)
            local = torch.tensor([self._update_sums[k] for k in names], dtype=torch.float64)
            summed = self.accelerator.reduce(local.to(self.accelerator.device), reduction="sum").cpu()
            self._update_metrics.append(
                {**dict(zip(names, summed.tolist(), strict=True)), "grad_norm": grad_norm}
            )
            cycle = self.args.steps_per_generation * self.num_iterations
            if self._step % cycle == 0:  # TRL counted the update's micro-batches already
                self._end_step(self._step // cycle - 1)

        def _end_step(self, step: int) -> None:
            if self.run_dir is not None:
                rank = self.accelerator.process_index
                frame = artifacts.clip_records_frame(
                    sorted(self._records, key=lambda r: (r["update"], r["seq"]))
                )
                artifacts.write_step_records(self.run_dir, step, frame, rank=rank)
                if self.accelerator.is_main_process:
                    line = step_metrics(step, self._step_stats, self._update_metrics)
                    with open(self.run_dir / artifacts.METRICS_FILE, "a") as f:
                        f.write(json.dumps(line, sort_keys=True) + "\n")
            self._records, self._update_metrics = [], []

        def _save_checkpoint(self, model, trial):
            """TRL's checkpoint, then (once every process has saved its part) clipbench's manifest in
            it, written last: what marks the checkpoint complete (`prepare_run_dir`)."""
            from clipbench.trainer import write_manifest

            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                write_manifest(
                    Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                )
            self.accelerator.wait_for_everyone()

        def finish(self, tokenizer, steps: int) -> Path:
            """After `train()`: the final model (HF format) and `summary.json` in `run_dir/final`,
            written by rank 0 once every process has written its records; returns that folder. The
            weights are gathered on every process first (`accelerator.get_state_dict`, a collective
            under FSDP and DeepSpeed ZeRO-3, the unwrapped model's own state under DDP), so that a
            sharded model is saved whole."""
            from clipbench.models import save_model
            from clipbench.provenance import atomic_write_json

            final = self.run_dir / artifacts.FINAL_DIR
            self.accelerator.wait_for_everyone()
            state_dict = self.accelerator.get_state_dict(self.model)
            if self.accelerator.is_main_process:
                found = list(artifacts.step_records_files(self.run_dir))
                if found != list(range(steps)):
                    raise RuntimeError(f"{self.run_dir}: clip records of steps {found}, not 0..{steps - 1}")
                model = self.accelerator.unwrap_model(self.model)
                save_model(
                    model,
                    tokenizer,
                    final,
                    extra={"steps_done": steps, "method": self.method.name},
                    state_dict=state_dict,
                )
                lines = (self.run_dir / artifacts.METRICS_FILE).read_text().splitlines()
                summary = {
                    "method": self.method.name,
                    "hparams": self.method.hparams(),
                    "backend": "trl",
                    "processes": self.accelerator.num_processes,
                    "steps": steps,
                    "last": json.loads(lines[-1]),
                    "records": len(artifacts.read_clip_records(self.run_dir)),
                }
                atomic_write_json(final / artifacts.FINAL_SUMMARY_FILE, summary)
            self.accelerator.wait_for_everyone()
            return final

    return ClipbenchGRPOTrainer


# ---------------------------------------------------------------------------- a clipbench run on TRL


def trl_arguments(cfg, output_dir: str | Path):
    """TRL's GRPOConfig for a clipbench TrainConfig `cfg` (validated: `clipbench.config.check_run`
    refuses what the backend does not take) on `cfg.processes` processes: one TRL rollout batch of
    P x G completions per RL step, `M` minibatches (steps_per_generation) x `E` epochs
    (num_iterations), one optimizer step per minibatch (gradient accumulation 1), the minibatch
    split evenly over the processes; the optimizer, clipping, sampling and KL weight of `cfg`."""
    from trl import GRPOConfig

    r, o = cfg.rollout, cfg.optim
    batch = r.prompts_per_step * r.samples_per_prompt
    return GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=cfg.device == "cpu",
        bf16=cfg.dtype == "bfloat16",
        fp16=False,
        seed=cfg.seed,
        max_steps=cfg.steps * o.minibatches * o.epochs,
        per_device_train_batch_size=batch // (o.minibatches * cfg.processes),
        gradient_accumulation_steps=1,
        steps_per_generation=o.minibatches,
        num_iterations=o.epochs,
        num_generations=r.samples_per_prompt,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=0,
        beta=cfg.kl_beta,
        scale_rewards="group",  # replaced by clipbench's estimator (ClipbenchGRPOTrainer's `advantage`)
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        max_grad_norm=o.grad_clip,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",
        gradient_checkpointing=o.gradient_checkpointing,
        # A checkpoint every checkpoint_every RL steps (at a rollout batch's end), the newest
        # keep_checkpoints (>= 2: the newest may be cut by a kill before its manifest, written by
        # ClipbenchGRPOTrainer._save_checkpoint after TRL has deleted the older ones).
        save_strategy="steps",
        save_steps=cfg.checkpoint_every * updates_per_step(cfg),
        save_total_limit=cfg.keep_checkpoints,
        report_to="none",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every parameter gets a gradient: no extra autograd traversal
        shuffle_dataset=False,  # the prompts come in clipbench's order (prompt_indices)
    )


def updates_per_step(cfg) -> int:
    """Optimizer steps (TRL's global steps) per RL step of TrainConfig `cfg`: minibatches x epochs."""
    return cfg.optim.minibatches * cfg.optim.epochs


def checkpoint_updates(checkpoint: Path) -> int | None:
    """The optimizer steps of TRL checkpoint folder `checkpoint-N` (N), None for another name."""
    suffix = checkpoint.name.removeprefix("checkpoint-")
    return int(suffix) if suffix != checkpoint.name and suffix.isdigit() else None


def checkpoint_dirs(run_dir: Path) -> dict[int, Path]:
    """TRL's checkpoints of the run in `run_dir` by their optimizer steps (`trl/checkpoint-N`)."""
    found = {
        checkpoint_updates(path): path for path in (run_dir / TRL_DIR).glob("checkpoint-*") if path.is_dir()
    }
    return dict(sorted((n, path) for n, path in found.items() if n is not None))


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a TRL run in `run_dir` resumes from: the newest with clipbench's manifest
    (`prepare_run_dir` has removed any newer one and checked this one); None: it starts over."""
    from clipbench.trainer import MANIFEST

    complete = [path for path in checkpoint_dirs(run_dir).values() if (path / MANIFEST).is_file()]
    return complete[-1] if complete else None


def resume_micro_step(checkpoint: Path | None, accumulation: int) -> int:
    """TRL's micro-batch counter (`_step`, from which the backend reads the RL step, `Position`) for
    a run resumed from `checkpoint`: its optimizer steps x gradient accumulation (0: a new run).
    TRL's own training loop skips that many batches and restores the RNG states, but counts `_step`
    from 0."""
    return 0 if checkpoint is None else checkpoint_updates(checkpoint) * accumulation


def resume_point(checkpoints: dict[int, Path], per_step: int, intact: Callable[[Path], bool]) -> int | None:
    """The optimizer steps of the checkpoint to resume from, among `checkpoints` (optimizer steps ->
    folder): the newest that ends an RL step (`per_step` optimizer steps each) and is `intact`; None:
    none is. Older ones are not checked."""
    for updates in sorted(checkpoints, reverse=True):
        if updates % per_step == 0 and intact(checkpoints[updates]):
            return updates
    return None


def prepare_run_dir(run_dir: Path, config: dict[str, Any]) -> int:
    """Make `run_dir` ready for a TRL run of `config` (a TrainConfig dict); returns the RL steps
    already done. A new or empty folder as it is (0). One left by an interrupted run of the same
    config: resumed from its newest intact checkpoint (one whose manifest matches its files; newer,
    incomplete or damaged ones are removed), the steps after it dropped from metrics.jsonl and the
    clip records (`clipbench.trainer.truncate_run_logs`); without one, emptied of what the run wrote
    (0). RunDirError naming the folder when it holds a finished run, or a run of another config."""
    import shutil

    from clipbench.config import load_config, load_yaml
    from clipbench.errors import RunDirError
    from clipbench.provenance import config_hash
    from clipbench.trainer import MANIFEST, checkpoint_problem, truncate_run_logs

    saved = run_dir / "config.yaml"
    if saved.exists():
        previous = config_hash(load_yaml(saved.read_text()))
        if previous != config_hash(config):
            raise RunDirError(
                f"{run_dir} holds a run with another config (hash {previous} != {config_hash(config)}); "
                "use a new run directory or delete it"
            )
    if artifacts.run_is_finished(run_dir):
        raise RunDirError(f"{run_dir}: holds a finished run; use a new run directory or delete it")
    per_step = updates_per_step(load_config(config))
    checkpoints = checkpoint_dirs(run_dir)
    resume = resume_point(
        checkpoints, per_step, lambda path: (path / MANIFEST).is_file() and checkpoint_problem(path) is None
    )
    for updates, path in checkpoints.items():
        if resume is None or updates > resume:
            shutil.rmtree(path)  # cut by a kill before its manifest, damaged since, or off a step's end
    if saved.exists() and resume is not None:
        done = resume // per_step
        truncate_run_logs(run_dir, done)
        return done
    for name in (artifacts.METRICS_FILE, artifacts.RECORDS_DIR, artifacts.FINAL_DIR, TRL_DIR):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return 0


def train_trl(
    config, run_dir: str | Path, reward: Callable[[list[str], list[str]], list[float]] | None = None
) -> Path:
    """Train one clipbench run (`config`: a TrainConfig with `backend: trl`, a dict or a YAML path)
    with TRL's GRPOTrainer into `run_dir`, as each of the `processes` processes `accelerate launch`
    starts (one: this process alone), then end their process group; returns `run_dir/final`. An
    interrupted run resumes from its newest intact checkpoint (`prepare_run_dir`).
    `reward(completions, answers)`: the rewards of a batch (default: 1 for what the verifier
    accepts, else 0)."""
    require_trl()
    import yaml
    from accelerate import PartialState
    from datasets import Dataset

    from clipbench import benchmarks
    from clipbench.config import ConfigError, TrainConfig, load_config, validate
    from clipbench.models import load_model
    from clipbench.provenance import atomic_write_json, atomic_write_text, package_versions, provenance
    from clipbench.trainer import prompt_indices, training_prompts

    cfg = validate(config if isinstance(config, TrainConfig) else load_config(config))
    if cfg.backend != "trl":
        raise ConfigError(
            f"backend: {cfg.backend!r}; train_trl trains backend 'trl' runs (clipbench.trainer the others)"
        )
    run_dir = Path(run_dir)
    method = cfg.build_method()
    state = PartialState(cpu=cfg.device == "cpu")
    if state.num_processes != cfg.processes:
        raise ConfigError(
            f"processes: {cfg.processes}, but {state.num_processes} process(es) were started; start it with "
            f"accelerate launch --config_file workflows/accelerate/cpu.yaml --num_processes {cfg.processes} "
            "-m clipbench.cli train ... (or another config of workflows/accelerate/; --cpu starts one process)"
        )
    if state.is_main_process:
        prepare_run_dir(run_dir, cfg.to_dict())
    state.wait_for_everyone()
    model, tokenizer = load_model(cfg.model, device="cpu")
    problems, prompts = training_prompts(cfg.data, tokenizer)
    p = cfg.rollout.prompts_per_step
    order = [i for step in range(cfg.steps) for i in prompt_indices(cfg.seed, step, p, len(problems))]
    dataset = Dataset.from_dict(
        {"prompt": [prompts[i] for i in order], "answer": [problems[i].answer for i in order]}
    )
    spec = benchmarks.get_spec(cfg.data.benchmark)

    def verified(completions, answers):
        return [
            1.0 if v.correct else 0.0
            for v in benchmarks.verify(completions, answers, fallbacks=spec.fallbacks)
        ]

    score = verified if reward is None else reward

    def correct(prompts, completions, answer, **_):
        return score(completions, answer)

    trainer = trainer_class()(
        model=model,
        reward_funcs=correct,
        args=trl_arguments(cfg, run_dir / TRL_DIR),
        train_dataset=dataset,
        processing_class=tokenizer,
        method=method,
        run_dir=run_dir,
        advantage=(cfg.advantage.estimator, cfg.advantage.eps),
    )
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        record = provenance(cfg.to_dict(), seed=cfg.seed)
        record["backend"] = {
            "name": "trl",
            "processes": state.num_processes,
            # how accelerate started the processes (the study's launch.accelerate_config, clipbench.launch)
            "distributed_type": str(trainer.accelerator.distributed_type.value),
            "mixed_precision": str(trainer.accelerator.mixed_precision),
            "versions": package_versions(("trl", "accelerate")),
        }
        atomic_write_json(run_dir / "provenance.json", record)
    state.wait_for_everyone()
    checkpoint = resume_checkpoint(run_dir)  # every process: the one prepare_run_dir kept
    trainer._step = resume_micro_step(checkpoint, trainer.args.gradient_accumulation_steps)
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    final = trainer.finish(tokenizer, cfg.steps)
    # End the process group (gloo or NCCL) before the process exits: left to the interpreter's exit,
    # gloo's threads sometimes abort it ("terminate called without an active exception", SIGABRT),
    # which fails a finished train job (seen once in 18 two-process launches here).
    state.destroy_process_group()
    return final


__all__ = [
    "BackendMissing",
    "ENTROPY_KEY",
    "REWARD_KEY",
    "ROW_KEY",
    "TOTALS_KEY",
    "Position",
    "check_arguments",
    "checkpoint_dirs",
    "checkpoint_updates",
    "loss_mask",
    "microbatch_records",
    "prepare_run_dir",
    "require_trl",
    "resume_checkpoint",
    "resume_micro_step",
    "resume_point",
    "schedule_position",
    "step_metrics",
    "trainer_class",
    "train_trl",
    "trl_arguments",
    "updates_per_step",
]
