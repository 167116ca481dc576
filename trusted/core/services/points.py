"""PointService: read, declare, write, watch and query the history of points."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import cast

import grpc

from smx.aggregation import aggregation_name
from smx.timestamps import duration_s, ms_to_ts, ts_to_ms
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as pb
from smx.values import to_value
from trusted.core.auth import Caller
from trusted.core.errors import CoreError
from trusted.core.history import HistoryError, HistoryQueryError
from trusted.core.paging import make_token, page_size, read_token
from trusted.core.realtime import MAX_UNIT_BYTES, RealtimeDB
from trusted.core.services.fields import check_patterns, globs, heartbeat_s, point_name
from trusted.core.state import CoreState
from trusted.core.watch_wire import watch_message

__all__ = ["PointService"]

# A watch message holds at most this much (one point larger than it goes alone): a snapshot or
# catch-up is sent as several messages, built one at a time.
WATCH_CHUNK_BYTES = 256 * 1024
# Watch streams pace themselves ([watch] min_interval) while the core hands out more than
# PACE_ABOVE_PER_S changes a second to all of them (measured over RATE_WINDOW_S), and for
# PACED_FOR_S after a second change within PACED_FOR_S waited longer than BUSY_WAIT_S for the
# loop to get to it (a loop busy with other work; one stall of a few ms paced a stream for
# 0.5 s, docs/PERFORMANCE.md run 13). Fewer, larger messages then cost less and arrive
# sooner. The rate is of changes offered, not messages sent, so pacing does not switch itself
# off: a stream that stopped pacing because pacing had lowered its own sends overloaded the
# loop again.
PACE_ABOVE_PER_S, RATE_WINDOW_S = 2000.0, 0.1
BUSY_WAIT_S, PACED_FOR_S = 0.001, 0.5
MAX_HISTORY_NAMES = 100
# Bytes of a repeated-field entry around a message (tag + length varint), and of the rest of a
# reply (revision, gRPC framing), counted when a reply is sized before it is built.
ENTRY_OVERHEAD, REPLY_OVERHEAD = 6, 64
# One ListPoints call examines at most this many points per point of page_size (and at least
# LIST_SCAN_MIN): a caller whose rights match few of many points pages through the database
# in bounded steps instead of making one call cost seconds of the core's single loop.
LIST_SCAN_FACTOR, LIST_SCAN_MIN = 10, 1000


class _FanOutLoad:
    """Whether the core hands out changes to watch streams faster than PACE_ABOVE_PER_S."""

    def __init__(self, db: RealtimeDB) -> None:
        self._db = db
        self._since, self._offers = time.monotonic(), db.offers
        self._high = False

    def high(self, now: float) -> bool:
        elapsed = now - self._since
        if elapsed >= RATE_WINDOW_S:
            offers = self._db.offers
            self._high = (offers - self._offers) / elapsed > PACE_ABOVE_PER_S
            self._since, self._offers = now, offers
        return self._high


class PointService:
    def __init__(self, state: CoreState) -> None:
        self.s = state
        self._load = _FanOutLoad(state.db)

    def _limit(self, items: object, what: str) -> None:
        n = len(items)  # type: ignore[arg-type]
        if n > self.s.config.max_request_items:
            raise CoreError(
                "REQUEST_TOO_LARGE",
                f"{n} {what} in one request; the limit is {self.s.config.max_request_items}",
            )

    def _check_strings(self, samples: Sequence[point_pb2.PointSample]) -> None:
        """A string value is a reading, not a document: every value is kept in memory (the
        current value, each watcher's backlog) and in the history, so its size is capped."""
        limit = self.s.config.max_string_bytes
        for s in samples:
            _check_size(s.name, "string value", s.value.string_value, limit, _STRING_LIMIT)

    def _check_quota(self, caller: Caller, names: list[str], *, declaring: bool) -> None:
        """Refuse a batch that would take the caller over its number of points. Checked and
        stored in one turn of the loop, so concurrent calls cannot both slip under it."""
        db = self.s.db
        new = db.new_points_for(caller.uri, names, declaring=declaring)
        if not new:
            return
        limit = self.s.config.max_points_per_client
        have = db.points_of(caller.uri)
        if have + new > limit:
            raise CoreError(
                "POINT_QUOTA_EXCEEDED",
                f"{caller.uri} has {have} points; this call would add {new}, over the limit of "
                f"{limit} ([limits] max_points_per_client)",
                limit=str(limit),
                points=str(have),
            )

    async def GetPoints(self, req: pb.GetPointsRequest, caller: Caller, ctx: object):
        self._limit(req.names, "names")
        # One entry per name, in the order first asked: a name repeated 10,000 times must not
        # make the core build (and send) 10,000 copies of one point.
        names = list(dict.fromkeys(req.names))
        for name in names:
            caller.require(point_name(name))
        points = self.s.db.get(names)
        # Sized before the reply is built: grpc would otherwise serialize all of it and then
        # fail without a reason the client can act on.
        limit = self.s.config.max_message_bytes - REPLY_OVERHEAD
        size = 0
        for p in points:
            size += p.ByteSize() + ENTRY_OVERHEAD
            if size > limit:
                raise CoreError(
                    "REPLY_TOO_LARGE",
                    f"the reply for {len(points)} points would exceed "
                    f"{self.s.config.max_message_bytes} bytes ([limits] max_message_bytes); "
                    "ask for fewer names per call",
                )
        return pb.GetPointsResponse(points=points, revision=self.s.db.revision)

    async def ListPoints(self, req: pb.ListPointsRequest, caller: Caller, ctx: object):
        size = page_size(req.page_size)
        query = ("ListPoints", req.pattern, caller.uri)
        after = str(read_token(req.page_token, query, str)) if req.page_token else ""
        # Names the caller may not read are not listed at all: their existence is data too.
        # The work is bounded by the page, not by the database: the scan starts at the token's
        # name and stops at page_size matches or after examining its budget of names, handing
        # back a token to continue (a page may be short, even empty, with a token).
        page, resume = self.s.db.scan_metadata(
            req.pattern,
            after,
            caller.may,
            size,
            max(LIST_SCAN_FACTOR * size, LIST_SCAN_MIN),
        )
        token = make_token(query, resume) if resume else ""
        return pb.ListPointsResponse(points=page, next_page_token=token)

    def _check_metadata(self, metas: Sequence[point_pb2.PointMetadata]) -> None:
        """A unit is a symbol and a description a sentence: the unit is copied into every
        stored value and every message of every watcher of the point, the description into
        every listing, so both are capped."""
        limit = self.s.config.max_string_bytes
        for m in metas:
            _check_size(
                m.name, "unit", m.unit, MAX_UNIT_BYTES, "a symbol such as kWh, docs/DATA-MODEL.md"
            )
            _check_size(m.name, "description", m.description, limit, _STRING_LIMIT)

    async def DeclarePoints(self, req: pb.DeclarePointsRequest, caller: Caller, ctx: object):
        self._limit(req.points, "points")
        for m in req.points:
            caller.require(point_name(m.name))
        self._check_metadata(req.points)
        self._check_quota(caller, [m.name for m in req.points], declaring=True)
        return pb.DeclarePointsResponse(declared=self.s.db.declare(caller.uri, req.points))

    async def WritePoints(self, req: pb.WritePointsRequest, caller: Caller, ctx: object):
        self._limit(req.samples, "samples")
        names = [s.name for s in req.samples]
        for name in names:
            caller.require(point_name(name))
        self._check_strings(req.samples)
        self._check_quota(caller, names, declaring=False)
        revision = self.s.db.write(caller.uri, req.samples)
        self.s.audit.record_write(caller.uri, names, revision)
        return pb.WritePointsResponse(revision=revision)

    async def StreamWritePoints(self, req: pb.WritePointsRequest, caller: Caller, ctx: object):
        """One request of the stream: the edge (trusted.core.rpc) admits and answers each
        request as a call of its own, so a streamed write is a WritePoints call."""
        return await self.WritePoints(req, caller, ctx)

    async def WatchPoints(
        self, req: pb.WatchPointsRequest, caller: Caller, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Serialized WatchPointsResponse messages (trusted.core.watch_wire)."""
        # A client without any read right was refused at the edge: a watch would give it
        # nothing but cost the core work on every write.
        check_patterns(req.patterns)
        heartbeat = heartbeat_s(req)
        wanted = globs(req.patterns)
        db = self.s.db

        def match(name: str) -> bool:
            # caller.may reads the policy in force: a reload applies to open watches.
            return wanted.match(name) and caller.may(name)

        pace, load = self.s.config.watch_min_interval, self._load
        watcher, first = db.watch(match, req.start_revision)
        try:
            sent = paced_until = 0.0
            stalled = -PACED_FOR_S  # when a change last waited for the loop
            if req.start_revision == 0 or first:
                # The watcher holds every change after this revision, whatever the snapshot's
                # pace: its messages may be built while later writes land.
                for msg in _chunks(first, db.revision, snapshot=req.start_revision == 0):
                    yield msg
            while True:
                if not await watcher.event.wait(heartbeat) and not watcher.unsent:
                    # (a write may land in the very turn of the timeout: then it is sent)
                    yield watch_message((), db.revision, heartbeat=True)
                    continue
                if pace:
                    # A busy core sends a stream at most one message per `pace`, the changes
                    # made meanwhile riding along in it (see PACE_ABOVE_PER_S). An idle core
                    # sends each change at once.
                    now = time.monotonic()
                    if now - watcher.since > BUSY_WAIT_S:
                        # A second wait within PACED_FOR_S: a busy loop, not a single stall.
                        if now - stalled < PACED_FOR_S:
                            paced_until = now + PACED_FOR_S
                        stalled = now
                    # From the last message, but never more than `pace` after the oldest
                    # change arrived (a change that already waited for the loop is not held
                    # back a full interval more).
                    early = min(sent, watcher.since) + pace - now
                    if early > 0 and (now < paced_until or load.high(now)):
                        await watcher.full.wait(early)  # sooner if the changes pile up
                whole = watcher.bounded  # its changes fit one message: nothing to size
                changes = watcher.take()
                if whole:
                    yield watch_message(changes, db.revision)
                else:
                    for msg in _chunks(changes, db.revision, ordered=True):
                        yield msg
                sent = time.monotonic()
        finally:
            db.unwatch(watcher)

    async def ReadHistory(
        self, req: pb.ReadHistoryRequest, caller: Caller, ctx: object
    ) -> AsyncIterator[pb.ReadHistoryResponse]:
        if not req.names or len(req.names) > MAX_HISTORY_NAMES:
            raise CoreError(
                "INVALID_ARGUMENT", f"give 1..{MAX_HISTORY_NAMES} point names, got {len(req.names)}"
            )
        for name in req.names:
            caller.require(point_name(name))
        start = ts_to_ms(req.start_time) if req.HasField("start_time") else None
        end = ts_to_ms(req.end_time) if req.HasField("end_time") else None
        bucket = None
        if req.HasField("bucket"):
            bucket = int(duration_s(req.bucket) * 1000)
            if bucket < 1:
                raise CoreError("INVALID_ARGUMENT", "bucket must be at least 1 ms")
        aggregation = aggregation_name(req.aggregation)
        if aggregation is None:
            raise CoreError("INVALID_ARGUMENT", f"unknown aggregation {req.aggregation}")
        try:
            async for name, samples in self.s.history.read(
                list(req.names), start, end, bucket, aggregation
            ):
                yield pb.ReadHistoryResponse(
                    name=name,
                    samples=[
                        pb.HistorySample(
                            sample_time=ms_to_ts(s.ts_ms),
                            value=to_value(s.value),
                            quality=cast(point_pb2.Quality, s.quality),
                            count=s.count,
                        )
                        for s in samples
                    ],
                )
        except HistoryQueryError as err:  # the request asked the impossible
            raise CoreError("INVALID_ARGUMENT", str(err)) from err
        except HistoryError as err:
            raise CoreError("HISTORY_UNAVAILABLE", f"history log unavailable: {err}") from err


_STRING_LIMIT = "[limits] max_string_bytes"


def _check_size(point: str, what: str, text: str, limit: int, source: str) -> None:
    """Refuse `text` (the point's `what`) over `limit` bytes of UTF-8, saying where the limit
    comes from."""
    # Characters first: a string of at most limit/4 characters fits in any encoding.
    if len(text) * 4 > limit and len(text.encode()) > limit:
        raise CoreError(
            "REQUEST_TOO_LARGE",
            f"point {point}: {what} of {len(text.encode())} bytes exceeds {limit} ({source})",
            point=point,
        )


def _chunks(
    points: list[point_pb2.Point],
    revision: int,
    *,
    ordered: bool = False,
    snapshot: bool = False,
) -> Iterator[bytes]:
    """Changes (or the snapshot, the first message marked) as messages of about
    WATCH_CHUNK_BYTES at most, each built when the previous one is sent: a client that stops
    reading holds the message in flight, not a whole snapshot. A message's revision is where a
    resume may start: a cut claims the revision before the next message's first point, so a
    resume sends again at worst part of one revision, never loses one. A watcher hands its
    changes over `ordered` by revision already."""
    if not ordered:
        points.sort(key=lambda p: p.revision)
    complete = snapshot  # the last message completes a snapshot
    start = size = 0
    for i, p in enumerate(points):
        entry = p.ByteSize() + ENTRY_OVERHEAD
        grown = size + entry
        if grown > WATCH_CHUNK_BYTES and i > start:
            yield watch_message(points[start:i], p.revision - 1, snapshot=snapshot)
            snapshot, start, grown = False, i, entry
        size = grown
    yield watch_message(points[start:], revision, snapshot=snapshot, snapshot_complete=complete)
