"""verl adapter: every registered clipping rule as a policy loss of verl 0.9.1 (`clipbench_<name>`).

`register_all()` puts one function per rule of `clipbench.methods` (a new method file joins with no
edit) into verl's policy-loss registry (`verl.trainer.ppo.core_algos.register_policy_loss`), under
`clipbench_<name>`; a run selects it with `actor_rollout_ref.actor.policy_loss.loss_mode`. verl
imports this module (and so verl) only through `register_all`: `clipbench.integrations.verl_plugin`
calls it when a verl worker imports it (`actor_rollout_ref.model.external_lib`), and the rest of
clipbench imports without verl.

**The call.** verl's actor (`verl.workers.utils.losses.ppo_loss`) calls the policy loss once per
micro-batch as `fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights)` with (B, T) tensors and expects `(pg_loss, metrics)`. The function here

* takes one advantage per sequence from verl's token-level advantages: the value at each response's
  first token, after checking that every token of the response carries it (outcome advantages, as
  verl's grpo, rloo and reinforce++ give; a token-level estimator such as gae is refused, naming the
  row);
* builds the rule from its hyperparameters (below) and checks `loss_agg_mode` against the rule's
  aggregation (`accepted_mode`): a rule honours exactly one verl mode, the one whose normaliser it
  uses; every other mode, `token-sum` included, is refused with an error naming the rule, its
  aggregation and the mode. Rules with an `aggregation` hyperparameter (ppo, grpo, dapo, cispo, sapo)
  take the mode of their aggregation (`seq-mean-token-sum-norm` with `actor.loss_scale_factor` equal
  to `norm_tokens`); every other rule (the sequence rules, gmpo) is a mean over the minibatch's
  sequences and takes `seq-mean-token-mean`. (verl's own gspo and sapo ignore the mode.)
* divides by the *global* minibatch's totals that verl puts into `config.global_batch_info`
  (`batch_num_tokens`: the response tokens of the minibatch over every data-parallel rank;
  `global_batch_size`: its sequences) and multiplies the loss by `dp_size`, as verl's `agg_loss`
  does (FSDP averages the ranks' gradients): the micro-batches and ranks of one optimizer step then
  add up to the rule's loss on the whole minibatch (`clipbench.methods.base`, normalisation
  contract). Without that information (dp_size 1), the micro-batch's own totals. A rule whose band
  reads a statistic of the whole minibatch (FSPO's `drift: kl`, powerband's fit) is refused unless
  the call holds the whole minibatch (one rank, one micro-batch): verl gives a policy loss no pass
  over the other micro-batches.
* refuses `rollout_is_weights` (verl's rollout-correction weights would multiply the rule's loss).
* returns the rule's loss and verl's three metric keys (`actor/pg_clipfrac`: the rule's clip_frac;
  `actor/ppo_kl`; `actor/pg_clipfrac_lower`: the dual-clip share, 0 without dual-clip, as verl's
  vanilla means it) plus every metric of the rule as `actor/clipbench_<key>`, each over the
  micro-batch's own units (verl averages the policy-loss metrics over micro-batches).

**Settings: the side channel.** verl 0.9.1 turns the actor config into dataclasses that refuse
unknown keys (`PolicyLossConfig`, `ActorConfig`), so the rule's hyperparameters cannot ride in it.
They come from a JSON file named by the environment variable `CLIPBENCH_VERL_RUN` (`SETTINGS_ENV`),
which the generated config sets for every Ray worker on every node
(`ray_kwargs.ray_init.runtime_env.env_vars`; `clipbench verl-config` writes both): `method`,
`params` (the rule's hyperparameters), `run_dir` (where the clip records go; null: none written)
and the schedule (`rollout_batch` = P x G sequences per step, `minibatches`, `epochs`). Without the
variable a loss runs with its rule's defaults and writes no records.

**Clip records.** Each rank appends one record per sequence and optimiser update
(`clipbench.artifacts.CLIP_RECORD_COLUMNS`) and writes its step's file,
`records/step_NNNNNN.rankR.parquet` (`clipbench.artifacts.write_step_records`), once it has seen the
step's last micro-batch. verl tells a policy loss neither the step nor the update, so they are
counted: each rank sees `epochs x rollout_batch / dp_size` rows per step, in minibatches of
`global_batch_size / dp_size` rows (checked against verl's `global_batch_info` and
`config.ppo_epochs`; a micro-batch that crosses a minibatch boundary is a schedule mismatch and an
error). `update` = epoch x minibatches + minibatch, as the native trainer counts (update 0 runs on
the weights that sampled). `seq` is the row's place in the step's rollout batch when verl keeps
the rows in order (`actor.shuffle: false`, no `use_dynamic_bsz`, as the generated config sets);
otherwise it is the order of arrival within the rank's minibatch. `length`, `S`, `advantage`,
`seq_clip` and `seq_out` are the rule's own (`LossOutput`); `reward` and `entropy` are NaN: verl
does not give them to a policy loss. The rank is torch.distributed's (0 when it is not
initialised); the records need data parallelism only (world size = dp_size), else each row would be
recorded by several ranks. Counting restarts with the process: a resumed verl run is not
supported (the generated config sets `trainer.resume_mode: disable`).

Checked in float64 against `get_method(name).loss` on random batches, split into micro-batches and
over two simulated ranks, with the records read back by `clipbench.artifacts.read_clip_records` and
aggregated as `clipbench aggregate` does: tests/test_verl_adapter.py (in verl's venv, `.ci/run`
stage 4).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from clipbench import artifacts, fairness, methods

#: A rule's name in verl's policy-loss registry: PREFIX + the clipbench name.
PREFIX = "clipbench_"
#: The environment variable naming the adapter's settings file (JSON; see the module docstring).
SETTINGS_ENV = "CLIPBENCH_VERL_RUN"
#: clipbench's token aggregations (`clipbench.methods.base.aggregate_tokens`) -> verl's loss_agg_mode.
VERL_MODES = {
    "token_mean": "token-mean",
    "seq_mean_token_mean": "seq-mean-token-mean",
    "seq_mean_token_sum": "seq-mean-token-sum",
    "seq_mean_token_sum_norm": "seq-mean-token-sum-norm",
}
#: The aggregation of a rule without an `aggregation` hyperparameter: a mean over the minibatch's
#: sequences (every sequence rule, gmpo), which is verl's seq-mean-token-mean of a loss constant over
#: each response's tokens. tests/test_verl_config.py checks, for every registered rule, that its loss
#: divides by the total this names.
SEQUENCE_MEAN = "seq_mean_token_mean"
#: Relative spread of a response's token-level advantages still read as one advantage.
ADVANTAGE_RTOL = 1e-6


# ---------------------------------------------------------------------------- names and modes


def loss_name(method: str) -> str:
    """`clipbench_<method>`, the rule's name in verl's registry."""
    return PREFIX + method


def rule_aggregation(rule: methods.Method) -> str:
    """How the rule's loss aggregates, as one of `VERL_MODES`' keys: its `aggregation`
    hyperparameter, else `SEQUENCE_MEAN`."""
    return getattr(rule, "aggregation", SEQUENCE_MEAN)


def accepted_mode(rule: methods.Method) -> tuple[str, int | None]:
    """The one verl `loss_agg_mode` the (configured) rule honours, and the `loss_scale_factor` it
    needs there (seq-mean-token-sum-norm: `norm_tokens`, which verl takes as an integer; else None)."""
    aggregation = rule_aggregation(rule)
    mode = VERL_MODES[aggregation]
    if aggregation != "seq_mean_token_sum_norm":
        return mode, None
    norm = rule.norm_tokens
    if norm != int(norm):
        raise ValueError(
            f"{loss_name(rule.name)}: norm_tokens={norm!r}; verl's loss_scale_factor is an integer, so only an "
            "integral norm_tokens maps to seq-mean-token-sum-norm"
        )
    return mode, int(norm)


def check_mode(rule: methods.Method, loss_agg_mode: str, loss_scale_factor: Any = None) -> None:
    """ValueError naming the rule, its aggregation and the mode unless `loss_agg_mode` (and, for
    seq-mean-token-sum-norm, `loss_scale_factor`) is the one the rule honours."""
    mode, scale = accepted_mode(rule)
    name, aggregation = loss_name(rule.name), rule_aggregation(rule)
    if loss_agg_mode != mode:
        if hasattr(rule, "aggregation"):
            how = f"its aggregation hyperparameter is {aggregation!r}"
            other = f"; or set its aggregation hyperparameter to one of {', '.join(VERL_MODES)}"
        else:
            how, other = "its loss is a mean over the minibatch's sequences", ""
        raise ValueError(
            f"{name}: actor.loss_agg_mode={loss_agg_mode!r} is not what the rule computes ({how}); it takes "
            f"loss_agg_mode={mode!r} only{other}"
        )
    if scale is not None and loss_scale_factor != scale:
        raise ValueError(
            f"{name}: seq-mean-token-sum-norm divides by norm_tokens={scale}; set actor.loss_scale_factor={scale} "
            f"(got {loss_scale_factor!r})"
        )


# ---------------------------------------------------------------------------- inputs


def sequence_advantages(
    advantages: torch.Tensor, mask: torch.Tensor, name: str = "clipbench"
) -> torch.Tensor:
    """(B,) one advantage per response from verl's (B, T) token-level advantages: the value at the
    response's first token (0 for a row without tokens). ValueError naming the row when a
    response's tokens carry different advantages (beyond `ADVANTAGE_RTOL`)."""
    if advantages.shape != mask.shape:
        raise ValueError(
            f"{name}: advantages of shape {tuple(advantages.shape)}, response_mask {tuple(mask.shape)}"
        )
    has_tokens = mask.any(dim=-1)
    first = mask.int().argmax(dim=-1)  # the first response token
    value = advantages.gather(1, first.unsqueeze(-1)).squeeze(-1)
    value = torch.where(has_tokens, value, torch.zeros_like(value))
    spread = torch.where(mask, (advantages - value.unsqueeze(-1)).abs(), torch.zeros_like(advantages))
    bad = spread.amax(dim=-1) > ADVANTAGE_RTOL * value.abs().clamp(min=1.0)
    if bad.any():
        row = int(bad.nonzero()[0])
        tokens = advantages[row][mask[row]]
        raise ValueError(
            f"{name}: the advantages of response row {row} vary over its tokens (from {float(tokens.min()):g} "
            f"to {float(tokens.max()):g}); a clipbench rule takes one advantage per sequence: use an outcome "
            "estimator (algorithm.adv_estimator grpo, rloo, reinforce_plus_plus, ...), not a token-level one (gae)"
        )
    return value


@dataclasses.dataclass(frozen=True)
class GlobalBatch:
    """What verl's actor puts into `config.global_batch_info` before each call: data-parallel
    ranks, and the response tokens and sequences of the whole minibatch over every rank (None: not
    given, i.e. the call's own)."""

    dp_size: int = 1
    tokens: int | None = None
    sequences: int | None = None

    @classmethod
    def of(cls, config: Any) -> GlobalBatch:
        info = getattr(config, "global_batch_info", None) if config is not None else None
        info = dict(info or {})
        tokens, sequences = info.get("batch_num_tokens"), info.get("global_batch_size")
        return cls(
            dp_size=int(info.get("dp_size") or 1),
            tokens=None if tokens is None else int(tokens),
            sequences=None if sequences is None else int(sequences),
        )


def batch_totals(rule: methods.Method, mask: torch.Tensor, batch: GlobalBatch) -> methods.BatchTotals | None:
    """The totals the rule divides by: the global minibatch's (`batch`), a missing one the call's
    own when there is one rank; None (the call's own) without global information, or for a rule
    that reads minibatch statistics and gets the whole minibatch in this call. ValueError for such a
    rule given part of a minibatch, and for several ranks without the global counts."""
    lengths = mask.sum(dim=-1)
    own_tokens, own_sequences = int(lengths.sum()), int((lengths > 0).sum())
    name = loss_name(rule.name)
    if batch.dp_size > 1 and (batch.tokens is None or batch.sequences is None):
        raise ValueError(
            f"{name}: dp_size={batch.dp_size} without the global minibatch's batch_num_tokens and "
            "global_batch_size (config.global_batch_info): the ranks' losses would not add up"
        )
    if rule.needs_minibatch_statistics:
        whole = batch.dp_size == 1 and batch.tokens in (None, own_tokens)
        if not whole:
            raise ValueError(
                f"{name} ({rule.hparams()}) reads a statistic of the whole minibatch, but verl hands the policy "
                f"loss part of one ({own_tokens} of {batch.tokens} tokens, {batch.dp_size} rank(s)): train on one "
                "GPU with the whole minibatch in one micro-batch (ppo_micro_batch_size_per_gpu = ppo_mini_batch_size "
                "x rollout.n, use_dynamic_bsz false), or use the rule without it"
            )
        return None
    if batch.tokens is None and batch.sequences is None:
        return None
    tokens = own_tokens if batch.tokens is None else batch.tokens
    sequences = own_sequences if batch.sequences is None else batch.sequences
    return methods.BatchTotals(
        tokens=torch.tensor(float(tokens), dtype=torch.float64),
        sequences=torch.tensor(float(sequences), dtype=torch.float64),
    )


# ---------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The adapter's side channel (module docstring), read from the JSON file `SETTINGS_ENV` names.

    method, params: the rule and its hyperparameters; run_dir: where the clip records go (None:
    none written); rollout_batch (P x G sequences per step), minibatches, epochs: the update
    schedule, needed with run_dir."""

    method: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_dir: str | None = None
    rollout_batch: int | None = None
    minibatches: int | None = None
    epochs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Settings:
        """ValueError naming `where` and the key for anything that is not a valid settings dict."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}")
        if data.get("method") not in methods.available_methods():
            raise ValueError(
                f"{where}: method {data.get('method')!r} is not a registered rule "
                f"({', '.join(methods.available_methods())})"
            )
        if not isinstance(data.get("params", {}), dict):
            raise ValueError(f"{where}: params must be an object of hyperparameters")
        try:
            methods.get_method(data["method"], **data.get("params", {}))
        except ValueError as err:
            raise ValueError(f"{where}: params: {err}") from None
        schedule = ("rollout_batch", "minibatches", "epochs")
        for key in schedule:
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        if data.get("run_dir") is not None:
            missing = [key for key in schedule if data.get(key) is None]
            if missing:
                raise ValueError(
                    f"{where}: run_dir is set, so the records need the schedule: {missing} missing"
                )
            if data["rollout_batch"] % data["minibatches"]:
                raise ValueError(
                    f"{where}: minibatches={data['minibatches']} must divide rollout_batch={data['rollout_batch']}"
                )
        return cls(**data)


def load_settings(path: str | Path) -> Settings:
    """The settings in the JSON file `path` (ValueError naming it)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{SETTINGS_ENV}={path}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{SETTINGS_ENV}={path}: not JSON ({err})") from None
    return Settings.from_dict(data, f"{SETTINGS_ENV}={path}")


def write_settings(path: str | Path, settings: Settings) -> Path:
    """Write `settings` as the JSON file the adapter reads (the generator's side)."""
    from clipbench.provenance import atomic_write_json

    path = Path(path)
    Settings.from_dict(settings.to_dict(), str(path))  # the adapter must accept what is written
    atomic_write_json(path, settings.to_dict())
    return path


# ---------------------------------------------------------------------------- clip records


def process_rank(dp_size: int) -> int:
    """This process's data-parallel rank: torch.distributed's rank (0 when it is not initialised);
    ValueError when the world holds more processes than data-parallel ranks (sequence or tensor
    parallel ranks would record the same rows twice)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    world = torch.distributed.get_world_size()
    if world != dp_size:
        raise ValueError(
            f"clip records: world size {world} != dp_size {dp_size}; the records need data parallelism only "
            "(each rank its own rows)"
        )
    return torch.distributed.get_rank()


class RecordWriter:
    """One rank's clip records: positions counted over the step's schedule, each step's file
    written when its last row arrives (module docstring)."""

    def __init__(
        self, run_dir: str | Path, rollout_batch: int, minibatches: int, epochs: int, dp_size: int, rank: int
    ):
        if rollout_batch % (minibatches * dp_size):
            raise ValueError(
                f"clip records: the rollout batch of {rollout_batch} sequences does not split into {minibatches} "
                f"minibatches x {dp_size} ranks"
            )
        self.run_dir = Path(run_dir)
        self.minibatches, self.epochs, self.dp_size, self.rank = minibatches, epochs, dp_size, rank
        self.per_rank = rollout_batch // dp_size
        self.per_minibatch = self.per_rank // minibatches  # rows of one minibatch on this rank
        self.step, self.position, self.rows = 0, 0, []

    def check(self, batch: GlobalBatch, epochs: int | None) -> None:
        """ValueError when verl's schedule is not the settings' (global minibatch size, ranks, epochs)."""
        if batch.dp_size != self.dp_size:
            raise ValueError(f"clip records: dp_size changed from {self.dp_size} to {batch.dp_size}")
        if batch.sequences is not None and batch.sequences != self.per_minibatch * self.dp_size:
            raise ValueError(
                f"clip records: verl's minibatch holds {batch.sequences} sequences, the settings' "
                f"{self.per_minibatch * self.dp_size} (rollout_batch / minibatches): the schedules differ"
            )
        if epochs is not None and epochs != self.epochs:
            raise ValueError(f"clip records: actor.ppo_epochs={epochs}, the settings' epochs={self.epochs}")

    def add(self, out: methods.LossOutput, advantages: torch.Tensor) -> Path | None:
        """Note one call's rows; returns the step file when this call completed a step."""
        n = len(advantages)
        update, offset = divmod(self.position, self.per_minibatch)
        if offset + n > self.per_minibatch:
            raise ValueError(
                f"clip records: a micro-batch of {n} rows at row {offset} of a minibatch of {self.per_minibatch} "
                "on this rank crosses into the next minibatch: verl's schedule is not the settings'"
            )
        epoch, minibatch = divmod(update, self.minibatches)
        first = self.rank * self.per_rank + minibatch * self.per_minibatch + offset
        # the prefix sums S_k from the l_t and mask the rule saw, as the native trainer's records
        prefix = fairness.record_prefix_sums(out.log_ratio.detach().double().cpu(), out.mask.cpu())
        columns = zip(
            out.lengths.long().tolist(),
            out.seq_log_ratio.double().tolist(),
            advantages.double().tolist(),
            out.seq_clip.double().tolist(),
            out.seq_out.double().tolist(),
            prefix,
            strict=True,
        )
        for i, (length, seq_s, adv, clip, out_of_band, prefix_sums) in enumerate(columns):
            self.rows.append(
                {
                    "step": self.step,
                    "update": update,
                    "epoch": epoch,
                    "minibatch": minibatch,
                    "seq": first + i,
                    "length": length,
                    "S": seq_s,
                    "advantage": adv,
                    "reward": math.nan,
                    "entropy": math.nan,
                    "seq_clip": clip,
                    "seq_out": out_of_band,
                    **prefix_sums,
                }
            )
        self.position += n
        if self.position < self.per_rank * self.epochs:
            return None
        path = artifacts.write_step_records(
            self.run_dir, self.step, artifacts.clip_records_frame(self.rows), rank=self.rank
        )
        self.step, self.position, self.rows = self.step + 1, 0, []
        return path


class Session:
    """One process's adapter state: its settings (None: every rule with its defaults, no records),
    the rules built from them and the record writer (made at the first call, when verl has told
    the number of ranks)."""

    def __init__(self, settings: Settings | None):
        self.settings = settings
        self.rules: dict[str, methods.Method] = {}
        self.writer: RecordWriter | None = None

    def rule(self, method: str) -> methods.Method:
        built = self.rules.get(method)
        if built is None:
            s = self.settings
            if s is not None and s.method != method:
                raise ValueError(
                    f"{loss_name(method)}: the adapter's settings ({SETTINGS_ENV}={os.environ.get(SETTINGS_ENV)}) "
                    f"are for {loss_name(s.method)}; set actor.policy_loss.loss_mode={loss_name(s.method)} or "
                    "regenerate the run's config"
                )
            built = self.rules[method] = methods.get_method(method, **(s.params if s else {}))
        return built

    def record(
        self, batch: GlobalBatch, epochs: int | None, out: methods.LossOutput, adv: torch.Tensor
    ) -> None:
        s = self.settings
        if s is None or s.run_dir is None:
            return
        if self.writer is None:
            rank = process_rank(batch.dp_size)
            self.writer = RecordWriter(
                s.run_dir, s.rollout_batch, s.minibatches, s.epochs, batch.dp_size, rank
            )
        self.writer.check(batch, epochs)
        self.writer.add(out, adv)


_SESSION: Session | None = None


def session() -> Session:
    """This process's session, made on first use from `SETTINGS_ENV` (unset: no settings)."""
    global _SESSION
    if _SESSION is None:
        path = os.environ.get(SETTINGS_ENV)
        _SESSION = Session(load_settings(path) if path else None)
    return _SESSION


def reset_session() -> None:
    """Forget this process's session (its counters and rules); the next call reads the settings anew."""
    global _SESSION
    _SESSION = None


# ---------------------------------------------------------------------------- the policy loss


def compute_policy_loss(
    method: str,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Rule `method`'s loss on one verl micro-batch, as verl's policy losses return it: (pg_loss,
    metrics). See the module docstring."""
    name = loss_name(method)
    if rollout_is_weights is not None:
        raise ValueError(
            f"{name}: verl passed rollout_is_weights (algorithm.rollout_correction.rollout_is), which would multiply "
            "the rule's loss; turn rollout correction off (rollout_is: null, bypass_mode: false)"
        )
    current = session()
    rule = current.rule(method)
    check_mode(rule, loss_agg_mode, getattr(config, "loss_scale_factor", None))
    mask = response_mask.bool()
    adv = sequence_advantages(advantages, mask, name).to(log_prob.dtype)
    batch = GlobalBatch.of(config)
    totals = batch_totals(rule, mask, batch)
    out = rule.loss(log_prob, old_log_prob, adv, mask, totals=totals)
    if totals is None:
        local = out.metrics
    else:  # the metrics over this micro-batch's own units (verl averages them over micro-batches)
        with torch.no_grad():
            local = rule.loss(log_prob.detach(), old_log_prob, adv, mask).metrics
    current.record(batch, getattr(config, "ppo_epochs", None), out, adv)
    metrics = {
        "actor/pg_clipfrac": local["clip_frac"],
        "actor/ppo_kl": local["ppo_kl"],
        "actor/pg_clipfrac_lower": local.get("clip_frac_dual", 0.0),
        **{f"actor/clipbench_{key}": value for key, value in local.items()},
    }
    return out.loss * batch.dp_size, metrics


def policy_loss(method: str):
    """verl's policy-loss function for rule `method` (the signature of `core_algos.PolicyLossFn`)."""
    methods.get_method_class(method)  # an unknown rule fails here, not at the first call

    def loss_fn(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return compute_policy_loss(
            method,
            old_log_prob,
            log_prob,
            advantages,
            response_mask,
            loss_agg_mode,
            config,
            rollout_is_weights,
        )

    loss_fn.__name__ = loss_fn.__qualname__ = f"compute_policy_loss_{loss_name(method)}"
    loss_fn.__doc__ = f"clipbench's {method!r} rule as a verl policy loss (clipbench.integrations.verl)."
    return loss_fn


def register_all() -> list[str]:
    """Register every clipbench rule in verl's policy-loss registry as `clipbench_<name>` (imports
    verl); returns the registered names. Registering again replaces the same functions."""
    from verl.trainer.ppo import core_algos

    names = []
    for method in methods.available_methods():
        core_algos.register_policy_loss(loss_name(method))(policy_loss(method))
        names.append(loss_name(method))
    return names


__all__ = [
    "ADVANTAGE_RTOL",
    "PREFIX",
    "SEQUENCE_MEAN",
    "SETTINGS_ENV",
    "VERL_MODES",
    "GlobalBatch",
    "RecordWriter",
    "Session",
    "Settings",
    "accepted_mode",
    "batch_totals",
    "check_mode",
    "compute_policy_loss",
    "load_settings",
    "loss_name",
    "policy_loss",
    "process_rank",
    "register_all",
    "reset_session",
    "rule_aggregation",
    "sequence_advantages",
    "session",
    "write_settings",
]
