"""Matched clip budgets: each sequence-level rule's band set so that it puts the same share of one
probe's responses out of band (the study's `calibrate` rule; `clipbench calibrate`), and, when
listed, a token-level rule's band so that it puts that share of the responses' tokens out of band.

Why: rules compared at their papers' or hand-picked bands differ in how much they clip, so their
accuracies mix the band's shape (how it grows with length) with its width. Calibrated, every rule
puts the same share of the same measured responses out of band, and what is left between them is
the shape: accuracy compared at equal clip budgets (the FSPO reviewers' "limited tuning").

The measurement is the probe's (`clipbench probe`, clipbench.probe): per-token log-ratios l_t of
the base model's responses after K updates on other prompts, read from its sequences.parquet by
`probe.read_measurement`. Nothing is sampled here.

Token rules (ppo, grpo, dapo, gmpo: eps_low, eps_high; cispo: eps_high; sapo's soft gates have no
band) are calibrated only when listed (`--methods`, a study's `calibration.methods`): their seq_out is
the share of a response's tokens outside the band, so their rate, like the clip rate the table gives
them, counts tokens, and a token rule and a sequence rule at the same target clip different units.

Per rule (`calibrate_rule`): the rule declares which hyperparameters set its band's half-widths
(`Method.band_fields`: fspo and powerband c_low, c_high; gspo and seq_ppo eps_low, eps_high). Every
band field not set by hand gets one value v (a symmetric band); band fields set by hand (the study's
method_params) keep their value, and so do the rule's other hyperparameters. Its out-of-band rate
r(v) is the mean over the measured responses of the rule's ``seq_out`` (`out_of_band_rate`), the
rule built by `methods.get_method` and run through `clipbench.simulate.rule_outputs`, the one path
from log-ratios to clip indicators; it is the clip rate the study's table reports
(`clipbench.fairness`: the share-weighted mean of the bins' rates, i.e. the plain mean). A wider band
never puts more responses out, so r falls with v, in steps of 1/N (N measured responses). `_search`
bisects between the fields' declared bounds for the step where r crosses the target, keeps the side
of that step closer to the target, finds the range of v that gives exactly that rate (its plateau,
`plateau` in the file; at most a factor 2 either side of the step), and picks the shortest decimal in
it (`_plain_value`): a readable value, not at the edge of a step. The rate is then recomputed at the
chosen value (`rate`). A rate further than the tolerance from the target is an error naming the rule
(measure more responses: probe.n_prompts, probe.samples).

calibration.json (`write_calibration`, `read_calibration`: the one owner of the format): the target,
the tolerance, the probe (its file, sha256, number of responses and prompt groups, prompts x samples,
seed, config and provenance), per rule its band fields, the calibrated values and the hand-set ones,
the full hyperparameters, the achieved rate and its source ("calibrated", "hand", "partly hand"),
and the calibration's own provenance. A train job's method_params are `run_params`: the calibrated
values, then the hand-set method_params over them (hand wins).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipbench import methods
from clipbench.errors import UserError

#: The format tag of calibration.json (`read_calibration` refuses any other).
FORMAT = "clipbench-calibration/1"
#: How far the achieved rate may be from the target (the study's calibration.tolerance).
DEFAULT_TOLERANCE = 0.02
#: What `rate` means, written into the file.
RATE_MEANING = (
    "the mean over the probe's measured responses of the rule's seq_out (a sequence-level rule: 1 when the "
    "response's weight lies outside the band, whatever the advantage's sign; a token-level rule: the share of "
    "the response's tokens outside its band), through clipbench.simulate.rule_outputs"
)
#: The plateau search stays within this factor of the step where the rate crosses the target.
_PLATEAU_FACTOR = 2.0
#: The search's open ends in the unit interval (`_Scale`).
_EDGE = 1e-12


class CalibrationError(UserError, ValueError):
    """A calibration that cannot be made: a rule without a declared band, a target out of reach."""


# --------------------------------------------------------------------------- which rules


def sequence_rules() -> list[str]:
    """Every registered rule whose level is "sequence"."""
    return [n for n in methods.available_methods() if methods.get_method_class(n).level == "sequence"]


def band_fields(name: str) -> tuple[str, ...]:
    """The band fields rule `name` declares (`Method.band_fields`); CalibrationError naming its file
    when it declares none."""
    cls = methods.get_method_class(name)
    if not cls.band_fields:
        raise CalibrationError(
            f"{name} ({methods._source_file(cls)}) declares no band: add `band_fields = (...)` to "
            f"{cls.__qualname__}, naming the float hyperparameters that set its band's half-widths"
        )
    return tuple(cls.band_fields)


def check_rules(
    names: Sequence[str],
    method_params: Mapping[str, Mapping[str, Any]],
    *,
    names_label: str = "--methods",
    params_label: str = "--set",
    listed: bool | None = None,
) -> list[str]:
    """The rules to calibrate (`names`, token rules too, or every registered sequence-level rule when
    empty), each a rule that declares its band and builds with its hand-set `method_params`;
    CalibrationError naming `names_label` (with the rule's index when the names were `listed` by
    the user; default: when `names` is not empty) or `params_label` otherwise. Nothing is computed."""
    chosen = list(names) or sequence_rules()
    listed = bool(names) if listed is None else listed
    for i, name in enumerate(chosen):
        where = f"{names_label}[{i}]" if listed else names_label
        try:
            band_fields(name)
        except ValueError as err:  # an unknown name, no band
            raise CalibrationError(f"{where}: {err}") from None
    unused = sorted(set(method_params) - set(chosen))
    if unused:
        raise CalibrationError(
            f"{params_label}: {', '.join(unused)} is not calibrated here ({', '.join(chosen)})"
        )
    for name, params in method_params.items():
        try:
            methods.get_method(name, **params)
        except ValueError as err:
            raise CalibrationError(f"{params_label}.{name}: {err}") from None
    return chosen


# --------------------------------------------------------------------------- the rate


def out_of_band_rate(rule: methods.Method, tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """The mean of `rule`'s seq_out over the sequences of `tensors` (l_t (N, T), mask (N, T),
    advantages (N,)), through `clipbench.simulate.rule_outputs`."""
    from clipbench.simulate import rule_outputs

    out = rule_outputs({"rule": rule}, *tensors)["rule"]
    return float(out.seq_out.double().mean())


def measurement_tensors(m) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(l_t, mask, advantages) of a `clipbench.probe.Measurement`, as the probe gives them to the rules."""
    return (
        torch.tensor(np.asarray(m.log_ratio), dtype=torch.float64),
        torch.tensor(np.asarray(m.mask), dtype=torch.bool),
        torch.tensor(np.asarray(m.advantages), dtype=torch.float64),
    )


@dataclasses.dataclass(frozen=True)
class _Scale:
    """The common value v of the free band fields as a function of t in (0, 1): v = lo + (hi - lo) t
    within finite bounds, v = lo + t / (1 - t) without an upper one; t stays in [_EDGE, 1 - _EDGE]."""

    lo: float
    hi: float

    def value(self, t: float) -> float:
        if math.isinf(self.hi):
            return self.lo + t / (1.0 - t)
        return self.lo + (self.hi - self.lo) * t

    def position(self, v: float) -> float:
        if math.isinf(self.hi):
            d = v - self.lo
            t = d / (1.0 + d)
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        return min(max(t, _EDGE), 1.0 - _EDGE)


def _limits(name: str, fields: Sequence[str]) -> _Scale:
    """The range of values every field of `fields` accepts (their `hparam` bounds, intersected)."""
    cls = methods.get_method_class(name)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    lows, highs = [], []
    for field in fields:
        low = meta[field].get("gt") if meta[field].get("gt") is not None else meta[field].get("ge")
        high = meta[field].get("lt") if meta[field].get("lt") is not None else meta[field].get("le")
        if low is None or low < 0:
            raise CalibrationError(
                f"{name}.{field}: a band field must be declared with a lower bound >= 0 (gt=0 or ge=0), "
                "a half-width"
            )
        lows.append(float(low))
        highs.append(math.inf if high is None else float(high))
    return _Scale(max(lows), min(highs))


def _edge(rate_of: Callable[[float], float], keep: Callable[[float], bool], t_in: float, t_out: float):
    """(t_last, t_first): adjacent positions, `keep(rate)` true at t_last and false at t_first, by
    bisection between t_in (kept) and t_out (not kept), in either order, to double precision."""
    for _ in range(2000):
        mid = 0.5 * (t_in + t_out)
        if mid in (t_in, t_out):
            break
        if keep(rate_of(mid)):
            t_in = mid
        else:
            t_out = mid
    return t_in, t_out


def _plain_value(rate_of_value: Callable[[float], float], rate: float, low: float, high: float) -> float:
    """The value in [low, high] (a plateau of `rate`) with the fewest significant digits whose rate
    is exactly `rate`, starting from their geometric mean."""
    middle = math.sqrt(low * high) if low > 0 else 0.5 * (low + high)
    for digits in range(1, 18):
        candidate = float(f"{middle:.{digits}g}")
        if low <= candidate <= high and rate_of_value(candidate) == rate:
            return candidate
    return middle


@dataclasses.dataclass(frozen=True)
class RuleCalibration:
    """One rule's band: which fields were calibrated (`calibrated`, field -> value) and which set by
    hand (`hand`, the band fields among the hand-set `method_params`), its full hyperparameters,
    the achieved out-of-band `rate`, and the range of values giving that rate (`plateau`)."""

    method: str
    band_fields: tuple[str, ...]
    calibrated: dict[str, float]
    hand: dict[str, Any]
    method_params: dict[str, Any]
    hparams: dict[str, Any]
    rate: float
    plateau: tuple[float, float] | None

    @property
    def source(self) -> str:
        if not self.calibrated:
            return "hand"
        return "partly hand" if self.hand else "calibrated"

    def to_dict(self) -> dict[str, Any]:
        return {
            "band_fields": list(self.band_fields),
            "calibrated": dict(self.calibrated),
            "hand": dict(self.hand),
            "method_params": dict(self.method_params),
            "hparams": dict(self.hparams),
            "rate": self.rate,
            "plateau": None if self.plateau is None else list(self.plateau),
            "source": self.source,
        }


def calibrate_rule(
    name: str,
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target: float,
    hand_params: Mapping[str, Any] | None = None,
) -> RuleCalibration:
    """Rule `name`'s band (module docstring): its free band fields set to the one value whose
    out-of-band rate on `tensors` is closest to `target`, the hand-set `hand_params` kept.
    CalibrationError when even the narrowest band puts no more than the target out, or the widest
    still puts more."""
    fields = band_fields(name)
    hand_params = dict(hand_params or {})
    hand = {f: hand_params[f] for f in fields if f in hand_params}
    free = [f for f in fields if f not in hand]

    def build(v: float | None) -> methods.Method:
        return methods.get_method(name, **hand_params, **({f: v for f in free} if v is not None else {}))

    if not free:
        rule = build(None)
        return RuleCalibration(
            name, fields, {}, hand, hand_params, rule.hparams(), out_of_band_rate(rule, tensors), None
        )
    scale = _limits(name, free)

    def rate_at(v: float) -> float:
        return out_of_band_rate(build(v), tensors)

    def rate_of(t: float) -> float:
        return rate_at(scale.value(t))

    t_min, t_max = _EDGE, 1.0 - _EDGE
    widest, narrowest = rate_of(t_max), rate_of(t_min)
    what = f"{name} ({', '.join(free)} = v" + (f"; set by hand: {hand}" if hand else "") + ")"
    if widest > target:
        raise CalibrationError(
            f"{what}: even at its widest band (v -> {scale.value(t_max):.6g}) it puts {widest:.3f} of the "
            f"probe's responses out of band, more than the target {target:g}"
            + ("; the hand-set band fields fix that side" if hand else "")
        )
    if narrowest <= target:
        raise CalibrationError(
            f"{what}: even at its narrowest band (v = {scale.value(t_min):.3g}) it puts only {narrowest:.3f} "
            f"of the probe's responses out of band, not more than the target {target:g} (log-ratios of zero? "
            "the probe's updates did not move the policy)"
        )
    t_out, t_in = _edge(rate_of, lambda r: r > target, t_min, t_max)  # rate(t_out) > target >= rate(t_in)
    r_out, r_in = rate_of(t_out), rate_of(t_in)
    if abs(r_in - target) <= abs(r_out - target):
        rate, t_step, t_far = r_in, t_in, scale.position(scale.value(t_in) * _PLATEAU_FACTOR)
    else:
        rate, t_step, t_far = r_out, t_out, scale.position(scale.value(t_out) / _PLATEAU_FACTOR)

    def same(r: float) -> bool:
        return r == rate

    end = t_far if same(rate_of(t_far)) else _edge(rate_of, same, t_step, t_far)[0]
    low, high = sorted((scale.value(t_step), scale.value(end)))
    value = _plain_value(rate_at, rate, low, high)
    rule = build(value)
    return RuleCalibration(
        name,
        fields,
        {f: value for f in free},
        hand,
        hand_params,
        rule.hparams(),
        out_of_band_rate(rule, tensors),
        (low, high),
    )


def calibrate(
    measurement,
    target: float,
    names: Sequence[str],
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, RuleCalibration]:
    """Every rule of `names` calibrated on a probe's `measurement` (`calibrate_rule`), in order.
    CalibrationError naming each calibrated rule whose achieved rate is further than `tolerance`
    from `target` (the rate moves in steps of 1 / N: too few measured responses)."""
    if not 0 < target < 1:
        raise CalibrationError(f"target rate {target!r}: must be in (0, 1)")
    method_params = method_params or {}
    tensors = measurement_tensors(measurement)
    out = {name: calibrate_rule(name, tensors, target, method_params.get(name)) for name in names}
    n = int(tensors[0].shape[0])
    missed = [
        f"{r.method} reaches {r.rate:.4f}"
        for r in out.values()
        if r.calibrated and abs(r.rate - target) > tolerance + 1e-12
    ]
    if missed:
        raise CalibrationError(
            f"no band puts {target:g} ± {tolerance:g} of the probe's {n} responses out of band: "
            f"{'; '.join(missed)} (the rate moves in steps of 1/{n} or more, where responses share a value): "
            "measure more responses (probe.n_prompts, probe.samples) or widen the tolerance"
        )
    return out


# --------------------------------------------------------------------------- the file


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def document(
    rules: Mapping[str, RuleCalibration],
    *,
    target: float,
    tolerance: float,
    probe_file: str | Path,
    measurement,
    probe_provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """calibration.json's content: the settings, the probe it was computed on (its file and sha256,
    size, seed, config and provenance), every rule's band and rate, and this file's provenance."""
    from clipbench.provenance import provenance

    probe_config = dict(probe_provenance.get("config") or {})
    probe = {
        "sequences": str(probe_file),
        "sha256": file_sha256(probe_file),
        "responses": int(len(measurement.lengths)),
        "groups": int(measurement.n_groups),
        "prompts": probe_config.get("n_prompts"),
        "samples": probe_config.get("samples"),
        "seed": probe_provenance.get("seed"),
        "model": probe_config.get("model"),
        "config": probe_config,
        "provenance": dict(probe_provenance),
    }
    settings = {
        "target_rate": target,
        "tolerance": tolerance,
        "methods": list(rules),
        "method_params": {name: r.method_params for name, r in rules.items() if r.method_params},
        "probe_sha256": probe["sha256"],
    }
    return {
        "format": FORMAT,
        "target_rate": target,
        "tolerance": tolerance,
        "rate": RATE_MEANING,
        "probe": probe,
        "rules": {name: r.to_dict() for name, r in rules.items()},
        "provenance": provenance(settings, seed=probe["seed"]),
    }


#: The keys of calibration.json, and of each rule's entry (`read_calibration` checks them).
FILE_KEYS = ("format", "target_rate", "tolerance", "rate", "probe", "rules", "provenance")
RULE_KEYS = ("band_fields", "calibrated", "hand", "method_params", "hparams", "rate", "plateau", "source")


def write_calibration(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write calibration.json atomically, after checking it has the format `read_calibration` reads."""
    from clipbench.provenance import atomic_write_json

    _check(dict(data), str(path))
    return atomic_write_json(path, dict(data))


def read_calibration(path: str | Path) -> dict[str, Any]:
    """calibration.json, checked: ValueError naming the file when it is not valid JSON, not this
    format, or lacks a key. A missing file raises FileNotFoundError naming `path` as given (the
    study's train rule reads it in a params function, which Snakemake defers while it is missing)."""
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); rerun the calibrate job") from None
    _check(data, str(path))
    return data


def _check(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{where}: not a calibration file of format {FORMAT!r} (found {found!r})")
    missing = [k for k in FILE_KEYS if k not in data]
    if missing:
        raise ValueError(f"{where}: lacks the keys {missing}")
    for name, entry in data["rules"].items():
        lacking = [k for k in RULE_KEYS if k not in entry] if isinstance(entry, dict) else list(RULE_KEYS)
        if lacking:
            raise ValueError(f"{where}: rules.{name} lacks the keys {lacking}")


def run_params(
    calibration: Mapping[str, Any] | None, method: str, hand: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A train job's method_params for `method`: the calibrated band values of `calibration` (none
    when it is None or does not calibrate `method`), then the hand-set `hand` over them."""
    entry = ((calibration or {}).get("rules") or {}).get(method) or {}
    return {**dict(entry.get("calibrated") or {}), **dict(hand or {})}
