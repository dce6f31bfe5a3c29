"""Typed settings: each field declared once (type, default, valid values, meaning), then read,
checked and described from that one declaration.

Every configuration of clipbench is a frozen dataclass whose fields are declared with `setting`:
`clipbench.config.TrainConfig` and its sections, `clipbench.sft.SFTConfig`,
`clipbench.evaluate.Settings` and the study-level keys of `clipbench.study`. From the declarations:

* `from_dict` reads a mapping: an unknown key, a wrong type or a value out of range raises
  `ConfigError` naming the field (``optim.lr: must be finite and > 0, got inf``);
* `check` applies the same per-field rules to an instance built in code;
* `object_schema` describes the class as JSON schema (`clipbench.study` generates the study's
  ``workflows/config/schema.yaml`` from it).

A rule that ties two fields together, or a registry that grows (methods), stays in the owner's
validate function; a registry that is fixed in code can be a field's `choices` (a callable).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from clipbench.errors import UserError

__all__ = ["ConfigError", "Pattern", "check", "field_schema", "from_dict", "object_schema", "setting"]

MISSING = dataclasses.MISSING


class ConfigError(UserError, ValueError):
    """An invalid configuration; the message names the field."""


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    help: str,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    multiple_of: int | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    pattern: str | None = None,
    means: str | None = None,
    why: str | None = None,
    item: dict[str, Any] | None = None,
    min_items: int | None = None,
    unique: bool = False,
    key_pattern: str | None = None,
) -> Any:
    """Declare a field: its default (none: required), what it means (`help`) and its valid values.

    Numbers: open bounds `gt`/`lt`, closed bounds `ge`/`le`, `multiple_of`; a float must also be
    finite. Text: `choices` (a tuple, or a callable for a registry), or a regular expression
    `pattern` that the whole value must match, described to the user as `means`. `why` is added to
    the message of a failed bound. Lists: `item` (bounds or pattern of each item), `min_items`,
    `unique`. Mappings: `key_pattern` for the keys (checked by the schema; the owner checks keys
    in code where they become names).
    """
    meta = {
        "help": help,
        "gt": gt,
        "ge": ge,
        "lt": lt,
        "le": le,
        "multiple_of": multiple_of,
        "choices": choices,
        "pattern": pattern,
        "means": means,
        "why": why,
        "item": item or {},
        "min_items": min_items,
        "unique": unique,
        "key_pattern": key_pattern,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _optional(kind: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        (inner,) = [o for o in options if o is not type(None)]
        return inner, type(None) in options
    return kind, False


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --------------------------------------------------------------------------- types


def _coerce(path: str, kind: Any, value: Any) -> Any:
    """Check `value` against the annotation `kind`; a section (a mapping for a dataclass) is read
    by `from_dict`, an instance of it checked by `check`."""
    kind, nullable = _optional(kind)
    if value is None and nullable:
        return None
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            check(value, path)
            return value
        return from_dict(kind, value, path)
    origin = typing.get_origin(kind)
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list or kind is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (inner,) = typing.get_args(kind) or (Any,)
        return [v if inner is Any else _coerce(f"{path}[{i}]", inner, v) for i, v in enumerate(value)]
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError(f"{path}: must be finite, got an integer of {len(str(value))} digits") from None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if kind is Any:
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(kind)}")  # pragma: no cover


# --------------------------------------------------------------------------- values


def _bounds_text(meta: dict[str, Any]) -> str | None:
    """The bounds as the messages write them: "> 0", ">= 1", "in [0, 1)"; None without bounds."""
    low = meta["gt"] if meta.get("gt") is not None else meta.get("ge")
    high = meta["lt"] if meta.get("lt") is not None else meta.get("le")
    low_open, high_open = meta.get("gt") is not None, meta.get("lt") is not None
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return None


def _in_bounds(meta: dict[str, Any], value: float) -> bool:
    return not (
        (meta.get("gt") is not None and not value > meta["gt"])
        or (meta.get("ge") is not None and not value >= meta["ge"])
        or (meta.get("lt") is not None and not value < meta["lt"])
        or (meta.get("le") is not None and not value <= meta["le"])
    )


def _choices(meta: dict[str, Any]) -> Sequence[str] | None:
    choices = meta.get("choices")
    return choices() if callable(choices) else choices


def _check_value(path: str, meta: dict[str, Any], kind: Any, value: Any) -> None:
    """The valid values of one field (its type already checked); ConfigError naming `path`."""
    kind, nullable = _optional(kind)
    if value is None:
        return
    why = f" ({meta['why']})" if meta.get("why") else ""
    if kind is float:
        rule = _bounds_text(meta)
        if not (math.isfinite(value) and _in_bounds(meta, value)):
            raise ConfigError(f"{path}: must be finite{' and ' + rule if rule else ''}{why}, got {value}")
    elif kind is int:
        rule = _bounds_text(meta)
        step = meta.get("multiple_of")
        if not _in_bounds(meta, value) or (step and value % step):
            parts = [p for p in (rule, f"a multiple of {step}" if step else None) if p]
            text = " and ".join(parts) + (" or null" if nullable else "")
            raise ConfigError(f"{path}: must be {text}{why}, got {value}")
    choices = _choices(meta)
    if choices is not None and value not in choices:
        noun = path.rsplit(".", 1)[-1]
        raise ConfigError(f"{path}: unknown {noun} {value!r}; available: {', '.join(map(str, choices))}")
    if meta.get("pattern") is not None and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"{path}: must be {meta.get('means') or 'like ' + meta['pattern']}, got {value!r}")
    if isinstance(value, list):
        if meta.get("min_items") is not None and len(value) < meta["min_items"]:
            raise ConfigError(f"{path}: needs at least {meta['min_items']} item(s), got {value!r}")
        if meta.get("unique") and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
            raise ConfigError(f"{path}: items must be unique, got {value!r}")
        (inner,) = typing.get_args(kind) or (Any,)
        for i, v in enumerate(value):
            _check_value(f"{path}[{i}]", meta["item"], inner, v)


def _fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping: an unknown key, a wrong type or a value out of range
    raises ConfigError naming the field (`prefix` + its dotted path). Absent fields take their
    defaults; a field without a default is required."""
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in _fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{_join(prefix, str(unknown[0]))}: unknown field; valid: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        path = _join(prefix, name)
        values[name] = _coerce(path, hints[name], value)
        if not dataclasses.is_dataclass(_optional(hints[name])[0]):
            _check_value(path, dict(fields[name].metadata), hints[name], values[name])
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(prefix, missing[0])}: required")
    return cls(**values)


def check(obj: Any, prefix: str = "") -> Any:
    """`obj` (a dataclass instance built in code) when every field has the right type and a valid
    value (nested sections included), else ConfigError naming the first bad field."""
    hints = _hints(type(obj))
    for f in _fields(type(obj)):
        path = _join(prefix, f.name)
        value = getattr(obj, f.name)
        _coerce(path, hints[f.name], value)
        if not dataclasses.is_dataclass(_optional(hints[f.name])[0]):
            _check_value(path, dict(f.metadata), hints[f.name], value)
    return obj


# --------------------------------------------------------------------------- JSON schema


class Pattern(str):
    """A regular expression in a schema (written double-quoted in the YAML file)."""


def _anchored(pattern: str) -> Pattern:
    """`pattern` for JSON schema's `pattern` (a search): the whole value must match."""
    return Pattern(f"^(?:{pattern})$" if "|" in pattern else f"^{pattern}$")


def _type_schema(kind: Any) -> dict[str, Any]:
    kind, nullable = _optional(kind)
    if dataclasses.is_dataclass(kind):
        return object_schema(kind)
    origin = typing.get_origin(kind) or kind
    names = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}
    if origin not in names:
        return {}
    schema: dict[str, Any] = {"type": [names[origin], "null"] if nullable else names[origin]}
    if origin is list:
        (inner,) = typing.get_args(kind) or (Any,)
        schema["items"] = _type_schema(inner)
    if origin is dict and typing.get_args(kind) and typing.get_args(kind)[1] is not Any:
        schema["additionalProperties"] = _type_schema(typing.get_args(kind)[1])
    return schema


def _constraints(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    choices = meta.get("choices")
    if choices is not None and not callable(choices):  # a registry (a callable) can grow: not in the schema
        out["enum"] = list(choices)
    for key, word in (
        ("gt", "exclusiveMinimum"),
        ("ge", "minimum"),
        ("lt", "exclusiveMaximum"),
        ("le", "maximum"),
        ("multiple_of", "multipleOf"),
    ):
        if meta.get(key) is not None:
            out[word] = meta[key]
    if meta.get("pattern") is not None:
        out["pattern"] = _anchored(meta["pattern"])
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _worth_naming(value: Any) -> bool:
    """A default a description names: a number, text or true/false (not none, empty or a section)."""
    return isinstance(value, (bool, int, float)) or (isinstance(value, str) and value != "")


def field_schema(cls: type, name: str, *, default: bool = False) -> dict[str, Any]:
    """The JSON schema of field `name` of `cls`: type, valid values, description (its `help`).

    `default=True` writes the default as the schema's `default`, which Snakemake's `validate`
    inserts into the config; otherwise a (non-null) default is named in the description."""
    f = next(f for f in _fields(cls) if f.name == name)
    meta = dict(f.metadata)
    schema = _type_schema(_hints(cls)[name])
    schema.update(_constraints(meta))
    if "items" in schema:
        schema["items"].update(_constraints(meta.get("item") or {}))
    if meta.get("min_items") is not None:
        schema["minItems"] = meta["min_items"]
    if meta.get("unique"):
        schema["uniqueItems"] = True
    if meta.get("key_pattern") is not None:
        schema["propertyNames"] = {"pattern": _anchored(meta["key_pattern"])}
    value = _default(f)
    description = meta.get("help", "") + (f" ({meta['why']})" if meta.get("why") else "")
    if default and value is not MISSING:
        schema["default"] = value
    elif _worth_naming(value):
        description += f" (default {json.dumps(value)})"
    if not description:
        return schema
    return (
        {"type": schema.pop("type"), "description": description} | schema
        if "type" in schema
        else schema | {"description": description}
    )


def object_schema(
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: bool | Iterable[str] = False,
    description: str | None = None,
) -> dict[str, Any]:
    """The JSON schema of dataclass `cls` (or of the fields `only`, less `exclude`): an object with
    exactly these keys, the fields without a default required. `defaults`: True, or the names of
    the fields whose default is written as the schema's `default` (see `field_schema`)."""
    names = [f.name for f in _fields(cls)] if only is None else list(only)
    names = [n for n in names if n not in set(exclude)]
    fill = set(names) if defaults is True else set(defaults or ())
    fields = {f.name: f for f in _fields(cls)}
    required = [n for n in names if _default(fields[n]) is MISSING]
    schema: dict[str, Any] = {"type": "object"}
    if description:
        schema["description"] = description
    schema["additionalProperties"] = False
    if required:
        schema["required"] = required
    schema["properties"] = {n: field_schema(cls, n, default=n in fill) for n in names}
    return schema
