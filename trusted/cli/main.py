"""Entry point of the `smx` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

__all__ = ["main"]

# Before any command imports grpc: gRPC logs every failed TLS handshake (a client without a
# certificate) at INFO, one line each, so a flood of them only fills the log. What the core
# refuses itself is summarised and audited; GRPC_VERBOSITY=INFO shows the handshakes again.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# Each module registers its own sub-commands; a missing module is a packaging bug, not optional.
COMMAND_MODULES = (
    "trusted.cli.pki_cmd",
    "trusted.cli.core_cmd",
    "smx.cli.client_cmd",
    "trusted.cli.audit_cmd",
    "trusted.cli.policy_cmd",
    "trusted.cli.demo_cmd",
    "trusted.cli.run_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smx", description="SMX Unbundled Smart Meter platform")
    parser.add_argument("--home", help="site directory (default: $SMX_HOME or ./site)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Every sub-command sets `func(args) -> int` and reports its own errors as a clear line.
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
