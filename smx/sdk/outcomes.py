"""Following the setpoints a client requested, on the core's stream (WatchSetpointOutcomes),
without polling: every status change of its own setpoints, resumed from the last revision
after a reconnect, and a fresh snapshot when the core cannot resume (it restarted, or we were
away too long).

The stream is opened only once the client has requested a setpoint or asked for outcomes, so a
client without the request right never opens it (and is never refused for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from smx.setpoint_status import ANSWERED, IN_FORCE, status_name
from smx.timestamps import seconds_to_duration, ts_to_seconds
from smx.v1 import control_service_pb2 as pb
from smx.values import from_value

from .callbacks import call_back
from .link import CoreLink
from .resumable import ResumableStream

__all__ = ["OutcomeCallback", "Outcomes", "SetpointState"]

log = logging.getLogger(__name__)

OutcomeCallback = Callable[["SetpointState"], Awaitable[None] | None]
HEARTBEAT_S = 5.0
CALL_TIMEOUT = 5.0
REMEMBER = 10_000  # setpoints kept (a setpoint lives 24 h at most; a few per minute at most)


@dataclass(frozen=True)
class SetpointState:
    """A setpoint as the core last reported it."""

    id: str
    name: str
    value: Any
    status: str  # PENDING, APPLIED, CLAMPED, REJECTED, EXPIRED, SUPERSEDED, UNCONFIRMED
    requester: str = ""
    expires_at: float = 0.0  # unix seconds
    applied_value: Any = None  # for APPLIED and CLAMPED
    reason: str = ""  # for REJECTED, UNCONFIRMED (and maybe CLAMPED), in words for a person
    reporter: str = ""  # the owner that reported it
    revision: int = 0

    @classmethod
    def of(cls, sp: pb.Setpoint) -> SetpointState:
        return cls(
            id=sp.id,
            name=sp.name,
            value=from_value(sp.value),
            status=status_name(sp.status),
            requester=sp.requester,
            expires_at=ts_to_seconds(sp.expire_time),
            applied_value=from_value(sp.applied_value) if sp.HasField("applied_value") else None,
            reason=sp.reason,
            reporter=sp.reporter,
            revision=sp.revision,
        )

    @property
    def answered(self) -> bool:
        """The outcome is known: the owner reported what the device does, or the setpoint
        ended first. UNCONFIRMED is not an answer yet: the real outcome follows."""
        return self.status in ANSWERED

    def in_force(self, now: float | None = None) -> bool:
        """What the owner runs (or will, once it reports) at `now`."""
        return self.status in IN_FORCE and self.expires_at > (time.time() if now is None else now)


class Outcomes(ResumableStream):
    def __init__(self, link: CoreLink) -> None:
        super().__init__(link, "setpoint outcome stream")
        self.callbacks: list[OutcomeCallback] = []
        self.latest: OrderedDict[str, SetpointState] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[SetpointState]]] = {}
        self._wanted = asyncio.Event()  # something to follow: open the stream

    def add_callback(self, callback: OutcomeCallback) -> None:
        self.callbacks.append(callback)
        self._wanted.set()

    def requested(self, state: SetpointState) -> None:
        """A setpoint this client just requested (its outcome may already have come in)."""
        self._wanted.set()
        self._record(state)

    async def wait(self, setpoint_id: str, timeout: float | None) -> SetpointState:
        self._wanted.set()
        known = self.latest.get(setpoint_id)
        if known is not None and known.answered:
            return known
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(setpoint_id, []).append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            waiters = self._waiters.get(setpoint_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(setpoint_id, None)

    async def run(self) -> None:
        await self._wanted.wait()
        await super().run()

    async def follow(self) -> None:
        stream = self.link.open().control.WatchSetpointOutcomes(
            pb.WatchSetpointOutcomesRequest(
                start_revision=self.revision,
                heartbeat_interval=seconds_to_duration(HEARTBEAT_S),
            )
        )
        async for msg in stream:
            for sp in msg.setpoints:
                state = SetpointState.of(sp)
                if self._record(state):
                    await self._deliver(state)
            if msg.snapshot:
                await self._catch_up()
            if msg.revision:
                self.revision = msg.revision

    async def _catch_up(self) -> None:
        """A snapshot holds only the setpoints in force: one that was answered (REJECTED...)
        while the stream was not open is asked for once by id (a requester may read its own)."""
        now = time.time()
        unanswered = [
            i for i, state in self.latest.items() if not state.answered and state.expires_at > now
        ]
        for setpoint_id in dict.fromkeys([*self._waiters, *unanswered]):
            try:
                reply = await self.link.open().control.GetSetpoint(
                    pb.GetSetpointRequest(id=setpoint_id), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                if self.link.lost_on(err):
                    raise
                continue  # unknown to a restarted core: the waiter times out
            state = SetpointState.of(reply.setpoint)
            if self._record(state):
                await self._deliver(state)

    def _record(self, state: SetpointState) -> bool:
        """Keep the newest state per setpoint; False when `state` is not news."""
        known = self.latest.get(state.id)
        if known is not None and known.revision >= state.revision:
            return False
        self.latest[state.id] = state
        self.latest.move_to_end(state.id)
        while len(self.latest) > REMEMBER:
            self.latest.popitem(last=False)
        if state.answered:
            for future in self._waiters.get(state.id, []):
                if not future.done():
                    future.set_result(state)
        return True

    async def _deliver(self, state: SetpointState) -> None:
        for callback in self.callbacks:
            await call_back(callback, state, f"outcome of setpoint {state.id}")
