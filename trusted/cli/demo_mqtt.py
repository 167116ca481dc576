"""The demo's MQTT side (`smx demo`): a small PKI of its own under ``<home>/mqtt/`` (a CA, the
broker's certificate for 127.0.0.1, one client certificate per MQTT client, its name as the
MQTT user name), Mosquitto's config (TLS with client certificates required, an ACL per user,
no persistence) and, when the site's processes run as their own users (root), each file
given to the user that reads it.

The site CA (trusted/pki) is the core's alone; the broker's is another trust domain, as a real
site's broker would be, so it gets its own CA here.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from trusted.pki.cert_build import build_ca, build_leaf, new_key

__all__ = ["MOSQUITTO", "BROKER", "MqttFiles", "give_files", "make_pki", "mosquitto_conf"]

MOSQUITTO = "/usr/sbin/mosquitto"  # the Debian package's broker
BROKER = "broker"  # the broker certificate's file name: not an MQTT client
_DAYS = 30  # a demo site lives minutes; a kept one (--keep) a while


@dataclass(frozen=True)
class MqttFiles:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def conf(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_pki(directory: Path, clients: Sequence[str]) -> MqttFiles:
    """A CA, the broker's certificate (127.0.0.1, localhost) and one client certificate per
    name (its common name, which Mosquitto takes as the user name), as PEM files; keys 0600."""
    files = MqttFiles(directory)
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    # The project's one certificate builder (trusted.pki): a CA, and leaves with the usages
    # the broker (server) and the clients need.
    ca, ca_key = build_ca("demo-mqtt", _DAYS)
    _write(files.ca, _pem(ca), 0o644)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=_DAYS)
    for name in (BROKER, *clients):
        key = new_key()
        if name == BROKER:
            san: list[x509.GeneralName] = [
                x509.IPAddress(IPv4Address("127.0.0.1")),
                x509.DNSName("localhost"),
            ]
            eku = [ExtendedKeyUsageOID.SERVER_AUTH]
        else:
            san, eku = [x509.DNSName(name)], [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = build_leaf(ca, ca_key, key, name, san, eku, until)
        _write(files.cert(name), _pem(cert), 0o644)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(files.key(name), private, 0o600)
    return files


def mosquitto_conf(files: MqttFiles, port: int, acl: Mapping[str, Sequence[str]]) -> None:
    """Write Mosquitto's config: one listener on 127.0.0.1:`port`, TLS with a client
    certificate required (its common name is the user name), nothing anonymous, the ACL
    `acl` (user -> `topic ...` lines), no persistence, its log on stderr (the site's log)."""
    rules = []
    for user, lines in acl.items():
        rules += [f"user {user}", *lines, ""]
    _write(files.acl, "\n".join(rules).encode(), 0o640)
    conf = [
        "# Written by `smx demo`: the demo site's broker (docs/LESSAG.md).",
        f"listener {port} 127.0.0.1",
        f"cafile {files.ca}",
        f"certfile {files.cert(BROKER)}",
        f"keyfile {files.key(BROKER)}",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {files.acl}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    _write(files.conf, ("\n".join(conf) + "\n").encode(), 0o640)


def give_files(files: MqttFiles, group: int, owners: Mapping[int, Sequence[Path]]) -> None:
    """Isolated processes (root): the directory and the public files to root and the site
    `group` (every process of the site is in it), each key to the user (uid) that reads it."""
    os.chown(files.dir, 0, group)
    os.chmod(files.dir, 0o750)
    for path in files.dir.iterdir():
        if not path.is_symlink() and path.is_file():
            os.chown(path, 0, group)
            os.chmod(path, 0o600 if path.suffix == ".key" else 0o640)
    for uid, paths in owners.items():
        for path in paths:
            os.chown(path, uid, -1)
