"""`clipbench probe`: which clip band is flat for *this* model, measured in minutes before any
training.

Which sequence clip band clips short and long responses alike depends on how the sequence
log-ratio S = sum_t l_t grows with the response length L, and that depends on the model: FSPO's
sqrt(L) band assumes median |S| ~ L^(1/2) (i.i.d. l_t); the default study's tiny model has
L^2 and more. The probe measures it on a model of one's own, in one RL step's worth of compute.

The procedure (`run`; the trainer's own pieces, so nothing here re-implements sampling, scoring,
advantages, log-probs or the update):

1. Sample: the prompts and samples of a training run's first step with the same seed and data
   settings (`Trainer._rollout(0)`: P prompts x G samples from the training engine), scored by
   the verifier (`Trainer._score`), advantages from the configured estimator
   (`Trainer._advantages`).
2. Split by prompt group (`split_groups`): a seeded permutation of the P groups; the first P // 2
   form the update half, the rest the measurement half. A group's G samples stay together, so no
   prompt is on both sides.
3. Fallback advantages: when every advantage of the update half is 0 (every group all right or
   all wrong, common for a small model on a hard set), the verifier gives no gradient; the probe
   then replaces every advantage by an independent random sign, +1 or -1 with probability 1/2
   (`fallback_signs`, seeded by the probe's seed): a policy-gradient step on a random objective,
   which moves the policy by a comparable amount without learning anything. The output says which
   source was used (`advantages.source`: "verifier" or "random_signs").
4. Update: old log-probs of both halves under the sampling weights (`Trainer._old_logprobs`),
   then K optimizer steps of the update rule (`--method`, AdamW at `--lr`) on the whole update
   half (`Trainer._updates` with one minibatch and K epochs: the first step on the sampling
   weights, ratio 1, as in training).
5. Measure: the log-probs of the measurement half under the updated weights (the same
   `token_logprobs` as the old ones, same tensors); l_t = new - old per response token: what an
   off-policy minibatch of a training step sees after K updates on other sequences.

The analysis (`analyse`, pure: it takes a `Measurement`, so the tests run it on synthetic
log-ratios of known structure), every interval a seeded percentile bootstrap of
`clipbench.stats` (`stats.bootstrap`; `stats.fairness_intervals` for the rules) that resamples the
measurement half's **prompt groups**: a group's G samples share a prompt (and its difficulty), so
they are not independent; different groups are.

* a (across sequences): `clipbench.fairness`'s S-growth exponent, the least-squares slope of
  log median |S| per length bin on the bin's mean log L (quantile bins of the measured lengths);
  also the median, mean (the drift) and standard deviation of S per bin.
* a_w (within sequences): `fairness.within_sequence_exponent` on the prefix sums S_k
  (`fairness.prefix_sums`, k = 8, 16, 32, ... while at least 8 sequences reach k:
  `default_ladder`), each rung's median over the sequences with L >= k only.
* mean |l_t| per block of positions ([0, 8), [8, 16), [16, 32), ...), the lag-1 autocorrelation
  of l_t (pooled: sum over sequences of (l_t - m)(l_t+1 - m) over sum of (l_t - m)^2, m the mean
  of every measured l_t) and that mean m (the drift per token).
* every sequence-level rule (`--methods`), at its configured band: the clip indicators of
  `clipbench.simulate.rule_records` (the simulation's code path, on these log-ratios instead of
  Gaussian draws), its clip rate per bin, overall rate, spread, slope and LRE
  (`stats.fairness_intervals`, the prompt group as its resampling unit).
* the flattest power band (`flattest_band`): for b = 0, 0.05, ..., 3 the registered `powerband`
  rule with W(L) = L^b (fit=false) and c = the (1 - target) quantile of |S| / L^b, so each b
  clips the same share of sequences; its spread per b, and the b of the smallest spread.

Outputs (`write_outputs`; names in `clipbench.artifacts`): probe.json (the config, provenance,
timings, every number above with its interval, the recommendation), sequences.parquet (one row
per measured sequence: `SEQUENCE_COLUMNS`, with the provenance in the file's metadata) and
probe.png (median |S| per bin and median |S_k| per rung against length, log axes, with L^(1/2)
and L^1 guides). `read_measurement` gives the file's log-ratios back as the `Measurement` they were
analysed as: the study's calibrate step (clipbench.calibration) sets the rules' bands on them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clipbench import artifacts, fairness, methods, stats
from clipbench.advantages import available_estimators
from clipbench.config import DEVICE, ENGINES, PROMPT_STYLES, TrainConfig, check_device, validate
from clipbench.settings import ConfigError, from_dict, setting

#: The rule the flattest-band search runs (its band W(L) = L^b with fit=false).
POWERBAND = "powerband"
#: The band exponents the flattest-band search tries: 0, 0.05, ..., 3 (powerband's b_max).
BAND_EXPONENTS = tuple(round(0.05 * i, 2) for i in range(61))
#: The fewest sequences a rung of the default prefix ladder must reach (`default_ladder`): the
#: rule `clipbench.fairness.reached_rungs` applies to the training records too.
MIN_RUNG_SEQUENCES = fairness.MIN_RUNG_SEQUENCES
#: The per-sequence file's columns besides S_k (one per rung), seq_out_<rule> and seq_clip_<rule>.
SEQUENCE_COLUMNS: dict[str, str] = {
    "seq": "the sequence's row among the measured ones",
    "group": "its prompt group in the measurement half (0 ... groups - 1): the bootstrap's unit",
    "problem": "the problem's index among the benchmark's loaded training problems",
    "sample": "which of the group's G samples",
    "length": "response length L in tokens",
    "finished": "whether the response ended with EOS (else cut at --max-new-tokens)",
    "reward": "verifier reward (1: verified answer)",
    "advantage": "the advantage the rules saw (the verifier's, or the fallback's random sign)",
    "entropy": "mean per-token entropy of the sampling policy over the response",
    "S": "sequence log-ratio sum_t l_t after the update",
    "log_ratio": "l_t per response token, in order (a list): everything else here is computed from it",
    "text": "the response",
}


def _benchmarks() -> list[str]:
    from clipbench import benchmarks

    return benchmarks.available()


def sequence_rules() -> list[str]:
    """Every registered rule whose level is "sequence" (one weight and one band per sequence)."""
    return [n for n in methods.available_methods() if methods.get_method_class(n).level == "sequence"]


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's options (`clipbench probe --help`; the field `n_prompts` is the option
    `--n-prompts`, `method_params` is `--set`), each declared once with `setting`."""

    model: str = setting(help="the model: an HF model directory (or hub id)")
    benchmark: str = setting(
        help="a name from clipbench.benchmarks.available(): the prompts", choices=_benchmarks
    )
    split: str = setting("train", help="the split of the benchmark to draw prompts from")
    data_dir: str | None = setting(
        None, help="local copies of the sets (e.g. ../shared/data); null: the hub or the generator"
    )
    prompt_style: str = setting(
        "base",
        help="'base': the benchmark's template; 'chat': the tokenizer's chat template",
        choices=PROMPT_STYLES,
    )
    n_prompts: int = setting(
        16, help="P, prompts sampled; P // 2 prompt groups update, the others are measured", ge=2
    )
    samples: int = setting(4, help="G, samples per prompt (the advantage estimator's group)", ge=2)
    max_new_tokens: int = setting(256, help="the longest response, in tokens", ge=1)
    temperature: float = setting(1.0, help="sampling temperature (the log-probs use the same one)", gt=0)
    lr: float = setting(1e-4, help="AdamW learning rate of the updates", gt=0)
    updates: int = setting(2, help="K, optimizer steps on the update half before the measurement", ge=1)
    method: str = setting(
        "grpo", help="the rule whose loss the updates minimise", choices=methods.available_methods
    )
    estimator: str = setting("grpo", help="the advantage estimator", choices=available_estimators)
    engine: str = setting("hf", help="the sampling engine, as in training", choices=ENGINES)
    max_tokens_per_microbatch: int | None = setting(
        None,
        help="split each forward into micro-batches of at most this many packed tokens (the trainer's "
        "optim.max_tokens_per_microbatch: same update, less memory); null: one forward",
        ge=1,
    )
    logprob_chunk_tokens: int | None = setting(
        None,
        help="compute log-probs this many response tokens at a time (the trainer's "
        "optim.logprob_chunk_tokens: no tokens x vocabulary tensor); null: all at once",
        ge=1,
    )
    device: str = setting("cpu", help='"cpu", "cuda", "cuda:N" or "mps"', pattern=DEVICE.pattern)
    seed: int = setting(0, help="prompts, samples, the split and the fallback derive from it", ge=0)
    methods: list[str] = setting(
        default_factory=list,
        help="the sequence-level rules to predict (empty: every registered one)",
        item={"choices": methods.available_methods},
        unique=True,
    )
    method_params: dict[str, Any] = setting(
        default_factory=dict, help="per-rule hyperparameter overrides, {rule: {field: value}}"
    )
    bins: int = setting(fairness.DEFAULT_BINS, help="length bins (quantiles of the measured lengths)", ge=1)
    target_rate: float = setting(
        0.2, help="the share of sequences each band of the flattest-band search clips", gt=0, lt=1
    )
    resamples: int = setting(stats.DEFAULT_RESAMPLES, help="bootstrap resamples per interval", ge=1)
    bootstrap_seed: int = setting(0, help="seed of the bootstrap resamples", ge=0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rule_names(self) -> list[str]:
        """The rules to predict: `methods`, or every registered sequence-level rule."""
        return list(self.methods) or sequence_rules()

    def build_rules(self) -> dict[str, methods.Method]:
        return {
            name: methods.get_method(name, **self.method_params.get(name, {})) for name in self.rule_names()
        }


#: Carrier fields of the update's TrainConfig -> the probe option that sets them (error messages).
_CARRIER_OPTIONS = {
    "model": "--model",
    "device": "--device",
    "data.benchmark": "--benchmark",
    "data.split": "--split",
    "data.data_dir": "--data-dir",
    "data.prompt_style": "--prompt-style",
    "method": "--method",
    "method_params": "--set",
}


def option_message(message: str) -> str:
    """A config error's message with its leading field named as the probe's option
    (`n_prompts: ...` -> `--n-prompts: ...`; the update's `data.split: ...` -> `--split: ...`)."""
    field, sep, rest = message.partition(": ")
    if not sep:
        return message
    base = field.split("[", 1)[0]
    if base in _CARRIER_OPTIONS:
        return f"{_CARRIER_OPTIONS[base]}: {rest}"
    if base in {f.name for f in dataclasses.fields(ProbeConfig)}:
        return f"--{base.replace('_', '-')}{field[len(base) :]}: {rest}"
    return message


def load_probe_config(data: Mapping[str, Any], *, here: bool = True) -> tuple[ProbeConfig, TrainConfig]:
    """The probe's config and the TrainConfig its updates run under, both checked before any
    compute; ConfigError naming the option otherwise (`option_message`): every field's type and
    range, --methods sequence-level rules, each --set naming a rule in use and building it, and the
    update's config (the benchmark's split and local file, the update rule); with `here`, that the
    device exists on this machine (not when a study's DAG is built, maybe on another machine)."""
    try:
        config = from_dict(ProbeConfig, dict(data))
    except ConfigError as err:
        raise ConfigError(option_message(str(err))) from None
    token = [n for n in config.methods if n not in sequence_rules()]
    if token:
        raise ConfigError(
            f"--methods: {', '.join(token)} clip tokens, not sequences; the probe predicts sequence-level "
            f"rules ({', '.join(sequence_rules())})"
        )
    used = {*config.rule_names(), config.method}
    unused = sorted(set(config.method_params) - used)
    if unused:
        raise ConfigError(
            f"--set: {', '.join(unused)} is neither predicted (--methods: {', '.join(config.rule_names())}) "
            f"nor the update rule (--method {config.method})"
        )
    try:
        config.build_rules()
    except ValueError as err:
        raise ConfigError(f"--set: {err}") from None
    try:
        carrier = validate(_carrier(config), schedule=False)
        if here:
            check_device(carrier.device)
    except ConfigError as err:
        raise ConfigError(option_message(str(err))) from None
    return config, carrier


def _carrier(config: ProbeConfig) -> TrainConfig:
    """The TrainConfig of the probe's rollout and updates: one step of P x G samples, one
    minibatch (the update half) and K epochs over it, so `Trainer._updates` runs K optimizer steps."""
    data = {
        "model": config.model,
        "method": config.method,
        "method_params": dict(config.method_params.get(config.method, {})),
        "seed": config.seed,
        "steps": 1,
        "data": {
            "benchmark": config.benchmark,
            "split": config.split,
            "data_dir": config.data_dir,
            "prompt_style": config.prompt_style,
        },
        "rollout": {
            "engine": config.engine,
            "prompts_per_step": config.n_prompts,
            "samples_per_prompt": config.samples,
            "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens,
        },
        "advantage": {"estimator": config.estimator},
        "optim": {
            "lr": config.lr,
            "minibatches": 1,
            "epochs": config.updates,
            "max_tokens_per_microbatch": config.max_tokens_per_microbatch,
            "logprob_chunk_tokens": config.logprob_chunk_tokens,
        },
        "device": config.device,
    }
    return from_dict(TrainConfig, data)


# --------------------------------------------------------------------------- pure pieces


def split_groups(n_prompts: int, seed: int) -> tuple[list[int], list[int]]:
    """(update groups, measurement groups), each sorted: a permutation of the prompt groups
    0 .. n_prompts - 1 seeded by `seed`, its first n_prompts // 2 updating, the rest measured.
    Disjoint, and together every group."""
    if n_prompts < 2:
        raise ValueError(f"split_groups: n_prompts={n_prompts} must be >= 2 (a group on each side)")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5B1D])).permutation(n_prompts)
    half = n_prompts // 2
    return sorted(int(g) for g in order[:half]), sorted(int(g) for g in order[half:])


def group_rows(groups: Sequence[int], samples: int) -> list[int]:
    """The rollout rows of prompt groups (rows are prompt-major: group j holds j G ... j G + G - 1)."""
    return [g * samples + s for g in groups for s in range(samples)]


def fallback_signs(n: int, seed: int) -> np.ndarray:
    """(n,) independent advantages +1 or -1 with probability 1/2 each, seeded by `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA11]))
    return rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def default_ladder(lengths: Sequence[int], min_sequences: int = MIN_RUNG_SEQUENCES) -> tuple[int, ...]:
    """The prefix ladder 8, 16, 32, ... up to the longest rung that at least `min_sequences` of
    the sequences reach (a median of fewer is mostly noise, and one rung counts as much as any
    other in the exponent's fit); all rungs up to the longest response when there are fewer
    sequences than that."""
    lengths = np.asarray(lengths)
    ks = fairness.prefix_ladder(int(lengths.max()))
    return fairness.reached_rungs(ks, [(lengths >= k).sum() for k in ks], lengths.size, min_sequences)


def position_blocks(ks: Sequence[int], width: int) -> list[tuple[int, int]]:
    """The blocks of positions [0, k_1), [k_1, k_2), ... of the prefix ladder, and [k_last, width)
    when the responses go further."""
    edges = [0, *[int(k) for k in ks]]
    blocks = list(zip(edges[:-1], edges[1:], strict=True))
    if width > edges[-1]:
        blocks.append((edges[-1], width))
    return blocks


@dataclass(frozen=True)
class Measurement:
    """The measurement half's per-token log-ratios, left-aligned: row i holds l_t of its response
    tokens t = 0 .. L_i - 1, then zeros. `group` is each sequence's prompt group, 0 .. groups - 1
    (the bootstrap's unit); `advantages` what the rules are given."""

    log_ratio: np.ndarray  # (N, T) float64
    lengths: np.ndarray  # (N,) int
    group: np.ndarray  # (N,) int
    advantages: np.ndarray  # (N,) float64

    @classmethod
    def from_sequences(
        cls, sequences: Sequence[np.ndarray], group: Sequence[int], advantages: Sequence[float]
    ) -> Measurement:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        width = int(lengths.max()) if len(lengths) else 0
        log_ratio = np.zeros((len(sequences), width))
        for i, s in enumerate(sequences):
            log_ratio[i, : len(s)] = s
        return cls(log_ratio, lengths, np.asarray(group, dtype=np.int64), np.asarray(advantages, dtype=float))

    def __post_init__(self) -> None:
        n = len(self.lengths)
        if self.log_ratio.shape[0] != n or len(self.group) != n or len(self.advantages) != n:
            raise ValueError("Measurement: log_ratio rows, lengths, group and advantages must agree")
        if n == 0 or (self.lengths < 1).any():
            raise ValueError("Measurement: needs sequences, each with at least one response token")
        if not np.isfinite(self.log_ratio[self.mask]).all():
            raise ValueError("Measurement: a log-ratio is not finite")
        groups = np.unique(self.group)
        if groups[0] != 0 or groups[-1] != len(groups) - 1:
            raise ValueError(f"Measurement: groups must be 0 .. n - 1, got {groups.tolist()}")

    @property
    def mask(self) -> np.ndarray:
        return np.arange(self.log_ratio.shape[1]) < self.lengths[:, None]

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1

    @property
    def seq_log_ratio(self) -> np.ndarray:
        return np.where(self.mask, self.log_ratio, 0.0).sum(axis=1)


class _GroupStatistics:
    """The probe's statistics of a `Measurement` as a function of prompt-group counts
    (`stats.bootstrap`'s statistic): a resample weights each sequence by its group's count. Sums
    are per group (a resample's is counts @ group sums); medians are `stats.weighted_medians`;
    the exponents `clipbench.fairness`'s. At counts of one per group: the data as observed."""

    def __init__(self, m: Measurement, edges: np.ndarray, ks: Sequence[int]):
        self.edges = np.asarray(edges, dtype=float)
        self.ks = tuple(int(k) for k in ks)
        self.blocks = position_blocks(self.ks, m.log_ratio.shape[1])
        self.group = m.group
        n_bins = len(self.edges) - 1
        lengths = m.lengths.astype(float)
        s = m.seq_log_ratio
        bins = fairness.assign_bins(lengths, self.edges)
        in_bin = np.eye(n_bins)[bins]  # (N, bins)
        log_length = np.log(np.clip(lengths, 1, None))
        mask = m.mask
        x = np.where(mask, m.log_ratio, 0.0)
        pairs = mask[:, 1:] & mask[:, :-1]
        per_block = [(np.abs(x[:, lo:hi]).sum(axis=1), mask[:, lo:hi].sum(axis=1)) for lo, hi in self.blocks]
        columns = {
            "n": in_bin,
            "log_length": in_bin * log_length[:, None],
            "s": in_bin * s[:, None],
            "s2": in_bin * (s * s)[:, None],
            "abs_l": np.column_stack([a for a, _ in per_block]),
            "tokens": np.column_stack([c for _, c in per_block]),
            "lag": np.column_stack(
                [
                    x.sum(1),
                    (x * x).sum(1),
                    mask.sum(1),
                    (x[:, 1:] * x[:, :-1] * pairs).sum(1),
                    (x[:, :-1] * pairs).sum(1),
                    (x[:, 1:] * pairs).sum(1),
                    pairs.sum(1),
                ]
            ),
        }
        to_group = np.eye(m.n_groups)[m.group].T  # (groups, N)
        self.sums = {name: to_group @ values for name, values in columns.items()}
        self.bin_medians = [self._sorted(np.abs(s), bins == b) for b in range(n_bins)]
        self.prefix = fairness.prefix_sums(m.log_ratio, mask, self.ks)
        self.rung_medians = [
            self._sorted(np.abs(np.nan_to_num(self.prefix[:, j])), np.isfinite(self.prefix[:, j]))
            for j in range(len(self.ks))
        ]

    def _sorted(self, values: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(values[keep], kind="stable")
        return values[keep][order], self.group[keep][order]

    def names(self) -> list[str]:
        n_bins = len(self.edges) - 1
        return [
            "a",
            "a_within",
            "lag1_autocorrelation",
            "token_mean",
            *(f"{what}_bin{b}" for what in ("abs_s_median", "s_mean", "s_std") for b in range(n_bins)),
            *(f"abs_s_median_k{k}" for k in self.ks),
            *(f"abs_l_mean_block{j}" for j in range(len(self.blocks))),
        ]

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, dtype=float)
        total = {name: counts @ values for name, values in self.sums.items()}
        with np.errstate(invalid="ignore", divide="ignore"):
            n = total["n"]
            log_length = total["log_length"] / n
            s_mean = total["s"] / n
            s_var = np.where(n > 1, (total["s2"] - n * s_mean**2) / np.where(n > 1, n - 1, 1), np.nan)
            s_std = np.sqrt(np.clip(s_var, 0, None))
            abs_l = total["abs_l"] / total["tokens"]
            sum_l, sum_l2, tokens, cross, first, second, n_pairs = total["lag"].T
            m = sum_l / tokens
            lag1 = (cross - m * (first + second) + m * m * n_pairs) / (sum_l2 - tokens * m * m)
        units = counts.astype(np.int64)
        medians = np.column_stack([stats.weighted_medians(v, g, units) for v, g in self.bin_medians])
        rungs = np.column_stack(
            [stats.weighted_medians(v, g, units) for v, g in self.rung_medians]
            or [np.empty((len(counts), 0))]
        )
        a = np.array([fairness.s_growth_exponent(medians[r], log_length[r]) for r in range(len(counts))])
        a_w = np.array([fairness.within_sequence_exponent(rungs[r], self.ks) for r in range(len(counts))])
        return np.column_stack([a, a_w, lag1, m, medians, s_mean, s_std, rungs, abs_l])


def _interval(point: float, low: float, high: float) -> dict[str, float | None]:
    return {"value": _finite(point), "lo": _finite(low), "hi": _finite(high)}


def _finite(x: Any) -> Any:
    """JSON has no NaN: None for a non-finite float."""
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def measurement_statistics(
    m: Measurement,
    *,
    edges: np.ndarray | None = None,
    n_bins: int = fairness.DEFAULT_BINS,
    ks: Sequence[int] | None = None,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = stats.DEFAULT_LEVEL,
) -> dict[str, Any]:
    """The exponents and the per-token diagnostics of `m` (module docstring), each with its
    bootstrap interval over the prompt groups. `edges`: the length bins (default: `n_bins`
    quantiles of the measured lengths); `ks`: the prefix ladder (default: `default_ladder`, 8,
    16, ... while at least `MIN_RUNG_SEQUENCES` sequences reach the rung)."""
    if edges is None:
        edges = fairness.length_bin_edges(m.lengths, n_bins)
    ks = default_ladder(m.lengths) if ks is None else tuple(ks)
    statistic = _GroupStatistics(m, edges, ks)
    point, low, high = stats.bootstrap(
        statistic, [m.n_groups], n_resamples=n_resamples, seed=seed, key=("probe",), level=level
    )
    value = {name: (point[i], low[i], high[i]) for i, name in enumerate(statistic.names())}
    lengths = m.lengths.astype(float)
    bins = fairness.assign_bins(lengths, statistic.edges)
    by_bin = []
    for b in range(len(statistic.edges) - 1):
        inside = bins == b
        if not inside.any():
            continue
        by_bin.append(
            {
                "bin": b,
                "bin_lo": float(statistic.edges[b]),
                "bin_hi": float(statistic.edges[b + 1]),
                "n": int(inside.sum()),
                "length_mean": float(lengths[inside].mean()),
                **{what: _interval(*value[f"{what}_bin{b}"]) for what in ("abs_s_median", "s_mean", "s_std")},
            }
        )
    reached = np.isfinite(statistic.prefix).sum(axis=0)
    mask = m.mask
    return {
        "a": _interval(*value["a"]),
        "a_within": _interval(*value["a_within"]),
        "lag1_autocorrelation": _interval(*value["lag1_autocorrelation"]),
        "token_mean": _interval(*value["token_mean"]),
        "by_length_bin": by_bin,
        "prefix": [
            {"k": k, "n": int(reached[j]), "abs_s_median": _interval(*value[f"abs_s_median_k{k}"])}
            for j, k in enumerate(ks)
        ],
        "position": [
            {
                "positions": [lo, hi],
                "tokens": int(mask[:, lo:hi].sum()),
                "abs_l_mean": _interval(*value[f"abs_l_mean_block{j}"]),
            }
            for j, (lo, hi) in enumerate(statistic.blocks)
        ],
        "edges": [float(e) for e in statistic.edges],
        "ks": list(ks),
    }


def _tensors(m: Measurement) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(m.log_ratio.astype(np.float64)),
        torch.from_numpy(m.mask),
        torch.from_numpy(m.advantages.astype(np.float64)),
    )


def rule_records(m: Measurement, rules: Mapping[str, methods.Method], seed: int = 0) -> pd.DataFrame:
    """Per rule and measured sequence, the clip records of `clipbench.simulate.rule_records` on the
    measured log-ratios, with `seed` and the prompt group as `step`: `stats.fairness_intervals`
    resamples a run's steps, and here the independent unit is the prompt group."""
    from clipbench.simulate import rule_records as records_of

    records = records_of(rules, *_tensors(m))
    records["seed"] = seed
    records["step"] = np.tile(m.group, len(rules))
    return records


def rule_predictions(
    m: Measurement,
    rules: Mapping[str, methods.Method],
    edges: np.ndarray,
    *,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = stats.DEFAULT_LEVEL,
    a: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(records, per-rule metrics, per-rule and bin rates) at each rule's configured band, with
    intervals over the prompt groups (`stats.fairness_intervals` on `rule_records`, clip column
    seq_out). With `a` (the probe's across exponent), RuntimeError unless every rule's S-growth
    exponent from `clipbench.fairness` equals it: both are the one definition on the same bins."""
    records = rule_records(m, rules)
    groups, bins = stats.fairness_intervals(
        records, n_resamples=n_resamples, seed=seed, edges=edges, clip_column="seq_out", level=level
    )
    groups = groups[groups["scope"] == "seed"].reset_index(drop=True)
    bins = bins[bins["scope"] == "seed"].reset_index(drop=True)
    if a is not None and not np.allclose(groups["s_exponent"], a, rtol=1e-9, atol=1e-12, equal_nan=True):
        raise RuntimeError(
            f"probe: the across exponent {a!r} differs from clipbench.fairness's S-growth exponent "
            f"{groups['s_exponent'].tolist()} on the same records and bins"
        )
    return records, groups, bins


def flattest_band(
    m: Measurement,
    edges: np.ndarray,
    target_rate: float = 0.2,
    exponents: Sequence[float] = BAND_EXPONENTS,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """For each b of `exponents`: the `powerband` rule with W(L) = L^b (fit=false), symmetric,
    c = the (1 - target_rate) quantile of |S| / L^b (so it puts about `target_rate` of the
    sequences out of band), run through `clipbench.simulate.rule_outputs`; its clip rate, spread
    and LRE (seq_out per bin of `edges`, combined by `stats.group_metrics`, i.e. by
    `clipbench.fairness`'s functions as `fairness.summarize_bins` does). Returns (the grid, the
    pick): the pick's `b` is the middle of the exponents whose spread is smallest (`b_range` their
    extent)."""
    from clipbench.simulate import rule_outputs

    s = np.abs(m.seq_log_ratio)
    lengths = m.lengths.astype(float)
    bins = fairness.assign_bins(lengths, edges)
    if np.unique(bins).size < 2:
        pick = {"b": None, "b_range": None, "spread": None, "target_rate": target_rate}
        return pd.DataFrame(columns=["b", "c", "clip_rate", "spread", "lre"]), {
            **pick,
            "reason": "the measured lengths fill one length bin: no spread across lengths to minimise",
        }
    tensors = _tensors(m)
    n = np.bincount(bins, minlength=len(edges) - 1).astype(float)
    full = n > 0  # empty bins left out, as clip_rate_by_bin does
    log_length = (
        np.bincount(bins, weights=np.log(np.clip(lengths, 1, None)), minlength=len(n))[full] / n[full]
    )
    rows = []
    for b in exponents:
        c = float(np.quantile(s / lengths**b, 1.0 - target_rate))
        row = {"b": float(b), "c": c, "clip_rate": np.nan, "spread": np.nan, "lre": np.nan}
        if c > 0 and math.isfinite(c):
            rule = methods.get_method(POWERBAND, c_low=c, c_high=c, b=float(b), fit=False)
            out = rule_outputs({POWERBAND: rule}, *tensors)[POWERBAND].seq_out.double().numpy()
            rates = np.bincount(bins, weights=out, minlength=len(n))[full] / n[full]
            metrics = stats.group_metrics(rates, n[full] / n.sum(), log_length, None)
            row.update({k: metrics[k] for k in ("clip_rate", "spread", "lre")})
        rows.append(row)
    grid = pd.DataFrame(rows)
    usable = grid.dropna(subset=["spread"])
    if usable.empty:
        return grid, {"b": None, "b_range": None, "spread": None, "target_rate": target_rate}
    best = usable["spread"].min()
    tied = usable.loc[np.isclose(usable["spread"], best, rtol=0, atol=1e-12), "b"]
    pick = {
        "b": float((tied.min() + tied.max()) / 2),
        "b_range": [float(tied.min()), float(tied.max())],
        "spread": float(best),
        "target_rate": target_rate,
    }
    return grid, pick


# --------------------------------------------------------------------------- the recommendation


def _where(b: float, interval: Mapping[str, float | None]) -> str:
    lo, hi = interval["lo"], interval["hi"]
    if lo is None or hi is None:
        return "cannot be placed (no interval)"
    if b < lo:
        return "lies below a's interval: it clips long responses more than short ones"
    if b > hi:
        return "lies above a's interval: it clips short responses more than long ones"
    return "lies inside a's interval: it is consistent with clipping every length alike"


def _fmt(interval: Mapping[str, float | None], digits: int = 2) -> str:
    def one(x):
        return "n/a" if x is None else f"{x:.{digits}f}"

    return f"{one(interval['value'])} [{one(interval['lo'])}, {one(interval['hi'])}]"


def recommendation(summary: Mapping[str, Any]) -> list[str]:
    """The honest reading of a probe's numbers, sentence by sentence."""
    ex = summary["exponents"]
    a, a_w = ex["a"], ex["a_within"]
    boot = summary["bootstrap"]
    if len(summary["by_length_bin"]) < 2:
        lengths = ", ".join(f"{b['bin_lo']:g}-{b['bin_hi']:g}" for b in summary["by_length_bin"])
        return [
            f"The measured responses fill one length bin ({lengths} tokens; "
            f"{summary['rollout']['truncated_frac']:.0%} of all responses cut at the token limit): a, every "
            "rule's spread and the flattest band need lengths that differ. Sample longer responses "
            "(--max-new-tokens) or more prompts.",
            f"Within sequences (prefix sums) S grows as k^a_w with a_w = {_fmt(a_w)} "
            f"({boot['level']:.0%} interval, {boot['units']} prompt groups resampled).",
            *(
                [f"Advantages: {summary['advantages']['note']}"]
                if summary["advantages"]["source"] != "verifier"
                else []
            ),
        ]
    lines = [
        f"Across sequences median |S| grows as L^a with a = {_fmt(a)}; within sequences (prefix sums, "
        f"the same responses) as k^a_w with a_w = {_fmt(a_w)} ({boot['level']:.0%} intervals, "
        f"{boot['units']} prompt groups resampled).",
        "A band on S of half-width proportional to L^b clips every length alike when b = a: "
        + "; ".join(
            f"{name} (b = {b:g}) {_where(b, a)}"
            for name, b in (("seq_ppo's fixed band", 0.0), ("FSPO's sqrt(L)", 0.5), ("GSPO's S/L band", 1.0))
        )
        + ".",
    ]
    if a["lo"] is not None and a["hi"] is not None and a["lo"] <= 0 and a["hi"] >= 1:
        lines.append(
            "a's interval holds 0, 1/2 and 1 alike: too wide to choose between these bands; measure more "
            f"prompt groups (--n-prompts) or responses of more varied length ({len(summary['by_length_bin'])} "
            "length bins here)."
        )
    flat = summary["flattest_band"]
    if flat["b"] is not None:
        lines.append(
            f"On these records the power band clipping {flat['target_rate']:.0%} of sequences is flattest "
            f"at b = {flat['b']:.2f} (smallest spread {flat['spread']:.2f} for b in "
            f"[{flat['b_range'][0]:.2f}, {flat['b_range'][1]:.2f}], grid 0-3 by 0.05; a point estimate, "
            "no interval)."
        )
    rules = summary["rules"]
    if rules:
        spreads = "; ".join(
            f"{r['method']} {_fmt(r['spread'])} at clip rate {_fmt(r['clip_rate'])}" for r in rules
        )
        lines.append(f"At their configured bands the sequence rules' clip spreads would be: {spreads}.")
        idle = [r["method"] for r in rules if not r["clip_rate"]["value"]]
        if idle:
            lines.append(
                f"{', '.join(idle)} clip nothing here at their configured bands (a spread of 0 by definition, "
                "not flatness): give them a band for this model's scale with --set to compare them."
            )
        clipping = [r for r in rules if r["method"] not in idle]
        intervals = {r["method"]: (r["spread"]["lo"], r["spread"]["hi"]) for r in clipping}
        if all(lo is not None and hi is not None for lo, hi in intervals.values()) and len(clipping) > 1:
            best = stats.separated_best(intervals, better="lower")
            if best is not None:
                lines.append(
                    f"{best}'s spread interval lies below every other clipping rule's: it is the flattest here."
                )
            else:
                points = {r["method"]: r["spread"]["value"] for r in clipping}
                tied = stats.tied_best(
                    intervals, {k: v if v is not None else np.nan for k, v in points.items()}, "lower"
                )
                if tied:
                    lines.append(
                        f"No rule is separated: {', '.join(tied)} are tied for the flattest (overlapping intervals)."
                    )
    if None not in (a["lo"], a["hi"], a_w["lo"], a_w["hi"]):
        if a_w["hi"] < a["lo"]:
            lines.append(
                "a_w lies below a: over their common first tokens, long responses carry larger log-ratios "
                "than short ones, so part of the growth across sequences comes from which responses are "
                "long, not from accumulating tokens."
            )
        elif a_w["lo"] > a["hi"]:
            lines.append(
                "a_w lies above a: S grows faster along a response than across responses of different lengths."
            )
        else:
            lines.append(
                "The two exponents' intervals overlap: no sign here that length and content are confounded."
            )
    adv = summary["advantages"]
    if adv["source"] != "verifier":
        lines.append(f"Advantages: {adv['note']}")
    lines.append(
        f"Measured on {summary['rollout']['measured']} responses after {summary['config']['updates']} update(s) "
        f"at lr {summary['config']['lr']:g}; a larger learning rate or more updates move the policy further, "
        "and the exponents can change with them. Mean l_t (the drift a zero-centred band ignores): "
        f"{_fmt(ex['token_mean'], 4)}."
    )
    return lines


# --------------------------------------------------------------------------- the model side


@dataclass
class ProbeRun:
    """What `run` measured: the measurement half (`measurement`, `sequences`: one row per measured
    sequence, `SEQUENCE_COLUMNS` without S and the rules' columns), and what the JSON reports of
    the rollout, the advantages, the updates and the timings."""

    measurement: Measurement
    sequences: pd.DataFrame
    rollout: dict[str, Any]
    advantages: dict[str, Any]
    updates: list[dict[str, float]]
    timings: dict[str, float]


def run(config: ProbeConfig, carrier: TrainConfig, out_dir: str | Path) -> ProbeRun:
    """Sample, score, split, update and measure (module docstring, steps 1-5) with the trainer's
    own pieces; `out_dir` receives only a debug dump should a loss or gradient be non-finite."""
    from clipbench.trainer import Trainer, _EntropyTally, prompt_indices, training_prompts

    timings: dict[str, float] = {}
    start = time.perf_counter()
    trainer = Trainer(carrier, out_dir, progress=False, own_schedule=True)
    trainer._load_policy(carrier.model)
    trainer.problems, trainer.prompts = training_prompts(carrier.data, trainer.tokenizer)
    trainer.engine = trainer._make_engine(carrier.model)
    timings["load_s"] = time.perf_counter() - start
    try:
        t0 = time.perf_counter()
        samples, answers = trainer._rollout(0)
        timings["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rewards, statuses = trainer._score(samples, answers)
        timings["score_s"] = time.perf_counter() - t0
        advantages = trainer._advantages(rewards)
        g = config.samples
        update_groups, measure_groups = split_groups(config.n_prompts, config.seed)
        update_rows, measure_rows = group_rows(update_groups, g), group_rows(measure_groups, g)
        nonzero = int((advantages.view(config.n_prompts, g) != 0).any(dim=1)[update_groups].sum())
        if nonzero:
            source, note = "verifier", f"the verifier's rewards through {config.estimator}"
        else:
            source = "random_signs"
            note = (
                "every prompt group of the update half had zero advantage (all responses equally rewarded), "
                "so every advantage was replaced by an independent random sign (+1 or -1, probability 1/2, "
                "seeded): the updates follow a random objective, as a stand-in for an RL step's movement"
            )
            advantages = torch.from_numpy(fallback_signs(len(advantages), config.seed)).to(advantages.dtype)
        t0 = time.perf_counter()
        entropy = _EntropyTally(len(advantages))
        minibatches = trainer._old_logprobs(samples, [update_rows, measure_rows], entropy)
        update_metrics, _ = trainer._updates(0, minibatches[:1], advantages, rewards, entropy)
        timings["update_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        measured = _measure(trainer, minibatches[1])
        timings["measure_s"] = time.perf_counter() - t0
    finally:
        if hasattr(trainer.engine, "close"):
            trainer.engine.close()
    problems = prompt_indices(config.seed, 0, config.n_prompts, len(trainer.problems))
    group_of = {row: i for i, grp in enumerate(measure_groups) for row in group_rows([grp], g)}
    lengths = [len(c) for c in samples.completion_ids]
    sequences = pd.DataFrame(
        {
            "seq": range(len(measure_rows)),
            "group": [group_of[r] for r in measure_rows],
            "problem": [problems[r // g] for r in measure_rows],
            "sample": [r % g for r in measure_rows],
            "length": [lengths[r] for r in measure_rows],
            "finished": [bool(samples.finished[r]) for r in measure_rows],
            "reward": rewards[measure_rows].numpy(),
            "advantage": advantages[measure_rows].double().numpy(),
            "entropy": entropy.per_sequence[measure_rows].numpy(),
            "log_ratio": [measured[r] for r in measure_rows],
            "text": [samples.texts[r] for r in measure_rows],
        }
    )
    measurement = Measurement.from_sequences(
        list(sequences["log_ratio"]), sequences["group"], sequences["advantage"]
    )
    rollout = {
        "prompts": config.n_prompts,
        "samples": g,
        "update_groups": update_groups,
        "measure_groups": measure_groups,
        "update_problems": [problems[j] for j in update_groups],
        "measure_problems": [problems[j] for j in measure_groups],
        "measured": len(measure_rows),
        "tokens_generated": int(sum(lengths)),
        "length_mean": float(np.mean(lengths)),
        "truncated_frac": 1.0 - float(np.mean(samples.finished)),
        "reward_mean": float(rewards.mean()),
        "verifier": statuses,
    }
    adv = {
        "source": source,
        "note": note,
        "update_groups_with_signal": nonzero,
        "update_groups": len(update_groups),
    }
    return ProbeRun(measurement, sequences, rollout, adv, update_metrics, timings)


@torch.no_grad()
def _measure(trainer, minibatch) -> dict[int, np.ndarray]:
    """Per rollout row of `minibatch`, l_t = log pi_new - log pi_old over its response tokens, in
    order: the policy's log-probs now (after the updates) against the old ones `_old_logprobs`
    computed on the same tensors before them."""
    from clipbench.logprobs import token_logprobs

    cfg = trainer.config
    out = {}
    for micro in minibatch.micro:
        logp, _ = token_logprobs(
            trainer.model, micro.batch, cfg.rollout.temperature, chunk_tokens=cfg.optim.logprob_chunk_tokens
        )
        diff = (logp - micro.old_logp).double().cpu()
        mask = micro.batch.response_mask.cpu()
        for i, row in enumerate(micro.rows):
            out[row] = diff[i][mask[i]].numpy()
    return out


# --------------------------------------------------------------------------- analysis and outputs


def analyse(probe_run: ProbeRun, config: ProbeConfig) -> tuple[dict[str, Any], pd.DataFrame]:
    """The summary (probe.json without provenance) and the per-sequence frame (with S, the prefix
    sums and each rule's clip indicators) of a run."""
    m = probe_run.measurement
    t0 = time.perf_counter()
    edges = fairness.length_bin_edges(m.lengths, config.bins)
    boot = {"n_resamples": config.resamples, "seed": config.bootstrap_seed}
    measured = measurement_statistics(m, edges=edges, **boot)
    rules = config.build_rules()
    a = measured["a"]["value"]
    records, groups, bins = rule_predictions(m, rules, edges, a=np.nan if a is None else a, **boot)
    grid, pick = flattest_band(m, edges, config.target_rate)
    rule_rows = []
    for row in groups.itertuples(index=False):
        rule = rules[row.method]
        rule_bins = bins[bins["method"] == row.method]
        rule_rows.append(
            {
                "method": row.method,
                "hparams": rule.hparams(),
                **{
                    k: _interval(getattr(row, k), getattr(row, f"{k}_lo"), getattr(row, f"{k}_hi"))
                    for k in ("clip_rate", "spread", "slope", "lre")
                },
                "bins": [
                    {
                        "bin": int(b.bin),
                        "length_mean": float(b.length_mean),
                        "n": int(b.n),
                        "seq_out": _interval(b.seq_out, b.seq_out_lo, b.seq_out_hi),
                    }
                    for b in rule_bins.itertuples(index=False)
                ],
            }
        )
    summary = {
        "config": config.to_dict(),
        "rollout": probe_run.rollout,
        "advantages": probe_run.advantages,
        "updates": probe_run.updates,
        "bootstrap": {
            "unit": "prompt group of the measurement half (a group's samples share their prompt)",
            "units": m.n_groups,
            "resamples": config.resamples,
            "seed": config.bootstrap_seed,
            "level": stats.DEFAULT_LEVEL,
        },
        "exponents": {k: measured[k] for k in ("a", "a_within", "lag1_autocorrelation", "token_mean")},
        "by_length_bin": measured["by_length_bin"],
        "prefix": measured["prefix"],
        "position": measured["position"],
        "rules": rule_rows,
        "flattest_band": {
            **pick,
            "grid": [{k: _finite(v) for k, v in r.items()} for r in grid.to_dict("records")],
        },
    }
    summary["recommendation"] = recommendation(summary)
    frame = probe_run.sequences.copy()
    frame["S"] = m.seq_log_ratio
    prefix = fairness.prefix_sums(m.log_ratio, m.mask, measured["ks"])
    for j, k in enumerate(measured["ks"]):
        frame[f"S_{k}"] = prefix[:, j]
    for name in rules:
        own = records[records["method"] == name]
        frame[f"seq_out_{name}"] = own["seq_out"].to_numpy()
        frame[f"seq_clip_{name}"] = own["seq_clip"].to_numpy()
    probe_run.timings["analyse_s"] = time.perf_counter() - t0
    return summary, frame


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return _finite(obj)


def write_sequences(frame: pd.DataFrame, path: Path, prov: Mapping[str, Any]) -> Path:
    """The per-sequence Parquet file, its provenance in the schema metadata (`clipbench_provenance`),
    written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"clipbench_provenance"] = json.dumps(_json_safe(dict(prov)), sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_sequences(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A probe's per-sequence file and its provenance."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if b"clipbench_provenance" not in meta:
        raise ValueError(f"{path}: not a clipbench probe file (no clipbench_provenance metadata)")
    return table.to_pandas(), json.loads(meta[b"clipbench_provenance"])


def read_measurement(path: str | Path) -> tuple[Measurement, dict[str, Any]]:
    """The measured log-ratios of a probe's per-sequence file (`read_sequences`) as the
    `Measurement` its numbers were computed from (each row's l_t, prompt group and advantage), and
    the file's provenance: what clipbench.calibration reads, so that calibrating reuses the probe's
    measurement instead of sampling again. ValueError naming the file when it lacks those columns."""
    frame, prov = read_sequences(path)
    missing = [c for c in ("log_ratio", "group", "advantage") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: lacks the columns {missing}; not the sequences.parquet of `clipbench probe`"
        )
    sequences = [np.asarray(values, dtype=np.float64) for values in frame["log_ratio"]]
    return Measurement.from_sequences(sequences, frame["group"], frame["advantage"]), prov


def plot(summary: Mapping[str, Any], path: Path) -> Path:
    """Median |S| per length bin (across) and median |S_k| per rung (within) against length, log
    axes, with their intervals and L^(1/2), L^1 guides through the first bin's point."""
    from clipbench.plots import pyplot, save_figure

    plt, _ = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    ex = summary["exponents"]

    def series(rows, x, label, marker):
        rows = [r for r in rows if r["abs_s_median"]["value"]]
        if not rows:
            return None
        xs = np.array([r[x] for r in rows], dtype=float)
        ys = np.array([r["abs_s_median"]["value"] for r in rows])
        lo = np.array([r["abs_s_median"]["lo"] or np.nan for r in rows])
        hi = np.array([r["abs_s_median"]["hi"] or np.nan for r in rows])
        err = np.vstack([np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)])
        ax.errorbar(xs, ys, yerr=np.nan_to_num(err), marker=marker, capsize=3, label=label)
        return xs, ys

    across = series(
        summary["by_length_bin"], "length_mean", f"median |S| per length bin (a = {_fmt(ex['a'])})", "o"
    )
    series(summary["prefix"], "k", f"median |S_k|, prefixes (a_w = {_fmt(ex['a_within'])})", "s")
    within = [float(r["k"]) for r in summary["prefix"] if r["abs_s_median"]["value"]]
    if across is not None:
        span = np.concatenate([across[0], within])
        xs = np.geomspace(span.min(), span.max(), 50)
        x0, y0 = across[0][0], across[1][0]
        for power, style in ((0.5, ":"), (1.0, "--")):
            ax.plot(xs, y0 * (xs / x0) ** power, style, color="grey", label=f"L^{power:g} guide")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("length L (bin mean) or prefix k (tokens)")
    ax.set_ylabel("median |S|")
    ax.set_title("How S grows with length (clipbench probe)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_outputs(
    summary: dict[str, Any], frame: pd.DataFrame, out_dir: str | Path, timings: Mapping[str, float]
) -> dict[str, Path]:
    """probe.json, sequences.parquet and probe.png in `out_dir` (`clipbench.artifacts` names them),
    each traceable to the config, seed, versions and commit (`clipbench.provenance`)."""
    from clipbench.provenance import atomic_write_json, provenance

    out_dir = Path(out_dir)
    prov = provenance(summary["config"], seed=summary["config"]["seed"])
    paths = artifacts.probe_paths(out_dir)
    summary = {**summary, "timings": dict(timings), "provenance": prov}
    plot(summary, paths["plot"])
    write_sequences(frame, paths["sequences"], prov)
    atomic_write_json(paths["summary"], _json_safe(summary))
    return paths
