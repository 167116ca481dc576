"""The site directory, and the connection shared by the CLI commands that talk to a running core:
its options, the checks before connecting, and one line for every way a call can fail."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from smx.cli.errors import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError
from smx.client import Credentials, Stubs, error_reason, unix_target
from smx.connection_check import (
    CertificateProblem,
    CoreUnreachable,
    certificate_identity,
    check_credentials,
    explain_unavailable,
)
from smx.process_env import RunPaths
from smx.settings import ConfigError

if TYPE_CHECKING:  # imported where a call is made: `smx run` takes site_home from here
    import grpc

__all__ = [
    "Connection",
    "add_connection_options",
    "client_command",
    "connect",
    "explain_rpc_error",
    "require_site",
    "resolve",
    "site_home",
]

Handler = Callable[[argparse.Namespace], int]


def site_home(args: argparse.Namespace) -> Path:
    """The site directory: --home, else $SMX_HOME, else ./site."""
    return Path(getattr(args, "home", None) or os.environ.get("SMX_HOME") or "site").resolve()


def _home_source(args: argparse.Namespace) -> str:
    if getattr(args, "home", None):
        return "from --home"
    return "from $SMX_HOME" if os.environ.get("SMX_HOME") else "the default ./site"


def require_site(args: argparse.Namespace) -> Path:
    """The site directory, or CliError when it holds no site (no pki/ca.crt): the usual
    mistake is a command run from elsewhere than the site's parent without --home."""
    home = site_home(args)
    ca = home / "pki" / "ca.crt"
    try:
        if stat.S_ISREG(ca.stat().st_mode):
            return home
    except PermissionError:
        raise CliError(
            f"cannot read the site in {home}: permission denied (its files are private: run "
            "as the user who owns them, or as root)"
        ) from None
    except OSError:
        pass
    fix = (
        "give the site directory with --home or $SMX_HOME, or create a site with "
        "`smx pki init --site ID`"
    )
    if not home.is_dir():
        raise CliError(f"no site at {home} ({_home_source(args)}): no such directory; {fix}")
    raise CliError(f"no site CA in {home / 'pki'} ({_home_source(args)}): {ca} not found; {fix}")


def add_connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--as",
        dest="as_name",
        default="admin",
        help="client name whose certificate to use (<home>/pki/clients/NAME.crt, default admin)",
    )
    g.add_argument("--socket", type=Path, help="core Unix socket (default <home>/core.sock)")
    g.add_argument("--target", help="host:port of a core's TCP listener instead of the socket")
    g.add_argument("--cert", type=Path, help="client certificate (overrides --as)")
    g.add_argument("--key", type=Path, help="client private key (with --cert)")
    g.add_argument("--ca", type=Path, help="site CA certificate (default <home>/pki/ca.crt)")


@dataclass(frozen=True)
class Connection:
    target: str
    credentials: Credentials
    name: str  # the client name, for advice (`smx pki issue NAME ...`)


def resolve(args: argparse.Namespace) -> Connection:
    """Where to connect and with which files, from the options (nothing is checked)."""
    home = site_home(args)
    creds = Credentials.from_site(home, args.as_name)
    name = args.as_name
    if args.cert or args.key:
        if not (args.cert and args.key):
            raise CliError("--cert and --key go together")
        creds = Credentials(creds.ca, args.cert, args.key)
        ident = certificate_identity(args.cert)
        name = ident.name if ident else args.cert.stem
    if args.ca:
        creds = Credentials(args.ca, creds.cert, creds.key)
    target = args.target or unix_target(args.socket or RunPaths(home).socket)
    return Connection(target, creds, name)


def connect(args: argparse.Namespace) -> Stubs:
    """A channel to the core, once the site and the certificate are known to be usable: what the
    TLS handshake would only report as UNAVAILABLE is one line saying what to do."""
    conn = resolve(args)
    if not args.ca:
        require_site(args)
    try:
        check_credentials(conn.credentials, None if args.cert else conn.name)
    except CertificateProblem as err:
        cert = conn.credentials.cert
        if not args.cert and not cert.exists():
            raise CliError(
                f"no certificate for client {conn.name!r}: {cert} not found; issue one with "
                f"`smx pki issue {conn.name} --domain trusted|untrusted`, or pick another "
                "client with --as"
            ) from None
        raise CliError(str(err)) from None
    return Stubs(conn.credentials.channel(conn.target))


# Advice after the reason of a refusal, by reason.
_ADVICE = {
    "CERTIFICATE_REVOKED": "issue a new one with `smx pki issue {name} --domain {domain}`",
    "CERTIFICATE_EXPIRED": "issue a new one with `smx pki issue {name} --domain {domain} "
    "--replace`",
    "WRONG_SITE": "the certificate is of another site than the core's (check --home)",
    "PERMISSION_NOT_GRANTED": "`smx whoami --as {name}` shows its rights, `smx policy bind` "
    "grants roles",
}


def explain_rpc_error(err: grpc.RpcError, conn: Connection) -> CliError:
    """One line for a failed call: the core's refusal with its code and reason (exit 1, or 2
    for INVALID_ARGUMENT), or why the core could not be reached (exit 3) or would not accept the
    certificate (exit 2)."""
    import grpc

    code, reason = err.code(), error_reason(err)
    details = " ".join((err.details() or "").split())
    if code == grpc.StatusCode.UNAVAILABLE and reason is None:
        problem = explain_unavailable(conn.target, conn.credentials, details, conn.name)
        exit_code = EXIT_USAGE if isinstance(problem, CertificateProblem) else EXIT_UNREACHABLE
        return CliError(str(problem), exit_code)
    line = f"{code.name}{f' [{reason}]' if reason else ''}: {details}"
    advice = _ADVICE.get(reason or "")
    if advice:
        ident = certificate_identity(conn.credentials.cert)
        domain = ident.domain if ident else "trusted|untrusted"
        line += f"; {advice.format(name=conn.name, domain=domain)}"
    return CliError(line, EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED)


def client_command(p: argparse.ArgumentParser, fn: Handler) -> None:
    """`fn` talks to the core: connection options, and its failures as one line (CliError)."""
    add_connection_options(p)

    def run(args: argparse.Namespace) -> int:
        import grpc

        try:
            return fn(args)
        except grpc.RpcError as err:
            raise explain_rpc_error(err, resolve(args)) from None
        except CertificateProblem as err:
            raise CliError(str(err)) from None
        except CoreUnreachable as err:
            raise CliError(str(err), EXIT_UNREACHABLE) from None
        except (ValueError, ConfigError) as err:
            raise CliError(str(err)) from None

    p.set_defaults(func=run)
