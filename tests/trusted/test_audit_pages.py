"""Pages of the audit log, oldest first after a seq: the bisection that finds where a page
starts must never skip a record, whatever the lines look like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trusted.core.audit import AuditLog
from trusted.core.audit_reader import page_records

ALICE = "spiffe://usm-0017/trusted/fronius"
BOB = "spiffe://usm-0017/untrusted/lessag"


async def written(path: Path, details: list[int]) -> None:
    """One record per entry of `details`, each with a detail of that many characters (long
    lines test the line reader across its 4 KiB probes)."""
    log = AuditLog(path, fsync_interval=0.05)
    await log.start()
    try:
        for i, size in enumerate(details):
            who = ALICE if i % 3 else BOB
            log.append("setpoint_request", who, point=f"p{i}", detail={"pad": "x" * size})
    finally:
        await log.close()


def all_pages(path: Path, size: int, **filters: object) -> list[int]:
    seqs: list[int] = []
    after = 0
    while True:
        records, more = page_records(path, after_seq=after, limit=size, **filters)  # type: ignore[arg-type]
        assert len(records) <= size
        seqs += [r.seq for r in records]
        if not more:
            return seqs
        assert len(records) == size  # a page is only short at the end
        after = records[-1].seq


async def test_pages_cover_every_record_once_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await written(path, [10] * 250)
    assert all_pages(path, 100) == list(range(1, 251))
    assert all_pages(path, 7, identity=BOB) == list(range(1, 251, 3))
    records, more = page_records(path, after_seq=250, limit=10)
    assert (records, more) == ([], False)


async def test_a_page_starts_right_after_the_seq_given(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await written(path, [5, 9000, 0, 20000, 3, 7] * 20)  # lines from ~200 B to ~20 KB
    for after in range(0, 121):
        records, _ = page_records(path, after_seq=after, limit=2)
        assert [r.seq for r in records] == [s for s in (after + 1, after + 2) if s <= 120]


async def test_unreadable_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await written(path, [10] * 40)
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = lines[:20] + [b"not json at all\n", b'{"seq": "x"}\n'] + lines[20:]
    path.write_bytes(b"".join(damaged) + b'{"seq": 41, "torn')
    assert all_pages(path, 3) == list(range(1, 41))
    for after in (18, 19, 20, 21):
        assert page_records(path, after_seq=after, limit=1)[0][0].seq == after + 1


def test_a_missing_file_has_no_pages(tmp_path: Path) -> None:
    assert page_records(tmp_path / "none.jsonl", after_seq=5) == ([], False)
    with pytest.raises(ValueError):
        page_records(tmp_path / "none.jsonl", limit=0)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(0, 6000), min_size=1, max_size=40), data=st.data())
def test_bisection_matches_a_plain_scan(tmp_path_factory, sizes, data) -> None:
    path = tmp_path_factory.mktemp("pages") / "audit.jsonl"
    # Written directly: a valid-looking file of increasing seqs, no AuditLog needed.
    path.write_text(
        "".join(
            json.dumps(
                {
                    "seq": i + 1,
                    "ts_ms": 0,
                    "kind": "k",
                    "identity": "",
                    "method": "",
                    "point": "",
                    "reason": "",
                    "detail": {"pad": "y" * n},
                }
            )
            + "\n"
            for i, n in enumerate(sizes)
        )
    )
    after = data.draw(st.integers(0, len(sizes) + 1))
    limit = data.draw(st.integers(1, 5))
    records, more = page_records(path, after_seq=after, limit=limit)
    expected = list(range(after + 1, len(sizes) + 1))
    assert [r.seq for r in records] == expected[:limit]
    assert more == (len(expected) > limit)
