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
  records/step_NNNNNN.parquet     the clip records, per sequence and update: step, update, length,
                                  S, advantage, seq_clip, seq_out, reward, entropy (the sequence's
                                  mean per-token entropy of the policy's softmax at the sampling
                                  temperature, before top_p) and the prefix sums S_8, S_16, ... of
                                  the same l_t as S; what clipbench.fairness reads (the format:
                                  clipbench.artifacts.CLIP_RECORD_COLUMNS)
  checkpoints/step_NNNNNN/        model, optimizer, RNG states after NNNNNN steps and manifest.json
                                  (size and sha256 of every file); `latest` names the newest complete
                                  one. A restarted run resumes from it (verified against its
                                  manifest; a damaged one falls back to the previous intact one).
  final/                          the trained model (HF format) and summary.json when done
  run.lock                        held (flock) by the process that trains into the directory, with
                                  its pid and host; a second run into the same directory is refused

Starting a run: the config is validated, the run directory's path checked and its lock taken,
stale temporary files of an interrupted run removed, the checkpoint to resume from chosen and
verified, the model loaded; only then is the directory claimed (config.yaml, provenance.json
written, later steps' logs dropped). A start that fails before that leaves the directory as it
was (a directory it created is removed), so rerunning with a corrected config just works.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from clipbench import artifacts, benchmarks, fairness
from clipbench.advantages import compute_advantages
from clipbench.config import (
    ConfigError,
    DataConfig,
    TrainConfig,
    check_device,
    load_config,
    load_yaml,
    validate,
)
from clipbench.engines import HFEngine, Samples, VLLMEngine, derive_seed
from clipbench.errors import RunDirError
from clipbench.logprobs import TokenBatch, collate, enable_gradient_checkpointing, token_logprobs
from clipbench.methods import BatchTotals, LossOutput, combine_outputs, prepare_batch, sum_statistics
from clipbench.models import ModelLoadError, check_model_dir, file_sha256, load_model, save_model
from clipbench.precision import set_precision
from clipbench.provenance import atomic_write_json, atomic_write_text, config_hash, provenance, replace_dir
from clipbench.tracking import Trackers

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
LOCK_FILE = "run.lock"
STEP_DIR = re.compile(r"step_(\d{6,})")


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss or gradient); the message says where and why."""


class RunLockedError(RunDirError):
    """Another process trains into the run directory (it holds `run.lock`)."""


class CheckpointError(RunDirError):
    """The checkpoints cannot be resumed from (a bad `latest` pointer, nothing intact left)."""


# ---------------------------------------------------------------------------- the run lock

_HELD_LOCKS: set[int] = set()  # file descriptors of the locks this process holds


def _forget_locks_in_child() -> None:
    # A forked child shares the parent's lock (flock belongs to the open file, which fork
    # duplicates): were the child to outlive a killed parent, the directory would stay locked.
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)  # drops the child's reference only; the parent keeps its lock
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


class RunLock:
    """An exclusive `flock` on RUN_DIR/run.lock, holding the holder's pid, host and start time.

    `acquire` refuses at once (RunLockedError naming the holder and the directory) when another
    process holds it. The kernel releases a flock when its process dies, SIGKILL included, so a
    lock file left by a dead process never blocks. `release` removes the file, then unlocks."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    @staticmethod
    def holder(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                info = self.holder(self.path)
                who = (
                    f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('started', '?')}"
                    if info
                    else "a process that has not yet written its pid"
                )
                raise RunLockedError(
                    f"{self.run_dir}: another clipbench run is training into this directory ({who}; lock "
                    f"file {self.path}); wait for it to finish or stop it, or train into another --out"
                ) from None
            except OSError as err:  # a filesystem without flock (e.g. Lustre mounted without -o flock)
                os.close(fd)
                print(
                    f"clipbench train: warning: cannot lock {self.path} ({err.strerror}): this filesystem "
                    "does not support flock, so a second run into the same directory would not be refused",
                    file=sys.stderr,
                    flush=True,
                )
                return self
            try:
                current = os.stat(self.path)
                locked = os.fstat(fd)
                same = (current.st_ino, current.st_dev) == (locked.st_ino, locked.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a releasing holder removed the file we opened: lock the new one
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd
        _HELD_LOCKS.add(fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD_LOCKS.discard(fd)
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiter re-checks the inode
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- checkpoint manifests


def write_manifest(directory: Path) -> Path:
    """Write DIRECTORY/manifest.json: the size and sha256 of every other file below it."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    return atomic_write_json(directory / MANIFEST, {"files": files})


def checkpoint_problem(directory: Path) -> str | None:
    """Why checkpoint `directory` cannot be resumed from (a file missing, of the wrong size or
    content against its manifest), or None when it is intact. A checkpoint written before
    manifests existed is checked for its files and its model's headers only."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        required = ("trainer_state.json", "optimizer.pt", "rng.pt", "model/config.json")
        missing = [name for name in required if not (directory / name).is_file()]
        if missing:
            return f"no {MANIFEST} and no {', '.join(missing)}: incomplete"
        try:
            check_model_dir(directory / "model")
        except ModelLoadError as err:
            return str(err)
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} unreadable ({err})"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name}: missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name}: {size} bytes, the manifest says {expected['size']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{name}: content differs from the manifest (sha256)"
    return None


def truncate_run_logs(run_dir: Path, done: int) -> None:
    """Drop what steps >= `done` of the run in `run_dir` wrote before an interruption (they are
    redone on resume): their lines of metrics.jsonl and perf.jsonl (and a line cut by a kill, with
    anything after it), their clip records (every rank's), the records' temporaries and `final/`.
    The native trainer's and the TRL backend's resume."""
    for name in (artifacts.METRICS_FILE, "perf.jsonl"):
        path = run_dir / name
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
    for step, parts in artifacts.step_records_files(run_dir).items():
        if step >= done:
            for part in parts:
                part.unlink()
    for leftover in artifacts.records_dir(run_dir).glob(".*"):
        leftover.unlink()
    shutil.rmtree(run_dir / artifacts.FINAL_DIR, ignore_errors=True)


def _is_temporary(name: str) -> bool:
    """A file or folder an interrupted atomic write left behind (`.NAME.tmp-*` of mkdtemp,
    `.NAME.*.tmp` of atomic_write_text, `.NAME.old-*` of replace_dir)."""
    return name.startswith(".") and (".tmp" in name or ".old-" in name)


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


def _total(values: list[float]) -> float:
    """The sum of micro-batch values; a single value as it is (a sum would turn -0.0 into 0.0)."""
    return values[0] if len(values) == 1 else float(sum(values))


def _p90(values: list[int]) -> float:
    return float(np.percentile(values, 90)) if values else 0.0


@dataclass
class Phase:
    seconds: float = 0.0
    tokens: int = 0

    @classmethod
    def since(cls, start: float, tokens: int) -> Phase:
        """The phase that began at `start` (time.perf_counter) and ends now, over `tokens` tokens."""
        return cls(time.perf_counter() - start, tokens)


def split_by_tokens(sizes: list[int], budget: int | None) -> list[list[int]]:
    """The positions 0..len(sizes)-1 cut into contiguous runs (order kept) whose `sizes` sum to at
    most `budget`, each run as long as the budget allows; a single size over the budget is a run
    alone. budget None: one run of everything."""
    if budget is None:
        return [list(range(len(sizes)))]
    runs: list[list[int]] = []
    used = 0
    for position, size in enumerate(sizes):
        if runs and used + size <= budget:
            runs[-1].append(position)
            used += size
        else:
            runs.append([position])
            used = size
    return runs


@dataclass
class _Microbatch:
    """What one forward (and backward) sees: a contiguous run of a minibatch's rows, collated
    (`tokens`: packed prompt + completion tokens), their old log-probs (None until the first
    update of the first minibatch gives them) and the KL reference's (None without a reference)."""

    rows: list[int]
    batch: TokenBatch
    tokens: int
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None


@dataclass
class _Minibatch:
    """One minibatch of a step (one optimizer step): its rows of the rollout batch, in the order of
    its micro-batches (`optim.max_tokens_per_microbatch`; one micro-batch of every row without it)."""

    rows: list[int]
    micro: list[_Microbatch]

    @property
    def tokens(self) -> int:
        return sum(m.tokens for m in self.micro)

    @property
    def on_policy(self) -> bool:
        """No old log-probs yet: the first update of the first minibatch, on the sampling weights."""
        return self.micro[0].old_logp is None

    def response_lengths(self) -> torch.Tensor:
        return torch.cat([m.batch.response_mask.sum(-1) for m in self.micro])


class _EntropyTally:
    """The sampling policy's entropy over one step's responses: each sequence's mean per-token
    entropy (`per_sequence`, for the records) and the sum over all response tokens (`total`,
    over `tokens` response tokens, for the step's metric)."""

    def __init__(self, sequences: int):
        self.per_sequence = torch.zeros(sequences, dtype=torch.float64)
        self.total = 0.0
        self.tokens = 0

    def note(self, rows: list[int], entropy: torch.Tensor, mask: torch.Tensor) -> None:
        """Record the per-token `entropy` (B, T - 1) of the sequences `rows`, response tokens `mask`."""
        per_row = (entropy * mask).sum(1) / mask.sum(1).clamp(min=1)
        self.per_sequence[rows] = per_row.double().cpu()
        self.total += float(entropy[mask].sum())

    def mean(self) -> float:
        return self.total / max(self.tokens, 1)


def kl_to_reference(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """The KL penalty: the mean over the response tokens (`mask`) of Schulman's k3 estimator of
    KL(pi || pi_ref) at tokens sampled from pi. With delta = log pi_ref - log pi (`ref_logp - logp`)
    at each token, k3 = exp(delta) - delta - 1: unbiased, and >= 0 for every token (0 only where
    pi_ref = pi). The trainer adds `kl_beta` times it to the rule's loss (a penalty: minimising
    the loss pulls the policy toward the reference). For a micro-batch, `tokens` is the whole
    minibatch's number of response tokens (the mean's denominator; the mask's own count if None),
    so that micro-batches' penalties add up to the minibatch's, like the rules' losses."""
    delta = torch.where(mask, ref_logp - logp, torch.zeros_like(logp))
    k3 = torch.exp(delta) - delta - 1
    count = mask.sum() if tokens is None else tokens.to(logp.dtype)
    return (k3 * mask).sum() / count.clamp(min=1)


def _clip_records(
    step: int,
    update: int,
    epoch: int,
    minibatch: int,
    rows: list[int],
    out: LossOutput,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    entropy: torch.Tensor,
) -> list[dict[str, Any]]:
    """One clip record per sequence of an update; S, L and the prefix sums S_k exactly as the rule
    saw them: its LossOutput carries S and L, and the per-token l_t and mask whose masked
    cumulative sums are the S_k (`fairness.record_prefix_sums`)."""
    prefix = fairness.record_prefix_sums(out.log_ratio.detach().double().cpu(), out.mask.cpu())
    columns = zip(
        rows,
        out.lengths.long().tolist(),
        out.seq_log_ratio.tolist(),
        advantages.tolist(),
        out.seq_clip.tolist(),
        out.seq_out.tolist(),
        prefix,
        strict=True,
    )
    return [
        {
            "step": step,
            "update": update,
            "epoch": epoch,
            "minibatch": minibatch,
            "seq": row,
            "length": length,
            "S": seq_s,
            "advantage": a,
            "reward": float(rewards[row]),
            "entropy": float(entropy[row]),
            "seq_clip": clip,
            "seq_out": out_of_band,
            **prefix_sums,
        }
        for row, length, seq_s, a, clip, out_of_band, prefix_sums in columns
    ]


def _step_metrics(
    step: int,
    samples: Samples,
    rewards: torch.Tensor,
    statuses: dict[str, int],
    entropy: _EntropyTally,
    update_metrics: list[dict[str, float]],
) -> dict[str, Any]:
    """The step's line of metrics.jsonl: rewards, response lengths, truncation, the sampling
    policy's entropy, verifier statuses, and the mean over updates of each update metric."""
    lengths = [len(c) for c in samples.completion_ids]
    return {
        "step": step,
        "reward_mean": float(rewards.mean()),
        "accuracy": float(rewards.mean()),
        "response_length_mean": float(np.mean(lengths)),
        "response_length_p90": _p90(lengths),
        "response_length_max": int(max(lengths)),
        "truncated_frac": 1.0 - float(np.mean(samples.finished)),
        "entropy": entropy.mean(),
        **{f"verifier_{k}": v for k, v in sorted(statuses.items())},
        **{k: float(np.mean([m[k] for m in update_metrics])) for k in update_metrics[0]},
        "updates": len(update_metrics),
    }


def _perf(step: int, timing: dict[str, Phase], start: float) -> dict[str, Any]:
    """The step's line of perf.jsonl: seconds and tokens/s per phase, and the whole step's seconds."""
    perf = {"step": step, **{f"{k}_s": v.seconds for k, v in timing.items()}}
    perf.update(
        {f"{k}_tokens_per_s": v.tokens / v.seconds for k, v in timing.items() if v.seconds > 0 and v.tokens}
    )
    perf["step_s"] = time.perf_counter() - start
    return perf


#: TrainConfig fields outside the run's identity (run_hash).
NOT_IDENTITY = ("report_to",)


class Trainer:
    """Trains one method from `config.model` into `run_dir` (resuming when it holds a checkpoint)."""

    def __init__(
        self, config: TrainConfig, run_dir: str | Path, *, progress: bool = True, own_schedule: bool = False
    ):
        # own_schedule: the caller runs its own updates (clipbench.probe), so the update schedule's
        # rules (optim.minibatches, optim.epochs) are not checked; `run` is not for such a trainer.
        self.config = validate(config, schedule=not own_schedule)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.method = config.build_method()
        self.spec = benchmarks.get_spec(config.data.benchmark)
        # Checks that read only: a bad device or --out fails before anything is loaded or written.
        check_device(self.config.device)
        artifacts.check_run_dir_path(self.run_dir)
        self._lock = RunLock(self.run_dir)
        self._created_dir = False

    # ------------------------------------------------------------------ setup and resume

    @staticmethod
    def _warn(message: str) -> None:
        print(f"clipbench train: warning: {message}", file=sys.stderr, flush=True)

    def _acquire(self) -> None:
        """Create the run directory if needed and take its lock (RunLockedError if held)."""
        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()

    def _release(self, *, started: bool) -> None:
        """Release the lock; after a failed start, remove the run directory if this run created it
        (it holds nothing then)."""
        self._lock.release()
        if not started and self._created_dir:
            try:
                self.run_dir.rmdir()
            except OSError:
                pass  # not empty: another process wrote there meanwhile; leave it

    def _check_saved_config(self) -> None:
        saved = self.run_dir / "config.yaml"
        if not saved.exists():
            return
        try:
            previous = load_yaml(saved.read_text())
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise RunDirError(
                f"{saved}: unreadable ({' '.join(str(err).split())[:200]}); this is not a clipbench run "
                "directory or it is damaged: use a new run directory or delete it"
            ) from None
        # Compared with the defaults of today's fields filled in: a run saved before a field was
        # added (at its default, which keeps the old behaviour) still resumes.
        if _with_defaults(previous) != run_hash(self.config.to_dict()):
            raise ConfigError(
                f"{self.run_dir} holds a run with another config (hash {_with_defaults(previous)} != "
                f"{run_hash(self.config.to_dict())}); use a new run directory or delete it"
            )
        self._saved_config_hash = run_hash(previous)  # what its checkpoints recorded

    def _remove_temporaries(self) -> None:
        """Remove what an interrupted atomic write left (checkpoints/.step_N.tmp-*, .final.tmp-*,
        .metrics.jsonl.*.tmp, ...); safe only with the lock held (no writer is running)."""
        for folder in (self.run_dir, self.run_dir / CHECKPOINTS):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if _is_temporary(entry.name):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

    def _resume_point(self) -> tuple[Path | None, Path | None]:
        """(the checkpoint to resume from or None, the damaged `latest` it replaces or None).

        `latest` must name an existing checkpoint when there is one; a pointer that is empty or
        names a missing checkpoint, or a missing pointer beside checkpoints, is an error (never a
        silent restart from step 0). A damaged latest falls back to the newest intact older one."""
        root = self.run_dir / CHECKPOINTS
        pointer = root / LATEST
        steps = sorted(
            (p for p in root.glob("step_*") if p.is_dir() and STEP_DIR.fullmatch(p.name)),
            key=lambda p: int(p.name.split("_")[1]),
        )
        names = ", ".join(p.name for p in steps) or "none"
        how = (
            f"checkpoints on disk: {names}; to resume from one, write its name into {pointer}"
            f"{f' (e.g. echo {steps[-1].name} > {pointer})' if steps else ''}; to start over from step 0, "
            f"delete {root}"
        )
        if not pointer.exists():
            # A complete checkpoint appears only by an atomic rename, and its pointer is written
            # right after: a kill between the two (the first checkpoint) leaves no pointer.
            for candidate in reversed(steps):
                if checkpoint_problem(candidate) is None:
                    self._warn(
                        f"{pointer}: missing beside checkpoints (a run killed between writing a checkpoint "
                        f"and its pointer leaves this); resuming from the newest intact one, {candidate}"
                    )
                    return candidate, None
            if steps:
                raise CheckpointError(f"{pointer}: missing, and no checkpoint in {root} is intact; {how}")
            return None, None
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{pointer}: unreadable ({err}); {how}") from None
        if not name:
            raise CheckpointError(f"{pointer}: empty (it names the checkpoint to resume from); {how}")
        if not STEP_DIR.fullmatch(name):
            raise CheckpointError(f"{pointer}: names {name[:80]!r}, not a checkpoint (step_NNNNNN); {how}")
        latest = root / name
        if not latest.is_dir():
            raise CheckpointError(f"{pointer}: names {name}, which does not exist; {how}")
        problem = checkpoint_problem(latest)
        if problem is None:
            return latest, None
        number = int(name.split("_")[1])
        for older in reversed([p for p in steps if int(p.name.split("_")[1]) < number]):
            if checkpoint_problem(older) is None:
                self._warn(
                    f"checkpoint {latest} is damaged ({problem}); resuming from the previous intact "
                    f"checkpoint {older} instead (the steps after it are redone)"
                )
                return older, latest
        raise CheckpointError(
            f"checkpoint {latest} is damaged ({problem}) and no intact older checkpoint is left; "
            f"to start over from step 0, delete {root}"
        )

    def _load_checkpoint_state(self, checkpoint: Path) -> int:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        known = (None, run_hash(self.config.to_dict()), getattr(self, "_saved_config_hash", None))
        if state.get("config_hash") not in known:
            raise ConfigError(
                f"{checkpoint} was written by a run with another config (hash {state['config_hash']} != "
                f"{run_hash(self.config.to_dict())}); use a new run directory or delete it"
            )
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        torch.set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
        return int(state["steps_done"])

    def _claim(self, checkpoint: Path | None, damaged: Path | None) -> None:
        """Make the run directory this run's: config.yaml, provenance.json, `latest` past a damaged
        checkpoint. Called only once everything has loaded."""
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=True))
        atomic_write_json(
            self.run_dir / "provenance.json", provenance(self.config.to_dict(), seed=self.config.seed)
        )
        pointer = self.run_dir / CHECKPOINTS / LATEST
        if checkpoint is not None and (damaged is not None or not pointer.exists()):
            atomic_write_text(pointer, checkpoint.name + "\n")

    def _setup(self) -> int:
        """Lock the run directory, load the policy (base or checkpoint), optimizer and data, then
        claim the directory; return the steps already done. On failure the lock is released and
        nothing of the directory has changed."""
        self._acquire()
        try:
            done = self._load()
        except BaseException:
            self._release(started=False)
            raise
        return done

    def _load_policy(self, source: Path | str, checkpoint: Path | None = None) -> None:
        """The policy from `source` (the base model, or `checkpoint`'s model) in the run's precision,
        its AdamW optimizer and, with kl_beta > 0, the KL reference (the base model): what a step's
        updates need besides the data and the engine. A model that does not load raises ConfigError
        naming `model` (CheckpointError for a checkpoint's)."""
        cfg = self.config
        try:
            self.model, self.tokenizer = load_model(source, device=cfg.device)
        except ModelLoadError as err:
            if checkpoint is None:
                raise ConfigError(f"model: {err}") from err
            raise CheckpointError(f"checkpoint {checkpoint}: {err}") from err
        self.model.eval()  # no dropout: the update forward must match the old-log-prob forward
        # Every forward of the policy (the sampler's, old and update log-probs) in the run's
        # precision: bfloat16 autocast over the float32 weights the optimizer updates.
        set_precision(self.model, cfg.dtype)
        if cfg.optim.gradient_checkpointing:  # in the update's forward, packed (clipbench.logprobs)
            enable_gradient_checkpointing(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            weight_decay=cfg.optim.weight_decay,
            fused=True,  # one kernel over all parameters (CPU and CUDA): ~4x faster than the loop
        )
        self.reference = None
        if cfg.kl_beta > 0:
            try:
                self.reference, _ = load_model(cfg.model, device=cfg.device)
            except ModelLoadError as err:
                raise ConfigError(f"model (the KL reference): {err}") from err
            self.reference.requires_grad_(False)
            set_precision(self.reference, cfg.dtype)  # the same forward as the policy's at step 0

    def _load(self) -> int:
        cfg = self.config
        self._check_saved_config()
        self._remove_temporaries()
        checkpoint, damaged = self._resume_point()
        source = checkpoint / "model" if checkpoint else cfg.model
        self._load_policy(source, checkpoint)
        done = 0
        if checkpoint:
            try:
                done = self._load_checkpoint_state(checkpoint)
            except ConfigError:
                raise
            except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
                # A verified checkpoint loads; this is one written before manifests, damaged.
                raise CheckpointError(
                    f"checkpoint {checkpoint} cannot be loaded ({' '.join(str(err).split())[:200]}); "
                    f"delete it and write the name of an older one into {self.run_dir / CHECKPOINTS / LATEST}, "
                    f"or delete {self.run_dir / CHECKPOINTS} to start over"
                ) from err
        self.problems, self.prompts = training_prompts(cfg.data, self.tokenizer)
        self.engine = self._make_engine(source)
        self._claim(checkpoint, damaged)
        truncate_run_logs(self.run_dir, done)
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
                dtype=self.config.dtype,
                weight_sync=r.vllm_weight_sync,
                sleep_level=r.vllm_sleep_level,
            )
        return HFEngine(
            self.model,
            self.tokenizer,
            temperature=r.temperature,
            top_p=r.top_p,
            max_new_tokens=r.max_new_tokens,
        )

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
        """One RL step: sample -> score -> advantages -> old log-probs -> updates -> records.
        Returns the step's metrics (a line of metrics.jsonl), its timings (perf.jsonl) and the
        clip records of every sequence in every update."""
        timing: dict[str, Phase] = {}
        start = time.perf_counter()
        samples, answers = self._rollout(step)
        timing["generate"] = Phase.since(start, sum(len(c) for c in samples.completion_ids))
        self.engine.release()  # a vLLM with a sleep level frees its GPU memory for the update
        t0 = time.perf_counter()
        rewards, statuses = self._score(samples, answers)
        timing["score"] = Phase.since(t0, len(answers))
        advantages = self._advantages(rewards)
        minibatch_rows = self._minibatch_rows(step)
        t0 = time.perf_counter()
        entropy = _EntropyTally(len(advantages))
        minibatches = self._old_logprobs(samples, minibatch_rows, entropy)
        timing["logprob"] = Phase.since(t0, sum(m.tokens for m in minibatches[1:]))
        t0 = time.perf_counter()
        update_metrics, records = self._updates(step, minibatches, advantages, rewards, entropy)
        all_tokens = sum(m.tokens for m in minibatches)
        timing["update"] = Phase.since(t0, self.config.optim.epochs * all_tokens)
        metrics = _step_metrics(step, samples, rewards, statuses, entropy, update_metrics)
        return metrics, _perf(step, timing, start), artifacts.clip_records_frame(records)

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Group-relative advantages (P * G,) of the rewards, a group being one prompt's G samples."""
        cfg = self.config
        p, g = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
        return compute_advantages(rewards.view(p, g), cfg.advantage.estimator, cfg.advantage.eps).view(-1)

    def _minibatch_rows(self, step: int) -> list[list[int]]:
        """The rollout batch's rows split into M minibatches by a permutation seeded by (seed, step)."""
        cfg = self.config
        p, g = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
        order = torch.randperm(p * g, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, step, 1)))
        return order.view(cfg.optim.minibatches, -1).tolist()

    @torch.no_grad()
    def _old_logprobs(
        self, samples: Samples, minibatch_rows: list[list[int]], entropy: _EntropyTally
    ) -> list[_Minibatch]:
        """Each minibatch collated, with the log-probs of the weights that sampled: the old
        log-probs (and the sampling policy's entropy, noted in `entropy`) of every minibatch but
        the first, whose first update's own forward gives them (same weights, same tensors), and
        the KL reference's log-probs when there is a reference."""
        cfg = self.config
        chunk = cfg.optim.logprob_chunk_tokens
        minibatches = []
        for index, rows in enumerate(minibatch_rows):
            sizes = [len(samples.prompt_ids[i]) + len(samples.completion_ids[i]) for i in rows]
            micro = []
            for run in split_by_tokens(sizes, cfg.optim.max_tokens_per_microbatch):
                part = [rows[position] for position in run]
                batch = collate(
                    [samples.prompt_ids[i] for i in part],
                    [samples.completion_ids[i] for i in part],
                    self.tokenizer.pad_token_id,
                ).to(cfg.device)
                m = _Microbatch(part, batch, int(batch.attention_mask.sum()))
                if index > 0:
                    m.old_logp, token_entropy = token_logprobs(
                        self.model, batch, cfg.rollout.temperature, with_entropy=True, chunk_tokens=chunk
                    )
                    entropy.note(part, token_entropy, batch.response_mask)
                entropy.tokens += int(batch.response_mask.sum())
                if self.reference is not None:
                    m.ref_logp = token_logprobs(
                        self.reference, batch, cfg.rollout.temperature, chunk_tokens=chunk
                    )[0]
                micro.append(m)
            minibatches.append(_Minibatch([row for m in micro for row in m.rows], micro))
        return minibatches

    def _updates(
        self,
        step: int,
        minibatches: list[_Minibatch],
        advantages: torch.Tensor,
        rewards: torch.Tensor,
        entropy: _EntropyTally,
    ) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
        """E epochs over the M minibatches, one update each; returns every update's metrics and
        the clip records of every sequence in every update."""
        update_metrics: list[dict[str, float]] = []
        records: list[dict[str, Any]] = []
        update = 0
        for epoch in range(self.config.optim.epochs):
            for index, minibatch in enumerate(minibatches):
                out, adv, metrics = self._update(step, update, minibatch, advantages, entropy)
                update_metrics.append(metrics)
                records += _clip_records(
                    step, update, epoch, index, minibatch.rows, out, adv, rewards, entropy.per_sequence
                )
                update += 1
        return update_metrics, records

    def _update(
        self,
        step: int,
        update: int,
        minibatch: _Minibatch,
        advantages: torch.Tensor,
        entropy: _EntropyTally,
    ) -> tuple[LossOutput, torch.Tensor, dict[str, float]]:
        """One optimizer step on `minibatch`: per micro-batch, `method.loss` (+ the KL penalty)
        and its backward, gradients accumulated; then clipping and the AdamW step. Split, every
        micro-batch's loss divides by the minibatch's totals (the method interface's contract), so
        the step is the unsplit minibatch's. Returns the rule's output over the minibatch, its
        advantages (in its row order) and the update's metrics."""
        cfg = self.config
        on_policy = minibatch.on_policy
        totals = self._minibatch_totals(minibatch, advantages) if len(minibatch.micro) > 1 else None
        outputs, advs, losses, kls = [], [], [], []
        for micro in minibatch.micro:
            batch = micro.batch
            logp, token_entropy = token_logprobs(
                self.model,
                batch,
                cfg.rollout.temperature,
                with_entropy=on_policy,
                chunk_tokens=cfg.optim.logprob_chunk_tokens,
            )
            if on_policy:
                # The first update runs on the weights that sampled: old log-probs are its own,
                # detached, so its ratio is exactly 1 without a second forward pass.
                micro.old_logp = logp.detach()
                entropy.note(micro.rows, token_entropy, batch.response_mask)
            old_logp = micro.old_logp
            adv = advantages[micro.rows].to(device=cfg.device, dtype=old_logp.dtype)
            out = self.method.loss(logp, old_logp, adv, batch.response_mask, totals=totals)
            loss = out.loss
            if micro.ref_logp is not None:
                tokens = None if totals is None else totals.tokens
                kl = kl_to_reference(logp, micro.ref_logp, batch.response_mask, tokens)
                loss = loss + cfg.kl_beta * kl
                kls.append(kl.item())

            def debug(micro=micro, logp=logp, old_logp=old_logp, adv=adv):
                return {
                    "rows": micro.rows,
                    "logp": logp.detach().cpu(),
                    "old_logp": old_logp.cpu(),
                    "advantages": adv.cpu(),
                    "mask": micro.batch.response_mask.cpu(),
                }

            self._check_finite(step, update, "loss", loss.detach(), debug)
            loss.backward()
            outputs.append(out)
            advs.append(adv)
            losses.append(loss.item())
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # Dumped with a non-finite norm: the last micro-batch (the whole minibatch when unsplit).
        self._check_finite(step, update, "gradient norm", grad_norm, debug)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = combine_outputs(outputs)
        extra = {"kl_ref": _total(kls)} if kls else {}
        metrics = {**out.metrics, **extra, "loss": _total(losses), "grad_norm": grad_norm.item()}
        return out, torch.cat(advs), metrics

    @torch.no_grad()
    def _minibatch_totals(self, minibatch: _Minibatch, advantages: torch.Tensor) -> BatchTotals:
        """The counts every micro-batch's loss divides by: the minibatch's response tokens and
        non-empty sequences, and, for a rule that declares it needs them, its statistics under the
        current weights, summed over the micro-batches (on policy l_t = 0: no forward pass;
        otherwise one forward pass without gradients)."""
        statistics = None
        if self.method.needs_minibatch_statistics:
            cfg = self.config
            parts = []
            for micro in minibatch.micro:
                mask = micro.batch.response_mask
                adv = advantages[micro.rows].to(device=cfg.device, dtype=torch.float64)
                if minibatch.on_policy:
                    logp = old_logp = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
                else:
                    old_logp = micro.old_logp
                    logp = token_logprobs(
                        self.model,
                        micro.batch,
                        cfg.rollout.temperature,
                        chunk_tokens=cfg.optim.logprob_chunk_tokens,
                    )[0]
                parts.append(
                    self.method.minibatch_statistics(prepare_batch(logp, old_logp, adv.to(logp.dtype), mask))
                )
            statistics = sum_statistics(parts)
        return BatchTotals.from_lengths(minibatch.response_lengths(), statistics)

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
                {"steps_done": done, "config_hash": run_hash(self.config.to_dict())},
            )
            write_manifest(tmp)  # last: sizes and sha256 of everything above, verified on resume
            replace_dir(tmp, root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_text(root / LATEST, name + "\n")
        kept = sorted(p for p in root.glob("step_*") if p.is_dir() and STEP_DIR.fullmatch(p.name))
        for old in kept[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ the loop

    def run(self) -> Path:
        """Train to `config.steps` (resuming if possible); returns the final model directory."""
        done = self._setup()
        try:
            return self._run(done)
        finally:
            self._release(started=True)

    def _run(self, done: int) -> Path:
        from tqdm import tqdm

        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=done,
            desc=f"{self.method.name} seed {cfg.seed}",
            disable=not self.progress,
        )
        trackers = Trackers(cfg.report_to, self.run_dir, f"{self.method.name}-seed{cfg.seed}", cfg.to_dict())
        try:
            self._steps(done, bar, trackers)
        finally:
            trackers.close()
        bar.close()
        return self._finish()

    def _steps(self, done: int, bar: Any, trackers: Trackers) -> None:
        """Steps `done`..steps-1, each written (records, metrics, perf, checkpoint) as it ends."""
        cfg = self.config
        for step in range(done, cfg.steps):
            metrics, perf, records = self._train_step(step)
            self.engine.resume()  # awake (a sleeping vLLM) before its weights are replaced
            self.engine.sync(self.model)
            artifacts.write_step_records(self.run_dir, step, records)
            with open(self.run_dir / artifacts.METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics, sort_keys=True) + "\n")
            with open(self.run_dir / "perf.jsonl", "a") as f:
                f.write(json.dumps(perf, sort_keys=True) + "\n")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                self._save_checkpoint(step + 1)
            trackers.log(step, metrics, perf)
            if not self.progress:  # under Snakemake: a line per step in the job's log
                print(step_line(step, cfg.steps, metrics, perf), flush=True)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward_mean']:.3f}",
                clip=f"{metrics['clip_frac']:.3f}",
                tok_s=f"{perf.get('generate_tokens_per_s', 0):.0f}",
            )

    def _finish(self) -> Path:
        final = self.run_dir / artifacts.FINAL_DIR
        save_model(
            self.model,
            self.tokenizer,
            final,
            extra={"steps_done": self.config.steps, "method": self.method.name},
        )
        steps = list(artifacts.step_records_files(self.run_dir))
        if steps != list(range(self.config.steps)):
            raise TrainingError(
                f"{self.run_dir}: clip records of steps {steps}, not 0..{self.config.steps - 1}"
            )
        records = artifacts.read_clip_records(self.run_dir)
        lines = (self.run_dir / artifacts.METRICS_FILE).read_text().splitlines()
        summary = {
            "method": self.method.name,
            "hparams": self.method.hparams(),
            "seed": self.config.seed,
            "steps": self.config.steps,
            "last": json.loads(lines[-1]),
            "records": len(records),
        }
        atomic_write_json(final / artifacts.FINAL_SUMMARY_FILE, summary)
        return final


def step_line(step: int, steps: int, metrics: dict[str, Any], perf: dict[str, Any]) -> str:
    """The log line of one finished step (the progress bar's stand-in when it is off, as in a
    study's train job): step, mean reward, accuracy, clip fraction, mean response length, seconds."""
    return (
        f"step {step + 1}/{steps}: reward {metrics['reward_mean']:.4f}, accuracy {metrics['accuracy']:.4f}, "
        f"clip_frac {metrics['clip_frac']:.4f}, response_length {metrics['response_length_mean']:.1f}, "
        f"seconds {perf['step_s']:.2f}"
    )


def run_hash(config: dict[str, Any]) -> str:
    """The run's identity: the hash of its config without the fields that do not change what it
    computes (`report_to`, where a copy of its metrics also goes), so that a run resumes with other
    trackers. A config without such a field (written before it existed) hashes as it always did."""
    return config_hash({name: value for name, value in config.items() if name not in NOT_IDENTITY})


def _with_defaults(saved: dict) -> str:
    """The hash of a saved run config with every field this version has and the file lacks at its
    default (the raw hash when the file is not a valid config of this version)."""
    try:
        return run_hash(load_config(saved).to_dict())
    except ValueError:
        return run_hash(saved)


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


__all__ = [
    "CheckpointError",
    "RunDirError",
    "RunLock",
    "RunLockedError",
    "Trainer",
    "TrainingError",
    "checkpoint_problem",
    "derive_seed",
    "prompt_indices",
    "train",
    "training_prompts",
    "truncate_run_logs",
    "write_manifest",
]
