"""Giving freed memory back to the system.

glibc keeps memory a burst freed (a large snapshot sent to many watchers, a big write) in its
heap for later use: the core's RSS stayed ~15 MiB above what it needed after 16 snapshots of
20 MB (docs/PERFORMANCE.md, run 12), and the supervisor's heap grew ~2.4 MiB in 5 minutes of
status rounds (run 14). `malloc_trim(0)` returns the free pages; it took 0.2-1.4 ms with a
150 MiB heap (~0.06 ms with the supervisor's), so the core calls it with its own health points,
every few seconds, and the supervisor after each status round. Other C libraries (musl) have no
such call: then nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["memory_trimmer"]


def memory_trimmer() -> Callable[[], None]:
    """A function returning the C heap's free memory to the system, or doing nothing where the C
    library cannot."""
    # The process's own symbols, libc's among them: ctypes.util.find_library would run ldconfig
    # and load subprocess and shutil (with bz2 and lzma) into every process that trims.
    try:
        trim = ctypes.CDLL(None).malloc_trim  # CDLL: the GIL is released during the call
    except (OSError, AttributeError, TypeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def release() -> None:
        trim(0)

    return release
