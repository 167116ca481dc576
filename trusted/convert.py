"""Conversions between protobuf messages and the plain Python values stored by history/audit."""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from smx.v1 import point_pb2

__all__ = ["KIND_OF_FIELD", "now_ms", "ms_to_ts", "ts_to_ms", "duration_s", "py_value", "pb_value"]

PyValue = float | int | bool | str

KIND_OF_FIELD = {
    "double_value": point_pb2.VALUE_KIND_DOUBLE,
    "int_value": point_pb2.VALUE_KIND_INT,
    "bool_value": point_pb2.VALUE_KIND_BOOL,
    "string_value": point_pb2.VALUE_KIND_STRING,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_ts(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def ts_to_ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def duration_s(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def py_value(v: point_pb2.Value) -> PyValue | None:
    field = v.WhichOneof("kind")
    return None if field is None else getattr(v, field)


def pb_value(v: PyValue) -> point_pb2.Value:
    # bool before int: bool is a subclass of int in Python.
    if isinstance(v, bool):
        return point_pb2.Value(bool_value=v)
    if isinstance(v, int):
        return point_pb2.Value(int_value=v)
    if isinstance(v, float):
        return point_pb2.Value(double_value=v)
    return point_pb2.Value(string_value=str(v))
