"""Mirroring the remote core's points into the local one under a prefix (`ess/P` -> `usm1/ess/P`).

One watch on the remote: a snapshot, then changes; after a link loss it resumes from the last
revision, and takes a new snapshot when the remote cannot resume (REVISION_COMPACTED, e.g. after
a remote restart).

Freshness tells the truth about the link: the watch asks for a heartbeat every third of
`link_timeout` (or every `period` / 2 if that is shorter), and the link is down after
`link_timeout` without any message (a silent link: packets dropped, no reset). Mirrored points
are declared locally with the remote metadata and an expected period of `period`, and
re-written only when a message from the remote has just proved the link alive (at most every
`period` / 2): from the last message that came through, the local core marks them STALE within
2 x `period` plus its check interval (≤ 10 s by default).
`link.up` is true only once the remote's first message of a session has arrived.

Quality: the remote's quality is kept, except STALE, which a writer may not send. A point the
remote reports STALE is written once as UNCERTAIN (value and source time kept) and then no longer
republished, so the local core turns it STALE after its expected period as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import TYPE_CHECKING

import grpc

from extensions.sdk import PointSpec
from smx.client import describe_error, error_reason
from smx.timestamps import seconds_to_duration
from smx.v1 import identity_service_pb2, point_pb2
from smx.v1 import point_service_pb2 as pb

from .config import RemoteConfig
from .remote import RemoteLink, explain

if TYPE_CHECKING:
    from extensions.sdk import Extension

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
# Retries of a link the remote refuses (certificate, policy): a person must act, so rarely.
REFUSED_MAX_BACKOFF_S = 60.0


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
        # Often enough to notice silence and to keep the mirrored points fresh between changes.
        self.heartbeat = max(0.1, min(cfg.link_timeout / 3, cfg.period / 2))
        self._republished = 0.0  # monotonic time of the last attested republish
        self._logged_error = ""  # the last refusal logged at ERROR (logged once, not per retry)
        self.health = ext.link_health("remote")
        self.health.last_error = "not connected yet"
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
                why, refused = explain(err, self.remote, self.health.consecutive_failures)
                self._down(why, transient=not refused)
                if refused and await self.remote.renew_if_replaced():
                    log.info("remote USM %s: new link certificate, trying it", self.cfg.remote)
                    self._delay = 0.2
            except (RemoteSilent, EOFError, TimeoutError) as err:
                self._down(describe_error(err), transient=True)
            # Jitter: many links restarting at once must not retry in step.
            cap = REFUSED_MAX_BACKOFF_S if self._refused else self.backoff_max
            await asyncio.sleep(min(self._delay, cap) * random.uniform(0.5, 1.0))
            self._delay = min(self._delay * 2, cap)

    async def _session(self) -> None:
        stubs = self.remote.stubs
        me = await stubs.identity.WhoAmI(identity_service_pb2.WhoAmIRequest(), timeout=CALL_TIMEOUT)
        self.remote.identity = me.identity
        await self._list_and_declare()
        call = stubs.points.WatchPoints(
            pb.WatchPointsRequest(
                patterns=list(self.cfg.patterns),
                start_revision=self.revision,
                heartbeat_interval=seconds_to_duration(self.heartbeat),
            )
        )
        silence = self.cfg.link_timeout
        snapshot_points: int | None = None  # of a snapshot not yet complete
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
                    snapshot_points = 0
                    if not msg.snapshot_complete:  # (a remote core before the flag never says)
                        log.info("remote snapshot in several messages: %d so far", len(msg.points))
                if snapshot_points is not None:
                    snapshot_points += len(msg.points)
                    if msg.snapshot_complete:  # a large snapshot comes in several messages
                        log.info(
                            "remote snapshot: %d points at revision %d",
                            snapshot_points,
                            msg.revision,
                        )
                        snapshot_points = None
                self._up()  # data flows: only now is the link up
                await self._received(msg.points)
                self.revision = msg.revision
                self._attested()
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
            period=self.cfg.period,
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

    @property
    def _refused(self) -> bool:
        return bool(self._logged_error)

    def _up(self) -> None:
        self._delay = 0.2
        self._logged_error = ""
        self.health.ok, self.health.last_error, self.health.consecutive_failures = True, "", 0
        self.remote.ever_up = True
        if not self.remote.up.is_set():
            log.info("remote USM %s up (as %s)", self.cfg.remote, self.remote.identity)
            self.remote.up.set()
            self._publish_link()

    def _down(self, why: str, *, transient: bool) -> None:
        self.health.ok, self.health.last_error = False, why
        self.health.failures += 1
        self.health.consecutive_failures += 1
        if self.remote.up.is_set():
            log.warning("remote USM %s down: %s", self.cfg.remote, why)
            self.remote.up.clear()
            self._publish_link()
        if transient:
            self._logged_error = ""
            log.info("remote USM %s unreachable: %s", self.cfg.remote, why)
        elif why != self._logged_error:
            # Once per distinct refusal: retries are bounded and visible in `smx status`.
            self._logged_error = why
            log.error("remote USM %s refuses this link: %s", self.cfg.remote, why)

    def _publish_link(self) -> None:
        self.ext.publish(self.local("link.up"), self.remote.up.is_set())
        self.ext.publish(self.local("link.revision"), self.revision)

    def _attested(self) -> None:
        """A message just came from the remote: the values it has not changed are still its
        values. A watch only sends changes, so re-write them (at most every period / 2)."""
        now = time.monotonic()
        if now - self._republished < self.cfg.period / 2:
            return
        self._republished = now
        self._publish_link()
        for name, sample in self.latest.items():
            if name not in self.stale:
                self.ext.publish_sample(sample)

    async def publish_link_forever(self) -> None:
        """`link.up` and `link.revision` stay fresh, also while the link is down."""
        while True:
            await asyncio.sleep(self.cfg.period)
            self._publish_link()
