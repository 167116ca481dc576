"""Contract tests of PointService through the generated stubs, over the real Unix socket with
real mutual TLS, against the real core."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from smx.client import error_reason
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb


def sample(name: str, value: float, **kw) -> ppb.PointSample:
    return ppb.PointSample(name=name, value=ppb.Value(double_value=value), **kw)


def meta(name: str, unit: str = "W", period_ms: int = 0, kind=ppb.VALUE_KIND_DOUBLE):
    m = ppb.PointMetadata(name=name, unit=unit, kind=kind, description=f"test {name}")
    if period_ms:
        m.expected_period.FromMilliseconds(period_ms)
    return m


async def expect_error(coro, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, info.value.details()
    assert error_reason(info.value) == reason
    return info.value


async def test_write_then_get_carries_value_unit_times_quality_writer(site, core):
    meter = site.stubs("meter")
    await meter.points.DeclarePoints(pb.DeclarePointsRequest(points=[meta("meter/P")]))
    src = Timestamp()
    src.FromMilliseconds(1_700_000_000_123)
    before = time.time()
    w = await meter.points.WritePoints(
        pb.WritePointsRequest(
            samples=[sample("meter/P", 1234.5, source_time=src, quality=ppb.QUALITY_UNCERTAIN)]
        )
    )
    got = await site.stubs("gui").points.GetPoints(pb.GetPointsRequest(names=["meter/P"]))
    (p,) = got.points
    assert p.value.double_value == 1234.5
    assert p.unit == "W"
    assert p.source_time.ToMilliseconds() == 1_700_000_000_123
    assert before - 1 <= p.receive_time.ToMilliseconds() / 1000 <= time.time() + 1
    assert p.quality == ppb.QUALITY_UNCERTAIN
    assert p.writer == "spiffe://test-site/trusted/meter"
    assert p.revision == w.revision == got.revision


async def test_batch_is_one_revision_and_revisions_increase(site, core):
    meter = site.stubs("meter")
    r1 = await meter.points.WritePoints(
        pb.WritePointsRequest(samples=[sample("meter/P", 1), sample("meter/Q", 2)])
    )
    r2 = await meter.points.WritePoints(pb.WritePointsRequest(samples=[sample("meter/P", 3)]))
    assert r2.revision == r1.revision + 1
    got = await meter.points.GetPoints(pb.GetPointsRequest(names=["meter/P", "meter/Q"]))
    assert [p.revision for p in got.points] == [r2.revision, r1.revision]


async def test_invalid_batch_stores_nothing(site, core):
    meter = site.stubs("meter")
    await meter.points.DeclarePoints(pb.DeclarePointsRequest(points=[meta("meter/P")]))
    bad = ppb.PointSample(name="meter/P", value=ppb.Value(string_value="oops"))
    await expect_error(
        meter.points.WritePoints(pb.WritePointsRequest(samples=[sample("meter/Q", 1), bad])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALUE_KIND_MISMATCH",
    )
    await expect_error(
        meter.points.GetPoints(pb.GetPointsRequest(names=["meter/Q"])),
        grpc.StatusCode.NOT_FOUND,
        "POINT_NOT_FOUND",
    )


@pytest.mark.parametrize(
    "field, size", [("unit", 33), ("description", 2049), ("description", 4_000_000)]
)
async def test_metadata_strings_are_capped(site, core, field, size):
    # A unit is copied into every stored value and watch message: a 4 MB one turned each
    # 31-byte write into 4 MB to every watcher.
    meter = site.stubs("meter")
    big = ppb.PointMetadata(name="meter/P", **{field: "x" * size})
    err = await expect_error(
        meter.points.DeclarePoints(pb.DeclarePointsRequest(points=[big])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    )
    assert field in err.details()
    ok = ppb.PointMetadata(name="meter/P", unit="kvarh", description="d" * 2048)
    await meter.points.DeclarePoints(pb.DeclarePointsRequest(points=[ok]))


async def test_a_declared_point_without_a_value_says_so(site, core):
    meter = site.stubs("meter")
    await meter.points.DeclarePoints(pb.DeclarePointsRequest(points=[meta("meter/P")]))
    err = await expect_error(
        meter.points.GetPoints(pb.GetPointsRequest(names=["meter/P"])),
        grpc.StatusCode.NOT_FOUND,
        "POINT_NOT_FOUND",
    )
    assert (
        "has no value yet" in err.details() and "spiffe://test-site/trusted/meter" in err.details()
    )
    err = await expect_error(
        meter.points.GetPoints(pb.GetPointsRequest(names=["meter/Nothing"])),
        grpc.StatusCode.NOT_FOUND,
        "POINT_NOT_FOUND",
    )
    assert err.details() == "no point meter/Nothing"


@pytest.mark.parametrize(
    "samples, reason",
    [
        ([sample("Meter/P", 1)], "INVALID_POINT_NAME"),
        ([sample("meter", 1)], "INVALID_POINT_NAME"),
        ([sample("meter/P", 1), sample("meter/P", 2)], "INVALID_ARGUMENT"),
        ([ppb.PointSample(name="meter/P")], "INVALID_ARGUMENT"),
        ([sample("meter/P", 1, quality=ppb.QUALITY_STALE)], "INVALID_ARGUMENT"),
        ([sample("meter/P", 1, quality=77)], "INVALID_ARGUMENT"),
    ],
)
async def test_malformed_writes_are_invalid_argument(site, core, samples, reason):
    await expect_error(
        site.stubs("meter").points.WritePoints(pb.WritePointsRequest(samples=samples)),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )


async def test_too_many_items_and_oversized_message_are_invalid_argument(site, core):
    meter = site.stubs("meter")
    many = [sample(f"meter/P{i}", i) for i in range(10_001)]
    await expect_error(
        meter.points.WritePoints(pb.WritePointsRequest(samples=many)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    )
    huge = ppb.PointSample(name="meter/S", value=ppb.Value(string_value="x" * (5 * 2**20)))
    await expect_error(
        meter.points.WritePoints(pb.WritePointsRequest(samples=[huge])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    )
    # The core is still serving.
    assert (
        await meter.points.WritePoints(pb.WritePointsRequest(samples=[sample("meter/P", 1)]))
    ).revision > 0


async def test_garbage_bytes_are_invalid_argument_not_a_crash(site, core):
    channel = site.creds("meter").aio_channel(site.target)
    raw = channel.unary_unary("/smx.v1.PointService/WritePoints")
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab", bytes(range(256))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(garbage)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(info.value) == "INVALID_ARGUMENT"
    await channel.close()


async def test_list_points_glob_paging_and_metadata(site, core):
    meter = site.stubs("meter")
    await meter.points.DeclarePoints(
        pb.DeclarePointsRequest(
            points=[meta(f"meter/P{i}") for i in range(5)] + [meta("meter/U1", "V", 1000)]
        )
    )
    await meter.points.WritePoints(pb.WritePointsRequest(samples=[sample("meter/Q", 1)]))
    gui = site.stubs("gui")
    names, token = [], ""
    while True:
        r = await gui.points.ListPoints(
            pb.ListPointsRequest(pattern="meter/*", page_size=2, page_token=token)
        )
        names += [m.name for m in r.points]
        token = r.next_page_token
        if not token:
            break
    assert names == [
        "meter/P0",
        "meter/P1",
        "meter/P2",
        "meter/P3",
        "meter/P4",
        "meter/Q",
        "meter/U1",
    ]
    r = await gui.points.ListPoints(pb.ListPointsRequest(pattern="*/U1"))
    (u1,) = r.points
    assert (u1.unit, u1.owner, u1.expected_period.ToMilliseconds()) == (
        "V",
        "spiffe://test-site/trusted/meter",
        1000,
    )
    # Undeclared points are listed with the kind seen.
    (q,) = (await gui.points.ListPoints(pb.ListPointsRequest(pattern="meter/Q"))).points
    assert q.kind == ppb.VALUE_KIND_DOUBLE and q.owner == ""


async def test_declare_refuses_another_owners_point(site, core):
    # The energy router may write its own points only; the admin may write anything but still
    # cannot take over a point another client declared.
    await site.stubs("meter").points.DeclarePoints(
        pb.DeclarePointsRequest(points=[meta("meter/P")])
    )
    await expect_error(
        site.stubs("admin").points.DeclarePoints(pb.DeclarePointsRequest(points=[meta("meter/P")])),
        grpc.StatusCode.PERMISSION_DENIED,
        "POINT_OWNED_BY_OTHER",
    )


async def test_point_goes_stale_when_not_refreshed(site, core):
    meter = site.stubs("meter")
    await meter.points.DeclarePoints(
        pb.DeclarePointsRequest(points=[meta("meter/P", period_ms=200)])
    )
    await meter.points.WritePoints(pb.WritePointsRequest(samples=[sample("meter/P", 5)]))
    gui = site.stubs("gui")
    (p,) = (await gui.points.GetPoints(pb.GetPointsRequest(names=["meter/P"]))).points
    assert p.quality == ppb.QUALITY_GOOD
    await asyncio.sleep(1.2)  # 2 x 200 ms period + the 500 ms check interval
    (p,) = (await gui.points.GetPoints(pb.GetPointsRequest(names=["meter/P"]))).points
    assert p.quality == ppb.QUALITY_STALE
    assert p.value.double_value == 5  # the last value is kept
    assert p.writer == "spiffe://test-site/trusted/smxcore"
    await meter.points.WritePoints(pb.WritePointsRequest(samples=[sample("meter/P", 6)]))
    (p,) = (await gui.points.GetPoints(pb.GetPointsRequest(names=["meter/P"]))).points
    assert p.quality == ppb.QUALITY_GOOD


async def test_read_history_raw_and_downsampled(site, core):
    meter = site.stubs("meter")
    base = 1_700_000_000_000  # aligned to 10 s
    for i in range(20):
        ts = Timestamp()
        ts.FromMilliseconds(base + i * 1000)
        await meter.points.WritePoints(
            pb.WritePointsRequest(samples=[sample("meter/P", float(i), source_time=ts)])
        )
    await core.state.history.flush()
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(base)
    end.FromMilliseconds(base + 20_000)
    gui = site.stubs("gui")
    raw = [
        s
        async for chunk in gui.points.ReadHistory(
            pb.ReadHistoryRequest(names=["meter/P"], start_time=start, end_time=end)
        )
        for s in chunk.samples
    ]
    assert [s.value.double_value for s in raw] == [float(i) for i in range(20)]
    bucket = Duration(seconds=10)
    for agg, expected in (
        (pb.AGGREGATION_AVG, [4.5, 14.5]),
        (pb.AGGREGATION_MIN, [0, 10]),
        (pb.AGGREGATION_MAX, [9, 19]),
        (pb.AGGREGATION_LAST, [9, 19]),
    ):
        chunks = [
            c
            async for c in gui.points.ReadHistory(
                pb.ReadHistoryRequest(
                    names=["meter/P"],
                    start_time=start,
                    end_time=end,
                    bucket=bucket,
                    aggregation=agg,
                )
            )
        ]
        got = [s for c in chunks for s in c.samples]
        assert [s.value.double_value for s in got] == expected, agg
        assert [s.count for s in got] == [10, 10]
        assert [s.sample_time.ToMilliseconds() for s in got] == [base, base + 10_000]


async def test_read_history_limits(site, core):
    gui = site.stubs("gui")
    for req in (
        pb.ReadHistoryRequest(),
        pb.ReadHistoryRequest(names=[f"a/b{i}" for i in range(101)]),
        pb.ReadHistoryRequest(names=["a/b"], bucket=Duration(nanos=1)),
    ):
        await expect_error(
            _drain(gui.points.ReadHistory(req)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )


async def _drain(stream):
    return [m async for m in stream]


async def test_metadata_over_the_limits_stored_before_them_is_cut_at_load(site):
    # A declaration made before the unit and description limits existed: the core cuts it
    # when it loads it, so a huge unit is not copied into every value and watch message.
    from trusted.core.server import Core

    core = Core(site.config())
    await core.start()
    try:
        await site.stubs("meter").points.WritePoints(
            pb.WritePointsRequest(samples=[sample("meter/P", 1)])
        )
        db = core.state.db
        old = ppb.PointMetadata(name="meter/P", unit="u" * 5000, description="d" * 9000)
        old.owner = "spiffe://test-site/trusted/meter"
        db.meta["meter/P"] = old  # as an older core stored it
        db.history.put_metadata("meter/P", old.SerializeToString())
        point = ppb.Point()
        point.CopyFrom(db.points["meter/P"])
        point.unit = "u" * 5000
        db.history.append("meter/P", 0, 1.0, point.quality, point)
        await asyncio.sleep(0.5)  # flushed
    finally:
        await core.stop(grace=0.1)
    core = Core(site.config())
    await core.start()
    try:
        got = (
            await site.stubs("meter").points.GetPoints(pb.GetPointsRequest(names=["meter/P"]))
        ).points[0]
        assert got.unit == ""
        meta = core.state.db.meta["meter/P"]
        assert meta.unit == "" and len(meta.description.encode()) == 2048
    finally:
        await core.stop(grace=0.1)
