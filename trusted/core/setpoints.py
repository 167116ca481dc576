"""Setpoints: requested by a controller, applied and reported by the owning extension.

One setpoint is current per point name; a newer request supersedes it. The owner learns of
requests and expiries through `SetpointWatcher`s, which, like point watchers, keep only the
latest event per name, so a slow owner never blocks a requester.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable

from smx.timestamps import ms_to_ts, now_ms, ts_to_ms
from smx.v1 import control_service_pb2 as pb
from smx.v1 import point_pb2
from trusted.core.errors import CoreError

__all__ = ["SetpointBoard", "SetpointWatcher", "ACTIVE"]

log = logging.getLogger(__name__)

APPLIED_NOW = frozenset({pb.SETPOINT_STATUS_APPLIED, pb.SETPOINT_STATUS_CLAMPED})
ACTIVE = frozenset(
    {pb.SETPOINT_STATUS_PENDING, pb.SETPOINT_STATUS_APPLIED, pb.SETPOINT_STATUS_CLAMPED}
)
REPORTABLE = frozenset(
    {pb.SETPOINT_STATUS_APPLIED, pb.SETPOINT_STATUS_CLAMPED, pb.SETPOINT_STATUS_REJECTED}
)
MIN_VALID_S, MAX_VALID_S = 1.0, 24 * 3600.0
# Finished setpoints kept for GetSetpoint by id.
KEEP_FINISHED = 10_000


class SetpointWatcher:
    __slots__ = ("match", "pending", "event")

    def __init__(self, match: Callable[[str], bool]) -> None:
        self.match = match
        self.pending: dict[str, tuple[pb.SetpointEvent, pb.Setpoint]] = {}
        self.event = asyncio.Event()

    def offer(self, event: pb.SetpointEvent, setpoint: pb.Setpoint) -> None:
        self.pending.pop(setpoint.name, None)
        self.pending[setpoint.name] = (event, setpoint)
        self.event.set()

    def take(self) -> list[tuple[pb.SetpointEvent, pb.Setpoint]]:
        items = list(self.pending.values())
        self.pending.clear()
        self.event.clear()
        return items


class SetpointBoard:
    def __init__(self, *, on_change: Callable[[str, pb.Setpoint], None] | None = None) -> None:
        # on_change(kind, setpoint) is told of every transition (the core audits them).
        self._on_change = on_change or (lambda kind, sp: None)
        self._by_id: OrderedDict[str, pb.Setpoint] = OrderedDict()
        self._current: dict[str, str] = {}  # name -> id of the current setpoint
        # name -> the setpoint the owner last applied; it stays in force for the device until
        # it expires or a newer one is applied, even when a newer request supersedes it.
        self._in_force: dict[str, pb.Setpoint] = {}
        self._expiries: list[tuple[int, str]] = []
        self._watchers: set[SetpointWatcher] = set()

    def request(
        self, requester: str, name: str, value: point_pb2.Value, valid_for_s: float
    ) -> pb.Setpoint:
        if value.WhichOneof("kind") is None:
            raise CoreError("INVALID_ARGUMENT", "setpoint value is missing")
        if not MIN_VALID_S <= valid_for_s <= MAX_VALID_S:
            raise CoreError(
                "INVALID_ARGUMENT",
                f"valid_for must be between {MIN_VALID_S:g} s and {MAX_VALID_S:g} s,"
                f" got {valid_for_s:g} s",
            )
        now = now_ms()
        previous = self.current(name)
        if previous is not None and previous.status in ACTIVE:
            previous.status = pb.SETPOINT_STATUS_SUPERSEDED
            self._on_change("setpoint_superseded", previous)
        sp = pb.Setpoint(
            id=uuid.uuid4().hex,
            name=name,
            value=value,
            requester=requester,
            request_time=ms_to_ts(now),
            expire_time=ms_to_ts(now + int(valid_for_s * 1000)),
            status=pb.SETPOINT_STATUS_PENDING,
        )
        self._by_id[sp.id] = sp
        self._current[name] = sp.id
        heapq.heappush(self._expiries, (ts_to_ms(sp.expire_time), sp.id))
        self._trim()
        self._on_change("setpoint_request", sp)
        self._notify(pb.SETPOINT_EVENT_REQUESTED, sp)
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
        if status not in REPORTABLE:
            raise CoreError("INVALID_ARGUMENT", "status must be APPLIED, CLAMPED or REJECTED")
        # An owner may report again (e.g. after a restart it re-applies), but not revive a
        # setpoint that expired, was superseded or rejected.
        if sp.status not in ACTIVE:
            raise CoreError(
                "SETPOINT_NOT_PENDING",
                f"setpoint {setpoint_id} is {pb.SetpointStatus.Name(sp.status)}",
                status=pb.SetpointStatus.Name(sp.status),
            )
        given = applied_value if applied_value and applied_value.WhichOneof("kind") else None
        if status == pb.SETPOINT_STATUS_CLAMPED and given is None:
            raise CoreError("INVALID_ARGUMENT", "CLAMPED needs applied_value")
        if status == pb.SETPOINT_STATUS_REJECTED and not reason:
            raise CoreError("INVALID_ARGUMENT", "REJECTED needs a reason")
        sp.status = status
        sp.reason = reason
        sp.reporter = reporter
        sp.report_time.CopyFrom(ms_to_ts(now_ms()))
        sp.ClearField("applied_value")
        if status == pb.SETPOINT_STATUS_APPLIED:
            sp.applied_value.CopyFrom(given or sp.value)
        elif status == pb.SETPOINT_STATUS_CLAMPED and given is not None:
            sp.applied_value.CopyFrom(given)
        self._on_change("setpoint_report", sp)
        old = self._in_force.get(sp.name)
        if status == pb.SETPOINT_STATUS_REJECTED:
            if old is not None and old.id != sp.id:
                # The newer request replaced what the device runs and was refused: nothing
                # is in force any more, so the owner falls back.
                del self._in_force[sp.name]
                self._notify(pb.SETPOINT_EVENT_EXPIRED, old)
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
        while self._expiries and self._expiries[0][0] <= now:
            _, sid = heapq.heappop(self._expiries)
            sp = self._by_id.get(sid)
            if sp is None:
                continue
            if sp.status in ACTIVE:
                sp.status = pb.SETPOINT_STATUS_EXPIRED
                expired.append(sp)
                self._on_change("setpoint_expired", sp)
            in_force = self._in_force.get(sp.name)
            if in_force is not None and in_force.id == sid:
                del self._in_force[sp.name]
            # Tell the owner to fall back when what expires is what it should be running:
            # the current setpoint, or the one it applied while a newer one is not applied.
            current = self.current(sp.name)
            running = in_force is not None and in_force.id == sid
            if self._current.get(sp.name) == sid or (
                running and (current is None or current.status not in APPLIED_NOW)
            ):
                self._notify(pb.SETPOINT_EVENT_EXPIRED, sp)
        return expired

    def next_expiry_ms(self) -> int | None:
        return self._expiries[0][0] if self._expiries else None

    def watch(self, match: Callable[[str], bool]) -> SetpointWatcher:
        """A watcher that first holds every current, still-active setpoint it matches: an
        owner that restarts re-applies what is in force."""
        watcher = SetpointWatcher(match)
        for name, sid in self._current.items():
            sp = self._by_id.get(sid)
            if sp is not None and sp.status in ACTIVE and match(name):
                watcher.offer(pb.SETPOINT_EVENT_REQUESTED, sp)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: SetpointWatcher) -> None:
        self._watchers.discard(watcher)

    def _notify(self, event: pb.SetpointEvent, sp: pb.Setpoint) -> None:
        for w in self._watchers:
            if w.match(sp.name):
                w.offer(event, sp)

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
