"""WatchPoints' stream logic, driven directly: a heartbeat never claims a revision whose
points are still waiting to be sent (a client resuming from it would lose them)."""

from __future__ import annotations

import asyncio
import types

from google.protobuf.duration_pb2 import Duration

from smx.identity import Identity
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from trusted.core.realtime import RealtimeDB
from trusted.core.services.points import PointService


def read(message: bytes) -> pb.WatchPointsResponse:
    return pb.WatchPointsResponse.FromString(message)  # the stream yields serialized messages


async def test_write_in_the_heartbeats_turn_is_sent_not_skipped():
    db = RealtimeDB(core_identity="core")
    state = types.SimpleNamespace(
        db=db, config=types.SimpleNamespace(max_request_items=100, watch_min_interval=0.005)
    )
    caller = types.SimpleNamespace(
        identity=Identity("s", "trusted", "gui"), uri="x", may=lambda point: True
    )
    stream = PointService(state).WatchPoints(  # type: ignore[arg-type]
        pb.WatchPointsRequest(heartbeat_interval=Duration(nanos=100_000_000)), caller, None
    )
    assert read(await stream.__anext__()).snapshot
    loop = asyncio.get_running_loop()
    nxt = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)  # the stream now waits, with a 0.1 s timeout

    def write() -> None:
        db.write("meter", [ppb.PointSample(name="meter/P", value=ppb.Value(double_value=42))])

    loop.call_at(loop.time() + 0.1, write)  # lands in the same loop turn as the timeout
    msg = read(await nxt)
    if msg.heartbeat:  # allowed only if nothing was pending when it was made
        assert msg.revision < db.points["meter/P"].revision
        msg = read(await stream.__anext__())
    assert [p.name for p in msg.points] == ["meter/P"]
    assert msg.revision == db.revision
    await stream.aclose()
