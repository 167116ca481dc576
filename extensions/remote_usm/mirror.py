"""Mirroring the remote core's points into the local one under a prefix (`ess/P` -> `usm1/ess/P`).

One watch on the remote: a snapshot, then changes; after a link loss it resumes from the last
revision, and takes a new snapshot when the remote cannot resume (REVISION_COMPACTED, e.g. after
a remote restart). Mirrored points are declared locally with the remote metadata and an expected
period of at least `period`, and the latest value of each is republished every `period` while
the link is up: when the link is down nothing is written, so the local core marks them STALE.

Quality: the remote's quality is kept, except STALE, which a writer may not send. A point the
remote reports STALE is written once as UNCERTAIN (value and source time kept) and then no longer
republished, so the local core turns it STALE after its expected period as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

import grpc

from extensions.sdk import PointSpec
from smx.client import TRANSIENT, describe_error, error_reason
from smx.timestamps import seconds_to_duration
from smx.v1 import identity_service_pb2, point_pb2
from smx.v1 import point_service_pb2 as pb

from .config import RemoteConfig
from .remote import RemoteLink

if TYPE_CHECKING:
    from extensions.sdk import Extension

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0


class RemoteSilent(Exception):
    """The remote watch sent nothing (not even a heartbeat) for too long: a dead link."""


class Mirror:
    def __init__(self, ext: Extension, cfg: RemoteConfig, remote: RemoteLink) -> None:
        self.ext = ext
        self.cfg = cfg
        self.remote = remote
        self.revision = 0  # remote revision everything up to which was mirrored
        self.latest: dict[str, point_pb2.PointSample] = {}  # local name -> last sample
        self.stale: set[str] = set()  # STALE on the remote: not republished
        self.meta: dict[str, PointSpec] = {}  # local name -> declared metadata
        self.snapshots = 0
        self.backoff_max = max(5.0, cfg.period)
        self._delay = 0.2
        self.heartbeat = min(cfg.period, 5.0)
        ext.declare(
            PointSpec(
                self.local("link.up"),
                kind="bool",
                period=cfg.period,
                description=f"link to the remote USM {cfg.remote} is up",
            ),
            PointSpec(
                self.local("link.revision"),
                kind="int",
                period=cfg.period,
                description="remote revision mirrored up to",
            ),
        )

    def local(self, remote_name: str) -> str:
        return f"{self.cfg.prefix}/{remote_name}"

    # -- the remote session -----------------------------------------------------------------

    async def run(self) -> None:
        """Keep the remote watch going for the life of the extension."""
        self._publish_link()
        while True:
            try:
                await self._session()
            except grpc.aio.AioRpcError as err:
                if error_reason(err) == "REVISION_COMPACTED" or (
                    err.code() == grpc.StatusCode.INVALID_ARGUMENT and self.revision
                ):
                    log.info("remote cannot resume from revision %d: new snapshot", self.revision)
                    self.revision = 0
                    continue
                self._down(describe_error(err), transient=err.code() in TRANSIENT)
            except (RemoteSilent, EOFError, TimeoutError) as err:
                self._down(describe_error(err), transient=True)
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.backoff_max)

    async def _session(self) -> None:
        stubs = self.remote.stubs
        me = await stubs.identity.WhoAmI(identity_service_pb2.WhoAmIRequest(), timeout=CALL_TIMEOUT)
        self.remote.identity = me.identity
        await self._list_and_declare()
        self._up()
        call = stubs.points.WatchPoints(
            pb.WatchPointsRequest(
                patterns=list(self.cfg.patterns),
                start_revision=self.revision,
                heartbeat_interval=seconds_to_duration(self.heartbeat),
            )
        )
        silence = 3 * self.heartbeat + 2
        try:
            while True:
                try:
                    async with asyncio.timeout(silence):
                        msg = await call.read()
                except TimeoutError as err:
                    raise RemoteSilent(f"no message from the remote for {silence:g} s") from err
                if msg is grpc.aio.EOF:
                    await call  # raises the status the remote ended the stream with
                    raise EOFError("the remote ended the watch")
                if msg.snapshot:
                    self.snapshots += 1
                    log.info(
                        "remote snapshot: %d points at revision %d", len(msg.points), msg.revision
                    )
                await self._received(msg.points)
                self.revision = msg.revision
                self._publish_link()
        finally:
            call.cancel()

    async def _list_and_declare(self) -> None:
        """The remote metadata of everything mirrored, declared locally before any value (and
        again by the SDK after every reconnect to the local core)."""
        remote: dict[str, PointSpec] = {}
        for pattern in self.cfg.patterns:
            for spec in await self.remote.client.list_points(pattern):
                remote[spec.name] = spec
        fresh = [self._local_spec(spec) for spec in remote.values()]
        self._declare([m for m in fresh if self.meta.get(m.name) != m])

    def _local_spec(self, remote: PointSpec) -> PointSpec:
        # At least `period`: the republish keeps the point fresh, a dead link lets it go STALE.
        return dataclasses.replace(
            remote,
            name=self.local(remote.name),
            description=remote.description or f"mirrored from {self.cfg.remote}",
            period=max(remote.period or 0.0, self.cfg.period),
            owner="",
        )

    def _declare(self, specs: list[PointSpec]) -> None:
        # As the remote declared them: not checked again against the vocabulary here.
        for spec in specs:
            self.meta[spec.name] = spec
        self.ext.client.declare(specs)

    async def _received(self, points: list[point_pb2.Point]) -> None:
        if any(self.local(p.name) not in self.meta for p in points):
            # New on the remote since our listing: its declared metadata, before its value.
            await self._list_and_declare()
        # Written but never declared on the remote: what the point itself tells.
        self._declare(
            [
                dataclasses.replace(
                    PointSpec.of_point(p, period=self.cfg.period),
                    name=self.local(p.name),
                    description=f"mirrored from {self.cfg.remote}",
                )
                for p in points
                if self.local(p.name) not in self.meta
            ]
        )
        for p in points:
            if p.value.WhichOneof("kind") is None:
                continue
            name = self.local(p.name)
            sample = point_pb2.PointSample(
                name=name, value=p.value, source_time=p.source_time, quality=p.quality
            )
            if p.quality == point_pb2.QUALITY_STALE:
                sample.quality = point_pb2.QUALITY_UNCERTAIN  # the local core refuses STALE
                self.stale.add(name)
            else:
                self.stale.discard(name)
            self.latest[name] = sample
            self.ext.publish_sample(sample)

    # -- link state and freshness -----------------------------------------------------------

    def _up(self) -> None:
        self._delay = 0.2
        self.remote.last_error = ""
        if not self.remote.up.is_set():
            log.info("remote USM %s up (as %s)", self.cfg.remote, self.remote.identity)
            self.remote.up.set()
            self._publish_link()

    def _down(self, why: str, *, transient: bool) -> None:
        self.remote.last_error = why
        if self.remote.up.is_set():
            log.warning("remote USM %s down: %s", self.cfg.remote, why)
            self.remote.up.clear()
            self._publish_link()
        elif transient:
            log.info("remote USM %s unreachable: %s", self.cfg.remote, why)
        else:
            log.error("remote USM %s refuses this link: %s", self.cfg.remote, why)

    def _publish_link(self) -> None:
        self.ext.publish(self.local("link.up"), self.remote.up.is_set())
        self.ext.publish(self.local("link.revision"), self.revision)

    async def republish_forever(self) -> None:
        """A watch only sends changes: keep every mirrored point fresh while the link is up."""
        while True:
            await asyncio.sleep(self.cfg.period)
            self._publish_link()
            if not self.remote.up.is_set():
                continue
            for name, sample in self.latest.items():
                if name not in self.stale:
                    self.ext.publish_sample(sample)
