"""The background tasks of one process, started and stopped together.

A task that ends by raising, or is cancelled by anything but `stop`, leaves the process
half-working: `on_crash` is told, and the process stops so that the supervisor restarts it
cleanly. A task that returns normally simply had nothing (more) to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

__all__ = ["TaskSet"]

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds a cancelled task gets to finish


class TaskSet:
    def __init__(self, on_crash: Callable[[str], None] | None = None) -> None:
        self.on_crash = on_crash
        self.stopping = False
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._done)
        self._tasks.append(task)
        return task

    def named(self, name: str) -> asyncio.Task[Any] | None:
        return next((t for t in self._tasks if t.get_name() == name and not t.done()), None)

    async def cancel(self, names: Iterable[str]) -> None:
        """Cancel some tasks on purpose (e.g. to restart one), without counting it a crash."""
        wanted = set(names)
        chosen = [t for t in self._tasks if t.get_name() in wanted]
        for task in chosen:
            task.remove_done_callback(self._done)
            task.cancel()
            self._tasks.remove(task)
        if not chosen:
            return
        # A task that swallows its cancellation must not hang the process's stop forever.
        done, stuck = await asyncio.wait(chosen, timeout=STOP_GRACE)
        for task in done:  # retrieved, so asyncio does not report them as never retrieved
            if not task.cancelled():
                task.exception()
        if stuck:
            log.error(
                "task(s) %s ignored cancellation for %g s; leaving them",
                ", ".join(sorted(t.get_name() for t in stuck)),
                STOP_GRACE,
            )

    async def stop(self, *, keep: Iterable[str] = ()) -> None:
        """Cancel every task but those named in `keep` (they stop at the next call)."""
        self.stopping = True
        kept = set(keep)
        await self.cancel({t.get_name() for t in self._tasks} - kept)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if self.stopping:
            return
        if task.cancelled():
            why, error = f"task {task.get_name()} was cancelled unexpectedly", None
        elif (error := task.exception()) is not None:
            why = f"task {task.get_name()} crashed: {error!r}"
        else:
            return
        log.error("%s; stopping", why, exc_info=error)
        if self.on_crash is not None:
            self.on_crash(why)
