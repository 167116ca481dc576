"""The point vocabulary (docs/DATA-MODEL.md): which point names have a fixed unit and kind.

The data is `smx/vocabulary.toml`, read once. A vocabulary name is a base name (`U`, `P`, `Ap`,
`P_ESS`, ...) with the suffixes its base admits, in this order:

- a phase digit: `U1`, `P3`;
- a tariff: `Ap_T2`;
- a billing snapshot, after any tariff: `Ap.bill03`, `Ap_T2.bill03`;
- a setpoint, last: `P_ESS_set` (the requested value of `P_ESS`, same unit and kind).

Any other point name is a free name: allowed, with whatever unit its owner declares. Only the
standard library is imported here, so extensions and agents can use this module cheaply.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "is_billing_snapshot",
    "NotInVocabulary",
    "Term",
    "check_declaration",
    "lookup",
    "terms",
    "unit_of",
]

_DOC = "docs/DATA-MODEL.md"
_KINDS = ("double", "int", "bool", "string")
_FAMILIES = ("phase", "tariff", "billing", "setpoint")
_SETPOINT = "_set"
_BILLING = re.compile(r"(?P<head>.+)\.bill(?P<n>[0-9]{2})")
_TARIFF = re.compile(r"(?P<head>.+)_T(?P<n>[1-9][0-9]?)")
_PHASE = re.compile(r"(?P<head>.+?)(?P<n>[1-9])")
_BASE = re.compile(r"[A-Za-z][A-Za-z_]*")


class NotInVocabulary(ValueError):
    """A point name that is not a vocabulary name (a free name): it has no fixed unit."""


@dataclass(frozen=True)
class Term:
    """What the vocabulary says about one point name.

    `name` is the point as asked for (`Ap_T2.bill03`), `base` its base name (`Ap`); `setpoint`
    is true for `<point>_set`, which has the unit and kind of `<point>`.
    """

    name: str
    base: str
    unit: str
    kind: str
    description: str
    setpoint: bool = False


@dataclass(frozen=True)
class _Base:
    term: Term
    suffixes: frozenset[str]


@dataclass(frozen=True)
class _Vocabulary:
    bases: Mapping[str, _Base]
    ranges: Mapping[str, tuple[int, int]]


def _fail(what: str) -> ValueError:
    return ValueError(f"smx/vocabulary.toml: {what}")


@functools.cache
def _vocabulary() -> _Vocabulary:
    # Beside this module (package data): importlib.resources would cost every process ~1 MB of
    # modules (shutil, tempfile, bz2, lzma) for one read.
    doc = tomllib.loads((Path(__file__).with_name("vocabulary.toml")).read_text("utf-8"))
    ranges: dict[str, tuple[int, int]] = {}
    for family, pair in doc.get("ranges", {}).items():
        if family not in _FAMILIES or not (
            isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair)
        ):
            raise _fail(f"[ranges] {family} must be a family with [first, last], not {pair!r}")
        ranges[family] = (pair[0], pair[1])
    bases: dict[str, _Base] = {}
    for base, entry in doc.get("terms", {}).items():
        bases[base] = _parse_term(base, entry)
    return _Vocabulary(bases, ranges)


def _parse_term(base: str, entry: Any) -> _Base:
    where = f"[terms.{base}]"
    if _BASE.fullmatch(base) is None or base.endswith(_SETPOINT):
        raise _fail(f"{where}: a base name is letters and '_', not ending in {_SETPOINT!r}")
    if not isinstance(entry, dict) or set(entry) != {"unit", "kind", "description", "suffixes"}:
        raise _fail(f"{where} must have exactly unit, kind, description and suffixes")
    unit, kind, text, suffixes = (entry[k] for k in ("unit", "kind", "description", "suffixes"))
    if not (isinstance(unit, str) and isinstance(text, str) and kind in _KINDS):
        raise _fail(f"{where}: unit and description are strings, kind one of {_KINDS}")
    if not isinstance(suffixes, list) or not set(suffixes) <= set(_FAMILIES):
        raise _fail(f"{where}: suffixes must be a list drawn from {_FAMILIES}")
    return _Base(Term(base, base, unit, kind, text), frozenset(suffixes))


def terms() -> tuple[Term, ...]:
    """The base terms of the vocabulary, in the order of the data file."""
    return tuple(b.term for b in _vocabulary().bases.values())


def _number(vocabulary: _Vocabulary, family: str, digits: str) -> int | None:
    first, last = vocabulary.ranges.get(family, (1, 0))
    n = int(digits)
    return n if first <= n <= last else None


def is_billing_snapshot(point: str) -> bool:
    """`Ap.bill03`, `smm/Ap_T2.bill03`: a record the meter dated itself (its billing date)."""
    return _BILLING.fullmatch(point.rpartition("/")[2]) is not None


def lookup(point: str) -> Term | None:
    """The term of a point name (`U1`, `Ap_T2`, `Ap.bill03`, `P_ESS_set`), None for a free name.

    `point` is the part after the device(s); a full name (`smm/P`) is accepted as well. Never
    raises for a string, whatever it holds.
    """
    name = point.rpartition("/")[2]
    vocabulary = _vocabulary()
    head, numbers, notes = name, dict[str, int | None](), list[str]()
    setpoint = head.endswith(_SETPOINT)
    if setpoint:
        head = head[: -len(_SETPOINT)]
    if (m := _BILLING.fullmatch(head)) is not None:
        head, numbers["billing"] = m["head"], _number(vocabulary, "billing", m["n"])
        notes.append(f"billing snapshot {m['n']}, dated by the meter's billing date")
    if (m := _TARIFF.fullmatch(head)) is not None:
        head, numbers["tariff"] = m["head"], _number(vocabulary, "tariff", m["n"])
        notes.insert(0, f"tariff {m['n']}")
    if head not in vocabulary.bases and (m := _PHASE.fullmatch(head)) is not None:
        head, numbers["phase"] = m["head"], _number(vocabulary, "phase", m["n"])
        notes.insert(0, f"phase {m['n']}")
    entry = vocabulary.bases.get(head)
    used = set(numbers) | ({"setpoint"} if setpoint else set())
    if entry is None or not used <= entry.suffixes or None in numbers.values():
        return None
    if setpoint and "billing" in numbers:
        return None  # a billing snapshot is a record of the meter, never requested
    base = entry.term
    text = base.description + "".join(f", {note}" for note in notes)
    if setpoint:
        text = f"setpoint: requested {text}"
    return Term(name, base.base, base.unit, base.kind, text, setpoint)


def check_declaration(point: str, unit: str, kind: str | None = None) -> str | None:
    """None if declaring `point` with `unit` (and `kind`, when given) agrees with the vocabulary
    or `point` is a free name; else a one-line message naming the point and both units/kinds."""
    term = lookup(point)
    if term is None:
        return None
    if unit != term.unit:
        return f"{point} declared with unit {unit!r} but the vocabulary says {term.unit!r} ({_DOC})"
    if kind is not None and kind != term.kind:
        return f"{point} declared as kind {kind!r} but the vocabulary says {term.kind!r} ({_DOC})"
    return None


def unit_of(point: str) -> str:
    """The unit of a vocabulary point name; NotInVocabulary (a ValueError) for a free name."""
    term = lookup(point)
    if term is None:
        raise NotInVocabulary(
            f"{point!r} is not a vocabulary point name ({_DOC}): a free name has no fixed unit"
        )
    return term.unit
