"""Waiting for an event with a time limit, without touching the waiting task's cancellation.

On Python 3.11 both standard ways have a hole: `asyncio.wait_for` loses a cancellation that
arrives in the same turn as its result (a loop around it then never stops), and
`asyncio.timeout` works by cancelling the waiting task itself, which stream handlers run by
gRPC (and anything else cancelling that task) then have to tell apart from a real
cancellation. `wait_event` waits in a task of its own through `asyncio.wait`, which neither
cancels the caller nor swallows the caller's cancellation.

`Wakeup` is the same contract for a flag with one waiter, without the task: one future and one
timer per wait, for the paths that wait once per message (a watch stream's delivery loop).
"""

from __future__ import annotations

import asyncio
import signal

__all__ = ["Wakeup", "stop_on_signals", "wait_event"]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True once `event` is set, False after `seconds` without it."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=max(0.0, seconds))
    finally:
        if not waiter.done():
            waiter.cancel()
    return bool(done)


class Wakeup:
    """A flag one task waits on with a time limit. The wait awaits a bare future: a
    cancellation of the waiting task reaches it unchanged (none is lost in the turn the flag
    is set), and the time limit only resolves the future, it never cancels the task. One timer
    serves many waits: it is re-armed only when it fires early for the current wait, so a
    wait the flag ends costs one future, no timer."""

    __slots__ = ("_flag", "_waiter", "_deadline", "_timer")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self, seconds: float) -> bool:
        """True once set, False after `seconds` without it."""
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._deadline = loop.time() + max(0.0, seconds)
        timer = self._timer
        if timer is not None and timer.when() > self._deadline:  # armed for a later time
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = loop.call_at(self._deadline, self._expire)
        try:
            return await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a timer of its own
        loop = waiter.get_loop()
        if loop.time() < self._deadline:  # armed by an earlier wait: this one ends later
            self._timer = loop.call_at(self._deadline, self._expire)
        else:
            waiter.set_result(False)


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM or SIGINT sets: what a simulator or tool waits on to stop cleanly (the
    supervisor stops its processes with SIGTERM). Call it from the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
