"""The outage store: charger CALLs the proxy answered itself while the SCADA was away, kept on
disk in arrival order until the SCADA has answered each one (docs/OCPP.md, "Upstream outage").

One file per charge point and OCPP version (`<id>.<subprotocol>.jsonl`: a 2.0.1 frame is never
replayed over a 1.6 connection), one line per entry:

- a JSON string, the frame exactly as received: appended and fsynced before the charger gets
  the proxy's answer;
- `done`: the oldest entry not yet marked was answered by the SCADA. Marking is a 5-byte
  append (fsynced): draining n frames writes 5n bytes, not n rewrites of the file. The file is
  compacted (rewritten with what is pending, atomically) only when the store is drained
  (truncated) or when what was delivered outweighs what is pending.

A crash between delivery and its mark delivers the frame again (at least once), never loses
it. Every file operation runs in a worker thread (asyncio.to_thread), one at a time.

Reading is line by line: a line that is neither (a torn last line after a power cut, a string
that is not an OCPP CALL) is set aside in `<file>.damaged` with one log line, and the store
works on with the rest. A store holds at most `max_frames` entries and `max_bytes` bytes
pending: `full()` tells the link to stop answering locally (it holds the call instead).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from array import array
from pathlib import Path
from urllib.parse import quote

from smx.files import write_atomic

from .frames import CALL, FrameError, parse

__all__ = ["OutageStore"]

log = logging.getLogger(__name__)

DONE = b"done\n"
COMPACT_MIN = 256 * 1024  # bytes of delivered entries before a compaction is worth it
DAMAGED_MAX = 1024 * 1024  # the set-aside file stops growing here (the lines are dropped)


class OutageStore:
    def __init__(
        self,
        directory: Path,
        cp_id: str,
        subprotocol: str = "ocpp1.6",
        *,
        max_bytes: int = 8 * 2**20,
        max_frames: int = 20_000,
    ) -> None:
        name = quote(cp_id, safe="")
        self.cp_id = cp_id
        self.path = directory / f"{name}.{subprotocol}.jsonl"
        # Before stores were kept per version, one file per charge point: adopted by the first
        # session that opens a store of this charge point (the version it last spoke).
        self.legacy = directory / f"{name}.jsonl"
        self.damaged_path = directory / f"{name}.{subprotocol}.jsonl.damaged"
        self.max_bytes, self.max_frames = max_bytes, max_frames
        self._mutex = threading.Lock()
        self._starts = array("q")  # byte offset of each entry line still in the file
        self._ends = array("q")
        self._head = 0  # entries before this one are delivered (marked)
        self._size = 0  # the file's length: where the next line goes
        self.pending_bytes = 0
        self.loaded = False
        self.broken = False  # a write failed: nothing more is stored until reloaded
        self.written = 0  # bytes this store wrote to disk (appends, marks, compactions)

    def __len__(self) -> int:
        return len(self._starts) - self._head

    def full(self, raw: str) -> bool:
        """No room for `raw`: the caller must not answer it locally."""
        if self.broken or not self.loaded:
            return True
        return len(self) >= self.max_frames or self.pending_bytes + len(raw) + 3 > self.max_bytes

    # -- async API (every file operation in a worker thread) -------------------------------

    async def open(self) -> None:
        """Read the file (again, if a write failed). Raises OSError if it cannot be read."""
        if not self.loaded or self.broken:
            await asyncio.to_thread(self._load)

    async def append(self, raw: str) -> bool:
        """Store `raw` (fsynced). False if it could not be written (the caller holds it)."""
        return await asyncio.to_thread(self._append, raw)

    async def first(self) -> str | None:
        """The oldest pending frame (None if the store is empty or unreadable)."""
        return await asyncio.to_thread(self._first)

    async def pop(self) -> None:
        """The oldest pending frame was answered by the SCADA (or is dropped): mark it."""
        await asyncio.to_thread(self._pop)

    # -- the work, in a thread ---------------------------------------------------------------

    def _load(self) -> None:
        with self._mutex:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists() and self.legacy.exists():
                os.replace(self.legacy, self.path)
                log.info("charge point %s: outage store %s adopted", self.cp_id, self.path.name)
            data = self.path.read_bytes() if self.path.exists() else b""
            entries: list[bytes] = []
            damaged: list[bytes] = []
            marks = 0
            lines = data.split(b"\n")
            torn = lines.pop()  # after the last newline: empty, or a line cut short
            if torn:
                lines.append(torn)
            for line in lines:
                if line + b"\n" == DONE:
                    marks += 1
                elif line.strip():
                    (entries if _entry(line) else damaged).append(line)
            if damaged:
                self._set_aside(damaged)
            if marks > len(entries):
                log.warning(
                    "charge point %s: outage store %s marks %d entries delivered of %d",
                    self.cp_id,
                    self.path.name,
                    marks,
                    len(entries),
                )
            pending = entries[marks:]
            text = b"".join(line + b"\n" for line in pending)
            if text != data:  # marks, damage, a missing last newline: rewrite once
                self._write(text)
            self._layout(pending)
            self.loaded, self.broken = True, False
            if pending:
                log.info(
                    "charge point %s: %d frames stored during an outage, to deliver",
                    self.cp_id,
                    len(pending),
                )

    def _set_aside(self, damaged: list[bytes]) -> None:
        kept = 0
        size = self.damaged_path.stat().st_size if self.damaged_path.exists() else 0
        if size < DAMAGED_MAX:
            text = b"".join(line + b"\n" for line in damaged)
            fd = os.open(self.damaged_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, text)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.written += len(text)
            kept = len(damaged)
        log.warning(
            "charge point %s: outage store %s: %d damaged lines (a torn write, or not an OCPP "
            "call) %s",
            self.cp_id,
            self.path.name,
            len(damaged),
            f"set aside in {self.damaged_path.name}" if kept else "dropped (set-aside file full)",
        )

    def _write(self, text: bytes) -> None:
        if text:
            write_atomic(self.path, text, 0o600)
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.written += len(text)

    def _layout(self, pending: list[bytes]) -> None:
        """Offsets of `pending`, written back to back from the start of the file."""
        self._starts, self._ends, self._head = array("q"), array("q"), 0
        at = 0
        for line in pending:
            self._starts.append(at)
            self._ends.append(at + len(line))
            at += len(line) + 1
        self._size = at
        self.pending_bytes = at

    def _append(self, raw: str) -> bool:
        line = json.dumps(raw).encode() + b"\n"
        with self._mutex:
            if self.broken or not self.loaded:
                return False
            try:
                self._append_bytes(line)
            except OSError as err:
                self.broken = True
                log.error(
                    "charge point %s: outage store %s not writable (%s): calls are held",
                    self.cp_id,
                    self.path.name,
                    err,
                )
                return False
            self._starts.append(self._size)
            self._ends.append(self._size + len(line) - 1)
            self._size += len(line)
            self.pending_bytes += len(line)
            return True

    def _append_bytes(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.written += len(data)

    def _first(self) -> str | None:
        with self._mutex:
            if not len(self) or self.broken:
                return None
            start, end = self._starts[self._head], self._ends[self._head]
            try:
                with open(self.path, "rb") as f:
                    f.seek(start)
                    raw = json.loads(f.read(end - start))
            except (OSError, ValueError) as err:
                log.error("charge point %s: outage store unreadable: %s", self.cp_id, err)
                self.broken = True
                return None
            return raw if isinstance(raw, str) else None

    def _pop(self) -> None:
        with self._mutex:
            if not len(self):
                return
            size = self._ends[self._head] - self._starts[self._head] + 1
            try:
                if len(self) == 1:
                    self._write(b"")  # drained: the file is empty again
                    self._layout([])
                    return
                self._append_bytes(DONE)
            except OSError as err:
                self.broken = True  # not marked: delivered again later (at least once)
                log.error("charge point %s: outage store not writable: %s", self.cp_id, err)
                return
            self._size += len(DONE)
            self._head += 1
            self.pending_bytes -= size
            if self._size - self.pending_bytes >= max(COMPACT_MIN, self.pending_bytes):
                self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the pending entries only (atomic: old or new, both right)."""
        try:
            data = self.path.read_bytes()
            pending = [
                data[self._starts[i] : self._ends[i]] for i in range(self._head, len(self._starts))
            ]
            self._write(b"".join(line + b"\n" for line in pending))
        except OSError as err:
            log.warning("charge point %s: outage store not compacted: %s", self.cp_id, err)
            return
        self._layout(pending)


def _entry(line: bytes) -> bool:
    """A stored line: a JSON string holding an OCPP CALL."""
    try:
        raw = json.loads(line)
        return isinstance(raw, str) and parse(raw).kind == CALL
    except (ValueError, RecursionError, FrameError):
        return False
