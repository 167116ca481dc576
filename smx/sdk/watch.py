"""Following points (e.g. a battery controller reading `smm/P`): a watch that resumes from the
last revision it delivered after a reconnect, and starts over with a snapshot when the core
cannot resume (it restarted, or we were away longer than it keeps changes).

A watch is filtered by the caller's read rights without an error (names it may not read are
not data it may see), so a watch of a name the policy does not let it read would stay silent:
that is said once, with what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from smx.v1 import point_service_pb2 as pb

from .callbacks import call_back
from .link import CoreLink
from .points import PointUpdate
from .resumable import RIGHTS_HINT, ResumableStream

__all__ = ["Subscription", "WatchCallback"]

log = logging.getLogger(__name__)

WatchCallback = Callable[[PointUpdate], Awaitable[None] | None]


class Subscription(ResumableStream):
    def __init__(self, link: CoreLink, patterns: list[str], callback: WatchCallback) -> None:
        super().__init__(link, f"watch of {patterns}")
        self.patterns = patterns
        self.callback = callback
        self.latest: dict[str, PointUpdate] = {}
        self._unreadable: list[str] = []

    async def follow(self) -> None:
        # Exact names only: whether a glob reaches anything readable is the core's to say.
        unreadable = [
            p for p in self.patterns if "*" not in p and not self.link.rights.allows("read", p)
        ]
        if unreadable and unreadable != self._unreadable:
            log.warning(
                "%s: may not read %s: nothing comes for them; %s",
                self.what,
                ", ".join(unreadable),
                RIGHTS_HINT,
            )
        self._unreadable = unreadable
        stream = self.link.open().points.WatchPoints(
            pb.WatchPointsRequest(patterns=self.patterns, start_revision=self.revision)
        )
        async for msg in stream:
            for p in msg.points:
                update = PointUpdate.of(p)
                self.latest[p.name] = update
                await call_back(self.callback, update, self.what)
            self.revision = msg.revision
