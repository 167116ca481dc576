"""ControlService: setpoint requests, their delivery to the owner, reports and status."""

from __future__ import annotations

from collections.abc import AsyncIterator

from smx.timestamps import duration_s
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2
from trusted.core.auth import Caller
from trusted.core.errors import CoreError
from trusted.core.rate_limit import TokenBuckets
from trusted.core.services.points import _globs, _name, check_patterns
from trusted.core.state import CoreState

__all__ = ["ControlService"]

SERVICE = "/smx.v1.ControlService/"
# Setpoint requests per requester: a controller sends a few per minute; this leaves room for
# bursts (a schedule pushed at once) while keeping a runaway client from flooding the audit log.
REQUEST_RATE = 5.0
REQUEST_BURST = 50


class ControlService:
    def __init__(self, state: CoreState) -> None:
        self.s = state
        self.requests = TokenBuckets(REQUEST_RATE, REQUEST_BURST)

    async def RequestSetpoint(self, req: pb.RequestSetpointRequest, caller: Caller, ctx: object):
        name = _name(req.name)
        self.s.gate.check(caller, "request", SERVICE + "RequestSetpoint", name)
        if not self.requests.take(caller.uri):
            raise CoreError(
                "RATE_LIMITED",
                f"more than {REQUEST_RATE:g} setpoint requests/s (burst {REQUEST_BURST})",
                point=name,
            )
        # Only a point some extension declared can have an owner to apply it; refusing the
        # rest also bounds what a requester can make the core remember.
        if name not in self.s.db.meta:
            raise CoreError("POINT_NOT_FOUND", f"no extension declared {name}", point=name)
        if not req.HasField("valid_for"):
            raise CoreError("INVALID_ARGUMENT", "valid_for is required")
        sp = self.s.board.request(caller.uri, name, req.value, duration_s(req.valid_for))
        self.s.wake_expiry()
        return pb.RequestSetpointResponse(setpoint=sp)

    async def WatchSetpoints(
        self, req: pb.WatchSetpointsRequest, caller: Caller, ctx: object
    ) -> AsyncIterator[pb.WatchSetpointsResponse]:
        gate, ident = self.s.gate, caller.identity
        check_patterns(req.patterns)
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
        gate, method = self.s.gate, SERVICE + "GetSetpoint"
        # The requester always sees its own request; anyone else needs read on the point. By
        # name, rights are checked before the lookup, so "not found" reveals nothing either.
        may_read = bool(req.name) and gate.policy.allows(caller.identity, "read", _name(req.name))
        try:
            sp = self.s.board.get(name=req.name, setpoint_id=req.id)
        except CoreError:
            if req.name and not may_read:
                gate.check(caller, "read", method, req.name)
            raise
        if sp.requester != caller.uri and not may_read:
            gate.check(caller, "read", method, sp.name)
        return pb.GetSetpointResponse(setpoint=sp)
