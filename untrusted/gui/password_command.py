"""`python -m untrusted.gui hash-password`: asks for a password twice (or reads one line from a
pipe) and prints its scrypt hash for `password_hash` in site.toml."""

from __future__ import annotations

import getpass
import sys

from .passwords import hash_password

__all__ = ["main"]

MIN_LENGTH = 8


def main() -> int:
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("GUI password: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            print("\nno password given: nothing printed", file=sys.stderr)
            return 2
        if again != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_LENGTH:
        print(f"a password of at least {MIN_LENGTH} characters, please", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
