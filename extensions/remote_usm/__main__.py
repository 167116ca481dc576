"""`python -m extensions.remote_usm`: started by `smx run` with the SMX_* environment."""

from __future__ import annotations

import sys

from extensions.sdk import Extension, SetupError

from . import RemoteUsm

__all__ = ["main"]


def main() -> int:
    try:
        usm = RemoteUsm(Extension.from_environ())
    except SetupError as err:
        print(f"cannot start: {err}", file=sys.stderr)
        return 2
    return usm.run()


if __name__ == "__main__":
    raise SystemExit(main())
