"""Setpoints: requested by a controller, applied and reported by the owning extension.

One setpoint is current per point name; a newer request supersedes it. Every change is stored
under a new revision and appended to the board's `SetpointLog`, from which owners learn of
requests and expiries (WatchSetpoints) and requesters of outcomes (WatchSetpointOutcomes).
"""

from __future__ import annotations

import heapq
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable

from smx.setpoint_status import (
    APPLIED_NOW_CODES,
    IN_FORCE_CODES,
    MAX_VALID_S,
    MIN_VALID_S,
    OWNER_REPORT_CODES,
    status_name,
)
from smx.timestamps import ms_to_ts, now_ms, ts_to_ms
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2
from trusted.core.errors import CoreError
from trusted.core.setpoint_log import Revisions, SetpointLog

__all__ = ["SetpointBoard"]

log = logging.getLogger(__name__)

# Finished setpoints kept for GetSetpoint by id.
KEEP_FINISHED = 10_000
MAX_REQUEST_KEY = 64


_NO_EVENT = pb.SETPOINT_EVENT_UNSPECIFIED


class SetpointBoard:
    def __init__(
        self,
        revisions: Revisions,
        *,
        backlog: int = 20_000,
        on_change: Callable[[str, pb.Setpoint], None] | None = None,
        on_end: Callable[[str], object] | None = None,
    ) -> None:
        self.revisions = revisions
        self.log = SetpointLog(revisions, backlog)
        # on_change(kind, setpoint) is told of every transition (the core audits them).
        self._on_change = on_change or (lambda kind, sp: None)
        # on_end(name): nothing is in force for the point any more (the device falls back), so
        # the value last applied, which its point still holds, is not what the device runs.
        self._on_end = on_end or (lambda name: None)
        self._by_id: OrderedDict[str, pb.Setpoint] = OrderedDict()
        self._current: dict[str, str] = {}  # name -> id of the current setpoint
        # name -> the setpoint the owner last applied; it stays in force for the device until
        # it expires or a newer one is applied, even when a newer request supersedes it.
        self._in_force: dict[str, pb.Setpoint] = {}
        self._expiries: list[tuple[int, str]] = []
        # (requester, request_key) -> id: a retried request gets the setpoint it created.
        self._by_key: dict[tuple[str, str], str] = {}

    def request(
        self,
        requester: str,
        name: str,
        value: point_pb2.Value,
        valid_for_s: float,
        request_key: str = "",
    ) -> pb.Setpoint:
        if value.WhichOneof("kind") is None:
            raise CoreError("INVALID_ARGUMENT", "setpoint value is missing")
        if len(request_key) > MAX_REQUEST_KEY:
            raise CoreError(
                "INVALID_ARGUMENT", f"request_key is longer than {MAX_REQUEST_KEY} characters"
            )
        if request_key:
            earlier = self._by_id.get(self._by_key.get((requester, request_key), ""))
            if earlier is not None:
                if earlier.name != name or earlier.value != value:
                    raise CoreError(
                        "INVALID_ARGUMENT",
                        f"request_key {request_key!r} was used for another request "
                        f"({earlier.name})",
                        point=name,
                    )
                return earlier  # a retry: nothing changes
        if not MIN_VALID_S <= valid_for_s <= MAX_VALID_S:
            raise CoreError(
                "INVALID_ARGUMENT",
                f"valid_for must be between {MIN_VALID_S:g} s and {MAX_VALID_S:g} s,"
                f" got {valid_for_s:g} s",
            )
        now = now_ms()
        revision = self.revisions.next_revision()
        previous = self.current(name)
        if previous is not None and previous.status in IN_FORCE_CODES:
            previous.status = pb.SETPOINT_STATUS_SUPERSEDED
            self._changed(revision, previous, _NO_EVENT)
            self._on_change("setpoint_superseded", previous)
        sp = pb.Setpoint(
            id=uuid.uuid4().hex,
            name=name,
            value=value,
            requester=requester,
            request_time=ms_to_ts(now),
            expire_time=ms_to_ts(now + int(valid_for_s * 1000)),
            status=pb.SETPOINT_STATUS_PENDING,
            request_key=request_key,
        )
        if request_key:
            self._by_key[(requester, request_key)] = sp.id
        self._by_id[sp.id] = sp
        self._current[name] = sp.id
        heapq.heappush(self._expiries, (ts_to_ms(sp.expire_time), sp.id))
        self._trim()
        self._changed(revision, sp, pb.SETPOINT_EVENT_REQUESTED)
        self._on_change("setpoint_request", sp)
        return sp

    def report(
        self,
        reporter: str,
        setpoint_id: str,
        status: pb.SetpointStatus,
        applied_value: point_pb2.Value | None,
        reason: str,
    ) -> pb.Setpoint:
        sp = self._by_id.get(setpoint_id)
        if sp is None:
            raise CoreError("SETPOINT_NOT_FOUND", f"no setpoint with id {setpoint_id!r}")
        if status not in OWNER_REPORT_CODES:
            raise CoreError(
                "INVALID_ARGUMENT", "status must be APPLIED, CLAMPED, REJECTED or UNCONFIRMED"
            )
        # An owner may report again (e.g. after a restart it re-applies), but not revive a
        # setpoint that expired, was superseded or rejected.
        if sp.status not in IN_FORCE_CODES:
            raise CoreError(
                "SETPOINT_NOT_PENDING",
                f"setpoint {setpoint_id} is {pb.SetpointStatus.Name(sp.status)}",
                status=pb.SetpointStatus.Name(sp.status),
            )
        given = applied_value if applied_value and applied_value.WhichOneof("kind") else None
        if status == pb.SETPOINT_STATUS_CLAMPED and given is None:
            raise CoreError("INVALID_ARGUMENT", "CLAMPED needs applied_value")
        if status in (pb.SETPOINT_STATUS_REJECTED, pb.SETPOINT_STATUS_UNCONFIRMED) and not reason:
            raise CoreError("INVALID_ARGUMENT", f"{status_name(status)} needs a reason")
        if (
            sp.status == status
            and sp.reason == reason
            and sp.reporter == reporter
            and (given is None or sp.applied_value == given)
        ):
            return sp  # said already: no revision, no log entry, no audit record
        revision = self.revisions.next_revision()
        sp.status = status
        sp.reason = reason
        sp.reporter = reporter
        sp.report_time.CopyFrom(ms_to_ts(now_ms()))
        sp.ClearField("applied_value")
        if status == pb.SETPOINT_STATUS_APPLIED:
            sp.applied_value.CopyFrom(given or sp.value)
        elif status == pb.SETPOINT_STATUS_CLAMPED and given is not None:
            sp.applied_value.CopyFrom(given)
        self._changed(revision, sp, _NO_EVENT)
        self._on_change("setpoint_report", sp)
        old = self._in_force.get(sp.name)
        if status == pb.SETPOINT_STATUS_REJECTED:
            if old is not None and old.id != sp.id:
                # The newer request replaced what the device runs and was refused: nothing
                # is in force any more, so the owner falls back.
                del self._in_force[sp.name]
                self._tell_owner(revision, old, pb.SETPOINT_EVENT_EXPIRED)
                self._on_end(sp.name)
            elif old is not None:
                # Reported applied (or unconfirmed) before, now known not to run: not in force.
                del self._in_force[sp.name]
                self._on_end(sp.name)
        else:
            self._in_force[sp.name] = sp
        return sp

    def get(self, *, name: str = "", setpoint_id: str = "") -> pb.Setpoint:
        sp = self._by_id.get(setpoint_id) if setpoint_id else self.current(name)
        if sp is None:
            raise CoreError("SETPOINT_NOT_FOUND", f"no setpoint for {setpoint_id or name!r}")
        return sp

    def current(self, name: str) -> pb.Setpoint | None:
        sid = self._current.get(name)
        return self._by_id.get(sid) if sid else None

    def expire(self, now: int | None = None) -> list[pb.Setpoint]:
        """Expire every active setpoint whose time is up; owners are told to fall back."""
        now = now_ms() if now is None else now
        expired = []
        revision = 0  # one revision for everything that expires at once, taken when needed
        while self._expiries and self._expiries[0][0] <= now:
            _, sid = heapq.heappop(self._expiries)
            sp = self._by_id.get(sid)
            if sp is None:
                continue
            in_force = self._in_force.get(sp.name)
            running = in_force is not None and in_force.id == sid
            if running:
                del self._in_force[sp.name]
            # Tell the owner to fall back when what expires is what it should be running:
            # the current setpoint, or the one it applied while a newer one is not applied.
            current = self.current(sp.name)
            fall_back = self._current.get(sp.name) == sid or (
                running and (current is None or current.status not in APPLIED_NOW_CODES)
            )
            if sp.status not in IN_FORCE_CODES and not fall_back:
                continue
            revision = revision or self.revisions.next_revision()
            event = pb.SETPOINT_EVENT_EXPIRED if fall_back else _NO_EVENT
            if sp.status in IN_FORCE_CODES:
                if sp.status == pb.SETPOINT_STATUS_UNCONFIRMED:
                    # The owner never learned whether it ran: say so, the requester must not
                    # read EXPIRED as "it ran until now".
                    sp.reason = f"expired before its outcome was confirmed ({sp.reason})"
                sp.status = pb.SETPOINT_STATUS_EXPIRED
                expired.append(sp)
                self._changed(revision, sp, event)
                self._on_change("setpoint_expired", sp)
            else:
                self._tell_owner(revision, sp, event)
            if fall_back:
                self._on_end(sp.name)
        return expired

    def next_expiry_ms(self) -> int | None:
        return self._expiries[0][0] if self._expiries else None

    def in_force(self) -> list[pb.Setpoint]:
        """The current setpoint of every name while it is still active (PENDING, APPLIED,
        CLAMPED): what an owner must run, and what a requester's watch starts with."""
        found = (self._by_id.get(sid) for sid in self._current.values())
        return [sp for sp in found if sp is not None and sp.status in IN_FORCE_CODES]

    def _changed(self, revision: int, sp: pb.Setpoint, event: pb.SetpointEvent) -> None:
        """`sp` changed under `revision`: its requester follows it, and `event` (if any) is
        what its owner must do."""
        sp.revision = revision
        self.log.append(revision, sp, outcome=True, event=event)

    def _tell_owner(self, revision: int, sp: pb.Setpoint, event: pb.SetpointEvent) -> None:
        """An event for the owner about a setpoint whose own status does not change (the one
        the device runs, already superseded, must end)."""
        self.log.append(revision, sp, outcome=False, event=event)

    def _trim(self) -> None:
        """Forget the oldest setpoints beyond KEEP_FINISHED, in constant time per request;
        current and in-force ones are kept (there is at most one of each per declared point)."""
        for _ in range(len(self._by_id) - KEEP_FINISHED):
            sid, sp = next(iter(self._by_id.items()))
            in_force = self._in_force.get(sp.name)
            if self._current.get(sp.name) == sid or (in_force is not None and in_force.id == sid):
                self._by_id.move_to_end(sid)
                break  # retry at the next request; the rest are newer
            del self._by_id[sid]
            if sp.request_key:
                self._by_key.pop((sp.requester, sp.request_key), None)
