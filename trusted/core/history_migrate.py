"""Migration of a history database of schema 1 (one row per sample) to compressed chunks.

Runs inside the transaction that opens the database (trusted.core.history_db.open_db): either
every sample is in a chunk and the old table is gone, or nothing changed.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from array import array
from pathlib import Path

from trusted.core.history_db import CHUNK_MAX, INSERT_CHUNK, chunk_rows

__all__ = ["SCHEMA_V1", "migrate_v1"]

log = logging.getLogger(__name__)

# The layout this migrates from (its tests and the read benchmark build databases of it).
SCHEMA_V1 = """
CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE samples (
    name_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, v, q INTEGER NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (name_id, ts_ms)
) WITHOUT ROWID;
CREATE TABLE last (name TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, blob BLOB NOT NULL);
"""
_KIND_BOOL = 1  # schema 1: 0/1 stored, read back as bool


def migrate_v1(conn: sqlite3.Connection, path: Path) -> None:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'"
    ).fetchone()
    if exists is None:
        return
    t0 = time.monotonic()
    total = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    log.info("history database %s: migrating %d samples of schema 1 to chunks", path, total)
    nids = [r[0] for r in conn.execute("SELECT id FROM names ORDER BY id")]
    for nid in nids:
        cur = conn.execute(
            "SELECT ts_ms, v, q, kind FROM samples WHERE name_id = ? ORDER BY ts_ms", (nid,)
        )
        while rows := cur.fetchmany(CHUNK_MAX):
            ts = array("q", [r[0] for r in rows])
            values = [
                math.nan if v is None else bool(v) if kind == _KIND_BOOL else v
                for _, v, _, kind in rows
            ]
            qs = array("i", [r[2] for r in rows])
            conn.executemany(INSERT_CHUNK, chunk_rows(nid, (ts, values, qs)))
    conn.execute("DROP TABLE samples")
    log.info(
        "history database %s: %d samples migrated in %.1f s", path, total, time.monotonic() - t0
    )
