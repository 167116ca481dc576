"""ControlService: request -> owner receives -> report -> requester sees the status; expiry,
supersession, re-delivery to a restarted owner, and the audit trail of it all."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from smx.client import error_reason
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records

LESSAG = "spiffe://test-site/untrusted/lessag"
ESS = "spiffe://test-site/trusted/ess"
CORE = "spiffe://test-site/trusted/smxcore"


@pytest.fixture(autouse=True)
async def declared(site, core):
    """The battery extension owns ess/P_set: only a declared point can take setpoints."""
    await site.stubs("ess").points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[ppb.PointMetadata(name="ess/P_set", unit="W", kind=ppb.VALUE_KIND_DOUBLE)]
        )
    )


def request(value: float, seconds: float = 60, name: str = "ess/P_set"):
    d = Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return pb.RequestSetpointRequest(name=name, value=ppb.Value(double_value=value), valid_for=d)


async def test_request_deliver_report_and_status(site, core):
    owner = site.stubs("ess").control.WatchSetpoints(pb.WatchSetpointsRequest())
    agent = site.stubs("lessag")
    sp = (await agent.control.RequestSetpoint(request(3000))).setpoint
    assert sp.status == pb.SETPOINT_STATUS_PENDING and sp.requester == LESSAG
    msg = await asyncio.wait_for(owner.read(), 5)
    assert msg.event == pb.SETPOINT_EVENT_REQUESTED
    assert (msg.setpoint.id, msg.setpoint.value.double_value) == (sp.id, 3000)

    ess = site.stubs("ess")
    rep = await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(
            id=sp.id,
            status=pb.SETPOINT_STATUS_CLAMPED,
            applied_value=ppb.Value(double_value=2500),
            reason="inverter limit 2.5 kW",
        )
    )
    assert rep.setpoint.status == pb.SETPOINT_STATUS_CLAMPED
    # The requester sees the outcome, by name and by id, without any read right on ess/*.
    for req in (pb.GetSetpointRequest(name="ess/P_set"), pb.GetSetpointRequest(id=sp.id)):
        got = (await agent.control.GetSetpoint(req)).setpoint
        assert got.status == pb.SETPOINT_STATUS_CLAMPED
        assert got.applied_value.double_value == 2500
        assert got.reporter == ESS and got.reason == "inverter limit 2.5 kW"
    # What is in force is a point too.
    (p,) = (
        await site.stubs("gui").points.GetPoints(spb.GetPointsRequest(names=["ess/P_set"]))
    ).points
    assert p.value.double_value == 2500 and p.writer == ESS
    owner.cancel()

    audit = await audit_records(site.stubs("admin"), point_pattern="ess/P_set")
    kinds = [(r.kind, r.identity, r.reason) for r in audit]
    assert ("setpoint_request", LESSAG, "PENDING") in kinds
    assert ("setpoint_report", ESS, "CLAMPED") in kinds


async def test_rejected_and_applied_reports(site, core):
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    sp = (await agent.control.RequestSetpoint(request(-99999))).setpoint
    with pytest.raises(grpc.aio.AioRpcError) as info:  # a rejection needs a reason
        await ess.control.ReportSetpoint(
            pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_REJECTED)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(
            id=sp.id, status=pb.SETPOINT_STATUS_REJECTED, reason="battery in maintenance"
        )
    )
    got = (await agent.control.GetSetpoint(pb.GetSetpointRequest(id=sp.id))).setpoint
    assert got.status == pb.SETPOINT_STATUS_REJECTED and got.reason == "battery in maintenance"
    # A rejected setpoint cannot be revived.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ess.control.ReportSetpoint(
            pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
        )
    assert error_reason(info.value) == "SETPOINT_NOT_PENDING"

    sp = (await agent.control.RequestSetpoint(request(1000))).setpoint
    rep = await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    assert rep.setpoint.applied_value.double_value == 1000


async def test_newer_request_supersedes_pending_one(site, core):
    agent = site.stubs("lessag")
    old = (await agent.control.RequestSetpoint(request(1))).setpoint
    new = (await agent.control.RequestSetpoint(request(2))).setpoint
    got = (await agent.control.GetSetpoint(pb.GetSetpointRequest(id=old.id))).setpoint
    assert got.status == pb.SETPOINT_STATUS_SUPERSEDED
    # An owner that connects now gets only the newer one.
    owner = site.stubs("ess").control.WatchSetpoints(pb.WatchSetpointsRequest())
    msg = await asyncio.wait_for(owner.read(), 5)
    assert msg.setpoint.id == new.id
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(owner.read(), 0.3)
    owner.cancel()


async def test_setpoint_expires_and_owner_is_told(site, core):
    owner = site.stubs("ess").control.WatchSetpoints(pb.WatchSetpointsRequest())
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    sp = (await agent.control.RequestSetpoint(request(500, seconds=1))).setpoint
    assert (await asyncio.wait_for(owner.read(), 5)).event == pb.SETPOINT_EVENT_REQUESTED
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    msg = await asyncio.wait_for(owner.read(), 3)
    assert msg.event == pb.SETPOINT_EVENT_EXPIRED and msg.setpoint.id == sp.id
    got = (await agent.control.GetSetpoint(pb.GetSetpointRequest(id=sp.id))).setpoint
    assert got.status == pb.SETPOINT_STATUS_EXPIRED
    audit = await audit_records(site.stubs("admin"), kind="setpoint_expired")
    assert [r.point for r in audit] == ["ess/P_set"]
    owner.cancel()


async def test_restarted_owner_receives_the_setpoint_in_force(site, core):
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    sp = (await agent.control.RequestSetpoint(request(700))).setpoint
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    owner = site.stubs("ess").control.WatchSetpoints(pb.WatchSetpointsRequest())
    msg = await asyncio.wait_for(owner.read(), 5)
    assert msg.setpoint.id == sp.id and msg.setpoint.status == pb.SETPOINT_STATUS_APPLIED
    owner.cancel()


async def test_valid_for_bounds_and_missing_value(site, core):
    agent = site.stubs("lessag")
    for req in (
        request(1, seconds=0.5),
        request(1, seconds=90_000),
        pb.RequestSetpointRequest(name="ess/P_set", valid_for=Duration(seconds=10)),
        pb.RequestSetpointRequest(name="ess/P_set", value=ppb.Value(double_value=1)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agent.control.RequestSetpoint(req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_setpoint_is_not_found(site, core):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await site.stubs("ess").control.ReportSetpoint(
            pb.ReportSetpointRequest(id="nope", status=pb.SETPOINT_STATUS_APPLIED)
        )
    assert error_reason(info.value) == "SETPOINT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await site.stubs("gui").control.GetSetpoint(pb.GetSetpointRequest(name="ess/P_set"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rejected_newer_request_makes_the_owner_fall_back(site, core):
    # sp1 is applied; sp2 supersedes it and is rejected: nothing is in force any more, so the
    # owner must be told to fall back (not keep running sp1 silently).
    owner = site.stubs("ess").control.WatchSetpoints(pb.WatchSetpointsRequest())
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    sp1 = (await agent.control.RequestSetpoint(request(3000))).setpoint
    assert (await asyncio.wait_for(owner.read(), 5)).setpoint.id == sp1.id
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp1.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    sp2 = (await agent.control.RequestSetpoint(request(-50000))).setpoint
    assert (await asyncio.wait_for(owner.read(), 5)).setpoint.id == sp2.id
    got = (await agent.control.GetSetpoint(pb.GetSetpointRequest(id=sp1.id))).setpoint
    assert got.status == pb.SETPOINT_STATUS_SUPERSEDED
    # A late report of the superseded setpoint cannot overwrite what is in force.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ess.control.ReportSetpoint(
            pb.ReportSetpointRequest(id=sp1.id, status=pb.SETPOINT_STATUS_APPLIED)
        )
    assert error_reason(info.value) == "SETPOINT_NOT_PENDING"
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp2.id, status=pb.SETPOINT_STATUS_REJECTED, reason="limit")
    )
    msg = await asyncio.wait_for(owner.read(), 5)
    assert (msg.event, msg.setpoint.id) == (pb.SETPOINT_EVENT_EXPIRED, sp1.id)
    # The point still holds sp1's value, which the device no longer runs: STALE.
    assert await setpoint_point(site) == (3000, ppb.QUALITY_STALE, CORE)
    owner.cancel()


async def test_the_setpoint_point_is_stale_once_nothing_is_in_force(site, core):
    # A GUI showed a battery setpoint as current long after it expired.
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    sp = (await agent.control.RequestSetpoint(request(500, seconds=1))).setpoint
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    assert await setpoint_point(site) == (500, ppb.QUALITY_GOOD, ESS)
    watch = site.stubs("gui").points.WatchPoints(spb.WatchPointsRequest(patterns=["ess/P_set"]))
    await asyncio.wait_for(watch.read(), 5)  # the snapshot
    change = await asyncio.wait_for(watch.read(), 3)  # at the expiry, 1 s later
    (p,) = change.points
    assert (p.value.double_value, p.quality, p.writer) == (500, ppb.QUALITY_STALE, CORE)
    watch.cancel()

    # Applied again: current again. Then the owner finds it does not run it after all.
    sp = (await agent.control.RequestSetpoint(request(700))).setpoint
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    assert await setpoint_point(site) == (700, ppb.QUALITY_GOOD, ESS)
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_REJECTED, reason="tripped")
    )
    assert await setpoint_point(site) == (700, ppb.QUALITY_STALE, CORE)


async def setpoint_point(site) -> tuple[float, int, str]:
    (p,) = (
        await site.stubs("gui").points.GetPoints(spb.GetPointsRequest(names=["ess/P_set"]))
    ).points
    return p.value.double_value, p.quality, p.writer


async def test_applied_setpoint_expiring_under_a_pending_newer_one_is_announced(site, core):
    owner = site.stubs("ess").control.WatchSetpoints(pb.WatchSetpointsRequest())
    agent, ess = site.stubs("lessag"), site.stubs("ess")
    sp1 = (await agent.control.RequestSetpoint(request(1000, seconds=1))).setpoint
    await asyncio.wait_for(owner.read(), 5)
    await ess.control.ReportSetpoint(
        pb.ReportSetpointRequest(id=sp1.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    sp2 = (await agent.control.RequestSetpoint(request(2000))).setpoint
    assert (await asyncio.wait_for(owner.read(), 5)).setpoint.id == sp2.id
    # The owner has not answered sp2 when sp1's time is up: it is told sp1 expired.
    msg = await asyncio.wait_for(owner.read(), 3)
    assert (msg.event, msg.setpoint.id) == (pb.SETPOINT_EVENT_EXPIRED, sp1.id)
    owner.cancel()


async def test_a_retry_with_the_same_request_key_changes_nothing(site, core):
    agent = site.stubs("lessag")
    keyed = request(1000)
    keyed.request_key = "local-7f3a"
    first = (await agent.control.RequestSetpoint(keyed)).setpoint
    assert first.request_key == "local-7f3a"
    await site.stubs("ess").control.ReportSetpoint(
        pb.ReportSetpointRequest(id=first.id, status=pb.SETPOINT_STATUS_APPLIED)
    )
    # A reply lost, the requester asks again: the same setpoint, as it is now, nothing new.
    again = (await agent.control.RequestSetpoint(keyed)).setpoint
    assert (again.id, again.status) == (first.id, pb.SETPOINT_STATUS_APPLIED)
    requests = await audit_records(site.stubs("admin"), kind="setpoint_request")
    assert len(requests) == 1
    # Superseded by someone else meanwhile: the retry says so instead of running it again.
    await agent.control.RequestSetpoint(request(2000))
    late = (await agent.control.RequestSetpoint(keyed)).setpoint
    assert (late.id, late.status) == (first.id, pb.SETPOINT_STATUS_SUPERSEDED)
    # The key names one request: another value under it is a mistake.
    other = request(1500)
    other.request_key = "local-7f3a"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.control.RequestSetpoint(other)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_key 'local-7f3a' was used for another request" in err.value.details()
    # Keys are per requester: another client's equal key is its own request.
    theirs = (await site.stubs("admin").control.RequestSetpoint(keyed)).setpoint
    assert theirs.id != first.id
    too_long = request(1)
    too_long.request_key = "k" * 65
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.control.RequestSetpoint(too_long)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
