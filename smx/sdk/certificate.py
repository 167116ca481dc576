"""Checking a process's certificate before it ever talks to the core: what the TLS handshake
would only report as "unavailable" (a missing file, a key that does not match, an expired
certificate, one not issued by the site CA) becomes a start-up error that says what to do.

The check itself is `smx.connection_check`, shared with the `smx` command."""

from __future__ import annotations

from smx.client import Credentials
from smx.connection_check import CertificateProblem, check_credentials
from smx.process_env import SetupError

__all__ = ["check_certificate"]


def check_certificate(credentials: Credentials, name: str, domain: str) -> None:
    """SetupError naming the problem and the `smx pki` command that fixes it."""
    try:
        check_credentials(credentials, name, domain)
    except CertificateProblem as err:
        raise SetupError(str(err)) from None
