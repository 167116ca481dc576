"""What a hostile process of a test site gets when it tries to open what is not its own: the
spy agents of the isolation tests run this inside the site, as their own OS user."""

from __future__ import annotations

from pathlib import Path

__all__ = ["try_opening"]


def try_opening(attempts: dict[str, tuple[Path, str]]) -> dict[str, str]:
    """For each named (path, mode): "opened", or the name of the error that refused it."""
    found = {}
    for what, (path, mode) in attempts.items():
        try:
            with open(path, mode):
                found[what] = "opened"
        except OSError as err:
            found[what] = type(err).__name__
    return found
