"""Typed values of the project's TOML files (core.toml, site.toml, each extension's config
table): one set of checks whose errors name the dotted key and, for an unknown key, suggest the
nearest allowed one, e.g. ``history.flush_intervall: unknown key (did you mean
'flush_interval'? ...)``.

Durations are a number with a unit, ``ms s m h d`` (``"500ms"``, ``"1.5h"``, ``"30d"``), or a
plain number of seconds. Sizes are a number with a unit, ``B KB MB GB TB`` (case-insensitive,
``KiB`` spellings too), **1024-based**, or a plain integer of bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smx.toml_text import toml_str

__all__ = [
    "ConfigError",
    "check_keys",
    "closest",
    "dotted_key",
    "duration",
    "fmt_bytes",
    "fmt_seconds",
    "integer",
    "number",
    "parse_duration",
    "parse_duration_option",
    "parse_size",
    "file_path",
    "show_value",
    "string",
]

_MAX_SIZE = 2**63 - 1
_NUMBER = r"\d{1,15}(?:\.\d{1,15})?"  # what a duration or a size may start with
_DURATION = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PLAIN_NUMBER = re.compile(_NUMBER)
_SIZE = re.compile(rf"({_NUMBER})\s*([kmgt]?)(i?)b", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ConfigError(Exception):
    """The config file is missing, not TOML, or has a bad or unknown key (named in the message)."""


def show_value(value: Any) -> str:
    """A value as the user wrote it in TOML, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def fmt_bytes(n: int) -> str:
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def parse_duration(value: Any, key: str = "duration") -> float:
    """Seconds from ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"30d"`` or a plain number.

    Raises ConfigError naming ``key`` for anything else, negative or non-finite values included.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and value.bit_length() > 64:
            seconds = math.inf
        else:
            seconds = float(value)
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m is not None:
            number, unit = float(m.group(1)), m.group(2)
            # Divide for ms rather than multiply by 0.001, so "500ms" is exactly 0.5.
            seconds = number / 1000 if unit == "ms" else number * _DURATION_UNITS[unit]
            if math.isfinite(seconds):
                return seconds
    raise ConfigError(
        f'{key}: expected a duration like "30d", got {show_value(value)} '
        "(units ms, s, m, h, d; a plain number is seconds)"
    )


def parse_duration_option(text: str, option: str) -> float:
    """A command-line duration: as parse_duration, and a plain number is seconds there too (on
    the command line every value is a string; in TOML a string needs its unit)."""
    if _PLAIN_NUMBER.fullmatch(text.strip()):
        return parse_duration(float(text), option)
    return parse_duration(text, option)


def parse_size(value: Any, key: str = "size") -> int:
    """Bytes from ``"512KB"``, ``"2GB"``, ``"1.5MB"`` (1024-based) or a plain integer of bytes.

    Raises ConfigError naming ``key`` for anything else, negative values included.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= _MAX_SIZE:
            return value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is not None and not (m.group(3) and not m.group(2)):  # "iB" alone is not a unit
            from decimal import Decimal  # exact fractions ("1.5MB"); only configs with sizes

            n = int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
            if n <= _MAX_SIZE:
                return n
    raise ConfigError(
        f'{key}: expected a size like "2GB", got {show_value(value)} '
        "(units B, KB, MB, GB, TB, 1024-based; a plain integer is bytes)"
    )


def string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {show_value(value)}")
    return value


def file_path(value: Any, key: str, home: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a non-empty path string, got {show_value(value)}")
    if "\0" in value:
        raise ConfigError(f"{key}: path contains a NUL character")
    path = Path(value)
    return path if path.is_absolute() else home / path


def integer(value: Any, key: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {show_value(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be between {lo} and {hi}, got {show_value(value)}")
    return value


def number(value: Any, key: str, lo: float, hi: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {show_value(value)}")
    if isinstance(value, int) and value.bit_length() > 64 or not lo <= float(value) <= hi:
        raise ConfigError(f"{key}: must be between {lo:g} and {hi:g}, got {show_value(value)}")
    return float(value)


def duration(value: Any, key: str, lo: float, hi: float) -> float:
    seconds = parse_duration(value, key)
    if not lo <= seconds <= hi:
        raise ConfigError(
            f"{key}: must be between {fmt_seconds(lo)} and {fmt_seconds(hi)}, "
            f"got {show_value(value)}"
        )
    return seconds


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to `word`, for a "did you mean" hint, or None."""
    import difflib  # only for a mistake: not carried by every process

    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for name in table:
        if name not in allowed:
            close = closest(name, allowed)
            hint = f"did you mean {close!r}? " if close else ""
            raise ConfigError(
                f"{prefix}{dotted_key(name)}: unknown key ({hint}allowed: {', '.join(allowed)})"
            )


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted_key(name: str) -> str:
    """A key as it would be written in a dotted TOML key (quoted unless bare)."""
    return name if _BARE_KEY.fullmatch(name) else toml_str(name)
