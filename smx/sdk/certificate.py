"""Checking a process's certificate before it ever talks to the core: what the TLS handshake
would only report as "unavailable" (a missing file, a key that does not match, an expired
certificate, one not issued by the site CA) becomes a start-up error that says what to do."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from smx.client import Credentials
from smx.process_env import SetupError

__all__ = ["check_certificate"]

HANDSHAKE_TIMEOUT_S = 5.0


def check_certificate(credentials: Credentials, name: str, domain: str) -> None:
    """SetupError naming the problem and the `smx pki` command that fixes it.

    Checked by a TLS handshake with itself over a socket pair, using the stdlib `ssl` module
    grpc already loads (the `cryptography` package would cost every process ~13 MB of memory
    for this one check)."""
    try:
        credentials.check()
    except FileNotFoundError as err:
        raise SetupError(
            f"{err}; provision it with `smx pki issue {name} --domain {domain}`"
        ) from err
    problem = _handshake_with_self(credentials.ca, credentials.cert, credentials.key)
    if problem is None:
        return
    cert = credentials.cert
    if "expired" in problem:
        raise SetupError(
            f"certificate {cert} has expired: re-issue it with "
            f"`smx pki issue {name} --domain {domain} --replace`"
        )
    if "issuer" in problem or "self-signed" in problem or "self signed" in problem:
        raise SetupError(
            f"certificate {cert} was not issued by the site CA {credentials.ca}: "
            "the core would refuse it"
        )
    raise SetupError(f"certificate {cert} cannot be used: {problem}")


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
    a.settimeout(HANDSHAKE_TIMEOUT_S)
    b.settimeout(HANDSHAKE_TIMEOUT_S)
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
    thread.join(HANDSHAKE_TIMEOUT_S + 1)
    return problems[0] if problems else None
