"""Where an extension finds its core, its certificate and its settings.

The supervisor (`smx run`) starts every extension with these environment variables:
SMX_SITE, SMX_NAME, SMX_DOMAIN, SMX_TARGET, SMX_CA, SMX_CERT, SMX_KEY, SMX_DEVICES, SMX_CONFIG
(a JSON file with the extension's `config` table) and SMX_HEALTH_FILE. An extension started by
hand can be given the same variables, or an `ExtensionEnv` built in code (tests do that).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smx.client import Credentials

__all__ = ["ExtensionEnv", "SetupError"]

REQUIRED = ("SMX_NAME", "SMX_TARGET", "SMX_CA", "SMX_CERT", "SMX_KEY")


class SetupError(Exception):
    """The extension cannot start: a missing variable or file, or a certificate that cannot
    work. The message says what to do."""


@dataclass(frozen=True)
class ExtensionEnv:
    name: str
    target: str
    credentials: Credentials
    site: str = ""
    domain: str = "trusted"
    devices: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    health_file: Path | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ExtensionEnv:
        env = os.environ if environ is None else environ
        missing = [k for k in REQUIRED if not env.get(k)]
        if missing:
            raise SetupError(
                f"missing environment variables {', '.join(missing)}: start the extension with "
                "`smx run` (which sets them), or set them by hand (see docs/EXTENSIONS.md)"
            )
        config: dict[str, Any] = {}
        if env.get("SMX_CONFIG"):
            path = Path(env["SMX_CONFIG"])
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise SetupError(f"SMX_CONFIG {path}: cannot read the JSON config: {err}") from err
            if not isinstance(config, dict):
                raise SetupError(f"SMX_CONFIG {path}: expected a JSON object")
        name = env["SMX_NAME"]
        devices = tuple(d for d in env.get("SMX_DEVICES", "").split(",") if d) or (name,)
        return cls(
            name=name,
            target=env["SMX_TARGET"],
            credentials=Credentials(
                Path(env["SMX_CA"]), Path(env["SMX_CERT"]), Path(env["SMX_KEY"])
            ),
            site=env.get("SMX_SITE", ""),
            domain=env.get("SMX_DOMAIN", "trusted"),
            devices=devices,
            config=config,
            health_file=Path(env["SMX_HEALTH_FILE"]) if env.get("SMX_HEALTH_FILE") else None,
        )

    def check_certificate(self) -> None:
        """Catch what the TLS handshake with the core would only report as "unavailable":
        missing files, a key that does not match, an expired certificate, or one not issued by
        the site CA. Checked by a TLS handshake with itself over a socket pair, using the
        stdlib `ssl` module grpc already loads (the `cryptography` package would cost every
        extension ~13 MB of memory for this one check)."""
        creds = self.credentials
        try:
            creds.check()
        except FileNotFoundError as err:
            raise SetupError(
                f"{err}; provision it with `smx pki issue {self.name} --domain {self.domain}`"
            ) from err
        problem = _handshake_with_self(creds.ca, creds.cert, creds.key)
        if problem is None:
            return
        if "expired" in problem:
            raise SetupError(
                f"certificate {creds.cert} has expired: re-issue it with "
                f"`smx pki issue {self.name} --domain {self.domain} --replace`"
            )
        if "issuer" in problem or "self-signed" in problem or "self signed" in problem:
            raise SetupError(
                f"certificate {creds.cert} was not issued by the site CA {creds.ca}: "
                "the core would refuse it"
            )
        raise SetupError(f"certificate {creds.cert} cannot be used: {problem}")


def _handshake_with_self(ca: Path, cert: Path, key: Path) -> str | None:
    """None when the core's side of a TLS handshake would accept this client certificate,
    else OpenSSL's reason."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        server.load_cert_chain(cert, key)  # the client certificate plays the server too
        client.load_cert_chain(cert, key)
        server.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as err:
        return f"cannot load it with its key or the CA: {err}"
    server.verify_mode = ssl.CERT_REQUIRED  # what the core does: verify the client
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # only the client certificate is under test
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    problems: list[str] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.recv(1)  # TLS 1.3 checks the client certificate after the handshake
        except ssl.SSLCertVerificationError as err:
            problems.append(err.verify_message or str(err))
        except (ssl.SSLError, OSError) as err:
            problems.append(str(err))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(b) as c:
            c.sendall(b"x")
    except (ssl.SSLError, OSError):
        pass  # the server side says why
    thread.join(6)
    return problems[0] if problems else None
