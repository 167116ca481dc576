"""Options and connection shared by the CLI commands that talk to a running core."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from smx.client import Credentials, Stubs, unix_target

__all__ = ["add_connection_options", "connect", "site_home"]


def site_home(args: argparse.Namespace) -> Path:
    """The site directory: --home, else $SMX_HOME, else ./site."""
    return Path(args.home or os.environ.get("SMX_HOME") or "site").resolve()


def add_connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--as",
        dest="as_name",
        default="admin",
        help="client name whose certificate to use (<home>/pki/clients/NAME.crt)",
    )
    g.add_argument("--socket", type=Path, help="core Unix socket (default <home>/core.sock)")
    g.add_argument("--target", help="host:port of a core's TCP listener instead of the socket")
    g.add_argument("--cert", type=Path, help="client certificate (overrides --as)")
    g.add_argument("--key", type=Path, help="client private key (with --cert)")
    g.add_argument("--ca", type=Path, help="site CA certificate (default <home>/pki/ca.crt)")


def connect(args: argparse.Namespace) -> Stubs:
    home = site_home(args)
    creds = Credentials.from_site(home, args.as_name)
    if args.cert or args.key:
        if not (args.cert and args.key):
            raise FileNotFoundError("--cert and --key go together")
        creds = Credentials(creds.ca, args.cert, args.key)
    if args.ca:
        creds = Credentials(args.ca, creds.cert, creds.key)
    target = args.target or unix_target(args.socket or home / "core.sock")
    return Stubs(creds.channel(target))
