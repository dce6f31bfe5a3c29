"""The native RL trainer: one process, CPU or one GPU, any registered clipping rule.

Per step: P prompts x G samples from the rollout engine -> verifier rewards -> group-relative
advantages -> the rollout batch split into M minibatches (a seeded permutation), old log-probs
recomputed by the policy per minibatch at the sampling temperature -> E epochs over the M
minibatches, one `method.loss` + AdamW step each -> metrics and per-sequence clip records.

Why M * E > 1: the first update of a step runs at ratio exactly 1 (old log-probs come from the
same weights, on the same minibatch tensors: they are that update's own log-probs, detached, so
the first minibatch needs no separate no-grad forward), so with one minibatch and one epoch no
rule could ever clip; every later update is off-policy by the updates before it.

Matched runs: every method starts from the same base checkpoint, sees the same prompts in the
same order (a permutation seeded by `seed` alone), and samples with seeds derived from
(seed, step) only.

Run directory:
  config.yaml, provenance.json    the resolved config; seed, versions, commit
  metrics.jsonl                   one line per step (deterministic: identical across reruns on CPU)
  perf.jsonl                      seconds and tokens/s per phase per step (not deterministic)
  records/step_NNNNNN.parquet     per sequence and update: step, update, length, S, advantage,
                                  seq_clip, seq_out, reward, entropy (the sequence's mean per-token
                                  entropy of the policy's softmax at the sampling temperature,
                                  before top_p); what clipbench.fairness reads
  checkpoints/step_NNNNNN/        model, optimizer, RNG states after NNNNNN steps; `latest` names
                                  the newest complete one. A restarted run resumes from it.
  final/                          the trained model (HF format) and summary.json when done
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

import benchmarks
from clipbench.advantages import compute_advantages
from clipbench.config import ConfigError, DataConfig, TrainConfig, load_yaml, validate
from clipbench.models import load_model, save_model
from clipbench.provenance import atomic_write_json, atomic_write_text, config_hash, provenance
from clipbench.rollout import HFEngine, Samples, VLLMEngine, collate, derive_seed, token_logprobs
from methods import prepare_batch

CHECKPOINTS = "checkpoints"
LATEST = "latest"


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss or gradient); the message says where and why."""


def prompt_indices(seed: int, step: int, per_step: int, n_problems: int) -> list[int]:
    """The problems of a step: consecutive slices of seeded permutations (one per pass over the
    data), so every method sees the same prompts in the same order."""
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, n_problems)
        perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED, epoch])).permutation(n_problems)
        out.append(int(perm[offset]))
    return out


def training_prompts(data: DataConfig, tokenizer) -> tuple[list, list[str]]:
    """The training problems of `data` and their prompts, as the trainer feeds them to the engine."""
    spec = benchmarks.get_spec(data.benchmark)
    problems = benchmarks.load(
        data.benchmark,
        data_dir=data.data_dir,
        split=data.split,
        n=data.n,
        **({"seed": data.seed} if spec.generated else {}),
    )
    prompts = [
        benchmarks.build_prompt(p, tokenizer, style=data.prompt_style, template=spec.prompt_template)
        for p in problems
    ]
    return problems, prompts


def _p90(values: list[int]) -> float:
    return float(np.percentile(values, 90)) if values else 0.0


@dataclass
class Phase:
    seconds: float = 0.0
    tokens: int = 0


class Trainer:
    """Trains one method from `config.model` into `run_dir` (resuming when it holds a checkpoint)."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, progress: bool = True):
        self.config = validate(config)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.method = config.build_method()
        self.spec = benchmarks.get_spec(config.data.benchmark)

    # ------------------------------------------------------------------ setup and resume

    def _check_run_dir(self) -> None:
        saved = self.run_dir / "config.yaml"
        if saved.exists():
            previous = load_yaml(saved.read_text())
            if config_hash(previous) != config_hash(self.config.to_dict()):
                raise ConfigError(
                    f"{self.run_dir} holds a run with another config (hash {config_hash(previous)} != "
                    f"{config_hash(self.config.to_dict())}); use a new run directory or delete it"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, yaml.safe_dump(self.config.to_dict(), sort_keys=True))
        atomic_write_json(
            self.run_dir / "provenance.json", provenance(self.config.to_dict(), seed=self.config.seed)
        )

    def _latest_checkpoint(self) -> Path | None:
        pointer = self.run_dir / CHECKPOINTS / LATEST
        if not pointer.exists():
            return None
        path = self.run_dir / CHECKPOINTS / pointer.read_text().strip()
        return path if (path / "trainer_state.json").exists() else None

    def _setup(self) -> int:
        """Load the policy (base or checkpoint), optimizer and data; return the steps already done."""
        cfg = self.config
        self._check_run_dir()
        checkpoint = self._latest_checkpoint()
        source = checkpoint / "model" if checkpoint else cfg.model
        self.model, self.tokenizer = load_model(source, device=cfg.device)
        self.model.eval()  # no dropout: the update forward must match the old-log-prob forward
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            weight_decay=cfg.optim.weight_decay,
            fused=True,  # one kernel over all parameters (CPU and CUDA): ~4x faster than the loop
        )
        self.reference = None
        if cfg.kl_beta > 0:
            self.reference, _ = load_model(cfg.model, device=cfg.device)
            self.reference.requires_grad_(False)
        done = 0
        if checkpoint:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            done = state["steps_done"]
            self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
            torch.set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
        self._truncate_logs(done)
        self.problems, self.prompts = training_prompts(cfg.data, self.tokenizer)
        self.engine = self._make_engine(source)
        return done

    def _make_engine(self, source: Path | str):
        r = self.config.rollout
        if r.engine == "vllm":
            return VLLMEngine(
                str(source),
                self.tokenizer,
                temperature=r.temperature,
                top_p=r.top_p,
                max_new_tokens=r.max_new_tokens,
                seed=self.config.seed,
                gpu_memory_utilization=r.gpu_memory_utilization,
            )
        return HFEngine(
            self.model,
            self.tokenizer,
            temperature=r.temperature,
            top_p=r.top_p,
            max_new_tokens=r.max_new_tokens,
        )

    def _truncate_logs(self, done: int) -> None:
        """Drop what steps >= `done` wrote before an interruption (they are redone)."""
        for name in ("metrics.jsonl", "perf.jsonl"):
            path = self.run_dir / name
            if not path.exists():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: it and anything after are redone
                if row["step"] < done:
                    kept.append(line)
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        records = self.run_dir / "records"
        if records.exists():
            for part in records.glob("step_*.parquet"):
                if int(part.stem.split("_")[1]) >= done:
                    part.unlink()
            for leftover in records.glob(".*"):
                leftover.unlink()
        shutil.rmtree(self.run_dir / "final", ignore_errors=True)

    # ------------------------------------------------------------------ one step

    def _rollout(self, step: int) -> tuple[Samples, list[str]]:
        cfg = self.config
        idx = prompt_indices(cfg.seed, step, cfg.rollout.prompts_per_step, len(self.problems))
        g = cfg.rollout.samples_per_prompt
        samples = self.engine.generate([self.prompts[i] for i in idx], g, derive_seed(cfg.seed, step))
        return samples, [self.problems[i].answer for i in idx for _ in range(g)]

    def _score(self, samples: Samples, answers: list[str]) -> tuple[torch.Tensor, dict[str, int]]:
        """Reward 1 for a completion the verifier accepts, else 0 (timeouts and errors included)."""
        verdicts = benchmarks.verify(samples.texts, answers, fallbacks=self.spec.fallbacks)
        rewards = torch.tensor([1.0 if v.correct else 0.0 for v in verdicts], dtype=torch.float64)
        return rewards, benchmarks.count_statuses(verdicts)

    def _check_finite(self, step: int, update: int, what: str, value: torch.Tensor, debug) -> None:
        """Stop on a non-finite `value`, saving `debug()` (built only then: no copies per update)."""
        if torch.isfinite(value).all():
            return
        dump = self.run_dir / f"debug_step{step:06d}_update{update}.pt"
        torch.save({**debug(), "what": what, "value": value.detach().cpu()}, dump)
        raise TrainingError(
            f"step {step}, update {update}, method {self.method.name}: non-finite {what} ({value.item()}); "
            f"the minibatch and its statistics are saved in {dump}"
        )

    def _train_step(self, step: int) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
        cfg = self.config
        timing = defaultdict(Phase)
        start = time.perf_counter()
        samples, answers = self._rollout(step)
        n_new_tokens = sum(len(c) for c in samples.completion_ids)
        timing["generate"] = Phase(time.perf_counter() - start, n_new_tokens)
        t0 = time.perf_counter()
        rewards, statuses = self._score(samples, answers)
        timing["score"] = Phase(time.perf_counter() - t0, len(answers))

        p, g = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
        advantages = compute_advantages(rewards.view(p, g), cfg.advantage.estimator, cfg.advantage.eps).view(
            -1
        )
        order = torch.randperm(p * g, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, step, 1)))
        minibatches = order.view(cfg.optim.minibatches, -1).tolist()

        t0 = time.perf_counter()
        device = cfg.device
        prepared, entropy_sum, token_count, forward_tokens, all_tokens = [], 0.0, 0, 0, 0
        seq_entropy = torch.zeros(p * g, dtype=torch.float64)  # per sequence, of the sampling policy

        def note_entropy(rows: list[int], entropy: torch.Tensor, mask: torch.Tensor) -> float:
            """Record each row's mean per-token entropy; return the sum over response tokens."""
            per_row = (entropy * mask).sum(1) / mask.sum(1).clamp(min=1)
            seq_entropy[rows] = per_row.double().cpu()
            return float(entropy[mask].sum())

        with torch.no_grad():
            for mb, rows in enumerate(minibatches):
                batch = collate(
                    [samples.prompt_ids[i] for i in rows],
                    [samples.completion_ids[i] for i in rows],
                    self.tokenizer.pad_token_id,
                ).to(device)
                batch_tokens = int(batch.attention_mask.sum())
                all_tokens += batch_tokens
                old_logp = None  # the first update's own forward gives them (same weights, same tensors)
                if mb > 0:
                    old_logp, entropy = token_logprobs(
                        self.model, batch, cfg.rollout.temperature, with_entropy=True
                    )
                    entropy_sum += note_entropy(rows, entropy, batch.response_mask)
                    forward_tokens += batch_tokens
                token_count += int(batch.response_mask.sum())
                ref_logp = (
                    token_logprobs(self.reference, batch, cfg.rollout.temperature)[0]
                    if self.reference is not None
                    else None
                )
                prepared.append([rows, batch, old_logp, ref_logp])
        timing["logprob"] = Phase(time.perf_counter() - t0, forward_tokens)

        t0 = time.perf_counter()
        update_metrics: list[dict[str, float]] = []
        records = []
        update = 0
        for epoch in range(cfg.optim.epochs):
            for mb, (rows, batch, old_logp, ref_logp) in enumerate(prepared):
                logp, entropy = token_logprobs(
                    self.model, batch, cfg.rollout.temperature, with_entropy=old_logp is None
                )
                if old_logp is None:
                    # The first update runs on the weights that sampled: old log-probs are its own,
                    # detached, so its ratio is exactly 1 without a second forward pass.
                    old_logp = prepared[mb][2] = logp.detach()
                    entropy_sum += note_entropy(rows, entropy, batch.response_mask)
                adv = advantages[rows].to(device=device, dtype=old_logp.dtype)
                out = self.method.loss(logp, old_logp, adv, batch.response_mask)
                loss = out.loss
                extra = {}
                if ref_logp is not None:
                    delta = torch.where(batch.response_mask, ref_logp - logp, torch.zeros_like(logp))
                    k3 = torch.exp(delta) - delta - 1
                    kl = (k3 * batch.response_mask).sum() / batch.response_mask.sum().clamp(min=1)
                    loss = loss + cfg.kl_beta * kl
                    extra["kl_ref"] = kl.item()

                def debug(logp=logp, old_logp=old_logp, adv=adv, batch=batch, rows=rows):
                    return {
                        "rows": rows,
                        "logp": logp.detach().cpu(),
                        "old_logp": old_logp.cpu(),
                        "advantages": adv.cpu(),
                        "mask": batch.response_mask.cpu(),
                    }

                self._check_finite(step, update, "loss", loss.detach(), debug)
                loss.backward()
                max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                self._check_finite(step, update, "gradient norm", grad_norm, debug)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                update_metrics.append(
                    {**out.metrics, **extra, "loss": loss.item(), "grad_norm": grad_norm.item()}
                )
                # S and L exactly as the rule saw them (methods.prepare_batch).
                seen = prepare_batch(logp.detach(), old_logp, adv, batch.response_mask)
                columns = zip(
                    rows,
                    seen.lengths.long().tolist(),
                    seen.seq_log_ratio.tolist(),
                    adv.tolist(),
                    out.seq_clip.tolist(),
                    out.seq_out.tolist(),
                    strict=True,
                )
                for row, length, seq_s, a, clip, out_of_band in columns:
                    records.append(
                        {
                            "step": step,
                            "update": update,
                            "epoch": epoch,
                            "minibatch": mb,
                            "seq": row,
                            "length": length,
                            "S": seq_s,
                            "advantage": a,
                            "reward": float(rewards[row]),
                            "entropy": float(seq_entropy[row]),
                            "seq_clip": clip,
                            "seq_out": out_of_band,
                        }
                    )
                update += 1
        timing["update"] = Phase(time.perf_counter() - t0, cfg.optim.epochs * all_tokens)

        lengths = [len(c) for c in samples.completion_ids]
        metrics = {
            "step": step,
            "reward_mean": float(rewards.mean()),
            "accuracy": float(rewards.mean()),
            "response_length_mean": float(np.mean(lengths)),
            "response_length_p90": _p90(lengths),
            "response_length_max": int(max(lengths)),
            "truncated_frac": 1.0 - float(np.mean(samples.finished)),
            "entropy": entropy_sum / max(token_count, 1),
            **{f"verifier_{k}": v for k, v in sorted(statuses.items())},
            **{k: float(np.mean([m[k] for m in update_metrics])) for k in update_metrics[0]},
            "updates": update,
        }
        perf = {"step": step, **{f"{k}_s": v.seconds for k, v in timing.items()}}
        perf.update(
            {
                f"{k}_tokens_per_s": v.tokens / v.seconds
                for k, v in timing.items()
                if v.seconds > 0 and v.tokens
            }
        )
        perf["step_s"] = time.perf_counter() - start
        return metrics, perf, pd.DataFrame(records)

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, done: int) -> None:
        root = self.run_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        name = f"step_{done:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            save_model(
                self.model,
                self.tokenizer,
                tmp / "model",
                extra={"steps_done": done, "method": self.method.name},
            )
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            # Sampling and minibatch seeds derive from (seed, step); the global torch RNG is saved
            # only so that nothing else could make a resumed run differ.
            torch.save(torch.get_rng_state(), tmp / "rng.pt")
            atomic_write_json(
                tmp / "trainer_state.json",
                {"steps_done": done, "config_hash": config_hash(self.config.to_dict())},
            )
            shutil.rmtree(root / name, ignore_errors=True)
            os.replace(tmp, root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_text(root / LATEST, name + "\n")
        kept = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in kept[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ the loop

    def run(self) -> Path:
        """Train to `config.steps` (resuming if possible); returns the final model directory."""
        from tqdm import tqdm

        cfg = self.config
        done = self._setup()
        records_dir = self.run_dir / "records"
        records_dir.mkdir(exist_ok=True)
        bar = tqdm(
            total=cfg.steps,
            initial=done,
            desc=f"{self.method.name} seed {cfg.seed}",
            disable=not self.progress,
        )
        for step in range(done, cfg.steps):
            metrics, perf, records = self._train_step(step)
            self.engine.sync(self.model)
            part = records_dir / f"step_{step:06d}.parquet"
            tmp = records_dir / f".{part.name}.tmp"
            records.to_parquet(tmp, index=False)
            os.replace(tmp, part)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics, sort_keys=True) + "\n")
            with open(self.run_dir / "perf.jsonl", "a") as f:
                f.write(json.dumps(perf, sort_keys=True) + "\n")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                self._save_checkpoint(step + 1)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward_mean']:.3f}",
                clip=f"{metrics['clip_frac']:.3f}",
                tok_s=f"{perf.get('generate_tokens_per_s', 0):.0f}",
            )
        bar.close()
        return self._finish()

    def _finish(self) -> Path:
        final = self.run_dir / "final"
        save_model(
            self.model,
            self.tokenizer,
            final,
            extra={"steps_done": self.config.steps, "method": self.method.name},
        )
        records = pd.read_parquet(self.run_dir / "records")
        records.to_parquet(final / "clip_records.parquet", index=False)
        lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        summary = {
            "method": self.method.name,
            "hparams": self.method.hparams(),
            "seed": self.config.seed,
            "steps": self.config.steps,
            "last": json.loads(lines[-1]),
            "records": len(records),
        }
        atomic_write_json(final / "summary.json", summary)
        return final


def train(config: TrainConfig | dict | str | Path, run_dir: str | Path, *, progress: bool = True) -> Path:
    """Train (or resume) one run; `config` may be a TrainConfig, a dict or a YAML path."""
    from clipbench.config import load_config

    if not isinstance(config, TrainConfig):
        config = load_config(config)
    trainer = Trainer(config, run_dir, progress=progress)
    try:
        return trainer.run()
    finally:
        if hasattr(getattr(trainer, "engine", None), "close"):
            trainer.engine.close()  # vLLM's engine processes


__all__ = ["Trainer", "TrainingError", "derive_seed", "prompt_indices", "train", "training_prompts"]
