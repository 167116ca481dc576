"""ControlService: setpoint requests, their delivery to the owner, reports, status, outcomes.

The edge has already checked that the caller holds the method's verb on some point; each
handler checks the names it touches with `caller.require` / `caller.may` (same verb).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

from smx.setpoint_status import MAX_REASON
from smx.timestamps import duration_s
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2
from smx.values import KIND_OF_FIELD
from trusted.core.auth import Caller
from trusted.core.errors import CoreError
from trusted.core.rate_limit import TokenBuckets
from trusted.core.services.fields import check_patterns, globs, heartbeat_s, point_name
from trusted.core.services.setpoint_watch import outcome_stream, owner_stream
from trusted.core.state import CoreState

__all__ = ["ControlService"]

# Setpoint requests per requester: a controller sends a few per minute; this leaves room for
# bursts (a schedule pushed at once) while keeping a runaway client from flooding the audit log.
REQUEST_RATE = 5.0
REQUEST_BURST = 50
# A setpoint is a value for a device, not a document: a longer string is refused, because every
# request is kept in memory (the setpoint table and log) and written to the audit log.
MAX_SETPOINT_STRING = 256
# Reports per owner: one per request and a correction or two; the rest is a flood (each report
# costs a revision, a log entry and an audit record).
REPORT_RATE = 20.0
REPORT_BURST = 200


class ControlService:
    def __init__(self, state: CoreState) -> None:
        self.s = state
        self.requests = TokenBuckets(REQUEST_RATE, REQUEST_BURST)
        self.reports = TokenBuckets(REPORT_RATE, REPORT_BURST)

    async def RequestSetpoint(self, req: pb.RequestSetpointRequest, caller: Caller, ctx: object):
        name = point_name(req.name)
        caller.require(name)
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
        _check_value(name, req.value, self.s.db.meta[name].kind)
        sp = self.s.board.request(
            caller.uri, name, req.value, duration_s(req.valid_for), req.request_key
        )
        self.s.wake_expiry()
        return pb.RequestSetpointResponse(setpoint=sp)

    async def WatchSetpoints(
        self, req: pb.WatchSetpointsRequest, caller: Caller, ctx: object
    ) -> AsyncIterator[pb.WatchSetpointsResponse]:
        check_patterns(req.patterns)
        wanted, heartbeat = globs(req.patterns), heartbeat_s(req)

        def match(name: str) -> bool:
            return wanted.match(name) and caller.may(name)

        stream = owner_stream(self.s.board, match, req.start_revision, heartbeat)
        async with contextlib.aclosing(stream):  # the log forgets the stream when it ends
            async for msg in stream:
                yield msg

    async def WatchSetpointOutcomes(
        self, req: pb.WatchSetpointOutcomesRequest, caller: Caller, ctx: object
    ) -> AsyncIterator[pb.WatchSetpointOutcomesResponse]:
        check_patterns(req.patterns)
        wanted, heartbeat = globs(req.patterns), heartbeat_s(req)

        def match(name: str) -> bool:
            # Only names the caller may (still) request: a policy reload applies at once.
            return wanted.match(name) and caller.may(name)

        stream = outcome_stream(self.s.board, match, caller.uri, req.start_revision, heartbeat)
        async with contextlib.aclosing(stream):
            async for msg in stream:
                yield msg

    async def ReportSetpoint(self, req: pb.ReportSetpointRequest, caller: Caller, ctx: object):
        sp = self.s.board.get(setpoint_id=req.id)
        caller.require(sp.name)
        if len(req.reason) > MAX_REASON:
            raise CoreError(
                "INVALID_ARGUMENT",
                f"setpoint {sp.name}: reason of {len(req.reason)} characters exceeds {MAX_REASON}",
                point=sp.name,
            )
        if not self.reports.take(caller.uri):
            raise CoreError(
                "RATE_LIMITED",
                f"more than {REPORT_RATE:g} setpoint reports/s (burst {REPORT_BURST})",
                point=sp.name,
            )
        applied = req.applied_value if req.HasField("applied_value") else None
        if applied is not None and applied.WhichOneof("kind"):
            # What is in force becomes the point's value: finite, short, of the declared kind.
            meta = self.s.db.meta.get(sp.name)
            _check_value(sp.name, applied, meta.kind if meta is not None else 0)
        sp = self.s.board.report(caller.uri, req.id, req.status, applied, req.reason)
        if sp.status in (pb.SETPOINT_STATUS_APPLIED, pb.SETPOINT_STATUS_CLAMPED):
            # The setpoint point carries what is in force, so watchers and history see it.
            self.s.write_internal(
                caller.uri, [point_pb2.PointSample(name=sp.name, value=sp.applied_value)]
            )
        return pb.ReportSetpointResponse(setpoint=sp)

    async def GetSetpoint(self, req: pb.GetSetpointRequest, caller: Caller, ctx: object):
        selector = req.WhichOneof("selector")
        if selector is None or not getattr(req, selector):
            raise CoreError("INVALID_ARGUMENT", "give exactly one of name or id")
        # The requester always sees its own request; anyone else needs read on the point. By
        # name, rights are checked before the lookup, so "not found" reveals nothing either.
        name = point_name(req.name) if selector == "name" else ""
        may_read = bool(name) and caller.may(name)
        try:
            sp = self.s.board.get(name=name, setpoint_id=req.id)
        except CoreError:
            if name and not may_read:
                caller.require(name)
            raise
        if sp.requester != caller.uri and not may_read:
            caller.require(sp.name)
        return pb.GetSetpointResponse(setpoint=sp)


def _check_value(name: str, value: point_pb2.Value, declared: int) -> None:
    """A requested value must be set, of the point's declared kind, and short."""
    field = value.WhichOneof("kind")
    if field is None:
        raise CoreError("INVALID_ARGUMENT", f"setpoint {name}: no value", point=name)
    if declared and KIND_OF_FIELD[field] != declared:
        raise CoreError(
            "VALUE_KIND_MISMATCH",
            f"setpoint {name} is declared {point_pb2.ValueKind.Name(declared)}, got {field}",
            point=name,
        )
    if field == "double_value" and not math.isfinite(value.double_value):
        # A device turns NaN or infinity into whatever its clamp makes of it: refuse them.
        raise CoreError(
            "INVALID_ARGUMENT",
            f"setpoint {name}: {value.double_value} is not a finite number",
            point=name,
        )
    if field == "string_value" and len(value.string_value) > MAX_SETPOINT_STRING:
        raise CoreError(
            "INVALID_ARGUMENT",
            f"setpoint {name}: string of {len(value.string_value)} characters exceeds "
            f"{MAX_SETPOINT_STRING}",
            point=name,
        )
