"""High-resolution history log: every sample of every point, in SQLite (WAL), written in batches.

The core calls `append` for every sample it stores; that is an in-memory deque append and nothing
else. A periodic task hands the buffered batch to a single writer thread, which writes it in one
transaction (one fsync-free WAL commit, synchronous=NORMAL) every `flush_interval` seconds, so an
SD card sees one write burst per interval instead of one per sample, and a `kill -9` loses at most
the samples of the last interval. The newest serialized point per name (`snapshot`) is written in
the same transaction, which is how the realtime DB gets its last values back after a restart.

Values are plain Python values; the gRPC layer converts to and from protobuf.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AGGREGATIONS",
    "MAX_PENDING",
    "HistoryError",
    "HistoryLog",
    "HistoryQueryError",
    "Sample",
    "Value",
]

log = logging.getLogger(__name__)

Value = float | int | bool | str

AGGREGATIONS = ("min", "max", "avg", "last")
# Buffered samples kept while the disk refuses writes; beyond this the oldest are dropped.
MAX_PENDING = 1_000_000
SCHEMA_VERSION = 1

_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_I32_MIN = -(2**31)
_I32_MAX = 2**31 - 1
# One retention batch deletes at most this fraction of the stored time span, so a first run on a
# large, long-neglected database is many short transactions rather than one long one.
_RETENTION_SPAN_FRACTION = 0.2
_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
_BUSY_TIMEOUT_S = 5.0
_KIND_PLAIN = 0  # int, float or str: SQLite's own storage class says which
_KIND_BOOL = 1  # stored as 0/1; read back as bool

# Quality order best -> worst (DATA-MODEL.md). Codes not listed (0 UNSPECIFIED, future values) are
# not known to be usable, but not known to have failed either: they rank between UNCERTAIN and BAD.
_QUALITY_RANK = {1: 0, 2: 1, 3: 2, 4: 4, 5: 5}
_UNKNOWN_RANK = 3
# SQL mirror of _QUALITY_RANK, packed with the code so MAX() picks the worst and keeps its code.
_QUALITY_KEY = (
    "((CASE q WHEN 1 THEN 0 WHEN 2 THEN 1 WHEN 3 THEN 2 WHEN 4 THEN 4 WHEN 5 THEN 5 ELSE 3 END)"
    " * 4294967296 + (q & 4294967295))"
)
# Epoch-aligned bucket start; SQLite's % truncates toward zero, so fold negatives back.
_BUCKET = "ts_ms - (((ts_ms % :w) + :w) % :w)"
_RANGE = "name_id = :id AND ts_ms >= :lo AND ts_ms < :hi"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS samples (
    name_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    v,
    q INTEGER NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name_id, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last (name TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, blob BLOB NOT NULL);
"""
# `v` has no declared type on purpose: no type affinity, so 3.0 stays REAL and "12" stays TEXT.

_INSERT_SAMPLE = (
    "INSERT OR REPLACE INTO samples (name_id, ts_ms, v, q, kind) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_LAST = "INSERT OR REPLACE INTO last (name, blob) VALUES (?, ?)"
_INSERT_META = "INSERT OR REPLACE INTO meta (name, blob) VALUES (?, ?)"
_RAW = f"SELECT ts_ms, v, q, kind FROM samples WHERE {_RANGE} ORDER BY ts_ms LIMIT :n"
_FIRST_TS = f"SELECT MIN(ts_ms) FROM samples WHERE {_RANGE}"
_HAS_TEXT = f"SELECT 1 FROM samples WHERE {_RANGE} AND typeof(v) = 'text' LIMIT 1"
_AGG = (
    "SELECT b, {fn}(v), COUNT(*), MAX(qk), MIN(kind) FROM ("
    f"SELECT {_BUCKET} AS b, v, {_QUALITY_KEY} AS qk, kind FROM samples WHERE {_RANGE}"
    ") GROUP BY b ORDER BY b"
)
_AGG_LAST = (
    "SELECT g.b, s.v, g.n, g.qk, s.kind FROM ("
    "SELECT b, MAX(ts_ms) AS t, COUNT(*) AS n, MAX(qk) AS qk FROM ("
    f"SELECT {_BUCKET} AS b, ts_ms, {_QUALITY_KEY} AS qk FROM samples WHERE {_RANGE}"
    ") GROUP BY b) AS g JOIN samples AS s ON s.name_id = :id AND s.ts_ms = g.t ORDER BY g.b"
)
_NAME_RANGES = (
    "SELECT id, (SELECT MIN(ts_ms) FROM samples WHERE name_id = names.id),"
    " (SELECT MAX(ts_ms) FROM samples WHERE name_id = names.id) FROM names"
)
_DELETE_BEFORE = "DELETE FROM samples WHERE name_id = ? AND ts_ms < ?"

# Errors that come from the data of one row, not from the disk: retrying the same batch would
# fail forever, so such a batch is written row by row and the bad rows are dropped.
_ROW_ERRORS = (
    OverflowError,
    UnicodeError,
    ValueError,
    TypeError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)


class HistoryError(Exception):
    """The history log cannot do what was asked (bad query, database unusable, write failed)."""


class HistoryQueryError(HistoryError, ValueError):
    """A read the caller should not have asked for (bad argument, avg over strings). Also a
    ValueError, so the gRPC edge answers INVALID_ARGUMENT; disk trouble stays a HistoryError."""


@dataclass(frozen=True, slots=True)
class Sample:
    ts_ms: int
    value: Value
    quality: int
    count: int = 1


@dataclass(slots=True)
class _Batch:
    samples: deque[tuple[str, int, Value, int]]
    last: dict[str, bytes]
    meta: dict[str, bytes]


@dataclass(slots=True)
class _Stats:
    flushed: int = 0
    flushes: int = 0
    flush_failures: int = 0
    dropped: int = 0
    rejected: int = 0
    deleted: int = 0
    db_bytes: int = 0
    consecutive_failures: int = field(default=0)


class HistoryLog:
    """The core's sample log. All methods are called from the event-loop thread that ran
    `start()`; all disk I/O happens in worker threads."""

    def __init__(
        self,
        path: Path,
        *,
        flush_interval: float = 2.0,
        max_age_s: float | None = None,
        max_bytes: int | None = None,
        retention_interval: float = 60.0,
    ) -> None:
        if flush_interval <= 0:
            raise HistoryError(f"flush_interval must be > 0, got {flush_interval!r}")
        if retention_interval <= 0:
            raise HistoryError(f"retention_interval must be > 0, got {retention_interval!r}")
        if max_age_s is not None and max_age_s <= 0:
            raise HistoryError(f"max_age_s must be > 0, got {max_age_s!r}")
        if max_bytes is not None and max_bytes <= 0:
            raise HistoryError(f"max_bytes must be > 0, got {max_bytes!r}")
        self._path = Path(path)
        self._flush_interval = flush_interval
        self._max_age_s = max_age_s
        self._max_bytes = max_bytes
        self._retention_interval = retention_interval
        self._max_pending = MAX_PENDING
        # The buffers are touched only on the event-loop thread (append, the flush swap, the
        # flush-done callback), so they need no lock: append stays a bare deque append.
        self._pending: deque[tuple[str, int, Value, int]] = deque(maxlen=self._max_pending)
        self._last: dict[str, bytes] = {}
        self._meta: dict[str, bytes] = {}
        self._stats = _Stats()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._ids: dict[str, int] = {}  # name -> names.id; touched by the writer thread only
        self._flush_lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._state = "new"  # new -> started -> closed

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open or create the database and start the periodic flush and retention tasks."""
        if self._state != "new":
            raise HistoryError(f"history log {self._path} is {self._state}; start() runs once")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-writer")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._flush_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._state = "started"
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="history-flush"))
        if self._max_age_s is not None or self._max_bytes is not None:
            retention = asyncio.create_task(self._retention_loop(), name="history-retention")
            self._tasks.append(retention)
        log.info("history log %s open (flush every %.3g s)", self._path, self._flush_interval)

    async def close(self) -> None:
        """Flush what is buffered, stop the tasks and close the database. Safe to call twice."""
        if self._state != "started":
            self._state = "closed"
            return
        assert self._stop is not None and self._executor is not None
        self._stop.set()
        # The loops finish their current flush / retention batch and exit; no cancellation, so
        # no batch is ever left half-handled.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await self.flush()
        except HistoryError as err:
            log.error(
                "history log %s closed with %d samples unsaved: %s",
                self._path,
                len(self._pending),
                err,
            )
        self._state = "closed"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_conn)
        self._executor.shutdown(wait=False)
        self._executor = None

    # -- hot path --------------------------------------------------------------------------------

    def append(self, name: str, ts_ms: int, value: Value, quality: int, snapshot: bytes) -> None:
        """Buffer one sample; `snapshot` (the serialized point) becomes its last value on flush."""
        pending = self._pending
        if len(pending) == self._max_pending:
            self._stats.dropped += 1  # the deque drops the oldest itself
        pending.append((name, ts_ms, value, quality))
        self._last[name] = snapshot

    def put_metadata(self, name: str, blob: bytes) -> None:
        """Buffer an opaque metadata blob for `name`; persisted at the next flush."""
        self._meta[name] = blob

    # -- last values and metadata ----------------------------------------------------------------

    def load_last(self) -> dict[str, bytes]:
        """Last snapshot per point: the stored ones, overlaid with any not yet flushed."""
        stored = self._load_table("last")
        stored.update(self._last)
        return stored

    def load_metadata(self) -> dict[str, bytes]:
        """Metadata blob per point: the stored ones, overlaid with any not yet flushed."""
        stored = self._load_table("meta")
        stored.update(self._meta)
        return stored

    def _load_table(self, table: str) -> dict[str, bytes]:
        self._require_started()
        conn = self._connect_reader()
        try:
            rows = conn.execute(f"SELECT name, blob FROM {table}").fetchall()
            return {name: bytes(blob) for name, blob in rows}
        except sqlite3.Error as err:
            raise HistoryError(f"cannot read table {table!r} of {self._path}: {err}") from err
        finally:
            conn.close()

    # -- flushing --------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything buffered now, in one transaction. Raises HistoryError on failure; the
        samples stay buffered for the next try."""
        self._require_started()
        assert self._flush_lock is not None
        async with self._flush_lock:  # a second flush() waits until the first one is on disk
            batch = self._take()
            if batch is None:
                return
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._executor, self._write, batch)
            # The outcome is handled by the callback even if this coroutine is cancelled: the
            # writer thread cannot be stopped, and a failed batch must go back to the buffer.
            fut.add_done_callback(functools.partial(self._flush_done, batch))
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                raise HistoryError(
                    f"flush of {len(batch.samples)} samples to {self._path} failed: {err}"
                ) from err

    def _take(self) -> _Batch | None:
        if not self._pending and not self._last and not self._meta:
            return None
        batch = _Batch(self._pending, self._last, self._meta)
        self._pending = deque(maxlen=self._max_pending)
        self._last = {}
        self._meta = {}
        return batch

    def _flush_done(self, batch: _Batch, fut: asyncio.Future[tuple[int, int]]) -> None:
        err = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        st = self._stats
        if err is None:
            written, rejected = fut.result()
            st.flushed += written
            st.rejected += rejected
            st.flushes += 1
            if st.consecutive_failures:
                log.info(
                    "history log %s writable again after %d failed flushes",
                    self._path,
                    st.consecutive_failures,
                )
            st.consecutive_failures = 0
            return
        self._restore(batch)
        st.flush_failures += 1
        st.consecutive_failures += 1
        # Once when it starts failing, then about every minute, not every interval.
        every = max(1, int(60 / self._flush_interval))
        if st.consecutive_failures == 1 or st.consecutive_failures % every == 0:
            log.error(
                "history flush to %s failed (%d in a row), %d samples kept for retry: %s",
                self._path,
                st.consecutive_failures,
                len(self._pending),
                err,
            )

    def _restore(self, batch: _Batch) -> None:
        """Put a failed batch back in front of what arrived meanwhile, newest data winning."""
        merged = deque(batch.samples, maxlen=self._max_pending)
        overflow = len(batch.samples) + len(self._pending) - self._max_pending
        merged.extend(self._pending)
        self._pending = merged
        if overflow > 0:
            self._stats.dropped += overflow
        batch.last.update(self._last)
        self._last = batch.last
        batch.meta.update(self._meta)
        self._meta = batch.meta

    async def _flush_loop(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self._flush_interval)
            except TimeoutError:
                pass
            if self._stop.is_set():
                return  # close() does the final flush
            try:
                await self.flush()
            except HistoryError:
                pass  # logged by _flush_done; the batch is kept
            except Exception:
                log.exception("history flush to %s failed unexpectedly", self._path)

    # -- writer thread ---------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
        except (OSError, sqlite3.Error) as err:
            raise HistoryError(f"cannot open history database {self._path}: {err}") from err
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HistoryError(
                    f"history database {self._path} has schema version {version}; "
                    f"this core knows up to {SCHEMA_VERSION}"
                )
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # Only possible before the first table exists.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistoryError(f"history database {self._path} refused WAL mode ({mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            self._ids = dict(conn.execute("SELECT name, id FROM names"))
            self._stats.db_bytes = _used_bytes(conn)
        except sqlite3.Error as err:
            conn.close()
            raise HistoryError(f"cannot open history database {self._path}: {err}") from err
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, batch: _Batch) -> tuple[int, int]:
        """One transaction: samples, last snapshots, metadata. Returns (written, rejected)."""
        conn = self._conn
        if conn is None:
            raise HistoryError(f"history database {self._path} is closed")
        new_ids: dict[str, int] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows, rejected = self._rows(conn, batch.samples, new_ids)
            last = _blob_rows(batch.last, "snapshot")
            meta = _blob_rows(batch.meta, "metadata")
            try:
                conn.executemany(_INSERT_SAMPLE, rows)
            except _ROW_ERRORS as err:
                log.warning(
                    "history batch for %s has an unstorable row (%s); writing row by row",
                    self._path,
                    err,
                )
                rows, bad = _insert_one_by_one(conn, rows)
                rejected += bad
            conn.executemany(_INSERT_LAST, last)
            conn.executemany(_INSERT_META, meta)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._ids.update(new_ids)  # only now: the rolled-back ids of a failed batch are not real
        self._stats.db_bytes = _used_bytes(conn)
        return len(rows), rejected

    def _rows(
        self,
        conn: sqlite3.Connection,
        samples: Iterable[tuple[str, int, Value, int]],
        new_ids: dict[str, int],
    ) -> tuple[list[tuple[int, int, Value, int, int]], int]:
        ids = self._ids
        rows: list[tuple[int, int, Value, int, int]] = []
        rejected = 0
        for name, ts, v, q in samples:
            t = type(v)
            if t is bool:
                kind = _KIND_BOOL
            elif t is float or t is int or t is str:
                kind = _KIND_PLAIN
            else:
                rejected += 1
                log.warning("history: dropped sample of %r: value type %s", name, t.__name__)
                continue
            if type(ts) is not int or not _I64_MIN <= ts <= _I64_MAX:
                rejected += 1
                log.warning("history: dropped sample of %r: bad ts_ms %r", name, ts)
                continue
            if type(q) is not int or not _I32_MIN <= q <= _I32_MAX:
                rejected += 1
                log.warning("history: dropped sample of %r: bad quality %r", name, q)
                continue
            nid = ids.get(name)
            if nid is None:
                nid = new_ids.get(name)
                if nid is None:
                    nid = _name_id(conn, name)
                    new_ids[name] = nid
            rows.append((nid, ts, v, q, kind))
        return rows, rejected

    # -- retention -------------------------------------------------------------------------------

    async def enforce_retention(self) -> int:
        """Delete samples older than max_age_s, then the oldest ones while the used size exceeds
        max_bytes; then give free pages back to the file system. Returns rows deleted."""
        self._require_started()
        loop = asyncio.get_running_loop()
        total = 0
        # Each batch is its own executor job, so flushes interleave with a long retention run.
        if self._max_age_s is not None:
            cutoff = int(time.time() * 1000) - int(self._max_age_s * 1000)
            while True:
                n, done = await loop.run_in_executor(self._executor, self._age_batch, cutoff)
                total += n
                if done:
                    break
        if self._max_bytes is not None:
            while True:
                n, done = await loop.run_in_executor(
                    self._executor, self._size_batch, self._max_bytes
                )
                total += n
                if done:
                    break
        await loop.run_in_executor(self._executor, self._vacuum)
        self._stats.deleted += total
        if total:
            log.info("history retention deleted %d samples from %s", total, self._path)
        return total

    async def _retention_loop(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self._retention_interval)
            except TimeoutError:
                pass
            if self._stop.is_set():
                return
            try:
                await self.enforce_retention()
            except Exception:
                log.exception("history retention on %s failed", self._path)

    def _ranges(self) -> list[tuple[int, int, int]]:
        """(name id, oldest ts, newest ts) of every name with samples: one index seek each."""
        assert self._conn is not None
        return [r for r in self._conn.execute(_NAME_RANGES) if r[1] is not None]

    def _delete_before(self, ranges: list[tuple[int, int, int]], cutoff: int) -> int:
        conn = self._conn
        assert conn is not None
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            doomed = [(nid, cutoff) for nid, lo, _ in ranges if lo < cutoff]
            conn.executemany(_DELETE_BEFORE, doomed)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._stats.db_bytes = _used_bytes(conn)
        return conn.total_changes - before

    def _age_batch(self, cutoff: int) -> tuple[int, bool]:
        ranges = self._ranges()
        if not ranges:
            return 0, True
        oldest = min(r[1] for r in ranges)
        if oldest >= cutoff:
            return 0, True
        newest = max(r[2] for r in ranges)
        step = max(1, int((newest - oldest) * _RETENTION_SPAN_FRACTION))
        batch_cut = min(cutoff, oldest + step)
        return self._delete_before(ranges, batch_cut), batch_cut >= cutoff

    def _size_batch(self, max_bytes: int) -> tuple[int, bool]:
        assert self._conn is not None
        used = _used_bytes(self._conn)
        self._stats.db_bytes = used
        if used <= max_bytes:
            return 0, True
        ranges = self._ranges()
        oldest = min((r[1] for r in ranges), default=None)
        newest = max((r[2] for r in ranges), default=None)
        if oldest is None or newest is None or newest <= oldest:
            # Only the newest millisecond is left (or nothing): that is never deleted.
            log.warning(
                "history %s uses %d bytes > max_bytes %d with nothing old left to delete",
                self._path,
                used,
                max_bytes,
            )
            return 0, True
        # Samples arrive roughly evenly in time, so the excess share of the bytes is about the
        # same share of the time span; a small margin avoids a long tail of tiny batches.
        share = min(_RETENTION_SPAN_FRACTION, (used - max_bytes) / used + 0.02)
        cut = min(newest, oldest + max(1, math.ceil((newest - oldest) * share)))
        return self._delete_before(ranges, cut), False

    def _vacuum(self) -> None:
        assert self._conn is not None
        # The pragma frees one page per step and returns no rows, so execute() would free just
        # one page; executescript() steps it to the end (we are in autocommit mode here).
        self._conn.executescript("PRAGMA incremental_vacuum")
        self._stats.db_bytes = _used_bytes(self._conn)

    # -- reading ---------------------------------------------------------------------------------

    async def read(
        self,
        names: list[str],
        start_ms: int | None,
        end_ms: int | None,
        bucket_ms: int | None = None,
        aggregation: str = "avg",
        chunk: int = 1000,
    ) -> AsyncIterator[tuple[str, list[Sample]]]:
        """Stored samples of `names`, in that order, oldest first, [start_ms, end_ms), in chunks of
        at most `chunk`; with `bucket_ms`, one aggregated Sample per non-empty epoch-aligned
        bucket. Names without samples in the range yield nothing. Samples still buffered (the
        last flush interval) are not included."""
        self._require_started()
        if aggregation not in AGGREGATIONS:
            raise HistoryQueryError(
                f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}"
            )
        if bucket_ms is not None and not 0 < bucket_ms < 2**62:
            raise HistoryQueryError(f"bucket_ms must be a positive number of ms, got {bucket_ms!r}")
        if chunk <= 0:
            raise HistoryQueryError(f"chunk must be > 0, got {chunk!r}")
        lo = _I64_MIN if start_ms is None else max(_I64_MIN, start_ms)
        hi = _I64_MAX if end_ms is None else min(_I64_MAX, end_ms)
        if lo >= hi or not names:
            return
        conn = await asyncio.to_thread(self._connect_reader)
        try:
            ids = await asyncio.to_thread(_lookup_ids, conn, names)
            if bucket_ms is not None and aggregation != "last":
                # Checked for all names before anything is yielded, so a stream never fails
                # half-way because of a query the caller should not have made.
                text = await asyncio.to_thread(_first_text, conn, ids, lo, hi)
                if text is not None:
                    raise HistoryQueryError(
                        f"point {text!r} holds strings: aggregation "
                        f"{aggregation!r} is not defined for them; use 'last'"
                    )
            for name in names:
                nid = ids.get(name)
                if nid is None:
                    continue
                cursor: int | None = lo
                while cursor is not None:
                    if bucket_ms is None:
                        got, cursor = await asyncio.to_thread(
                            _raw_chunk, conn, nid, cursor, hi, chunk
                        )
                    else:
                        got, cursor = await asyncio.to_thread(
                            _bucket_chunk, conn, nid, cursor, hi, bucket_ms, aggregation, chunk
                        )
                    if got:
                        yield name, got
        except sqlite3.Error as err:
            raise HistoryError(f"history read from {self._path} failed: {err}") from err
        finally:
            await asyncio.to_thread(conn.close)

    def _connect_reader(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as err:
            raise HistoryError(f"cannot open history database {self._path}: {err}") from err
        return conn

    # -- misc ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters for the core's health points."""
        st = self._stats
        return {
            "pending": len(self._pending),
            "flushed": st.flushed,
            "flushes": st.flushes,
            "flush_failures": st.flush_failures,
            "dropped": st.dropped,
            "rejected": st.rejected,
            "deleted": st.deleted,
            "db_bytes": st.db_bytes,
        }

    def _require_started(self) -> None:
        if self._state != "started":
            raise HistoryError(f"history log {self._path} is {self._state}, not started")


# -- helpers (run in worker threads) -------------------------------------------------------------


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _name_id(conn: sqlite3.Connection, name: str) -> int:
    conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
    return int(conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()[0])


def _blob_rows(blobs: dict[str, bytes], what: str) -> list[tuple[str, bytes]]:
    rows = []
    for name, blob in blobs.items():
        if isinstance(blob, bytes | bytearray | memoryview):
            rows.append((name, bytes(blob)))
        else:
            log.warning(
                "history: dropped %s of %r: not bytes but %s", what, name, type(blob).__name__
            )
    return rows


def _insert_one_by_one(
    conn: sqlite3.Connection, rows: list[tuple[int, int, Value, int, int]]
) -> tuple[list[tuple[int, int, Value, int, int]], int]:
    ok = []
    for row in rows:
        try:
            conn.execute(_INSERT_SAMPLE, row)
        except _ROW_ERRORS as err:
            log.warning("history: dropped sample (name id %d, ts %d): %s", row[0], row[1], err)
            continue
        ok.append(row)
    return ok, len(rows) - len(ok)


def _lookup_ids(conn: sqlite3.Connection, names: list[str]) -> dict[str, int]:
    ids = {}
    for name in dict.fromkeys(names):
        row = conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
        if row is not None:
            ids[name] = int(row[0])
    return ids


def _first_text(conn: sqlite3.Connection, ids: dict[str, int], lo: int, hi: int) -> str | None:
    for name, nid in ids.items():
        if conn.execute(_HAS_TEXT, {"id": nid, "lo": lo, "hi": hi}).fetchone() is not None:
            return name
    return None


def _value(v: object, kind: int) -> Value:
    if v is None:
        return math.nan  # SQLite stores NaN as NULL, and NULL is written for nothing else
    if kind == _KIND_BOOL:
        return bool(v)
    return v  # type: ignore[return-value]


def _quality(key: int) -> int:
    q = key & 0xFFFFFFFF
    return q - 2**32 if q > _I32_MAX else q


def _raw_chunk(
    conn: sqlite3.Connection, nid: int, cursor: int, hi: int, chunk: int
) -> tuple[list[Sample], int | None]:
    rows = conn.execute(_RAW, {"id": nid, "lo": cursor, "hi": hi, "n": chunk}).fetchall()
    out = [Sample(ts, _value(v, kind), q) for ts, v, q, kind in rows]
    if len(rows) < chunk:
        return out, None
    nxt = rows[-1][0] + 1  # keyset paging: no read transaction stays open between chunks
    return out, (nxt if nxt < hi else None)


def _bucket_chunk(
    conn: sqlite3.Connection,
    nid: int,
    cursor: int,
    hi: int,
    width: int,
    aggregation: str,
    chunk: int,
) -> tuple[list[Sample], int | None]:
    first = conn.execute(_FIRST_TS, {"id": nid, "lo": cursor, "hi": hi}).fetchone()[0]
    if first is None:
        return [], None
    # A window of at most `chunk` buckets starting at the next sample, so sparse series skip
    # their gaps with one index seek and each query aggregates a bounded slice.
    wstart = first - first % width
    wend = min(wstart + chunk * width, hi)
    args = {"id": nid, "lo": max(wstart, cursor), "hi": wend, "w": width}
    out: list[Sample] = []
    if aggregation == "last":
        for b, v, n, qk, kind in conn.execute(_AGG_LAST, args):
            out.append(Sample(b, _value(v, kind), _quality(qk), n))
    else:
        sql = _AGG.format(fn=aggregation.upper())
        for b, v, n, qk, min_kind in conn.execute(sql, args):
            if v is None:
                value: Value = math.nan
            elif aggregation == "avg":
                value = float(v)
            elif min_kind == _KIND_BOOL:  # every sample of the bucket is a bool
                value = bool(v)
            else:
                value = v
            out.append(Sample(b, value, _quality(qk), n))
    return out, (wend if wend < hi else None)
