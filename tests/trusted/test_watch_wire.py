"""WatchWire builds WatchPointsResponse bytes by hand: they must be exactly the bytes protobuf
writes for the same message, and a point is serialized once while it is current."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from trusted.core.watch_wire import WatchWire

names = st.from_regex(r"[a-z]{1,8}/[A-Za-z0-9_]{1,40}", fullmatch=True)
values = st.one_of(
    st.builds(ppb.Value, double_value=st.floats(allow_nan=False)),
    st.builds(ppb.Value, int_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(ppb.Value, string_value=st.text(max_size=300)),
    st.builds(ppb.Value, bool_value=st.booleans()),
)
points = st.builds(
    ppb.Point,
    name=names,
    value=values,
    unit=st.sampled_from(["", "W", "kWh"]),
    quality=st.sampled_from([1, 2, 3, 4]),
    writer=st.just("spiffe://site/trusted/meter"),
    revision=st.integers(0, 2**63 - 1),
)


@given(
    st.lists(points, max_size=20),
    st.integers(0, 2**63 - 1),
    st.booleans(),
    st.booleans(),
)
def test_messages_are_the_bytes_protobuf_writes(pts, revision, snapshot, heartbeat):
    wire = WatchWire({p.name: p for p in pts})
    built = wire.message(pts, revision, snapshot=snapshot, heartbeat=heartbeat)
    expected = pb.WatchPointsResponse(
        points=pts, revision=revision, snapshot=snapshot, heartbeat=heartbeat
    ).SerializeToString()
    assert built == expected
    assert wire.message(pts, revision, snapshot=snapshot, heartbeat=heartbeat) == expected


def test_a_current_point_is_serialized_once_an_old_one_not_kept():
    current = ppb.Point(name="meter/P", value=ppb.Value(double_value=1), revision=2)
    older = ppb.Point(name="meter/P", value=ppb.Value(double_value=0), revision=1)
    wire = WatchWire({"meter/P": current})
    first = wire.point(current)
    assert wire.point(current) is first  # the kept bytes, not a second serialization
    assert wire.point(older) == older.SerializeToString()
    assert wire.point(current) is first  # the older revision did not replace it
    newer = ppb.Point(name="meter/P", value=ppb.Value(double_value=5), revision=3)
    wire = WatchWire({"meter/P": newer})
    assert ppb.Point.FromString(wire.point(newer)) == newer
