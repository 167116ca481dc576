"""Reading the history log: raw samples in pages, and downsampling to one aggregated sample
(min, max, avg or last) per epoch-aligned bucket.

A read merges the compressed chunks of the database with the recent samples not yet compacted
(trusted.core.history_recent), in time order, the later write of a ts winning. It runs on a
read-only connection of its own, in worker threads, so it never waits for (or blocks) the
writer thread of trusted.core.history.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from array import array
from bisect import bisect_left
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import smx.aggregation
from trusted.core import history_chunk
from trusted.core.history_chunk import Columns
from trusted.core.history_db import (
    I64_MAX,
    I64_MIN,
    HistoryError,
    Value,
    connect_reader,
)
from trusted.core.history_recent import Recent

__all__ = ["AGGREGATIONS", "HistoryQueryError", "Sample", "read_samples"]

AGGREGATIONS = tuple(smx.aggregation.AGGREGATIONS)  # the names the API gives them

# Quality order best -> worst (docs/DATA-MODEL.md). Codes not listed (0 UNSPECIFIED, future
# values) are not known to be usable, but not known to have failed either: they rank between
# UNCERTAIN and BAD.
_QUALITY_RANK = {1: 0, 2: 1, 3: 2, 4: 4, 5: 5}
_UNKNOWN_RANK = 3
_NEWEST = 2**63  # priority of the recent samples: newer than any chunk

_CHUNKS = (
    "SELECT id, first_ts, last_ts, text FROM chunks"
    " WHERE name_id = ? AND first_ts < ? AND last_ts >= ? ORDER BY first_ts, id"
)
# first_ts with the blob: retention may have trimmed the chunk since it was listed, and its
# deltas then start from a new first.
_BLOB = "SELECT first_ts, blob FROM chunks WHERE id = ?"


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
    recent: Recent,
    names: list[str],
    start_ms: int | None,
    end_ms: int | None,
    bucket_ms: int | None,
    aggregation: str,
    chunk: int,
) -> AsyncGenerator[tuple[str, list[Sample]], None]:
    """The samples of the database at `path` and of `recent`; see
    :meth:`trusted.core.history.HistoryLog.read`."""
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
            text = await asyncio.to_thread(_first_text, conn, recent, ids, names, lo, hi)
            if text is not None:
                raise HistoryQueryError(
                    f"point {text!r} holds strings: aggregation "
                    f"{aggregation!r} is not defined for them; use 'last'"
                )
        for name in names:
            pages = await asyncio.to_thread(
                _pages, conn, recent, ids.get(name), name, lo, hi, bucket_ms, aggregation, chunk
            )
            while (page := await asyncio.to_thread(next, pages, None)) is not None:
                yield name, page
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


def _first_text(
    conn: sqlite3.Connection,
    recent: Recent,
    ids: dict[str, int],
    names: list[str],
    lo: int,
    hi: int,
) -> str | None:
    for name in dict.fromkeys(names):
        if recent.has_text(name, lo, hi):
            return name
        nid = ids.get(name)
        if nid is None:
            continue
        for cid, first, _, text in conn.execute(_CHUNKS, (nid, hi, lo)).fetchall():
            if text and (cols := _decode(conn, cid, first)) is not None:
                ts, values, _ = cols
                a, b = bisect_left(ts, lo), bisect_left(ts, hi)
                if any(type(v) is str for v in values[a:b]):
                    return name
    return None


def _decode(conn: sqlite3.Connection, cid: int, first: int) -> Columns | None:
    row = conn.execute(_BLOB, (cid,)).fetchone()
    if row is None:
        return None  # deleted by retention since the chunk list was read
    return history_chunk.decode(row[0], row[1])


def _pages(
    conn: sqlite3.Connection,
    recent: Recent,
    nid: int | None,
    name: str,
    lo: int,
    hi: int,
    bucket_ms: int | None,
    aggregation: str,
    chunk: int,
) -> Iterator[list[Sample]]:
    # The recent samples are copied before the chunks are listed: a compaction in between
    # puts the same samples in both, which the merge folds into one.
    rec = recent.columns(name)
    metas = [] if nid is None else conn.execute(_CHUNKS, (nid, hi, lo)).fetchall()
    runs = _runs(conn, metas, rec, lo, hi)
    if bucket_ms is None:
        return _raw_pages(runs, chunk)
    return _bucket_pages(runs, bucket_ms, aggregation, chunk)


def _runs(
    conn: sqlite3.Connection,
    metas: list[tuple[int, int, int, int]],
    rec: Columns | None,
    lo: int,
    hi: int,
) -> Iterator[Columns]:
    """Sorted, disjoint, increasing runs of samples in [lo, hi): the chunks, and the recent
    samples, merged where they overlap (the later write of a ts wins)."""
    # (first, last, priority, columns or None for a chunk not read yet)
    sources: list[tuple[int, int, int, Columns | None]] = [
        (first, last, cid, None) for cid, first, last, _ in metas
    ]
    if rec is not None:
        ts, values, qs = rec
        a, b = bisect_left(ts, lo), bisect_left(ts, hi)
        # Cut at every chunk's edges, so that a recent sample overlaps only the chunks it
        # falls in, not every chunk between it and the next recent one.
        cuts = {a, b}
        for _, first, last, _ in metas:
            cuts.add(min(b, max(a, bisect_left(ts, first))))
            cuts.add(min(b, max(a, bisect_left(ts, last + 1))))
        edges = sorted(cuts)
        for x, y in zip(edges, edges[1:], strict=False):
            if x < y:
                sources.append((ts[x], ts[y - 1], _NEWEST, (ts[x:y], values[x:y], qs[x:y])))
        sources.sort(key=lambda s: (s[0], s[2]))
    group: list[tuple[int, int, int, Columns | None]] = []
    end = I64_MIN
    for src in sources:
        if group and src[0] > end:
            yield from _clip(_merge(conn, group), lo, hi)
            group = []
        group.append(src)
        end = src[1] if len(group) == 1 else max(end, src[1])
    if group:
        yield from _clip(_merge(conn, group), lo, hi)


def _merge(conn: sqlite3.Connection, group: list[tuple[int, int, int, Columns | None]]) -> Columns:
    cols = [
        (prio, c if c is not None else _decode(conn, prio, first)) for first, _, prio, c in group
    ]
    present = [(p, c) for p, c in cols if c is not None]
    if len(present) <= 1:  # none: deleted by retention since they were listed
        return present[0][1] if present else (array("q"), [], array("i"))
    merged: dict[int, tuple[Value, int]] = {}
    for _, (ts, values, qs) in sorted(present, key=lambda pc: pc[0]):
        merged.update(zip(ts, zip(values, qs, strict=True), strict=True))
    order = sorted(merged)
    return (
        array("q", order),
        [merged[t][0] for t in order],
        array("i", [merged[t][1] for t in order]),
    )


def _clip(cols: Columns, lo: int, hi: int) -> Iterator[Columns]:
    ts, values, qs = cols
    if not ts:
        return
    if ts[0] >= lo and ts[-1] < hi:
        yield cols
        return
    a, b = bisect_left(ts, lo), bisect_left(ts, hi)
    if a < b:
        yield ts[a:b], values[a:b], qs[a:b]


def _raw_pages(runs: Iterator[Columns], chunk: int) -> Iterator[list[Sample]]:
    page: list[Sample] = []
    for ts, values, qs in runs:
        at, n = 0, len(ts)
        while at < n:
            take = min(n - at, chunk - len(page))
            page.extend(map(Sample, ts[at : at + take], values[at : at + take], qs[at : at + take]))
            at += take
            if len(page) == chunk:
                yield page
                page = []
    if page:
        yield page


def _quality_key(q: int) -> tuple[int, int]:
    return _QUALITY_RANK.get(q, _UNKNOWN_RANK), q & 0xFFFFFFFF


def _aggregate(b: int, values: Sequence[Value], qs: Sequence[int], aggregation: str) -> Sample:
    n = len(values)
    worst = max(set(qs), key=_quality_key)
    if aggregation == "last":
        return Sample(b, values[-1], worst, n)
    # NaN is no value (schema 1 stored it as NULL, which AVG, MIN and MAX skip).
    vals = [v for v in values if v == v] if any(v != v for v in values) else values
    if not vals:
        return Sample(b, math.nan, worst, n)
    if aggregation == "avg":
        try:
            mean = math.fsum(vals) / len(vals)  # type: ignore[arg-type]
        except OverflowError:  # values near the largest double: their sum is beyond it
            mean = math.fsum(v / len(vals) for v in vals)  # type: ignore[operator]
        return Sample(b, mean, worst, n)
    value = min(vals) if aggregation == "min" else max(vals)
    if type(value) is bool and not all(type(v) is bool for v in vals):
        value = int(value)
    return Sample(b, value, worst, n)


def _bucket_pages(
    runs: Iterator[Columns], width: int, aggregation: str, chunk: int
) -> Iterator[list[Sample]]:
    page: list[Sample] = []
    # The bucket that may go on in the next run: (start, values, qualities).
    open_b: int | None = None
    open_v: list[Value] = []
    open_q: list[int] = []
    for ts, values, qs in runs:
        at, n = 0, len(ts)
        while at < n:
            t = ts[at]
            b = t - t % width
            end = bisect_left(ts, b + width, at)
            if b != open_b:
                if open_b is not None:
                    page.append(_aggregate(open_b, open_v, open_q, aggregation))
                    if len(page) == chunk:
                        yield page
                        page = []
                open_b, open_v, open_q = b, [], []
            open_v.extend(values[at:end])
            open_q.extend(qs[at:end])
            at = end
    if open_b is not None:
        page.append(_aggregate(open_b, open_v, open_q, aggregation))
    if page:
        yield page
