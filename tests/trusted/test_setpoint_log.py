"""The setpoint change log and the streams that read it, driven directly: revisions shared with
the realtime DB, compaction of a resume and of a stream that fell behind, what requesters and
owners each take from one change."""

from __future__ import annotations

import asyncio

import pytest

from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2 as ppb
from trusted.core.errors import CoreError
from trusted.core.realtime import RealtimeDB
from trusted.core.services.setpoint_watch import outcome_stream, owner_stream
from trusted.core.setpoints import SetpointBoard

AGENT, OTHER = "spiffe://s/untrusted/agent", "spiffe://s/trusted/er"


def board(backlog: int = 100) -> tuple[RealtimeDB, SetpointBoard]:
    db = RealtimeDB(core_identity="core")
    b = SetpointBoard(db, backlog=backlog)
    b.log.start_at(db.revision)
    return db, b


def value(v: float) -> ppb.Value:
    return ppb.Value(double_value=v)


def test_changes_take_revisions_from_the_shared_sequence() -> None:
    db, b = board()
    db.write("meter", [ppb.PointSample(name="meter/P", value=value(1))])
    sp = b.request(AGENT, "ess/P_set", value(1), 60)
    assert sp.revision == db.revision == 2
    newer = b.request(OTHER, "ess/P_set", value(2), 60)
    entries = b.log.after(1)
    assert [(e.revision, e.requester, e.outcome, e.event) for e in entries] == [
        (2, AGENT, True, pb.SETPOINT_EVENT_REQUESTED),
        (3, AGENT, True, pb.SETPOINT_EVENT_UNSPECIFIED),  # superseded: nothing for the owner
        (3, OTHER, True, pb.SETPOINT_EVENT_REQUESTED),
    ]
    assert entries[1].setpoint().status == pb.SETPOINT_STATUS_SUPERSEDED
    # Entries are frozen as the change left them, whatever happens to the setpoint later.
    b.report("ess", newer.id, pb.SETPOINT_STATUS_APPLIED, None, "")
    assert b.log.after(2)[1].setpoint().status == pb.SETPOINT_STATUS_PENDING


def test_expiry_of_what_the_device_runs_is_an_owner_event_only() -> None:
    _, b = board()
    sp1 = b.request(AGENT, "ess/P_set", value(1), 1)
    b.report("ess", sp1.id, pb.SETPOINT_STATUS_APPLIED, None, "")
    b.request(AGENT, "ess/P_set", value(2), 60)  # supersedes sp1, not yet applied
    mark = b.revisions.revision
    b.expire(now=sp1.expire_time.ToMilliseconds())
    (entry,) = b.log.after(mark)
    assert (entry.outcome, entry.event) == (False, pb.SETPOINT_EVENT_EXPIRED)
    assert entry.setpoint().id == sp1.id


def test_resume_and_lag_beyond_the_log_are_compacted() -> None:
    _, b = board(backlog=3)
    first = b.request(AGENT, "ess/P_set", value(0), 60).revision
    for i in range(3):
        b.request(AGENT, "ess/P_set", value(i + 1), 60)
    with pytest.raises(CoreError) as info:
        b.log.check_start(first)
    assert info.value.reason == "REVISION_COMPACTED"
    with pytest.raises(CoreError) as info:
        b.log.after(first)  # a live stream still at `first` fell behind: same answer
    assert info.value.reason == "REVISION_COMPACTED"
    b.log.check_start(b.revisions.revision)
    with pytest.raises(CoreError) as info:
        b.log.check_start(b.revisions.revision + 1)
    assert info.value.reason == "INVALID_ARGUMENT"


def test_a_restart_compacts_everything_before_it() -> None:
    _, b = board()
    b.log.start_at(1_000_000)
    with pytest.raises(CoreError):
        b.log.after(5)


async def test_streams_take_what_is_theirs_from_one_log() -> None:
    _, b = board()
    everything = lambda name: True  # noqa: E731
    outcomes = outcome_stream(b, everything, AGENT, 0, 10.0)
    owner = owner_stream(b, everything, 0, 10.0)
    assert (await outcomes.__anext__()).snapshot
    sp = b.request(AGENT, "ess/P_set", value(1), 60)
    b.request(OTHER, "ess/Q_set", value(2), 60)
    msg = await asyncio.wait_for(outcomes.__anext__(), 1)
    assert [(s.id, s.status) for s in msg.setpoints] == [(sp.id, pb.SETPOINT_STATUS_PENDING)]
    assert msg.revision == b.revisions.revision
    first = await asyncio.wait_for(owner.__anext__(), 1)
    second = await asyncio.wait_for(owner.__anext__(), 1)
    assert [first.setpoint.name, second.setpoint.name] == ["ess/P_set", "ess/Q_set"]
    await outcomes.aclose()
    await owner.aclose()
    assert not b.log._waiters  # closed streams leave nothing behind
