"""Waiting for an event with a time limit, without touching the waiting task's cancellation.

On Python 3.11 both standard ways have a hole: `asyncio.wait_for` loses a cancellation that
arrives in the same turn as its result (a loop around it then never stops), and
`asyncio.timeout` works by cancelling the waiting task itself, which stream handlers run by
gRPC (and anything else cancelling that task) then have to tell apart from a real
cancellation. `wait_event` waits in a task of its own through `asyncio.wait`, which neither
cancels the caller nor swallows the caller's cancellation.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


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
