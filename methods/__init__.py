"""The clipping rules of clipbench, behind one interface, and their registry.

    from methods import get_method, available_methods
    m = get_method("fspo", c_low=0.02)
    out = m.loss(logp=..., old_logp=..., advantages=..., mask=...)   # -> LossOutput

Adding a rule is adding one module to this folder that defines a frozen dataclass subclass of
`Method` decorated with `@register("name")`: every module here is imported with the package, so the rule joins every CLI command, config, table and plot with no other edit.
This package imports nothing from the rest of the project.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from methods.base import (
    LOG_WEIGHT_CLAMP,
    ClippedUnits,
    LossOutput,
    Method,
    RolloutBatch,
    clipped_objective,
    hparam,
    log_band,
    masked_mean,
    masked_sum,
    prepare_batch,
    sequence_level_rule,
    token_level_rule,
)

__all__ = [
    "LOG_WEIGHT_CLAMP",
    "ClippedUnits",
    "LossOutput",
    "Method",
    "RolloutBatch",
    "available_methods",
    "clipped_objective",
    "get_method",
    "get_method_class",
    "hparam",
    "log_band",
    "masked_mean",
    "masked_sum",
    "prepare_batch",
    "register",
    "sequence_level_rule",
    "token_level_rule",
]

_REGISTRY: dict[str, type[Method]] = {}
_LEVELS = ("token", "sequence")


def register(name: str):
    """Class decorator: register a `Method` subclass under `name`.

    Raises ValueError on a name already taken by another class, TypeError when the class is not
    a frozen dataclass subclass of `Method` or declares no valid `level`.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"method name {name!r}: must be a Python identifier (it is used in paths and configs)"
        )

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) expects a subclass of methods.Method, got {cls!r}")
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
                    f"@register({name!r}): field {f.name!r} must be declared with methods.hparam(...)"
                )
        existing = _REGISTRY.get(name)
        # Re-importing the same module (e.g. importlib.reload) re-registers the same class: allowed.
        same = existing is not None and (existing.__module__, existing.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if existing is not None and not same:
            raise ValueError(
                f"method name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} must use another name"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import every module of this package, so that their @register calls run."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


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
