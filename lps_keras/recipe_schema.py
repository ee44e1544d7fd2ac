"""How a recipe's JSON becomes its sections: typed construction and the fields' rules.

:func:`build_section` builds a frozen dataclass from a JSON mapping, converting each value to the
field's annotated type (nested sections, tuples, optionals) and rejecting unknown keys, wrong types
and non-finite numbers with the dotted key; :func:`check_rules` checks the allowed values and ranges
that :func:`lps_keras.recipe_sections.field` keeps in each field's metadata. What a whole recipe must
satisfy across fields is :mod:`lps_keras.recipe`'s.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Union

from lps_keras.errors import LPSError


class RecipeError(LPSError, ValueError):
    """A recipe (file or override) is invalid; the message names the file and key."""


def field_type(cls, name):
    """The type of ``cls``'s field ``name``, without ``Optional``."""
    return _unwrap_optional(typing.get_type_hints(cls)[name])


def _unwrap_optional(t):
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


# Keys that used to exist, with what replaced them: a clearer message than "unknown key".
REMOVED_KEYS = {
    "search.proxy.decision_z": "removed; a step is now judged by search.decision (alpha: Student-t test over the "
                               "pooled seeds, epsilon: the indifference zone in mIoU points, latency_z); delete "
                               "the key (see the README, 'How a step is decided')",
}


def build_section(cls, raw, prefix: str = ""):
    """An instance of the dataclass ``cls`` from the JSON mapping ``raw`` (keys reported under ``prefix``)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'}: expected an object, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in names and not k.startswith("_")]
    for key in unknown:
        if prefix + key in REMOVED_KEYS:
            raise RecipeError(f"{prefix + key}: {REMOVED_KEYS[prefix + key]}")
    if unknown:
        more = f" (and {unknown[1:]!r})" if len(unknown) > 1 else ""
        raise RecipeError(f"unknown key {prefix + unknown[0]!r}{more}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], prefix + name)
    return cls(**kwargs)


def _convert(t, value, key):
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if dataclasses.is_dataclass(t):
        return build_section(t, value, key + ".")
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if t is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected an object, got {value!r}")
        return value
    if t is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: expected true/false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            # json.loads accepts NaN and Infinity, which no setting means and json.dumps would
            # write back as invalid JSON.
            raise RecipeError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if t is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported recipe field type {t!r} for {key}")


def check_rules(obj, prefix: str = "") -> None:
    """Check every field of a section against the rules on the field (recursing into sub-sections)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v):
            check_rules(v, key + ".")
            continue
        rules = f.metadata
        if v is None or not rules:
            continue
        choices = rules.get("choices")
        choices = choices() if callable(choices) else choices
        if choices and v not in choices:
            raise RecipeError(f"{key}: {v!r} is not one of {', '.join(choices)}")
        values = v if isinstance(v, tuple) else (v,)
        shown = list(v) if isinstance(v, tuple) else v
        if "gt" in rules and "lt" in rules and not all(rules["gt"] < x < rules["lt"] for x in values):
            raise RecipeError(f"{key}: must be in ({rules['gt']:g}, {rules['lt']:g}), got {shown!r}")
        if "gt" in rules and not all(x > rules["gt"] for x in values):
            what = "sizes must be" if isinstance(v, tuple) else "must be"
            raise RecipeError(f"{key}: {what} > {rules['gt']:g}, got {shown!r}")
        if "ge" in rules and "lt" in rules and not all(rules["ge"] <= x < rules["lt"] for x in values):
            raise RecipeError(f"{key}: must be in [{rules['ge']:g}, {rules['lt']:g}), got {shown!r}")
        if "ge" in rules and not all(x >= rules["ge"] for x in values):
            raise RecipeError(f"{key}: must be >= {rules['ge']:g}, got {shown!r}")
