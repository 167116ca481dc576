"""High-resolution history log: every sample of every point, made for flash storage.

The core calls `append` for every sample it stores; that is an in-memory deque append and nothing
else. Every `flush_interval` a single writer thread appends the buffered batch, with the newest
serialized point per name (`snapshot`, how the realtime DB gets its last values back after a
restart) and new metadata, as one checksummed record to the segment file and fdatasyncs it: a
flush writes about its own compressed bytes, and a `kill -9` loses at most the last interval.
Every COMPACT_INTERVAL (and at a clean stop, and when COMPACT_AT samples wait) the segment's
samples become compressed per-point chunks in SQLite in one transaction, and the segment starts
over. docs/CORE.md, "History on disk", has the formats and the figures.

Values are plain Python values; the gRPC layer converts to and from protobuf.

This module is the event-loop side (buffering, flush, compaction and retention scheduling). The
segment file is trusted.core.history_segment, the samples it holds in memory
trusted.core.history_recent, the SQLite work trusted.core.history_db, the chunk format
trusted.core.history_chunk, reads and downsampling trusted.core.history_query.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smx.aio import wait_event
from smx.names import GlobSet
from trusted.core.history_db import (
    HistoryError,
    HistoryStats,
    Value,
    age_batch,
    compact,
    connect_reader,
    keep_cap,
    open_db,
    size_batch,
    used_bytes,
    vacuum,
)
from trusted.core.history_query import AGGREGATIONS, HistoryQueryError, Sample, read_samples
from trusted.core.history_recent import Recent
from trusted.core.history_segment import Segment, build, read_records, segment_path

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

# Buffered samples kept while the disk refuses writes; beyond this the oldest are dropped
# (and counted). ~200 bytes each in memory: this bounds the buffer to some 20 MB, so an
# overload beyond what the disk takes (~55k samples/s here) costs samples, not memory.
MAX_PENDING = 100_000
# Under a heavy load, flush as soon as this many samples wait rather than on the timer only:
# a big buffer costs memory that CPython never gives back (measured: +55 MB at 50k points/s
# with a 2 s interval). At ordinary rates (hundreds of points/s) only the timer flushes.
FLUSH_AT = 10_000
# Compaction into chunks: every this many seconds (longer chunks compress better and cost fewer
# page writes per sample), or sooner once this many samples wait in the segment (they are also
# held in memory, ~50 bytes each).
COMPACT_INTERVAL = 600.0
COMPACT_AT = 200_000
# While compaction fails (database unwritable, disk full) the segment and its copy in memory
# would grow without end: past this many samples flushes wait (the buffer above then drops the
# oldest, counted), and a failed compaction is retried after COMPACT_RETRY seconds, not at once.
MAX_RECENT = 3 * COMPACT_AT
COMPACT_RETRY = 60.0
# Samples kept per point of the `keep` class (billing snapshots: 1,000 months), counted in
# whole chunks: retention never deletes them by age, so a writer could otherwise grow them
# without end.
KEEP_MAX_SAMPLES = 1000


@dataclass(slots=True)
class _Batch:
    samples: deque[tuple[str, int, Value, int]]
    last: dict[str, bytes]
    meta: dict[str, bytes]


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
        keep: Iterable[str] = (),
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
        # Points of a retention class of their own (billing snapshots): never deleted.
        self._keep = GlobSet(keep)
        self._max_pending = MAX_PENDING
        # The buffers are touched only on the event-loop thread (append, the flush swap, the
        # flush-done callback), so they need no lock: append stays a bare deque append.
        self._pending: deque[tuple[str, int, Value, int]] = deque(maxlen=self._max_pending)
        self._last: dict[str, bytes] = {}
        # The last sample appended per point: (ts, type, value, quality).
        self._appended: dict[str, tuple[int, type, Value, int]] = {}
        self._meta: dict[str, bytes] = {}
        self._stats = HistoryStats()
        self._conn: sqlite3.Connection | None = None
        self._segment: Segment | None = None
        self._recent = Recent()
        self._compacted_at = 0.0  # time.monotonic() of the last compaction
        self._compact_retry_at = 0.0  # after a failed compaction, none before this
        self._executor: ThreadPoolExecutor | None = None
        self._ids: dict[str, int] = {}  # name -> names.id; touched by the writer thread only
        self._flush_lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None  # set by append when FLUSH_AT samples wait
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
        self._wake = asyncio.Event()
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
        if self._wake is not None:
            self._wake.set()
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
        try:
            await self.compact()
        except HistoryError as err:
            log.error(
                "history log %s: no compaction at close (the segment keeps it): %s", self._path, err
            )
        self._state = "closed"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_conn)
        self._executor.shutdown(wait=False)
        self._executor = None

    # -- hot path --------------------------------------------------------------------------------

    def append(self, name: str, ts_ms: int, value: Value, quality: int, snapshot: Any) -> None:
        """Buffer one sample; `snapshot` (the serialized point, or an immutable message with
        SerializeToString, serialized at flush) becomes its last value."""
        self._last[name] = snapshot
        sample = (ts_ms, type(value), value, quality)  # 1, 1.0 and True differ here
        if self._appended.get(name) == sample:
            # The same sample again (a snapshot republished with its billing date, a value
            # re-sent unchanged with the same source time): stored once, not once per write.
            return
        self._appended[name] = sample
        pending = self._pending
        if len(pending) == self._max_pending:
            self._stats.dropped += 1  # the deque drops the oldest itself
            old = pending[0]
            if self._appended.get(old[0]) == (old[1], type(old[2]), old[2], old[3]):
                del self._appended[old[0]]  # dropped, not stored: its next write must count
        pending.append((name, ts_ms, value, quality))
        if len(pending) >= FLUSH_AT and self._wake is not None:
            self._wake.set()

    def put_metadata(self, name: str, blob: bytes) -> None:
        """Buffer an opaque metadata blob for `name`; persisted at the next flush."""
        self._meta[name] = blob

    # -- last values and metadata ----------------------------------------------------------------

    def load_last(self) -> dict[str, bytes]:
        """Last snapshot per point: the stored ones, overlaid with any not yet flushed."""
        stored = self._load_table("last")
        stored.update(self._recent.last)
        stored.update(
            {n: b if isinstance(b, bytes) else b.SerializeToString() for n, b in self._last.items()}
        )
        return stored

    def load_metadata(self) -> dict[str, bytes]:
        """Metadata blob per point: the stored ones, overlaid with any not yet flushed."""
        stored = self._load_table("meta")
        stored.update(self._recent.meta)
        stored.update(self._meta)
        return stored

    def _load_table(self, table: str) -> dict[str, bytes]:
        self._require_started()
        conn = connect_reader(self._path)
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
            if self._recent.count >= MAX_RECENT:
                raise HistoryError(
                    f"{self._recent.count} samples wait for compaction into {self._path}, "
                    "which keeps failing: new samples stay buffered"
                )
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
        # Snapshots handed over as messages are serialized here, once per point per flush
        # (not once per sample), and on the loop: the writer thread would hold the GIL anyway.
        last = {
            n: b if isinstance(b, bytes) else b.SerializeToString() for n, b in self._last.items()
        }
        batch = _Batch(self._pending, last, self._meta)
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
        assert self._stop is not None and self._wake is not None
        while not self._stop.is_set():
            await wait_event(self._wake, self._flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                return  # close() does the final flush
            try:
                await self.flush()
                if self._compaction_due():
                    await self.compact()
            except HistoryError:
                pass  # logged by _flush_done / compact; the segment keeps the samples
            except Exception:
                log.exception("history flush to %s failed unexpectedly", self._path)

    def _compaction_due(self) -> bool:
        now = time.monotonic()
        if now < self._compact_retry_at:
            return False
        return self._recent.count >= COMPACT_AT or now - self._compacted_at >= COMPACT_INTERVAL

    # -- compaction ------------------------------------------------------------------------------

    async def compact(self) -> None:
        """Move the samples of the segment into compressed chunks (one transaction) and start
        the segment over. Raises HistoryError on failure; the segment still holds them."""
        self._require_started()
        assert self._flush_lock is not None
        async with self._flush_lock:  # never between a flush's segment write and its recent add
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, self._compact)
            except (sqlite3.Error, OSError) as err:
                self._compact_retry_at = time.monotonic() + COMPACT_RETRY
                log.error(
                    "history compaction of %s failed (retried in %gs): %s",
                    self._path,
                    COMPACT_RETRY,
                    err,
                )
                raise HistoryError(f"compaction of {self._path} failed: {err}") from err
            self._compact_retry_at = 0.0

    # -- writer thread ---------------------------------------------------------------------------

    def _open(self) -> None:
        self._conn, self._ids, self._stats.db_bytes, gen = open_db(self._path)
        self._compacted_at = time.monotonic()
        seg_path = segment_path(self._path)
        try:
            records, end, torn = read_records(seg_path, gen)
            self._segment = Segment(seg_path, gen, end, len(records))
        except OSError as err:
            self._conn.close()
            raise HistoryError(f"cannot open the history segment {seg_path}: {err}") from err
        if torn:
            log.warning(
                "history segment %s: a torn last record (%d bytes) was dropped", seg_path, torn
            )
        if records:
            for rec in records:
                self._recent.add(rec)
            log.info(
                "history segment %s: %d samples of %d flushes recovered",
                seg_path,
                self._recent.count,
                len(records),
            )
            try:
                self._compact()
            except (sqlite3.Error, OSError) as err:
                # The segment keeps them and compaction is retried, as in steady state.
                self._compact_retry_at = time.monotonic() + COMPACT_RETRY
                log.error("history compaction of %s at start failed: %s", self._path, err)
            except BaseException:
                self._close_conn()
                raise

    def _close_conn(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, batch: _Batch) -> tuple[int, int]:
        """One segment record: samples, last snapshots, metadata. Returns (written, rejected)."""
        seg = self._segment
        if seg is None:
            raise HistoryError(f"history log {self._path} is closed")
        rec, body, rejected = build(batch.samples, batch.last, batch.meta)
        if rec.samples or rec.last or rec.meta:
            seg.append(body)
            self._recent.add(rec)
        return len(rec.samples), rejected

    def _compact(self) -> None:
        conn, seg = self._conn, self._segment
        if conn is None or seg is None:
            raise HistoryError(f"history log {self._path} is closed")
        self._compacted_at = time.monotonic()
        if seg.seq == 0:
            return  # nothing written since the last compaction
        series, last, meta = self._recent.drain()
        compact(conn, self._ids, series, last, meta, seg.gen + 1)
        # Committed: the segment's records are obsolete, and the next one overwrites them.
        seg.reset(seg.gen + 1)
        self._recent.clear()
        self._stats.db_bytes = used_bytes(conn)

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
            if self._recent.older_than(cutoff, self._keep.match):
                await self.compact()  # retention deletes from chunks only
            while True:
                n, done = await loop.run_in_executor(self._executor, self._age_batch, cutoff)
                total += n
                if done:
                    break
        total += await loop.run_in_executor(self._executor, self._keep_cap)
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
            await wait_event(self._stop, self._retention_interval)
            if self._stop.is_set():
                return
            try:
                await self.enforce_retention()
            except Exception:
                log.exception("history retention on %s failed", self._path)

    def _age_batch(self, cutoff: int) -> tuple[int, bool]:
        assert self._conn is not None
        return age_batch(self._conn, self._stats, cutoff, self._keep.match)

    def _keep_cap(self) -> int:
        assert self._conn is not None
        return keep_cap(self._conn, self._stats, self._keep.match, KEEP_MAX_SAMPLES)

    def _size_batch(self, max_bytes: int) -> tuple[int, bool]:
        assert self._conn is not None
        return size_batch(self._conn, self._stats, self._path, max_bytes, self._keep.match)

    def _vacuum(self) -> None:
        assert self._conn is not None
        vacuum(self._conn, self._stats)

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
        bucket. Names without samples in the range yield nothing. Samples not flushed yet (the
        last flush interval) are not included."""
        self._require_started()
        reader = read_samples(
            self._path, self._recent, names, start_ms, end_ms, bucket_ms, aggregation, chunk
        )
        # aclosing: a caller that stops early closes the reader's connection now, not at GC.
        async with contextlib.aclosing(reader):
            async for item in reader:
                yield item

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
