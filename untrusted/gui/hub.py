"""One core watch fanned out to every open page: the latest value of each point, and per page
the names changed since its last message. A slow page costs one entry per point at most and
never holds up the watch or the other pages."""

from __future__ import annotations

import asyncio
from typing import Any

from smx.sdk import PointUpdate

from .overview import overview
from .settings import OverviewConfig

__all__ = ["Hub", "Viewer"]


class Viewer:
    """One page's view of the hub: what changed since it was last sent."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.changed: set[str] = set(hub.latest)
        self.wake = asyncio.Event()
        self.wake.set()  # the first message says whether the core is there

    def poke(self, name: str | None = None) -> None:
        if name is not None:  # None: only the core's state changed
            self.changed.add(name)
        self.wake.set()

    async def next_message(self, timeout: float) -> dict[str, Any] | None:
        """The changes since the last call, once there are some (None after `timeout` s)."""
        try:
            async with asyncio.timeout(timeout):
                await self.wake.wait()
        except TimeoutError:
            return None
        self.wake.clear()
        names, self.changed = sorted(self.changed), set()
        hub = self.hub
        return {
            "type": "points",
            "core": hub.core_connected,
            "points": [point_json(hub.latest[n]) for n in names],
            "overview": hub.overview_json(),
        }


class Hub:
    def __init__(self, overview_cfg: OverviewConfig, max_viewers: int) -> None:
        self.overview = overview_cfg
        self.max_viewers = max_viewers
        self.latest: dict[str, PointUpdate] = {}
        self.core_connected = False
        self.viewers: set[Viewer] = set()
        self._overview: list[dict[str, Any]] | None = None  # computed once per change

    def update(self, point: PointUpdate) -> None:
        """The watch's callback: a point's new value (snapshot or change)."""
        self.latest[point.name] = point
        self._overview = None
        for viewer in self.viewers:
            viewer.poke(point.name)
        self.set_core_connected(True)  # a value from the watch proves the link

    def overview_json(self) -> list[dict[str, Any]]:
        """The overview, shared by every page that asks before the next change."""
        if self._overview is None:
            self._overview = [part.as_json() for part in overview(self.overview, self.latest)]
        return self._overview

    def set_core_connected(self, connected: bool) -> None:
        if connected != self.core_connected:
            self.core_connected = connected
            for viewer in self.viewers:
                viewer.poke()

    def join(self) -> Viewer | None:
        """A viewer for a new page, or None when as many pages as allowed are open."""
        if self.full:
            return None
        viewer = Viewer(self)
        self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    @property
    def full(self) -> bool:
        return len(self.viewers) >= self.max_viewers


def point_json(p: PointUpdate) -> dict[str, Any]:
    return {
        "name": p.name,
        "value": p.value,
        "unit": p.unit,
        "quality": p.quality,
        "time": p.source_time,
    }
