"""The change log of setpoints: what setpoint watches send, and resume from.

Every change of a setpoint is appended under a revision taken from the realtime database's
sequence, so one revision orders point writes and setpoint changes alike, and a core restart
(whose revisions jump above everything handed out before) compacts setpoint history the same
way it compacts point history. Setpoints are not persisted: after a restart the log starts
empty, and any earlier revision is compacted.

Watch streams do not hold queues of their own: each remembers the revision it has sent up to
and reads the entries after it. A stream that falls behind by more than the log keeps is told
REVISION_COMPACTED, exactly like a resume from too old a revision; a slow stream never costs
memory beyond the log, nor slows a requester or an owner down.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from smx.v1 import control_service_pb2 as pb
from trusted.core.errors import CoreError

__all__ = ["Revisions", "SetpointChange", "SetpointLog"]


class Revisions(Protocol):
    """The shared revision sequence (trusted.core.realtime.RealtimeDB)."""

    revision: int

    def next_revision(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SetpointChange:
    """One logged change. The setpoint is stored serialized: it is frozen as the change left
    it (the board keeps changing its live copy) and costs a few hundred bytes."""

    revision: int
    name: str
    requester: str
    # The setpoint's status or report changed: its requester follows this.
    outcome: bool
    # What its owner must do (REQUESTED, EXPIRED), or UNSPECIFIED when the owner has nothing to
    # do (a supersession, a report, an expiry of what the device no longer runs).
    event: pb.SetpointEvent
    blob: bytes

    def setpoint(self) -> pb.Setpoint:
        return pb.Setpoint.FromString(self.blob)


class SetpointLog:
    def __init__(self, revisions: Revisions, backlog: int) -> None:
        self.revisions = revisions
        self._entries: deque[SetpointChange] = deque(maxlen=max(1, backlog))
        # Resuming from a revision below this is impossible: entries are gone, or predate the
        # start of this core (setpoints do not survive a restart).
        self._compacted = 0
        self._waiters: set[asyncio.Event] = set()

    def start_at(self, revision: int) -> None:
        """Called once the database knows where this run's revisions start."""
        self._compacted = revision

    def append(
        self, revision: int, sp: pb.Setpoint, *, outcome: bool, event: pb.SetpointEvent
    ) -> None:
        if len(self._entries) == self._entries.maxlen:
            self._compacted = self._entries[0].revision
        self._entries.append(
            SetpointChange(revision, sp.name, sp.requester, outcome, event, sp.SerializeToString())
        )
        for waiter in self._waiters:
            waiter.set()

    def check_start(self, start_revision: int) -> None:
        """Refuse a start revision that is in the future, or too old to resume from."""
        if not 0 <= start_revision <= self.revisions.revision:
            raise CoreError(
                "INVALID_ARGUMENT",
                f"start_revision {start_revision} is not in 0..{self.revisions.revision}",
            )
        if start_revision and start_revision < self._compacted:
            raise CoreError(
                "REVISION_COMPACTED",
                f"revision {start_revision} is compacted (oldest resumable: {self._compacted});"
                " watch again from 0",
                compacted_revision=str(self._compacted),
            )

    def after(self, revision: int) -> list[SetpointChange]:
        """Every entry after `revision`, oldest first (REVISION_COMPACTED if some are gone)."""
        if revision < self._compacted:
            raise CoreError(
                "REVISION_COMPACTED",
                f"the stream fell behind: revision {revision} is compacted"
                f" (oldest resumable: {self._compacted}); watch again from 0",
                compacted_revision=str(self._compacted),
            )
        found = []
        for entry in reversed(self._entries):
            if entry.revision <= revision:
                break
            found.append(entry)
        found.reverse()
        return found

    def waiter(self) -> asyncio.Event:
        """An event set at every append; drop it with `forget` when the stream ends."""
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    def forget(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)
