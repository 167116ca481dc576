"""The core's TOML config file (``core.toml``): parsed, validated, unknown keys rejected. The
keys are specified in docs/SITE.md; the value checks are the shared ones of smx.settings.

Every error names the file and the dotted key, e.g.
``core.toml: history.max_age: expected a duration like "30d", got "12"``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smx.identity import Identity, IdentityError
from smx.names import Glob, InvalidName
from smx.process_env import RunPaths
from smx.settings import (
    ConfigError,
    check_keys,
    duration,
    file_path,
    fmt_bytes,
    integer,
    number,
    parse_duration,
    parse_size,
    show_value,
    string,
)
from trusted.policy import BILLING_SNAPSHOTS

__all__ = [
    "ConfigError",
    "CoreConfig",
    "HistoryConfig",
    "load_core_config",
    "parse_duration",
    "parse_size",
    "show_value",
    "tcp_is_loopback",
]

log = logging.getLogger(__name__)

# Unix socket paths are limited to 108 bytes (sun_path); keep a margin for the NUL and tooling.
_MAX_SOCKET_PATH = 99

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")

_TOP_KEYS = ("site", "socket", "tcp", "policy", "pki_dir", "history", "audit", "watch", "limits")
_SECTIONS = {
    "history": ("path", "flush_interval", "max_age", "max_size", "retention_interval", "keep"),
    "audit": ("path", "max_size", "keep"),
    "watch": ("backlog", "stale_factor", "stale_check_interval", "min_interval"),
    "limits": (
        "max_request_items",
        "max_message_bytes",
        "max_string_bytes",
        "max_points_per_client",
    ),
}


@dataclass(frozen=True)
class HistoryConfig:
    path: Path
    flush_interval: float = 2.0
    max_age_s: float | None = 30.0 * 86400
    max_bytes: int | None = 2 * 1024**3
    retention_interval: float = 60.0
    # Points retention never deletes: billing snapshots are kept for the meter's life.
    keep: tuple[str, ...] = (BILLING_SNAPSHOTS,)


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
    audit_max_bytes: int | None = 64 * 1024**2  # rotated past this; None: never
    audit_keep: int = 4  # rotated files kept (audit.jsonl.1 ...)
    stale_factor: float = 2.0
    stale_check_interval: float = 0.5
    watch_backlog: int = 20_000  # revisions kept for resuming a watch
    # Least time between two messages of one WatchPoints stream: changes in between go out
    # together (none is dropped), so a busy point costs one message per interval per watcher.
    watch_min_interval: float = 0.005
    max_request_items: int = 10_000
    max_message_bytes: int = 4 * 1024 * 1024
    max_string_bytes: int = 2048  # one string value of a point write, UTF-8
    max_points_per_client: int = 10_000  # points one client created or declared


# The core.toml key of each tunable setting, for the start-up log of those not at default.
_TUNABLE_KEYS = {
    "audit_max_bytes": "audit.max_size",
    "audit_keep": "audit.keep",
    "stale_factor": "watch.stale_factor",
    "stale_check_interval": "watch.stale_check_interval",
    "watch_backlog": "watch.backlog",
    "watch_min_interval": "watch.min_interval",
    "max_request_items": "limits.max_request_items",
    "max_message_bytes": "limits.max_message_bytes",
    "max_string_bytes": "limits.max_string_bytes",
    "max_points_per_client": "limits.max_points_per_client",
}
_HISTORY_KEYS = {
    "flush_interval": "history.flush_interval",
    "max_age_s": "history.max_age",
    "max_bytes": "history.max_size",
    "retention_interval": "history.retention_interval",
}


def non_default_settings(config: CoreConfig) -> list[str]:
    """`key=value` for each tunable setting of `config` not at its default, in file order: the
    core logs them at start, so an operator sees a core.toml change took effect."""
    out = []
    defaults = {f.name: f.default for f in dataclasses.fields(CoreConfig)}
    for name, key in _TUNABLE_KEYS.items():
        if getattr(config, name) != defaults[name]:
            out.append(f"{key}={getattr(config, name)!r}")
    history_defaults = {f.name: f.default for f in dataclasses.fields(HistoryConfig)}
    for name, key in _HISTORY_KEYS.items():
        if getattr(config.history, name) != history_defaults[name]:
            out.append(f"{key}={getattr(config.history, name)!r}")
    return out


def _globs(value: Any, key: str) -> tuple[str, ...]:
    """A list of point-name globs (e.g. `["**/*.bill*"]`)."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of point-name patterns, got {show_value(value)}")
    for i, pattern in enumerate(value):
        try:
            Glob(pattern)
        except InvalidName as err:
            raise ConfigError(f"{key}[{i}]: {err}") from err
    return tuple(value)


def _off(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "off"


def _tcp(value: Any, key: str) -> str:
    text = string(value, key).strip()
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


def tcp_is_loopback(tcp: str) -> bool:
    """Whether a `tcp` address (as `_tcp` accepted it) listens on loopback only: 127.0.0.0/8,
    [::1] (or an IPv4-mapped loopback) or `localhost`. Decided on the text, never by resolving
    a name: any other host name, and 0.0.0.0 or [::], count as reachable from the network."""
    host = tcp.strip().rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _socket(value: Any, key: str, home: Path) -> Path:
    path = file_path(value, key, home) if value is not None else RunPaths(home).socket
    length = len(os.fsencode(str(path)))
    if length > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"{key}: {str(path)!r} is {length} bytes long; Unix socket paths are limited to "
            f"108 bytes, keep it under {_MAX_SOCKET_PATH + 1}: use a shorter home or an absolute "
            "socket path"
        )
    return path


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table [{name}], got {show_value(table)}")
    check_keys(table, _SECTIONS[name], f"{name}.")
    return table


def _build(data: dict[str, Any], home: Path) -> CoreConfig:
    check_keys(data, _TOP_KEYS, "")
    site = string(data.get("site", ""), "site").strip()
    if site:
        try:
            Identity.check_site(site)
        except IdentityError as err:
            raise ConfigError(f"site: {err}") from err

    hist = _section(data, "history")
    max_age = hist.get("max_age", "30d")
    max_size = hist.get("max_size", "2GB")
    history = HistoryConfig(
        path=file_path(hist.get("path", "data/history.db"), "history.path", home),
        flush_interval=duration(
            hist.get("flush_interval", 2.0), "history.flush_interval", 0.05, 60
        ),
        max_age_s=None
        if _off(max_age)
        else duration(max_age, "history.max_age", 60, 100 * 365 * 86400),
        max_bytes=None if _off(max_size) else parse_size(max_size, "history.max_size"),
        retention_interval=duration(
            hist.get("retention_interval", 60.0), "history.retention_interval", 1, 86400
        ),
        keep=_globs(hist.get("keep", [BILLING_SNAPSHOTS]), "history.keep"),
    )
    if history.max_bytes is not None and history.max_bytes < 1024**2:
        raise ConfigError(
            f'history.max_size: must be at least 1MB (or "off"), got {show_value(max_size)}'
        )

    audit = _section(data, "audit")
    audit_size = audit.get("max_size", "64MB")
    audit_max_bytes = None if _off(audit_size) else parse_size(audit_size, "audit.max_size")
    if audit_max_bytes is not None and audit_max_bytes < 1024**2:
        raise ConfigError(
            f'audit.max_size: must be at least 1MB (or "off"), got {show_value(audit_size)}'
        )
    watch = _section(data, "watch")
    limits = _section(data, "limits")
    tcp = data.get("tcp")
    max_message_bytes = parse_size(
        limits.get("max_message_bytes", 4 * 1024**2), "limits.max_message_bytes"
    )
    lo, hi = 64 * 1024, 256 * 1024**2
    if not lo <= max_message_bytes <= hi:
        raise ConfigError(
            f"limits.max_message_bytes: must be between {fmt_bytes(lo)} and {fmt_bytes(hi)}, "
            f"got {show_value(limits.get('max_message_bytes'))}"
        )
    max_string_bytes = parse_size(limits.get("max_string_bytes", 2048), "limits.max_string_bytes")
    if not 16 <= max_string_bytes <= 1024**2:
        raise ConfigError(
            "limits.max_string_bytes: must be between 16B and 1MB, "
            f"got {show_value(limits.get('max_string_bytes'))}"
        )
    return CoreConfig(
        site=site,
        home=home,
        socket=_socket(data.get("socket"), "socket", home),
        tcp=None if tcp is None else _tcp(tcp, "tcp"),
        pki_dir=file_path(data.get("pki_dir", "pki"), "pki_dir", home),
        policy=file_path(data.get("policy", "policy.toml"), "policy", home),
        audit_path=file_path(audit.get("path", "data/audit.jsonl"), "audit.path", home),
        history=history,
        audit_max_bytes=audit_max_bytes,
        audit_keep=integer(audit.get("keep", 4), "audit.keep", 1, 1000),
        stale_factor=number(watch.get("stale_factor", 2.0), "watch.stale_factor", 1.0, 100.0),
        stale_check_interval=duration(
            watch.get("stale_check_interval", 0.5), "watch.stale_check_interval", 0.05, 60
        ),
        watch_backlog=integer(watch.get("backlog", 20_000), "watch.backlog", 100, 10_000_000),
        watch_min_interval=duration(
            watch.get("min_interval", 0.005), "watch.min_interval", 0.0, 1.0
        ),
        max_request_items=integer(
            limits.get("max_request_items", 10_000), "limits.max_request_items", 1, 1_000_000
        ),
        max_message_bytes=max_message_bytes,
        max_string_bytes=max_string_bytes,
        max_points_per_client=integer(
            limits.get("max_points_per_client", 10_000),
            "limits.max_points_per_client",
            1,
            10_000_000,
        ),
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
