"""The core's append-only audit log: JSON lines, hash-chained so that an edited line is detectable.

Each line is one record::

    {"seq":1,"ts_ms":...,"kind":"denied","identity":"spiffe://...","method":"...","point":"...",
     "reason":"...","detail":{...},"prev":"<hash of seq-1>","hash":"<sha256>"}

``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of every other field,
``prev`` included, so editing, reordering or deleting a line in the middle breaks the chain and
:meth:`AuditLog.verify` names the first bad seq. (Cutting records off the *end* is not detectable
from the file alone.)

Two kinds of traffic are aggregated so the log stays small on an SD card:

- writes (``record_write``, called per ``WritePoints`` batch) become one ``write`` record per
  identity every ``write_summary_interval`` seconds;
- identical denials (same identity, method, reason, point) inside one ``denial_window`` are written
  once immediately, then once more with ``{"repeats": n}`` when the window closes, so a client
  hammering a refused call cannot flood the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import heapq
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "KINDS", "AuditError", "AuditLog", "AuditRecord"]

log = logging.getLogger(__name__)

# Kinds the core writes; append() accepts others too so new features need no change here.
KINDS = frozenset(
    {"write", "setpoint_request", "setpoint_report", "setpoint_expired", "denied", "policy_reload"}
)
# The `prev` of the first record.
GENESIS = "0" * 64

_FIELDS = (
    "seq",
    "ts_ms",
    "kind",
    "identity",
    "method",
    "point",
    "reason",
    "detail",
    "prev",
    "hash",
)
_SUMMARY_NAMES = 20  # names listed in a write summary
_MAX_DISTINCT_NAMES = 100_000  # per identity and interval; beyond it the count is a lower bound
_MAX_DETAIL_DEPTH = 16


class AuditError(Exception):
    """The audit log cannot be written, read or verified; ``seq`` is the first bad record if any."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts_ms: int
    kind: str
    identity: str
    method: str = ""
    point: str = ""
    reason: str = ""
    detail: dict = field(default_factory=dict)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: the hash must survive a write/read round trip, so no NaN, no odd types."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DETAIL_DEPTH:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _record_hash(body: dict[str, Any]) -> str:
    """SHA-256 over every field except ``hash`` itself (``prev`` included)."""
    return hashlib.sha256(_canonical(body)).hexdigest()


def _to_record(obj: Any) -> AuditRecord:
    """A record from one parsed line; ValueError when the line is not a record."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    seq, ts_ms, detail = obj.get("seq"), obj.get("ts_ms"), obj.get("detail")
    if type(seq) is not int or type(ts_ms) is not int or not isinstance(detail, dict):
        raise ValueError("seq, ts_ms or detail missing or of the wrong type")
    texts = [obj.get(k) for k in ("kind", "identity", "method", "point", "reason")]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("a text field is missing or not a string")
    return AuditRecord(seq, ts_ms, *texts, detail=detail)


def _lines_backward(fd: int, size: int, chunk: int = 256 * 1024) -> Iterator[tuple[int, bytes]]:
    """(offset, raw line including its newline if any) from the end of the file backwards."""
    pos, buf, end = size, b"", 0  # buf holds the file from `pos`; buf[:end] is not yielded yet
    while True:
        # The region's last byte is its own line's newline: look for the one before it.
        cut = buf.rfind(b"\n", 0, end - 1) if end > 1 else -1
        if cut >= 0:
            yield pos + cut + 1, buf[cut + 1 : end]
            end = cut + 1
        elif pos > 0:
            step = min(max(chunk, end), pos)  # grows for a very long line: linear, not quadratic
            pos -= step
            buf = os.pread(fd, step, pos) + buf[:end]
            end += step
        else:
            if end:
                yield 0, buf[:end]
            return


@dataclass
class _WriteAgg:
    first_revision: int
    last_revision: int
    batches: int = 0
    points: int = 0
    names: set[str] = field(default_factory=set)
    capped: bool = False


@dataclass
class _DenialWindow:
    opened: float  # monotonic
    first: AuditRecord
    repeats: int = 0


class AuditLog:
    """Append-only audit log of the core; one instance (one process) per file, enforced by flock.

    ``append`` and ``record_write`` are synchronous and cheap: each record is one ``write(2)`` of a
    whole line, so it reaches the OS before ``append`` returns (a crash of the core loses nothing;
    a power cut loses at most ``fsync_interval`` seconds, which a background task fsyncs).
    ``query`` and ``verify`` read the whole file synchronously: call them through
    ``asyncio.to_thread`` from a server when the file is large.
    """

    def __init__(
        self,
        path: Path,
        *,
        write_summary_interval: float = 10.0,
        fsync_interval: float = 1.0,
        denial_window: float = 1.0,
        max_denial_keys: int = 1024,
    ) -> None:
        for name, value in (
            ("write_summary_interval", write_summary_interval),
            ("fsync_interval", fsync_interval),
            ("denial_window", denial_window),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if max_denial_keys < 1:
            raise ValueError(f"max_denial_keys must be >= 1, got {max_denial_keys!r}")
        self._path = Path(path)
        self._summary_interval = float(write_summary_interval)
        self._fsync_interval = float(fsync_interval)
        self._denial_window = float(denial_window)
        self._max_denial_keys = max_denial_keys

        self._fd: int | None = None
        self._closed = False
        self._seq = 0
        self._prev = GENESIS
        self._size = 0  # bytes known to be whole records; a failed write is cut back to it
        self._dirty = False
        self._last_fsync = 0.0
        self._next_summary = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

        self._writes: dict[str, _WriteAgg] = {}
        self._denials: dict[tuple[str, str, str, str], _DenialWindow] = {}
        # Denials beyond max_denial_keys distinct keys: counted per (identity, method, reason),
        # point dropped; beyond that too, one global counter. Memory stays bounded either way.
        self._overflow: dict[tuple[str, str, str], int] = {}
        self._overflow_opened = 0.0
        self._dropped = 0

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_seq(self) -> int:
        """The seq of the last record written (0 for an empty log)."""
        return self._seq

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file for appending and continue its seq and hash chain."""
        if self._closed:
            raise AuditError(f"{self._path}: audit log already closed")
        if self._fd is not None:
            raise AuditError(f"{self._path}: audit log already started")
        self._open()
        now = time.monotonic()
        self._last_fsync = now
        self._next_summary = now + self._summary_interval
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"audit-log:{self._path.name}")

    def _open(self) -> None:
        path = self._path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise AuditError(f"{path}: cannot open audit log: {err.strerror}") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise AuditError(f"{path}: audit log is in use by another AuditLog") from err
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                mode = st.st_mode & 0o777
                log.warning("%s: audit log had mode %o, tightening to 600", path, mode)
                os.fchmod(fd, 0o600)
            self._seq, self._prev, self._size = self._recover_tail(fd, st.st_size)
        except OSError as err:
            os.close(fd)
            raise AuditError(f"{path}: cannot read audit log: {err.strerror}") from err
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.info("audit log %s opened at seq %d", path, self._seq)

    def _recover_tail(self, fd: int, size: int) -> tuple[int, str, int]:
        """(last seq, last hash, size) to continue from; cuts a torn last line away."""
        keep = size
        for offset, raw in _lines_backward(fd, size):
            if not raw.endswith(b"\n"):
                # Every record is written whole with its newline, so this is an interrupted write.
                log.warning(
                    "%s: dropping a torn last line (%d bytes) left by an interrupted write",
                    self._path,
                    len(raw),
                )
                keep = offset
                continue
            try:
                obj = json.loads(raw)
                rec = _to_record(obj)
                last_hash = obj["hash"]
                if not isinstance(last_hash, str):
                    raise ValueError("hash is not a string")
            except (ValueError, KeyError) as err:
                # A whole but unreadable line is evidence, not debris: keep it; verify() reports it.
                log.error(
                    "%s: line at byte %d is not a valid audit record (%s); chaining from the "
                    "record before it, verify() will report the damage",
                    self._path,
                    offset,
                    err,
                )
                continue
            break
        else:
            rec, last_hash = None, GENESIS
        if keep != size:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        return (rec.seq if rec else 0), last_hash, keep

    async def close(self) -> None:
        """Write pending summaries and coalesced denials, fsync and close. Idempotent."""
        if self._closed:
            return
        if self._fd is None:
            self._closed = True
            return
        assert self._stop is not None
        self._stop.set()
        if self._task is not None:
            # Awaited, not cancelled: an fsync running in a thread must finish before the fd closes.
            try:
                await self._task
            except Exception:
                log.exception("audit log background task failed")
        try:
            self._flush_summaries()
            self._flush_denials(force=True)
        except AuditError:
            log.exception("audit log: pending records lost on close")
        fd, self._fd = self._fd, None
        self._closed = True
        try:
            await asyncio.to_thread(os.fsync, fd)
        except OSError as err:
            log.error("%s: fsync on close failed: %s", self._path, err.strerror)
        finally:
            os.close(fd)

    async def _run(self) -> None:
        assert self._stop is not None
        tick = min(0.25, self._fsync_interval, self._summary_interval, self._denial_window / 4)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)
            if self._stop.is_set() or self._fd is None:
                return
            now = time.monotonic()
            try:
                if now >= self._next_summary:
                    self._next_summary = now + self._summary_interval
                    self._flush_summaries()
                self._flush_denials(force=False, now=now)
            except AuditError:
                log.exception("audit log housekeeping failed")
            if self._dirty and now - self._last_fsync >= self._fsync_interval:
                self._dirty = False
                self._last_fsync = now
                try:
                    await asyncio.to_thread(os.fsync, self._fd)
                except OSError as err:
                    self._dirty = True
                    log.error("%s: fsync failed: %s", self._path, err.strerror)

    # -- writing -----------------------------------------------------------------------------

    def _check_open(self) -> int:
        if self._fd is None:
            state = "closed" if self._closed else "not started"
            raise AuditError(f"{self._path}: audit log is {state}")
        return self._fd

    def append(
        self,
        kind: str,
        identity: str,
        *,
        method: str = "",
        point: str = "",
        reason: str = "",
        detail: dict | None = None,
    ) -> AuditRecord:
        """Write one record and return it.

        Denials are coalesced: a repeat inside the window returns the record that opened the
        window and is counted into the ``{"repeats": n, "first_seq": s}`` record written when the
        window closes. Past ``max_denial_keys`` open windows, a denial is only counted (per
        identity, method and reason, point omitted) and the returned record has ``seq`` 0.
        """
        self._check_open()
        for name, value in (
            ("kind", kind),
            ("identity", identity),
            ("method", method),
            ("point", point),
            ("reason", reason),
        ):
            if not isinstance(value, str):
                raise TypeError(f"audit {name} must be a str, got {type(value).__name__}")
        if not kind:
            raise AuditError("audit record kind must not be empty")
        if detail is not None and not isinstance(detail, dict):
            raise TypeError(f"audit detail must be a dict, got {type(detail).__name__}")
        if kind == "denied":
            return self._deny(identity, method, point, reason, detail)
        return self._write(kind, identity, method, point, reason, detail)

    def _write(
        self,
        kind: str,
        identity: str,
        method: str,
        point: str,
        reason: str,
        detail: dict | None,
    ) -> AuditRecord:
        fd = self._check_open()
        clean = _jsonable(detail) if detail else {}
        seq, ts_ms = self._seq + 1, _now_ms()
        body = {
            "seq": seq,
            "ts_ms": ts_ms,
            "kind": kind,
            "identity": identity,
            "method": method,
            "point": point,
            "reason": reason,
            "detail": clean,
            "prev": self._prev,
        }
        digest = _record_hash(body)
        body["hash"] = digest
        line = (
            json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
                "ascii"
            )
            + b"\n"
        )
        view, done = memoryview(line), 0
        try:
            while done < len(line):
                done += os.write(fd, view[done:])
        except OSError as err:
            # Cut a partial line back off so the next record starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise AuditError(
                f"{self._path}: cannot append audit record: {err.strerror}", seq=seq
            ) from err
        self._size += len(line)
        self._seq, self._prev, self._dirty = seq, digest, True
        return AuditRecord(seq, ts_ms, kind, identity, method, point, reason, clean)

    def _deny(
        self, identity: str, method: str, point: str, reason: str, detail: dict | None
    ) -> AuditRecord:
        now = time.monotonic()
        key = (identity, method, reason, point)
        win = self._denials.get(key)
        if win is not None:
            if now - win.opened < self._denial_window:
                win.repeats += 1
                return win.first
            self._close_denial(key, win)
        if len(self._denials) >= self._max_denial_keys:
            self._flush_denials(force=False, now=now)
        if len(self._denials) >= self._max_denial_keys:
            self._overflow_denial(identity, method, reason, now)
            return AuditRecord(0, _now_ms(), "denied", identity, method, point, reason)
        first = self._write("denied", identity, method, point, reason, detail)
        self._denials[key] = _DenialWindow(now, first)
        return first

    def _overflow_denial(self, identity: str, method: str, reason: str, now: float) -> None:
        if not self._overflow and not self._dropped:
            self._overflow_opened = now
        okey = (identity, method, reason)
        if okey in self._overflow or len(self._overflow) < self._max_denial_keys:
            self._overflow[okey] = self._overflow.get(okey, 0) + 1
        else:
            self._dropped += 1

    def _close_denial(self, key: tuple[str, str, str, str], win: _DenialWindow) -> None:
        del self._denials[key]
        if win.repeats:
            identity, method, reason, point = key
            self._write(
                "denied",
                identity,
                method,
                point,
                reason,
                {"repeats": win.repeats, "first_seq": win.first.seq},
            )

    def _flush_denials(self, *, force: bool, now: float = 0.0) -> None:
        """Close expired denial windows (all of them when ``force``)."""
        expired = [
            (key, win)
            for key, win in self._denials.items()
            if force or now - win.opened >= self._denial_window
        ]
        for key, win in expired:
            self._close_denial(key, win)
        if (self._overflow or self._dropped) and (
            force or now - self._overflow_opened >= self._denial_window
        ):
            overflow, self._overflow = self._overflow, {}
            dropped, self._dropped = self._dropped, 0
            for (identity, method, reason), n in overflow.items():
                self._write(
                    "denied", identity, method, "", reason, {"repeats": n, "points_omitted": True}
                )
            if dropped:
                self._write("denied", "", "", "", "", {"repeats": dropped, "all_omitted": True})

    def record_write(self, identity: str, names: Iterable[str], revision: int) -> None:
        """Count one WritePoints batch; summarised per identity every write_summary_interval."""
        self._check_open()
        if not isinstance(names, list | tuple | set | frozenset):
            names = list(names)
        agg = self._writes.get(identity)
        if agg is None:
            agg = self._writes[identity] = _WriteAgg(revision, revision)
        agg.batches += 1
        agg.points += len(names)
        agg.last_revision = revision
        if len(agg.names) < _MAX_DISTINCT_NAMES:
            agg.names.update(names)
        elif not agg.capped and not agg.names.issuperset(names):
            agg.capped = True

    def _flush_summaries(self) -> None:
        writes, self._writes = self._writes, {}
        for identity in sorted(writes):
            agg = writes[identity]
            detail: dict[str, Any] = {
                "batches": agg.batches,
                "points": agg.points,
                "first_revision": agg.first_revision,
                "last_revision": agg.last_revision,
                "names": heapq.nsmallest(_SUMMARY_NAMES, agg.names),
                "distinct_names": len(agg.names),
            }
            if agg.capped:
                detail["distinct_names_capped"] = True
            self._write("write", identity, "", "", "", detail)

    # -- reading -----------------------------------------------------------------------------

    def query(
        self,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        kind: str | None = None,
        identity: str | None = None,
        point_glob: Callable[[str], bool] | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Matching records, oldest first; the newest ``limit`` when more match.

        ``start_ms <= ts_ms < end_ms``; ``kind`` and ``identity`` match exactly; ``point_glob`` is
        called with each record's point ("" for records without one). Records still being
        aggregated (write summaries, denial repeats) are not in the file yet.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        # Cheap byte pre-filter: our own writer spells these fields exactly so in every line.
        needles = [
            f'"{name}":{json.dumps(value, ensure_ascii=True)}'.encode("ascii")
            for name, value in (("kind", kind), ("identity", identity))
            if value is not None
        ]
        # Read backwards and stop at `limit` matches: the common query (the latest records)
        # touches only the end of a file that may be tens of MB. No early stop on time: a box
        # without an RTC writes 1970 timestamps until NTP syncs, so ts_ms is not monotonic.
        found: list[AuditRecord] = []
        bad = 0
        try:
            f = open(self._path, "rb")
        except FileNotFoundError:
            return []
        except OSError as err:
            raise AuditError(f"{self._path}: cannot read audit log: {err.strerror}") from err
        with f:
            fd = f.fileno()
            for _, raw in _lines_backward(fd, os.fstat(fd).st_size, chunk=1024 * 1024):
                if not raw.endswith(b"\n"):
                    continue  # a torn tail that start() has not cut yet
                if needles and not all(n in raw for n in needles):
                    continue
                try:
                    rec = _to_record(json.loads(raw))
                except ValueError:
                    bad += 1
                    continue
                if kind is not None and rec.kind != kind:
                    continue
                if identity is not None and rec.identity != identity:
                    continue
                if start_ms is not None and rec.ts_ms < start_ms:
                    continue
                if end_ms is not None and rec.ts_ms >= end_ms:
                    continue
                if point_glob is not None and not point_glob(rec.point):
                    continue
                found.append(rec)
                if len(found) >= limit:
                    break
        if bad:
            log.warning("%s: query skipped %d unreadable lines (run verify)", self._path, bad)
        found.reverse()
        return found

    def verify(self) -> int:
        """Check every line and the hash chain; the number of records checked.

        Raises AuditError (with ``.seq``) at the first record that is unreadable, out of sequence,
        not chained to its predecessor, or whose hash does not match its content.
        """
        prev, expected, count = GENESIS, 1, 0
        try:
            f = open(self._path, "rb")
        except OSError as err:
            raise AuditError(f"{self._path}: cannot read audit log: {err.strerror}") from err
        with f:
            for lineno, raw in enumerate(f, 1):
                where = f"{self._path}: seq {expected} (line {lineno})"
                if not raw.endswith(b"\n"):
                    raise AuditError(f"{where}: torn line without a newline", seq=expected)
                try:
                    obj = json.loads(raw)
                    _to_record(obj)
                except ValueError as err:
                    raise AuditError(f"{where}: not a valid record: {err}", seq=expected) from err
                if set(obj) != set(_FIELDS):
                    raise AuditError(
                        f"{where}: fields {sorted(obj)} differ from {sorted(_FIELDS)}",
                        seq=expected,
                    )
                seq = obj["seq"]
                if seq != expected:
                    raise AuditError(
                        f"{where}: found seq {seq} (a record is missing or out of order)",
                        seq=expected,
                    )
                if obj["prev"] != prev:
                    raise AuditError(
                        f"{where}: prev does not match the hash of seq {seq - 1}", seq=seq
                    )
                digest = obj.pop("hash")
                if _record_hash(obj) != digest:
                    raise AuditError(f"{where}: hash mismatch, the record was altered", seq=seq)
                prev, expected, count = digest, seq + 1, count + 1
        return count
