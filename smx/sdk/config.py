"""Typed settings for a process's `config` table (site.toml), described as a dataclass:

    @dataclass(frozen=True)
    class PlannerSettings:
        target: str = "battery/P_set"
        plan: list[float] = field(default_factory=lambda: [3000.0, -2000.0])
        every: Seconds = setting(10.0, min=1, max=3600)

    settings = agent.settings(PlannerSettings)

Every key is checked against its field's type with the checks of `smx.settings`, and errors name
the key as written in site.toml, e.g. ``agents.planner.config.evry: unknown key (did you mean
'every'? ...)`` or ``extensions.usm1.config.period: must be between 100ms and 1h, got 0``.
A field without a default is required; keys the dataclass does not have are refused.

Types: str, bool, int, float, `Seconds` (a duration: "500ms", "5m" or a number of seconds),
Path (relative to the site directory), Literal[...] choices, `X | None`, list[X], tuple[X, ...],
dict[str, Any] (a table kept as it is), a nested dataclass (a sub-table), Any. `setting()` adds
bounds (`min`, `max`) and a `check(value) -> problem or None` of your own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from smx import settings as checks
from smx.process_env import SetupError

__all__ = ["Seconds", "parse_settings", "setting"]

T = TypeVar("T")


class _Duration:
    """Marks a float field as a duration in seconds."""


Seconds = Annotated[float, _Duration()]
_MISSING: Any = dataclasses.MISSING
_BIG = 2.0**63


def setting(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | Any = _MISSING,
    min: float | None = None,  # noqa: A002 - read as the setting's bounds
    max: float | None = None,  # noqa: A002
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A dataclass field with bounds and/or a check of its own (returns a problem or None)."""
    meta = {"min": min, "max": max, "check": check}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def parse_settings(
    schema: type[T], table: Mapping[str, Any], *, where: str = "", base_dir: Path | None = None
) -> T:
    """`table` checked and converted to `schema`; SetupError naming the key otherwise.
    `where` is the table's own dotted key (`extensions.usm1.config`)."""
    try:
        return _parse_table(schema, table, f"{where}." if where else "", base_dir or Path.cwd())
    except checks.ConfigError as err:
        raise SetupError(str(err)) from err


def _parse_table(schema: type[T], table: Any, prefix: str, base: Path) -> T:
    if not isinstance(table, Mapping):
        where = prefix.rstrip(".") or "config"
        raise checks.ConfigError(f"{where}: expected a table, got {checks.show_value(table)}")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}  # type: ignore[arg-type]
    checks.check_keys(table, tuple(fields), prefix)
    hints = typing.get_type_hints(schema, include_extras=True)
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{checks.dotted_key(name)}"
        if name not in table:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise checks.ConfigError(f"{key}: missing (required)")
            continue
        values[name] = _convert(hints[name], table[name], key, base, f.metadata)
    return schema(**values)


def _convert(hint: Any, value: Any, key: str, base: Path, meta: Mapping[str, Any]) -> Any:
    converted = _typed(hint, value, key, base, meta)
    check = meta.get("check")
    if check is not None and converted is not None:
        problem = check(converted)
        if problem:
            raise checks.ConfigError(f"{key}: {problem}")
    return converted


def _typed(hint: Any, value: Any, key: str, base: Path, meta: Mapping[str, Any]) -> Any:
    lo = meta.get("min")
    hi = meta.get("max")
    lo, hi = -_BIG if lo is None else lo, _BIG if hi is None else hi
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        if any(isinstance(a, _Duration) for a in args[1:]):
            return checks.duration(value, key, max(lo, 0.0), hi)
        return _typed(args[0], value, key, base, meta)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # one type, or None
        return _typed(inner, value, key, base, meta)
    if origin is Literal:
        if value not in args:
            close = checks.closest(str(value), map(str, args))
            hint_text = f"did you mean {close!r}? " if close else ""
            raise checks.ConfigError(
                f"{key}: {checks.show_value(value)} is not a choice "
                f"({hint_text}one of {', '.join(map(str, args))})"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise checks.ConfigError(f"{key}: expected an array, got {checks.show_value(value)}")
        item = args[0] if args else Any
        items = [_typed(item, v, f"{key}[{i}]", base, {}) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise checks.ConfigError(f"{key}: expected a table, got {checks.show_value(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return _parse_table(hint, value, f"{key}.", base)  # type: ignore[arg-type]
    return _scalar(hint, value, key, base, lo, hi)


def _scalar(hint: Any, value: Any, key: str, base: Path, lo: float, hi: float) -> Any:
    if hint is str:
        return checks.string(value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise checks.ConfigError(
                f"{key}: expected true or false, got {checks.show_value(value)}"
            )
        return value
    if hint is int:
        return checks.integer(value, key, int(lo), int(hi))
    if hint is float:
        return checks.number(value, key, lo, hi)
    if hint is Path:
        return checks.file_path(value, key, base)
    raise TypeError(f"{key}: settings of type {hint!r} are not supported")
