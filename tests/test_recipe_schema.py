"""lps_keras.recipe_schema: typed construction of a section from JSON and the fields' rules."""

import dataclasses
from typing import Optional

import pytest

from lps_keras.recipe_schema import RecipeError, build_section, check_rules, field_type
from lps_keras.recipe_sections import field


@dataclasses.dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = field((4, 4), gt=0)
    mode: str = field("a", choices=("a", "b"))


@dataclasses.dataclass(frozen=True)
class Outer:
    rate: float = field(0.5, ge=0, lt=1)
    steps: int = 1
    name: Optional[str] = None
    inner: Inner = Inner()


def test_values_are_converted_to_the_annotated_types():
    built = build_section(Outer, {"rate": 0, "steps": 3.0, "inner": {"size": [2, 5]}})
    assert built == Outer(rate=0.0, steps=3, name=None, inner=Inner(size=(2, 5)))
    assert type(built.rate) is float and type(built.steps) is int and built.inner.size == (2, 5)
    assert field_type(Outer, "name") is str and field_type(Outer, "inner") is Inner


@pytest.mark.parametrize("raw, message", [
    ({"stepz": 1}, r"unknown key 'stepz'"),
    ({"inner": {"sise": 1, "x": 2}}, r"unknown key 'inner.sise' \(and \['x'\]\)"),
    ({"steps": 1.5}, r"steps: expected an integer, got 1.5"),
    ({"steps": True}, r"steps: expected an integer, got True"),
    ({"rate": float("nan")}, r"rate: must be a finite number, got nan"),
    ({"inner": {"size": [1, 2, 3]}}, r"inner.size: expected 2 values, got \[1, 2, 3\]"),
    ({"name": 3}, r"name: expected a string, got 3"),
    ({"inner": []}, r"inner: expected an object, got \[\]"),
])
def test_bad_values_name_the_dotted_key(raw, message):
    with pytest.raises(RecipeError, match=message):
        build_section(Outer, raw)


@pytest.mark.parametrize("raw, message", [
    ({"rate": 1.0}, r"rate: must be in \[0, 1\), got 1.0"),
    ({"inner": {"mode": "c"}}, r"inner.mode: 'c' is not one of a, b"),
    ({"inner": {"size": [0, 4]}}, r"inner.size: sizes must be > 0, got \[0, 4\]"),
])
def test_rules_on_the_fields_are_checked_recursively(raw, message):
    check_rules(build_section(Outer, {}))  # the defaults obey their own rules
    with pytest.raises(RecipeError, match=message):
        check_rules(build_section(Outer, raw))
