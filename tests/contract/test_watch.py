"""WatchPoints: snapshot then changes in order, resume from a revision, heartbeats, a slow
consumer that never blocks writers, and 20 concurrent subscribers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from smx.client import error_reason
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from tests.support.bulk import write_strings
from trusted.core.realtime import KEEP_EVERY_CHANGE, KEEP_EVERY_CHANGE_BYTES

METER = "spiffe://test-site/trusted/meter"


def batch(*pairs) -> pb.WritePointsRequest:
    return pb.WritePointsRequest(
        samples=[ppb.PointSample(name=n, value=ppb.Value(double_value=v)) for n, v in pairs]
    )


async def test_snapshot_first_then_changes_in_revision_order(site, core):
    meter = site.stubs("meter")
    await meter.points.WritePoints(batch(("meter/P", 1), ("meter/Q", 2)))
    stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    snap = await stream.read()
    assert snap.snapshot and {p.name for p in snap.points} == {"meter/P", "meter/Q"}
    assert snap.snapshot_complete  # it fits in one message
    revs = []
    for i in range(5):
        revs.append((await meter.points.WritePoints(batch(("meter/P", 10 + i)))).revision)
    seen = []
    while len(seen) < 5:
        msg = await stream.read()
        assert not msg.snapshot and not msg.snapshot_complete
        seen += [(p.revision, p.value.double_value) for p in msg.points]
    # One subscriber reading as fast as we write sees every value, in order.
    assert seen == [(r, 10 + i) for i, r in enumerate(revs)]
    stream.cancel()


async def test_a_burst_arrives_whole_in_few_messages(site, core):
    # 40 changes of one point stored in one turn of the core's loop, before the stream can
    # send anything: the watcher keeps each of them (within its bounds) and sends them
    # together, instead of only the last value or one message per change.
    stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    assert (await stream.read()).snapshot
    db = core.state.db
    revs = [db.write(METER, batch(("meter/B", i)).samples) for i in range(40)]
    seen: list[tuple[int, float]] = []
    messages = 0
    while len(seen) < 40:
        msg = await asyncio.wait_for(stream.read(), 5)
        messages += 1
        seen += [(p.revision, p.value.double_value) for p in msg.points]
        assert msg.revision == max(r for r, _ in seen)
    assert seen == [(r, i) for i, r in enumerate(revs)]
    assert messages == 1
    stream.cancel()


async def test_a_stalled_stream_keeps_what_points_cost_in_memory_not_their_bytes(site, core):
    # 100 small changes are ~9 KiB serialized but ~100 KiB as stored points: the watcher
    # counts the latter against its 64 KiB and keeps the latest value instead.
    stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    assert (await stream.read()).snapshot
    db = core.state.db
    for i in range(100):
        db.write(METER, batch(("meter/B", i)).samples)
    assert next(iter(db._watchers)).unsent == 1
    msg = await asyncio.wait_for(stream.read(), 5)
    assert [p.value.double_value for p in msg.points] == [99]
    stream.cancel()


async def test_far_behind_gets_the_latest_value_per_point(site, core):
    stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    assert (await stream.read()).snapshot
    db = core.state.db
    for i in range(KEEP_EVERY_CHANGE + 10):
        db.write(METER, batch(("meter/B", i), ("meter/C", -i)).samples)
    msg = await asyncio.wait_for(stream.read(), 5)
    last = KEEP_EVERY_CHANGE + 9
    assert [(p.name, p.value.double_value) for p in msg.points] == [
        ("meter/B", last),
        ("meter/C", -last),
    ]
    assert msg.revision == db.revision
    stream.cancel()


async def test_behind_on_big_strings_keeps_the_latest_value_sooner(site, core):
    # A stalled stream keeps superseded values alive: for 2 KiB strings the byte bound, not the
    # count, ends keeping every change.
    stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    assert (await stream.read()).snapshot
    db = core.state.db
    text = "x" * 2000
    writes = KEEP_EVERY_CHANGE_BYTES // 2000 + 5
    for i in range(writes):
        sample = ppb.PointSample(name="meter/S", value=ppb.Value(string_value=f"{i}:{text}"))
        db.write(METER, [sample])
    watcher = next(iter(db._watchers))
    assert watcher.unsent == 1  # the latest value only, not `writes` copies
    msg = await asyncio.wait_for(stream.read(), 5)
    assert [p.value.string_value.split(":")[0] for p in msg.points] == [str(writes - 1)]
    stream.cancel()


async def test_filter_by_pattern_and_by_rights(site, core):
    await site.stubs("meter").points.WritePoints(batch(("meter/P", 1)))
    await site.stubs("ess").points.WritePoints(batch(("ess/P", 2), ("ess/SoC", 3)))
    gui = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["*/P"]))
    assert {p.name for p in (await gui.read()).points} == {"meter/P", "ess/P"}
    # The battery extension reads its own points and meter/P only, whatever it asks for.
    ess = site.stubs("ess").points.WatchPoints(pb.WatchPointsRequest(patterns=["**"]))
    assert {p.name for p in (await ess.read()).points} == {"meter/P", "ess/P", "ess/SoC"}
    await site.stubs("meter").points.WritePoints(batch(("meter/Q", 9), ("meter/P", 4)))
    msg = await ess.read()
    assert [p.name for p in msg.points] == ["meter/P"]
    gui.cancel()
    ess.cancel()


async def test_resume_from_revision_sends_only_later_changes(site, core):
    meter = site.stubs("meter")
    r1 = (await meter.points.WritePoints(batch(("meter/P", 1), ("meter/Q", 1)))).revision
    await meter.points.WritePoints(batch(("meter/P", 2)))
    await meter.points.WritePoints(batch(("meter/U1", 230)))
    stream = site.stubs("gui").points.WatchPoints(
        pb.WatchPointsRequest(patterns=["meter/*"], start_revision=r1)
    )
    msg = await stream.read()
    assert not msg.snapshot
    assert [(p.name, p.value.double_value) for p in msg.points] == [
        ("meter/P", 2),
        ("meter/U1", 230),
    ]
    assert msg.revision == core.state.db.revision
    stream.cancel()


async def test_resume_from_compacted_revision_is_out_of_range(site):
    from trusted.core.server import Core

    core = Core(site.config(watch_backlog=10))
    await core.start()
    try:
        meter = site.stubs("meter")
        first = (await meter.points.WritePoints(batch(("meter/P", 0)))).revision
        for i in range(20):
            await meter.points.WritePoints(batch(("meter/P", i)))
        stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(start_revision=first))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert error_reason(info.value) == "REVISION_COMPACTED"
    finally:
        await core.stop(grace=0.1)


async def test_heartbeat_when_idle(site, core):
    stream = site.stubs("gui").points.WatchPoints(
        pb.WatchPointsRequest(
            patterns=["nothing/*"], heartbeat_interval=Duration(nanos=200_000_000)
        )
    )
    assert (await stream.read()).snapshot
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    hb = await asyncio.wait_for(stream.read(), 2)
    assert hb.heartbeat and not hb.points and hb.revision == core.state.db.revision
    assert 0.15 < loop.time() - t0 < 1.0
    stream.cancel()


async def test_slow_consumer_gets_latest_values_and_never_blocks_writers(site, core):
    # 100 points x 100 rounds of 1 KiB strings: ~10 MiB, far beyond what HTTP/2 flow control
    # lets the core push to a consumer that reads nothing, so that consumer really stalls.
    names = [f"meter/S{i}" for i in range(100)]
    filler = "x" * 1024

    def round_(r: int) -> pb.WritePointsRequest:
        return pb.WritePointsRequest(
            samples=[
                ppb.PointSample(name=n, value=ppb.Value(string_value=f"{r}:{filler}"))
                for n in names
            ]
        )

    meter = site.stubs("meter")
    await meter.points.WritePoints(round_(-1))
    slow = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    fast = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    assert (await slow.read()).snapshot and (await fast.read()).snapshot

    fast_rounds: list[int] = []

    async def follow_fast() -> None:
        while not fast_rounds or fast_rounds[-1] != 99:
            for p in (await fast.read()).points:
                if p.name == "meter/S0":
                    fast_rounds.append(int(p.value.string_value.split(":")[0]))

    follower = asyncio.create_task(follow_fast())
    loop = asyncio.get_running_loop()
    worst = 0.0
    for r in range(100):
        t0 = loop.time()
        await meter.points.WritePoints(round_(r))
        worst = max(worst, loop.time() - t0)
        # What the core holds for the stalled consumer never exceeds its every-change window
        # or, beyond it, one value per point.
        assert max(w.unsent for w in core.state.db._watchers) <= max(KEEP_EVERY_CHANGE, len(names))
    await asyncio.wait_for(follower, 20)
    assert fast_rounds == list(range(100))  # the other subscriber got every value, in order
    assert worst < 1.0  # no write waited for the stalled consumer

    slow_rounds: dict[str, list[int]] = {n: [] for n in names}
    while any(not v or v[-1] != 99 for v in slow_rounds.values()):
        for p in (await asyncio.wait_for(slow.read(), 10)).points:
            slow_rounds[p.name].append(int(p.value.string_value.split(":")[0]))
    # The stalled consumer catches up with the latest value of every point, having skipped
    # intermediate ones rather than making the core queue them.
    assert all(v[-1] == 99 and v == sorted(v) for v in slow_rounds.values())
    assert len(slow_rounds["meter/S0"]) < 100
    slow.cancel()
    fast.cancel()


async def test_twenty_concurrent_subscribers_all_see_the_final_state(site, core):
    streams = [
        site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
        for _ in range(20)
    ]
    for s in streams:
        assert (await s.read()).snapshot
    meter = site.stubs("meter")
    for i in range(100):
        await meter.points.WritePoints(batch(("meter/P", i)))

    async def follow(s):
        revs = []
        while True:
            for p in (await s.read()).points:
                revs.append(p.revision)
                if p.value.double_value == 99:
                    return revs

    results = await asyncio.wait_for(asyncio.gather(*(follow(s) for s in streams)), 20)
    for revs in results:
        assert revs == sorted(revs)  # in order, never a step back
    assert core.state.db.watcher_count == 20
    for s in streams:
        s.cancel()
    await asyncio.sleep(0.2)
    assert core.state.db.watcher_count == 0


async def _paced_core(site, monkeypatch, busy_wait: float, min_interval: float):
    from trusted.core.server import Core
    from trusted.core.services import points

    monkeypatch.setattr(points, "BUSY_WAIT_S", busy_wait)
    core = Core(site.config(watch_min_interval=min_interval))
    await core.start()
    return core


async def _write_and_watch(site, stream, count: int) -> tuple[list[float], list[float]]:
    """Write meter/P = 0 .. count-1, 50 a second; the values `stream` got and when each of its
    messages came."""
    loop = asyncio.get_running_loop()
    meter = site.stubs("meter").points

    async def write() -> None:
        for i in range(count):
            await meter.WritePoints(batch(("meter/P", i)))
            await asyncio.sleep(0.02)

    writer = asyncio.create_task(write())
    seen: list[float] = []
    times: list[float] = []
    while len(seen) < count:
        msg = await asyncio.wait_for(stream.read(), 5)
        times.append(loop.time())
        seen += [p.value.double_value for p in msg.points]
    await writer
    return seen, times


async def test_an_idle_core_sends_each_change_at_once(site, monkeypatch):
    # Nothing waits for the loop here (a wait up to 10 s would not count as busy): the
    # 1 s min_interval must not delay anything.
    core = await _paced_core(site, monkeypatch, busy_wait=10.0, min_interval=1.0)
    try:
        stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
        assert (await stream.read()).snapshot
        loop = asyncio.get_running_loop()
        for i in range(3):
            await site.stubs("meter").points.WritePoints(batch(("meter/P", i)))
            t0 = loop.time()
            msg = await asyncio.wait_for(stream.read(), 5)
            assert [p.value.double_value for p in msg.points] == [i]
            assert loop.time() - t0 < 0.5
        stream.cancel()
    finally:
        await core.stop(grace=0.1)


async def test_one_stall_of_the_loop_does_not_pace_a_stream(site, monkeypatch):
    # One change waits 60 ms for the loop (over the 20 ms that count as busy here), once: a
    # stall, not a busy core. The next changes still go out at once; before, the stream sent
    # one message per min_interval (0.3 s) for the next 0.5 s.
    core = await _paced_core(site, monkeypatch, busy_wait=0.02, min_interval=0.3)
    try:
        stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
        assert (await stream.read()).snapshot
        loop = asyncio.get_running_loop()
        meter = site.stubs("meter").points
        db, write = core.state.db, core.state.db.write

        def stalled_write(*args):  # the loop held just after the change was offered
            db.write = write
            revision = write(*args)
            time.sleep(0.06)
            return revision

        db.write = stalled_write
        await meter.WritePoints(batch(("meter/P", 0)))
        assert [p.value.double_value for p in (await stream.read()).points] == [0]
        for i in range(1, 4):
            await asyncio.sleep(0.05)
            await meter.WritePoints(batch(("meter/P", i)))
            t0 = loop.time()
            msg = await asyncio.wait_for(stream.read(), 5)
            assert [p.value.double_value for p in msg.points] == [i]
            assert loop.time() - t0 < 0.1, i
        stream.cancel()
    finally:
        await core.stop(grace=0.1)


async def test_a_busy_core_paces_streams_and_loses_no_change(site, monkeypatch):
    # Every change counts as having waited for the loop: the stream sends at most one message
    # per min_interval (0.3 s), and the changes in between ride along, none dropped.
    core = await _paced_core(site, monkeypatch, busy_wait=-1.0, min_interval=0.3)
    try:
        stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
        assert (await stream.read()).snapshot
        seen, times = await _write_and_watch(site, stream, 30)
        assert seen == list(range(30))
        assert all(b - a >= 0.25 for a, b in zip(times, times[1:], strict=False))
        assert len(times) <= 4  # 0.6 s of writes: a message at once, then one per 0.3 s
        stream.cancel()
    finally:
        await core.stop(grace=0.1)


async def test_a_high_fan_out_paces_streams_until_it_ends(site, monkeypatch):
    # Nothing waits for the loop (a wait up to 10 s would not count as busy), but the core hands
    # out more changes a second than PACE_ABOVE_PER_S (lowered to 20): the stream sends at most
    # one message per min_interval (0.3 s) for as long as that lasts, pacing does not switch
    # itself off by lowering what the stream sends, and nothing is lost. Once the burst is
    # over, a change goes out at once again.
    from trusted.core.services import points

    monkeypatch.setattr(points, "PACE_ABOVE_PER_S", 20.0)
    monkeypatch.setattr(points, "RATE_WINDOW_S", 0.05)
    core = await _paced_core(site, monkeypatch, busy_wait=10.0, min_interval=0.3)
    try:
        stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
        assert (await stream.read()).snapshot
        seen, times = await _write_and_watch(site, stream, 50)  # 50 a second for 1 s
        assert seen == list(range(50))
        # Unpaced until the first rate window closes, then one message per 0.3 s to the end.
        assert len(times) <= 8, len(times)
        assert all(b - a >= 0.25 for a, b in zip(times[-3:], times[-2:], strict=False))
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        await site.stubs("meter").points.WritePoints(batch(("meter/P", 50)))
        t0 = loop.time()
        msg = await asyncio.wait_for(stream.read(), 5)
        assert [p.value.double_value for p in msg.points] == [50]
        assert loop.time() - t0 < 0.2
        stream.cancel()
    finally:
        await core.stop(grace=0.1)


async def test_a_large_snapshot_comes_in_messages_that_each_can_be_resumed_from(site, core):
    # 600 points of 2 KiB strings, ~1.3 MB: more than one message's worth. The first message
    # is the snapshot, the rest of the current values follow in revision order, and a watch
    # resumed from any message's revision gets exactly what that message had not covered.
    from trusted.core.services.points import WATCH_CHUNK_BYTES

    meter = site.stubs("meter").points
    text = "x" * 2000
    await write_strings(meter, 600, text, per_write=100)
    head = (await meter.GetPoints(pb.GetPointsRequest(names=["meter/S0"]))).revision
    stream = site.stubs("gui").points.WatchPoints(pb.WatchPointsRequest(patterns=["meter/*"]))
    messages = []
    names: list[str] = []
    while len(names) < 600:
        msg = await asyncio.wait_for(stream.read(), 5)
        assert msg.ByteSize() < WATCH_CHUNK_BYTES + 4096
        messages.append(msg)
        names += [p.name for p in msg.points]
    stream.cancel()
    assert [m.snapshot for m in messages] == [True] + [False] * (len(messages) - 1)
    # Only the last one says the consumer now has every point.
    assert [m.snapshot_complete for m in messages] == [False] * (len(messages) - 1) + [True]
    assert len(messages) >= 5 and sorted(names) == sorted(f"meter/S{i}" for i in range(600))
    assert messages[-1].revision == head
    for m in messages[:-1]:
        resumed = site.stubs("gui").points.WatchPoints(
            pb.WatchPointsRequest(patterns=["meter/*"], start_revision=m.revision)
        )
        got: set[str] = set()
        missing = {p.name for later in messages[messages.index(m) + 1 :] for p in later.points}
        while not missing <= got:
            got |= {p.name for p in (await asyncio.wait_for(resumed.read(), 5)).points}
        resumed.cancel()
