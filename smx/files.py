"""Files shared between processes: written atomically with an exact mode, and read without
trusting whoever controls them.

Writing: a temp file created with the final mode (never readable by others, not even before a
chmod, whatever the umask), fsynced, then renamed over the target: readers see the old or the
new file, never half of one.

Reading a file that another process controls (its health file, its log):

The supervisor reads such files on its event loop. A process can replace its own file with a
FIFO (an `open()` that never returns), a link to another process's file or to `/dev/zero`, or a
huge file: so only a regular file with one name is read, never following a link, and never more
than the caller's limit.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["read_regular_file", "write_atomic"]


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


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` by `data`, with exactly `mode`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
