"""WatchSetpointOutcomes: a requester follows every status change of its own setpoints, in
order, resumes after a disconnect without missing any, is told when its revision is too old,
and never sees another requester's setpoints."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from smx.client import error_reason
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb

LESSAG = "spiffe://test-site/untrusted/lessag"
ER = "spiffe://test-site/trusted/er"
S = pb.SetpointStatus


@pytest.fixture(autouse=True)
async def declared(site, core):
    await site.stubs("ess").points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[
                ppb.PointMetadata(name=n, unit="W", kind=ppb.VALUE_KIND_DOUBLE)
                for n in ("ess/P_set", "ess/Q_set")
            ]
        )
    )


def request(value: float, name: str = "ess/P_set", seconds: float = 60):
    d = Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return pb.RequestSetpointRequest(name=name, value=ppb.Value(double_value=value), valid_for=d)


def report(sp: pb.Setpoint, status, value: float | None = None, reason: str = ""):
    applied = ppb.Value(double_value=value) if value is not None else None
    return pb.ReportSetpointRequest(id=sp.id, status=status, applied_value=applied, reason=reason)


def watch(stubs, start: int = 0, *patterns: str, heartbeat_ms: int = 0):
    req = pb.WatchSetpointOutcomesRequest(patterns=patterns, start_revision=start)
    if heartbeat_ms:
        req.heartbeat_interval.FromMilliseconds(heartbeat_ms)
    return stubs.control.WatchSetpointOutcomes(req)


async def collect(stream, count: int, timeout: float = 5) -> list[tuple[pb.Setpoint, int]]:
    """(setpoint, revision of its message) for the next `count` changes, skipping heartbeats."""
    got: list[tuple[pb.Setpoint, int]] = []
    while len(got) < count:
        msg = await asyncio.wait_for(stream.read(), timeout)
        assert not msg.snapshot
        got += [(sp, msg.revision) for sp in msg.setpoints]
    return got


def changes(got) -> list[tuple[str, str]]:
    return [(sp.id, S.Name(sp.status).removeprefix("SETPOINT_STATUS_")) for sp, _ in got]


async def test_every_outcome_arrives_in_order(site, core):
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    stream = watch(agent)
    first = await stream.read()
    assert first.snapshot and not first.setpoints

    sp1 = (await agent.control.RequestSetpoint(request(3000))).setpoint
    await ess.control.ReportSetpoint(report(sp1, S.SETPOINT_STATUS_APPLIED))
    await ess.control.ReportSetpoint(report(sp1, S.SETPOINT_STATUS_CLAMPED, 2500, "limit"))
    sp2 = (await agent.control.RequestSetpoint(request(-9e9))).setpoint
    await ess.control.ReportSetpoint(report(sp2, S.SETPOINT_STATUS_REJECTED, reason="too much"))
    sp3 = (await agent.control.RequestSetpoint(request(100, seconds=1))).setpoint

    got = await collect(stream, 8)
    assert changes(got) == [
        (sp1.id, "PENDING"),
        (sp1.id, "APPLIED"),
        (sp1.id, "CLAMPED"),
        (sp1.id, "SUPERSEDED"),  # in the same revision as sp2's request, and before it
        (sp2.id, "PENDING"),
        (sp2.id, "REJECTED"),
        (sp3.id, "PENDING"),
        (sp3.id, "EXPIRED"),
    ]
    revisions = [sp.revision for sp, _ in got]
    assert revisions == sorted(revisions) and revisions[3] == revisions[4]
    assert all(sp.revision <= at for sp, at in got)  # a message covers what it carries
    clamped = got[2][0]
    assert clamped.applied_value.double_value == 2500 and clamped.reason == "limit"
    assert got[5][0].reason == "too much"
    # GetSetpoint tells the same story, with the same revision.
    now = (await agent.control.GetSetpoint(pb.GetSetpointRequest(id=sp3.id))).setpoint
    assert (now.status, now.revision) == (S.SETPOINT_STATUS_EXPIRED, got[-1][0].revision)
    stream.cancel()


async def test_a_new_watch_starts_with_my_setpoints_in_force(site, core):
    agent, er, ess = site.stubs("lessag"), site.stubs("er"), site.stubs("ess")
    applied = (await agent.control.RequestSetpoint(request(1, "ess/Q_set"))).setpoint
    await ess.control.ReportSetpoint(report(applied, S.SETPOINT_STATUS_APPLIED))
    rejected = (await agent.control.RequestSetpoint(request(2))).setpoint
    await ess.control.ReportSetpoint(report(rejected, S.SETPOINT_STATUS_REJECTED, reason="no"))
    pending = (await agent.control.RequestSetpoint(request(3))).setpoint
    await er.control.RequestSetpoint(request(4, "ess/Q_set", seconds=30))  # supersedes `applied`

    stream = watch(agent)
    snap = await stream.read()
    assert snap.snapshot and snap.revision == core.state.db.revision
    # `applied` was superseded by er's request, `rejected` is finished: only `pending` is in force.
    assert [(sp.id, sp.status) for sp in snap.setpoints] == [
        (pending.id, S.SETPOINT_STATUS_PENDING)
    ]
    stream.cancel()


async def test_resume_after_a_disconnect_misses_nothing(site, core):
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    steady = watch(agent)  # stays connected throughout: what resuming must match
    cut = watch(agent)
    assert (await steady.read()).snapshot and (await cut.read()).snapshot
    sp1 = (await agent.control.RequestSetpoint(request(10))).setpoint
    (_, at), *_ = await collect(cut, 1)
    resume_from = at
    cut.cancel()  # the requester loses its connection here

    await ess.control.ReportSetpoint(report(sp1, S.SETPOINT_STATUS_APPLIED))
    await site.stubs("meter").points.WritePoints(  # point writes take revisions too
        spb.WritePointsRequest(
            samples=[ppb.PointSample(name="meter/P", value=ppb.Value(double_value=1))]
        )
    )
    sp2 = (await agent.control.RequestSetpoint(request(20, "ess/Q_set"))).setpoint
    await ess.control.ReportSetpoint(report(sp2, S.SETPOINT_STATUS_CLAMPED, 15))
    sp3 = (await agent.control.RequestSetpoint(request(30))).setpoint

    resumed = watch(agent, resume_from)
    after = await collect(resumed, 5)
    assert changes(after) == [
        (sp1.id, "APPLIED"),
        (sp2.id, "PENDING"),
        (sp2.id, "CLAMPED"),
        (sp1.id, "SUPERSEDED"),
        (sp3.id, "PENDING"),
    ]
    assert changes(await collect(steady, 6)) == [(sp1.id, "PENDING"), *changes(after)]
    # Resuming from the last revision seen sends nothing old, only what comes next.
    again = watch(agent, after[-1][1], heartbeat_ms=200)
    hb = await asyncio.wait_for(again.read(), 3)
    assert hb.heartbeat and not hb.setpoints and hb.revision >= after[-1][1]
    await ess.control.ReportSetpoint(report(sp3, S.SETPOINT_STATUS_APPLIED))
    assert changes(await collect(again, 1)) == [(sp3.id, "APPLIED")]
    for s in (steady, resumed, again):
        s.cancel()


async def test_another_requester_never_sees_my_outcomes(site, core):
    agent, er, admin, ess = (site.stubs(n) for n in ("lessag", "er", "admin", "ess"))
    mine, theirs, admins = watch(agent), watch(er), watch(admin, 0, "**", heartbeat_ms=200)
    for s in (mine, theirs, admins):
        assert (await s.read()).snapshot
    sp = (await agent.control.RequestSetpoint(request(1))).setpoint
    await ess.control.ReportSetpoint(report(sp, S.SETPOINT_STATUS_APPLIED))
    other = (await er.control.RequestSetpoint(request(2))).setpoint  # supersedes mine

    assert changes(await collect(mine, 3)) == [
        (sp.id, "PENDING"),
        (sp.id, "APPLIED"),
        (sp.id, "SUPERSEDED"),  # what happened to my setpoint, not who did it
    ]
    assert changes(await collect(theirs, 1)) == [(other.id, "PENDING")]
    # The admin may request anything, but it requested nothing: heartbeats only.
    for _ in range(2):
        msg = await asyncio.wait_for(admins.read(), 3)
        assert msg.heartbeat and not msg.setpoints
    await ess.control.ReportSetpoint(report(other, S.SETPOINT_STATUS_APPLIED))
    assert changes(await collect(theirs, 1)) == [(other.id, "APPLIED")]
    with pytest.raises(TimeoutError):
        await collect(mine, 1, timeout=0.5)
    for s in (mine, theirs, admins):
        s.cancel()


async def test_patterns_narrow_what_is_followed(site, core):
    agent = site.stubs("lessag")
    stream = watch(agent, 0, "ess/Q_*")
    assert (await stream.read()).snapshot
    await agent.control.RequestSetpoint(request(1))
    q = (await agent.control.RequestSetpoint(request(2, "ess/Q_set"))).setpoint
    assert changes(await collect(stream, 1)) == [(q.id, "PENDING")]
    stream.cancel()


@pytest.mark.parametrize("client", ["gui", "ess", "nobody"])
async def test_outcomes_need_the_request_right(site, core, client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watch(site.stubs(client)).read()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(info.value) == "PERMISSION_NOT_GRANTED"


async def test_bad_watch_requests(site, core):
    agent = site.stubs("lessag")
    future = core.state.db.revision + 100
    for stream, reason in (
        (watch(agent, future), "INVALID_ARGUMENT"),
        (watch(agent, -1), "INVALID_ARGUMENT"),
        (watch(agent, 0, "Bad Pattern"), "INVALID_POINT_NAME"),
        (watch(agent, heartbeat_ms=10), "INVALID_ARGUMENT"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert error_reason(info.value) == reason
