"""A point's value kind is fixed: by its declaration, or for an undeclared point by its first
value. A value of another kind is refused (VALUE_KIND_MISMATCH, naming the point, its kind and
the kind given) and the batch stores nothing; an int for a double point is stored as that
double; a sample without a value marks the point BAD or UNCERTAIN and keeps its value.
Against the real core, over the real socket (docs/DATA-MODEL.md, docs/API.md)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from smx.client import error_info
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from trusted.core.server import Core


def value(v: float | int | bool | str) -> ppb.Value:
    if isinstance(v, bool):
        return ppb.Value(bool_value=v)
    if isinstance(v, int):
        return ppb.Value(int_value=v)
    if isinstance(v, float):
        return ppb.Value(double_value=v)
    return ppb.Value(string_value=v)


def sample(name: str, v: float | int | bool | str | None = None, **kw) -> ppb.PointSample:
    return ppb.PointSample(name=name, value=value(v) if v is not None else None, **kw)


async def write(stubs, *samples: ppb.PointSample) -> int:
    return (await stubs.points.WritePoints(pb.WritePointsRequest(samples=samples))).revision


async def refused(stubs, *samples: ppb.PointSample) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await write(stubs, *samples)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value


def mismatch(err: grpc.aio.AioRpcError) -> dict[str, str]:
    info = error_info(err)
    assert info is not None and info.reason == "VALUE_KIND_MISMATCH", err.details()
    return dict(info.metadata)


async def get(stubs, name: str) -> ppb.Point:
    (point,) = (await stubs.points.GetPoints(pb.GetPointsRequest(names=[name]))).points
    return point


async def declare(stubs, name: str, kind: int, unit: str = "W") -> None:
    meta = ppb.PointMetadata(name=name, kind=kind, unit=unit)
    await stubs.points.DeclarePoints(pb.DeclarePointsRequest(points=[meta]))


async def listed_kind(stubs, name: str) -> int:
    (meta,) = (await stubs.points.ListPoints(pb.ListPointsRequest(pattern=name))).points
    return meta.kind


async def test_an_undeclared_points_first_value_fixes_its_kind(site, core):
    meter = site.stubs("meter")
    await write(meter, sample("meter/P", "abc"))  # a typo on the command line: a string point
    err = await refused(meter, sample("meter/P", 12.5))
    assert mismatch(err) == {"point": "meter/P", "kind": "string", "given_kind": "double"}
    assert err.details() == (
        "point meter/P holds string values (the kind of its first value; declaring the point "
        "sets another); got a double value"
    )
    await write(meter, sample("meter/Q", 1.5))
    for other in (True, "high"):
        meta = mismatch(await refused(meter, sample("meter/Q", other)))
        assert meta["kind"] == "double" and meta["given_kind"] != "double"
    assert (await get(meter, "meter/Q")).value.double_value == 1.5
    assert (await get(meter, "meter/P")).value.string_value == "abc"
    assert await listed_kind(meter, "meter/P") == ppb.VALUE_KIND_STRING


async def test_a_refused_sample_refuses_its_batch_which_is_resent_without_it(site, core):
    """docs/API.md: a refused batch stores nothing; ErrorInfo `point` names the sample at
    fault, so the writer resends the others (the SDK does)."""
    meter = site.stubs("meter")
    await write(meter, sample("meter/state", "ok"))
    batch = [sample("meter/U1", 230.5), sample("meter/state", 1.0), sample("meter/U2", 231.0)]
    err = await refused(meter, *batch)
    bad = mismatch(err)["point"]
    assert bad == "meter/state"
    with pytest.raises(grpc.aio.AioRpcError):
        await get(meter, "meter/U1")  # nothing of the refused batch was stored
    await write(meter, *[s for s in batch if s.name != bad])
    assert (await get(meter, "meter/U2")).value.double_value == 231.0


async def test_a_declared_kind_is_fixed_and_an_int_widens_to_a_double(site, core):
    meter, gui = site.stubs("meter"), site.stubs("gui")
    await declare(meter, "meter/P", ppb.VALUE_KIND_DOUBLE)
    err = await refused(meter, sample("meter/P", "abc"))
    assert mismatch(err) == {"point": "meter/P", "kind": "double", "given_kind": "string"}
    assert "(declared)" in err.details()
    # An int is a number of a double point: stored, read back and watched as a double.
    rev = await write(meter, sample("meter/P", 1500))
    got = await get(gui, "meter/P")
    assert got.value.WhichOneof("kind") == "double_value"
    assert got.value.double_value == 1500.0 and got.revision == rev
    await write(meter, sample("meter/P", 2**60))  # a power of two: exact
    assert (await get(gui, "meter/P")).value.double_value == 2.0**60
    # ...but not one the double would round.
    err = await refused(meter, sample("meter/P", 2**53 + 1))
    assert mismatch(err)["given_kind"] == "int"
    assert "the int 9007199254740993 has no exact double value" in err.details()


async def test_no_narrowing_and_no_bool_for_numbers(site, core):
    meter = site.stubs("meter")
    await declare(meter, "meter/n", ppb.VALUE_KIND_INT, unit="")
    for wrong, given in ((3.0, "double"), (True, "bool"), ("3", "string")):
        meta = mismatch(await refused(meter, sample("meter/n", wrong)))
        assert meta == {"point": "meter/n", "kind": "int", "given_kind": given}
    await write(meter, sample("meter/n", 3))
    await write(meter, sample("meter/flag", False))
    assert mismatch(await refused(meter, sample("meter/flag", 0)))["kind"] == "bool"


async def test_an_int_widens_on_an_undeclared_double_point_too(site, core):
    meter = site.stubs("meter")
    await write(meter, sample("meter/E", 0.5))
    await write(meter, sample("meter/E", 2))
    got = await get(meter, "meter/E")
    assert got.value.WhichOneof("kind") == "double_value" and got.value.double_value == 2.0
    # The other way round: an int point stays an int point.
    await write(meter, sample("meter/count", 2))
    assert mismatch(await refused(meter, sample("meter/count", 2.5)))["kind"] == "int"


async def test_history_of_a_point_stays_one_kind_so_averages_work(site, core):
    meter, gui = site.stubs("meter"), site.stubs("gui")
    base = 1_700_000_000_000
    for i, v in enumerate((1.0, "abc", 3, 5.0)):
        ts = Timestamp()
        ts.FromMilliseconds(base + i * 1000)
        try:
            await write(meter, sample("meter/P", v, source_time=ts))
        except grpc.aio.AioRpcError as err:
            assert mismatch(err)["given_kind"] == "string"
    await core.state.history.flush()
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(base)
    end.FromMilliseconds(base + 10_000)
    chunks = [
        c
        async for c in gui.points.ReadHistory(
            pb.ReadHistoryRequest(
                names=["meter/P"],
                start_time=start,
                end_time=end,
                bucket=Duration(seconds=10),
                aggregation=pb.AGGREGATION_AVG,
            )
        )
    ]
    (avg,) = [s for c in chunks for s in c.samples]
    assert avg.value.double_value == 3.0 and avg.count == 3


async def test_a_quality_only_update_keeps_the_value(site, core):
    meter = site.stubs("meter")
    await write(meter, sample("meter/P", 1500.0))
    rev = await write(meter, sample("meter/P", quality=ppb.QUALITY_BAD))
    got = await get(meter, "meter/P")
    assert got.value.double_value == 1500.0
    assert got.quality == ppb.QUALITY_BAD and got.revision == rev
    await write(meter, sample("meter/P", quality=ppb.QUALITY_UNCERTAIN))
    assert (await get(meter, "meter/P")).quality == ppb.QUALITY_UNCERTAIN
    # GOOD (or unspecified) and DERIVED say "a fresh value": they need one.
    for quality in (ppb.QUALITY_UNSPECIFIED, ppb.QUALITY_GOOD, ppb.QUALITY_DERIVED):
        err = await refused(meter, sample("meter/P", quality=quality))
        assert error_info(err).reason == "INVALID_ARGUMENT"
        assert "only quality BAD or UNCERTAIN" in err.details()
    # A point without a value has nothing to keep.
    err = await refused(meter, sample("meter/new", quality=ppb.QUALITY_BAD))
    assert error_info(err).metadata["point"] == "meter/new"
    assert "no value of its kind to keep" in err.details()


async def test_a_declaration_sets_the_kind_and_one_without_a_kind_keeps_it(site, core):
    meter = site.stubs("meter")
    await write(meter, sample("meter/P", "abc"))
    # The way out of a wrong first value: declare the kind meant.
    await declare(meter, "meter/P", ppb.VALUE_KIND_DOUBLE)
    await write(meter, sample("meter/P", 12.5))
    assert (await get(meter, "meter/P")).value.double_value == 12.5
    assert mismatch(await refused(meter, sample("meter/P", "abc")))["kind"] == "double"
    # A re-declaration naming no kind (unit only) keeps the declared kind.
    await declare(meter, "meter/P", ppb.VALUE_KIND_UNSPECIFIED, unit="kW")
    assert await listed_kind(meter, "meter/P") == ppb.VALUE_KIND_DOUBLE
    assert mismatch(await refused(meter, sample("meter/P", "abc")))["kind"] == "double"
    # Declared without a kind, a point takes the kind of its first value, as undeclared ones.
    await declare(meter, "meter/mode", ppb.VALUE_KIND_UNSPECIFIED, unit="")
    await write(meter, sample("meter/mode", "auto"))
    assert await listed_kind(meter, "meter/mode") == ppb.VALUE_KIND_STRING
    assert mismatch(await refused(meter, sample("meter/mode", 1.0)))["kind"] == "string"


async def test_the_kind_survives_a_restart(site):
    core = Core(site.config())
    await core.start()
    try:
        await write(site.stubs("meter"), sample("meter/P", 1.0))
    finally:
        await core.stop(grace=0.1)
    core = Core(site.config())
    await core.start()
    try:
        meter = site.stubs("meter")
        assert mismatch(await refused(meter, sample("meter/P", "abc")))["kind"] == "double"
        await write(meter, sample("meter/P", 2))
    finally:
        await core.stop(grace=0.1)
