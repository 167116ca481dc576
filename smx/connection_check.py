"""Why a client cannot talk to the core, in one line that says what to do.

The TLS handshake reports every certificate problem as `UNAVAILABLE ... Socket closed`, and grpc
reports a key that does not belong to its certificate as lines of C++ internals. So a client
checks its files before it connects (`check_credentials`: the SDK when a process starts, `smx`
before every command), and explains a call that failed with UNAVAILABLE (`explain_unavailable`):
no core at the socket, a certificate the core refuses, a core of another site.

Only the stdlib `ssl` module is used, which grpc loads anyway: the `cryptography` package would
cost every process ~13 MB of memory for this one check.
"""

from __future__ import annotations

import datetime as dt
import errno
import re
import socket
import ssl
import threading
from pathlib import Path

from smx.client import Credentials
from smx.identity import DOMAINS, SCHEME, Identity, IdentityError

__all__ = [
    "CertificateProblem",
    "CoreUnreachable",
    "certificate_identity",
    "check_credentials",
    "explain_unavailable",
    "probe_target",
]

HANDSHAKE_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0

_START_HINT = "start it with `smx core`, or the whole site with `smx run`"


class CertificateProblem(Exception):
    """A CA, certificate or key file that cannot work; the message names it and the fix."""


class CoreUnreachable(Exception):
    """No core answers at the target; the message says where and what to do."""


# --------------------------------------------------------------------------- the client's files


def check_credentials(
    credentials: Credentials, name: str | None = None, domain: str | None = None
) -> None:
    """CertificateProblem naming the file, the problem and the `smx pki` command that fixes it,
    when the core's side of a TLS handshake would refuse these files.

    `name` and `domain` make the advice exact; by default they are read from the certificate
    (its `spiffe://<site>/<domain>/<name>` identity) where it can be read."""
    ident = certificate_identity(credentials.cert)
    name = name or (ident.name if ident else credentials.cert.stem)
    domain = domain or (ident.domain if ident else None)
    for what, path in (
        ("CA certificate", credentials.ca),
        ("certificate", credentials.cert),
        ("private key", credentials.key),
    ):
        _check_readable(what, path, name, domain)
    problem = _handshake_with_self(credentials)
    if problem is not None:
        raise CertificateProblem(_advice(problem, credentials, name, domain))


def _issue(name: str, domain: str | None, replace: bool = False) -> str:
    where = domain or "|".join(DOMAINS)
    return f"`smx pki issue {name} --domain {where}{' --replace' if replace else ''}`"


def _check_readable(what: str, path: Path, name: str, domain: str | None) -> None:
    if not path.exists():
        if what == "CA certificate":
            fix = "not a site's pki directory? (`smx pki init` creates a site's CA)"
        elif what == "certificate":
            fix = f"issue it with {_issue(name, domain)}"
        else:
            fix = f"issue a new certificate and key with {_issue(name, domain, replace=True)}"
        raise CertificateProblem(f"{what} not found: {path}; {fix}")
    try:
        with path.open("rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise CertificateProblem(f"{what} {path} is a directory, not a file") from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            raise CertificateProblem(
                f"cannot read the {what} {path}: permission denied (the site's files are "
                "private: run as the user who owns them, or as root)"
            ) from None
        raise CertificateProblem(f"cannot read the {what} {path}: {err.strerror or err}") from None


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of OpenSSL prompting on the terminal


def _handshake_with_self(credentials: Credentials) -> tuple[str, str] | None:
    """None when the core's side of a TLS handshake would accept this client certificate, else
    (what failed, OpenSSL's reason): `ca`, `cert`, `key`, `mismatch` while loading the files,
    `verify` when the certificate does not verify against the CA."""
    ca, cert, key = credentials.ca, credentials.cert, credentials.key
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        server.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as err:
        return "ca", str(err)
    try:
        # The client certificate plays the server too: only it is under test.
        server.load_cert_chain(cert, key, password=_no_password)
        client.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError) as err:
        if getattr(err, "reason", None) == "KEY_VALUES_MISMATCH":
            return "mismatch", str(err)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cert)
        except (ssl.SSLError, OSError):
            return "cert", str(err)
        return "key", str(err)
    server.verify_mode = ssl.CERT_REQUIRED  # what the core does: verify the client
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
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
    return ("verify", problems[0]) if problems else None


def _advice(problem: tuple[str, str], creds: Credentials, name: str, domain: str | None) -> str:
    what, reason = problem
    cert, key, ca = creds.cert, creds.key, creds.ca
    if what == "ca":
        return f"CA certificate {ca} cannot be loaded (not a PEM certificate?): {reason}"
    if what == "mismatch":
        return (
            f"private key {key} does not belong to certificate {cert}: use the key issued with "
            f"it, or issue both again with {_issue(name, domain, replace=True)}"
        )
    if what == "cert":
        return f"{cert} is not a PEM certificate: give the certificate `smx pki issue` wrote"
    if what == "key":
        return f"private key {key} cannot be loaded (not an unencrypted PEM key?): {reason}"
    if "expired" in reason:
        return (
            f"certificate {cert} has expired: issue a new one with "
            f"{_issue(name, domain, replace=True)}"
        )
    if "not yet valid" in reason:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"certificate {cert} is not valid yet: is this machine's clock right (now {now})?"
    if any(s in reason for s in ("issuer", "self-signed", "self signed", "signature")):
        return (
            f"certificate {cert} was not issued by the site CA {ca}: the core would refuse it "
            "(another site's certificate? `smx pki issue` issues this site's)"
        )
    if "purpose" in reason:
        fix = _issue(name, domain)
        return f"certificate {cert} is not a client certificate: issue one with {fix}"
    return f"certificate {cert} cannot be used: {reason}"


def certificate_identity(path: Path) -> Identity | None:
    """The SMX identity a PEM certificate file carries, or None if it cannot be read.

    For advice only (which `--domain` to re-issue with): the core takes identities from the
    verified certificate, never from here. Reads the URI SAN straight from the DER bytes (an
    IA5String with context tag [6], short length), to stay without `cryptography`."""
    try:
        der = ssl.PEM_cert_to_DER_cert(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    for m in re.finditer(re.escape(SCHEME.encode()), der):
        start = m.start()
        if start < 2 or der[start - 2] != 0x86 or der[start - 1] >= 0x80:
            continue
        uri = der[start : start + der[start - 1]].decode("ascii", "replace")
        try:
            return Identity.parse(uri)
        except IdentityError:
            continue
    return None


# --------------------------------------------------------------------------- the core's socket


def probe_target(target: str) -> str | None:
    """None when something accepts connections at `target` (a core, we hope), else why not, in
    words: no socket, a socket nobody listens on, permission denied, nothing at host:port."""
    if target.startswith("unix:"):
        path = Path(target.removeprefix("unix:").removeprefix("//"))
        if not path.exists():
            return f"no core is running at {path} (there is no socket): {_START_HINT}"
        address: str | tuple[str, int] = str(path)
        family, where = socket.AF_UNIX, str(path)
    else:
        host, _, port = target.rpartition(":")
        host = host.split("://")[-1].removeprefix("ipv4:").removeprefix("dns:").strip("[]")
        if not port.isdigit() or not host:
            return None  # a form we do not know: let grpc's words stand
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address, where = (host, int(port)), target
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(PROBE_TIMEOUT_S)
        try:
            s.connect(address)
        except ConnectionRefusedError:
            if family == socket.AF_UNIX:
                return (
                    f"no core is running at {where} (the socket is left over from a core that "
                    f"stopped): {_START_HINT}"
                )
            return f"nothing listens at {where}: is the core running with `tcp` in its core.toml?"
        except PermissionError:
            return (
                f"cannot connect to {where}: permission denied (the socket is for its owner "
                "and group only: run as one of them)"
            )
        except TimeoutError:
            return f"no answer from {where} within {PROBE_TIMEOUT_S:g} s"
        except OSError as err:
            return f"cannot connect to {where}: {err.strerror or err}"
    return None


def explain_unavailable(
    target: str,
    credentials: Credentials,
    details: str = "",
    name: str | None = None,
    domain: str | None = None,
) -> CertificateProblem | CoreUnreachable:
    """What a call that failed with grpc's own UNAVAILABLE (`details`) means: the core is not
    there (CoreUnreachable), or it is but the TLS handshake failed (CertificateProblem)."""
    unreachable = probe_target(target)
    if unreachable is not None:
        return CoreUnreachable(unreachable)
    try:
        check_credentials(credentials, name, domain)
    except CertificateProblem as problem:
        return problem
    where = target.removeprefix("unix://")
    text = details.lower()
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return CertificateProblem(
            f"the core at {where} has a certificate that the CA {credentials.ca} did not "
            "issue: it is another site's core, or that is not its site's CA (check --home, "
            "--socket, --ca)"
        )
    if any(s in text for s in ("socket closed", "handshake", "connection reset", "tsi_")):
        return CertificateProblem(
            f"the core at {where} ended the TLS handshake: it does not accept the certificate "
            f"{credentials.cert} (one of another site?)"
        )
    return CoreUnreachable(f"the core at {where} is unavailable: {details}")
