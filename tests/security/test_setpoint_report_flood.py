"""What an owner (a compromised extension, or remote_usm relaying a hostile remote's answer)
could make the core keep and write through ReportSetpoint: a reason of megabytes, or reports
over and over, each a revision, a setpoint-log entry and an audit record, until the audit log
rotated its history away and the core's memory grew by the size of the reasons. Reasons are
capped (512 characters), reports rate-limited per owner, and a report equal to the setpoint's
state changes nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records


@pytest.fixture(autouse=True)
async def declared(site, core):
    await site.stubs("ess").points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[ppb.PointMetadata(name="ess/P_set", unit="W", kind=ppb.VALUE_KIND_DOUBLE)]
        )
    )


async def a_setpoint_in_force(site) -> pb.Setpoint:
    d = Duration()
    d.FromSeconds(3600)
    req = pb.RequestSetpointRequest(
        name="ess/P_set", value=ppb.Value(double_value=1000), valid_for=d
    )
    return (await site.stubs("lessag").control.RequestSetpoint(req)).setpoint


async def test_a_report_reason_is_bounded(site, core):
    sp = await a_setpoint_in_force(site)
    huge = "x" * (3 * 1024 * 1024)
    ess = site.stubs("ess")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ess.control.ReportSetpoint(
            pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_UNCONFIRMED, reason=huge)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stored = (await ess.control.GetSetpoint(pb.GetSetpointRequest(id=sp.id))).setpoint
    assert len(stored.reason) < 4096


async def test_repeated_reports_are_limited(site, core):
    """An owner reporting the same setpoint over and over: refused past a rate, or at least not
    one audit record and one log entry each."""
    sp = await a_setpoint_in_force(site)
    ess = site.stubs("ess")
    accepted = 0
    for i in range(500):
        try:
            await ess.control.ReportSetpoint(
                pb.ReportSetpointRequest(
                    id=sp.id, status=pb.SETPOINT_STATUS_UNCONFIRMED, reason=f"still waiting {i}"
                )
            )
            accepted += 1
        except grpc.aio.AioRpcError:
            pass
    reports = await audit_records(site.stubs("admin"), kind="setpoint_report")
    entries = len(core.state.board.log._entries)
    assert accepted < 500 or len(reports) < 100, (accepted, len(reports), entries)


async def test_a_repeated_report_changes_nothing(site, core):
    sp = await a_setpoint_in_force(site)
    ess = site.stubs("ess")
    report = pb.ReportSetpointRequest(id=sp.id, status=pb.SETPOINT_STATUS_APPLIED)
    first = (await ess.control.ReportSetpoint(report)).setpoint
    again = (await ess.control.ReportSetpoint(report)).setpoint
    assert again.revision == first.revision  # no new revision, so no log entry
    reports = await audit_records(site.stubs("admin"), kind="setpoint_report")
    assert len([r for r in reports if sp.id in str(r)]) == 1
