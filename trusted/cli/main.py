"""Entry point of the `smx` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

__all__ = ["main", "site_home"]

# Each module registers its own sub-commands; a missing module is a packaging bug, not optional.
COMMAND_MODULES = (
    "trusted.cli.pki_cmd",
    "trusted.cli.core_cmd",
    "trusted.cli.client_cmd",
    "trusted.cli.audit_cmd",
    "trusted.cli.policy_cmd",
    "trusted.cli.demo_cmd",
    "trusted.cli.run_cmd",
)


def site_home(args: argparse.Namespace) -> Path:
    """The site directory: --home, else $SMX_HOME, else ./site."""
    return Path(args.home or os.environ.get("SMX_HOME") or "site").resolve()


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
