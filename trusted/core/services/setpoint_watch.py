"""The two setpoint streams of ControlService, both read from the board's change log.

WatchSetpoints (owners) sends what the owner must do: the setpoints in force, then each
request and each expiry, the latest per name when the owner falls behind. WatchSetpointOutcomes
(requesters) sends every change of the caller's own setpoints, none coalesced: a requester
wants to know that its request was applied and then expired, not only that it expired.

Both resume like point watches: every message carries the revision up to which everything has
been sent, and a new watch may start after such a revision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from smx.aio import wait_event
from smx.v1 import control_service_pb2 as pb
from trusted.core.setpoint_log import SetpointChange
from trusted.core.setpoints import SetpointBoard

__all__ = ["OUTCOME_CHUNK", "outcome_stream", "owner_stream"]

# Setpoints per WatchSetpointOutcomes message (a resume after a long disconnect may have many).
OUTCOME_CHUNK = 1000

Match = Callable[[str], bool]


async def owner_stream(
    board: SetpointBoard, match: Match, start_revision: int, heartbeat: float
) -> AsyncGenerator[pb.WatchSetpointsResponse, None]:
    board.log.check_start(start_revision)
    position = start_revision or board.revisions.revision
    first = []
    if start_revision == 0:
        first = [
            pb.WatchSetpointsResponse(event=pb.SETPOINT_EVENT_REQUESTED, setpoint=sp)
            for sp in board.in_force()
            if match(sp.name)
        ]
        if first:
            # Only once the last of them is sent has everything up to `position` been sent.
            first[-1].revision = position

    def batch(entries: list[SetpointChange], position: int) -> list[pb.WatchSetpointsResponse]:
        latest: dict[str, SetpointChange] = {}
        for e in entries:
            if e.event != pb.SETPOINT_EVENT_UNSPECIFIED and match(e.name):
                latest.pop(e.name, None)  # re-insert: the dict stays in revision order
                latest[e.name] = e
        return [
            pb.WatchSetpointsResponse(event=e.event, setpoint=e.setpoint(), revision=e.revision)
            for e in latest.values()
        ]

    def idle(revision: int) -> pb.WatchSetpointsResponse:
        return pb.WatchSetpointsResponse(revision=revision, heartbeat=True)

    async with contextlib.aclosing(_follow(board, position, first, batch, idle, heartbeat)) as s:
        async for msg in s:
            yield msg


async def outcome_stream(
    board: SetpointBoard, match: Match, requester: str, start_revision: int, heartbeat: float
) -> AsyncGenerator[pb.WatchSetpointOutcomesResponse, None]:
    board.log.check_start(start_revision)
    position = start_revision or board.revisions.revision
    first = []
    if start_revision == 0:
        snapshot = [sp for sp in board.in_force() if sp.requester == requester and match(sp.name)]
        snapshot.sort(key=lambda sp: sp.revision)
        first = [
            pb.WatchSetpointOutcomesResponse(setpoints=snapshot, revision=position, snapshot=True)
        ]

    def batch(
        entries: list[SetpointChange], position: int
    ) -> list[pb.WatchSetpointOutcomesResponse]:
        mine = [e for e in entries if e.outcome and e.requester == requester and match(e.name)]
        parts = list(_split(mine))
        return [
            pb.WatchSetpointOutcomesResponse(
                setpoints=[e.setpoint() for e in part],
                # Parts end between revisions, so each part's last revision is complete.
                revision=position if i == len(parts) - 1 else part[-1].revision,
            )
            for i, part in enumerate(parts)
        ]

    def idle(revision: int) -> pb.WatchSetpointOutcomesResponse:
        return pb.WatchSetpointOutcomesResponse(revision=revision, heartbeat=True)

    async with contextlib.aclosing(_follow(board, position, first, batch, idle, heartbeat)) as s:
        async for msg in s:
            yield msg


def _split(entries: list[SetpointChange]) -> Iterator[list[SetpointChange]]:
    """Parts of about OUTCOME_CHUNK entries, never cutting through one revision."""
    while entries:
        cut = min(OUTCOME_CHUNK, len(entries))
        while cut < len(entries) and entries[cut].revision == entries[cut - 1].revision:
            cut += 1
        yield entries[:cut]
        entries = entries[cut:]


async def _follow(
    board: SetpointBoard,
    position: int,
    first: list[Any],
    batch: Callable[[list[SetpointChange], int], list[Any]],
    idle: Callable[[int], Any],
    heartbeat: float,
) -> AsyncGenerator[Any, None]:
    """`first` (built at revision `position`), then the log after `position` in `batch`es, or
    an `idle` heartbeat when nothing was sent for `heartbeat` seconds.

    An entry is appended in the same loop turn its revision is taken, so once the log is read
    up to the current revision, nothing can land behind it: the position moves to it."""
    log, loop = board.log, asyncio.get_running_loop()
    waiter = log.waiter()
    try:
        for msg in first:
            yield msg
        sent_at = loop.time()
        while True:
            waiter.clear()  # before reading: an append from now on wakes the wait below
            entries = log.after(position)
            position = board.revisions.revision
            messages = batch(entries, position)
            for msg in messages:
                yield msg
            if messages:
                sent_at = loop.time()
                continue  # more may have been logged while these were sent
            remaining = sent_at + heartbeat - loop.time()
            if remaining <= 0:
                yield idle(position)
                sent_at = loop.time()
                continue
            await wait_event(waiter, remaining)
    finally:
        log.forget(waiter)
