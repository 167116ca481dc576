"""The remote_usm extension's settings (its `config` table in site.toml, as SMX_CONFIG).

[extensions.usm1.config]
remote = "127.0.0.1:7443"                 # the remote core's TCP listener (host:port)
remote_ca = "/etc/smx/usm1/ca.crt"        # the REMOTE site's CA certificate
remote_cert = "/etc/smx/usm1/link.crt"    # this link's client certificate, remote CA
remote_key = "/etc/smx/usm1/link.key"
prefix = "usm1"                           # default: the extension's name
patterns = ["**"]                         # remote points to mirror
period = 4                                # s: freshness period of mirrored points
link_timeout = 6                          # s: silence after which the link is down
forward_timeout = 8                       # s: wait for the remote owner's report
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from smx.names import DEVICE_ID, Glob, InvalidName
from smx.sdk import Credentials, Seconds, setting

__all__ = ["RemoteConfig"]

_DEVICE_ID = re.compile(DEVICE_ID)


def _host_port(remote: str) -> str | None:
    """`host:port` or `[v6]:port`: without a port gRPC would silently take 443."""
    host, sep, port = remote.strip().rpartition(":")
    if not remote.strip():
        return "must not be empty"
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
        or (":" in host and not (host.startswith("[") and host.endswith("]")))
    ):
        return (
            f'{remote!r} is not host:port (e.g. "192.0.2.10:7443" or "[2001:db8::1]:7443"; '
            "the remote core's [core] tcp)"
        )
    return None


def _device_id(prefix: str) -> str | None:
    if not prefix or _DEVICE_ID.fullmatch(prefix):
        return None
    return f"{prefix!r} is not a device id ({DEVICE_ID})"


def _globs(patterns: list[str]) -> str | None:
    if not patterns:
        return "must list at least one glob"
    for p in patterns:
        try:
            Glob(p)
        except InvalidName as err:
            return str(err)
    return None


@dataclass(frozen=True)
class RemoteConfig:
    remote: str = setting(check=_host_port)
    remote_ca: Path = setting()
    remote_cert: Path = setting()
    remote_key: Path = setting()
    prefix: str = setting("", check=_device_id)  # empty: the extension's name
    patterns: list[str] = setting(default_factory=lambda: ["**"], check=_globs)
    period: Seconds = setting(4.0, min=0.1, max=3600)
    link_timeout: Seconds = setting(6.0, min=0.3, max=3600)
    forward_timeout: Seconds = setting(8.0, min=0.1, max=3600)

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.remote_ca, self.remote_cert, self.remote_key)
