"""The core's TOML config file (``core.toml``): parsed, validated, unknown keys rejected.

Every error names the file and the dotted key, e.g.
``core.toml: history.max_age: expected a duration like "30d", got "12"``.

Format (every key optional; relative paths are relative to the site home)::

    site = "usm-0017"            # "" (default): the caller takes it from the site CA
    socket = "core.sock"         # Unix socket; its full path must stay under 100 bytes
    tcp = "127.0.0.1:7443"       # optional extra mTLS listener, host:port or [v6]:port
    policy = "policy.toml"
    pki_dir = "pki"

    [history]
    path = "data/history.db"
    flush_interval = "2s"        # 50ms .. 60s
    max_age = "30d"              # or "off"
    max_size = "2GB"             # or "off"
    retention_interval = "60s"

    [audit]
    path = "data/audit.jsonl"

    [watch]
    backlog = 20000              # revisions kept so a watcher can resume (older: re-snapshot)
    stale_factor = 2.0
    stale_check_interval = "500ms"

    [limits]
    max_request_items = 10000
    max_message_bytes = "4MB"

Durations are a number with a unit, ``ms s m h d`` (``"500ms"``, ``"1.5h"``, ``"30d"``), or a
plain TOML number of seconds. Sizes are a number with a unit, ``B KB MB GB TB`` (case-insensitive;
``KiB``-style spellings accepted too), **1024-based** (``"1KB"`` = 1024 bytes, fractions rounded
down), or a plain TOML integer of bytes.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from trusted.identity import Identity, IdentityError

__all__ = [
    "ConfigError",
    "CoreConfig",
    "HistoryConfig",
    "load_core_config",
    "parse_duration",
    "parse_size",
    "show_value",
]

log = logging.getLogger(__name__)

# Unix socket paths are limited to 108 bytes (sun_path); keep a margin for the NUL and tooling.
_MAX_SOCKET_PATH = 99
_MAX_SIZE = 2**63 - 1

_DURATION = re.compile(r"(\d{1,15}(?:\.\d{1,15})?)\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d{1,15}(?:\.\d{1,15})?)\s*([kmgt]?)(i?)b", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")

_TOP_KEYS = ("site", "socket", "tcp", "policy", "pki_dir", "history", "audit", "watch", "limits")
_SECTIONS = {
    "history": ("path", "flush_interval", "max_age", "max_size", "retention_interval"),
    "audit": ("path",),
    "watch": ("backlog", "stale_factor", "stale_check_interval"),
    "limits": ("max_request_items", "max_message_bytes"),
}


class ConfigError(Exception):
    """The config file is missing, not TOML, or has a bad or unknown key (named in the message)."""


@dataclass(frozen=True)
class HistoryConfig:
    path: Path
    flush_interval: float = 2.0
    max_age_s: float | None = 30.0 * 86400
    max_bytes: int | None = 2 * 1024**3
    retention_interval: float = 60.0


@dataclass(frozen=True)
class CoreConfig:
    site: str  # "" when the file leaves it to the site CA
    home: Path
    socket: Path
    tcp: str | None  # "host:port", e.g. "127.0.0.1:7443"
    pki_dir: Path
    policy: Path
    audit_path: Path
    history: HistoryConfig
    stale_factor: float = 2.0
    stale_check_interval: float = 0.5
    watch_backlog: int = 20_000  # revisions kept for resuming a watch
    max_request_items: int = 10_000
    max_message_bytes: int = 4 * 1024 * 1024


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


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _fmt_bytes(n: int) -> str:
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
            n = int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
            if n <= _MAX_SIZE:
                return n
    raise ConfigError(
        f'{key}: expected a size like "2GB", got {show_value(value)} '
        "(units B, KB, MB, GB, TB, 1024-based; a plain integer is bytes)"
    )


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {show_value(value)}")
    return value


def _path(value: Any, key: str, home: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a non-empty path string, got {show_value(value)}")
    if "\0" in value:
        raise ConfigError(f"{key}: path contains a NUL character")
    path = Path(value)
    return path if path.is_absolute() else home / path


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {show_value(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be between {lo} and {hi}, got {show_value(value)}")
    return value


def _number(value: Any, key: str, lo: float, hi: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {show_value(value)}")
    if isinstance(value, int) and value.bit_length() > 64 or not lo <= float(value) <= hi:
        raise ConfigError(f"{key}: must be between {lo:g} and {hi:g}, got {show_value(value)}")
    return float(value)


def _duration(value: Any, key: str, lo: float, hi: float) -> float:
    seconds = parse_duration(value, key)
    if not lo <= seconds <= hi:
        raise ConfigError(
            f"{key}: must be between {_fmt_seconds(lo)} and {_fmt_seconds(hi)}, "
            f"got {show_value(value)}"
        )
    return seconds


def _off(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "off"


def _tcp(value: Any, key: str) -> str:
    text = _string(value, key).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(
            f'{key}: expected "host:port" like "127.0.0.1:7443", got {show_value(value)}'
        )
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as err:
            raise ConfigError(f"{key}: {host} is not an IPv6 address") from err
    elif ":" in host:
        raise ConfigError(f'{key}: write an IPv6 address in brackets, like "[::1]:7443"')
    elif _HOSTNAME.fullmatch(host) is None:
        raise ConfigError(f"{key}: {show_value(host)} is not a host name or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: port must be 1..65535, got {show_value(port_text)}")
    return text


def _socket(value: Any, key: str, home: Path) -> Path:
    path = _path(value, key, home) if value is not None else home / "core.sock"
    length = len(os.fsencode(str(path)))
    if length > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"{key}: {str(path)!r} is {length} bytes long; Unix socket paths are limited to "
            f"108 bytes, keep it under {_MAX_SOCKET_PATH + 1}: use a shorter home or an absolute "
            "socket path"
        )
    return path


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for name in table:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{prefix}{name}: unknown key ({hint}allowed: {', '.join(allowed)})")


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table [{name}], got {show_value(table)}")
    _check_keys(table, _SECTIONS[name], f"{name}.")
    return table


def _build(data: dict[str, Any], home: Path) -> CoreConfig:
    _check_keys(data, _TOP_KEYS, "")
    site = _string(data.get("site", ""), "site").strip()
    if site:
        try:
            Identity.check_site(site)
        except IdentityError as err:
            raise ConfigError(f"site: {err}") from err

    hist = _section(data, "history")
    max_age = hist.get("max_age", "30d")
    max_size = hist.get("max_size", "2GB")
    history = HistoryConfig(
        path=_path(hist.get("path", "data/history.db"), "history.path", home),
        flush_interval=_duration(
            hist.get("flush_interval", 2.0), "history.flush_interval", 0.05, 60
        ),
        max_age_s=None
        if _off(max_age)
        else _duration(max_age, "history.max_age", 60, 100 * 365 * 86400),
        max_bytes=None if _off(max_size) else parse_size(max_size, "history.max_size"),
        retention_interval=_duration(
            hist.get("retention_interval", 60.0), "history.retention_interval", 1, 86400
        ),
    )
    if history.max_bytes is not None and history.max_bytes < 1024**2:
        raise ConfigError(
            f'history.max_size: must be at least 1MB (or "off"), got {show_value(max_size)}'
        )

    audit = _section(data, "audit")
    watch = _section(data, "watch")
    limits = _section(data, "limits")
    tcp = data.get("tcp")
    max_message_bytes = parse_size(
        limits.get("max_message_bytes", 4 * 1024**2), "limits.max_message_bytes"
    )
    lo, hi = 64 * 1024, 256 * 1024**2
    if not lo <= max_message_bytes <= hi:
        raise ConfigError(
            f"limits.max_message_bytes: must be between {_fmt_bytes(lo)} and {_fmt_bytes(hi)}, "
            f"got {show_value(limits.get('max_message_bytes'))}"
        )
    return CoreConfig(
        site=site,
        home=home,
        socket=_socket(data.get("socket"), "socket", home),
        tcp=None if tcp is None else _tcp(tcp, "tcp"),
        pki_dir=_path(data.get("pki_dir", "pki"), "pki_dir", home),
        policy=_path(data.get("policy", "policy.toml"), "policy", home),
        audit_path=_path(audit.get("path", "data/audit.jsonl"), "audit.path", home),
        history=history,
        stale_factor=_number(watch.get("stale_factor", 2.0), "watch.stale_factor", 1.0, 100.0),
        stale_check_interval=_duration(
            watch.get("stale_check_interval", 0.5), "watch.stale_check_interval", 0.05, 60
        ),
        watch_backlog=_int(watch.get("backlog", 20_000), "watch.backlog", 100, 10_000_000),
        max_request_items=_int(
            limits.get("max_request_items", 10_000), "limits.max_request_items", 1, 1_000_000
        ),
        max_message_bytes=max_message_bytes,
    )


def load_core_config(path: Path | None, *, home: Path) -> CoreConfig:
    """The validated config from ``path``, or every default under ``home`` when ``path`` is None.

    ``site`` is "" unless the file sets it: the caller fills it from the site CA.
    """
    home = Path(home)
    if path is None:
        source, data = f"default config for {home}", {}
    else:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise ConfigError(f"{source}: cannot read config: {err.strerror or err}") from err
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source}: not UTF-8 text (byte {err.start})") from err
        except ValueError as err:  # TOMLDecodeError, and int() limits inside the parser
            raise ConfigError(f"{source}: invalid TOML: {err}") from err
    try:
        config = _build(data, home)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    log.debug("loaded core config from %s", source)
    return config
