"""The core's audit log: chained JSON lines, queries, write summaries, denial coalescing."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extensions.sdk.testing import until
from trusted.core import audit as audit_mod
from trusted.core import audit_reader, audit_record
from trusted.core.audit import GENESIS, AuditError, AuditLog, AuditRecord

ALICE = "spiffe://usm-0017/trusted/fronius"
BOB = "spiffe://usm-0017/untrusted/lessag"


async def started(path: Path, **kw: float) -> AuditLog:
    log = AuditLog(path, **kw)
    await log.start()
    return log


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.jsonl"


@pytest.fixture
async def audit(path: Path) -> AsyncIterator[AuditLog]:
    log = await started(path, write_summary_interval=60, fsync_interval=0.05, denial_window=0.2)
    yield log
    await log.close()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- appending and the file ------------------------------------------------------------------


async def test_append_writes_one_chained_line_per_record(audit: AuditLog, path: Path) -> None:
    r1 = audit.append("setpoint_request", BOB, method="RequestSetpoint", point="ess1.P_set")
    r2 = audit.append("policy_reload", "", detail={"roles": 3})
    r3 = audit.append("setpoint_report", ALICE, point="ess1.P_set", reason="APPLIED")

    assert [r.seq for r in (r1, r2, r3)] == [1, 2, 3]
    assert r2.detail == {"roles": 3}
    rows = lines(path)
    assert [list(row) for row in rows] == [
        ["seq", "ts_ms", "kind", "identity", "method", "point", "reason", "detail", "prev", "hash"]
    ] * 3
    assert rows[0]["prev"] == GENESIS
    assert rows[1]["prev"] == rows[0]["hash"] and rows[2]["prev"] == rows[1]["hash"]
    assert rows[2]["kind"] == "setpoint_report" and rows[2]["reason"] == "APPLIED"
    assert abs(rows[0]["ts_ms"] - time.time() * 1000) < 10_000
    assert audit.verify() == 3


async def test_file_is_created_0600_and_a_loose_mode_is_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "a.jsonl"
    log = await started(fresh)
    await log.close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600

    loose = tmp_path / "b.jsonl"
    loose.touch()
    loose.chmod(0o644)
    log = await started(loose)
    await log.close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


async def test_detail_with_odd_values_is_stored_and_still_verifies(
    audit: AuditLog, path: Path
) -> None:
    rec = audit.append(
        "setpoint_report",
        ALICE,
        detail={"value": float("nan"), "tags": ("a", "b"), 3: Path("/x"), "nested": {"ok": 1.5}},
    )
    assert rec.detail == {"value": "nan", "tags": ["a", "b"], "3": "/x", "nested": {"ok": 1.5}}
    assert lines(path)[0]["detail"] == rec.detail
    assert audit.verify() == 1


async def test_append_before_start_and_after_close_is_refused(path: Path) -> None:
    log = AuditLog(path)
    with pytest.raises(AuditError, match="not started"):
        log.append("policy_reload", "")
    await log.start()
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        log.append("policy_reload", "")
    with pytest.raises(AuditError, match="closed"):
        log.record_write(ALICE, ["a"], 1)


async def test_a_second_writer_on_the_same_file_is_refused(audit: AuditLog, path: Path) -> None:
    other = AuditLog(path)
    with pytest.raises(AuditError, match="in use"):
        await other.start()


async def test_fsync_runs_in_the_background_at_most_every_interval(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(audit_mod.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    for i in range(200):
        audit.append("setpoint_request", BOB, point=f"p{i}")
    await until(lambda: len(calls) >= 1)
    await asyncio.sleep(0.3)
    # 200 records, fsync_interval 0.05 s: one or a few fsyncs, not one per record.
    assert 1 <= len(calls) <= 3


# -- query -----------------------------------------------------------------------------------


async def test_query_filters_by_kind_identity_point_and_time(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(1000, 2000, 100))
    monkeypatch.setattr(audit_mod, "_now_ms", lambda: next(clock))
    audit.append("setpoint_request", BOB, point="ess1.P_set")  # 1000
    audit.append("setpoint_report", ALICE, point="ess1.P_set")  # 1100
    audit.append("setpoint_request", BOB, point="evse1.I_max")  # 1200
    audit.append("policy_reload", "")  # 1300
    audit.append("setpoint_expired", ALICE, point="ess1.P_set")  # 1400

    def seqs(**kw: object) -> list[int]:
        return [r.seq for r in audit.query(**kw)]

    assert seqs() == [1, 2, 3, 4, 5]
    assert seqs(kind="setpoint_request") == [1, 3]
    assert seqs(identity=ALICE) == [2, 5]
    assert seqs(kind="setpoint_request", identity=ALICE) == []
    assert seqs(point_glob=lambda p: fnmatch.fnmatchcase(p, "ess1.*")) == [1, 2, 5]
    assert seqs(start_ms=1100, end_ms=1400) == [2, 3, 4]  # start inclusive, end exclusive
    assert seqs(start_ms=1500) == []
    rec = audit.query(kind="policy_reload")[0]
    assert rec == AuditRecord(4, 1300, "policy_reload", "")


async def test_query_pages_oldest_first_after_a_seq(audit: AuditLog) -> None:
    for i in range(50):
        audit.append("setpoint_request" if i % 2 else "setpoint_report", BOB, point=f"p{i}")
    assert [r.seq for r in audit.query(limit=10)] == list(range(1, 11))
    assert [r.seq for r in audit.query(after_seq=45)] == [46, 47, 48, 49, 50]
    reports = audit.query(kind="setpoint_report", after_seq=40, limit=3)
    assert [r.point for r in reports] == ["p40", "p42", "p44"]
    with pytest.raises(ValueError):
        audit.query(limit=0)


async def test_query_skips_unreadable_lines(
    audit: AuditLog, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit.append("policy_reload", "")
    with path.open("a") as f:
        f.write("this is not json\n")
    audit.append("policy_reload", "")
    with caplog.at_level(logging.WARNING):
        assert [r.seq for r in audit.query()] == [1, 2]
    assert "unreadable" in caplog.text


async def test_query_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert AuditLog(tmp_path / "none.jsonl").query() == []


# -- write summaries -------------------------------------------------------------------------


async def test_many_write_batches_become_one_record_per_identity(path: Path) -> None:
    log = await started(path, write_summary_interval=0.3, fsync_interval=0.05)
    try:
        before = time.time_ns() // 1_000_000
        for i in range(400):
            log.record_write(ALICE, [f"fronius.P_{i % 30:02d}", "fronius.E_tot"], 100 + i)
        log.record_write(BOB, iter(["ess1.soc"]), 7)  # any iterable
        assert log.query(kind="write") == []  # nothing on disk before the interval ends
        await until(lambda: len(log.query(kind="write")) == 2)
        await asyncio.sleep(0.05)
        alice = log.query(kind="write", identity=ALICE)
        assert len(alice) == 1
        since = alice[0].detail.pop("since_ms")
        assert before <= since <= alice[0].ts_ms
        assert alice[0].detail == {
            "batches": 400,
            "points": 800,
            "first_revision": 100,
            "last_revision": 499,
            "names": sorted(["fronius.E_tot"] + [f"fronius.P_{i:02d}" for i in range(19)]),
            "distinct_names": 31,
        }
        bob = log.query(kind="write", identity=BOB)[0]
        assert bob.detail["batches"] == 1 and bob.detail["names"] == ["ess1.soc"]
        # The next summary counts from zero; a name not written before makes it due at once.
        log.record_write(ALICE, ["fronius.P_00", "fronius.P_new"], 600)
        await until(lambda: len(log.query(kind="write")) == 3)
        last = log.query(kind="write")[-1]
        assert last.detail["batches"] == 1 and last.detail["first_revision"] == 600
    finally:
        await log.close()


async def test_pending_write_summary_is_written_on_close(path: Path) -> None:
    log = await started(path, write_summary_interval=3600)
    log.record_write(ALICE, ["fronius.P"], 1)
    log.record_write(ALICE, ["fronius.P"], 2)
    await log.close()
    (rec,) = log.query(kind="write")
    assert rec.detail["batches"] == 2 and rec.detail["last_revision"] == 2


async def test_routine_writing_is_summarised_once_an_hour_a_new_name_at_once(path: Path) -> None:
    log = await started(path, write_summary_interval=10, routine_summary_interval=3600)
    # A simulated clock, far ahead of the background task's, in whole seconds: with a fraction,
    # (t0 + 3601) - (t0 + 1) can round to just under the hour and move a summary 10 s later.
    t0 = float(int(time.monotonic()) + 1_000_000)
    rev = 0

    async def run(seconds: range, names: dict[str, list[str]]) -> None:
        nonlocal rev
        for s in seconds:
            for who, ns in names.items():
                rev += 1
                log.record_write(who, ns, rev)
            await log._tick(t0 + s)

    routine = {ALICE: ["fronius/ext.state", "fronius/P"], BOB: ["lessag/ext.state"]}
    await run(range(1, 7201), routine)  # two hours of heartbeats
    writes = log.query(kind="write")
    # Each identity: its first summary at once (new), then one an hour, not one per 10 s.
    assert [(r.identity, r.detail["batches"]) for r in writes] == [
        (ALICE, 1),
        (BOB, 1),
        (ALICE, 3600),
        (BOB, 3600),
    ]
    assert writes[2].detail["first_revision"] == 3  # the counts carry on from the last one

    # A name the previous summary did not list is written at the next summary (within the 20
    # seconds run here), not an hour on.
    seq = log.last_seq
    await run(range(7201, 7221), {ALICE: ["fronius/ext.state", "fronius/P", "fronius/Q"]})
    (changed,) = log.query(after_seq=seq, identity=ALICE)
    assert "fronius/Q" in changed.detail["names"]
    # Fewer names than before is still routine: counted, not written.
    seq = log.last_seq
    await run(range(7221, 7300), {ALICE: ["fronius/P"]})
    assert log.last_seq == seq
    await log.close()  # close writes what is pending
    (pending,) = log.query(after_seq=seq)
    assert pending.identity == ALICE and pending.detail["batches"] > 70
    batches = sum(r.detail["batches"] for r in log.query(kind="write"))
    assert batches == rev  # nothing lost from the counts


async def test_an_idle_site_writes_little_to_the_log(path: Path) -> None:
    """8 identities each writing their 3 routine points every second, with signed checkpoints:
    a simulated three hours. (Before hourly routine summaries: ~31 MB a day.)"""
    from cryptography.hazmat.primitives.asymmetric import ec

    from trusted.core.audit_checkpoint import CheckpointSigner

    signer = CheckpointSigner(ec.generate_private_key(ec.SECP256R1()))
    log = await started(path, signer=signer, identity="spiffe://usm-0017/trusted/smxcore")
    start = path.stat().st_size
    t0 = float(int(time.monotonic()) + 1_000_000)  # whole seconds: exact hours apart
    who = [f"spiffe://usm-0017/trusted/ext{i}" for i in range(8)]
    hours = 3
    for s in range(1, hours * 3600 + 1):
        for i, ident in enumerate(who):
            log.record_write(ident, [f"ext{i}/ext.state", f"ext{i}/ext.devices_ok", f"ext{i}/P"], s)
        await log._tick(t0 + s)
    per_day = (path.stat().st_size - start) * 24 / hours
    kinds = [r.kind for r in log.query(limit=10_000)]
    await log.close()
    assert kinds.count("write") == 8 * (1 + hours - 1)  # the first ones, then one an hour
    assert per_day < 200_000, per_day


# -- denial coalescing -----------------------------------------------------------------------


async def test_identical_denials_are_coalesced_within_the_window(audit: AuditLog) -> None:
    def deny(point: str = "ess1.P_set") -> AuditRecord:
        return audit.append(
            "denied", BOB, method="/smx.v1.PointService/WritePoints", point=point,
            reason="PERMISSION_NOT_GRANTED",
        )  # fmt: skip

    first = deny()
    assert first.seq == 1
    for _ in range(99):
        assert deny() == first  # repeats are counted, not written
    other = deny("ess1.Q_set")  # another point is another key: written at once
    assert other.seq == 2
    assert [r.seq for r in audit.query(kind="denied")] == [1, 2]

    await until(lambda: len(audit.query(kind="denied")) == 3)
    summary = audit.query(kind="denied")[-1]
    assert summary.point == "ess1.P_set" and summary.reason == "PERMISSION_NOT_GRANTED"
    assert summary.detail["repeats"] == 99
    # The ess1.Q_set window had no repeats, so it closes without a record.
    await asyncio.sleep(0.3)
    assert len(audit.query(kind="denied")) == 3
    # After the window a new denial is written immediately again.
    assert deny().seq == 4


async def test_pending_denial_repeats_are_written_on_close(path: Path) -> None:
    log = await started(path, denial_window=60)
    for _ in range(5):
        log.append("denied", BOB, method="m", reason="R")
    await log.close()
    recs = log.query(kind="denied")
    assert [r.detail.get("repeats") for r in recs] == [None, 4]
    assert log.verify() == 2


async def test_a_flood_of_distinct_denials_keeps_memory_and_records_bounded(path: Path) -> None:
    log = await started(path, denial_window=60, max_denial_keys=10)
    for i in range(1000):
        log.append("denied", BOB, method="m", point=f"p{i}", reason="R")
    # Only the first 10 keys got records; the other 990 are only counted.
    assert len(log.query()) == 10
    assert len(log._denials) == 10 and len(log._overflow) == 1
    await log.close()
    recs = log.query(kind="denied")
    assert len(recs) == 11
    accounted = sum(r.detail.get("repeats", 0) or 1 for r in recs)
    assert accounted == 1000
    assert recs[-1].detail == {
        "repeats": 990,
        "points_omitted": True,
        "by": [{"method": "m", "reason": "R", "repeats": 990}],
    }
    assert (recs[-1].method, recs[-1].reason) == ("m", "R")  # one pair: named on the record


# -- hash chain, restart, torn lines ---------------------------------------------------------


async def test_verify_detects_an_edited_line(audit: AuditLog, path: Path) -> None:
    for point in ("a", "b", "c", "d"):
        audit.append("setpoint_request", BOB, point=point)
    assert audit.verify() == 4
    rows = path.read_text().splitlines()
    rows[2] = rows[2].replace('"point":"c"', '"point":"x"')
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(AuditError, match="seq 3") as exc:
        audit.verify()
    assert exc.value.seq == 3


async def test_verify_detects_a_deleted_or_recomputed_line(path: Path) -> None:
    log = await started(path)
    for point in ("a", "b", "c"):
        log.append("setpoint_request", BOB, point=point)
    await log.close()
    rows = path.read_text().splitlines()

    path.write_text("\n".join([rows[0], rows[2]]) + "\n")
    with pytest.raises(AuditError, match="seq 2") as exc:
        log.verify()
    assert exc.value.seq == 2

    # A forger who recomputes the edited line's own hash still breaks the link to the next one.
    row = json.loads(rows[1])
    row["point"] = "x"
    body = {k: v for k, v in row.items() if k != "hash"}
    row["hash"] = audit_record.record_hash(body)
    path.write_text("\n".join([rows[0], json.dumps(row), rows[2]]) + "\n")
    with pytest.raises(AuditError, match="seq 3"):
        log.verify()


async def test_restart_continues_seq_and_chain(path: Path) -> None:
    log = await started(path)
    log.append("policy_reload", "")
    log.append("setpoint_request", BOB, point="a")
    await log.close()

    log = await started(path)
    assert log.last_seq == 2
    rec = log.append("setpoint_report", ALICE, point="a")
    await log.close()
    assert rec.seq == 3
    rows = lines(path)
    assert rows[2]["prev"] == rows[1]["hash"]
    assert log.verify() == 3


async def test_torn_last_line_is_cut_away_on_start(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = await started(path)
    log.append("policy_reload", "")
    log.append("setpoint_request", BOB, point="a")
    await log.close()
    whole = path.read_bytes()
    torn = b'{"seq":3,"ts_ms":17000000,"kind":"setpo'  # kill -9 in the middle of a write
    path.write_bytes(whole + torn)
    with pytest.raises(AuditError, match="torn"):
        log.verify()

    with caplog.at_level(logging.WARNING):
        log = await started(path)
    assert "torn" in caplog.text
    assert path.read_bytes() == whole
    rec = log.append("setpoint_report", ALICE)
    await log.close()
    assert rec.seq == 3
    assert log.verify() == 3


async def test_a_file_that_is_only_a_torn_line_starts_a_new_chain(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x00\x00")  # power cut: size grew, data never reached the card
    log = await started(path)
    rec = log.append("policy_reload", "")
    await log.close()
    assert rec.seq == 1
    assert log.verify() == 1


async def test_long_lines_are_found_when_reading_the_tail(path: Path) -> None:
    log = await started(path)
    log.append("policy_reload", "", detail={"blob": "x" * 200_000})
    log.append("policy_reload", "", detail={"blob": "y" * 150_000})
    await log.close()
    log = await started(path)
    assert log.last_seq == 2
    log.append("policy_reload", "")
    await log.close()
    assert log.verify() == 3


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.booleans(),
    st.integers(min_value=1, max_value=64),
)
def test_reading_lines_backwards_matches_reading_forwards(
    rows: list[bytes], torn: bool, chunk: int
) -> None:
    data = b"".join(r + b"\n" for r in rows) + (b"partial" if torn else b"")
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        got = list(audit_reader.lines_backward(f.fileno(), len(data), chunk=chunk))
    *whole, tail = data.split(b"\n")
    expected = [r + b"\n" for r in whole] + ([tail] if tail else [])
    assert [raw for _, raw in reversed(got)] == expected
    assert all(data[off : off + len(raw)] == raw for off, raw in got)


async def test_a_client_varying_the_point_cannot_flood_the_log(tmp_path):
    # One record per refused call would let a hostile client fill the SD card: past its budget
    # of distinct open denial windows, its refusals are only counted.
    from trusted.core.audit import DENIAL_RECORD_BURST

    log = AuditLog(tmp_path / "audit.jsonl", denial_window=60.0)
    await log.start()
    for i in range(2000):
        log.append(
            "denied",
            "spiffe://s/untrusted/x",
            method="/m",
            point=f"a/p{i}",
            reason="PERMISSION_NOT_GRANTED",
        )
    log.append(
        "denied",
        "spiffe://s/trusted/other",
        method="/m",
        point="a/p",
        reason="PERMISSION_NOT_GRANTED",
    )
    await log.close()
    records = log.query(limit=10_000)
    hostile = [r for r in records if r.identity.endswith("/x")]
    assert len(hostile) <= DENIAL_RECORD_BURST + 2
    counted = sum(r.detail.get("repeats", 1) for r in hostile if "points_omitted" in r.detail)
    assert counted == 2000 - DENIAL_RECORD_BURST  # nothing lost from the count
    assert any(r.identity.endswith("/other") for r in records)  # others still recorded
    assert log.verify() == len(records)


async def test_a_client_varying_method_and_reason_costs_one_overflow_record_per_window(
    tmp_path: Path,
) -> None:
    # Past its budget, an identity's refusals are counted into one record per window, however
    # many (method, reason) pairs it spreads them over; the counts fold into its detail.
    from trusted.core.audit import DENIAL_RECORD_BURST

    log = await started(tmp_path / "audit.jsonl", denial_window=60.0)
    hostile = "spiffe://s/untrusted/x"
    for i in range(DENIAL_RECORD_BURST):  # spend the budget: one record each
        log.append("denied", hostile, method="/m", point=f"a/p{i}", reason="R")
    assert log.last_seq == DENIAL_RECORD_BURST
    calls = 0
    for m in range(40):
        for r in range(10):
            for _ in range(1 + (m == 2) * 99):  # /M2 is the most frequent method
                log.append("denied", hostile, method=f"/M{m}", point=f"b/{calls}", reason=f"R{r}")
                calls += 1
    log.append("denied", "spiffe://s/untrusted/y", method="/M1", point="c/p", reason="R1")
    assert log.last_seq == DENIAL_RECORD_BURST + 1  # nothing more written within the window

    log._flush_denials(force=False, now=time.monotonic() + 61)  # the window closes
    overflow = [r for r in log.query(after_seq=DENIAL_RECORD_BURST + 1) if r.identity == hostile]
    assert len(overflow) == 1  # not one per (method, reason): 400 pairs here
    (rec,) = overflow
    assert (rec.method, rec.point, rec.reason) == ("", "", "")
    assert rec.detail["repeats"] == calls and rec.detail["points_omitted"] is True
    listed = rec.detail["by"]
    assert len(listed) == 10
    assert listed[0] == {"method": "/M2", "reason": "R0", "repeats": 100}
    assert sum(e["repeats"] for e in listed) + rec.detail["other_repeats"] == calls
    assert len(log._overflow) == 0

    # The next window: again one record for the identity, whatever it varies.
    for i in range(500):
        log.append("denied", hostile, method=f"/N{i}", point=f"d/{i}", reason=f"Q{i % 7}")
    # Memory per identity stays bounded: a fixed number of pairs, the rest only summed.
    assert len(log._overflow[hostile].counts) <= 32
    seq = log.last_seq
    log._flush_denials(force=False, now=time.monotonic() + 200)
    (rec,) = log.query(after_seq=seq)
    assert rec.detail["repeats"] == 500 and len(rec.detail["by"]) == 10
    await log.close()
    assert log.verify() == log.last_seq
