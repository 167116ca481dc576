"""History log: real SQLite files in tmp_path, no mocks of SQLite."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trusted.core import history
from trusted.core.history import HistoryError, HistoryLog, HistoryQueryError, Sample
from trusted.core.history_migrate import SCHEMA_V1

REPO = Path(__file__).resolve().parents[2]
GOOD, DERIVED, UNCERTAIN, BAD, STALE = 1, 2, 3, 4, 5


async def collect(
    log: HistoryLog, names: list[str], start: int | None = None, end: int | None = None, **kw
) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    async for name, chunk in log.read(names, start, end, **kw):
        out[name].extend(chunk)
    return dict(out)


@pytest.fixture
async def hlog(tmp_path: Path):
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600)
    await log.start()
    yield log
    await log.close()


def used_bytes(path: Path) -> tuple[int, int]:
    """(used bytes, free pages) seen by an independent connection."""
    conn = sqlite3.connect(path)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size, free
    finally:
        conn.close()


# -- values and ranges ---------------------------------------------------------------------------


async def test_every_value_type_reads_back_with_its_type(hlog: HistoryLog) -> None:
    values = [1.5, 3.0, -7, 2**62, True, False, "CHARGING", "12", "", -0.25, math.inf]
    for ts, v in enumerate(values):
        hlog.append("ess/x", ts, v, GOOD, b"snap")
    hlog.append("ess/x", 100, math.nan, BAD, b"snap")
    await hlog.flush()
    got = (await collect(hlog, ["ess/x"]))["ess/x"]
    assert [s.ts_ms for s in got] == [*range(len(values)), 100]
    for s, v in zip(got, values, strict=False):
        assert s.value == v and type(s.value) is type(v), (s, v)
        assert s.quality == GOOD and s.count == 1
    assert math.isnan(got[-1].value) and got[-1].quality == BAD


async def test_start_is_inclusive_and_end_exclusive(hlog: HistoryLog) -> None:
    for ts in range(10, 20):
        hlog.append("smm/P", ts, float(ts), GOOD, b"")
    await hlog.flush()

    async def ts_of(start: int | None, end: int | None) -> list[int]:
        return [s.ts_ms for s in (await collect(hlog, ["smm/P"], start, end)).get("smm/P", [])]

    assert await ts_of(12, 15) == [12, 13, 14]
    assert await ts_of(None, 12) == [10, 11]
    assert await ts_of(18, None) == [18, 19]
    assert await ts_of(None, None) == list(range(10, 20))
    assert await ts_of(20, 30) == []
    assert await ts_of(15, 15) == []


async def test_raw_reads_come_in_chunks_of_at_most_chunk(hlog: HistoryLog) -> None:
    for ts in range(10):
        hlog.append("smm/P", ts, ts, GOOD, b"")
    await hlog.flush()
    chunks = [c async for _, c in hlog.read(["smm/P"], None, None, chunk=3)]
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [s.ts_ms for c in chunks for s in c] == list(range(10))


async def test_names_come_in_request_order_and_unknown_names_yield_nothing(
    hlog: HistoryLog,
) -> None:
    hlog.append("a/x", 1, 1, GOOD, b"")
    hlog.append("b/x", 1, 2, GOOD, b"")
    await hlog.flush()
    order = [n async for n, _ in hlog.read(["b/x", "nobody/x", "a/x"], None, None)]
    assert order == ["b/x", "a/x"]
    assert await collect(hlog, ["nobody/x"], bucket_ms=10) == {}


async def test_two_samples_in_the_same_ms_keep_the_newest(hlog: HistoryLog) -> None:
    hlog.append("smm/P", 5, 1.0, GOOD, b"")
    hlog.append("smm/P", 5, 2.0, BAD, b"")
    await hlog.flush()
    hlog.append("smm/P", 5, 3.0, DERIVED, b"")
    await hlog.flush()
    assert (await collect(hlog, ["smm/P"]))["smm/P"] == [Sample(5, 3.0, DERIVED)]


async def test_unstorable_values_are_dropped_without_losing_the_batch(hlog: HistoryLog) -> None:
    hlog.append("smm/P", 1, None, GOOD, b"")  # type: ignore[arg-type]
    hlog.append("smm/P", 2, 2**70, GOOD, b"")  # beyond SQLite's int64
    hlog.append("smm/P", 3, 3, GOOD, b"")
    await hlog.flush()
    assert (await collect(hlog, ["smm/P"]))["smm/P"] == [Sample(3, 3, GOOD)]
    assert hlog.stats()["rejected"] == 2


# -- downsampling --------------------------------------------------------------------------------

SERIES = [(0, 1.0), (3, 5.0), (9, 2.0), (10, 4.0), (15, -1.0), (30, 7.0), (-1, 100.0)]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("min", [(-10, 100.0), (0, 1.0), (10, -1.0), (30, 7.0)]),
        ("max", [(-10, 100.0), (0, 5.0), (10, 4.0), (30, 7.0)]),
        ("avg", [(-10, 100.0), (0, 8.0 / 3.0), (10, 1.5), (30, 7.0)]),
        ("last", [(-10, 100.0), (0, 2.0), (10, -1.0), (30, 7.0)]),
    ],
)
async def test_downsampling_matches_hand_computed_values(
    hlog: HistoryLog, aggregation: str, expected: list[tuple[int, float]]
) -> None:
    for ts, v in SERIES:
        hlog.append("smm/P", ts, v, GOOD, b"")
    await hlog.flush()
    got = (await collect(hlog, ["smm/P"], bucket_ms=10, aggregation=aggregation))["smm/P"]
    # Buckets are epoch-aligned (ts -1 lands in [-10, 0)), empty [20, 30) is skipped.
    assert [s.ts_ms for s in got] == [ts for ts, _ in expected]
    assert [s.value for s in got] == pytest.approx([v for _, v in expected])
    assert [s.count for s in got] == [1, 3, 2, 1]


async def test_downsampling_respects_the_range_and_integer_values(hlog: HistoryLog) -> None:
    for ts, v in [(0, 1), (3, 5), (9, 2), (10, 4)]:
        hlog.append("smm/E", ts, v, GOOD, b"")
    await hlog.flush()
    got = (await collect(hlog, ["smm/E"], 3, 10, bucket_ms=10, aggregation="min"))["smm/E"]
    assert got == [Sample(0, 2, GOOD, 2)]  # ts 0 is before start, ts 10 is the end
    assert type(got[0].value) is int


async def test_bools_count_as_zero_and_one(hlog: HistoryLog) -> None:
    for ts, v in enumerate([True, False, True, True]):
        hlog.append("ev1/plugged", ts, v, GOOD, b"")
    await hlog.flush()

    async def agg(a: str) -> Sample:
        return (await collect(hlog, ["ev1/plugged"], bucket_ms=60_000, aggregation=a))[
            "ev1/plugged"
        ][0]

    assert (await agg("avg")).value == 0.75
    assert (await agg("min")).value is False
    assert (await agg("max")).value is True
    assert (await agg("last")).value is True


@pytest.mark.parametrize(
    ("qualities", "worst"),
    [
        ([GOOD, STALE, BAD, GOOD], STALE),
        ([GOOD, DERIVED, GOOD], DERIVED),
        ([BAD, UNCERTAIN, DERIVED], BAD),
        ([UNCERTAIN, 0, GOOD], 0),  # unknown codes rank between UNCERTAIN and BAD
        ([0, BAD], BAD),
    ],
)
async def test_bucket_quality_is_the_worst_in_the_bucket(
    hlog: HistoryLog, qualities: list[int], worst: int
) -> None:
    for ts, q in enumerate(qualities):
        hlog.append("smm/P", ts, 1.0, q, b"")
    await hlog.flush()
    for aggregation in history.AGGREGATIONS:
        got = await collect(hlog, ["smm/P"], bucket_ms=1000, aggregation=aggregation)
        assert got["smm/P"][0].quality == worst, aggregation


async def test_strings_only_downsample_with_last(hlog: HistoryLog) -> None:
    for ts, v in enumerate(["STANDBY", "CHARGING", "FAULT"]):
        hlog.append("ess/ESS_state", ts, v, GOOD, b"")
    hlog.append("ess/P", 0, 1.0, GOOD, b"")
    await hlog.flush()
    got = await collect(hlog, ["ess/ESS_state"], bucket_ms=10, aggregation="last")
    assert got["ess/ESS_state"] == [Sample(0, "FAULT", GOOD, 3)]
    for aggregation in ("avg", "min", "max"):
        stream = hlog.read(["ess/P", "ess/ESS_state"], None, None, 10, aggregation)
        with pytest.raises(HistoryError, match="ess/ESS_state") as err:
            await anext(stream)  # refused before the numeric point is streamed
        assert isinstance(err.value, ValueError)  # the gRPC edge answers INVALID_ARGUMENT


async def test_bad_read_arguments_are_refused(hlog: HistoryLog) -> None:
    for kw in ({"aggregation": "median", "bucket_ms": 10}, {"bucket_ms": 0}, {"chunk": 0}):
        with pytest.raises(HistoryQueryError):
            await collect(hlog, ["smm/P"], **kw)


def _rank(q: int) -> int:
    return {GOOD: 0, DERIVED: 1, UNCERTAIN: 2, BAD: 4, STALE: 5}.get(q, 3)


def naive_downsample(
    appended: list[tuple[int, object, int]], lo: int | None, hi: int | None, w: int, agg: str
) -> list[Sample]:
    stored: dict[int, tuple[object, int]] = {}
    for ts, v, q in appended:  # INSERT OR REPLACE: the newest sample of a ms wins
        stored[ts] = (v, q)
    buckets: dict[int, list[tuple[int, object, int]]] = defaultdict(list)
    for ts in sorted(stored):
        if (lo is None or ts >= lo) and (hi is None or ts < hi):
            buckets[ts // w * w].append((ts, *stored[ts]))
    out = []
    for b in sorted(buckets):
        rows = buckets[b]
        vals = [v for _, v, _ in rows]
        if agg == "min":
            value = min(vals)
        elif agg == "max":
            value = max(vals)
        elif agg == "avg":
            value = math.fsum(vals) / len(vals)
        else:
            value = rows[-1][1]
        worst = max((q for _, _, q in rows), key=lambda q: (_rank(q), q))
        out.append(Sample(b, value, worst, len(rows)))
    return out


VALUES = {
    "int": st.integers(-(10**12), 10**12),
    "float": st.floats(-1e6, 1e6, allow_nan=False),
    "bool": st.booleans(),
}


@st.composite
def series(draw: st.DrawFn) -> tuple[list[tuple[int, object, int]], str]:
    kind = draw(st.sampled_from(sorted(VALUES)))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(-5000, 5000), VALUES[kind], st.sampled_from([0, 1, 2, 3, 4, 5, 7])
            ),
            max_size=60,
        )
    )
    return rows, kind


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=series(),
    width=st.integers(1, 3000),
    lo=st.none() | st.integers(-6000, 6000),
    hi=st.none() | st.integers(-6000, 6000),
    agg=st.sampled_from(history.AGGREGATIONS),
    chunk=st.integers(1, 6),
)
def test_downsampling_equals_a_naive_implementation(
    data: tuple[list[tuple[int, object, int]], str],
    width: int,
    lo: int | None,
    hi: int | None,
    agg: str,
    chunk: int,
) -> None:
    rows, kind = data

    async def scenario(path: Path) -> list[list[Sample]]:
        log = HistoryLog(path, flush_interval=3600)
        await log.start()
        try:
            for ts, v, q in rows:
                log.append("pv/P", ts, v, q, b"")
            await log.flush()
            return [c async for _, c in log.read(["pv/P"], lo, hi, width, agg, chunk)]
        finally:
            await log.close()

    with tempfile.TemporaryDirectory() as d:
        chunks = asyncio.run(scenario(Path(d) / "h.db"))
    assert all(0 < len(c) <= chunk for c in chunks)
    got = [s for c in chunks for s in c]
    want = naive_downsample(rows, lo, hi, width, agg)
    assert [(s.ts_ms, s.count, s.quality) for s in got] == [
        (s.ts_ms, s.count, s.quality) for s in want
    ]
    for g, w in zip(got, want, strict=True):
        if agg == "avg":
            assert math.isclose(g.value, w.value, rel_tol=1e-9, abs_tol=1e-6), (g, w)
        else:
            assert g.value == w.value, (g, w)
            if kind == "bool":
                assert type(g.value) is bool


# -- retention -----------------------------------------------------------------------------------


async def test_retention_by_age_deletes_only_old_samples(tmp_path: Path) -> None:
    log = HistoryLog(
        tmp_path / "h.db", flush_interval=3600, max_age_s=3600, retention_interval=3600
    )
    await log.start()
    now = int(time.time() * 1000)
    old = [now - 7_200_000 + i for i in range(50)]
    recent = [now - 1000 + i for i in range(50)]
    for name in ("smm/P", "pv/P"):
        for ts in old + recent:
            log.append(name, ts, 1.0, GOOD, b"")
    await log.flush()
    assert await log.enforce_retention() == 100
    got = await collect(log, ["smm/P", "pv/P"])
    assert [s.ts_ms for s in got["smm/P"]] == recent
    assert [s.ts_ms for s in got["pv/P"]] == recent
    assert await log.enforce_retention() == 0
    await log.close()


async def test_billing_snapshots_are_a_retention_class_of_their_own(tmp_path: Path) -> None:
    """A snapshot is dated by its billing date, often older than max_age: age and size
    retention delete the ordinary samples around it and leave every snapshot."""
    log = HistoryLog(
        tmp_path / "h.db",
        flush_interval=3600,
        max_age_s=3600,
        max_bytes=1_000_000,
        retention_interval=3600,
        keep=["**/*.bill*"],
    )
    await log.start()
    now = int(time.time() * 1000)
    two_years = 2 * 365 * 86_400_000
    bills = [now - two_years + month * 30 * 86_400_000 for month in range(24)]
    for i, ts in enumerate(bills):
        log.append("smm/Ap.bill01", ts, float(i), GOOD, b"")
    for ts in range(now - 7_200_000, now, 1000):  # two hours of ordinary samples
        log.append("smm/Ap", ts, 1.0, GOOD, b"")
    for i in range(60_000):  # over max_bytes with old ones
        log.append(f"d{i % 20}/P", now - 3_000_000 + i * 10, 1.0, GOOD, b"")
    await log.flush()
    assert await log.enforce_retention() > 0
    got = await collect(log, ["smm/Ap.bill01", "smm/Ap"])
    assert [s.ts_ms for s in got["smm/Ap.bill01"]] == bills
    assert min(s.ts_ms for s in got["smm/Ap"]) >= now - 3_600_000
    await log.close()


async def test_retention_runs_by_itself_every_interval(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "h.db", flush_interval=0.05, max_age_s=60, retention_interval=0.05)
    await log.start()
    try:
        log.append("smm/P", int(time.time() * 1000) - 120_000, 1.0, GOOD, b"")
        log.append("smm/P", int(time.time() * 1000), 2.0, GOOD, b"")
        deadline = time.monotonic() + 5
        while log.stats()["deleted"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [s.value for s in (await collect(log, ["smm/P"]))["smm/P"]] == [2.0]
    finally:
        await log.close()


async def test_retention_by_size_keeps_the_newest_under_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    max_bytes = 1_000_000
    log = HistoryLog(path, flush_interval=3600, max_bytes=max_bytes, retention_interval=3600)
    await log.start()
    names = [f"d{i}/P" for i in range(20)]
    rng = random.Random(7)
    n = 12_500
    for ts in range(n):
        for name in names:
            # Noisy values: chunks compress them to ~9 bytes a sample, not to nothing.
            log.append(name, 1_000_000 + ts * 100, rng.random(), GOOD, b"")
        if ts % 2000 == 0:
            await log.flush()
    await log.flush()
    await log.compact()  # retention deletes chunks; the segment holds only the newest samples
    before, _ = used_bytes(path)
    assert before > 2 * max_bytes  # the test means something only if there is a lot to delete
    t0 = time.perf_counter()
    deleted = await log.enforce_retention()
    elapsed = time.perf_counter() - t0
    after, free_pages = used_bytes(path)
    assert 0 < deleted < n * len(names)
    assert after <= max_bytes
    assert log.stats()["db_bytes"] == after
    assert free_pages == 0  # incremental_vacuum gave the pages back
    got = await collect(log, names)
    for name in names:
        ts = [s.ts_ms for s in got[name]]
        assert ts[-1] == 1_000_000 + (n - 1) * 100  # newest kept
        assert ts[0] > 1_000_000  # oldest gone
        assert ts == list(range(ts[0], ts[-1] + 1, 100))  # a clean cut, no holes
    assert sum(len(v) for v in got.values()) == n * len(names) - deleted
    assert elapsed < 5
    await log.close()


# -- persistence ---------------------------------------------------------------------------------


async def test_last_values_and_metadata_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    log.append("smm/P", 1, 10.0, GOOD, b"P@1")
    log.append("smm/P", 2, 20.0, GOOD, b"P@2")
    log.put_metadata("smm/P", b"unit=W")
    await log.flush()
    log.append("smm/Ap", 3, 1234, DERIVED, b"Ap@3")
    log.put_metadata("smm/P", b"unit=kW")
    # Not flushed yet, but already what a restart would restore.
    assert log.load_last() == {"smm/P": b"P@2", "smm/Ap": b"Ap@3"}
    await log.close()  # the final flush writes the rest
    await log.close()

    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    assert log.load_last() == {"smm/P": b"P@2", "smm/Ap": b"Ap@3"}
    assert log.load_metadata() == {"smm/P": b"unit=kW"}
    got = await collect(log, ["smm/P", "smm/Ap"])
    assert got == {
        "smm/P": [Sample(1, 10.0, GOOD), Sample(2, 20.0, GOOD)],
        "smm/Ap": [Sample(3, 1234, DERIVED)],
    }
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    await log.close()


async def test_periodic_flush_writes_without_being_asked(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "h.db", flush_interval=0.05)
    await log.start()
    try:
        log.append("smm/P", 1, 1.0, GOOD, b"")
        deadline = time.monotonic() + 5
        while log.stats()["flushed"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert (await collect(log, ["smm/P"]))["smm/P"] == [Sample(1, 1.0, GOOD)]
        assert log.stats()["pending"] == 0 and log.stats()["flushes"] >= 1
    finally:
        await log.close()


async def test_use_outside_start_close_is_refused(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "h.db")
    with pytest.raises(HistoryError, match="not started"):
        await log.flush()
    await log.start()
    with pytest.raises(HistoryError):
        await log.start()
    await log.close()
    with pytest.raises(HistoryError, match="closed"):
        await collect(log, ["smm/P"])


async def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match=str(path)):
        await HistoryLog(path).start()


KILL_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from trusted.core.history import HistoryLog

    async def main():
        log = HistoryLog(Path(sys.argv[2]), flush_interval=0.2)
        await log.start()
        print("ready", flush=True)
        i = 0
        while True:
            for _ in range(20):
                # ts is a sequence number; the value is the wall time of the append.
                log.append("t/seq", i, time.time(), 1, str(i).encode())
                i += 1
            await asyncio.sleep(0.001)

    asyncio.run(main())
    """
)


async def _kill_9_after(code: str, path: Path, seconds: float) -> float:
    """Run `code` (a child writing to the history at `path`) until it says ready, let it write
    for `seconds`, SIGKILL it; the time of the kill. The database must be intact after it."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO), str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        assert line.strip() == "ready"
        await asyncio.sleep(seconds)
        killed_at = time.time()
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.to_thread(child.wait, 10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return killed_at


@pytest.mark.timeout(60)
async def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    flush_interval, margin = 0.2, 0.6
    killed_at = await _kill_9_after(KILL_CHILD, path, 2.0)
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    try:
        got = (await collect(log, ["t/seq"]))["t/seq"]
        n = len(got)
        assert [s.ts_ms for s in got] == list(range(n))  # everything up to the last flush
        lost_window = killed_at - got[-1].value
        assert lost_window < flush_interval + margin, (n, lost_window)
        # The last value is committed with its samples, so it matches the newest stored one.
        assert log.load_last() == {"t/seq": str(n - 1).encode()}
    finally:
        await log.close()


# -- failures ------------------------------------------------------------------------------------


async def _set_read_only(log: HistoryLog, on: bool) -> None:
    """Make the segment file refuse writes, like a disk that went read-only: its descriptor
    is replaced by a read-only one (or a writable one again)."""
    seg = log._segment
    assert seg is not None and seg._fd is not None
    fd = seg._fd

    def swap() -> None:
        other = os.open(seg.path, os.O_RDONLY if on else os.O_RDWR)
        os.dup2(other, fd)
        os.close(other)

    await asyncio.get_running_loop().run_in_executor(log._executor, swap)


async def test_a_failed_flush_keeps_the_samples_for_the_next_one(
    hlog: HistoryLog, caplog: pytest.LogCaptureFixture
) -> None:
    hlog.append("smm/P", 1, 1.0, GOOD, b"P@1")
    await hlog.flush()
    await _set_read_only(hlog, True)
    hlog.append("smm/P", 2, 2.0, GOOD, b"P@2")
    hlog.put_metadata("smm/P", b"unit=W")
    with pytest.raises(HistoryError, match="flush of 1 samples"):
        await hlog.flush()
    assert "history flush" in caplog.text
    hlog.append("smm/P", 3, 3.0, GOOD, b"P@3")
    assert hlog.stats()["pending"] == 2 and hlog.stats()["flush_failures"] == 1
    await _set_read_only(hlog, False)
    await hlog.flush()
    assert [s.ts_ms for s in (await collect(hlog, ["smm/P"]))["smm/P"]] == [1, 2, 3]
    assert hlog.stats()["pending"] == 0
    await hlog.close()
    reopened = HistoryLog(hlog._path)
    await reopened.start()
    assert reopened.load_last() == {"smm/P": b"P@3"}
    assert reopened.load_metadata() == {"smm/P": b"unit=W"}
    await reopened.close()


async def test_failing_periodic_flushes_do_not_stop_the_log(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "h.db", flush_interval=0.05)
    await log.start()
    try:
        await _set_read_only(log, True)
        log.append("smm/P", 1, 1.0, GOOD, b"")
        deadline = time.monotonic() + 20  # generous: a loaded machine, and it ends when met
        while log.stats()["flush_failures"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert log.stats()["flush_failures"] >= 2 and log.stats()["pending"] == 1
        await _set_read_only(log, False)
        while log.stats()["pending"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # "pending" is 0 once a flush has taken the sample, before it is on disk: a flush of
        # our own waits for that one (failed once in CI, the read coming in between).
        await log.flush()
        assert (await collect(log, ["smm/P"]))["smm/P"] == [Sample(1, 1.0, GOOD)]
    finally:
        await log.close()


async def test_pending_samples_are_bounded_dropping_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_PENDING", 5)
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600)
    await log.start()
    await _set_read_only(log, True)
    for ts in range(3):
        log.append("smm/P", ts, ts, GOOD, b"")
    with pytest.raises(HistoryError):
        await log.flush()
    for ts in range(3, 7):
        log.append("smm/P", ts, ts, GOOD, b"")
    assert log.stats()["pending"] == 5 and log.stats()["dropped"] == 2
    await _set_read_only(log, False)
    await log.flush()
    assert [s.ts_ms for s in (await collect(log, ["smm/P"]))["smm/P"]] == [2, 3, 4, 5, 6]
    await log.close()


# -- cost ----------------------------------------------------------------------------------------


async def test_measure_append_and_flush_of_10000_samples(
    hlog: HistoryLog, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"d{i}/P" for i in range(100)]
    snap = b"x" * 60
    timings = []
    for round_ in range(3):  # the first round also creates the 100 names
        full_gcs = gc.get_stats()[2]["collections"]
        t0 = time.perf_counter()
        for ts in range(100):
            for name in names:
                hlog.append(name, round_ * 100 + ts, 1.5, GOOD, snap)
        appended = time.perf_counter() - t0
        full_gcs = gc.get_stats()[2]["collections"] - full_gcs
        t0 = time.perf_counter()
        await hlog.flush()
        timings.append((appended, full_gcs, time.perf_counter() - t0))
    assert hlog.stats()["flushed"] == 30_000
    with capsys.disabled():
        for appended, full_gcs, flushed in timings:
            print(
                f"\n[history] append: {appended / 10_000 * 1e6:.2f} us/sample "
                f"({full_gcs} full GC runs meanwhile); "
                f"flush of 10,000 samples (100 points): {flushed * 1000:.1f} ms",
                end="",
            )
        print()


async def test_a_full_buffer_is_flushed_before_the_timer(tmp_path: Path) -> None:
    # Under a heavy load the buffer must not grow for a whole (long) flush interval.
    from trusted.core import history as history_mod

    log = HistoryLog(tmp_path / "h.db", flush_interval=60.0)
    await log.start()
    try:
        for i in range(history_mod.FLUSH_AT):
            log.append("dev/P", i, float(i), 1, b"")
        for _ in range(100):
            if log.stats()["flushed"]:
                break
            await asyncio.sleep(0.02)
        assert log.stats()["flushed"] == history_mod.FLUSH_AT
        assert log.stats()["pending"] == 0
    finally:
        await log.close()


# -- chunks, compaction, migration ---------------------------------------------------------------


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.sampled_from(["a/P", "b/P"]),
            st.integers(-50, 50),
            st.one_of(
                st.floats(-1e6, 1e6, allow_nan=False),
                st.integers(-(2**63), 2**63 - 1),
                st.booleans(),
                st.text(max_size=3),
            ),
            st.sampled_from([1, 2, 4, -7]),
        ),
        st.tuples(st.just("flush")),
        st.tuples(st.just("compact")),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, lo=st.none() | st.integers(-60, 60), hi=st.none() | st.integers(-60, 60))
def test_reads_merge_chunks_and_recent_samples_like_a_dict(
    ops: list[tuple], lo: int | None, hi: int | None
) -> None:
    """Whatever mix of flushes and compactions put them where they are, a read returns what a
    dict of (name, ts) -> the last write holds, in time order; also after a restart."""
    ref: dict[str, dict[int, tuple[object, int]]] = {"a/P": {}, "b/P": {}}

    async def scenario(path: Path) -> list[dict[str, list[Sample]]]:
        log = HistoryLog(path, flush_interval=3600)
        await log.start()
        for op in ops:
            if op[0] == "append":
                _, name, ts, v, q = op
                log.append(name, ts, v, q, b"")
                ref[name][ts] = (v, q)
            elif op[0] == "flush":
                await log.flush()
            else:
                await log.flush()
                await log.compact()
        await log.flush()
        first = await collect(log, ["a/P", "b/P"], lo, hi, chunk=7)
        await log.close()
        log = HistoryLog(path, flush_interval=3600)
        await log.start()
        second = await collect(log, ["a/P", "b/P"], lo, hi)
        await log.close()
        return [first, second]

    with tempfile.TemporaryDirectory() as d:
        results = asyncio.run(scenario(Path(d) / "h.db"))
    for got in results:
        for name, stored in ref.items():
            want = [
                Sample(ts, *stored[ts])
                for ts in sorted(stored)
                if (lo is None or ts >= lo) and (hi is None or ts < hi)
            ]
            have = got.get(name, [])
            assert have == want, name
            assert [type(s.value) for s in have] == [type(s.value) for s in want]


async def test_compaction_moves_the_segment_into_chunks(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    for ts in range(5000):
        log.append("m/P", ts * 1000, ts / 10, GOOD, b"snap")
    log.put_metadata("m/P", b"unit=W")
    await log.flush()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
    await log.compact()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT first_ts, last_ts, n FROM chunks ORDER BY first_ts").fetchall()
        assert conn.execute("SELECT blob FROM last").fetchall() == [(b"snap",)]
        assert conn.execute("SELECT blob FROM meta").fetchall() == [(b"unit=W",)]
    assert rows == [(0, 4095_000, 4096), (4096_000, 4999_000, 904)]  # CHUNK_MAX samples a chunk
    assert log._segment is not None and log._segment.end == 0  # starts over
    got = (await collect(log, ["m/P"], 1_000_000, 4_500_000))["m/P"]
    assert [s.ts_ms for s in got] == list(range(1_000_000, 4_500_000, 1000))
    assert got[0].value == 100.0
    await log.close()


async def test_a_failing_compaction_bounds_what_waits_and_is_not_retried_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction failing (database unwritable, disk full): past MAX_RECENT samples flushes
    stop taking new ones (the bounded buffer drops the oldest, counted), a failed compaction
    waits COMPACT_RETRY before the next try, and once it works again nothing waiting is lost."""
    monkeypatch.setattr(history, "MAX_RECENT", 300)
    monkeypatch.setattr(history, "COMPACT_AT", 100)
    broken = {"on": True}
    real = history.compact

    def compact(*args: object, **kw: object) -> None:
        if broken["on"]:
            raise sqlite3.OperationalError("disk I/O error")
        real(*args, **kw)

    monkeypatch.setattr(history, "compact", compact)
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600)
    log._max_pending = 500
    await log.start()
    for ts in range(400):
        log.append("m/P", ts, float(ts), GOOD, b"")
        if ts % 100 == 99 and ts < 300:
            await log.flush()
    assert log._recent.count == 300
    with pytest.raises(HistoryError, match="compaction .* failed"):
        await log.compact()
    assert not log._compaction_due()  # retried after COMPACT_RETRY, not at the next flush
    with pytest.raises(HistoryError, match="wait for compaction"):
        await log.flush()  # the last 100 stay buffered
    for ts in range(400, 1000):
        log.append("m/P", ts, float(ts), GOOD, b"")
    assert len(log._pending) == 500 and log.stats()["dropped"] == 200  # bounded
    broken["on"] = False
    await log.compact()
    await log.flush()
    got = [s.ts_ms for s in (await collect(log, ["m/P"]))["m/P"]]
    assert got == list(range(300)) + list(range(500, 1000))
    await log.close()


async def test_retention_by_age_trims_the_chunk_that_straddles_the_cutoff(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    log = HistoryLog(
        path,
        flush_interval=3600,
        max_age_s=3600,
        retention_interval=3600,
        keep=["**/*.bill*"],
    )
    await log.start()
    now = int(time.time() * 1000)
    stamps = list(range(now - 7_200_000, now, 10_000))  # two hours, 720 samples: one chunk
    for ts in stamps:
        log.append("m/P", ts, float(ts), GOOD, b"")
        log.append("bill/Ap.bill01", ts, 1.0, GOOD, b"")
    await log.flush()
    await log.compact()
    deleted = await log.enforce_retention()
    got = await collect(log, ["m/P", "bill/Ap.bill01"])
    kept = [s.ts_ms for s in got["m/P"]]
    assert kept == [ts for ts in stamps if ts >= kept[0]]  # the newest, without a hole
    assert now - 3_600_000 - 2_000 <= kept[0] <= now - 3_600_000 + 12_000
    assert deleted == 720 - len(kept)
    assert [s.ts_ms for s in got["bill/Ap.bill01"]] == stamps  # the keep class: untouched
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT first_ts, n FROM chunks JOIN names ON names.id = name_id WHERE name = 'm/P'"
        ).fetchall()
    assert rows == [(kept[0], len(kept))]  # the chunk was rewritten, not dropped
    await log.close()


def _v1_database(path: Path) -> None:
    """A history database of schema 1, as the previous core wrote it."""
    conn = sqlite3.connect(path)
    conn.executescript("PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;")
    conn.executescript(SCHEMA_V1)
    conn.executescript(
        """
        INSERT INTO names VALUES (1, 'm/P'), (2, 'ess/state'), (3, 'ev/plugged'), (4, 'x/E');
        INSERT INTO last VALUES ('m/P', x'01'), ('x/E', x'02');
        INSERT INTO meta VALUES ('m/P', x'03');
        PRAGMA user_version = 1;
        """
    )
    rows = [(1, ts, ts / 2, GOOD, 0) for ts in range(10_000)]
    rows += [(1, 10_000, None, BAD, 0)]  # NaN was stored as NULL
    rows += [(2, 1, "STANDBY", GOOD, 0), (2, 2, "CHARGING", UNCERTAIN, 0)]
    rows += [(3, 1, 1, GOOD, 1), (3, 2, 0, GOOD, 1)]
    rows += [(4, 5, 2**62, DERIVED, 0), (4, 6, 7, GOOD, 0)]
    conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


async def test_a_schema_1_database_is_migrated_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h.db"
    _v1_database(path)
    caplog.set_level("INFO")
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    try:
        assert "migrating 10007 samples of schema 1" in caplog.text
        got = await collect(log, ["m/P", "ess/state", "ev/plugged", "x/E"])
        assert [s.ts_ms for s in got["m/P"]] == list(range(10_001))
        assert got["m/P"][4].value == 2.0 and math.isnan(got["m/P"][-1].value)
        assert got["m/P"][-1].quality == BAD
        assert got["ess/state"] == [Sample(1, "STANDBY", GOOD), Sample(2, "CHARGING", UNCERTAIN)]
        assert got["ev/plugged"] == [Sample(1, True, GOOD), Sample(2, False, GOOD)]
        assert [type(s.value) for s in got["ev/plugged"]] == [bool, bool]
        assert got["x/E"] == [Sample(5, 2**62, DERIVED), Sample(6, 7, GOOD)]
        assert log.load_last() == {"m/P": b"\x01", "x/E": b"\x02"}
        assert log.load_metadata() == {"m/P": b"\x03"}
        # New samples go on from there.
        log.append("m/P", 20_000, 1.0, GOOD, b"\x04")
        await log.flush()
        assert (await collect(log, ["m/P"], 10_001))["m/P"] == [Sample(20_000, 1.0, GOOD)]
    finally:
        await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "samples" not in tables and "chunks" in tables


KILL_COMPACTING_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from trusted.core import history

    history.COMPACT_INTERVAL = 0.3  # compactions all the time, so a kill may hit one

    async def main():
        log = history.HistoryLog(Path(sys.argv[2]), flush_interval=0.1)
        await log.start()
        print("ready", flush=True)
        i = 0
        while True:
            for k in range(50):
                log.append(f"t/p{k}", i, time.time(), 1, str(i).encode())
            i += 1
            await asyncio.sleep(0.002)

    asyncio.run(main())
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("run", range(3))
async def test_kill_9_during_compactions_loses_at_most_the_flush_interval(
    tmp_path: Path, run: int
) -> None:
    path = tmp_path / "h.db"
    flush_interval, margin = 0.1, 0.6
    killed_at = await _kill_9_after(KILL_COMPACTING_CHILD, path, 1.5 + run * 0.37)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] > 0  # it compacted
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    try:
        names = [f"t/p{k}" for k in range(50)]
        got = await collect(log, names)
        n = len(got["t/p0"])
        for name in names:  # every flush is whole: all points up to the same tick
            assert [s.ts_ms for s in got[name]] == list(range(n)), name
        assert killed_at - got["t/p0"][-1].value < flush_interval + margin
        assert log.load_last()["t/p0"] == str(n - 1).encode()
    finally:
        await log.close()


async def test_the_same_sample_written_again_is_stored_once(tmp_path: Path) -> None:
    """smm republishes each billing snapshot with its billing date at every poll: the history
    holds it once, however many polls and compactions."""
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600)
    await log.start()
    for _ in range(5):
        for _ in range(10):
            log.append("m/Ap.bill01", 1_000, 90.0, GOOD, b"")
            log.append("m/P", 2_000, 1.0, GOOD, b"")
        await log.flush()
        await log.compact()
    log.append("m/P", 2_000, 2.0, GOOD, b"")  # a new value at the same time still replaces
    log.append("m/P", 3_000, 2.0, GOOD, b"")  # and the same value later is a new sample
    await log.flush()
    got = await collect(log, ["m/Ap.bill01", "m/P"])
    assert got["m/Ap.bill01"] == [Sample(1_000, 90.0, GOOD)]
    assert got["m/P"] == [Sample(2_000, 2.0, GOOD), Sample(3_000, 2.0, GOOD)]
    with sqlite3.connect(tmp_path / "h.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 2  # 1 per point
    await log.close()


async def test_kept_points_are_capped_per_point_and_max_size_still_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keep class is never deleted by age, but a writer cannot grow it without end: at
    most KEEP_MAX_SAMPLES per point (in whole chunks), and when only kept samples are left
    over max_size, the oldest of them go too."""
    monkeypatch.setattr(history, "KEEP_MAX_SAMPLES", 1000)
    log = HistoryLog(
        tmp_path / "h.db", flush_interval=3600, retention_interval=3600, keep=["**/*.bill*"]
    )
    await log.start()
    for part in range(3):  # three chunks of 1,000 samples
        for i in range(1000):
            log.append("x/spam.bill01", (part * 1000 + i) * 1000, float(i), GOOD, b"")
        await log.flush()
        await log.compact()
    assert await log.enforce_retention() == 2000
    got = [s.ts_ms for s in (await collect(log, ["x/spam.bill01"]))["x/spam.bill01"]]
    assert got == [t * 1000 for t in range(2000, 3000)]  # the newest 1,000
    await log.close()

    rng = random.Random(7)
    path = tmp_path / "s.db"
    log = HistoryLog(path, flush_interval=3600, keep=["**/*.bill*"])
    await log.start()
    for part in range(3):  # kept samples only, three chunks per point
        for p in range(100):
            for i in range(300):
                log.append(f"d{p}/Ap.bill01", (part * 300 + i) * 1000, rng.random(), GOOD, b"")
        await log.flush()
        await log.compact()
    await log.close()
    before = used_bytes(path)[0]
    limit = before * 2 // 3
    log = HistoryLog(path, flush_interval=3600, max_bytes=limit, keep=["**/*.bill*"])
    await log.start()
    assert await log.enforce_retention() > 0
    assert log.stats()["db_bytes"] <= limit
    got = (await collect(log, ["d0/Ap.bill01"]))["d0/Ap.bill01"]
    assert got[0].ts_ms > 0 and got[-1].ts_ms == 899_000  # the oldest went, the newest stayed
    await log.close()


async def test_a_read_that_races_retention_never_shifts_timestamps(tmp_path: Path) -> None:
    """Retention trims a chunk while a read is between pages: what the read still returns
    keeps each value at its own time (the trimmed chunk decodes from its new first time)."""
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600, max_age_s=3600)
    await log.start()
    now = int(time.time() * 1000)
    start = now - 8_600_000  # the cut (an hour ago) falls at sample 5,000: in the 2nd chunk
    for i in range(8000):  # two chunks of 4,096 and 3,904 samples, one a second
        log.append("m/P", start + i * 1000, float(i), GOOD, b"")
    await log.flush()
    await log.compact()
    pages = log.read(["m/P"], None, None)
    first = await anext(pages)
    assert await log.enforce_retention() > 0  # the cut is inside the second chunk
    rest = [s async for _, page in pages for s in page]
    for s in [*first[1], *rest]:
        assert s.value == (s.ts_ms - start) / 1000, s  # never a value at another time
    await log.close()


async def test_a_dropped_sample_is_stored_when_it_comes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffer overflowed and dropped a snapshot: its next republication is stored, not
    skipped as 'the same sample again'."""
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600)
    log._max_pending = 3
    await log.start()
    log.append("m/Ap.bill01", 1_000, 90.0, GOOD, b"")
    for ts in range(3):  # pushes the snapshot out of the full buffer
        log.append("m/P", 10_000 + ts, 1.0, GOOD, b"")
    assert log.stats()["dropped"] == 1
    log.append("m/Ap.bill01", 1_000, 90.0, GOOD, b"")
    await log.flush()
    assert (await collect(log, ["m/Ap.bill01"]))["m/Ap.bill01"] == [Sample(1_000, 90.0, GOOD)]
    # A change of type at the same time is a new sample, though 1 == 1.0.
    log.append("m/n", 5, 1, GOOD, b"")
    log.append("m/n", 5, 1.0, GOOD, b"")
    await log.flush()
    assert [type(s.value) for s in (await collect(log, ["m/n"]))["m/n"]] == [float]
    await log.close()


async def test_the_keep_cap_counts_distinct_times_and_keeps_corrections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "KEEP_MAX_SAMPLES", 3)
    log = HistoryLog(tmp_path / "h.db", flush_interval=3600, keep=["**/*.bill*"])
    await log.start()
    for ts in (1, 2, 3):
        log.append("m/Ap.bill01", ts, float(ts), GOOD, b"")
    await log.flush()
    await log.compact()
    log.append("m/Ap.bill01", 2, 999.0, GOOD, b"")  # a correction, in a later chunk
    await log.flush()
    await log.compact()
    await log.enforce_retention()
    got = (await collect(log, ["m/Ap.bill01"]))["m/Ap.bill01"]
    assert [(s.ts_ms, s.value) for s in got] == [(1, 1.0), (2, 999.0), (3, 3.0)]
    log.append("m/Ap.bill01", 4, 4.0, GOOD, b"")
    await log.flush()
    await log.compact()
    await log.enforce_retention()
    got = (await collect(log, ["m/Ap.bill01"]))["m/Ap.bill01"]
    assert [(s.ts_ms, s.value) for s in got] == [(2, 999.0), (3, 3.0), (4, 4.0)]
    await log.close()


def test_the_average_of_values_near_the_largest_double_is_theirs_not_an_error():
    # Their sum overflows: math.fsum raised OverflowError and the whole ReadHistory failed.
    from trusted.core.history_query import _aggregate

    big = 1.7e308
    sample = _aggregate(0, [big, big, big], [0, 0, 0], "avg")
    assert sample.value == big
