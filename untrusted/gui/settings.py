"""The GUI's settings: the `[agents.gui.config]` table of site.toml, checked by the SDK (unknown
keys and bad values are one line naming the key). Every key: docs/GUI.md."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from smx.names import GlobSet, InvalidName
from smx.process_env import require_readable
from smx.sdk import Seconds, SetupError, setting

from .passwords import check_hash_format

__all__ = ["GuiConfig", "Listen", "OverviewConfig", "tls_context"]

_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]")


def _listen_problem(value: str) -> str | None:
    try:
        Listen.parse(value)
    except ValueError as err:
        return str(err)
    return None


def _hosts_problem(hosts: list[str]) -> str | None:
    bad = [h for h in hosts if not _HOST.fullmatch(h)]
    return f"names or addresses without scheme or port, not {', '.join(bad)}" if bad else None


def _globs_problem(patterns: list[str]) -> str | None:
    try:
        GlobSet(patterns)
    except InvalidName as err:
        return str(err)
    return None


def _globs(*default: str) -> list[str]:
    return setting(default_factory=lambda: list(default), check=_globs_problem)


def _hash_problem(value: str) -> str | None:
    return check_hash_format(value) if value else None


@dataclass(frozen=True)
class OverviewConfig:
    """Which points make each part of the overview: every present point that a pattern names
    is summed (two PV inverters are one PV)."""

    grid: list[str] = _globs("smm/P")
    pv: list[str] = _globs("pv/P", "fronius/P_PV", "er/P_PV")
    battery: list[str] = _globs("ess/P", "battery/P", "fronius/P_ESS", "er/P_ESS")
    soc: list[str] = _globs("ess/SoC", "battery/SoC", "fronius/SoC", "er/SoC")
    ev: list[str] = _globs("ev*/P")


@dataclass(frozen=True)
class GuiConfig:
    listen: str = setting("127.0.0.1:8080", check=_listen_problem)
    # Names browsers reach the GUI by (besides the listen address, and localhost on loopback):
    # requests for any other Host, and WebSockets from any other Origin, are refused.
    hosts: list[str] = setting(default_factory=list, check=_hosts_problem)
    password_hash: str = setting("", check=_hash_problem)  # `python -m untrusted.gui hash-password`
    tls_cert: Path | None = None
    tls_key: Path | None = None
    session_lifetime: Seconds = setting(12 * 3600.0, min=60, max=30 * 86400)
    max_clients: int = setting(8, min=1, max=64)  # open pages (WebSockets) at a time
    max_failed_logins: int = setting(5, min=1, max=100)  # per minute, per address
    max_failed_logins_total: int = setting(60, min=1, max=1000)  # per minute, from all addresses
    points: list[str] = _globs("**")  # what the GUI watches
    overview: OverviewConfig = field(default_factory=OverviewConfig)

    @property
    def address(self) -> Listen:
        return Listen.parse(self.listen)

    @property
    def login_required(self) -> bool:
        return bool(self.password_hash)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self, where: str) -> None:
        """What no single key says: a GUI reachable from the LAN needs a password."""
        if not self.address.loopback and not self.password_hash:
            raise SetupError(
                f"{where}.listen: {self.listen} is reachable from the network: set "
                f"{where}.password_hash (python -m untrusted.gui hash-password)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SetupError(f"{where}.tls_cert, tls_key: give both or neither")
        for key, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            with contextlib.suppress(PermissionError):  # said just below, with whose it must be
                if path is not None and not path.is_file():
                    raise SetupError(f"{where}.{key}: no file {path}")
        # Under `smx run` as root the GUI is a user of its own: say whose the files must be.
        require_readable({f"{where}.tls_cert": self.tls_cert, f"{where}.tls_key": self.tls_key})
        if self.tls_cert is not None and self.tls_key is not None:
            try:  # now, not at the first page: a bad pair is a config mistake, said in one line
                tls_context(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as err:
                raise SetupError(f"{where}.tls_cert, tls_key: cannot use them: {err}") from None

    def allowed_hosts(self) -> set[str]:
        """Host header values (host[:port]) the GUI answers to."""
        addr = self.address
        names = {addr.host, *self.hosts}
        if addr.loopback:
            names |= {"localhost", "127.0.0.1", "[::1]"}
        default_port = 443 if self.tls else 80
        hosts = set()
        for name in names:
            shown = f"[{name}]" if ":" in name and not name.startswith("[") else name
            hosts.add(f"{shown}:{addr.port}")
            if addr.port == default_port:
                hosts.add(shown)
        return hosts

    def allowed_origins(self) -> set[str]:
        scheme = "https" if self.tls else "http"
        return {f"{scheme}://{host}" for host in self.allowed_hosts()}


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {text!r}")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"the host must be an IP address, got {host!r}") from None
        return cls(host, int(port))

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback
