"""The SQLite side of the history log: schema (and the migration from the first one), the
compaction transaction that turns the recent samples into compressed chunks, and retention.

Everything here blocks: HistoryLog (trusted.core.history) runs it on its single writer thread, with
the one writer connection `open_db` returns. Reads use connections of their own
(`connect_reader`, see trusted.core.history_query).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from array import array as _array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trusted.core import history_chunk
from trusted.core.history_chunk import Columns
from trusted.core.site_files import (
    PRIVATE_FILE_MODE,
    create_private_file,
    private_dir,
    tighten_existing,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "CHUNK_MAX",
    "I32_MAX",
    "I64_MAX",
    "I64_MIN",
    "SCHEMA_VERSION",
    "HistoryError",
    "HistoryStats",
    "Value",
    "age_batch",
    "compact",
    "connect_reader",
    "open_db",
    "size_batch",
    "used_bytes",
    "keep_cap",
    "vacuum",
]

log = logging.getLogger(__name__)

Value = float | int | bool | str
Keep = Callable[[str], bool] | None  # point names retention leaves alone

SCHEMA_VERSION = 2

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
I32_MAX = 2**31 - 1
# One retention batch deletes at most this fraction of the stored time span, so a first run on a
# large, long-neglected database is many short transactions rather than one long one.
_RETENTION_SPAN_FRACTION = 0.2
_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    name_id INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    n INTEGER NOT NULL,
    text INTEGER NOT NULL,
    blob BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_name ON chunks (name_id, first_ts, last_ts);
CREATE TABLE IF NOT EXISTS last (name TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state (key, value) VALUES ('segment_gen', 1);
"""
# chunks.id grows with every write, so of two chunks holding the same ts the higher id is the
# later write and wins. `text`: 1 when the chunk holds strings (avg/min/max refuse them).

INSERT_CHUNK = (
    "INSERT INTO chunks (name_id, first_ts, last_ts, n, text, blob) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_LAST = "INSERT OR REPLACE INTO last (name, blob) VALUES (?, ?)"
_INSERT_META = "INSERT OR REPLACE INTO meta (name, blob) VALUES (?, ?)"
_NAME_RANGES = (
    "SELECT c.name_id, MIN(c.first_ts), MAX(c.last_ts), names.name FROM chunks AS c"
    " JOIN names ON names.id = c.name_id GROUP BY c.name_id"
)
# Samples of a point past this many go to a further chunk: bounds what a read of a short range
# decodes, and what one retention trim rewrites.
CHUNK_MAX = 4096


class HistoryError(Exception):
    """The history log cannot do what was asked (bad query, database unusable, write failed)."""


@dataclass(slots=True)
class HistoryStats:
    """The counters behind HistoryLog.stats(); the functions here keep `db_bytes` current."""

    flushed: int = 0
    flushes: int = 0
    flush_failures: int = 0
    dropped: int = 0
    rejected: int = 0
    deleted: int = 0
    db_bytes: int = 0
    consecutive_failures: int = field(default=0)


# -- connections ---------------------------------------------------------------------------------


def open_db(path: Path) -> tuple[sqlite3.Connection, dict[str, int], int, int]:
    """Open or create the database, migrating a first-schema one: (writer connection,
    name -> names.id, used bytes, the segment generation to read and write)."""
    try:
        # Private whatever the umask: data/ 0700 and the file 0600 before SQLite opens it, so
        # that SQLite creates the -wal and -shm files with the database's mode.
        private_dir(path.parent)
        create_private_file(path)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
    except (OSError, sqlite3.Error) as err:
        raise HistoryError(f"cannot open history database {path}: {err}") from err
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history database {path} has schema version {version}; "
                f"this core knows up to {SCHEMA_VERSION}"
            )
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Only possible before the first table exists.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"history database {path} refused WAL mode ({mode})")
        # FULL: a commit is on disk before it returns. Compaction commits the chunks and then
        # starts the segment over; were the commit lost in a power cut, so would be every
        # sample since the last compaction (the segment's records are gone by then). Only
        # compaction and retention write here, every few minutes: the syncs cost nothing.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        if version == 1:
            from trusted.core.history_migrate import migrate_v1

            migrate_v1(conn, path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        if version == 1:
            conn.executescript("PRAGMA incremental_vacuum")
        ids = dict(conn.execute("SELECT name, id FROM names"))
        gen = int(conn.execute(_GEN).fetchone()[0])
        used = used_bytes(conn)
        for suffix in ("-wal", "-shm"):  # SQLite's mode minus the umask: never more than 0600
            tighten_existing(Path(f"{path}{suffix}"), PRIVATE_FILE_MODE)
    except (sqlite3.Error, OSError) as err:
        conn.close()
        raise HistoryError(f"cannot open history database {path}: {err}") from err
    except BaseException:
        conn.close()
        raise
    return conn, ids, used, gen


_GEN = "SELECT value FROM state WHERE key = 'segment_gen'"


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection of its own, usable from any thread."""
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as err:
        raise HistoryError(f"cannot open history database {path}: {err}") from err
    return conn


def used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


# -- compaction ----------------------------------------------------------------------------------


def chunk_rows(nid: int, cols: Columns) -> list[tuple[int, int, int, int, int, bytes]]:
    """The chunk rows of one point's sorted samples, CHUNK_MAX samples at most each."""
    ts, values, qs = cols
    rows = []
    for at in range(0, len(ts), CHUNK_MAX):
        t, v, q = ts[at : at + CHUNK_MAX], values[at : at + CHUNK_MAX], qs[at : at + CHUNK_MAX]
        text = int(any(type(x) is str for x in v)) if not isinstance(v, _array) else 0
        rows.append((nid, t[0], t[-1], len(t), text, history_chunk.encode(t, v, q)))
    return rows


def compact(
    conn: sqlite3.Connection,
    ids: dict[str, int],
    series: dict[str, Columns],
    last: dict[str, bytes],
    meta: dict[str, bytes],
    next_gen: int,
) -> None:
    """One transaction: the recent samples as chunks, the last snapshots and metadata, and the
    segment's next generation (which makes the current segment content obsolete)."""
    new_ids: dict[str, int] = {}
    try:
        conn.execute("BEGIN IMMEDIATE")
        rows = []
        for name, cols in series.items():
            if not cols[0]:
                continue
            nid = ids.get(name)
            if nid is None:
                nid = new_ids[name] = _name_id(conn, name)
            rows.extend(chunk_rows(nid, cols))
        conn.executemany(INSERT_CHUNK, rows)
        conn.executemany(_INSERT_LAST, last.items())
        conn.executemany(_INSERT_META, meta.items())
        conn.execute("UPDATE state SET value = ? WHERE key = 'segment_gen'", (next_gen,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    ids.update(new_ids)  # only now: the rolled-back ids of a failed transaction are not real


def _name_id(conn: sqlite3.Connection, name: str) -> int:
    conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
    return int(conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()[0])


# -- retention -----------------------------------------------------------------------------------


def age_batch(
    conn: sqlite3.Connection, stats: HistoryStats, cutoff: int, keep: Keep = None
) -> tuple[int, bool]:
    """Delete one batch of the samples older than `cutoff`: (samples deleted, all of them gone).
    Points for which `keep(name)` is true are never deleted (a retention class of their own)."""
    ranges = _ranges(conn, keep)
    if not ranges:
        return 0, True
    oldest = min(r[1] for r in ranges)
    if oldest >= cutoff:
        return 0, True
    newest = max(r[2] for r in ranges)
    step = max(1, int((newest - oldest) * _RETENTION_SPAN_FRACTION))
    batch_cut = min(cutoff, oldest + step)
    return _delete_before(conn, stats, ranges, batch_cut), batch_cut >= cutoff


def size_batch(
    conn: sqlite3.Connection, stats: HistoryStats, path: Path, max_bytes: int, keep: Keep = None
) -> tuple[int, bool]:
    """Delete one batch of the oldest samples while over `max_bytes`: (samples deleted, done)."""
    used = used_bytes(conn)
    stats.db_bytes = used
    if used <= max_bytes:
        return 0, True
    ranges = _ranges(conn, keep)
    oldest = min((r[1] for r in ranges), default=None)
    newest = max((r[2] for r in ranges), default=None)
    if (oldest is None or newest is None or newest <= oldest) and keep is not None:
        # Only kept points are left to cut: max_size holds all the same, oldest first.
        log.warning(
            "history %s: over max_size with only kept points (billing snapshots) left to "
            "delete: deleting the oldest of them",
            path,
        )
        return size_batch(conn, stats, path, max_bytes, None)
    if oldest is None or newest is None or newest <= oldest:
        # Only the newest millisecond is left (or nothing): that is never deleted.
        log.warning(
            "history %s uses %d bytes > max_bytes %d with nothing old left to delete",
            path,
            used,
            max_bytes,
        )
        return 0, True
    # Samples arrive roughly evenly in time, so the excess share of the bytes is about the
    # same share of the time span; a small margin avoids a long tail of tiny batches.
    share = min(_RETENTION_SPAN_FRACTION, (used - max_bytes) / used + 0.02)
    cut = min(newest, oldest + max(1, math.ceil((newest - oldest) * share)))
    return _delete_before(conn, stats, ranges, cut), False


_KEPT_COUNT = "SELECT COALESCE(SUM(n), 0) FROM chunks WHERE name_id = ?"


def keep_cap(conn: sqlite3.Connection, stats: HistoryStats, keep: Keep, cap: int) -> int:
    """Delete the chunks of each kept point that lie wholly beyond its newest `cap` samples:
    the kept class is never deleted by age, so a writer must not be able to grow it without
    end. Returns the samples deleted."""
    if keep is None:
        return 0
    kept = [nid for nid, name in conn.execute("SELECT id, name FROM names") if keep(name)]
    deleted = 0
    for nid in kept:
        if conn.execute(_KEPT_COUNT, (nid,)).fetchone()[0] <= cap:
            continue  # (counts duplicates: never fewer than the distinct times)
        stamps: set[int] = set()  # distinct times: chunks overlap, a later one corrects
        for first, blob in conn.execute(
            "SELECT first_ts, blob FROM chunks WHERE name_id = ?", (nid,)
        ):
            stamps.update(history_chunk.decode(first, blob)[0])
        if len(stamps) <= cap:
            continue
        cutoff = sorted(stamps)[-cap]  # keep the newest `cap` times, cut exactly before
        deleted += _delete_before(conn, stats, [(nid, min(stamps), max(stamps))], cutoff)
    return deleted


def vacuum(conn: sqlite3.Connection, stats: HistoryStats) -> None:
    """Give the free pages back to the file system."""
    # The pragma frees one page per step and returns no rows, so execute() would free just
    # one page; executescript() steps it to the end (we are in autocommit mode here).
    conn.executescript("PRAGMA incremental_vacuum")
    stats.db_bytes = used_bytes(conn)


def _ranges(conn: sqlite3.Connection, keep: Keep) -> list[tuple[int, int, int]]:
    """(name id, oldest ts, newest ts) of every name with samples that retention may delete."""
    return [
        (nid, lo, hi)
        for nid, lo, hi, name in conn.execute(_NAME_RANGES)
        if not (keep and keep(name))
    ]


def _delete_before(
    conn: sqlite3.Connection, stats: HistoryStats, ranges: list[tuple[int, int, int]], cutoff: int
) -> int:
    """Delete the chunks wholly before `cutoff` and trim the ones that straddle it."""
    deleted = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for nid, lo, _ in ranges:
            if lo >= cutoff:
                continue
            args = (nid, cutoff)
            gone = conn.execute(
                "SELECT COALESCE(SUM(n), 0) FROM chunks WHERE name_id = ? AND last_ts < ?", args
            ).fetchone()[0]
            conn.execute("DELETE FROM chunks WHERE name_id = ? AND last_ts < ?", args)
            deleted += gone
            straddling = conn.execute(
                "SELECT id, first_ts, blob FROM chunks"
                " WHERE name_id = ? AND first_ts < ? AND last_ts >= ?",
                (nid, cutoff, cutoff),
            ).fetchall()
            for cid, first, blob in straddling:
                ts, values, qs = history_chunk.decode(first, blob)
                at = bisect_left(ts, cutoff)
                t, v, q = ts[at:], values[at:], qs[at:]
                text = int(any(type(x) is str for x in v)) if not isinstance(v, _array) else 0
                conn.execute(
                    "UPDATE chunks SET first_ts = ?, n = ?, text = ?, blob = ? WHERE id = ?",
                    (t[0], len(t), text, history_chunk.encode(t, v, q), cid),
                )
                deleted += at
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    stats.db_bytes = used_bytes(conn)
    return int(deleted)
