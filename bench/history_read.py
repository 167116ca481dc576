"""History reads: one point over 30 days at 1 Hz (2.6 M samples), raw and downsampled to 1 minute,
with the chunked layout (HistoryLog.read, as ReadHistory calls it) against the first layout (one
SQLite row per sample) built from the same data, read by a copy of the first layout's reader
kept in this file as the baseline.

Each read runs in a fresh process (spawn), so its wall time, CPU (user + system, all threads)
and peak RSS are its own. The chunked database is written the way the core writes it: one
compaction every 10 minutes of data. The baseline reader here runs its SQL directly, without
the thread hop per page the old HistoryLog made: if anything it is a little faster than it was.

Run: `python bench/history_read.py [--days 30] [--repeat 2]`
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import random
import shutil
import sqlite3
import tempfile
import time
from array import array
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import fmt_table

__all__ = ["main"]

NAME = "meter/P"
T0 = 1_780_000_000_000
PERIOD_MS = 1000
BUCKET_MS = 60_000
COMPACTION_S = 600

# -- the first layout and its reader (as trusted.core.history_query was before chunks) ------------

_QUALITY_RANK = {1: 0, 2: 1, 3: 2, 4: 4, 5: 5}
_QUALITY_KEY = (
    "((CASE q "
    + " ".join(f"WHEN {q} THEN {rank}" for q, rank in _QUALITY_RANK.items())
    + " ELSE 3 END) * 4294967296 + (q & 4294967295))"
)
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


def _v1_value(v: object, kind: int) -> object:
    if v is None:
        return math.nan
    return bool(v) if kind == 1 else v


def _v1_quality(key: int) -> int:
    q = key & 0xFFFFFFFF
    return q - 2**32 if q > 2**31 - 1 else q


def v1_read(path: Path, bucket_ms: int | None, chunk: int = 1000) -> int:
    from trusted.core.history_query import Sample

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    nid = conn.execute("SELECT id FROM names WHERE name = ?", (NAME,)).fetchone()[0]
    lo, hi, n = -(2**63), 2**63 - 1, 0
    if bucket_ms is not None:
        conn.execute(_HAS_TEXT, {"id": nid, "lo": lo, "hi": hi}).fetchone()
    cursor: int | None = lo
    while cursor is not None:
        if bucket_ms is None:
            rows = conn.execute(_RAW, {"id": nid, "lo": cursor, "hi": hi, "n": chunk}).fetchall()
            out = [Sample(ts, _v1_value(v, kind), q) for ts, v, q, kind in rows]
            cursor = rows[-1][0] + 1 if len(rows) == chunk else None
        else:
            first = conn.execute(_FIRST_TS, {"id": nid, "lo": cursor, "hi": hi}).fetchone()[0]
            if first is None:
                break
            wstart = first - first % bucket_ms
            wend = min(wstart + chunk * bucket_ms, hi)
            args = {"id": nid, "lo": max(wstart, cursor), "hi": wend, "w": bucket_ms}
            out = [
                Sample(b, float(v), _v1_quality(qk), c)
                for b, v, c, qk, _ in conn.execute(_AGG.format(fn="AVG"), args)
            ]
            cursor = wend if wend < hi else None
        n += len(out)
    conn.close()
    return n


# -- building the data ---------------------------------------------------------------------------


def series(days: float) -> tuple[array, list[float], array]:
    rng = random.Random(3)
    n = int(days * 86400_000 / PERIOD_MS)
    ts = array("q", range(T0, T0 + n * PERIOD_MS, PERIOD_MS))
    level, values = 1500.0, []
    for _ in range(n):
        level += rng.gauss(0, 5)
        values.append(round(level + rng.gauss(0, 2), 1))
    return ts, values, array("i", [1]) * n


def build_v1(path: Path, cols: tuple[array, list[float], array]) -> None:
    from trusted.core.history_migrate import SCHEMA_V1

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA_V1)
    conn.execute("INSERT INTO names (id, name) VALUES (1, ?)", (NAME,))
    ts, values, qs = cols
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO samples VALUES (1, ?, ?, ?, 0)", zip(ts, values, qs, strict=True))
    conn.execute("COMMIT")
    conn.execute("PRAGMA user_version = 1")
    conn.close()


def build_chunked(path: Path, cols: tuple[array, list[float], array]) -> None:
    from trusted.core.history_db import compact, open_db

    conn, ids, _, gen = open_db(path)
    ts, values, qs = cols
    step = COMPACTION_S * 1000 // PERIOD_MS
    for at in range(0, len(ts), step):
        piece = (ts[at : at + step], values[at : at + step], qs[at : at + step])
        compact(conn, ids, {NAME: piece}, {}, {}, gen + 1)
        gen += 1
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


# -- measuring ------------------------------------------------------------------------------------


async def _new_read(path: Path, bucket_ms: int | None) -> int:
    from trusted.core.history import HistoryLog

    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    n = 0
    try:
        async for _, chunk in log.read([NAME], None, None, bucket_ms, "avg"):
            n += len(chunk)
    finally:
        await log.close()
    return n


def _child(layout: str, path: str, bucket_ms: int | None, out: mp.Queue) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    if layout == "v1":
        n = v1_read(Path(path), bucket_ms)
    else:
        n = asyncio.run(_new_read(Path(path), bucket_ms))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.put((n, wall, cpu, _peak_rss_mb()))


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across the spawn's exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def measure(layout: str, path: Path, bucket_ms: int | None) -> tuple[int, float, float, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_child, args=(layout, str(path), bucket_ms, out))
    p.start()
    result = out.get(timeout=600)
    p.join(30)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ReadHistory of one point, chunks vs rows")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell; the best is kept")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="smx-hread-"))
    try:
        cols = series(args.days)
        v1, new = tmp / "v1.db", tmp / "chunks.db"
        t = time.perf_counter()
        build_v1(v1, cols)
        build_chunked(new, cols)
        built = time.perf_counter() - t
        sizes = {"v1": v1.stat().st_size, "chunks": new.stat().st_size}
        print(
            f"{len(cols[0]):,} samples of one point ({args.days:g} days at 1 Hz); built in "
            f"{built:.0f} s; file size: rows {sizes['v1'] / 1e6:.1f} MB, "
            f"chunks {sizes['chunks'] / 1e6:.1f} MB"
        )
        rows = []
        for label, bucket in (("raw", None), ("avg, 1 min buckets", BUCKET_MS)):
            cells = {}
            for layout, path in (("v1", v1), ("chunks", new)):
                runs = []
                for _ in range(args.repeat):
                    # HistoryLog.start() may write (it never migrates here: schema 2 already).
                    copy = tmp / f"run-{layout}.db"
                    shutil.copy(path, copy)
                    runs.append(measure(layout, copy, bucket))
                    copy.unlink()
                cells[layout] = min(runs, key=lambda r: r[1])
            base = cells["v1"]
            for layout in ("v1", "chunks"):
                n, wall, cpu, rss = cells[layout]
                rows.append(
                    [
                        label,
                        "rows (baseline)" if layout == "v1" else "chunks",
                        n,
                        f"{wall:.2f}",
                        f"{cpu:.2f}",
                        f"{base[1] / wall:.2f}x",
                        f"{rss:.0f}",
                    ]
                )
        print(
            fmt_table(
                [
                    "read",
                    "layout",
                    "samples out",
                    "wall s",
                    "CPU s",
                    "speed vs rows",
                    "peak RSS MB",
                ],
                rows,
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
