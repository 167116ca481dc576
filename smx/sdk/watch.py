"""Following points (e.g. a battery controller reading `smm/P`): a watch that resumes from the
last revision it delivered after a reconnect, and starts over with a snapshot when the core
cannot resume (it restarted, or we were away longer than it keeps changes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from smx.v1 import point_service_pb2 as pb

from .callbacks import call_back
from .link import CoreLink
from .points import PointUpdate
from .resumable import ResumableStream

__all__ = ["Subscription", "WatchCallback"]

WatchCallback = Callable[[PointUpdate], Awaitable[None] | None]


class Subscription(ResumableStream):
    def __init__(self, link: CoreLink, patterns: list[str], callback: WatchCallback) -> None:
        super().__init__(link, f"watch of {patterns}")
        self.patterns = patterns
        self.callback = callback
        self.latest: dict[str, PointUpdate] = {}

    async def follow(self) -> None:
        stream = self.link.open().points.WatchPoints(
            pb.WatchPointsRequest(patterns=self.patterns, start_revision=self.revision)
        )
        async for msg in stream:
            for p in msg.points:
                update = PointUpdate.of(p)
                self.latest[p.name] = update
                await call_back(self.callback, update, self.what)
            self.revision = msg.revision
