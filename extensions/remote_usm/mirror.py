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
import logging
from typing import TYPE_CHECKING

import grpc
from google.protobuf.duration_pb2 import Duration

from extensions.sdk import PointSpec
from extensions.sdk.link import TRANSIENT
from smx.client import error_reason
from smx.v1 import identity_service_pb2, point_pb2
from smx.v1 import point_service_pb2 as pb
from smx.values import KIND_OF_FIELD

from .config import RemoteConfig
from .remote import RemoteLink, describe

if TYPE_CHECKING:
    from extensions.sdk import Extension

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

DECLARE_CHUNK = 1000
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
        self.meta: dict[str, point_pb2.PointMetadata] = {}  # local name -> declared metadata
        self.refused: set[str] = set()  # names the local core refused to declare
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
        ext.link.on_connect(self._declare_all)

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
                self._down(describe(err), transient=err.code() in TRANSIENT)
            except (RemoteSilent, EOFError, TimeoutError) as err:
                self._down(describe(err), transient=True)
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.backoff_max)

    async def _session(self) -> None:
        stubs = self.remote.open()
        me = await stubs.identity.WhoAmI(identity_service_pb2.WhoAmIRequest(), timeout=CALL_TIMEOUT)
        self.remote.identity = me.identity
        await self._list_and_declare()
        self._up()
        hb = Duration()
        hb.FromMilliseconds(int(self.heartbeat * 1000))
        call = stubs.points.WatchPoints(
            pb.WatchPointsRequest(
                patterns=list(self.cfg.patterns),
                start_revision=self.revision,
                heartbeat_interval=hb,
            )
        )
        silence = 3 * self.heartbeat + 2
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(call.read(), silence)
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
        """The remote metadata of everything mirrored, declared locally before any value."""
        assert self.remote.stubs is not None
        metas: dict[str, point_pb2.PointMetadata] = {}
        for pattern in self.cfg.patterns:
            token = ""
            while True:
                resp = await self.remote.stubs.points.ListPoints(
                    pb.ListPointsRequest(pattern=pattern, page_size=1000, page_token=token),
                    timeout=CALL_TIMEOUT,
                )
                for m in resp.points:
                    metas[m.name] = m
                token = resp.next_page_token
                if not token:
                    break
        fresh = [self._local_meta(m) for m in metas.values()]
        changed = [m for m in fresh if self.meta.get(m.name) != m]
        for m in changed:
            self.meta[m.name] = m
        await self._declare(changed)

    def _local_meta(self, remote: point_pb2.PointMetadata) -> point_pb2.PointMetadata:
        m = point_pb2.PointMetadata(
            name=self.local(remote.name),
            unit=remote.unit,
            kind=remote.kind,
            description=remote.description or f"mirrored from {self.cfg.remote}",
            index_max=remote.index_max,
        )
        # At least `period`: the republish keeps the point fresh, a dead link lets it go STALE.
        period = max(remote.expected_period.ToNanoseconds() / 1e9, self.cfg.period)
        m.expected_period.FromNanoseconds(int(period * 1e9))
        return m

    async def _declare_all(self) -> None:
        """On every (re)connection to the local core, which may have restarted."""
        # Runs before the link counts as connected (and before anything pending is written).
        await self._send_declarations(list(self.meta.values()))

    async def _declare(self, metas: list[point_pb2.PointMetadata]) -> None:
        if self.ext.link.connected.is_set():
            await self._send_declarations(metas)
        # else: _declare_all declares them when the local core is (back) up.

    async def _send_declarations(self, metas: list[point_pb2.PointMetadata]) -> None:
        if not metas or self.ext.link.stubs is None:
            return
        for i in range(0, len(metas), DECLARE_CHUNK):
            chunk = metas[i : i + DECLARE_CHUNK]
            try:
                await self.ext.link.stubs.points.DeclarePoints(
                    pb.DeclarePointsRequest(points=chunk), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                if err.code() in TRANSIENT:
                    self.ext.link.lost(err)
                    return
                # One refused name (e.g. too deep once prefixed) refuses the chunk: go one by one.
                for m in chunk:
                    await self._declare_one(m)

    async def _declare_one(self, m: point_pb2.PointMetadata) -> None:
        assert self.ext.link.stubs is not None
        try:
            await self.ext.link.stubs.points.DeclarePoints(
                pb.DeclarePointsRequest(points=[m]), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                self.ext.link.lost(err)
            else:
                # Not mirrored at all (its values would be refused at every republish).
                log.error(
                    "local core refused to declare %s: %s; not mirrored", m.name, describe(err)
                )
                self.refused.add(m.name)

    async def _received(self, points: list[point_pb2.Point]) -> None:
        if any(self.local(p.name) not in self.meta for p in points):
            # New on the remote since our listing: its declared metadata, before its value.
            await self._list_and_declare()
        new_meta = []
        for p in points:
            name = self.local(p.name)
            if name not in self.meta:
                # Written but never declared on the remote: what the point itself tells.
                m = point_pb2.PointMetadata(
                    name=name,
                    unit=p.unit,
                    kind=KIND_OF_FIELD.get(
                        p.value.WhichOneof("kind") or "", point_pb2.VALUE_KIND_UNSPECIFIED
                    ),
                    description=f"mirrored from {self.cfg.remote}",
                )
                m.expected_period.FromNanoseconds(int(self.cfg.period * 1e9))
                self.meta[name] = m
                new_meta.append(m)
        await self._declare(new_meta)
        for p in points:
            if p.value.WhichOneof("kind") is None:
                continue
            name = self.local(p.name)
            if name in self.refused:
                continue
            sample = point_pb2.PointSample(
                name=name, value=p.value, source_time=p.source_time, quality=p.quality
            )
            if p.quality == point_pb2.QUALITY_STALE:
                sample.quality = point_pb2.QUALITY_UNCERTAIN  # the local core refuses STALE
                self.stale.add(name)
            else:
                self.stale.discard(name)
            self.latest[name] = sample
            self.ext.publisher.publish(sample)

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
                    self.ext.publisher.publish(sample)
