"""ControlService: setpoint requests, their delivery to the owner, reports and status."""

from __future__ import annotations

from collections.abc import AsyncIterator

from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2
from trusted.auth import Caller
from trusted.convert import duration_s
from trusted.errors import CoreError
from trusted.state import CoreState

from .points import _globs, _name

__all__ = ["ControlService"]

SERVICE = "/smx.v1.ControlService/"


class ControlService:
    def __init__(self, state: CoreState) -> None:
        self.s = state

    async def RequestSetpoint(self, req: pb.RequestSetpointRequest, caller: Caller, ctx: object):
        name = _name(req.name)
        self.s.gate.check(caller, "request", SERVICE + "RequestSetpoint", name)
        if not req.HasField("valid_for"):
            raise CoreError("INVALID_ARGUMENT", "valid_for is required")
        sp = self.s.board.request(caller.uri, name, req.value, duration_s(req.valid_for))
        self.s.wake_expiry()
        return pb.RequestSetpointResponse(setpoint=sp)

    async def WatchSetpoints(
        self, req: pb.WatchSetpointsRequest, caller: Caller, ctx: object
    ) -> AsyncIterator[pb.WatchSetpointsResponse]:
        gate, ident = self.s.gate, caller.identity
        if not gate.policy.filter_for(ident, "control").patterns:
            gate.check(caller, "control", SERVICE + "WatchSetpoints")
        wanted = _globs(list(req.patterns) or ["**"])

        def match(name: str) -> bool:
            return wanted.match(name) and gate.policy.allows(ident, "control", name)

        watcher = self.s.board.watch(match)
        try:
            while True:
                await watcher.event.wait()
                for event, sp in watcher.take():
                    yield pb.WatchSetpointsResponse(event=event, setpoint=sp)
        finally:
            self.s.board.unwatch(watcher)

    async def ReportSetpoint(self, req: pb.ReportSetpointRequest, caller: Caller, ctx: object):
        sp = self.s.board.get(setpoint_id=req.id)
        self.s.gate.check(caller, "control", SERVICE + "ReportSetpoint", sp.name)
        applied = req.applied_value if req.HasField("applied_value") else None
        sp = self.s.board.report(caller.uri, req.id, req.status, applied, req.reason)
        if sp.status in (pb.SETPOINT_STATUS_APPLIED, pb.SETPOINT_STATUS_CLAMPED):
            # The setpoint point carries what is in force, so watchers and history see it.
            self.s.write_internal(
                caller.uri, [point_pb2.PointSample(name=sp.name, value=sp.applied_value)]
            )
        return pb.ReportSetpointResponse(setpoint=sp)

    async def GetSetpoint(self, req: pb.GetSetpointRequest, caller: Caller, ctx: object):
        if bool(req.name) == bool(req.id):
            raise CoreError("INVALID_ARGUMENT", "give exactly one of name or id")
        sp = self.s.board.get(name=_name(req.name) if req.name else "", setpoint_id=req.id)
        # The requester always sees its own request; anyone else needs read on the point.
        if sp.requester != caller.uri:
            self.s.gate.check(caller, "read", SERVICE + "GetSetpoint", sp.name)
        return pb.GetSetpointResponse(setpoint=sp)
