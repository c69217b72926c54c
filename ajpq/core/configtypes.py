"""The one way configuration types are declared and validated (plain data, no Ray, no torch).

Every configuration concept (data, finetuning, scoring, budget, search space, agent, ...) is ONE
frozen pydantic dataclass whose fields carry their ranges (``Count``, ``Rate``, ...). The same
type validates a YAML section at the edge, ``--set`` overrides, and a notebook's
``FinetuneConfig(steps=-1)``. :func:`parse` turns a mapping into such an object and phrases the
first problem as one line naming the key (:class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import ConfigDict, Field, TypeAdapter

from ajpq.core.redact import quote, redact

__all__ = [
    "ConfigError",
    "config_type",
    "parse",
    "to_plain",
    "Count",
    "NonNegativeInt",
    "Rate",
    "NonNegative",
    "Fraction",
    "OpenFraction",
    "Flag",
    "Text",
    "RESUMABLE",
    "resumable_keys",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (one line, names the key)."""


# ints and floats are strict (no "3" -> 3, no true -> 1); finite floats only; unknown keys fail
_SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False)

Count = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Rate = Annotated[float, Field(strict=True, gt=0)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Fraction = Annotated[float, Field(strict=True, ge=0, lt=1)]  # [0, 1)
OpenFraction = Annotated[float, Field(strict=True, gt=0, lt=1)]  # (0, 1)
Flag = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True)]


def config_type(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, validated configuration dataclass."""
    return pydantic.dataclasses.dataclass(frozen=True, config=_SETTINGS)(cls)


def _known_keys(root: type, loc: tuple[Any, ...]) -> list[str]:
    tp: Any = root
    for part in loc:
        hints = typing.get_type_hints(tp, include_extras=False)
        tp = hints.get(str(part))
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args and not dataclasses.is_dataclass(tp):
            tp = args[0]
    return sorted(f.name for f in dataclasses.fields(tp)) if dataclasses.is_dataclass(tp) else []


def _describe(error: dict[str, Any], root: type) -> str:
    loc = tuple(error["loc"])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind = error["type"]
    value = error.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = ", ".join(_known_keys(root, loc[:-1]))
        return f"unknown key {key}; known keys here: {known}"
    if kind in ("dataclass_type", "dict_type", "model_type"):
        return f"{key or 'config'}: expected a mapping, got {quote(value)}"
    if kind == "value_error":
        reason = redact(str(error["ctx"]["error"]) if "ctx" in error else error["msg"])[:300]
        return f"{key}.{reason}" if key and ":" in reason else f"{key}: {reason}".lstrip(": ")
    if kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{key}: unknown value {quote(value)}; use one of {expected.replace(' or ', ', ')}"
    reason = re.sub(r"^\w+ should", "must", error["msg"])
    return f"{key}: {redact(reason)[:200]}, got {quote(value)}"


def parse(cls: type[T], data: Any) -> T:
    """Validate ``data`` (a mapping, e.g. from YAML) into ``cls``; ConfigError names the key."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as error:
        problems = error.errors()
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ConfigError(_describe(problems[0], cls) + more) from None


def to_plain(value: Any) -> Any:
    """YAML/JSON-ready plain data (enums as their values, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


class _Resumable:
    """Field marker: the value may change between a run and its ``--resume``."""

    def __repr__(self) -> str:
        return "RESUMABLE"


RESUMABLE = _Resumable()  # use as Annotated[Count, RESUMABLE]


def _marked(tp: Any) -> bool:
    if typing.get_origin(tp) is Annotated:
        return any(m is RESUMABLE for m in typing.get_args(tp)[1:])
    return any(_marked(arg) for arg in typing.get_args(tp))


def resumable_keys(cls: type, prefix: str = "") -> set[str]:
    """The dotted keys of ``cls`` (and its nested config sections) marked :data:`RESUMABLE`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    keys: set[str] = set()
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if _marked(hint):
            keys.add(prefix + field.name)
        elif dataclasses.is_dataclass(hint):
            keys |= resumable_keys(hint, f"{prefix}{field.name}.")
    return keys
