"""The band-geometry simulation: clip rate against response length for every registered rule,
with no model at all.

Per-token log-ratios l_t ~ N(mu, sigma^2) are drawn for `n` sequences at each length L, fed
through every rule's `loss` (old_logp = 0, logp = l, random advantage signs), and the per-sequence
`seq_out` / `seq_clip` are averaged per length. All rules see the same draws (common random
numbers), and the draws at a length depend only on (seed, L), so adding a length or a rule
changes nothing else. Each length is its own bin for the fairness metrics (`clipbench.fairness`).

Under this model S ~ N(mu L, sigma^2 L): a band on S of half-width c sqrt(L) (FSPO) clips every
length alike, a fixed band on S (seq_ppo) clips long responses more, and a fixed band on S / L
(GSPO) clips short responses more.

`rule_outputs` (every rule's `loss` on given log-ratios, old_logp = 0) is the one code path from
log-ratios to clip indicators: the simulation feeds it Gaussian draws, `clipbench probe` a
model's measured log-ratios (`rule_records`), and both summarise with `clipbench.fairness`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clipbench import fairness, methods
from clipbench.provenance import atomic_write_json, atomic_write_text, provenance

DEFAULT_LENGTHS = tuple(2**k for k in range(3, 13))  # 8 ... 4096


@dataclass(frozen=True)
class SimulationConfig:
    """sigma, mu: per-token log-ratio l_t ~ N(mu, sigma^2); lengths: the response lengths L;
    n: sequences per length; seed: the only source of randomness; methods: rule names (empty =
    every registered rule); method_params: per-rule hyperparameter overrides;
    chunk_tokens: how many tokens are drawn at once (memory bound, no effect on results)."""

    sigma: float = 0.01
    mu: float = 0.0
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    n: int = 20_000
    seed: int = 0
    methods: tuple[str, ...] = ()
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    chunk_tokens: int = 1 << 22

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma={self.sigma!r}: must be > 0")
        if not self.lengths or any(int(L) < 1 for L in self.lengths):
            raise ValueError(f"lengths={self.lengths!r}: must be a non-empty list of integers >= 1")
        if self.n < 1:
            raise ValueError(f"n={self.n!r}: must be >= 1")
        unknown = set(self.method_params) - set(self.method_names())
        if unknown:
            raise ValueError(f"method_params names methods not simulated: {sorted(unknown)}")

    def method_names(self) -> list[str]:
        return list(self.methods) if self.methods else methods.available_methods()

    def build_methods(self) -> dict[str, methods.Method]:
        return {
            name: methods.get_method(name, **dict(self.method_params.get(name, {})))
            for name in self.method_names()
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lengths"] = list(self.lengths)
        d["methods"] = self.method_names()
        d["method_params"] = {k: dict(v) for k, v in self.method_params.items()}
        d.pop("chunk_tokens")
        return d


def _generator(seed: int, length: int) -> torch.Generator:
    """A generator whose stream depends on (seed, length) only."""
    state = np.random.SeedSequence([seed, length]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def rule_outputs(
    rules: Mapping[str, methods.Method],
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
) -> dict[str, methods.LossOutput]:
    """Each rule's output on per-token log-ratios l_t (B, T) with response `mask` (B, T) and
    advantages (B,): `rule.loss(l, 0, A, mask)` (old_logp = 0, so logp - old_logp = l), without
    gradients. `seq_out`, `seq_clip`, `seq_log_ratio` (S) and `lengths` (L) are per sequence."""
    zeros = torch.zeros_like(log_ratio)
    with torch.no_grad():
        return {name: rule.loss(log_ratio, zeros, advantages, mask) for name, rule in rules.items()}


def rule_records(
    rules: Mapping[str, methods.Method],
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
) -> pd.DataFrame:
    """`rule_outputs` as per-sequence records, rule after rule (each rule's rows in the batch's
    order): method, length (L), S, seq_out, seq_clip; what `clipbench.fairness` reads."""
    frames = [
        pd.DataFrame(
            {
                "method": name,
                "length": out.lengths.long().numpy(),
                "S": out.seq_log_ratio.double().numpy(),
                "seq_out": out.seq_out.double().numpy(),
                "seq_clip": out.seq_clip.double().numpy(),
            }
        )
        for name, out in rule_outputs(rules, log_ratio, mask, advantages).items()
    ]
    return pd.concat(frames, ignore_index=True)


def simulate_length(
    config: SimulationConfig, rules: Mapping[str, methods.Method], length: int
) -> pd.DataFrame:
    """Per-sequence records (method, length, seq_out, seq_clip, S) for `n` sequences of one length."""
    gen = _generator(config.seed, length)
    rows_per_chunk = max(1, config.chunk_tokens // length)
    seq_out = {name: np.empty(config.n) for name in rules}
    seq_clip = {name: np.empty(config.n) for name in rules}
    seq_log_ratio = np.empty(config.n)
    for start in range(0, config.n, rows_per_chunk):
        rows = min(rows_per_chunk, config.n - start)
        part = slice(start, start + rows)
        log_ratio = config.mu + config.sigma * torch.randn(rows, length, generator=gen, dtype=torch.float64)
        signs = torch.randint(0, 2, (rows,), generator=gen).to(torch.float64) * 2 - 1
        mask = torch.ones(rows, length, dtype=torch.bool)
        seq_log_ratio[part] = log_ratio.sum(dim=-1).numpy()
        for name, out in rule_outputs(rules, log_ratio, mask, signs).items():
            seq_out[name][part] = out.seq_out.numpy()
            seq_clip[name][part] = out.seq_clip.numpy()
    frames = [
        pd.DataFrame(
            {
                "method": name,
                "length": length,
                "seq_out": seq_out[name],
                "seq_clip": seq_clip[name],
                "S": seq_log_ratio,
            }
        )
        for name in rules
    ]
    return pd.concat(frames, ignore_index=True)


def run_simulation(config: SimulationConfig) -> pd.DataFrame:
    """Per-sequence records for every rule and length."""
    rules = config.build_methods()
    with torch.no_grad():
        return pd.concat([simulate_length(config, rules, int(L)) for L in config.lengths], ignore_index=True)


@dataclass(frozen=True)
class SimulationResult:
    by_length: pd.DataFrame  # method, length, n, share, seq_out, seq_clip, ...
    summary: pd.DataFrame  # method, clip_rate, spread, slope, lre (on seq_out)
    config: SimulationConfig


def summarize(records: pd.DataFrame, config: SimulationConfig) -> SimulationResult:
    edges = fairness.exact_length_edges(config.lengths)
    by_length, summary = fairness.fairness_summary(records, by=("method",), edges=edges)
    by_length = by_length.rename(columns={"length_mean": "length"}).drop(columns=["bin", "bin_lo", "bin_hi"])
    by_length["length"] = by_length["length"].astype(int)
    return SimulationResult(by_length=by_length, summary=summary, config=config)


def simulate(config: SimulationConfig) -> SimulationResult:
    return summarize(run_simulation(config), config)


def markdown_table(result: SimulationResult, prov: Mapping[str, Any]) -> str:
    """The per-rule table: level, hyperparameters, mean out-of-band rate, spread, slope, LRE."""
    rules = result.config.build_methods()
    lines = [
        "| method | level | hyperparameters | out-of-band rate | clip spread | clip slope | LRE | S growth a |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result.summary.itertuples(index=False):
        rule = rules[row.method]
        params = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in rule.hparams().items()
        )
        lines.append(
            f"| {row.method} | {rule.level} | {params} | {row.clip_rate:.4f} | {row.spread:.3f} | {row.slope:+.4f} | {row.lre:.4f} | {row.s_exponent:.2f} |"
        )
    cfg = result.config
    lines += [
        "",
        f"Per-token log-ratio ~ N({cfg.mu:g}, {cfg.sigma:g}^2); {cfg.n} sequences per length; lengths "
        f"{', '.join(map(str, cfg.lengths))}; seed {cfg.seed}. Each length is one bin; metrics on `seq_out` "
        "S growth a: median |S| ~ L^a (definitions: `clipbench/fairness.py`).",
        f"Config hash {prov['config_hash']}, commit {prov['commit']}, torch {prov['versions'].get('torch')}.",
    ]
    return "\n".join(lines) + "\n"


def plot_clip_by_length(by_length: pd.DataFrame, path: Path, title: str) -> Path:
    """Two panels (out of band; clip active) of rate against length, log x-axis, a line per rule."""
    from clipbench.plots import clip_rate_lines, pyplot, save_figure, set_length_axis

    plt, sns = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = (("seq_out", "outside the band (seq_out)"), ("seq_clip", "clip active (seq_clip)"))
    for ax, (column, label) in zip(axes, panels, strict=True):
        clip_rate_lines(sns, ax, by_length, x="length", y=column)
        set_length_axis(ax, by_length["length"])
        ax.set_xlabel("response length L (tokens)")
        ax.set_ylabel("fraction of sequences")
        ax.set_title(label)
    axes[1].get_legend().remove()
    fig.suptitle(title)
    return save_figure(fig, path)


def write_outputs(result: SimulationResult, out_dir: Path | str) -> dict[str, Path]:
    """simulation.csv (per rule and length), simulation.md (the table), clip_by_length.png and
    provenance.json in `out_dir`."""
    out_dir = Path(out_dir)
    prov = provenance(result.config.to_dict(), seed=result.config.seed)
    cfg = result.config
    columns = ["method", "length", "n", "seq_out", "seq_clip"]
    paths = {
        "csv": atomic_write_text(
            out_dir / "simulation.csv", result.by_length[columns].to_csv(index=False, float_format="%.6f")
        ),
        "table": atomic_write_text(out_dir / "simulation.md", markdown_table(result, prov)),
        "plot": plot_clip_by_length(
            result.by_length,
            out_dir / "clip_by_length.png",
            f"Gaussian l_t ~ N({cfg.mu:g}, {cfg.sigma:g}^2), {cfg.n} seqs/length",
        ),
        "provenance": atomic_write_json(out_dir / "provenance.json", prov),
    }
    return paths
