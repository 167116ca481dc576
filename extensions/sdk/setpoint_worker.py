"""One worker per setpoint point, and handler calls with an enforced time limit.

Setpoints of different points are handled side by side: a device that is slow to answer for
`battery/P_set` never delays `battery/Q_set`. The requests of one point stay strictly in order,
and only the newest one waiting is ever handed to the handler: a request the core has already
superseded (it reports SUPERSEDED itself) never reaches the device.

A handler call ends at its deadline whatever the handler does: it runs as its own task, is
cancelled then, and an answer it gives later (a handler that swallows the cancellation) is
logged and ignored. While such an abandoned call of a point has not ended, the point's next
requests are refused at once rather than piling up more calls that will not end either.
Handlers are `async def` (checked at registration): a plain function would block the whole
extension, and no deadline could stop it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .setpoints import SetpointRequest

__all__ = [
    "HandlerCancelled",
    "NoAnswer",
    "PointWorker",
    "StillRunning",
    "call_with_deadline",
    "check_handler",
]

log = logging.getLogger("extensions.sdk.setpoints")

Job = Callable[["SetpointRequest"], Awaitable[None]]

# Calls abandoned at their deadline that have not ended yet, by key (the point and whether it
# was an apply or an expiry): referenced until they end, at most one per key.
_abandoned: dict[str, asyncio.Future[Any]] = {}


class NoAnswer(Exception):
    """The handler did not answer within its time limit."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g} s")
        self.timeout = timeout


class HandlerCancelled(Exception):
    """Something inside the handler cancelled it (not the SDK)."""


class StillRunning(Exception):
    """The handler's previous call for this point outlived its time limit and has not ended."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the handler's previous call for {key} is still running past its time limit"
        )


def check_handler(handler: Callable[..., Any], what: str) -> None:
    """Refuse, at registration, a handler that is not a coroutine function."""
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects count too
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise TypeError(
            f"{what} {getattr(handler, '__qualname__', handler)!r} must be an `async def`: a "
            "plain function would block the extension and no time limit could stop it"
        )


async def call_with_deadline(
    fn: Callable[[SetpointRequest], Any],
    req: SetpointRequest,
    timeout: float,
    what: str,
    key: str = "",
) -> Any:
    """`await fn(req)`, but never past `timeout` s: raises NoAnswer then, and leaves the call
    cancelled behind; whatever it answers afterwards is ignored. Raises StillRunning at once
    while an earlier abandoned call with the same `key` has not ended."""
    key = key or req.name
    if key in _abandoned:
        raise StillRunning(key)
    call = fn(req)
    if not inspect.isawaitable(call):
        return call  # registration refuses plain functions; kept for direct callers
    task = asyncio.ensure_future(call)
    try:
        await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # the extension stops: so does the call
        _abandon(task, what, key)
        raise
    if not task.done():
        _abandon(task, what, key)
        raise NoAnswer(timeout)
    if task.cancelled():
        raise HandlerCancelled("the handler was cancelled from inside")
    return task.result()


def _abandon(task: asyncio.Future[Any], what: str, key: str) -> None:
    task.cancel()
    if task.done():
        return
    _abandoned[key] = task

    def ended(t: asyncio.Future[Any]) -> None:
        if _abandoned.get(key) is t:
            del _abandoned[key]
        if t.cancelled():
            return
        err = t.exception()
        if err is not None:
            log.info("%s ended after its time limit: %s: %s", what, type(err).__name__, err)
        else:
            log.warning(
                "%s answered %r after its time limit, ignoring its cancellation: answer ignored",
                what,
                t.result(),
            )

    task.add_done_callback(ended)


class PointWorker:
    """The setpoint work of one point, in order: at most one handler call at a time, expiries
    after what came before them, and only the newest request not yet started."""

    def __init__(self, name: str, apply: Job, expire: Job) -> None:
        self.name = name
        self._apply = apply
        self._expire = expire
        self._jobs: deque[tuple[Literal["apply", "expire"], SetpointRequest]] = deque()
        self.running: SetpointRequest | None = None  # the request being applied now
        self.task: asyncio.Task[None] | None = None
        self.superseded = 0  # requests dropped before their handler started

    @property
    def idle(self) -> bool:
        return self.task is None and not self._jobs

    def request(self, req: SetpointRequest) -> None:
        if self.running is not None and self.running.id == req.id:
            return  # re-sent while it is being applied: its report follows
        for job in [j for j in self._jobs if j[0] == "apply"]:
            self._jobs.remove(job)
            if job[1].id != req.id:
                self.superseded += 1
                log.info(
                    "setpoint %s=%r (%s) superseded by %s before it was applied",
                    job[1].name,
                    job[1].value,
                    job[1].id,
                    req.id,
                )
        self._jobs.append(("apply", req))
        self._start()

    def expire(self, req: SetpointRequest) -> None:
        self._jobs.append(("expire", req))
        self._start()

    def stop(self) -> None:
        self._jobs.clear()
        if self.task is not None:
            self.task.cancel()

    def _start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"setpoint {self.name}")

    async def _run(self) -> None:
        try:
            while self._jobs:
                kind, req = self._jobs.popleft()
                try:
                    if kind == "apply":
                        self.running = req
                        await self._apply(req)
                    else:
                        await self._expire(req)
                except Exception:  # a bug in one setpoint must not stop the point's others
                    log.exception("setpoint %s (%s): %s failed", req.name, req.id, kind)
                finally:
                    self.running = None
        finally:
            self.task = None
