"""Reading the history log: raw samples in keyset-paged chunks, and downsampling to one
aggregated sample (min, max, avg or last) per epoch-aligned bucket, done in SQL.

Each read runs on a read-only connection of its own, in worker threads, so it never waits for
(or blocks) the writer thread of trusted.core.history.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from trusted.core.history_db import (
    I32_MAX,
    I64_MAX,
    I64_MIN,
    KIND_BOOL,
    HistoryError,
    Value,
    connect_reader,
)

__all__ = ["AGGREGATIONS", "HistoryQueryError", "Sample", "read_samples"]

AGGREGATIONS = ("min", "max", "avg", "last")

# Quality order best -> worst (docs/DATA-MODEL.md). Codes not listed (0 UNSPECIFIED, future
# values) are not known to be usable, but not known to have failed either: they rank between
# UNCERTAIN and BAD.
_QUALITY_RANK = {1: 0, 2: 1, 3: 2, 4: 4, 5: 5}
_UNKNOWN_RANK = 3
# The rank in SQL, packed with the code so MAX() picks the worst and keeps its code.
_QUALITY_KEY = (
    "((CASE q "
    + " ".join(f"WHEN {q} THEN {rank}" for q, rank in _QUALITY_RANK.items())
    + f" ELSE {_UNKNOWN_RANK} END) * 4294967296 + (q & 4294967295))"
)
# Epoch-aligned bucket start; SQLite's % truncates toward zero, so fold negatives back.
_BUCKET = "ts_ms - (((ts_ms % :w) + :w) % :w)"
_RANGE = "name_id = :id AND ts_ms >= :lo AND ts_ms < :hi"

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


class HistoryQueryError(HistoryError, ValueError):
    """A read the caller should not have asked for (bad argument, avg over strings). Also a
    ValueError, so the gRPC edge answers INVALID_ARGUMENT; disk trouble stays a HistoryError."""


@dataclass(frozen=True, slots=True)
class Sample:
    ts_ms: int
    value: Value
    quality: int
    count: int = 1


async def read_samples(
    path: Path,
    names: list[str],
    start_ms: int | None,
    end_ms: int | None,
    bucket_ms: int | None,
    aggregation: str,
    chunk: int,
) -> AsyncGenerator[tuple[str, list[Sample]], None]:
    """The samples of the database at `path`; see :meth:`trusted.core.history.HistoryLog.read`."""
    if aggregation not in AGGREGATIONS:
        raise HistoryQueryError(
            f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}"
        )
    if bucket_ms is not None and not 0 < bucket_ms < 2**62:
        raise HistoryQueryError(f"bucket_ms must be a positive number of ms, got {bucket_ms!r}")
    if chunk <= 0:
        raise HistoryQueryError(f"chunk must be > 0, got {chunk!r}")
    lo = I64_MIN if start_ms is None else max(I64_MIN, start_ms)
    hi = I64_MAX if end_ms is None else min(I64_MAX, end_ms)
    if lo >= hi or not names:
        return
    conn = await asyncio.to_thread(connect_reader, path)
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
                    got, cursor = await asyncio.to_thread(_raw_chunk, conn, nid, cursor, hi, chunk)
                else:
                    got, cursor = await asyncio.to_thread(
                        _bucket_chunk, conn, nid, cursor, hi, bucket_ms, aggregation, chunk
                    )
                if got:
                    yield name, got
    except sqlite3.Error as err:
        raise HistoryError(f"history read from {path} failed: {err}") from err
    finally:
        await asyncio.to_thread(conn.close)


# -- helpers (run in worker threads) -------------------------------------------------------------


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
    if kind == KIND_BOOL:
        return bool(v)
    return v  # type: ignore[return-value]


def _quality(key: int) -> int:
    q = key & 0xFFFFFFFF
    return q - 2**32 if q > I32_MAX else q


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
            elif min_kind == KIND_BOOL:  # every sample of the bucket is a bool
                value = bool(v)
            else:
                value = v
            out.append(Sample(b, value, _quality(qk), n))
    return out, (wend if wend < hi else None)
