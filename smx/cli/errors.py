"""How the `smx` command fails: one line on stderr, `smx <command>: <what and what to do>`, and an
exit code a script can branch on. The codes are documented in README.md ("Exit codes").

A command raises CliError (or lets one of the errors below escape); the entry point
(trusted/cli/main.py) prints it and exits with its code. Nothing a user can get wrong ends in a
traceback: an unexpected exception is a bug, reported as one line with EXIT_INTERNAL (and its
traceback with `smx -v`)."""

from __future__ import annotations

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
]

EXIT_OK = 0
# The command ran and the answer is no: the core refused the request, the audit log is broken,
# no supervisor runs the site, another core or supervisor already runs it, a setpoint waited
# for (`setpoint request --wait`) was not applied.
EXIT_FAILED = 1
# A mistake to fix before trying again: arguments, an unknown filter value, no site at --home,
# a missing, expired, foreign or mismatched certificate, a bad site, core or policy file.
EXIT_USAGE = 2
# The core cannot be reached: it is not running, or nothing listens at --socket / --target.
EXIT_UNREACHABLE = 3
# A bug in smx (EX_SOFTWARE): please report it with the output of `smx -v ...`.
EXIT_INTERNAL = 70
# Ctrl-C before the command was done (128 + SIGINT).
EXIT_INTERRUPTED = 130
# The reader of the output went away (`smx audit | head`): 128 + SIGPIPE, as for other tools.
EXIT_BROKEN_PIPE = 141


class CliError(Exception):
    """A one-line error of the `smx` command and its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
