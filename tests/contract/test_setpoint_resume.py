"""Revisions on both setpoint streams: owners resume WatchSetpoints like requesters resume
WatchSetpointOutcomes, heartbeats carry the revision, and a revision the core no longer keeps
(too old for its log, or from before a restart) is REVISION_COMPACTED on either stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from smx.client import error_reason
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from trusted.core.server import Core

E = pb.SetpointEvent


async def declare(site, *names: str) -> None:
    await site.stubs("ess").points.DeclarePoints(
        spb.DeclarePointsRequest(points=[ppb.PointMetadata(name=n, unit="W") for n in names])
    )


def request(value: float, name: str = "ess/P_set", seconds: float = 60):
    d = Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return pb.RequestSetpointRequest(name=name, value=ppb.Value(double_value=value), valid_for=d)


def owner_watch(site, start: int = 0, heartbeat_ms: int = 0):
    req = pb.WatchSetpointsRequest(start_revision=start)
    if heartbeat_ms:
        req.heartbeat_interval.FromMilliseconds(heartbeat_ms)
    return site.stubs("ess").control.WatchSetpoints(req)


async def next_event(stream, timeout: float = 5) -> pb.WatchSetpointsResponse:
    while True:
        msg = await asyncio.wait_for(stream.read(), timeout)
        if not msg.heartbeat:
            return msg


async def test_owner_resumes_from_a_revision(site, core):
    await declare(site, "ess/P_set", "ess/Q_set")
    agent = site.stubs("lessag")
    in_force = [
        (await agent.control.RequestSetpoint(request(v, n))).setpoint
        for v, n in ((1, "ess/P_set"), (2, "ess/Q_set"))
    ]
    owner = owner_watch(site)
    first = [await next_event(owner), await next_event(owner)]
    assert {m.setpoint.id for m in first} == {sp.id for sp in in_force}
    assert all(m.event == E.SETPOINT_EVENT_REQUESTED for m in first)
    # Only the last message of the setpoints in force says where a resume may start.
    assert first[0].revision == 0 and first[1].revision == core.state.db.revision
    sp3 = (await agent.control.RequestSetpoint(request(3))).setpoint
    msg = await next_event(owner)
    assert (msg.setpoint.id, msg.revision) == (sp3.id, sp3.revision)
    owner.cancel()  # the extension restarts

    sp4 = (await agent.control.RequestSetpoint(request(4, "ess/Q_set", seconds=1))).setpoint
    resumed = owner_watch(site, msg.revision, heartbeat_ms=300)
    got = await next_event(resumed)
    assert (got.event, got.setpoint.id) == (E.SETPOINT_EVENT_REQUESTED, sp4.id)
    got = await next_event(resumed, timeout=3)
    assert (got.event, got.setpoint.id) == (E.SETPOINT_EVENT_EXPIRED, sp4.id)
    hb = await asyncio.wait_for(resumed.read(), 2)
    assert hb.heartbeat and hb.event == E.SETPOINT_EVENT_UNSPECIFIED
    assert not hb.HasField("setpoint") and hb.revision == core.state.db.revision
    resumed.cancel()


async def test_owner_that_fell_behind_gets_the_latest_event_per_name(site, core):
    await declare(site, "ess/P_set")
    agent = site.stubs("lessag")
    start = core.state.db.revision
    await agent.control.RequestSetpoint(request(1))
    latest = (await agent.control.RequestSetpoint(request(2))).setpoint
    owner = owner_watch(site, start)
    msg = await next_event(owner)
    assert (msg.setpoint.id, msg.setpoint.value.double_value) == (latest.id, 2)
    with pytest.raises(TimeoutError):
        await next_event(owner, timeout=0.3)
    owner.cancel()


async def test_compacted_revisions_on_both_streams(site):
    core = Core(site.config(watch_backlog=4))
    await core.start()
    try:
        await declare(site, "ess/P_set")
        agent = site.stubs("lessag")
        first = (await agent.control.RequestSetpoint(request(0))).setpoint.revision
        for i in range(5):  # each supersedes the previous one: two log entries per request
            await agent.control.RequestSetpoint(request(i + 1))
        for stream in (
            owner_watch(site, first),
            agent.control.WatchSetpointOutcomes(
                pb.WatchSetpointOutcomesRequest(start_revision=first)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stream.read()
            assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert error_reason(info.value) == "REVISION_COMPACTED"
        # The advice holds: from 0 there is a snapshot, with the latest request in force.
        snap = await agent.control.WatchSetpointOutcomes(pb.WatchSetpointOutcomesRequest()).read()
        assert [sp.value.double_value for sp in snap.setpoints] == [5]
        last = snap.revision
    finally:
        await core.stop(grace=0.1)
    # Setpoints do not survive a restart: every revision from before it is compacted.
    core = Core(site.config())
    await core.start()
    try:
        for stream in (
            owner_watch(site, last),
            site.stubs("lessag").control.WatchSetpointOutcomes(
                pb.WatchSetpointOutcomesRequest(start_revision=last)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stream.read()
            assert error_reason(info.value) == "REVISION_COMPACTED"
    finally:
        await core.stop(grace=0.1)


async def test_after_a_restart_the_setpoint_points_are_stale(site):
    core = Core(site.config())
    await core.start()
    try:
        await declare(site, "ess/P_set", "ess/P")
        sp = (await site.stubs("lessag").control.RequestSetpoint(request(1500))).setpoint
        await site.stubs("ess").control.ReportSetpoint(
            pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
        )
        await site.stubs("ess").points.WritePoints(
            spb.WritePointsRequest(
                samples=[ppb.PointSample(name="ess/P", value=ppb.Value(double_value=1480))]
            )
        )
    finally:
        await core.stop(grace=0.1)
    # Setpoints are not kept, so after a restart nothing is in force: the value stays, STALE.
    core = Core(site.config())
    await core.start()
    try:
        got = await site.stubs("gui").points.GetPoints(
            spb.GetPointsRequest(names=["ess/P_set", "ess/P"])
        )
        assert [(p.name, p.value.double_value, p.quality) for p in got.points] == [
            ("ess/P_set", 1500, ppb.QUALITY_STALE),
            ("ess/P", 1480, ppb.QUALITY_GOOD),  # a measurement is not a setpoint
        ]
    finally:
        await core.stop(grace=0.1)
