"""The remote_usm extension's settings (its `config` table in site.toml, as SMX_CONFIG).

[extensions.usm1.config]
remote = "127.0.0.1:7443"                 # the remote core's TCP listener (host:port)
remote_ca = "/etc/smx/usm1/ca.crt"        # the REMOTE site's CA certificate
remote_cert = "/etc/smx/usm1/link.crt"    # this link's client certificate, remote CA
remote_key = "/etc/smx/usm1/link.key"
prefix = "usm1"                           # default: the extension's name
patterns = ["**"]                         # remote points to mirror
period = 5                                # s: republish / freshness period
forward_timeout = 8                       # s: wait for the remote owner's report
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smx.client import Credentials

__all__ = ["ConfigError", "RemoteConfig"]

KEYS = (
    "remote",
    "remote_ca",
    "remote_cert",
    "remote_key",
    "prefix",
    "patterns",
    "period",
    "forward_timeout",
)
REQUIRED = ("remote", "remote_ca", "remote_cert", "remote_key")
_PREFIX = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a device id (DATA-MODEL.md)


class ConfigError(ValueError):
    """A missing or invalid key of the extension's config; the message names it."""


@dataclass(frozen=True)
class RemoteConfig:
    remote: str
    credentials: Credentials
    prefix: str
    patterns: tuple[str, ...] = ("**",)
    period: float = 5.0
    forward_timeout: float = 8.0

    @classmethod
    def parse(cls, config: Mapping[str, Any], name: str) -> RemoteConfig:
        unknown = sorted(set(config) - set(KEYS))
        if unknown:
            raise ConfigError(
                f"remote_usm config: unknown keys {', '.join(unknown)} (known: {', '.join(KEYS)})"
            )
        missing = [
            k for k in ("remote", "remote_ca", "remote_cert", "remote_key") if k not in config
        ]
        if missing:
            raise ConfigError(f"remote_usm config: missing keys {', '.join(missing)}")
        for key in REQUIRED:
            if not isinstance(config[key], str) or not config[key]:
                raise ConfigError(f"remote_usm config: {key} must be a non-empty string")
        prefix = config.get("prefix", name)
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigError(f"remote_usm config: prefix {prefix!r} is not a device id")
        patterns = config.get("patterns", ["**"])
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise ConfigError(
                f"remote_usm config: patterns must be a list of globs, not {patterns!r}"
            )
        return cls(
            remote=config["remote"],
            credentials=Credentials(
                Path(config["remote_ca"]), Path(config["remote_cert"]), Path(config["remote_key"])
            ),
            prefix=prefix,
            patterns=tuple(patterns),
            period=_seconds(config, "period", 5.0),
            forward_timeout=_seconds(config, "forward_timeout", 8.0),
        )


def _seconds(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.1 <= value <= 3600:
        raise ConfigError(f"remote_usm config: {key} must be a number of seconds in 0.1..3600")
    return float(value)
