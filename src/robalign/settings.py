"""Typed, documented settings: the field helper, value checks and coercion every config section uses.

A setting is a dataclass field declared with `setting(default, help, ...)`: its default, its help text
and its valid range or choices live in one place. `Params`, the base of every method's parameters,
checks each of its fields against that metadata when it is constructed, so an out-of-range value is an
error where it is written, not at step 500. `robalign.config` uses the same helpers for its sections.

This module imports nothing of robalign but its errors: method modules and the config both build on it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from robalign.errors import ConfigError


def setting(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None, optional: bool = False):
    """A dataclass field with its help text and valid values.

    Args:
        default: the default value; a list or dict is copied for every instance.
        help: one sentence or two, shown by `robalign train --help` and in docs/methods.md.
        ge, gt, le, lt: bounds of a number (>=, >, <=, <).
        choices: the valid values of a text setting.
        optional: None is valid too (it means "not set"; bounds apply to other values).
    """
    meta = {"help": help}
    for key, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)):
        if value is not None:
            meta[key] = tuple(value) if key == "choices" else value
    if optional:
        meta["optional"] = True
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check(ok: bool, key: str, problem: str) -> None:
    """Raises ConfigError `key: problem` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def choice(value, choices, key: str) -> None:
    """Raises ConfigError unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def ordered_fields(cls) -> list[dataclasses.Field]:
    """The dataclass fields of `cls` in declaration order (bases first), those named in its `last` at the end."""
    last = getattr(cls, "last", ())
    fields_ = dataclasses.fields(cls)
    return [f for f in fields_ if f.name not in last] + [f for f in fields_ if f.name in last]


def field_types(cls) -> dict:
    """{field name: resolved annotation} of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _plain_type(annotation):
    """(the type of an annotation with `| None` removed, whether None was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def coerce(value, annotation, key: str):
    """Converts a YAML or command-line value to the field's declared type, or raises ConfigError."""
    tp, nullable = _plain_type(annotation)
    if nullable and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp in (int, float):
        # An int field takes ints (never 1.5); a float field takes either; text is parsed; bools never.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is list or typing.get_origin(tp) is list:
        if isinstance(value, list):
            # Only plain values: a nested (or, through a YAML alias, self-containing) list is never a setting.
            if all(isinstance(v, (str, int, float, bool)) for v in value):
                return value
            raise ConfigError(f"{key}: expected a list of plain values, got a list holding "
                              f"{type(next(v for v in value if not isinstance(v, (str, int, float, bool)))).__name__}")
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _bounds_text(meta: dict) -> str:
    low = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}" if "gt" in meta else None
    high = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})" if "lt" in meta else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>=' if 'ge' in meta else '>'} {low[1:]}"
    if high:
        return f"{'<=' if 'le' in meta else '<'} {high[:-1]}"
    return ""


def valid_values(f: dataclasses.Field) -> str:
    """The valid values of a setting in words ('> 0', 'in [0, 0.5)', 'ramp, sigmoid'), '' when any."""
    meta = f.metadata
    text = ", ".join(map(str, meta["choices"])) if "choices" in meta else _bounds_text(meta)
    return f"{text} or None" if meta.get("optional") and text else text


def checked_value(f: dataclasses.Field, annotation, value, owner: str):
    """`value` checked against the field's type and metadata (ints made floats for float fields).

    Raises:
        ValueError: naming `owner.field`, e.g. "rdpo.epsilon must be in [0, 0.5), got 0.5".
    """
    meta, (tp, nullable) = f.metadata, _plain_type(annotation)

    def fail(problem: str):
        raise ValueError(f"{owner}.{f.name} must be {problem}, got {value!r}")

    if value is None:
        if nullable or meta.get("optional"):
            return None
        fail("set")
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            fail("a finite number")
        if tp is int and not isinstance(value, numbers.Integral):
            fail("a whole number")
        value = tp(value)
        bounds = ((meta.get("ge"), lambda b: value >= b), (meta.get("gt"), lambda b: value > b),
                  (meta.get("le"), lambda b: value <= b), (meta.get("lt"), lambda b: value < b))
        if not all(b is None or ok(b) for b, ok in bounds):
            fail(_bounds_text(meta))
    if tp is str and not isinstance(value, str):
        fail("text")
    if "choices" in meta and value not in meta["choices"]:
        fail(f"one of {list(meta['choices'])}")
    return value


@dataclass
class Params:
    """Base of a method's parameters: every field a `setting`, all checked on construction.

    A subclass sets `method` (its registry name, for messages), may override `check_values` for
    constraints between fields (called after every field passed its own check), and declares its
    capabilities by overriding the properties and `*_problem` methods below.
    """

    method: ClassVar[str] = ""
    last: ClassVar[tuple[str, ...]] = ()  # fields listed after the others (a base's common tail)

    def __post_init__(self):
        types_ = field_types(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, checked_value(f, types_[f.name], getattr(self, f.name), self.method or "method"))
        self.check_values()

    def check_values(self) -> None:
        """Constraints between fields; raises ValueError."""

    # Capabilities the config and the trainer read instead of checking method names.
    @property
    def forward_mode_attention(self) -> bool:
        """Whether the method differentiates attention in forward mode (SDPA's math kernel only)."""
        return False

    def quantization_problem(self) -> str | None:
        """Why this method cannot train on quantized base weights (`model.quantization`), or None."""
        return None

    def whole_weights_problem(self) -> str | None:
        """Why this method cannot train on weights sharded across processes (FSDP, ZeRO-3), or None."""
        return None

    @classmethod
    def trunk_cache_settings(cls, train_last_k: int) -> dict:
        """The settings this method needs to train from a cached frozen trunk below the last `train_last_k`
        blocks (`model.trunk_cache`), for a caller that picks them (a sweep); {} when it needs none."""
        return {}

    @classmethod
    def from_dict(cls, values: dict) -> Params:
        """The parameters `values` sets, the defaults for the rest.

        Raises:
            ValueError: a key this method does not take (the message lists those it takes), or an invalid value.
        """
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(f"method {cls.method!r} does not take parameter(s) {unknown}; it takes "
                             f"{', '.join(cls.keys())}")
        return cls(**values)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in ordered_fields(cls)]

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: default_of(f) for f in ordered_fields(cls)}

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.keys()}

    def replace(self, **changes) -> Params:
        """A copy with `changes`, validated."""
        return dataclasses.replace(self, **changes)


__all__ = ["Params", "check", "checked_value", "choice", "coerce", "default_of", "field_types", "ordered_fields",
           "setting",
           "valid_values"]
