"""What a source hands the device: point values by short name (`P`, `SoC`, ...), already in
the vocabulary's unit and load-reference sign. None means the device reported the value as
null or did not report it in a response that should hold it: the point goes BAD (or is left
out while it has no value yet), never 0 GOOD. Merging sources: the first real value wins."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["Values", "merge", "negated", "number", "obj", "state_name"]

Values = dict[str, float | str | None]


def number(value: Any, scale: float = 1.0) -> float | None:
    """A finite JSON/register number times `scale`; None for null, text, bools, NaN, inf, and
    an integer too large for a float (JSON allows any number of digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value) * scale
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def negated(value: Any) -> float | None:
    """The number with its sign flipped (a device's generator sign to load reference);
    0 stays 0.0, never -0.0."""
    x = number(value)
    return None if x is None else 0.0 - x


def obj(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one: a wrong shape is "no data"."""
    return value if isinstance(value, dict) else {}


def state_name(text: Any) -> str | None:
    """A device's state as an upper-case word: "charge boost" -> CHARGE_BOOST."""
    if not isinstance(text, str):
        return None
    name = re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")
    return name[:64] or None


def merge(*sources: Values) -> Values:
    """Per point, the first source's real value; None only when no source has one."""
    out: Values = {}
    for values in sources:
        for name, value in values.items():
            if out.get(name) is None:
                out[name] = value
    return out
