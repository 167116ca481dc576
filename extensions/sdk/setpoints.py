"""Setpoint handlers: receive requests for the extension's own points, apply, report, and fall
back when a setpoint expires — even if the core is unreachable at that moment."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from smx.v1 import control_service_pb2 as pb

from .link import TRANSIENT, CoreLink
from .values import from_value, to_value

__all__ = ["Applied", "Clamped", "Rejected", "SetpointRequest", "SetpointRouter"]

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


class SetpointRouter:
    def __init__(self, link: CoreLink, *, handler_timeout: float = 10.0) -> None:
        self.link = link
        self.handler_timeout = handler_timeout
        self.handlers: dict[str, Handler] = {}
        self.expiry_handlers: dict[str, ExpiryHandler] = {}
        self.active: dict[str, SetpointRequest] = {}  # name -> what is in force
        self._expired_ids: set[str] = set()
        self._unreported: dict[str, pb.ReportSetpointRequest] = {}
        self._wake = asyncio.Event()

    def add(self, name: str, handler: Handler, on_expire: ExpiryHandler | None) -> None:
        self.handlers[name] = handler
        if on_expire is not None:
            self.expiry_handlers[name] = on_expire

    async def run(self) -> None:
        """Watch setpoints while connected; re-watch after every reconnect (the core re-sends
        the setpoints still in force, so a restart of either side re-applies them)."""
        if not self.handlers:
            return
        expiry = asyncio.create_task(self._expiry_loop(), name="setpoint-expiry")
        try:
            while True:
                await self.link.connected.wait()
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

    async def _watch(self) -> None:
        assert self.link.stubs is not None
        stream = self.link.stubs.control.WatchSetpoints(
            pb.WatchSetpointsRequest(patterns=sorted(self.handlers))
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
        handler = self.handlers.get(req.name)
        if handler is None:
            return
        if req.expires_at <= time.time():
            return
        try:
            result = await asyncio.wait_for(handler(req), self.handler_timeout)
        except Exception as err:  # a failing device refuses; it never kills the router
            log.warning("setpoint %s=%r failed: %s", req.name, req.value, err)
            result = Rejected(f"{type(err).__name__}: {err}")
        if not isinstance(result, Applied | Clamped | Rejected):
            result = Applied(result)
        if isinstance(result, Rejected):
            report = pb.ReportSetpointRequest(
                id=req.id, status=pb.SETPOINT_STATUS_REJECTED, reason=result.reason or "rejected"
            )
        else:
            self.active[req.name] = req
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
        if current is not None and current.id == req.id:
            del self.active[req.name]
        handler = self.expiry_handlers.get(req.name)
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
