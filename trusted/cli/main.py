"""Entry point of the `smx` console script."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from smx.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
)

if TYPE_CHECKING:
    import argparse

__all__ = ["main", "version"]

# Before any command imports grpc: gRPC logs every failed TLS handshake (a client without a
# certificate) at INFO, one line each, so a flood of them only fills the log. What the core
# refuses itself is summarised and audited; GRPC_VERBOSITY=INFO shows the handshakes again.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# Each module registers its own sub-commands; a missing module is a packaging bug, not optional.
# Each command -> the module that registers it. Only the module of the command given is
# imported: `smx run` supervises a site for months and must not carry what `smx audit`
# (cryptography) or `smx backup` (sqlite3) load, nor `smx points` the core's modules.
COMMANDS = {
    "pki": "trusted.cli.pki_cmd",
    "core": "trusted.cli.core_cmd",
    "points": "smx.cli.client_cmd",
    "setpoint": "smx.cli.client_cmd",
    "whoami": "smx.cli.client_cmd",
    "admin": "smx.cli.client_cmd",
    "audit": "trusted.cli.audit_cmd",
    "policy": "trusted.cli.policy_cmd",
    "demo": "trusted.cli.demo_cmd",
    "run": "trusted.cli.run_cmd",
    "status": "trusted.cli.run_cmd",
    "backup": "trusted.cli.backup_cmd",
    "restore": "trusted.cli.backup_cmd",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))

LOGGING_COMMANDS = ("core", "run", "demo")


def _usage_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's mistakes as one line naming the command and where to read more (instead of
    its usage lines), and exit status 2 as argparse's own."""
    _say(f"{self.prog}: {message} (see `{self.prog} --help`)")
    raise SystemExit(EXIT_USAGE)


def version() -> str:
    """The installed package's version (pyproject.toml's, as the package metadata has it)."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    try:
        return importlib.metadata.version("smx")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _version_action(argparse: Any) -> type:
    """`--version`, which looks the version up only when asked: importlib.metadata brings email,
    zipfile and csv (~2 MiB), which `smx run` and the core would carry for their whole life."""

    class VersionAction(argparse.Action):
        def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser: Any, *_: Any) -> None:
            print(f"smx {version()}")
            parser.exit()

    return VersionAction


def _command_word(argv: list[str]) -> str | None:
    """The command named in `argv` (after the global options), or None."""
    words = iter(argv)
    for word in words:
        if word == "--home":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the module of the command it names is loaded (all of
    them for help, a mistyped command or none)."""
    import argparse
    import importlib

    # A subclass made here, not at import: see `main` about what loads before it runs.
    parser_class = type("Parser", (argparse.ArgumentParser,), {"error": _usage_error})
    parser = parser_class(
        prog="smx",
        description="SMX Unbundled Smart Meter platform",
        epilog="Exit codes: 0 done, 1 refused or failed, 2 a mistake to fix (arguments, "
        "site, certificate, config), 3 the core cannot be reached, 130 interrupted. "
        "Read commands take --json. See README.md.",
    )
    parser.add_argument(
        "--version", action=_version_action(argparse), help="show the version and exit"
    )
    parser.add_argument("--home", help="site directory (default: $SMX_HOME or ./site)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    word = None if argv is None else _command_word(argv)
    for name in (COMMANDS[word],) if word in COMMANDS else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `smx` command; its exit code. Every failure a user can cause is one line on
    stderr (smx.cli.errors); a traceback only with -v, for a bug.

    What this module imports before `main` runs is kept to the minimum: a Ctrl-C while that
    loads is the one that still ends in Python's own traceback."""
    prog, verbose = "smx", False
    try:
        parser = build_parser(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        verbose = args.verbose
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        prog = f"smx {args.command}"
        import logging

        # The commands that run for long log what they do; the others only what went wrong.
        quiet = logging.INFO if args.command in LOGGING_COMMANDS else logging.WARNING
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else quiet,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except CliError as err:
        _say(f"{prog}: {err}")
        return err.code
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`smx audit | head`): nothing more to say, and nowhere to.
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as err:
        if verbose:
            raise
        _say(
            f"{prog}: internal error: {type(err).__name__}: {err} "
            "(a bug in smx: run the command again with `smx -v` for the traceback)"
        )
        return EXIT_INTERNAL


def _say(line: str) -> None:
    from smx.terminal import printable  # names in errors may come from others (archives, points)

    try:
        print(printable(line), file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr is gone too


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not raise
    the same BrokenPipeError again (the Python documentation's recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
