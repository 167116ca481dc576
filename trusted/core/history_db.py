"""The SQLite side of the history log: schema, connections, the batch write transaction and the
retention deletes.

Everything here blocks: HistoryLog (trusted.core.history) runs it on its single writer thread, with
the one writer connection `open_db` returns. Reads use connections of their own
(`connect_reader`, see trusted.core.history_query).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trusted.core.site_files import (
    PRIVATE_FILE_MODE,
    create_private_file,
    private_dir,
    tighten_existing,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "I64_MAX",
    "I64_MIN",
    "I32_MAX",
    "KIND_BOOL",
    "SCHEMA_VERSION",
    "HistoryError",
    "HistoryStats",
    "Value",
    "age_batch",
    "connect_reader",
    "open_db",
    "size_batch",
    "used_bytes",
    "vacuum",
    "write_batch",
]

log = logging.getLogger(__name__)

Value = float | int | bool | str
Keep = Callable[[str], bool] | None  # point names retention leaves alone

SCHEMA_VERSION = 1

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
_I32_MIN = -(2**31)
I32_MAX = 2**31 - 1
# One retention batch deletes at most this fraction of the stored time span, so a first run on a
# large, long-neglected database is many short transactions rather than one long one.
_RETENTION_SPAN_FRACTION = 0.2
_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
BUSY_TIMEOUT_S = 5.0
_KIND_PLAIN = 0  # int, float or str: SQLite's own storage class says which
KIND_BOOL = 1  # stored as 0/1; read back as bool

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
_NAME_RANGES = (
    "SELECT id, (SELECT MIN(ts_ms) FROM samples WHERE name_id = names.id),"
    " (SELECT MAX(ts_ms) FROM samples WHERE name_id = names.id), name FROM names"
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


def open_db(path: Path) -> tuple[sqlite3.Connection, dict[str, int], int]:
    """Open or create the database: (writer connection, name -> names.id, used bytes)."""
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
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        ids = dict(conn.execute("SELECT name, id FROM names"))
        used = used_bytes(conn)
        for suffix in ("-wal", "-shm"):  # SQLite's mode minus the umask: never more than 0600
            tighten_existing(Path(f"{path}{suffix}"), PRIVATE_FILE_MODE)
    except (sqlite3.Error, OSError) as err:
        conn.close()
        raise HistoryError(f"cannot open history database {path}: {err}") from err
    except BaseException:
        conn.close()
        raise
    return conn, ids, used


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


# -- writing -------------------------------------------------------------------------------------


def write_batch(
    conn: sqlite3.Connection,
    path: Path,
    ids: dict[str, int],
    samples: Iterable[tuple[str, int, Value, int]],
    last: dict[str, bytes],
    meta: dict[str, bytes],
) -> tuple[int, int]:
    """One transaction: samples, last snapshots, metadata. Returns (written, rejected).

    `ids` (name -> names.id) learns the names this batch added, once they are committed.
    """
    new_ids: dict[str, int] = {}
    try:
        conn.execute("BEGIN IMMEDIATE")
        rows, rejected = _rows(conn, ids, samples, new_ids)
        last_rows = _blob_rows(last, "snapshot")
        meta_rows = _blob_rows(meta, "metadata")
        try:
            conn.executemany(_INSERT_SAMPLE, rows)
        except _ROW_ERRORS as err:
            log.warning(
                "history batch for %s has an unstorable row (%s); writing row by row",
                path,
                err,
            )
            rows, bad = _insert_one_by_one(conn, rows)
            rejected += bad
        conn.executemany(_INSERT_LAST, last_rows)
        conn.executemany(_INSERT_META, meta_rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    ids.update(new_ids)  # only now: the rolled-back ids of a failed batch are not real
    return len(rows), rejected


def _rows(
    conn: sqlite3.Connection,
    ids: dict[str, int],
    samples: Iterable[tuple[str, int, Value, int]],
    new_ids: dict[str, int],
) -> tuple[list[tuple[int, int, Value, int, int]], int]:
    rows: list[tuple[int, int, Value, int, int]] = []
    rejected = 0
    for name, ts, v, q in samples:
        t = type(v)
        if t is bool:
            kind = KIND_BOOL
        elif t is float or t is int or t is str:
            kind = _KIND_PLAIN
        else:
            rejected += 1
            log.warning("history: dropped sample of %r: value type %s", name, t.__name__)
            continue
        if type(ts) is not int or not I64_MIN <= ts <= I64_MAX:
            rejected += 1
            log.warning("history: dropped sample of %r: bad ts_ms %r", name, ts)
            continue
        if type(q) is not int or not _I32_MIN <= q <= I32_MAX:
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


def _name_id(conn: sqlite3.Connection, name: str) -> int:
    conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
    return int(conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()[0])


def _blob_rows(blobs: dict[str, Any], what: str) -> list[tuple[str, bytes]]:
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


# -- retention -----------------------------------------------------------------------------------


def age_batch(
    conn: sqlite3.Connection, stats: HistoryStats, cutoff: int, keep: Keep = None
) -> tuple[int, bool]:
    """Delete one batch of the samples older than `cutoff`: (rows deleted, all of them gone).
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
    """Delete one batch of the oldest samples while over `max_bytes`: (rows deleted, done)."""
    used = used_bytes(conn)
    stats.db_bytes = used
    if used <= max_bytes:
        return 0, True
    ranges = _ranges(conn, keep)
    oldest = min((r[1] for r in ranges), default=None)
    newest = max((r[2] for r in ranges), default=None)
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


def vacuum(conn: sqlite3.Connection, stats: HistoryStats) -> None:
    """Give the free pages back to the file system."""
    # The pragma frees one page per step and returns no rows, so execute() would free just
    # one page; executescript() steps it to the end (we are in autocommit mode here).
    conn.executescript("PRAGMA incremental_vacuum")
    stats.db_bytes = used_bytes(conn)


def _ranges(conn: sqlite3.Connection, keep: Keep) -> list[tuple[int, int, int]]:
    """(name id, oldest ts, newest ts) of every name with samples that retention may delete:
    one index seek each."""
    return [
        (nid, lo, hi)
        for nid, lo, hi, name in conn.execute(_NAME_RANGES)
        if lo is not None and not (keep and keep(name))
    ]


def _delete_before(
    conn: sqlite3.Connection, stats: HistoryStats, ranges: list[tuple[int, int, int]], cutoff: int
) -> int:
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
    stats.db_bytes = used_bytes(conn)
    return conn.total_changes - before
