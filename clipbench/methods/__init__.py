"""The clipping rules of clipbench, behind one interface, and their registry.

    from clipbench.methods import get_method, available_methods
    m = get_method("fspo", c_low=0.02)
    out = m.loss(logp=..., old_logp=..., advantages=..., mask=...)   # -> LossOutput

Adding a rule is adding one module to this folder that defines a frozen dataclass subclass of
`Method` decorated with `@register("name")`: every module here is imported with the package, so the rule joins every CLI command, config, table and plot with no other edit.
This package imports nothing from the rest of the project.

Discovery (`_discover`): every module of this folder whose name is a Python identifier not
starting with `_` (and not `base`) is imported. A module that registers nothing is simply
imported (helpers, notes). A `.py` file whose name is not a module name (`fspo copy.py`,
`fspo-old.py`) is skipped with a warning naming it. A name registered twice is an error naming
both files, and for a file that looks like a copy (identical class source, or a name such as
`fspo_backup.py`) it says which file to delete or rename. A module whose import fails raises
ImportError naming its file.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

from clipbench.methods.base import (
    LOG_WEIGHT_CLAMP,
    BatchTotals,
    ClippedUnits,
    LossOutput,
    Method,
    RolloutBatch,
    clipped_objective,
    combine_outputs,
    hparam,
    log_band,
    masked_mean,
    masked_sum,
    prepare_batch,
    sequence_level_rule,
    sum_statistics,
    token_level_rule,
)

__all__ = [
    "LOG_WEIGHT_CLAMP",
    "BatchTotals",
    "ClippedUnits",
    "DuplicateMethodError",
    "LossOutput",
    "Method",
    "RolloutBatch",
    "available_methods",
    "clipped_objective",
    "combine_outputs",
    "get_method",
    "get_method_class",
    "hparam",
    "log_band",
    "masked_mean",
    "masked_sum",
    "prepare_batch",
    "register",
    "sequence_level_rule",
    "sum_statistics",
    "token_level_rule",
]

_REGISTRY: dict[str, type[Method]] = {}
_LEVELS = ("token", "sequence")
# A method name is used in paths, wildcards and configs (the study's schema asks the same).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words that mark a file as a copy of another: fspo_backup.py, fspo_copy2.py, old_fspo.py.
_COPY_WORDS = {"backup", "bak", "copy", "orig", "old", "tmp", "temp", "save", "saved"}


class DuplicateMethodError(ValueError):
    """A method name registered by two classes (raised by `register`, naming both files)."""


def _source_file(cls: type) -> str:
    """Where `cls` was defined, for messages: `clipbench/methods/fspo.py` for this package's modules."""
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if path is None:
        return f"module {cls.__module__}"
    path = Path(path)
    return (
        f"clipbench/methods/{path.name}"
        if path.parent.resolve() == Path(__file__).resolve().parent
        else str(path)
    )


def _class_source(cls: type) -> str | None:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return None


def _looks_like_a_copy(path: str) -> bool:
    stem = Path(path).stem.lower()
    return "copy" in stem or bool(_COPY_WORDS & set(re.split(r"[^a-z]+", stem)))


def _duplicate_message(name: str, existing: type, cls: type) -> str:
    first, again = _source_file(existing), _source_file(cls)
    text = (
        f"method name {name!r} is already registered by {existing.__module__}.{existing.__qualname__} "
        f"({first}); {cls.__module__}.{cls.__qualname__} ({again}) registers it again"
    )
    same_source = _class_source(existing) is not None and _class_source(existing) == _class_source(cls)
    # The copy: the file named like one; else, for the same class source, the file not named
    # after the method (fspo.py is where 'fspo' belongs).
    copies = [p for p in (first, again) if _looks_like_a_copy(p)]
    if len(copies) != 1 and same_source:
        copies = [p for p in (first, again) if Path(p).stem != name]
    if len(copies) == 1:
        copy = copies[0]
        original = again if copy == first else first
        why = "the same class source" if same_source else "its file name"
        return (
            f"{text}. {copy} looks like a copy of {original} ({why}): delete it or move it out of "
            f"clipbench/methods/, or, if it is a new rule, give it another name in @register(...)"
        )
    return f"{text}: give one of them another name in @register(...)"


def _check_band_fields(name: str, cls: type) -> None:
    """TypeError unless each of `cls.band_fields` is one of its float hyperparameters, named once."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    band = cls.band_fields
    if not isinstance(band, tuple) or len(set(band)) != len(band):
        raise TypeError(
            f"@register({name!r}): {cls.__qualname__}.band_fields must be a tuple of distinct names"
        )
    hints = typing.get_type_hints(cls)
    for field in band:
        if field not in fields or hints.get(field) is not float:
            raise TypeError(
                f"@register({name!r}): {cls.__qualname__}.band_fields names {field!r}, which is not one of "
                f"its float hyperparameters ({', '.join(n for n in fields if hints.get(n) is float) or 'none'})"
            )


def register(name: str):
    """Class decorator: register a `Method` subclass under `name`.

    Raises ValueError on a name already taken by another class, TypeError when the class is not
    a frozen dataclass subclass of `Method`, declares no valid `level`, or its `band_fields` name
    something other than its float hyperparameters.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"method name {name!r}: must be a Python identifier of ASCII letters, digits and _ "
            "(it is used in paths and configs)"
        )

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(
                f"@register({name!r}) expects a subclass of clipbench.methods.Method, got {cls!r}"
            )
        params = getattr(cls, "__dataclass_params__", None)
        if "__dataclass_fields__" not in cls.__dict__ or params is None or not params.frozen:
            raise TypeError(f"@register({name!r}): {cls.__qualname__} must be a @dataclass(frozen=True)")
        if cls.level not in _LEVELS:
            raise TypeError(f"@register({name!r}): {cls.__qualname__}.level must be one of {_LEVELS}")
        if cls.compute is Method.compute:
            raise TypeError(f"@register({name!r}): {cls.__qualname__} must implement compute(batch)")
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                raise TypeError(
                    f"@register({name!r}): field {f.name!r} must be declared with clipbench.methods.hparam(...)"
                )
        _check_band_fields(name, cls)
        existing = _REGISTRY.get(name)
        # Re-importing the same module (e.g. importlib.reload) re-registers the same class: allowed.
        same = existing is not None and (existing.__module__, existing.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if existing is not None and not same:
            raise DuplicateMethodError(_duplicate_message(name, existing, cls))
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import every module of this package, so that their @register calls run (the rules in
    the module docstring)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        shown = f"clipbench/methods/{info.name}{'/' if info.ispkg else '.py'}"
        if not info.name.isidentifier():
            warnings.warn(
                f"{shown}: skipped, {info.name!r} is not a Python module name (a copy?); name a "
                "method file like my_rule.py, or move this one out of clipbench/methods/",
                stacklevel=2,
            )
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except DuplicateMethodError:
            raise  # names both files already
        except Exception as err:
            raise ImportError(f"{shown}: importing it failed: {type(err).__name__}: {err}") from err


def available_methods() -> list[str]:
    """Names of every registered rule, sorted."""
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    """The class registered under `name`; ValueError naming the valid ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None


def get_method(name: str, **overrides: Any) -> Method:
    """An instance of rule `name` with its defaults, some replaced by `overrides`.

    An unknown name, an unknown hyperparameter or an invalid value raises ValueError naming it.
    """
    cls = get_method_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"its hyperparameters: {', '.join(known) or '(none)'}"
        )
    return cls(**overrides)


# Discovery runs when the package is imported (after `register` exists, which the modules use),
# so the built-in names are taken before any other code can register a rule.
_discover()
