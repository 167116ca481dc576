"""Following other points (e.g. a battery controller reading `smm/P`): a watch that resumes from
the last revision it saw after a reconnect, and re-snapshots when the core cannot resume."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from smx.client import error_reason
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as pb

from .link import TRANSIENT, CoreLink
from .values import Scalar, from_value

__all__ = ["PointUpdate", "Subscription"]

log = logging.getLogger(__name__)

QUALITY_NAMES = {v: k.removeprefix("QUALITY_") for k, v in point_pb2.Quality.items()}


@dataclass(frozen=True)
class PointUpdate:
    name: str
    value: Scalar | None
    unit: str
    quality: str  # GOOD, DERIVED, UNCERTAIN, BAD, STALE
    source_time: float  # unix seconds
    revision: int


Callback = Callable[[PointUpdate], Awaitable[None] | None]


class Subscription:
    def __init__(self, link: CoreLink, patterns: list[str], callback: Callback) -> None:
        self.link = link
        self.patterns = patterns
        self.callback = callback
        self.revision = 0  # everything up to here was delivered
        self.latest: dict[str, PointUpdate] = {}

    async def run(self) -> None:
        while True:
            await self.link.connected.wait()
            try:
                await self._follow()
            except grpc.aio.AioRpcError as err:
                reason = error_reason(err)
                if reason == "REVISION_COMPACTED" or (
                    err.code() == grpc.StatusCode.INVALID_ARGUMENT and self.revision
                ):
                    # The core restarted or we were away too long: start over with a snapshot.
                    log.info(
                        "watch of %s cannot resume from %d: new snapshot",
                        self.patterns,
                        self.revision,
                    )
                    self.revision = 0
                elif err.code() in TRANSIENT:
                    self.link.lost(err)
                else:
                    log.error("watch of %s refused: %s", self.patterns, err.details())
                    await asyncio.sleep(5)

    async def _follow(self) -> None:
        assert self.link.stubs is not None
        stream = self.link.stubs.points.WatchPoints(
            pb.WatchPointsRequest(patterns=self.patterns, start_revision=self.revision)
        )
        async for msg in stream:
            for p in msg.points:
                update = PointUpdate(
                    p.name,
                    from_value(p.value),
                    p.unit,
                    QUALITY_NAMES.get(p.quality, "UNSPECIFIED"),
                    p.source_time.ToMilliseconds() / 1000,
                    p.revision,
                )
                self.latest[p.name] = update
                result = self.callback(update)
                if asyncio.iscoroutine(result):
                    await result
            self.revision = msg.revision
