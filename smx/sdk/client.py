"""`Client`: one connection to the core for any process — an agent, the GUI, a tool, and (under
`extensions.sdk.Extension`) a device owner.

    async with Client(target, Credentials.from_site(home, "gui")) as client:
        points = await client.get_points(["smm/P"])

It reconnects by itself for the life of the process, re-declares its points and resumes its
watches after a reconnect, buffers writes while the core is away, and follows the outcome of the
setpoints it requested on a stream (`request_setpoint`, `outcome`, `on_outcome`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from smx.aggregation import aggregation_code
from smx.client import Credentials, Stubs
from smx.process_env import ProcessEnv
from smx.timestamps import seconds_to_duration, seconds_to_ts
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as pb
from smx.values import to_value

from .declarations import Declarations
from .link import CoreLink, Rights
from .outcomes import OutcomeCallback, Outcomes, SetpointState
from .points import HistorySample, PointSpec, PointUpdate
from .publisher import Publisher
from .tasks import TaskSet
from .watch import Subscription, WatchCallback

__all__ = ["CallFailed", "Client", "CoreUnavailable"]

CALL_TIMEOUT = 10.0
# A month of one point at 1 Hz, raw, takes the core a few seconds on a 2-core machine
# (docs/PERFORMANCE.md, section 3b); a Pi several times that.
HISTORY_TIMEOUT = 120.0
PAGE_SIZE = 1000
Hook = TypeVar("Hook", bound=Callable[[], Awaitable[None]])


# A call to the core failed: refused (no right, an unknown point, a bad value) or not answered in
# time. Every call of the Client goes straight to the generated API, so the error raised is
# grpc's own; this is its name in the SDK (the same class: `code()`, `details()`, and the stable
# reason by smx.client.error_reason), so that a process catches it without importing grpc.
CallFailed = grpc.aio.AioRpcError


class CoreUnavailable(Exception):
    """The core did not answer in time (it is down, or this certificate is refused)."""


class Client:
    def __init__(
        self, target: str, credentials: Credentials, *, tasks: TaskSet | None = None
    ) -> None:
        self.tasks = tasks or TaskSet()
        self._link = CoreLink(target, credentials)
        self._declarations = Declarations(self._link)
        self._publisher = Publisher(self._link, self._declarations)
        self._outcomes = Outcomes(self._link)
        self._subscriptions: list[Subscription] = []
        self._started = False
        self._link.on_connect(self._declarations.declare_all)

    @classmethod
    def from_env(cls, env: ProcessEnv, *, tasks: TaskSet | None = None) -> Client:
        return cls(env.target, env.credentials, tasks=tasks)

    # -- the connection ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background (and keep reconnecting); returns at once."""
        if self._started:
            return
        self._started = True
        self._link.open()
        spawn = self.tasks.spawn
        spawn(self._link.run(), "core-link")
        spawn(self._publisher.run(), "publisher")
        spawn(self._outcomes.run(), "setpoint-outcomes")
        for sub in self._subscriptions:
            spawn(sub.run(), f"watch-{','.join(sub.patterns)}")

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._link.connected.wait()
        except TimeoutError:
            raise CoreUnavailable(
                f"no answer from the core at {self._link.target} within {timeout:g} s"
                + (f": {self._link.last_error}" if self._link.last_error else "")
            ) from None

    async def flush(self, timeout: float) -> bool:
        """Write what is pending, for at most `timeout` s; False if some is left."""
        if not self._link.connected.is_set():
            return not self._publisher.pending
        try:
            async with asyncio.timeout(timeout):
                return await self._publisher.flush()
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.tasks.stop()
        await self._link.close()

    async def __aenter__(self) -> Client:
        await self.start()
        await self.wait_connected(CALL_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush(2.0)
        await self.close()

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    @property
    def identity(self) -> str:
        """spiffe://<site>/<domain>/<name>, as the core sees this client ("" before)."""
        return self._link.identity

    @property
    def rights(self) -> Rights:
        return self._link.rights

    def may(self, verb: str, name: str) -> bool:
        """Whether the policy lets this client `verb` (read, write, request, control) `name`."""
        return self._link.rights.allows(verb, name)

    @property
    def refused(self) -> bool:
        """The core refuses this certificate (revoked, another site's): nothing can work."""
        return self._link.refused

    @property
    def last_error(self) -> str:
        return self._link.last_error

    @property
    def stubs(self) -> Stubs:
        """The raw API (smx.v1) on this client's channel, for what the client does not wrap."""
        return self._link.open()

    def on_connect(self, hook: Hook) -> Hook:
        """Decorator: `await hook()` after every (re)connection, before the client counts as
        connected (declarations first). A lost core raises out of it and is retried."""
        self._link.on_connect(hook)
        return hook

    def connection_lost(self, err: BaseException | None = None) -> None:
        """Tell the client a call of yours found the core gone: writes buffer, it reconnects."""
        self._link.lost(err)

    # -- points -----------------------------------------------------------------------------

    async def get_points(self, names: Iterable[str]) -> dict[str, PointUpdate]:
        resp = await self.stubs.points.GetPoints(
            pb.GetPointsRequest(names=list(names)), timeout=CALL_TIMEOUT
        )
        return {p.name: PointUpdate.of(p) for p in resp.points}

    async def list_points(self, pattern: str = "**") -> list[PointSpec]:
        found: list[PointSpec] = []
        token = ""
        while True:
            resp = await self.stubs.points.ListPoints(
                pb.ListPointsRequest(pattern=pattern, page_size=PAGE_SIZE, page_token=token),
                timeout=CALL_TIMEOUT,
            )
            found += [PointSpec.from_metadata(m) for m in resp.points]
            token = resp.next_page_token
            if not token:
                return found

    async def read_history(
        self,
        names: Iterable[str],
        start: float | None = None,
        end: float | None = None,
        *,
        bucket: float | None = None,
        aggregation: str = "avg",
        timeout: float = HISTORY_TIMEOUT,
    ) -> AsyncIterator[HistorySample]:
        """The stored samples of `names` (a list of exact names, read rights needed) from
        `start` (inclusive; None: the oldest kept) to `end` (exclusive; None: now), unix
        seconds, point after point, each in time order; a name with no history yields nothing.
        With `bucket` (seconds), one sample per bucket of that width aligned to the epoch:
        `aggregation` (min, max, avg by default, last) of its numeric samples, with the worst
        quality among them and their count. Raises CallFailed as the core refuses (no right, a
        bad name or range) or when `timeout` passes; ValueError or TypeError before any call
        for arguments that cannot be right."""
        if isinstance(names, str):
            raise TypeError(f"names: a list of point names, not the string {names!r}")
        code = aggregation_code(aggregation)  # a wrong name fails even without a bucket
        request = pb.ReadHistoryRequest(names=list(names))
        for what, seconds in (("start", start), ("end", end), ("bucket", bucket)):
            if seconds is not None and not (
                isinstance(seconds, int | float) and math.isfinite(seconds)
            ):
                raise TypeError(f"{what}: a finite number of seconds, got {seconds!r}")
        if start is not None:
            request.start_time.CopyFrom(seconds_to_ts(start))
        if end is not None:
            request.end_time.CopyFrom(seconds_to_ts(end))
        if bucket is not None:
            request.bucket.CopyFrom(seconds_to_duration(bucket))
            request.aggregation = code
        async for reply in self.stubs.points.ReadHistory(request, timeout=timeout):
            for sample in reply.samples:
                yield HistorySample.of(reply.name, sample)

    def watch(self, patterns: list[str], callback: WatchCallback) -> Subscription:
        """Follow points (read rights needed): `callback(PointUpdate)` for the snapshot, then
        per change; resumed after a reconnect."""
        sub = Subscription(self._link, patterns, callback)
        self._subscriptions.append(sub)
        if self._started:
            self.tasks.spawn(sub.run(), f"watch-{','.join(patterns)}")
        return sub

    def declare(self, specs: Iterable[PointSpec]) -> None:
        """Points this client owns: declared now (before their first value) and after every
        reconnect."""
        self._declarations.add(specs)

    def declared(self, name: str) -> PointSpec | None:
        return self._declarations.specs.get(name)

    def declared_names(self) -> list[str]:
        return list(self._declarations.specs)

    def refused_declaration(self, name: str) -> bool:
        """The core refused to declare `name`: its values are dropped, not sent."""
        return name in self._declarations.refused

    def publish_sample(self, sample: point_pb2.PointSample) -> None:
        """Write a sample as given (value kind, quality, source time), with the next batch."""
        self._publisher.publish(sample)

    @property
    def pending(self) -> int:
        """Samples waiting to be written (the latest per point)."""
        return len(self._publisher.pending)

    @property
    def dropped(self) -> int:
        """Samples dropped because the core refused their point."""
        return self._publisher.dropped

    # -- setpoints, as a requester ------------------------------------------------------------

    async def request_setpoint(
        self, name: str, value: Any, valid_for: float, request_key: str = ""
    ) -> SetpointState:
        """Ask the owner of `name` to apply `value` for `valid_for` seconds; the state returned
        is PENDING until the owner reports (`outcome`). With a `request_key`, asking again after
        a lost reply returns the setpoint the first request created (as it is now) instead of
        a new one. Raises CallFailed when the core refuses (no right, unknown point) or is
        away."""
        await self._link.connected.wait()
        request = cpb.RequestSetpointRequest(
            name=name,
            value=to_value(value),
            valid_for=seconds_to_duration(valid_for),
            request_key=request_key,
        )
        reply = await self.stubs.control.RequestSetpoint(request, timeout=CALL_TIMEOUT)
        state = SetpointState.of(reply.setpoint)
        self._outcomes.requested(state)
        return state

    async def get_setpoint(self, *, id: str = "", name: str = "") -> SetpointState:
        """A setpoint by id, or the latest one of a point by name."""
        request = cpb.GetSetpointRequest(id=id) if id else cpb.GetSetpointRequest(name=name)
        reply = await self.stubs.control.GetSetpoint(request, timeout=CALL_TIMEOUT)
        return SetpointState.of(reply.setpoint)

    async def outcome(self, setpoint_id: str, timeout: float | None = None) -> SetpointState:
        """Wait until the setpoint's outcome is known (the owner applied, clamped or rejected
        it, or it expired or was superseded first): no longer PENDING or UNCONFIRMED, as the
        core tells on its stream."""
        return await self._outcomes.wait(setpoint_id, timeout)

    def on_outcome(self, callback: OutcomeCallback) -> OutcomeCallback:
        """Decorator: `callback(SetpointState)` for every change of a setpoint this client
        requested (APPLIED, CLAMPED, REJECTED, UNCONFIRMED, EXPIRED, SUPERSEDED)."""
        self._outcomes.add_callback(callback)
        return callback
