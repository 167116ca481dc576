"""The log file of one supervised process, written by the supervisor, never by the process.

A process's stdout and stderr go into a pipe; the supervisor copies what arrives to
``run/logs/<name>.log`` and so keeps the disk and the SD card safe from a process that floods:

- size: when the file would pass ``max_bytes`` it becomes ``<name>.log.1`` (replacing the
  previous one) and a new file is started, so a process never holds more than twice
  ``max_bytes`` of log, while it runs as well as across restarts;
- rate: lines beyond ``rate`` bytes a second (averaged, with a burst of ``BURST_SECONDS`` of
  it) are dropped, whole; a line in the log says how much was dropped (at most one every
  ``NOTE_INTERVAL`` seconds, charged to the rate);
- the last non-empty line of the current run is kept in memory: it becomes ``last_error`` when
  the process dies (it counts even when the rate dropped it from the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path

__all__ = ["BURST_SECONDS", "ProcessLog", "open_log"]

BURST_SECONDS = 30.0  # a start-up or a traceback may come at once; a flood may not last
NOTE_INTERVAL = 5.0  # seconds between two notes of dropped output while a run goes on
_READ_CHUNK = 65536
_TAIL_BYTES = 8192
_MAX_ERROR = 300


def open_log(path: Path, rotate_over: int) -> int:
    """The log file `path` opened for appending (moved to ``.1`` first when bigger than
    ``rotate_over`` bytes), through directories the supervisor itself owns, never following a
    link.

    The supervisor may be root: a process able to swap `run/` or `run/logs/` for its own
    directory with a link in it would make root create or append to any file. So `run/` and
    `run/logs/` are opened without following links and must belong to the supervisor's user,
    and the log itself is opened relative to them.
    """
    me = os.geteuid()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    run_fd = os.open(path.parent.parent, flags)
    try:
        logs_fd = os.open(path.parent.name, flags, dir_fd=run_fd)
    finally:
        os.close(run_fd)
    try:
        # A swapped run/ can only hold a logs/ its swapper owns: checking logs/ is enough.
        if os.fstat(logs_fd).st_uid != me:
            raise PermissionError(f"{path.parent} is not the supervisor's own directory: refusing")
        with contextlib.suppress(FileNotFoundError):
            info = os.stat(path.name, dir_fd=logs_fd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_size > rotate_over:
                os.replace(path.name, path.name + ".1", src_dir_fd=logs_fd, dst_dir_fd=logs_fd)
        fd = os.open(
            path.name,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=logs_fd,
        )
    finally:
        os.close(logs_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != me:
        os.close(fd)
        raise PermissionError(f"{path} is not a plain file of the supervisor's: refusing")
    return fd


class ProcessLog:
    """One process's log: `start_run` before each start, `pump` the pipe, `last_line` after."""

    def __init__(self, path: Path, *, max_bytes: int, rate: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.rate = rate
        self.burst = max(rate * BURST_SECONDS, float(_READ_CHUNK))
        self.dropped_bytes = 0  # in all, since the supervisor started
        self._fd: int | None = None
        self._size = 0
        self._tokens = self.burst
        self._refilled = time.monotonic()
        self._dropping = 0  # bytes dropped since the last note in the file
        self._pending = b""  # a line still waiting for its end
        self._noted = -NOTE_INTERVAL  # monotonic time of the last drop note
        self._tail = b""
        self._ends_line = True

    def start_run(self, marker: str) -> None:
        """Open (or reopen) the file and write ``marker`` as a line: a new run of the process."""
        self.close()
        self._pending = b""
        self._fd = open_log(self.path, self.max_bytes)
        self._size = os.fstat(self._fd).st_size
        self._tail = b""
        self._ends_line = True
        self._write(f"{marker}\n".encode())

    async def pump(self, read_fd: int) -> None:
        """Copy what arrives on ``read_fd`` (the read end of the process's pipe) until every
        writer has closed it; owns and closes ``read_fd``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_CHUNK, loop=loop)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
        )
        try:
            while chunk := await reader.read(_READ_CHUNK):
                self.feed(chunk)
        finally:
            transport.close()
            self._flush_pending()
            self._note_dropped()

    def feed(self, chunk: bytes) -> None:
        """One piece of the process's output. Whole lines are written, or dropped over the rate;
        a partial line waits for its end (up to 64 KiB)."""
        self._tail = (self._tail + chunk)[-_TAIL_BYTES:]
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < _READ_CHUNK:
            self._pending = data
            return
        if cut == 0:
            cut = len(data)
        self._pending = data[cut:]
        self._lines(data[:cut])

    def _lines(self, block: bytes) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        head, rest = block, b""
        if len(block) > self._tokens:  # over the rate: the whole lines that fit, no more
            cut = (
                block.rfind(b"\n", 0, max(0, int(self._tokens))) + 1
            )  # (a negative end counts from the end)
            head, rest = block[:cut], block[cut:]
        if head:
            self._tokens -= len(head)
            self._note_dropped(at_most_every=NOTE_INTERVAL)
            self._write(head)
        if rest:
            self._dropping += len(rest)
            self.dropped_bytes += len(rest)

    def _flush_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, b""
            self._lines(pending + b"\n")

    def last_line(self) -> str:
        """The last non-empty line of the current run (cut to 300 characters), or ''."""
        for line in reversed(self._tail.decode("utf-8", "replace").splitlines()):
            line = line.strip()
            if line:
                return line if len(line) <= _MAX_ERROR else line[: _MAX_ERROR - 3] + "..."
        return ""

    def close(self) -> None:
        if self._fd is not None:
            self._flush_pending()
            self._note_dropped()
            os.close(self._fd)
            self._fd = None

    def _note_dropped(self, at_most_every: float = 0.0) -> None:
        """Say in the file how much was dropped: at once at the end of a run, else at most every
        `at_most_every` seconds, and charged to the rate like any line (notes alternating
        with 1-byte lines would otherwise write far more than the rate)."""
        if not self._dropping or self._fd is None:
            return
        now = time.monotonic()
        if now - self._noted < at_most_every:
            return
        n, self._dropping, self._noted = self._dropping, 0, now
        lead = "" if self._ends_line else "\n"
        note = (
            f"{lead}--- smx run: {n} bytes of output dropped: more than "
            f"{self.rate} bytes/s (supervisor.log_rate)\n".encode()
        )
        self._tokens -= len(note)
        self._write(note)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        if self._size + len(data) > self.max_bytes and self._size > 0:
            os.close(self._fd)
            self._fd = open_log(self.path, 0)  # anything in it moves to .1
            self._size = 0
        try:
            os.write(self._fd, data)
        except OSError:
            return  # a full disk must not stop the supervisor; the output is lost
        self._size += len(data)
        self._ends_line = data.endswith(b"\n")
