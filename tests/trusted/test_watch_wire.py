"""watch_message builds WatchPointsResponse bytes by hand: they must be exactly the bytes
protobuf writes for the same message."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from trusted.core.watch_wire import watch_message

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
    source_time=st.builds(
        Timestamp, seconds=st.integers(0, 253_402_300_799), nanos=st.integers(0, 999_999_999)
    ),
)


@given(
    st.lists(points, max_size=20),
    st.integers(0, 2**63 - 1),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_messages_are_the_bytes_protobuf_writes(pts, revision, snapshot, heartbeat, complete):
    built = watch_message(
        pts, revision, snapshot=snapshot, heartbeat=heartbeat, snapshot_complete=complete
    )
    expected = pb.WatchPointsResponse(
        points=pts,
        revision=revision,
        snapshot=snapshot,
        heartbeat=heartbeat,
        snapshot_complete=complete,
    ).SerializeToString()
    assert built == expected
