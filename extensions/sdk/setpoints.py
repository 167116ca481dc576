"""Setpoint handlers: receive requests for the extension's own points, apply, report, and fall
back when a setpoint expires — even if the core is unreachable at that moment.

A handler is registered for an exact name (`battery/P_set`) or a glob pattern (`usm1/**/*_set`,
same syntax as the core's: `*` within one segment, `**` one or more whole segments). An exact
name wins over a pattern; patterns are tried in the order they were added.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from smx.v1 import control_service_pb2 as pb

from .link import TRANSIENT, CoreLink
from .values import from_value, to_value

_IN_FORCE = frozenset(
    {pb.SETPOINT_STATUS_PENDING, pb.SETPOINT_STATUS_APPLIED, pb.SETPOINT_STATUS_CLAMPED}
)

__all__ = [
    "Applied",
    "Clamped",
    "Rejected",
    "SetpointRequest",
    "SetpointRouter",
    "glob_matches",
    "is_pattern",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetpointRequest:
    id: str
    name: str
    value: Any
    requester: str
    expires_at: float  # unix seconds

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
    reason: str


Result = Applied | Clamped | Rejected
Handler = Callable[[SetpointRequest], Awaitable[Result]]
ExpiryHandler = Callable[[SetpointRequest], Awaitable[None]]


def is_pattern(name: str) -> bool:
    return "*" in name


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    # The core's semantics (smx/names.py), re-implemented: the SDK never imports the core.
    parts = []
    for segment in pattern.split("/"):
        if segment == "**":
            parts.append(r"[^/]+(?:/[^/]+)*")  # one or more whole segments, never zero
        else:
            parts.append("[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return re.compile("/".join(parts))


def glob_matches(pattern: str, name: str) -> bool:
    """Whether point `name` matches glob `pattern` (`*` within a segment, `**` across)."""
    return _glob_regex(pattern).fullmatch(name) is not None


class SetpointRouter:
    def __init__(self, link: CoreLink, *, handler_timeout: float = 10.0) -> None:
        self.link = link
        self.handler_timeout = handler_timeout
        self.handlers: dict[str, Handler] = {}  # exact names (declared by the Extension)
        self.pattern_handlers: dict[str, Handler] = {}  # globs, tried in insertion order
        self.expiry_handlers: dict[str, ExpiryHandler] = {}
        self.active: dict[str, SetpointRequest] = {}  # name -> what is in force
        self._expired_ids: set[str] = set()
        self._unreported: dict[str, pb.ReportSetpointRequest] = {}
        self._reports: dict[str, pb.ReportSetpointRequest] = {}  # last report per setpoint id
        self._wake = asyncio.Event()

    def add(self, name: str, handler: Handler, on_expire: ExpiryHandler | None) -> None:
        """`name` is an exact setpoint name or a glob pattern."""
        if is_pattern(name):
            _glob_regex(name)  # a broken pattern fails here, at registration
            self.pattern_handlers[name] = handler
        else:
            self.handlers[name] = handler
        if on_expire is not None:
            self.expiry_handlers[name] = on_expire

    def handler_for(self, name: str) -> Handler | None:
        return self.handlers.get(name) or _first_match(self.pattern_handlers, name)

    def expiry_handler_for(self, name: str) -> ExpiryHandler | None:
        exact = self.expiry_handlers.get(name)
        if exact is not None:
            return exact
        globs = {k: h for k, h in self.expiry_handlers.items() if is_pattern(k)}
        return _first_match(globs, name)

    async def run(self) -> None:
        """Watch setpoints while connected; re-watch after every reconnect (the core re-sends
        the setpoints still in force, so a restart of either side re-applies them)."""
        if not self.handlers and not self.pattern_handlers:
            return
        expiry = asyncio.create_task(self._expiry_loop(), name="setpoint-expiry")
        try:
            first = True
            while True:
                await self.link.connected.wait()
                if first:
                    await self._fall_back_where_nothing_is_in_force()
                    first = False
                await self._send_unreported()
                try:
                    await self._watch()
                except grpc.aio.AioRpcError as err:
                    if err.code() in TRANSIENT:
                        self.link.lost(err)
                    else:
                        log.error("setpoint watch refused: %s", err.details())
                        await asyncio.sleep(5)
        finally:
            expiry.cancel()

    async def _fall_back_where_nothing_is_in_force(self) -> None:
        """At start: a setpoint that expired while this process was not running was never
        announced to it. Whatever the device kept from then must end: fall back wherever the
        core has no setpoint in force (the watch re-sends those that are)."""
        assert self.link.stubs is not None
        for name in sorted(set(self.handlers) & set(self.expiry_handlers)):
            try:
                sp = (
                    await self.link.stubs.control.GetSetpoint(
                        pb.GetSetpointRequest(name=name), timeout=5
                    )
                ).setpoint
                in_force = sp.status in _IN_FORCE and sp.expire_time.ToMilliseconds() > (
                    time.time() * 1000
                )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    continue  # unknown: the watch and the local timer take over
                in_force = False
            if not in_force:
                log.info("no setpoint in force for %s at start: autonomous mode", name)
                await self._expire(SetpointRequest("", name, None, "", 0.0))

    async def _watch(self) -> None:
        assert self.link.stubs is not None
        stream = self.link.stubs.control.WatchSetpoints(
            pb.WatchSetpointsRequest(patterns=sorted(self.handlers) + list(self.pattern_handlers))
        )
        async for msg in stream:
            sp = msg.setpoint
            req = SetpointRequest(
                sp.id,
                sp.name,
                from_value(sp.value),
                sp.requester,
                sp.expire_time.ToMilliseconds() / 1000,
            )
            if msg.event == pb.SETPOINT_EVENT_EXPIRED:
                await self._expire(req)
            elif msg.event == pb.SETPOINT_EVENT_REQUESTED:
                await self._apply(req)

    async def _apply(self, req: SetpointRequest) -> None:
        handler = self.handler_for(req.name)
        if handler is None:
            return
        if req.expires_at <= time.time():
            return
        previous = self.active.get(req.name)
        if previous is not None and previous.id == req.id and req.id in self._reports:
            # Re-sent after a reconnect: the device runs it already; only tell the core again.
            await self._report(self._reports[req.id])
            return
        # In force from now on for the local expiry timer and for a late EXPIRED of the
        # setpoint it replaces (which must not make the device fall back over this one).
        self.active[req.name] = req
        try:
            result = await asyncio.wait_for(handler(req), self.handler_timeout)
        except Exception as err:  # a failing device refuses; it never kills the router
            log.warning("setpoint %s=%r failed: %s", req.name, req.value, err)
            result = Rejected(f"{type(err).__name__}: {err}")
        if not isinstance(result, Applied | Clamped | Rejected):
            result = Applied(result)
        if isinstance(result, Rejected):
            # The device still runs what it ran before; the core tells us if that must end.
            if previous is not None:
                self.active[req.name] = previous
            else:
                del self.active[req.name]
            report = pb.ReportSetpointRequest(
                id=req.id, status=pb.SETPOINT_STATUS_REJECTED, reason=result.reason or "rejected"
            )
        else:
            self._wake.set()
            report = pb.ReportSetpointRequest(id=req.id, reason=getattr(result, "reason", ""))
            if isinstance(result, Clamped):
                report.status = pb.SETPOINT_STATUS_CLAMPED
                report.applied_value.CopyFrom(to_value(result.value))
            else:
                report.status = pb.SETPOINT_STATUS_APPLIED
                if result.value is not None:
                    report.applied_value.CopyFrom(to_value(result.value))
        log.info(
            "setpoint %s=%r from %s: %s",
            req.name,
            req.value,
            req.requester,
            pb.SetpointStatus.Name(report.status).removeprefix("SETPOINT_STATUS_"),
        )
        await self._report(report)

    async def _report(self, report: pb.ReportSetpointRequest) -> None:
        assert self.link.stubs is not None
        if len(self._reports) > 1000:
            self._reports.clear()
        self._reports[report.id] = report
        try:
            await self.link.stubs.control.ReportSetpoint(report, timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                self._unreported[report.id] = report  # tell the core when it is back
                self.link.lost(err)
            else:
                log.warning("report of setpoint %s not accepted: %s", report.id, err.details())

    async def _send_unreported(self) -> None:
        pending, self._unreported = self._unreported, {}
        for report in pending.values():
            await self._report(report)

    async def _expire(self, req: SetpointRequest) -> None:
        """Fall back once per setpoint, whoever notices the expiry first (core or local timer)."""
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
        log.info("setpoint %s (%s) expired: falling back", req.name, req.id)
        if handler is not None:
            try:
                await asyncio.wait_for(handler(req), self.handler_timeout)
            except Exception as err:
                log.error("fallback for %s failed: %s", req.name, err)

    async def _expiry_loop(self) -> None:
        # Local clock: the device falls back on time even while the core is unreachable.
        while True:
            now = time.time()
            due = [r for r in self.active.values() if r.expires_at <= now]
            for req in due:
                await self._expire(req)
            upcoming = [r.expires_at for r in self.active.values()]
            timeout = max(0.05, min(upcoming) - now) if upcoming else 3600.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass


def _first_match(handlers: dict[str, Any], name: str) -> Any:
    for pattern, handler in handlers.items():
        if glob_matches(pattern, name):
            return handler
    return None
