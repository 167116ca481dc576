"""Reading a file that another process controls (its health file, its log) without trusting it.

The supervisor reads such files on its event loop. A process can replace its own file with a
FIFO (an `open()` that never returns), a link to another process's file or to `/dev/zero`, or a
huge file: so only a regular file with one name is read, never following a link, and never more
than the caller's limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["read_regular_file"]


def read_regular_file(
    path: Path, limit: int, *, start: int = 0, tail: bool = False
) -> bytes | None:
    """Up to `limit` bytes of `path` from `start` (with `tail`, the last `limit` bytes after
    `start`); None when it is missing, not a regular file, has another name too (a hard link),
    or is larger than `limit` without `tail`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None
        size = info.st_size
        if tail:
            start = max(start, size - limit)
        elif size - start > limit:
            return None
        os.lseek(fd, max(0, start), os.SEEK_SET)
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
