"""The history's recent-samples segment file: records, torn tails, generations, reuse in place."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trusted.core.history import HistoryLog
from trusted.core.history_segment import BLOCK, Segment, build, read_records, segment_path


def _record(i: int) -> bytes:
    samples = [("a/P", i * 10 + k, float(i) + k / 10, 1) for k in range(5)]
    samples += [("b/S", i, f"s{i}", 1), ("b/B", i, bool(i % 2), 2), ("b/I", i, -(2**40) - i, 3)]
    _, body, rejected = build(samples, {"a/P": f"P@{i}".encode()}, {"b/S": b"unit"} if i else {})
    assert rejected == 0
    return body


def _write(path: Path, count: int, gen: int = 1) -> list[int]:
    """`count` records; returns the offset where each one starts."""
    seg = Segment(path, gen)
    starts = []
    for i in range(count):
        starts.append(seg.end)
        seg.append(_record(i))
    seg.close()
    return starts


def test_records_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "h.db-seg"
    starts = _write(path, 3)
    assert all(s % BLOCK == 0 for s in starts)
    records, end, torn = read_records(path, 1)
    assert len(records) == 3 and torn == 0 and end == starts[-1] + BLOCK
    rec = records[2]
    assert rec.samples[:5] == [("a/P", 20 + k, 2.0 + k / 10, 1) for k in range(5)]
    assert rec.samples[5:] == [
        ("b/S", 2, "s2", 1),
        ("b/B", 2, False, 2),
        ("b/I", 2, -(2**40) - 2, 3),
    ]
    assert rec.last == {"a/P": b"P@2"} and rec.meta == {"b/S": b"unit"}
    assert type(rec.samples[6][2]) is bool and type(rec.samples[7][2]) is int


def test_bad_rows_are_dropped_and_counted() -> None:
    rows = [
        ("p", 1, None, 1),
        ("p", 2, 2**70, 1),
        ("p", 3, "\ud800", 1),
        ("p", 2**64, 1.0, 1),
        ("p", 5, 1.0, 2**40),
        ("p", 6, math.nan, 1),
    ]
    rec, _, rejected = build(rows, {"p": "not bytes", "q": b"ok"}, {})  # type: ignore[arg-type]
    assert rejected == 5
    assert [s[1] for s in rec.samples] == [6] and rec.last == {"q": b"ok"}


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_torn_last_record_is_dropped_at_every_offset(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "h.db-seg"
    starts = _write(path, 3)
    data = path.read_bytes()
    last_start = starts[-1]
    good, _, _ = read_records(path, 1)
    for cut in range(last_start, len(data)):
        if damage == "truncate":
            path.write_bytes(data[:cut])
        else:
            path.write_bytes(data[:cut] + bytes([data[cut] ^ 0x5A]) + data[cut + 1 :])
        records, end, _ = read_records(path, 1)
        # Never a crash, never a misread: the two earlier records, exactly; the next record
        # would go where the torn one was.
        assert records == good[:2], cut
        assert end == last_start, cut


def test_records_of_another_generation_are_not_read(tmp_path: Path) -> None:
    path = tmp_path / "h.db-seg"
    _write(path, 4, gen=1)
    size = path.stat().st_size
    # Generation 2 overwrites the start of the file in place; the rest is stale.
    seg = Segment(path, 2)
    seg.append(_record(9))
    seg.close()
    assert path.stat().st_size == size  # reused, not grown
    records, _, _ = read_records(path, 2)
    assert [r.samples[0][1] for r in records] == [90]
    assert read_records(path, 3)[0] == []
    assert read_records(tmp_path / "missing", 1) == ([], 0, 0)


async def test_a_torn_segment_is_recovered_up_to_its_last_good_record(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    for flush in range(3):
        for k in range(10):
            log.append("m/P", flush * 10 + k, float(k), 1, f"P{flush}".encode())
        await log.flush()
    assert log._segment is not None
    last_start = log._segment.end - BLOCK
    # As if the process died: the segment is what is left (no clean-stop compaction).
    data = segment_path(path).read_bytes()
    log._close_conn()
    log._state = "closed"
    segment_path(path).write_bytes(data[: last_start + 40])  # the last record torn

    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    try:
        got = [s async for _, c in log.read(["m/P"], None, None) for s in c]
        assert [s.ts_ms for s in got] == list(range(20))
        assert log.load_last() == {"m/P": b"P1"}
        # Recovered samples were compacted at start: the segment starts over.
        assert log._segment is not None and log._segment.end == 0
    finally:
        await log.close()
