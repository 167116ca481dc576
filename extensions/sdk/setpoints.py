"""Setpoint handlers: receive requests for the extension's own points, apply, report, and fall
back when a setpoint expires — even if the core is unreachable at that moment.

A handler is registered for an exact name (`battery/P_set`) or a glob pattern (`usm1/**/*_set`,
the core's own glob syntax, smx.names). An exact name wins over a pattern; patterns are tried
in the order they were added. Each handler has its own time limit (`timeout`): a handler still
running then has failed, the setpoint is reported REJECTED and a later answer is ignored.

Each point has its own worker (setpoint_worker): points are handled side by side, the requests
of one point in order, and a request superseded before its handler started is never applied. A
handler that answers something other than Applied, Clamped, Rejected or Unconfirmed, or a value
that is not finite, has made a mistake: the setpoint is REJECTED with a reason that says which.

An owner that passes a setpoint on to something it cannot see at once (a remote USM, a charger)
answers `Unconfirmed(reason)` when the answer does not come back in time, and reports the real
outcome later with `report_outcome` (docs/SETPOINTS.md): REJECTED means "not applied", never
"don't know".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc

from smx.aio import wait_event
from smx.client import TRANSIENT, describe_error
from smx.names import Glob
from smx.setpoint_status import MAX_REASON, status_code, status_name
from smx.timestamps import ts_to_seconds
from smx.v1 import control_service_pb2 as pb
from smx.values import from_value, to_value

from .setpoint_worker import (
    HandlerCancelled,
    NoAnswer,
    PointWorker,
    StillRunning,
    call_with_deadline,
    check_handler,
)

if TYPE_CHECKING:
    from smx.sdk import Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "Applied",
    "Clamped",
    "Rejected",
    "SetpointRequest",
    "SetpointRouter",
    "Unconfirmed",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
REFUSED_RETRY_S = 5.0
CALL_TIMEOUT = 5.0


@dataclass(frozen=True)
class SetpointRequest:
    id: str
    name: str
    value: Any
    requester: str
    expires_at: float  # unix seconds
    # The core's status when it was sent: PENDING for a new request; what the owner reported
    # before (APPLIED, UNCONFIRMED...) when it is re-sent after a restart of the extension.
    status: str = "PENDING"
    requested_at: float = 0.0  # unix seconds

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.expires_at, dt.UTC)


@dataclass(frozen=True)
class Applied:
    """Applied as requested (or as `value`, when the device rounds it)."""

    value: Any = None


@dataclass(frozen=True)
class Clamped:
    """Applied, limited to `value`."""

    value: Any
    reason: str = ""


@dataclass(frozen=True)
class Rejected:
    """Not applied: the device does not run it."""

    reason: str


@dataclass(frozen=True)
class Unconfirmed:
    """Passed on, the outcome not known yet (the device may run it): report the real one later
    with `SetpointRouter.report_outcome`."""

    reason: str


Result = Applied | Clamped | Rejected | Unconfirmed
Handler = Callable[[SetpointRequest], Awaitable[Result]]
ExpiryHandler = Callable[[SetpointRequest], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    timeout: float


class SetpointRouter:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.handlers: dict[str, Route] = {}  # exact names (declared by the Extension)
        self.pattern_handlers: dict[Glob, Route] = {}  # tried in insertion order
        self.expiry_handlers: dict[str, ExpiryHandler] = {}
        self.active: dict[str, SetpointRequest] = {}  # name -> what is in force
        self._expired_ids: set[str] = set()
        self._expiring: set[str] = set()  # handed to a worker, not yet run
        self._workers: dict[str, PointWorker] = {}  # point name -> its worker
        self._mistakes_logged: set[Handler] = set()
        self._unreported: dict[str, pb.ReportSetpointRequest] = {}
        self._reports: dict[str, pb.ReportSetpointRequest] = {}  # last report per setpoint id
        self._wake = asyncio.Event()

    def add(
        self,
        name: str,
        handler: Handler,
        on_expire: ExpiryHandler | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """`name` is an exact setpoint name or a glob pattern (a bad one fails here)."""
        check_handler(handler, "setpoint handler")
        if on_expire is not None:
            check_handler(on_expire, "expiry handler")
        route = Route(handler, timeout)
        if "*" in name:
            self.pattern_handlers[Glob(name)] = route
        else:
            self.handlers[name] = route
        if on_expire is not None:
            self.expiry_handlers[name] = on_expire

    def route_for(self, name: str) -> Route | None:
        exact = self.handlers.get(name)
        if exact is not None:
            return exact
        return next((r for g, r in self.pattern_handlers.items() if g.match(name)), None)

    def expiry_handler_for(self, name: str) -> ExpiryHandler | None:
        exact = self.expiry_handlers.get(name)
        if exact is not None:
            return exact
        return next(
            (h for p, h in self.expiry_handlers.items() if "*" in p and Glob(p).match(name)), None
        )

    @property
    def watched(self) -> list[str]:
        return sorted(self.handlers) + [g.pattern for g in self.pattern_handlers]

    async def run(self) -> None:
        """Watch setpoints while connected; re-watch after every reconnect (the core re-sends
        the setpoints still in force, so a restart of either side re-applies them)."""
        if not self.watched:
            return
        expiry = asyncio.create_task(self._expiry_loop(), name="setpoint-expiry")
        try:
            first = True
            while True:
                await self.client.wait_connected()
                if first:
                    await self._fall_back_where_nothing_is_in_force()
                    first = False
                await self._send_unreported()
                try:
                    await self._watch()
                except grpc.aio.AioRpcError as err:
                    if err.code() in TRANSIENT:
                        self.client.connection_lost(err)
                    else:
                        log.error("setpoint watch refused: %s", describe_error(err))
                        await asyncio.sleep(REFUSED_RETRY_S)
        finally:
            expiry.cancel()
            for worker in self._workers.values():
                worker.stop()
            self._workers.clear()

    async def _fall_back_where_nothing_is_in_force(self) -> None:
        """At start: a setpoint that expired while this process was not running was never
        announced to it. Whatever the device kept from then must end: fall back wherever the
        core has no setpoint in force (the watch re-sends those that are)."""
        for name in sorted(set(self.handlers) & set(self.expiry_handlers)):
            try:
                in_force = (await self.client.get_setpoint(name=name)).in_force()
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    continue  # unknown: the watch and the local timer take over
                in_force = False
            if not in_force:
                log.info("no setpoint in force for %s at start: autonomous mode", name)
                await self._expire(SetpointRequest("", name, None, "", 0.0))

    async def _watch(self) -> None:
        stream = self.client.stubs.control.WatchSetpoints(
            pb.WatchSetpointsRequest(patterns=self.watched)
        )
        async for msg in stream:
            if msg.heartbeat:
                continue
            sp = msg.setpoint
            req = SetpointRequest(
                sp.id,
                sp.name,
                from_value(sp.value),
                sp.requester,
                ts_to_seconds(sp.expire_time),
                status_name(sp.status),
                ts_to_seconds(sp.request_time),
            )
            if msg.event == pb.SETPOINT_EVENT_EXPIRED:
                self._expire_later(req)
            elif msg.event == pb.SETPOINT_EVENT_REQUESTED and self.route_for(req.name):
                self._worker(req.name).request(req)

    def _worker(self, name: str) -> PointWorker:
        worker = self._workers.get(name)
        if worker is None:
            if len(self._workers) > 1000:  # names come and go under a glob: forget idle ones
                self._workers = {n: w for n, w in self._workers.items() if not w.idle}
            worker = self._workers[name] = PointWorker(name, self._apply, self._expire_job)
        return worker

    def _expire_later(self, req: SetpointRequest) -> None:
        """Fall back in the point's worker, after what came before (the handler of the setpoint
        that expires may still be running)."""
        if req.id and (req.id in self._expired_ids or req.id in self._expiring):
            return
        if req.id:
            self._expiring.add(req.id)
        self._worker(req.name).expire(req)

    async def _expire_job(self, req: SetpointRequest) -> None:
        try:
            await self._expire(req)
        finally:
            self._expiring.discard(req.id)

    async def _apply(self, req: SetpointRequest) -> None:
        """Apply one request now (its point's worker calls this, one request at a time)."""
        route = self.route_for(req.name)
        if route is None or req.expires_at <= time.time():
            if route is not None:
                log.info("setpoint %s (%s) expired before it could be applied", req.name, req.id)
            return
        previous = self.active.get(req.name)
        if previous is not None and previous.id == req.id and req.id in self._reports:
            # Re-sent after a reconnect: the device runs it already; only tell the core again.
            await self._report(self._reports[req.id])
            return
        # In force from now on for the local expiry timer and for a late EXPIRED of the
        # setpoint it replaces (which must not make the device fall back over this one).
        self.active[req.name] = req
        what = f"setpoint handler {_name_of(route.handler)} for {req.name} ({req.id})"
        result: Any
        try:
            result = await call_with_deadline(route.handler, req, route.timeout, what)
        except (NoAnswer, HandlerCancelled, StillRunning) as err:
            log.warning("setpoint %s=%r: %s", req.name, req.value, err)
            result = Rejected(str(err))
        except Exception as err:  # a failing device refuses; it never kills the router
            log.warning("setpoint %s=%r failed: %s", req.name, req.value, err)
            result = Rejected(f"{type(err).__name__}: {err}")
        result = self._checked(route.handler, result)
        if isinstance(result, Rejected):
            # The device still runs what it ran before; the core tells us if that must end.
            if previous is not None:
                self.active[req.name] = previous
            else:
                del self.active[req.name]
        self._wake.set()
        report = _report_of(req.id, result)
        log.info(
            "setpoint %s=%r from %s: %s",
            req.name,
            req.value,
            req.requester,
            status_name(report.status),
        )
        await self._report(report)

    def _checked(self, handler: Handler, result: Any) -> Result:
        """The handler's answer, or a rejection naming its mistake (logged once per handler)."""
        mistake = _mistake_in(result)
        if mistake is None:
            return cast(Result, result)
        reason = f"handler {_name_of(handler)} {mistake}"
        if handler not in self._mistakes_logged:
            self._mistakes_logged.add(handler)
            log.error("setpoint %s: reported REJECTED (logged once per handler)", reason)
        return Rejected(reason)

    async def report_outcome(self, req: SetpointRequest, result: Result) -> None:
        """A later outcome of a setpoint answered `Unconfirmed` (or a correction of an earlier
        one), e.g. once a remote link is back. Sent when the core is reachable; refused by the
        core (and logged) when the setpoint has ended meanwhile."""
        route = self.route_for(req.name)
        checked = self._checked(route.handler, result) if route else result
        if isinstance(checked, Rejected):
            current = self.active.get(req.name)
            if current is not None and current.id == req.id:
                del self.active[req.name]
        report = _report_of(req.id, checked)
        log.info(
            "setpoint %s=%r (%s): outcome now %s",
            req.name,
            req.value,
            req.id,
            status_name(report.status),
        )
        await self._report(report)

    async def _report(self, report: pb.ReportSetpointRequest) -> None:
        if len(self._reports) > 1000:
            self._reports.clear()
        self._reports[report.id] = report
        try:
            await self.client.stubs.control.ReportSetpoint(report, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                self._unreported[report.id] = report  # tell the core when it is back
                self.client.connection_lost(err)
            else:
                log.warning("report of setpoint %s not accepted: %s", report.id, err.details())

    async def _send_unreported(self) -> None:
        pending, self._unreported = self._unreported, {}
        for report in pending.values():
            await self._report(report)

    async def _expire(self, req: SetpointRequest) -> None:
        """Fall back once per setpoint, whoever notices the expiry first (core or local timer).
        At start (no id) once per point."""
        if req.id:
            if req.id in self._expired_ids:
                return
            self._expired_ids.add(req.id)
        if len(self._expired_ids) > 10_000:
            self._expired_ids.clear()
        current = self.active.get(req.name)
        if current is not None and current.id != req.id:
            return  # a newer setpoint is in force: falling back would undo it
        self.active.pop(req.name, None)
        handler = self.expiry_handler_for(req.name)
        if req.id:  # (at start the line before says why: nothing in force)
            log.info("setpoint %s (%s) expired: falling back", req.name, req.id)
        if handler is not None:
            route = self.route_for(req.name)
            timeout = route.timeout if route else DEFAULT_TIMEOUT
            what = f"fallback {_name_of(handler)} for {req.name}"
            try:
                await call_with_deadline(handler, req, timeout, what, key=f"{req.name} (fallback)")
            except Exception as err:
                log.error("fallback for %s failed: %s", req.name, err)

    async def _expiry_loop(self) -> None:
        # Local clock: the device falls back on time even while the core is unreachable.
        while True:
            now = time.time()
            waiting = [
                r
                for r in self.active.values()
                if r.id not in self._expired_ids and r.id not in self._expiring
            ]
            for req in waiting:
                if req.expires_at <= now:
                    self._expire_later(req)
            upcoming = [r.expires_at for r in waiting if r.expires_at > now]
            timeout = max(0.05, min(upcoming) - now) if upcoming else 3600.0
            self._wake.clear()
            await wait_event(self._wake, timeout)


def _name_of(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _mistake_in(result: Any) -> str | None:
    """What is wrong with a handler's answer, in words for the requester; None if nothing."""
    if not isinstance(result, Applied | Clamped | Rejected | Unconfirmed):
        shown = repr(result)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return (
            f"returned {shown} ({type(result).__name__}), "
            "not Applied, Clamped, Rejected or Unconfirmed"
        )
    if isinstance(result, Unconfirmed) and not str(result.reason or ""):
        return "returned Unconfirmed without a reason"
    if isinstance(result, Rejected | Unconfirmed):
        return None
    kind, value = type(result).__name__, result.value
    if value is None:
        return f"returned {kind} without a value" if isinstance(result, Clamped) else None
    if isinstance(value, float) and not math.isfinite(value):
        return f"returned {kind}({value!r}): not a finite number"
    try:
        to_value(value)
    except TypeError:
        return f"returned {kind} with {type(value).__name__} value, not a point value"
    return None


def _reason(text: object) -> str:
    """A handler's reason as the core takes it: at most MAX_REASON characters."""
    reason = str(text or "")
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def _report_of(setpoint_id: str, result: Result) -> pb.ReportSetpointRequest:
    if isinstance(result, Rejected):
        return pb.ReportSetpointRequest(
            id=setpoint_id,
            status=status_code("REJECTED"),
            reason=_reason(result.reason or "rejected"),
        )
    if isinstance(result, Unconfirmed):
        return pb.ReportSetpointRequest(
            id=setpoint_id, status=status_code("UNCONFIRMED"), reason=_reason(result.reason)
        )
    reason = result.reason if isinstance(result, Clamped) else ""
    report = pb.ReportSetpointRequest(id=setpoint_id, reason=_reason(reason))
    report.status = status_code("CLAMPED" if isinstance(result, Clamped) else "APPLIED")
    if result.value is not None:
        report.applied_value.CopyFrom(to_value(result.value))
    return report
